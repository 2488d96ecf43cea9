#!/usr/bin/env bash
# dpod is killed with SIGKILL five times while a 2-rank job trains. The job never notices: its
# supervisor keeps it running, each new dpod adopts it, and it ends SUCCEEDED on its first attempt with
# no user action, a metrics event for every step exactly once, and only existing checkpoints listed
# (keep_last prunes as it goes). `dpoctl logs -f` follows the job's output across the crashes: it ends
# with the job, having shown every line once.
# (keep_last prunes as it goes), in the job's events and in its TensorBoard files.
echo "PASS: 5 x kill -9 dpod; job $id succeeded on its first attempt, every step once, in TensorBoard's files too; logs -f followed it"
source "$(dirname "$0")/lib.sh"

STEPS=120
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
# (keep_last prunes as it goes), in the job's events and in its TensorBoard files. `dpoctl logs -f`
# follows the job's output across the crashes: it ends with the job, having shown every line once.
