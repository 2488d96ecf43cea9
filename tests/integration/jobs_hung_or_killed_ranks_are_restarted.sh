#!/usr/bin/env bash
# A rank stopped with SIGSTOP makes the job hang (rank 0 waits in an all-reduce): dpod's watchdog sees no
# progress, kills the attempt and starts another, which resumes from the newest checkpoint. Then a rank
# is killed outright: the attempt fails and is restarted the same way. The job ends SUCCEEDED after 3
# attempts, each step's metrics once.
source "$(dirname "$0")/lib.sh"

STEPS=90
it_start_dpod --heartbeat-floor 3 --restart-backoff 0.5
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=$STEPS \
       --set train.checkpoint_every=5 --set max_restarts=3 --name hang)
it_wait_at_least "$id" .last_checkpoint.step 5 60
rank=$(it_job_ranks "$id" | tail -n 1)
[ -n "$rank" ] || it_fail "no rank to stop"
kill -STOP "$rank"
it_wait_at_least "$id" '.attempts | length' 2 60
reason=$(it_job_field "$id" '.attempts[0].reason')
case "$reason" in "no progress for "*) ;; *) it_fail "attempt 1 ended: $reason" ;; esac
for _ in $(seq 1 100); do kill -0 "$rank" 2>/dev/null || break; sleep 0.1; done
kill -0 "$rank" 2>/dev/null && it_fail "the stopped rank $rank outlived its attempt"

it_wait_at_least "$id" .last_checkpoint.step 15 120
rank=$(it_job_ranks "$id" | tail -n 1)
[ -n "$rank" ] || it_fail "no rank to kill in attempt 2"
kill -KILL "$rank"
it_wait_state "$id" succeeded 240
[ "$(it_job_field "$id" '.attempts | length')" = 3 ] || it_fail "attempts: $(it_job_field "$id" .attempts)"
[ "$(it_job_field "$id" .restarts)" = 2 ] || it_fail "restarts: $(it_job_field "$id" .restarts)"
grep -q "resumed from" "$T/state/jobs/$id"/attempt-*.log || it_fail "no attempt resumed from a checkpoint"
it_check_steps_once "$id" $STEPS
echo "PASS: hung (SIGSTOP) and killed ranks restarted from checkpoints; job $id succeeded on attempt 3"
