#!/usr/bin/env bash
# The README's first command: install what is missing, build, start dpod with its embedded defaults
# (unless one already answers at the default address), and show that Diffusion-DPO works on a task
# whose true reward is known:
#   1. dpo-tool synth writes the synthetic two-mode task (docs/dataset-format.md);
#   2. job 1 pretrains the reference on its base samples with the plain denoising (sft) objective;
#   3. job 2 runs DPO from job 1's checkpoint on 2 MPI ranks, evaluating before and after;
#   4. a table compares the reference with the DPO policy.
# Both jobs go through dpod and dpoctl like any user job. Each phase prints one line, as the set-up's do
# (on a terminal a job's line shows its percentage); what they print goes to ~/.local/state/dpod/demo.log,
# whose tail a failing phase shows. Exits 0 only if both jobs succeeded and the targets were met (3 if
# they were not). With --lora, job 2 trains LoRA adapters on job 1's model (deploy/examples/demo-lora.yaml)
# instead of every weight, its reference being that model with the adapters off. With --bf16, job 2 runs
# the same job file at train.precision bf16 (mixed precision; the targets are the same) from job 1's fp32
# model, as a user fine-tunes a released model in bf16; --bf16-all trains job 1 in bf16 too.
set -euo pipefail
dpo_job=demo-dpo.yaml dpo_what=""
prec=() sft_prec=()
case "${1:-}" in
  --lora) dpo_job=demo-lora.yaml dpo_what=" with LoRA" ;;
  --bf16) prec=(--set train.precision=bf16) dpo_what=" in bf16" ;;
  --bf16-all) prec=(--set train.precision=bf16) sft_prec=(--set train.precision=bf16) dpo_what=" in bf16" ;;
  "") ;;
  *) echo "usage: bash deploy/demo.sh [--lora | --bf16 | --bf16-all]" >&2; exit 2 ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dpod_setup

DPOD="$DPOD_BUILD/bin/dpod"
DPOCTL="$DPOD_BUILD/bin/dpoctl"
TOOL="$DPOD_BUILD/bin/dpo-tool"
EXAMPLES="$DPOD_ROOT/deploy/examples"
state="${XDG_STATE_HOME:-$HOME/.local/state}/dpod"
mkdir -p "$state"
# The demo's phases print one line each, like the set-up's; what they print goes to this log.
DPOD_PHASE_LOG="$state/demo.log"
: >"$DPOD_PHASE_LOG"
echo "dpod: the demo's output goes to $DPOD_PHASE_LOG"
started=""
if ! "$DPOCTL" health >/dev/null 2>&1; then
  log="$state/dpod-demo.log"
  "$DPOD" --slots 2 >"$log" 2>&1 &
  started=$!
  trap '[ -n "$started" ] && kill -TERM "$started" 2>/dev/null && wait "$started" 2>/dev/null || true' EXIT
  dpod_phase_begin "starting dpod (pid $started, log $log)"
  for _ in $(seq 1 100); do
    "$DPOCTL" health >/dev/null 2>&1 && break
    kill -0 "$started" 2>/dev/null || { dpod_phase_failed "$log"; exit 1; }
    sleep 0.1
  done
  dpod_phase_end done
fi

data="${DPOD_DEMO_DATA:-$state/demo-synth}"
t0=$(date +%s)
dpod_run_phase "1/4 writing the synthetic task to $data" \
  "$TOOL" synth --out "$data" $(grep -v '^#' "$EXAMPLES/demo-synth.args")

# submit FILE [--set k=v]...: submits a job, sets JOB_ID.
submit() {
  local out
  out=$("$DPOCTL" submit -q "$@" 2>&1) || { echo "$out"; exit 1; }
  JOB_ID=$out # -q: the id alone
}
# watch_phase TEXT ID: follows a job as one phase line (its percentage from the job's steps on a terminal).
watch_phase() {
  dpod_run_phase "$1 (job $2)" "$DPOCTL" watch "$2" || { echo "job $2 did not succeed: dpoctl get $2"; exit 1; }
}

# Both jobs are submitted at once: the DPO job waits for the SFT job (`after`) and starts from its newest
# checkpoint (`job:ID`), which dpod resolves when it starts it.
submit "$EXAMPLES/demo-sft.yaml" --set data.dataset="$data" "${sft_prec[@]}"
sft=$JOB_ID
submit "$EXAMPLES/$dpo_job" --set data.dataset="$data" --set model.weights="job:$sft" --set after="$sft" "${prec[@]}"
dpo=$JOB_ID
watch_phase "2/4 pretraining the reference: sft on the base samples" "$sft"
watch_phase "3/4 Diffusion-DPO$dpo_what from job $sft's checkpoint on 2 MPI ranks" "$dpo"

echo "dpod: 4/4 reference vs DPO (job $dpo, evaluated on held-out pairs and DDIM samples)"
# Targets (issue 4): the reference near 50%, DPO at 90% or more, distance no worse than 1.5x.
"$DPOCTL" get "$dpo" --json >"$data/result.json"
jq -r --arg secs "$(($(date +%s) - t0))" '
  def pct: (. * 1000 | round) / 10 | tostring + "%";
  def f3: (. * 1000 | round) / 1000 | tostring;
  def row($a; $b; $c): ($a + "                              ")[0:28] + ($b + "              ")[0:14] + $c;
  .first_eval as $r | .last_eval as $d | ($d.mode_distance / $r.mode_distance) as $ratio |
  row(""; "reference"; "DPO"),
  row("preferred-mode rate"; $r.preferred_mode_rate | pct; $d.preferred_mode_rate | pct),
  row("distance to the modes"; $r.mode_distance | f3; ($d.mode_distance | f3) + "  (x\(($ratio * 100 | round) / 100))"),
  row("held-out implicit accuracy"; "-"; ($d.implicit_acc | pct) + "  (\($d.pairs) pairs)"),
  row("samples scored"; $r.samples | tostring; $d.samples | tostring),
  "targets (DPO >= 90%, distance <= 1.5x reference): " +
    (if $d.preferred_mode_rate >= 0.9 and $ratio <= 1.5 then "met" else "NOT met" end),
  "whole demo: \($secs) s"' "$data/result.json"
jq -e '.last_eval.preferred_mode_rate >= 0.9 and .last_eval.mode_distance <= 1.5 * .first_eval.mode_distance' \
  "$data/result.json" >/dev/null || { echo "the demo's targets were not met: see dpoctl get $dpo"; exit 3; }
