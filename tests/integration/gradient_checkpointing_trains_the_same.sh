#!/usr/bin/env bash
# train.gradient_checkpointing changes memory, not training: one rank, 3 steps of the tiny DPO job with
# and without it give the same weights (within 1e-5), the same first loss to the digits printed (same
# weights, same inputs: the forward is the same ops) and later losses within 1e-3 relative (beta/2 =
# 2500 times a difference of MSE differences turns the weights' float32 differences into ~1e-4 of the
# loss), and the worker reports blocks recomputed. With --lora, the same for LoRA adapters (lr 3e-5 as in
# lib.sh's IT_LORA_SETS, so AdamW's step of up to lr is near the tolerance).
source "$(dirname "$0")/lib.sh"

weights_file=diffusion_pytorch_model.safetensors
lora=()
if [ "${1:-}" = --lora ]; then
  weights_file=lora_adapters.safetensors
  lora=("${IT_LORA_SETS[@]}")
fi

spec() { local name=$1; shift; it_standalone_spec "$name" --set ranks=1 --set train.batch_size=4 "${lora[@]}" "$@"; }
run() { it_standalone_run "$1" 1; }
weights() { echo "$T/$1/checkpoints/step-000003/$weights_file"; }

spec plain
spec ckpt --set train.gradient_checkpointing=true
grep -q "gradient_checkpointing: true" "$T/ckpt.yaml" || it_fail "the job file does not carry gradient_checkpointing"
run plain
run ckpt
grep -q "gradient checkpointing: on" "$T/ckpt.log" || it_fail "the worker did not report checkpointing: $(head -n 20 "$T/ckpt.log")"
# tiny-sd has 12 resnets and transformers: 12 a step.
grep -q "gradient checkpointing: 36 blocks ran without their activations, 36 recomputed" "$T/ckpt.log" \
  || it_fail "unexpected recomputation: $(grep 'gradient checkpointing' "$T/ckpt.log")"
if grep -q "gradient checkpointing" "$T/plain.log"; then it_fail "checkpointing on in the plain run"; fi

"$TOOL_BIN" diff "$(weights plain)" "$(weights ckpt)" --atol 1e-5 || it_fail "checkpointing changed the weights"
for s in 1 2 3; do
  a=$(grep "^step $s/3 " "$T/plain.log" | awk '{print $4}')
  b=$(grep "^step $s/3 " "$T/ckpt.log" | awk '{print $4}')
  [ -n "$a" ] && [ -n "$b" ] || it_fail "step $s not reported"
  tol=1e-3
  [ "$s" = 1 ] && tol=0
  awk -v a="$a" -v b="$b" -v t=$tol 'BEGIN { d = a - b; if (d < 0) d = -d; m = a < 0 ? -a : a; exit !(d <= t * m) }' \
    || it_fail "step $s: loss $b with checkpointing, $a without (tolerance $tol relative)"
done
echo "PASS: gradient checkpointing trains the same ${lora[*]}"
