#!/bin/sh
# dpoctl against the scripted fake dpod (fake_server.h): output, exit statuses, and watch's reconnect
# (job 5's first stream breaks after three events; the next one resends an event the client has seen).
# usage: dpoctl_fake_server.sh DPOCTL FAKE_DPOD EXAMPLE_JOB
set -u
dpoctl=$1 fake=$2 example=$3
. "$(dirname "$0")/start_fake_dpod.sh"
failures=0

# check STATUS DESCRIPTION FILE FRAGMENT ARGS...: runs dpoctl; checks the exit status and that the
# named output (out or err) holds FRAGMENT.
check() {
  want=$1 what=$2 file=$3 frag=$4
  shift 4
  "$dpoctl" --addr "$addr" "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  if [ "$got" -ne "$want" ] || ! grep -qF -- "$frag" "$tmp/$file"; then
    echo "FAIL: $what: dpoctl $*: exit $got (want $want), $file should hold '$frag'"
    sed 's/^/  out| /' "$tmp/out"; sed 's/^/  err| /' "$tmp/err"
    failures=$((failures + 1))
  else
    echo "ok: $what"
  fi
}

check 0 "health prints SERVING" out SERVING health
check 0 "submit prints the job id" out "submitted job 42" submit "$example"
check 0 "list shows a table" out "STEP/TOTAL" list
check 0 "list --state filters parse" out "fake" list --state running,queued --limit 5
check 0 "get describes the job" out "run dir:" get 7
check 0 "get --json" out '"run_dir"' get 7 --json
# -o json is protobuf's JSON mapping: enum value names, 64-bit integers as strings.
"$dpoctl" --addr "$addr" get 7 -o json >"$tmp/get.json" 2>"$tmp/err"
if jq -e '.id == "7" and .state == "JOB_STATE_RUNNING" and .created_unix_ms == "1700000000000"
          and .last_metrics.step == 2 and .last_metrics.loss == 0.5' "$tmp/get.json" >/dev/null; then
  echo "ok: get -o json speaks protobuf's JSON mapping"
else
  echo "FAIL: get 7 -o json:"; cat "$tmp/get.json" "$tmp/err"; failures=$((failures + 1))
fi
check 0 "get -o yaml" out 'state: "JOB_STATE_RUNNING"' get 7 -o yaml
check 0 "get -o yaml nests messages" out '  step: 2' get 7 -o yaml
check 2 "get -o of a bad format" err "table, json or yaml" get 7 -o xml
check 0 "list -o json is an array of jobs" out '"id":	"5"' list -o json
check 0 "list -q prints ids only" out "3" list -q
[ "$("$dpoctl" --addr "$addr" list -q | tr '\n' ' ')" = "7 5 3 " ] || { echo "FAIL: list -q"; failures=$((failures + 1)); }
[ "$("$dpoctl" --addr "$addr" list -q --name 'solo-*' | tr '\n' ' ')" = "7 " ] ||
  { echo "FAIL: list --name GLOB"; failures=$((failures + 1)); }
[ "$("$dpoctl" --addr "$addr" list -q --name ak | tr '\n' ' ')" = "5 3 " ] ||
  { echo "FAIL: list --name SUBSTRING"; failures=$((failures + 1)); }
[ "$("$dpoctl" --addr "$addr" list -q --name fa --limit 1 | tr '\n' ' ')" = "5 " ] ||
  { echo "FAIL: list --name with --limit"; failures=$((failures + 1)); }
check 0 "list --name with no match" out "no jobs with that name" list --name nothing
check 0 "submit -q prints only the id" out "42" submit "$example" -q
[ "$("$dpoctl" --addr "$addr" submit "$example" -q)" = 42 ] || { echo "FAIL: submit -q"; failures=$((failures + 1)); }
check 0 "a job by its unique name" out "job 7 (fake)" get solo-7
check 2 "a name two jobs have is refused" err "2 jobs are named 'fake' (ids 5, 3): give the id" get fake
check 1 "an unknown name" err "no job is named 'nobody'" get nobody
check 2 "a bad id is still a usage error" err "bad job id '12x'" get 12x
check 0 "checkpoints lists step, size, metrics and path" out "1       3.0 MiB    0.5000   -     /runs/fake/checkpoints/step-000001" checkpoints 7
check 0 "checkpoints without size or metrics" out "2       -          -        -     /runs/fake/checkpoints/step-000002" checkpoints solo-7
"$dpoctl" --addr "$addr" checkpoints 7 -o json >"$tmp/ck.json" 2>"$tmp/err"
if jq -e 'length == 2 and .[0].size_bytes == "3145728" and .[0].metrics.step == 2 and .[1].step == 2' \
     "$tmp/ck.json" >/dev/null; then
  echo "ok: checkpoints -o json"
else
  echo "FAIL: checkpoints 7 -o json:"; cat "$tmp/ck.json" "$tmp/err"; failures=$((failures + 1))
fi
check 0 "checkpoints of a job without any" out "job 3 has no checkpoint on disk" checkpoints 3
check 1 "get of a missing job" err "no job 404" get 404
check 0 "cancel" out "cancelled job 9" cancel 9
check 0 "watch of a job that succeeds" out "job 1 succeeded" watch 1 --no-progress
check 0 "watch prints metrics lines" out "step 1/3 loss 0.6631 acc 0.50 mse 1.0433/1.0436 margin 0.012 gnorm 1.23 lr 1.0e-05 12.3 samples/s" watch 1
check 0 "watch prints checkpoints" out "checkpoint step 3: /runs/job/checkpoint-3" watch 1
check 1 "watch of a job that fails exits 1" out "exit status 3" watch 2
check 1 "watch of a missing job" err "job 999" watch 999
check 0 "watch --after-seq" out "state succeeded" watch 1 --after-seq 6

# Reconnect: every seq exactly once, in order, despite the break and the resent event.
"$dpoctl" --addr "$addr" watch 5 --events-jsonl >"$tmp/jsonl" 2>"$tmp/err"
rc=$?
seqs=$(sed -n 's/.*"seq":"\([0-9]*\)".*/\1/p' "$tmp/jsonl" | tr '\n' ' ')
if [ $rc -eq 0 ] && [ "$seqs" = "1 2 3 4 5 6 7 " ] && grep -q reconnecting "$tmp/err"; then
  echo "ok: watch reconnects without gaps or duplicates"
else
  echo "FAIL: watch 5 --events-jsonl: exit $rc, seqs '$seqs'"; cat "$tmp/jsonl" "$tmp/err"
  failures=$((failures + 1))
fi

# submit --watch continues as watch; the fake's job 42 is unknown to WatchJob, so it fails with 1.
check 1 "submit --watch follows the job" out "submitted job 42" submit "$example" --watch

kill "$fake_pid"
wait "$fake_pid" 2>/dev/null
check 3 "a stopped daemon is a connection error" err "cannot reach dpod" list

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
