#!/usr/bin/env bash
# dpod is killed with SIGKILL five times while a 2-rank job trains. The job never notices: its
# supervisor keeps it running, each new dpod adopts it, and it ends SUCCEEDED on its first attempt with
# no user action, a metrics event for every step exactly once, and only existing checkpoints listed
# (keep_last prunes as it goes), in the job's events and in its TensorBoard files. `dpoctl logs -f`
# follows the job's output across the crashes: it ends with the job, having shown every line once.
source "$(dirname "$0")/lib.sh"

# Long enough to outlive five kills and restarts (about 2 s each) on a slow machine.
STEPS=300
it_start_dpod
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=$STEPS \
       --set train.checkpoint_every=10 --set train.keep_last=2 --name kill9)
it_wait_at_least "$id" .last_metrics.step 5 60
"$DPOCTL_BIN" logs "$id" -f --retries 100 >"$T/followed.txt" 2>"$T/follow.err" &
follower=$!
IT_CLEANUP+=('kill "$follower" 2>/dev/null')
for k in 1 2 3 4 5; do
  it_kill_dpod
  [ -n "$(it_job_ranks "$id")" ] || it_fail "the ranks did not outlive dpod (kill $k)"
  sleep 0.5
  it_start_dpod
  state=$(it_job_state "$id")
  [ "$state" = running ] || [ "$state" = succeeded ] || it_fail "after kill $k job $id is $state"
  grep -q "job $id: adopted attempt 1" "$T/dpod.log" || [ "$state" = succeeded ] \
    || it_fail "dpod $((k + 1)) did not adopt the job"
  if [ "$state" = running ]; then
    # The adopted job holds its slots again before the queue could hand them out.
    [ "$("$DPOCTL_BIN" status --json | jq -r '"\(.running) \(.slots_free)"')" = "1 0" ] \
      || it_fail "after kill $k dpod's status: $("$DPOCTL_BIN" status)"
  fi
  sleep 1
done
it_wait_state "$id" succeeded 240
[ "$(it_job_field "$id" '.attempts | length')" = 1 ] || it_fail "the job was restarted: $(it_job_field "$id" .attempts)"
it_check_steps_once "$id" $STEPS
wait "$follower" || it_fail "dpoctl logs -f exited $?: $(tail -n 5 "$T/follow.err")"
grep -q "reconnecting" "$T/follow.err" || it_fail "dpoctl logs -f never lost dpod: $(cat "$T/follow.err")"
"$DPOCTL_BIN" logs "$id" >"$T/logs.txt" || it_fail "dpoctl logs $id failed"
cmp -s "$T/followed.txt" "$T/logs.txt" ||
  it_fail "the output followed across the crashes is not the job's: $(diff "$T/followed.txt" "$T/logs.txt" | head -n 10)"
grep -q "^\[attempt 1 rank 0\] step $STEPS/$STEPS " "$T/logs.txt" || it_fail "the job's output lacks its last step"
# Its TensorBoard files, written by six dpods, hold every step once too; a torn last record (a kill -9
# in the middle of a write) is cut off by the next dpod, which writes those events again.
it_check_tensorboard "$id" $STEPS 1
it_kill_dpod
newest=$(ls "$IT_JOBS/$id/tensorboard"/events.out.tfevents.* | sort | tail -n 1)
/usr/bin/python3 "$DPOD_SOURCE_DIR/tests/integration/tb_read.py" --tear "$newest" 2
it_start_dpod
it_check_tensorboard "$id" $STEPS 1
grep -q "dropping a torn record" "$T/dpod.log" || it_fail "dpod did not say it dropped the torn record"
echo "PASS: 5 x kill -9 dpod; job $id succeeded on its first attempt, every step once, in TensorBoard's files too; logs -f followed it"
