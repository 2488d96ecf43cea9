#!/usr/bin/env bash
# Data-parallel scaling benchmark (a program, not a test): the same per-rank work on 1 and on 2 ranks,
# one thread each, on the tiny-sd shape. Prints per-step time, samples/s, the share of the step spent
# in all-reduce and waiting for the other rank, the scaling efficiency, and the checkpoint's write time
# and size.
#   bash deploy/bench/scaling.sh [STEPS] [PAIRS_PER_RANK]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${DPOD_BUILD:-$root/build}
steps=${1:-40}
pairs=${2:-8}
work=$(mktemp -d "${TMPDIR:-/tmp}/dpod-scaling.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

run() {  # run RANKS -> log file
  "$build/client/dpoctl" submit "$root/deploy/examples/tiny-dpo.yaml" --dry-run --set ranks="$1" \
    --set threads_per_rank=1 --set train.steps="$steps" --set train.batch_size="$pairs" \
    --set train.checkpoint_every=0 --set data.pairs=$((pairs * 2 * 8)) >"$work/job$1.yaml"
  mkdir -p "$work/run$1/tmp"
  TMPDIR="$work/run$1/tmp" mpirun -np "$1" --oversubscribe --bind-to none -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
    "$build/workers/dpo-worker" --spec "$work/job$1.yaml" --run-dir "$work/run$1" >"$work/log$1" 2>&1
  grep "timing:" "$work/log$1"
}

echo "tiny-sd shape, $pairs pairs per rank, $steps steps, 1 thread per rank"
run 1
run 2
awk -v steps="$steps" '
  /timing:/ { n++; ms[n] = $0; sub(/.* steps after the first, /, "", ms[n]); sub(/ ms\/step.*/, "", ms[n]);
              sps[n] = $0; sub(/.*%\), /, "", sps[n]); sub(/ samples\/s.*/, "", sps[n]);
              ar[n] = $0; sub(/.*\(/, "", ar[n]); sub(/%\).*/, "", ar[n]) }
  /checkpoint .* MB in/ { ck[++c] = $0; sub(/.*checkpoint [^ ]*: /, "", ck[c]) }
  END {
    printf "%-8s %12s %12s %18s\n", "ranks", "ms/step", "samples/s", "all-reduce+wait";
    printf "%-8d %12.2f %12.1f %17.1f%%\n", 1, ms[1], sps[1], ar[1];
    printf "%-8d %12.2f %12.1f %17.1f%%\n", 2, ms[2], sps[2], ar[2];
    printf "speed-up 1 -> 2 ranks: %.2fx (efficiency %.0f%%)\n", sps[2] / sps[1], 50 * sps[2] / sps[1];
    printf "final checkpoint (2 ranks): %s\n", ck[2];
  }' "$work/log1" "$work/log2"
