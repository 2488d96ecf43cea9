#!/usr/bin/env bash
# Data-parallel scaling benchmark (a program, not a test): the same per-rank work on 1 and on 2 ranks,
# one thread each, on the tiny-sd shape. Prints per-step time, samples/s, the share of the step spent
# in all-reduce and waiting for the other rank, the scaling efficiency, and the checkpoint's write time
# and size. It also runs two independent 1-rank jobs at once: what they reach together is the most two
# processes can get from this machine (on a VM whose virtual CPUs share cores, or with other work
# running, far less than 2x), so the 2-rank result is also given as a share of that ceiling.
#   bash deploy/bench/scaling.sh [STEPS] [PAIRS_PER_RANK]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${DPOD_BUILD:-$root/build}
steps=${1:-40}
pairs=${2:-8}
work=$(mktemp -d "${TMPDIR:-/tmp}/dpod-scaling.XXXXXX")
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

run() {  # run NAME RANKS: trains with RANKS ranks, log in $work/logNAME
  "$build/bin/dpoctl" submit "$root/deploy/examples/tiny-dpo.yaml" --dry-run --set ranks="$2" \
    --set threads_per_rank=1 --set train.steps="$steps" --set train.batch_size="$pairs" \
    --set train.checkpoint_every=0 --set data.pairs=$((pairs * 2 * 8)) >"$work/job$1.yaml"
  mkdir -p "$work/run$1/tmp"
  TMPDIR="$work/run$1/tmp" mpirun -np "$2" --oversubscribe --bind-to none -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
    "$build/bin/dpo-worker" --spec "$work/job$1.yaml" --run-dir "$work/run$1" >"$work/log$1" 2>&1
}

echo "tiny-sd shape, $pairs pairs per rank, $steps steps, 1 thread per rank"
run 1 1
run 2 2
run a 1 & run b 1; wait
for f in 1 2 a b; do grep -q "timing:" "$work/log$f" || { echo "run $f failed:"; cat "$work/log$f"; exit 1; }; done
awk '
  # field(LINE, BEFORE): the number that follows the literal text BEFORE in LINE (0 if absent).
  function field(line, before,   i) { i = index(line, before); return i ? substr(line, i + length(before)) + 0 : 0 }
  /timing:/ { n++; ms[n] = field($0, "first, "); ar[n] = field($0, "ms/step (");
              wt[n] = field($0, "slowest rank "); red[n] = field($0, "all-reduce and wait ") - wt[n];
              s = $0; sub(/ samples\/s.*/, "", s); sub(/.* /, "", s); sps[n] = s + 0 }
  /checkpoint .* MB in/ { ck[++c] = $0; sub(/.*checkpoint [^ ]*: /, "", ck[c]) }
  END {
    printf "%-27s %9s %10s %16s %9s %11s\n", "", "ms/step", "samples/s", "all-reduce+wait", "waiting", "all-reduce";
    printf "%-27s %9.2f %10.1f %15.1f%%\n", "1 rank", ms[1], sps[1], ar[1];
    printf "%-27s %9.2f %10.1f %15.1f%% %6.2f ms %8.2f ms\n", "2 ranks", ms[2], sps[2], ar[2], wt[2], red[2];
    printf "%-27s %9.2f %10.1f\n", "2 independent 1-rank jobs", (ms[3] + ms[4]) / 2, sps[3] + sps[4];
    printf "speed-up 1 -> 2 ranks: %.2fx (efficiency %.0f%%)\n", sps[2] / sps[1], 50 * sps[2] / sps[1];
    printf "machine ceiling for two processes: %.2fx; 2 ranks reach %.0f%% of it\n",
           (sps[3] + sps[4]) / sps[1], 100 * sps[2] / (sps[3] + sps[4]);
    printf "final checkpoint (2 ranks): %s\n", ck[2];
  }' "$work/log1" "$work/log2" "$work/loga" "$work/logb"
