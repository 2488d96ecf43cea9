#!/usr/bin/env bash
# train.keep_best and checkpoint provenance, on the real worker: with keep_last 1 and an evaluation at
# every checkpoint, exactly the newest checkpoint and the one whose evaluation had the lowest held-out
# loss stay; every checkpoint holds dpod_provenance.json (versions, the normalized spec, the dataset,
# that step's evaluation), listed and checksummed in COMPLETE like the weights.
source "$(dirname "$0")/lib.sh"

spec() {  # spec KEEP_LAST [--set ...]: the job file of both runs (they train identically)
  local keep=$1
  shift
  "$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --dry-run --set ranks=1 --set train.steps=12 \
    --set train.checkpoint_every=2 --set train.eval_every=2 --set train.keep_last="$keep" --set train.eval_samples=0 \
    --set train.learning_rate=1e-2 --set train.beta=500 "$@" || it_fail "dpoctl --dry-run failed"
}
run() {  # run NAME: the job $T/NAME.yaml in $T/NAME
  mkdir -p "$T/$1/tmp"
  TMPDIR="$T/$1/tmp" mpirun -np 1 --oversubscribe --bind-to none "$WORKER_BIN" --spec "$T/$1.yaml" --run-dir "$T/$1" \
    >"$T/$1.log" 2>&1 || it_fail "job $1 failed: $(tail -n 5 "$T/$1.log")"
}
spec 100 >"$T/all.yaml"
spec 1 --set train.keep_best=eval/loss >"$T/best.yaml"
run all
run best

# The best by held-out loss, exactly, from the run that kept every checkpoint (oldest of equals).
best=$(for p in "$T"/all/checkpoints/step-*/dpod_provenance.json; do jq -r '"\(.step) \(.eval.loss)"' "$p"; done |
  sort -n | awk 'n == 0 || $2 + 0 < b { b = $2 + 0; s = $1; n = 1 } END { print s }')
[ -n "$best" ] || it_fail "no evaluated checkpoint in the run that kept them all"
# A learning rate this high makes the held-out loss bounce, so that the best is not the newest (step 12):
# else the test could not tell keep_best from keep_last.
[ "$best" -lt 12 ] || it_fail "the best evaluation is the newest checkpoint's: the test shows nothing"
want=$(printf 'step-%06d\n' "$best" 12 | sort -u | tr '\n' ' ')
have=$(ls "$T/best/checkpoints" | sort | tr '\n' ' ')
[ "$have" = "$want" ] || it_fail "kept checkpoints are '$have', expected '$want' (best by eval/loss: step $best)"
[ "$(ls "$T/all/checkpoints" | wc -l)" = 6 ] || it_fail "keep_last 100 did not keep all 6 checkpoints"

for dir in "$T"/best/checkpoints/step-*; do
  p="$dir/dpod_provenance.json"
  step=$((10#${dir##*step-}))
  jq -e --arg v "$("$DPOCTL_BIN" --version | awk '{ print $2 }')" --argjson step "$step" '
      .format == "dpod-provenance" and .step == $step and .dpod_version == $v and (.torch_version | length > 0)
      and .spec.train.keep_best == "eval/loss" and (.spec.train.steps | tonumber) == 12
      and .spec.model.config == "" and .dataset.builtin == "synthetic" and (.dataset.seed | tonumber) == 1234
      and .eval.step == $step and (.eval.loss | type) == "number"' "$p" >/dev/null ||
    it_fail "$p: $(cat "$p" 2>&1 | head -c 2000)"
  jq -e '.files["dpod_provenance.json"].size > 0' "$dir/COMPLETE" >/dev/null ||
    it_fail "$dir/COMPLETE does not list the provenance file"
done
echo "PASS: kept the newest checkpoint and the best by eval/loss (step $best), each with its provenance"
