#!/usr/bin/env bash
# `cmake --install` into a fresh prefix gives a working system: the installed dpod, given no --worker,
# finds the installed dpo-worker next to it and runs the README's example job with the installed dpoctl;
# the installed systemd unit is valid and leaves jobs running when dpod stops; the man pages and dpoctl's
# bash completion are where man and bash-completion look.
#   installed_binaries_run_a_job.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
build=$1
prefix="$T/prefix"
cmake --install "$build" --prefix "$prefix" >"$T/install.log" 2>&1 || it_fail "cmake --install failed: $(tail -n 5 "$T/install.log")"
for p in dpod dpoctl dpo-worker dpo-tool; do
  [ -x "$prefix/bin/$p" ] || it_fail "cmake --install did not install $p"
done

# The man pages, where man finds them under the prefix, and dpoctl's bash completion.
for page in dpod dpoctl dpo-tool; do
  [ -f "$prefix/share/man/man1/$page.1" ] || it_fail "cmake --install did not install the man page $page.1"
done
if command -v man >/dev/null; then
  MANPATH="$prefix/share/man" man -P cat dpoctl 2>/dev/null | grep -q "checkpoints" ||
    it_fail "man does not find the installed dpoctl(1) under $prefix/share/man"
fi
[ -f "$prefix/share/bash-completion/completions/dpoctl" ] || it_fail "cmake --install did not install the bash completion"
bash -c "source '$prefix/share/bash-completion/completions/dpoctl' && complete -p dpoctl" >/dev/null ||
  it_fail "the installed completion does not register for dpoctl"

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
[ "$(it_job_state "$id")" = succeeded ] || it_fail "job $id is $(it_job_state "$id")"
echo "PASS: the installed dpod ran job $id with $prefix/bin/dpo-worker"
