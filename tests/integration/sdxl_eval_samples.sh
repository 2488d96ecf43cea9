#!/usr/bin/env bash
# Evaluations sample an SDXL-shaped UNet (tiny-sdxl: text_time added conditioning) on the synthetic task:
# DDIM with the prompts' pooled embeddings, the empty prompt's for guidance's unconditional rows, and the
# default time ids. The job runs (it used to be refused), its evaluations report sampled latents scored
# against the task's modes, and a second run prints the same numbers (the sampling is deterministic).
source "$(dirname "$0")/lib.sh"
XL="$DPOD_FIXTURES/tiny-sdxl"
"$TOOL_BIN" synth --out "$T/synth-xl" --config "$XL/config.json" --prompts 2 --train-pairs 8 --validation-pairs 4 \
  --text-len 5 >/dev/null || it_fail "dpo-tool synth failed"
"$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --dry-run --set ranks=1 \
  --set model.config="$XL/config.json" --set model.weights="$XL/unet.safetensors" --set data.dataset="$T/synth-xl" \
  --set train.steps=2 --set train.checkpoint_every=0 --set train.eval_every=2 --set train.eval_samples=6 \
  --set train.eval_sample_steps=3 --set train.eval_guidance=3 >"$T/job.yaml" || it_fail "dpoctl --dry-run failed"

for run in a b; do
  mkdir -p "$T/$run/tmp"
  TMPDIR="$T/$run/tmp" mpirun -np 1 --oversubscribe --bind-to none "$WORKER_BIN" --spec "$T/job.yaml" \
    --run-dir "$T/$run" >"$T/$run.log" 2>&1 || it_fail "the SDXL job with eval_samples failed: $(tail -n 5 "$T/$run.log")"
  grep -q "samples: preferred mode [0-9.]*%, distance to modes [0-9.]* (6)" "$T/$run.log" \
    || it_fail "no evaluation of 6 sampled latents in the log: $(grep -i eval "$T/$run.log" | tail -n 3)"
done
line() { grep -o "samples: preferred mode [0-9.]*%, distance to modes [0-9.]* ([0-9]*)" "$1" | tr "\n" " "; }
[ "$(line "$T/a.log")" = "$(line "$T/b.log")" ] || it_fail "two runs sampled differently: $(line "$T/a.log") / $(line "$T/b.log")"
echo "PASS: the SDXL-shaped job's evaluation sampled and scored 6 latents: $(line "$T/a.log")"
