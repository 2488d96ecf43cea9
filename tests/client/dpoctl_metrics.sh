#!/bin/sh
# dpoctl metrics against the scripted fake dpod: its job 1 has steps 1..3 at seq 3..5, and its GetJob
# says the last event is seq 4, so exactly steps 1 and 2 are the job's metrics "so far".
# usage: dpoctl_metrics.sh DPOCTL FAKE_DPOD
set -u
dpoctl=$1 fake=$2
. "$(dirname "$0")/start_fake_dpod.sh"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

want="time_unix_ms,step,total_steps,loss,implicit_acc,policy_mse,ref_mse,reward_margin,grad_norm,learning_rate,samples_per_sec,step_seconds,saturated_share,drift,loss_scale,skipped
1700000003000,1,3,0.6631,0.5,1.0433,1.0436,0.012,1.23,1e-05,12.3,,,,,
1700000004000,2,3,0.6531,0.5,1.0433,1.0436,0.012,1.23,1e-05,12.3,,,,,"
out=$("$dpoctl" --addr "$addr" metrics 1) || fail "metrics 1 exited $?"
[ "$out" = "$want" ] || fail "metrics 1 (csv) printed:
$out"
[ "$("$dpoctl" --addr "$addr" metrics 1 --format csv)" = "$want" ] || fail "--format csv differs from the default"

out=$("$dpoctl" --addr "$addr" metrics 1 --format jsonl) || fail "metrics 1 --format jsonl exited $?"
[ "$(echo "$out" | wc -l)" -eq 2 ] || fail "jsonl: not one line per step: $out"
echo "$out" | head -n 1 | grep -q '^{"step":1,"total_steps":3,"loss":0.6631,.*"time_unix_ms":"1700000003000"}$' ||
  fail "jsonl: first line is $(echo "$out" | head -n 1)"
echo "$out" | tail -n 1 | grep -q '"step":2,' || fail "jsonl: second line is not step 2"

"$dpoctl" --addr "$addr" metrics 1 --format xml >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "csv or jsonl" "$tmp/err" || fail "a bad --format is not a usage error: $(cat "$tmp/err")"
"$dpoctl" --addr "$addr" metrics 404 >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "404" "$tmp/err" || fail "metrics of a missing job: $(cat "$tmp/err")"

[ $failures -eq 0 ] && echo "PASS: dpoctl metrics"
exit $((failures > 0))
