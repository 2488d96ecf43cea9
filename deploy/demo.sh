#!/usr/bin/env bash
# The README's first command: install what is missing, build, start dpod with its embedded defaults
# (unless one already answers at the default address), submit the built-in demo job and stream it.
# Exits 0 only if the job succeeded.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dpod_setup

DPOD="$DPOD_BUILD/daemon/dpod"
DPOCTL="$DPOD_BUILD/client/dpoctl"
started=""
if ! "$DPOCTL" health >/dev/null 2>&1; then
  log="${TMPDIR:-/tmp}/dpod-demo-$(id -u).log"
  "$DPOD" --slots 2 >"$log" 2>&1 &
  started=$!
  trap '[ -n "$started" ] && kill -TERM "$started" 2>/dev/null && wait "$started" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    "$DPOCTL" health >/dev/null 2>&1 && break
    kill -0 "$started" 2>/dev/null || { echo "dpod failed to start:"; cat "$log"; exit 1; }
    sleep 0.1
  done
  echo "started dpod (pid $started, log $log)"
fi
"$DPOCTL" submit "$DPOD_ROOT/deploy/examples/demo.yaml" --watch
