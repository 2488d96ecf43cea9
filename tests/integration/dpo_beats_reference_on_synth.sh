#!/usr/bin/env bash
# The demo, CI-sized, through dpod and dpoctl: synth task -> sft reference (2 ranks) -> DPO from its
# checkpoint (2 ranks). DPO must raise the preferred-mode rate of DDIM samples well above the
# reference's, without drifting off the data manifold, and held-out implicit accuracy must beat chance.
source "$(dirname "$0")/lib.sh"
DATA="$DPOD_SOURCE_DIR/tests/integration/data"
"$TOOL_BIN" synth --out "$T/synth" $(grep -v '^#' "$DPOD_SOURCE_DIR/deploy/examples/demo-synth.args") >/dev/null \
  || it_fail "dpo-tool synth failed"
it_start_dpod

# Submitted together, as the demo does: the DPO job waits for the sft job and starts from its newest
# checkpoint, which dpod resolves (and records in the DPO job's spec) when it starts it.
sft=$(it_submit "$DATA/ci-sft.yaml" --set data.dataset="$T/synth")
dpo=$(it_submit "$DATA/ci-dpo.yaml" --set data.dataset="$T/synth" --set model.weights="job:$sft" --set after="$sft")
"$DPOCTL_BIN" watch "$sft" >"$T/sft.txt" 2>&1 || it_fail "the sft job did not succeed: $(tail -n 3 "$T/sft.txt")"
"$DPOCTL_BIN" watch "$dpo" >"$T/dpo.txt" 2>&1 || it_fail "the dpo job did not succeed: $(tail -n 3 "$T/dpo.txt")"
ckpt=$(it_job_field "$sft" .last_checkpoint.path)
used=$(it_job_field "$dpo" .spec.model.weights)
[ "$used" = "$ckpt/diffusion_pytorch_model.safetensors" ] || it_fail "the DPO job started from '$used', not $ckpt"
# Its provenance names the dataset by its manifest's SHA-256.
[ "$(jq -r .dataset.manifest_sha256 "$ckpt/dpod_provenance.json")" = "$(sha256sum "$T/synth/manifest.json" | cut -d' ' -f1)" ] ||
  it_fail "$ckpt/dpod_provenance.json does not record the SHA-256 of $T/synth/manifest.json"

"$DPOCTL_BIN" get "$dpo" --json >"$T/job.json"
read -r ref_rate ref_dist dpo_rate dpo_dist acc <<<"$(jq -r '[.first_eval.preferred_mode_rate, .first_eval.mode_distance,
  .last_eval.preferred_mode_rate, .last_eval.mode_distance, .last_eval.implicit_acc] | map(tostring) | join(" ")' "$T/job.json")"
echo "reference: preferred mode $ref_rate, distance $ref_dist; DPO: $dpo_rate, $dpo_dist, held-out acc $acc"
awk -v r="$ref_rate" -v d="$dpo_rate" 'BEGIN { exit !(d >= r + 0.15) }' \
  || it_fail "DPO's preferred-mode rate $dpo_rate is not clearly above the reference's $ref_rate"
awk -v r="$ref_dist" -v d="$dpo_dist" 'BEGIN { exit !(d <= 1.5 * r) }' \
  || it_fail "DPO samples drifted off the modes: distance $dpo_dist vs the reference's $ref_dist"
awk -v a="$acc" 'BEGIN { exit !(a > 0.6) }' || it_fail "held-out implicit accuracy $acc is not above chance"
echo "PASS: DPO raised the preferred-mode rate from $ref_rate to $dpo_rate"
