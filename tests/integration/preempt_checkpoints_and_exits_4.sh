#!/usr/bin/env bash
# SIGTERM to the ranks (as Slurm sends on preemption) makes them checkpoint at the next step boundary
# and exit with status 4, "preempted, resumable"; the run then resumes from that checkpoint. Through
# dpod, such an attempt is requeued and resumes by itself; `dpoctl drain` ends it PREEMPTED instead.
source "$(dirname "$0")/lib.sh"

"$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --dry-run --set train.steps=100000 \
  --set train.checkpoint_every=0 >"$T/job.yaml" || it_fail "dpoctl --dry-run failed"
mkdir -p "$T/run/tmp"
TMPDIR="$T/run/tmp" setsid mpirun -np 2 --oversubscribe --bind-to none "$WORKER_BIN" --spec "$T/job.yaml" \
  --run-dir "$T/run" >"$T/run.log" 2>&1 &
sid=$!
for _ in $(seq 1 600); do grep -q "^step 3/" "$T/run.log" && break; sleep 0.1; done
grep -q "^step 3/" "$T/run.log" || it_fail "the job never reached step 3: $(tail -n 5 "$T/run.log")"
pkill -TERM -s "$sid" -x dpo-worker || it_fail "no dpo-worker ranks to signal"
status=0
wait "$sid" || status=$?
[ "$status" = 4 ] || it_fail "mpirun exited $status, want 4 (preempted): $(tail -n 8 "$T/run.log")"
ck=$(ls -d "$T"/run/checkpoints/step-* | tail -n 1)
[ -f "$ck/COMPLETE" ] || it_fail "no complete checkpoint after preemption (found $ck)"
step=$((10#${ck##*step-}))
grep -q "preempted: stopped after step $step" "$T/run.log" || it_fail "the log does not say where it stopped"

# Resume it to two steps past the preemption point.
sed -i "s/^\(  steps:\).*/\1 $((step + 2))/" "$T/job.yaml"
TMPDIR="$T/run/tmp" mpirun -np 2 --oversubscribe --bind-to none "$WORKER_BIN" --spec "$T/job.yaml" \
  --run-dir "$T/run" >"$T/resume.log" 2>&1 || it_fail "resume failed: $(tail -n 5 "$T/resume.log")"
grep -q "resumed from .*(step $step)" "$T/resume.log" || it_fail "did not resume from step $step"
[ -f "$T/run/checkpoints/step-$(printf %06d $((step + 2)))/COMPLETE" ] || it_fail "no final checkpoint after resume"

# Through the daemon: a preempted attempt is requeued (no restart used up) and resumes to SUCCEEDED.
it_start_dpod
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=40 --set train.checkpoint_every=0 \
       --name preempt)
"$DPOCTL_BIN" watch "$id" --events-jsonl >"$T/events-$id.jsonl" 2>/dev/null &
watcher=$!
it_wait_at_least "$id" .last_metrics.step 2 60
ranks=$(it_job_ranks "$id")
[ -n "$ranks" ] || it_fail "no ranks of job $id to signal"
kill -TERM $ranks
wait "$watcher" || it_fail "job $id did not succeed after its preemption: $(it_job_field "$id" .message)"
at=$(sed -n 's/.*preempted: stopped after step \([0-9]*\).*/\1/p' "$T/state/jobs/$id/attempt-1.log" | head -n 1)
[ -n "$at" ] || it_fail "the first attempt did not stop at a checkpoint"
grep -q "resumed from .*(step $at)" "$T/state/jobs/$id/attempt-2.log" || it_fail "attempt 2 did not resume from step $at"
states=$(jq -r -s "$IT_JQ_DEFS"' [.[] | select(.state) | .state.state | state_name] | join(",")' "$T/events-$id.jsonl")
[ "$states" = "queued,starting,running,queued,starting,running,succeeded" ] || it_fail "states: $states"
steps=$(jq -c -s '[.[] | select(.metrics) | .metrics.step]' "$T/events-$id.jsonl")
[ "$steps" = "$(jq -c -n '[range(1; 41)]')" ] || it_fail "metrics steps over both attempts: $steps"
[ "$(it_job_field "$id" .restarts // 0)" = 0 ] || it_fail "a preemption used up a restart"

# `dpoctl drain` preempts for maintenance: the job ends PREEMPTED at a checkpoint, new jobs are refused
# until `dpoctl undrain`, and `dpoctl restart` resumes it to SUCCEEDED.
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=40 --set train.checkpoint_every=0 \
       --name drained)
it_wait_at_least "$id" .last_metrics.step 2 60
"$DPOCTL_BIN" drain >/dev/null || it_fail "dpoctl drain failed"
it_wait_state "$id" preempted 60
[ "$(it_job_field "$id" .exit_code)" = 4 ] || it_fail "exit code recorded as $(it_job_field "$id" .exit_code)"
at=$(it_job_field "$id" .last_checkpoint.step)
[ "$at" -ge 2 ] || it_fail "dpod knows of no preemption checkpoint (last_checkpoint.step = $at)"
if "$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" 2>"$T/err.txt" >/dev/null; then
  it_fail "a draining dpod accepted a job"
fi
grep -qi "drain" "$T/err.txt" || it_fail "the refusal does not say why: $(cat "$T/err.txt")"
"$DPOCTL_BIN" undrain >/dev/null || it_fail "dpoctl undrain failed"
it_restart_resumes "$id" "$at" 40
states=$(jq -r -s "$IT_JQ_DEFS"' [.[] | select(.state) | .state.state | state_name] | join(",")' "$T/restarted-$id.jsonl")
[ "$states" = "queued,starting,running,preempted,queued,starting,running,succeeded" ] || it_fail "states: $states"
if "$DPOCTL_BIN" restart "$id" 2>"$T/err.txt"; then it_fail "restarting a succeeded job was accepted"; fi
grep -q "succeeded" "$T/err.txt" || it_fail "the refusal does not say why: $(cat "$T/err.txt")"
echo "PASS: preempted at step $step with a complete checkpoint, resumed to $((step + 2)); dpod: requeued and SUCCEEDED; drained: PREEMPTED, restart -> SUCCEEDED"
