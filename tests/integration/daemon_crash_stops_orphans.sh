#!/usr/bin/env bash
# dpod dies with SIGKILL while a 2-rank job trains: mpirun and the ranks live on, orphaned. The next
# dpod on the same state directory kills them (their slots would otherwise be handed out twice),
# records the job FAILED with a reason that says so, and `dpoctl restart` resumes it from its newest
# checkpoint to SUCCEEDED.
source "$(dirname "$0")/lib.sh"

it_start_dpod
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=200 --set train.checkpoint_every=5 \
       --name crash)
it_wait_at_least "$id" .last_checkpoint.step 5 60

kill -KILL "$DPOD_PID"
wait "$DPOD_PID" 2>/dev/null || true
DPOD_PID=""
sleep 0.5
[ -n "$(it_job_ranks "$id")" ] || it_fail "the ranks did not outlive the daemon: nothing for this test to check"

it_start_dpod
[ "$(it_job_field "$id" .state)" = failed ] || it_fail "after the restart job $id is $(it_job_field "$id" .state)"
reason=$(it_job_field "$id" .reason)
case "$reason" in
  "dpod restarted while the job was running; stopped its "*" remaining processes") ;;
  *) it_fail "reason: $reason" ;;
esac
for _ in $(seq 1 50); do [ -z "$(it_job_procs "$id")" ] && break; sleep 0.1; done
[ -z "$(it_job_procs "$id")" ] || it_fail "processes of job $id still run: $(it_job_procs "$id")"

at=$(it_job_field "$id" .last_checkpoint.step)
# The ranks trained on, and checkpointed, while no daemon listened: the restart resumes from the newest
# checkpoint on disk, which dpod may never have heard of, so only "at least where dpod last knew" holds.
"$DPOCTL_BIN" restart "$id" >/dev/null || it_fail "dpoctl restart failed"
"$DPOCTL_BIN" watch "$id" --no-progress >"$T/restarted.txt" 2>&1 || it_fail "the restarted job did not succeed"
from=$(sed -n 's/.*resumed from .*(step \([0-9]*\)).*/\1/p' "$T/state/jobs/$id/job.log" | tail -n 1)
[ -n "$from" ] && [ "$from" -ge "$at" ] || it_fail "the restarted job resumed from '${from}', not from step >= $at"
[ "$(it_job_field "$id" .last_metrics.step)" = 200 ] || it_fail "the restarted job ended at step $(it_job_field "$id" .last_metrics.step)"
echo "PASS: ${reason}; restarted from step $from (dpod knew of $at) and succeeded"
