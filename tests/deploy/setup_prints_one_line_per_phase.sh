#!/usr/bin/env bash
# deploy/setup.sh's phases: one line each, the commands' output only in the log it names, the log's tail
# when a phase fails, and on a terminal a percentage taken from the output's own progress lines. The
# phases run fake commands (no apt, no build), so this needs neither root nor network.
#   setup_prints_one_line_per_phase.sh SOURCE_DIR
set -u
src=$1
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# A script that sources setup.sh with its log under $tmp and defines the fake commands.
cat >"$tmp/env.sh" <<SH
DPOD_BUILD=$tmp/build DPOD_SETUP_LOG=$tmp/setup.log
source "$src/deploy/setup.sh"
set +e
mkdir -p $tmp/build; : >"\$DPOD_SETUP_LOG"
noisy_ok() { for i in \$(seq 1 400); do echo "[ \$((i / 4))%] Building C object obj\$i.o"; done; }
noisy_steps() { for i in \$(seq 1 20); do echo "step \$i/20 loss 0.5"; done; }
noisy_fail() { for i in \$(seq 1 100); do echo "compiling \$i"; done; echo "error: the thing that broke" >&2; return 2; }
SH

# Not a terminal: exactly one line, everything else in the log.
out=$(bash -c "source $tmp/env.sh; dpod_run_phase 'building here' noisy_ok")
[ "$out" = "dpod: building here ... done" ] || fail "a quiet phase printed: $(echo "$out" | head -n 5)"
[ "$(grep -c 'Building C object' "$tmp/setup.log")" -eq 400 ] || fail "the log does not hold the 400 build lines"

# A failing phase: its status, FAILED, the log's last lines (stderr included) and the log's name.
out=$(bash -c "source $tmp/env.sh; dpod_run_phase 'building there' noisy_fail")
rc=$?
[ $rc -eq 2 ] || fail "a failing phase returned $rc, not 2"
echo "$out" | head -n 1 | grep -qx "dpod: building there ... FAILED" || fail "no FAILED line: $(echo "$out" | head -n 1)"
echo "$out" | grep -q "error: the thing that broke" || fail "the failure's tail lacks the error"
echo "$out" | grep -q "compiling 100" || fail "the failure's tail lacks the last lines"
echo "$out" | grep -q "compiling 30$" && fail "the failure printed more than the log's tail"
echo "$out" | grep -q "$tmp/setup.log" || fail "the failure does not name the log"

# Packages: all present is one line; missing ones are counted and installed in a phase of their own.
out=$(bash -c "source $tmp/env.sh; DPOD_PACKAGES=(bash coreutils); dpod_install_packages")
[ "$out" = "dpod: checking 2 packages ... all installed" ] || fail "checking installed packages printed: $out"
out=$(bash -c "source $tmp/env.sh; DPOD_PACKAGES=(bash dpod-no-such-package)
  dpod_apt_install_() { echo \"apt: installing \$*\"; for i in \$(seq 1 50); do echo 'Unpacking x ...'; done; }
  dpod_install_packages")
want="dpod: checking 2 packages ... 1 missing
dpod: installing 1 packages (dpod-no-such-package) ... done"
[ "$out" = "$want" ] || fail "installing printed: $out"
grep -q "apt: installing dpod-no-such-package" "$tmp/setup.log" || fail "apt's output is not in the log"

# On a terminal (script gives one; CI has no stdin): the line is redrawn with the percentage and ends
# with the result, still one line.
script -qec "bash -c 'source $tmp/env.sh; dpod_run_phase building noisy_ok'" /dev/null </dev/null >"$tmp/tty.out"
tr -d '\r' <"$tmp/tty.out" | grep -q "dpod: building ... 50%" || fail "no 50% on a terminal: $(cat -v "$tmp/tty.out" | head -c 300)"
grep -q "$(printf '\r')" "$tmp/tty.out" || fail "the line is not redrawn in place (no carriage return)"
tr -d '\r' <"$tmp/tty.out" | sed 's/.*\x1b\[K//' | grep -qx "dpod: building ... done" || fail "the terminal line does not end with done"
[ "$(tr -cd '\n' <"$tmp/tty.out" | wc -c)" -eq 1 ] || fail "the terminal got more than one line: $(cat -v "$tmp/tty.out" | head -c 300)"
# The demo's phases follow jobs with dpoctl watch: its "step a/b" lines give the percentage.
script -qec "bash -c 'source $tmp/env.sh; dpod_run_phase training noisy_steps'" /dev/null </dev/null >"$tmp/steps.out"
tr -d '\r' <"$tmp/steps.out" | grep -q "dpod: training ... 35%" || fail "no 35% from step 7/20: $(cat -v "$tmp/steps.out" | head -c 300)"

[ $failures -eq 0 ] && echo "PASS: setup.sh prints one line per phase"
exit $((failures > 0))
