#!/usr/bin/env bash
# diffusers-native weights in and out through the real dpod and worker: a pipeline folder with an fp16
# variant trains (its config.json standing in for model.config, its scheduler/ for model.scheduler_config),
# the checkpoint carries that scheduler config, `dpo-tool export` of it trains again as a model folder,
# and what does not fit (no such variant, a disagreeing config, an index whose shard is missing) is
# refused at submission, by name.
source "$(dirname "$0")/lib.sh"
it_start_dpod
EX="$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml"
FIX="$DPOD_FIXTURES/tiny-sd"

# A UNet folder from the fixture, with a schedule other than the default, exported as a pipeline with
# F16 weights: $T/pipe/unet/diffusion_pytorch_model.fp16.safetensors, $T/pipe/scheduler/.
mkdir -p "$T/src"
cp "$FIX/config.json" "$T/src/config.json"
cp "$FIX/unet.safetensors" "$T/src/diffusion_pytorch_model.safetensors"
jq '.beta_end = 0.02 | .beta_schedule = "linear"' "$FIX/scheduler/scheduler_config.json" >"$T/src/scheduler_config.json"
"$TOOL_BIN" export "$T/src" "$T/pipe" --pipeline --variant fp16 >/dev/null || it_fail "dpo-tool export failed"
[ -f "$T/pipe/unet/diffusion_pytorch_model.fp16.safetensors" ] || it_fail "no fp16 weights in the export"
cmp -s "$T/src/scheduler_config.json" "$T/pipe/scheduler/scheduler_config.json" || it_fail "the export lost the schedule"

# refused ARGS... PATTERN: dpoctl submit refuses, with a message matching PATTERN.
refused() {
  local pattern=${*: -1} out
  out=$("$DPOCTL_BIN" submit "$EX" "${@:1:$#-1}" 2>&1) && it_fail "accepted: ${*:1:$#-1}"
  echo "$out" | grep -qE -- "$pattern" || it_fail "the refusal does not name the problem: $out"
}
refused --set model.weights="$T/pipe" "model.weights: $T/pipe/unet holds neither diffusion_pytorch_model.safetensors"
refused --set model.weights="$T/pipe" --set model.variant=fp16 --set model.config="$DPOD_FIXTURES/tiny-sdxl/config.json" \
  "model.config .* and model.weights .* disagree on"
refused --set model.weights="$T/pipe/unet/diffusion_pytorch_model.fp16.safetensors" --set model.variant=fp16 \
  "model.variant: \"fp16\" names a weights file inside a model folder"
refused --set model.variant=../fp16 --set model.weights="$T/pipe" "model.variant: only letters"
printf '{"weight_map": {"conv_in.weight": "diffusion_pytorch_model-00001-of-00002.safetensors"}}' \
  >"$T/src/diffusion_pytorch_model.safetensors.index.json"
refused --set model.weights="$T/src/diffusion_pytorch_model.safetensors.index.json" \
  "model.weights: .*shard diffusion_pytorch_model-00001-of-00002.safetensors .* is missing"

# The pipeline trains, as policy and as reference; no model.config.
id=$(it_submit "$EX" --set model.weights="$T/pipe" --set model.reference_weights="$T/pipe/unet" \
  --set model.variant=fp16 --set train.steps=2 --name pipeline)
"$DPOCTL_BIN" watch "$id" >/dev/null 2>&1 || it_fail "the pipeline job did not succeed"
grep -q "noise schedule from $T/pipe/scheduler/scheduler_config.json" "$IT_JOBS/$id/attempt-1.log" ||
  it_fail "the job did not take the pipeline's schedule"
ckpt=$(ls -d "$IT_JOBS/$id"/checkpoints/step-* | tail -n 1)
cmp -s "$ckpt/scheduler_config.json" "$T/src/scheduler_config.json" || it_fail "the checkpoint does not carry the schedule"

# Its checkpoint, exported, is a model folder again: F32, config.json as the checkpoint's.
"$TOOL_BIN" export "$ckpt" "$T/out" >/dev/null || it_fail "exporting the checkpoint failed"
cmp -s "$ckpt/config.json" "$T/out/config.json" || it_fail "the export's config.json is not the checkpoint's"
"$TOOL_BIN" diff "$ckpt/diffusion_pytorch_model.safetensors" "$T/out/diffusion_pytorch_model.safetensors" --atol 0 \
  >/dev/null || it_fail "the F32 export's weights differ from the checkpoint's"
id2=$(it_submit "$EX" --set model.weights="$T/out" --set model.reference_weights="$ckpt" --set train.steps=1 \
  --name from-export)
"$DPOCTL_BIN" watch "$id2" >/dev/null 2>&1 || it_fail "the job from the export did not succeed"

"$DPOCTL_BIN" health >/dev/null || it_fail "dpod stopped serving"
echo "PASS: a pipeline folder with an fp16 variant trained with its schedule; its export trained again; misfits were refused by name"
