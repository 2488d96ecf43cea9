#!/usr/bin/env bash
# Exact resume: 2N steps straight, and N steps + SIGKILL of the whole MPI job + resume + N steps, give
# bit-identical weights and optimizer state (same ranks, CPU).
source "$(dirname "$0")/lib.sh"

"$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --dry-run --set train.steps=8 \
  --set train.checkpoint_every=4 --set train.keep_last=3 --set train.batch_size=8 --set data.pairs=64 \
  --set train.learning_rate=1e-4 >"$T/job.yaml" || it_fail "dpoctl --dry-run failed"

run_job() {  # run_job RUN_DIR: a 2-rank job in a session of its own; returns mpirun's status
  mkdir -p "$1/tmp"
  TMPDIR="$1/tmp" setsid mpirun -np 2 --oversubscribe --bind-to none "$WORKER_BIN" --spec "$T/job.yaml" \
    --run-dir "$1" >>"$1.log" 2>&1
}

run_job "$T/straight" || it_fail "the uninterrupted run failed: $(tail -n 5 "$T/straight.log")"

# The interrupted run: freeze and kill the whole job as soon as the step-4 checkpoint is complete.
mkdir -p "$T/killed/tmp"
TMPDIR="$T/killed/tmp" setsid mpirun -np 2 --oversubscribe --bind-to none "$WORKER_BIN" --spec "$T/job.yaml" \
  --run-dir "$T/killed" >>"$T/killed.log" 2>&1 &
sid=$!
for _ in $(seq 1 3000); do
  [ -f "$T/killed/checkpoints/step-000004/COMPLETE" ] && break
  kill -0 "$sid" 2>/dev/null || break
  sleep 0.01
done
pkill -STOP -s "$sid" || true
pkill -KILL -s "$sid" || true
wait "$sid" 2>/dev/null || true
[ -f "$T/killed/checkpoints/step-000004/COMPLETE" ] || it_fail "the run never completed its step-4 checkpoint"
[ -e "$T/killed/checkpoints/step-000008" ] && it_fail "the run finished before it could be killed; the test proves nothing"
for _ in $(seq 1 50); do [ -z "$(it_session_procs "$sid")" ] && break; sleep 0.1; done
[ -z "$(it_session_procs "$sid")" ] || it_fail "processes of the killed job survived"

run_job "$T/killed" || it_fail "the resumed run failed: $(tail -n 5 "$T/killed.log")"
grep -q "resumed from .*step-000004 (step 4)" "$T/killed.log" || it_fail "the second run did not resume from step 4"

for f in diffusion_pytorch_model.safetensors optimizer.safetensors; do
  cmp "$T/straight/checkpoints/step-000008/$f" "$T/killed/checkpoints/step-000008/$f" \
    || it_fail "$f after resume differs from the uninterrupted run"
done
echo "PASS: 8 straight steps == 4 + SIGKILL + resume + 4, bit for bit"
