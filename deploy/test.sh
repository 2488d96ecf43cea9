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
mkdir -p "$DPOD_ASAN_BUILD"
DPOD_PHASE_LOG="$DPOD_ASAN_BUILD/build.log"
: >"$DPOD_PHASE_LOG"
dpod_run_phase "building the torch-free part with the sanitizers in $DPOD_ASAN_BUILD (log $DPOD_PHASE_LOG)" \
  dpod_cmake_build "$DPOD_ASAN_BUILD" -DDPOD_SANITIZE=ON -DDPOD_WITH_TORCH=OFF
cd "$DPOD_ASAN_BUILD"
ctest --output-on-failure -j"$(nproc)" "$@"

DPOD_FUZZ_BUILD=${DPOD_FUZZ_BUILD:-$DPOD_ROOT/build-fuzz}
echo "== the libFuzzer targets, ${DPOD_FUZZ_SECONDS:-20} s each ($DPOD_FUZZ_BUILD)"
DPOD_FUZZ_BUILD=$DPOD_FUZZ_BUILD "$DPOD_ROOT/tests/fuzz/run.sh"
