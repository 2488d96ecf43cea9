#!/bin/sh
# dpoctl watch on a terminal (a pseudo-terminal from script(1); CI has no standard input) against the
# scripted fake dpod: the steps are one line redrawn in place, with the checkpoint and the final state
# printed above it and the finished line left as the last line; off a terminal every event is a plain
# line. The fake's job 1: running at t=2 s, steps 1..3 of 3 at t=3, 4, 5 s, a checkpoint at 6 s.
# usage: dpoctl_watch_on_a_terminal.sh DPOCTL FAKE_DPOD
set -u
dpoctl=$1 fake=$2
. "$(dirname "$0")/start_fake_dpod.sh"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
cr=$(printf '\r')

script -qec "$dpoctl --addr $addr watch 1; echo exit=\$?" /dev/null </dev/null >"$tmp/tty.raw"
# What the terminal finally shows: each line as the last redraw left it.
sed "s/.*$(printf '\033')\[K//; s/$cr\$//" "$tmp/tty.raw" | tr -d "$cr" >"$tmp/screen"
cat -v "$tmp/tty.raw" >"$tmp/tty.visible"

grep -q "exit=0" "$tmp/screen" || fail "watch of a job that succeeds did not exit 0"
# Redrawn in place: a carriage return and an erase-line before the progress line (the terminal's own
# line ends are CR LF, so a bare CR proves nothing).
grep -q "$cr$(printf '\033')\[Kstep 1/3 \[" "$tmp/tty.raw" || fail "the progress line is not redrawn in place"
# No step gets a line of its own: the steps' plain lines must not appear on a terminal.
grep -q "step 1/3 loss" "$tmp/screen" && fail "a step was printed as a plain line on a terminal"
grep -qx "checkpoint step 3: /runs/job/checkpoint-3 (3.0 MiB)" "$tmp/screen" || fail "no checkpoint line above the bar"
grep -qx "state succeeded" "$tmp/screen" || fail "no final state line"
# The finished progress line: 3 of 3, the bar full, 2 steps in 2 s, the last step 3 s after RUNNING,
# nothing left.
final="step 3/3 \[#*\] 100% 00:03<00:00 1.00 step/s loss 0.6431 acc 0.50"
grep -qx "$final" "$tmp/screen" || fail "no finished progress line like '$final'"
# Order: the checkpoint, the final state, the finished line, the summary.
order=$(grep -E "^(checkpoint step 3|state succeeded|step 3/3 |job 1 succeeded)" "$tmp/screen" | cut -c1-6 | tr '\n' '|')
[ "$order" = "checkp|state |step 3|job 1 |" ] || fail "lines out of order: $order"
# The bar is drawn at least once before the checkpoint (a redraw, not only the final line).
[ "$(grep -o "step [0-9]/3 \[" "$tmp/tty.raw" | wc -l)" -ge 2 ] || fail "the progress line was drawn only once"

# --no-progress on a terminal, and stdout not a terminal: one plain line per step, no redraws.
script -qec "$dpoctl --addr $addr watch 1 --no-progress" /dev/null </dev/null >"$tmp/plain.raw"
tr -d "$cr" <"$tmp/plain.raw" | grep -q "^step 2/3 loss 0.6531" || fail "--no-progress on a terminal prints no step lines"
"$dpoctl" --addr "$addr" watch 1 >"$tmp/pipe.out"
grep -q "$cr" "$tmp/pipe.out" && fail "carriage returns in piped output"
[ "$(grep -c '^step [123]/3 loss' "$tmp/pipe.out")" -eq 3 ] || fail "piped output lacks a line per step: $(cat "$tmp/pipe.out")"

if [ $failures -ne 0 ]; then
  echo "---- terminal output (cat -v):"; cat "$tmp/tty.visible"
  exit 1
fi
echo "PASS: watch redraws one progress line on a terminal and prints plain lines elsewhere"
