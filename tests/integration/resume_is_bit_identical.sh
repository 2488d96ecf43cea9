#!/usr/bin/env bash
# Exact resume: 2N steps straight, and N steps + SIGKILL of the whole MPI job + resume + N steps, give
# bit-identical weights and optimizer state (same ranks, CPU). With --lora, the same for LoRA adapters
# (rank 4, alpha 8, so the diffusers file folds a scale of 2 into the up weights): both adapter files and
# the optimizer state, and the checkpoint holds the adapters only, under the names and shapes diffusers'
# save_lora_weights writes (those of ../shared/fixtures/tiny-sd/lora, the same UNet shape). With
# --posterior, on a synthetic dataset storing VAE posteriors (and flipped ones): every step draws fresh
# latents and flips, keyed by the pair's position, and the resumed run draws the same ones.
source "$(dirname "$0")/lib.sh"

files=(diffusion_pytorch_model.safetensors optimizer.safetensors)
lora=()
if [ "${1:-}" = --lora ]; then
  files=(pytorch_lora_weights.safetensors lora_adapters.safetensors optimizer.safetensors)
  lora=(--set train.lora.rank=4 --set train.lora.alpha=8 --set train.learning_rate=1e-3)
fi
post=()
if [ "${1:-}" = --posterior ]; then
  "$TOOL_BIN" synth --out "$T/post" --prompts 4 --base-per-prompt 1 --train-pairs 64 --validation-pairs 0 \
    --posterior-logvar -2 >/dev/null || it_fail "dpo-tool synth --posterior-logvar failed"
  post=(--set data.dataset="$T/post" --set data.random_flip=true)
fi
# With --adafactor: Adafactor's factored moments and step count (its beta2 schedule) resume exactly too,
# under a cosine schedule with warmup that crosses the resume point, and the hinge loss.
optim=()
if [ "${1:-}" = --adafactor ]; then
  optim=(--set train.optimizer=adafactor --set train.lr_scheduler=cosine --set train.warmup_steps=3
        --set train.loss=hinge)
fi
"$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --dry-run --set train.steps=8 \
  --set train.checkpoint_every=4 --set train.keep_last=3 --set train.batch_size=8 --set data.pairs=64 \
  --set train.learning_rate=1e-4 "${lora[@]}" "${post[@]}" "${optim[@]}" >"$T/job.yaml" || it_fail "dpoctl --dry-run failed"

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

for f in "${files[@]}"; do
  cmp "$T/straight/checkpoints/step-000008/$f" "$T/killed/checkpoints/step-000008/$f" \
    || it_fail "$f after resume differs from the uninterrupted run"
done
if [ ${#lora[@]} -gt 0 ]; then
  ck="$T/straight/checkpoints/step-000008"
  grep -q "LoRA rank 4, alpha 8: 32 adapted layers, 9984 trainable parameters" "$T/straight.log" \
    || it_fail "the run did not train the 32 adapters of rank 4: $(grep -m1 LoRA "$T/straight.log")"
  [ -e "$ck/diffusion_pytorch_model.safetensors" ] && it_fail "a LoRA checkpoint wrote the frozen base's full weights"
  "$TOOL_BIN" diff "$ck/pytorch_lora_weights.safetensors" "$ck/lora_adapters.safetensors" --atol 1e-7 >/dev/null 2>&1 \
    && it_fail "the diffusers file does not fold alpha / rank into the up weights"
  names() { "$TOOL_BIN" inspect "$1" | awk '$1 ~ /^unet\./ {print $1, $2, $3, $4, $5}' | sort; }
  diff <(names "$ck/pytorch_lora_weights.safetensors") \
    <(names "$DPOD_FIXTURES/tiny-sd/lora/pytorch_lora_weights.safetensors") \
    || it_fail "the checkpoint's LoRA file differs in names or shapes from diffusers' save_lora_weights"
  [ "$(names "$ck/pytorch_lora_weights.safetensors" | wc -l)" = 64 ] || it_fail "the LoRA file does not hold 64 tensors"
fi
if [ ${#post[@]} -gt 0 ]; then
  grep -q "latents: drawn from the VAE posteriors every step, each image flipped with probability 1/2" "$T/straight.log" \
    || it_fail "the run did not draw its latents from the posteriors"
fi
if [ "${1:-}" = --adafactor ]; then
  grep -q "hinge loss, beta 5000, cosine lr .*, adafactor," "$T/straight.log" \
    || it_fail "the run did not train with hinge, cosine and adafactor: $(grep -m1 training "$T/straight.log")"
  "$TOOL_BIN" inspect "$T/straight/checkpoints/step-000008/optimizer.safetensors" | grep -q dpod-adafactor \
    || it_fail "optimizer.safetensors does not hold Adafactor's state"
fi
echo "PASS: 8 straight steps == 4 + SIGKILL + resume + 4, bit for bit ${lora[*]} ${optim[*]} ${1:-}"
