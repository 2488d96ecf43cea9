#!/usr/bin/env bash
# The README's second command: install what is missing, build, run the whole suite with ctest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dpod_setup
cd "$DPOD_BUILD"
# Tests that launch MPI jobs share the machine's two cores, so they are marked RUN_SERIAL; the rest run
# in parallel.
ctest --output-on-failure -j"$(nproc)" "$@"
