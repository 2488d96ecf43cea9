#!/usr/bin/env bash
# dpod stopped with SIGTERM (systemctl stop, a node drain) while a 2-rank job trains: the ranks get the
# signal, write a checkpoint at their next step boundary and exit "preempted"; the job is recorded
# PREEMPTED, no process is left, and after dpod starts again `dpoctl restart` continues the job from
# that checkpoint, with no step reported twice.
source "$(dirname "$0")/lib.sh"

it_start_dpod
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=150 --set train.checkpoint_every=0 \
       --name stop)
it_wait_at_least "$id" .last_metrics.step 3 60

kill -TERM "$DPOD_PID"
for _ in $(seq 1 300); do kill -0 "$DPOD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$DPOD_PID" 2>/dev/null && it_fail "dpod did not stop within 30 s of SIGTERM"
wait "$DPOD_PID" || it_fail "dpod exited with status $? on SIGTERM"
DPOD_PID=""
[ -z "$(it_job_procs "$id")" ] || it_fail "processes of job $id outlived dpod: $(it_job_procs "$id")"

it_start_dpod
[ "$(it_job_field "$id" .state)" = preempted ] \
  || it_fail "job $id is $(it_job_field "$id" .state): $(it_job_field "$id" .reason)"
[ "$(it_job_field "$id" .reason)" = "dpod shut down; the job stopped at a checkpoint" ] \
  || it_fail "reason: $(it_job_field "$id" .reason)"
at=$(it_job_field "$id" .last_checkpoint.step)
[ "$at" -ge 3 ] || it_fail "dpod knows of no checkpoint from the shutdown (last_checkpoint.step = $at)"

it_restart_resumes "$id" "$at" 150
echo "PASS: stopped by dpod's shutdown at step $at with a checkpoint, PREEMPTED, restarted to SUCCEEDED"
