#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, no torch) into their own build folder and runs each
# for a while over a copy of its seed corpus (corpus/<target>/), printing one line per target: its name,
# how many inputs it ran, and ok or what it found. Exits non-zero naming every target that found a crash,
# a leak, a timeout or an out-of-memory; the input that did it is kept in <build>/fuzz-artifacts/.
#
#   tests/fuzz/run.sh [target...]     all targets (those with a folder in corpus/) by default
# Environment: DPOD_FUZZ_BUILD (build folder, ./build-fuzz), DPOD_FUZZ_SECONDS (per target, 20),
# DPOD_JOBS (build parallelism, nproc).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${DPOD_FUZZ_BUILD:-$root/build-fuzz}
secs=${DPOD_FUZZ_SECONDS:-20}
jobs=${DPOD_JOBS:-$(nproc)}
targets=("$@")
# Every target has a seed corpus, so the corpus folders name them all.
[ ${#targets[@]} -gt 0 ] || targets=($(cd "$here/corpus" && ls -d fuzz_*))

mkdir -p "$build"
log="$build/fuzz-build.log"
{ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_COMPILER=clang++ -DDPOD_WITH_TORCH=OFF -DDPOD_FUZZ=ON &&
  cmake --build "$build" -j"$jobs" --target "${targets[@]}"; } >"$log" 2>&1 ||
  { tail -n 40 "$log"; echo "fuzz build failed: $log"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/dpod-fuzz-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
failed=()
for t in "${targets[@]}"; do
  cp -r "$here/corpus/$t" "$work/$t.corpus"
  # The first folder receives what the run finds; the committed seeds stay as they are.
  rc=0
  "$build/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t-" "$work/$t.corpus" >"$work/$t.log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -n 1)
  cp "$work/$t.log" "$build/$t.log"
  if [ "$rc" -eq 0 ]; then
    printf '%-18s %10s execs  ok\n' "$t" "${execs:-?}"
  else
    found=$(grep -o "Test unit written to .*" "$work/$t.log" | tail -n 1 || true)
    printf '%-18s %10s execs  FAILED (exit %d) %s\n' "$t" "${execs:-?}" "$rc" "$found"
    grep -E "^(==[0-9]+==ERROR|SUMMARY|.*runtime error)" "$work/$t.log" | head -n 5 || true
    echo "  full log: $build/$t.log"
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]}"
  exit 1
fi
