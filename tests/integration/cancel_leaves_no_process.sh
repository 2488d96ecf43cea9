#!/usr/bin/env bash
# Cancelling a running 2-rank job ends it CANCELLED and leaves no mpirun or dpo-worker behind.
source "$(dirname "$0")/lib.sh"
it_start_dpod

id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=100000 \
       --set train.checkpoint_every=0 --name to-cancel)
it_wait_state "$id" running 60
# Wait for a real training step, so the ranks are deep inside libtorch when the cancel lands.
for _ in $(seq 1 600); do
  [ "$(it_job_field "$id" '.last_metrics.step // 0')" -ge 1 ] && break
  sleep 0.1
done
[ -n "$(it_job_procs "$id")" ] || it_fail "no processes found for running job $id"

"$DPOCTL_BIN" cancel "$id" >/dev/null || it_fail "dpoctl cancel failed"
it_wait_state "$id" cancelled 30
# The state is recorded when mpirun exits; give the reaper a moment, then nothing may remain.
for _ in $(seq 1 50); do [ -z "$(it_job_procs "$id")" ] && break; sleep 0.1; done
left=$(it_job_procs "$id")
[ -z "$left" ] || it_fail "processes left behind: $(ps -o pid,ppid,pgid,sid,args -p "$(echo $left | tr ' ' ,)")"

# A watcher of the cancelled job sees the terminal state and dpoctl exits non-zero.
if "$DPOCTL_BIN" watch "$id" >"$T/watch.txt" 2>&1; then it_fail "watch of a cancelled job exited 0"; fi
grep -qi cancelled "$T/watch.txt" || it_fail "watch output does not say cancelled"
# The daemon is still serving.
"$DPOCTL_BIN" health >/dev/null || it_fail "dpod stopped answering"
echo "PASS: job $id cancelled cleanly"
