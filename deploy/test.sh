#!/usr/bin/env bash
# The README's second command: install what is missing, build, run the whole suite with ctest; then
# build the torch-free part again with AddressSanitizer and UndefinedBehaviorSanitizer and run its suites
# (the base library, specs, the RPC client, the daemon and its launcher, the data library, dpoctl); last,
# the libFuzzer targets for 20 s each (tests/fuzz/run.sh, clang).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dpod_setup
cd "$DPOD_BUILD"
# Cases that launch dpod or MPI jobs hold a resource lock (the integration tests also run alone); the
# rest run in parallel.
ctest --output-on-failure -j"$(nproc)" "$@"

DPOD_ASAN_BUILD=${DPOD_ASAN_BUILD:-$DPOD_ROOT/build-asan}
echo "== the torch-free suites under ASan and UBSan ($DPOD_ASAN_BUILD)"
mkdir -p "$DPOD_ASAN_BUILD"
log="$DPOD_ASAN_BUILD/build.log"
{ cmake -S "$DPOD_ROOT" -B "$DPOD_ASAN_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDPOD_SANITIZE=ON -DDPOD_WITH_TORCH=OFF &&
  cmake --build "$DPOD_ASAN_BUILD" -j"$(nproc)"; } >"$log" 2>&1 || { tail -n 40 "$log"; echo "build failed: $log"; exit 1; }
cd "$DPOD_ASAN_BUILD"
ctest --output-on-failure -j"$(nproc)" "$@"

DPOD_FUZZ_BUILD=${DPOD_FUZZ_BUILD:-$DPOD_ROOT/build-fuzz}
echo "== the libFuzzer targets, ${DPOD_FUZZ_SECONDS:-20} s each ($DPOD_FUZZ_BUILD)"
DPOD_FUZZ_BUILD=$DPOD_FUZZ_BUILD "$DPOD_ROOT/tests/fuzz/run.sh"
