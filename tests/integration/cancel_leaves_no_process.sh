#!/usr/bin/env bash
# Cancelling a running job, of 2 ranks and of 1, ends it CANCELLED, leaves no mpirun or dpo-worker
# behind, and ends cleanly: no crash in the job log (Open MPI's mpirun used to segfault in PMIx_Finalize
# when dpod's SIGTERM reached it while it was already tearing the job down) and no exit status 139.
source "$(dirname "$0")/lib.sh"
it_start_dpod

# cancel_cleanly RANKS: submits a long job, cancels it mid-training, checks how it ended.
cancel_cleanly() {
  local id left log exit_record
  id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=100000 \
         --set train.checkpoint_every=0 --set ranks="$1" --name "to-cancel-$1")
  it_wait_state "$id" running 60
  # Wait for a real training step, so the ranks are deep inside libtorch when the cancel lands.
  for _ in $(seq 1 600); do
    [ "$(it_job_field "$id" '.last_metrics.step // 0')" -ge 1 ] && break
    sleep 0.1
  done
  [ -n "$(it_job_procs "$id")" ] || it_fail "no processes found for running job $id"

  "$DPOCTL_BIN" cancel "$id" >/dev/null || it_fail "dpoctl cancel $id failed"
  it_wait_state "$id" cancelled 30
  # The state is recorded when mpirun exits; give the reaper a moment, then nothing may remain.
  for _ in $(seq 1 50); do [ -z "$(it_job_procs "$id")" ] && break; sleep 0.1; done
  left=$(it_job_procs "$id")
  [ -z "$left" ] || it_fail "job $id ($1 ranks): processes left behind: $(ps -o pid,ppid,pgid,sid,args -p "$(echo $left | tr ' ' ,)")"

  log="$T/state/jobs/$id/attempt-1.log"
  grep -q "cancelled by dpod" "$log" || it_fail "job $id ($1 ranks): the worker did not stop at the directive"
  if grep -nE "Segmentation fault|signal 11|Process received signal|End of error message|backtrace|abort is already in progress" "$log"; then
    it_fail "job $id ($1 ranks): its log shows a crash after the cancel"
  fi
  exit_record="$T/state/jobs/$id/attempt-1.exit"
  [ -f "$exit_record" ] || it_fail "job $id: no exit record"
  grep -qx "exit_status 139" "$exit_record" && it_fail "job $id ($1 ranks): mpirun exited 139: $(cat "$exit_record")"
  grep -qx "term_signal 0" "$exit_record" || it_fail "job $id ($1 ranks): mpirun died by a signal: $(cat "$exit_record")"
  CANCELLED_ID=$id
}

cancel_cleanly 2
cancel_cleanly 1

# A watcher of a cancelled job sees the terminal state and dpoctl exits non-zero.
if "$DPOCTL_BIN" watch "$CANCELLED_ID" >"$T/watch.txt" 2>&1; then it_fail "watch of a cancelled job exited 0"; fi
grep -qi cancelled "$T/watch.txt" || it_fail "watch output does not say cancelled"
# The daemon is still serving.
"$DPOCTL_BIN" health >/dev/null || it_fail "dpod stopped answering"
echo "PASS: jobs of 2 ranks and of 1 cancelled cleanly"
