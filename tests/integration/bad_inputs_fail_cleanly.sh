#!/usr/bin/env bash
# Bad input reaches the worker (a corrupt weights file, an unsupported model config, an SDXL config on a
# dataset without pooled embeddings, a directory that is no dataset): the job ends FAILED with a reason that
# names the problem, and dpod keeps serving with every earlier job intact. Also drawn latents or random
# flips (data.latents, data.random_flip) on a dataset without VAE posteriors.
source "$(dirname "$0")/lib.sh"
it_start_dpod
EX="$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml"

good=$(it_submit "$EX" --set train.steps=2 --name good)
"$DPOCTL_BIN" watch "$good" >/dev/null 2>&1 || it_fail "the good job failed"

# expect_failure ID PATTERN: the job fails and its reason matches PATTERN.
expect_failure() {
  "$DPOCTL_BIN" watch "$1" >/dev/null 2>&1 && it_fail "job $1 succeeded"
  local state reason
  state=$(it_job_state "$1")
  reason=$(it_job_field "$1" .reason)
  [ "$state" = failed ] || it_fail "job $1 is $state"
  echo "$reason" | grep -qE "$2" || it_fail "job $1's reason does not name the problem: $reason"
}

head -c 1000 "$DPOD_FIXTURES/tiny-sd/unet.safetensors" >"$T/truncated.safetensors"
id=$(it_submit "$EX" --set model.weights="$T/truncated.safetensors" --name corrupt-weights)
expect_failure "$id" "truncated.safetensors"

sed 's/"act_fn": "silu"/"act_fn": "gelu"/' "$DPOD_FIXTURES/tiny-sd/config.json" >"$T/config.json"
id=$(it_submit "$EX" --set model.config="$T/config.json" --name bad-config)
expect_failure "$id" "act_fn"

# An SDXL config (text_time added conditioning) on a dataset without pooled prompt embeddings: refused,
# naming what is missing.
"$TOOL_BIN" synth --out "$T/synth-xl" --embed-dim 32 --train-pairs 8 --validation-pairs 2 --text-len 5 >/dev/null ||
  it_fail "dpo-tool synth failed"
id=$(it_submit "$EX" --set model.config="$DPOD_FIXTURES/tiny-sdxl/config.json" --set data.dataset="$T/synth-xl" \
  --name sdxl-config)
expect_failure "$id" "synth-xl/manifest.json: .*needs pooled prompt embeddings of width 16"

# A dataset that is not there is refused at submission, by name; a directory that is no dataset fails
# the job, naming what is missing.
out=$("$DPOCTL_BIN" submit "$EX" --set data.dataset="$T/no-such-dataset" --name no-data 2>&1) &&
  it_fail "a missing dataset was accepted"
echo "$out" | grep -q "data.dataset: $T/no-such-dataset" || it_fail "the refusal does not name the dataset: $out"
# What only a batch scheduler takes is refused by name by the local launcher.
out=$("$DPOCTL_BIN" submit "$EX" --set resources.partition=gpu 2>&1) && it_fail "a partition was accepted by mpirun"
echo "$out" | grep -q "resources.partition: only the slurm launcher takes it" || it_fail "the refusal does not say why: $out"
mkdir "$T/not-a-dataset"
id=$(it_submit "$EX" --set data.dataset="$T/not-a-dataset" --name no-data)
expect_failure "$id" "not-a-dataset/manifest.json"

# Drawn latents and random flips on a dataset that stores no VAE posteriors: refused, naming the field.
"$TOOL_BIN" synth --out "$T/synth-plain" --train-pairs 8 --validation-pairs 0 >/dev/null || it_fail "dpo-tool synth failed"
id=$(it_submit "$EX" --set data.dataset="$T/synth-plain" --set data.random_flip=true --name flip-no-posteriors)
expect_failure "$id" "data.random_flip needs the flipped images' posteriors and .*synth-plain stores none"
id=$(it_submit "$EX" --set data.dataset="$T/synth-plain" --set data.latents=sample --name sample-no-posteriors)
expect_failure "$id" "data.latents is sample but .*synth-plain stores no VAE posteriors"

# Weights for another shape: refused by tensor name.
"$DPOCTL_BIN" submit "$EX" --dry-run >/dev/null
id=$(it_submit "$EX" --set model.weights="$DPOD_FIXTURES/tiny-sd/inputs.safetensors" --name wrong-tensors)
expect_failure "$id" "conv_in|missing|unexpected|sample"

"$DPOCTL_BIN" health >/dev/null || it_fail "dpod stopped serving"
[ "$(it_job_state "$good")" = succeeded ] || it_fail "the earlier job's record changed"
[ "$("$DPOCTL_BIN" list --json | jq length)" = 8 ] || it_fail "jobs went missing from the list"
echo "PASS: each bad input failed its job with a reason that names it; dpod kept serving"
