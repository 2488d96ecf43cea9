#!/usr/bin/env bash
# Exact data parallelism: 2 ranks x batch B, and 2 ranks x B/2 x 2 accumulation steps, train the same
# model as 1 rank x 2B (weights within 1e-5 after a few steps). A run on a different global batch, from
# the same initial weights, shows the comparison is sensitive enough to fail. The accumulation run moves
# its broadcasts and all-reduces in 1000-float calls (hundreds per collective), as an SDXL-sized model
# must past 2^31 elements. With --lora, the same for LoRA adapters on to_q, to_v, to_out.0 and ff.net.2:
# only their gradients are all-reduced. Its lr is 3e-5: AdamW turns a rounding difference in a tiny
# gradient into a step difference of up to lr, so the tolerance means something only while lr x steps is
# near it; a different batch still moves the adapters by 1e-4. With --posterior, on a synthetic dataset
# storing VAE posteriors (and flipped ones), latents drawn and flipped every step: the draws are keyed by
# the pair's position, so every layout draws the same ones; and a run on the frozen latents differs.
source "$(dirname "$0")/lib.sh"

weights_file=diffusion_pytorch_model.safetensors
lora=()
if [ "${1:-}" = --lora ]; then
  weights_file=lora_adapters.safetensors
  lora=("${IT_LORA_SETS[@]}")
fi
post=()
if [ "${1:-}" = --posterior ]; then
  "$TOOL_BIN" synth --out "$T/post" --prompts 4 --base-per-prompt 1 --train-pairs 32 --validation-pairs 0 \
    --posterior-logvar -2 >/dev/null || it_fail "dpo-tool synth --posterior-logvar failed"
  post=(--set data.dataset="$T/post" --set data.random_flip=true)
fi
# With --adafactor: Adafactor on the all-reduced gradients, with the ipo loss and a linear schedule.
if [ "${1:-}" = --adafactor ]; then
  lora=(--set train.optimizer=adafactor --set train.loss=ipo --set train.lr_scheduler=linear)
fi

spec() { local name=$1; shift; it_standalone_spec "$name" "${lora[@]}" "${post[@]}" "$@"; }
run() { it_standalone_run "$@"; }
weights() { echo "$T/$1/checkpoints/step-000003/$weights_file"; }

spec one --set ranks=1 --set train.batch_size=4
spec two --set ranks=2 --set train.batch_size=2
spec accum --set ranks=2 --set train.batch_size=1 --set train.grad_accum=2
spec other_batch --set ranks=1 --set train.batch_size=8
run one 1
run two 2
DPOD_MPI_CHUNK_FLOATS=1000 run accum 2
run other_batch 1
if [ ${#post[@]} -gt 0 ]; then
  spec frozen --set ranks=1 --set train.batch_size=4 --set data.random_flip=false --set data.latents=frozen
  run frozen 1
  grep -q "latents: drawn from the VAE posteriors every step, each image flipped" "$T/two.log" \
    || it_fail "the run did not draw its latents from the posteriors"
  if "$TOOL_BIN" diff "$(weights one)" "$(weights frozen)" --atol 1e-5; then
    it_fail "training on the frozen latents gives the same weights: the draws changed nothing"
  fi
fi
grep -q "calls of at most 1000 floats" "$T/accum.log" || it_fail "the accumulation run did not take DPOD_MPI_CHUNK_FLOATS"
# to_q, to_v, to_out.0 of the 8 attentions (4 transformer blocks) and their 4 feed-forward outputs ff.net.2.
if [ "${1:-}" = --lora ] && ! grep -q "LoRA rank 4, alpha 4: 28 adapted layers" "$T/one.log"; then
  it_fail "unexpected adapters: $(grep -m1 LoRA "$T/one.log")"
fi

"$TOOL_BIN" diff "$(weights one)" "$(weights two)" --atol 1e-5 || it_fail "2 ranks x 2 pairs differ from 1 rank x 4"
"$TOOL_BIN" diff "$(weights one)" "$(weights accum)" --atol 1e-5 || it_fail "2 ranks x 1 pair x 2 accumulation differ"
if "$TOOL_BIN" diff "$(weights one)" "$(weights other_batch)" --atol 1e-5; then
  it_fail "a different global batch gives the same weights: the comparison cannot tell runs apart"
fi
# And the metrics cover the whole global batch on every layout.
for r in one two accum; do
  grep -q "^step 3/3 " "$T/$r.log" || it_fail "$r did not report step 3"
done
loss() { grep '^step 3/3' "$T/$1.log" | awk '{print $4}'; }
for r in two accum; do
  awk -v a="$(loss one)" -v b="$(loss $r)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-3 * a) }' \
    || it_fail "the reported loss of $r ($(loss $r)) differs from one rank's ($(loss one))"
done
if [ "${1:-}" = --adafactor ] && ! grep -q "ipo loss, beta 5000, linear lr .*, adafactor," "$T/one.log"; then
  it_fail "the run did not train with ipo, linear and adafactor: $(grep -m1 training "$T/one.log")"
fi
echo "PASS: 1x4, 2x2 and 2x1x2 agree within 1e-5 ${lora[*]} ${1:-}"
