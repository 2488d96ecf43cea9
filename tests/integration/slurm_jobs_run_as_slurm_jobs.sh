#!/usr/bin/env bash
# dpod --launcher slurm against a real (private, single-node) Slurm: a 2-rank job runs as a Slurm batch
# job to SUCCEEDED with every step's metrics once; `scontrol requeue` mid-run and `scancel --signal=USR1`
# (the batch script checkpoints and requeues itself) both resume as a new attempt of the same job and
# end with weights bit-identical to an uninterrupted run; a cancel through dpod and one through scancel
# both end CANCELLED with nothing left running; a job Slurm cannot start shows Slurm's reason; dpod
# killed while a job runs adopts it; a job that ends while dpod is down is recorded from its exit record;
# srun that could not launch the ranks (and exits 0) makes a failed attempt, not a success.
source "$(dirname "$0")/lib.sh"
source "$DPOD_SOURCE_DIR/tests/slurm/slurm_fixture.sh"
IT_CLEANUP+=('slurm_down "$T/slurm"')
slurm_up "$T/slurm" 2 || it_fail "the test's Slurm cluster did not start"
EX="$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml"
# Ranks report to a TCP listener of its own (as ranks on other nodes must); the public API stays on the
# owner-only socket.
DPOD_ARGS=(--launcher slurm --poll-interval 0.5 --preempt-grace 10 --restart-backoff 0.2 --report-listen 0.0.0.0:0
           --jobs-dir "$T/shared/jobs")
IT_JOBS="$T/shared/jobs"
it_start_dpod "${DPOD_ARGS[@]}"
report_addr=$(sed -n 's/.*report address \([^ ]*\)$/\1/p' "$T/dpod.log" | tail -n 1)
[ -n "$report_addr" ] && [ "${report_addr%%:*}" = "$(hostname)" ] || it_fail "the report address is not this host's name: '$report_addr'"
out=$("$DPOCTL_BIN" --addr "$report_addr" list 2>&1) && it_fail "the report listener served ListJobs"
echo "$out" | grep -qi "unimplemented\|unknown method" || it_fail "the report listener did not refuse ListJobs: $out"

# The same 16-step, 2-rank job each time: checkpoints every 4 steps, so an interrupted run resumes.
JOB=(--set ranks=2 --set train.steps=16 --set train.checkpoint_every=4 --set train.keep_last=4
     --set train.batch_size=4 --set data.pairs=64 --set train.learning_rate=1e-4)
slurm_id() { squeue --me --states=all --noheader --format="%i %j" | awk -v n="dpod-$1" '$2 == n {print $1}' | tail -n 1; }
final_weights() { echo "$IT_JOBS/$1/checkpoints/step-000016/diffusion_pytorch_model.safetensors"; }
attempts() { it_job_field "$1" '.attempts | length'; }
wait_step() { it_wait_at_least "$1" '.last_metrics.step' "$2" 120; }

# 1. Straight through, as a Slurm job.
a=$(it_submit "$EX" "${JOB[@]}" --name straight)
"$DPOCTL_BIN" watch "$a" >/dev/null 2>&1 || it_fail "job $a did not succeed"
[ -n "$(slurm_id "$a")" ] || it_fail "job $a never was a Slurm job"
[ -f "$IT_JOBS/$a/spec.pb" ] || it_fail "job $a did not run in --jobs-dir"
[ ! -e "$IT_JOBS/$a/job.secret" ] || it_fail "the finished job's secret file is still there"
it_check_steps_once "$a" 16

# 2. `scontrol requeue` mid-run: Slurm stops the job and runs it again; the ranks resume.
b=$(it_submit "$EX" "${JOB[@]}" --name requeued)
wait_step "$b" 6
# The secret is in a 0600 file, nowhere on a command line or in what Slurm shows; the batch script is
# the same for every job (no user text in it).
secret=$(cat "$IT_JOBS/$b/job.secret")
[ "$(stat -c %a "$IT_JOBS/$b/job.secret")" = 600 ] || it_fail "the secret file is not 0600"
scontrol show job "$(slurm_id "$b")" | grep -qF "$secret" && it_fail "scontrol shows the job's secret"
ps -eo args >"$T/ps.txt" # a snapshot first: a grep in the same pipeline would show its own argument
grep -qF "$secret" "$T/ps.txt" && it_fail "a command line holds the job's secret"
cmp -s "$IT_JOBS/$a/slurm-batch.sh" "$IT_JOBS/$b/slurm-batch.sh" || it_fail "the batch scripts of two jobs differ"
grep -q "straight\|requeued" "$IT_JOBS/$b/slurm-batch.sh" && it_fail "the batch script holds a job's name"
scontrol requeue "$(slurm_id "$b")" || it_fail "scontrol requeue failed"
"$DPOCTL_BIN" watch "$b" >/dev/null 2>&1 || it_fail "the requeued job $b did not succeed"
[ "$(attempts "$b")" -ge 2 ] || it_fail "job $b ran $(attempts "$b") attempt(s), not 2"
grep -q "resumed from" "$IT_JOBS/$b/attempt-2.log" || it_fail "attempt 2 of job $b did not resume from a checkpoint"
# Its output streams through dpod as mpirun jobs' does: srun --label's prefix read as the rank.
"$DPOCTL_BIN" logs "$b" --attempt 2 >"$T/logs-$b.txt" || it_fail "dpoctl logs $b failed"
for r in 0 1; do
  grep -q "^\[attempt 2 rank $r\( stderr\)\?\] .*rank $r of 2 on " "$T/logs-$b.txt" || it_fail "no line of rank $r in: $(head -n 20 "$T/logs-$b.txt")"
done
grep -q "^\[attempt 2 rank 0\( stderr\)\?\] .*resumed from" "$T/logs-$b.txt" || it_fail "dpoctl logs $b lacks rank 0's resume line"
it_check_steps_once "$b" 16
cmp "$(final_weights "$a")" "$(final_weights "$b")" || it_fail "the requeued job's weights differ from the straight run's"

# 3. SIGUSR1 to the batch script (what --signal=B:USR1@GRACE sends before a time limit): checkpoint, requeue.
c=$(it_submit "$EX" "${JOB[@]}" --name usr1)
wait_step "$c" 6
scancel --signal=USR1 --batch "$(slurm_id "$c")" || it_fail "scancel --signal=USR1 failed"
"$DPOCTL_BIN" watch "$c" >/dev/null 2>&1 || it_fail "job $c did not succeed after SIGUSR1"
[ "$(attempts "$c")" -ge 2 ] || it_fail "job $c was not requeued by its batch script"
grep -qx "exit_status 4" "$IT_JOBS/$c/attempt-1.exit" ||
  it_fail "attempt 1 of job $c did not exit 'preempted' after its checkpoint"
it_check_steps_once "$c" 16
cmp "$(final_weights "$a")" "$(final_weights "$c")" || it_fail "job $c's weights differ from the straight run's"

# 4. Cancel through dpod, and 5. through Slurm: CANCELLED, nothing left running.
LONG=(--set ranks=2 --set train.steps=100000 --set train.checkpoint_every=0)
for how in dpoctl scancel; do
  id=$(it_submit "$EX" "${LONG[@]}" --name "cancel-by-$how")
  wait_step "$id" 1
  if [ "$how" = dpoctl ]; then "$DPOCTL_BIN" cancel "$id" >/dev/null; else scancel "$(slurm_id "$id")"; fi
  it_wait_state "$id" cancelled 60
  for _ in $(seq 1 100); do [ -z "$(it_job_procs "$id")" ] && break; sleep 0.1; done
  [ -z "$(it_job_procs "$id")" ] || it_fail "job $id (cancelled by $how) left processes running"
done

# 6. A job Slurm cannot start yet: its reason shows; it runs once it can.
scontrol update PartitionName=debug State=DOWN
f=$(it_submit "$EX" --set train.steps=2 --name pending)
for _ in $(seq 1 100); do
  it_job_field "$f" .reason | grep -q "PartitionDown" && break
  sleep 0.1
done
it_job_field "$f" .reason | grep -q "waiting in the scheduler's queue: PartitionDown" ||
  it_fail "job $f does not show Slurm's reason: $(it_job_field "$f" .reason)"
[ "$(it_job_state "$f")" = starting ] || it_fail "job $f is $(it_job_state "$f") while Slurm holds it"
"$DPOCTL_BIN" list | grep -E "^$f .*starting.*PartitionDown" >/dev/null || it_fail "dpoctl list does not show why job $f waits: $("$DPOCTL_BIN" list)"
scontrol update PartitionName=debug State=UP
"$DPOCTL_BIN" watch "$f" >/dev/null 2>&1 || it_fail "job $f did not succeed once the partition was up"
# ... and one asking for more nodes than the cluster has (2 ranks, 1 a node) pends with Slurm's reason.
n=$(it_submit "$EX" --set ranks=2 --set resources.ranks_per_node=1 --name two-nodes)
for _ in $(seq 1 100); do
  it_job_field "$n" .reason | grep -q "PartitionNodeLimit" && break
  sleep 0.1
done
it_job_field "$n" .reason | grep -q "PartitionNodeLimit" || it_fail "job $n does not show why it pends: $(it_job_field "$n" .reason)"
"$DPOCTL_BIN" cancel "$n" >/dev/null || it_fail "cannot cancel the pending job"
it_wait_state "$n" cancelled 30

# 7. dpod killed while a Slurm job runs: the next dpod adopts it.
g=$(it_submit "$EX" "${JOB[@]}" --name adopted)
wait_step "$g" 3
it_kill_dpod
sleep 1
it_start_dpod "${DPOD_ARGS[@]}"
"$DPOCTL_BIN" watch "$g" >/dev/null 2>&1 || it_fail "the adopted job $g did not succeed"
it_check_steps_once "$g" 16

# 8. A job that ends while dpod is down: recorded from its exit record and report journal.
h=$(it_submit "$EX" "${JOB[@]}" --name while-down)
wait_step "$h" 1
it_kill_dpod
for _ in $(seq 1 600); do [ -f "$IT_JOBS/$h/attempt-1.exit" ] && break; sleep 0.1; done
[ -f "$IT_JOBS/$h/attempt-1.exit" ] || it_fail "job $h did not end while dpod was down"
it_start_dpod "${DPOD_ARGS[@]}"
it_wait_state "$h" succeeded 60
it_check_steps_once "$h" 16
# 9. srun that cannot launch the ranks exits 0 (Slurm 22.05): without its final checkpoint that attempt
# failed, and is not taken for success. A directory in the way of the next step's PMIx directory makes
# the launch fail.
last=$(squeue --me --states=all --noheader --format=%i | sort -n | tail -n 1)
mkdir -p "$T/slurm/tmp/spmix_appdir_$(id -u)_$((last + 1)).0"
k=$(it_submit "$EX" --set train.steps=2 --set max_restarts=0 --name unlaunched)
it_wait_state "$k" failed 60
it_job_field "$k" .reason | grep -q "exit status 0 but no final checkpoint" ||
  it_fail "job $k's reason does not say why it failed: $(it_job_field "$k" .reason)"
grep -q "launch failed" "$IT_JOBS/$k/attempt-1.log" || it_fail "the attempt's log does not show srun's failure"
echo "PASS: Slurm jobs run, requeue and resume bit-exactly, cancel cleanly, show Slurm's reason, and survive dpod"
