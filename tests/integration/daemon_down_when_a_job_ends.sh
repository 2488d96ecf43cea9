#!/usr/bin/env bash
# No dpod runs while a job finishes: its ranks cannot report, keep what they could not deliver in the
# attempt's report journal, and exit; the supervisor records how the attempt ended. The next dpod
# records the job SUCCEEDED with every step and its final checkpoint.
source "$(dirname "$0")/lib.sh"

STEPS=30
it_start_dpod
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=$STEPS \
       --set train.checkpoint_every=10 --name down)
it_wait_at_least "$id" .last_metrics.step 3 60
it_kill_dpod
for _ in $(seq 1 1200); do [ -f "$T/state/jobs/$id/attempt-1.exit" ] && break; sleep 0.1; done
[ -f "$T/state/jobs/$id/attempt-1.exit" ] || it_fail "the attempt did not end (or recorded nothing)"
[ -f "$T/state/jobs/$id/attempt-1.reports" ] || it_fail "the ranks left no report journal for dpod"
it_start_dpod
[ "$(it_job_state "$id")" = succeeded ] || it_fail "job $id is $(it_job_state "$id"): $(it_job_field "$id" .reason)"
[ ! -e "$T/state/jobs/$id/attempt-1.reports" ] || it_fail "the journal was not taken in"
it_check_steps_once "$id" $STEPS
echo "PASS: job $id ended with no dpod running and was recorded whole by the next one"
