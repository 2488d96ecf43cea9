#!/usr/bin/env bash
# `cmake --install` into a fresh prefix gives a working system: the installed dpod, given no --worker,
# finds the installed dpo-worker next to it and runs the README's example job with the installed dpoctl;
# the installed systemd unit is valid and leaves jobs running when dpod stops.
#   installed_binaries_run_a_job.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
build=$1
prefix="$T/prefix"
cmake --install "$build" --prefix "$prefix" >"$T/install.log" 2>&1 || it_fail "cmake --install failed: $(tail -n 5 "$T/install.log")"
for p in dpod dpoctl dpo-worker dpo-tool; do
  [ -x "$prefix/bin/$p" ] || it_fail "cmake --install did not install $p"
done

# The systemd unit names the installed dpod, is valid, and stops dpod alone (KillMode=process), never
# the supervisors of running jobs.
unit="$prefix/lib/systemd/system/dpod.service"
[ -f "$unit" ] || it_fail "cmake --install did not install the systemd unit"
grep -q "^ExecStart=$prefix/bin/dpod " "$unit" || it_fail "the unit does not start the installed dpod: $(grep ExecStart "$unit")"
[ "$(grep -c '^KillMode=process$' "$unit")" = 1 ] || it_fail "the unit does not set KillMode=process"
systemd-analyze verify "$unit" >"$T/verify.log" 2>&1 || it_fail "systemd-analyze verify: $(cat "$T/verify.log")"
# The per-user unit for a Slurm login node likewise, reading its options from a config file.
user_unit="$prefix/lib/systemd/user/dpod.service"
[ -f "$user_unit" ] || it_fail "cmake --install did not install the user unit"
grep -q "^ExecStart=$prefix/bin/dpod --config %h/.config/dpod/dpod.conf$" "$user_unit" || it_fail "the user unit: $(grep ExecStart "$user_unit")"
[ "$(grep -c '^KillMode=process$' "$user_unit")" = 1 ] || it_fail "the user unit does not set KillMode=process"
systemd-analyze --user verify "$user_unit" >"$T/verify.log" 2>&1 || systemd-analyze verify "$user_unit" >"$T/verify.log" 2>&1 ||
  it_fail "systemd-analyze verify (user unit): $(cat "$T/verify.log")"

DPOD_BIN="$prefix/bin/dpod"
DPOCTL_BIN="$prefix/bin/dpoctl"
# Options from a config file (as the user unit passes them); the command line's come after and win.
printf '# a comment\nlisten = %s\nstate-dir %s  # trailing comment\nslots 1\n' "$DPOD_ADDR" "$T/state" >"$T/dpod.conf"
"$DPOD_BIN" --config "$T/dpod.conf" --slots 2 >"$T/dpod.log" 2>&1 &
DPOD_PID=$!
for _ in $(seq 1 200); do "$DPOCTL_BIN" health >/dev/null 2>&1 && break; sleep 0.05; done
"$DPOCTL_BIN" health >/dev/null || it_fail "the installed dpod does not answer"
grep -q "worker $prefix/bin/dpo-worker" "$T/dpod.log" || it_fail "the installed dpod does not use the installed worker"
grep -q "state $T/state, mpirun launcher, 2 slots" "$T/dpod.log" || it_fail "dpod did not take its options from the config file and the command line: $(head -n 3 "$T/dpod.log")"

id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=2 --name installed)
"$DPOCTL_BIN" watch "$id" >/dev/null 2>&1 || it_fail "the job did not succeed with the installed binaries"
[ "$(it_job_field "$id" .state)" = succeeded ] || it_fail "job $id is $(it_job_field "$id" .state)"
echo "PASS: the installed dpod ran job $id with $prefix/bin/dpo-worker"
