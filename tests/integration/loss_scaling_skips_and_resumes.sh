#!/usr/bin/env bash
# Dynamic loss scaling on the CPU, which has no fp16: the scaler forced on in fp32 runs
# (DPOD_LOSS_SCALE=force:65536:2, growth every 2 clean steps), an inf put into one rank's gradient at
# step 3 (DPOD_TEST_NONFINITE_STEP=3), 2 ranks, a warmup that makes the learning rate depend on the
# optimizer steps taken, a checkpoint every step:
#   - without an overflow, scaled training is bit for bit unscaled training (power-of-two scales are
#     exact), while the scale grows 65536 -> 131072 -> 262144; in bf16, with LoRA and with Adafactor too;
#   - the step with the inf is skipped: its weights and optimizer state are those of step 2, AdamW's step
#     count does not advance, the scale halves (logged on rank 0 naming the step), later steps train;
#   - the inf on rank 1 or on rank 0 gives the same run: both ranks skip and stay replicas;
#   - a resume from the skipped step's checkpoint, or the one after, is bit-exact with the uninterrupted
#     run, scaler state included; one from a checkpoint without the scaler's state is not (it starts
#     afresh, as an older checkpoint does).
source "$(dirname "$0")/lib.sh"

sets=(--set ranks=2 --set train.batch_size=2 --set train.steps=6 --set train.checkpoint_every=1
  --set train.keep_last=6 --set train.warmup_steps=4 --set train.learning_rate=1e-4)
files=(diffusion_pytorch_model.safetensors optimizer.safetensors)
ck() { echo "$T/$1/checkpoints/step-$(printf %06d "$2")"; }
same() {  # same RUN_A STEP_A RUN_B STEP_B: every weight and optimizer file identical
  for f in "${files[@]}"; do cmp -s "$(ck "$1" "$2")/$f" "$(ck "$3" "$4")/$f" || return 1; done
}
adam_step() {  # the AdamW step count recorded in a checkpoint's optimizer.safetensors
  /usr/bin/python3 -c 'import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]
print(json.loads(f.read(n))["__metadata__"]["step"])' "$(ck "$1" "$2")/optimizer.safetensors"
}
scales() { grep '^step [0-9]*/' "$T/$1.log" | grep -o 'scale [0-9.e+]*\( skipped\)\?$' | tr '\n' ','; }
losses() { grep -o '^step [0-9]*/[0-9]* loss [0-9.]*' "$T/$1.log"; }

run() {  # run NAME [ENV=VALUE...]: the job on 2 ranks, its run in $T/NAME
  local name=$1
  shift
  cp "$T/job.yaml" "$T/$name.yaml"
  (if [ $# -gt 0 ]; then export "$@"; fi; it_standalone_run "$name" 2)
}
it_standalone_spec job "${sets[@]}"
run plain
run scaled DPOD_LOSS_SCALE=force:65536:2
grep -q "loss scaling: initial scale 65536, doubled after 2 clean steps" "$T/scaled.log" \
  || it_fail "the forced scaler did not say it is on: $(head -n 8 "$T/scaled.log")"
grep -q "loss scaling" "$T/plain.log" && it_fail "an fp32 run scales its loss without being asked"
for s in 1 2 3 4 5 6; do same plain $s scaled $s || it_fail "step $s: scaled fp32 training differs from unscaled"; done
[ "$(scales scaled)" = "scale 65536,scale 65536,scale 131072,scale 131072,scale 262144,scale 262144," ] \
  || it_fail "the scale did not double every 2 clean steps: $(scales scaled)"
# The comparison can fail: steps 2 and 3 differ.
same plain 2 plain 3 && it_fail "steps 2 and 3 have the same weights; the test proves nothing"
# The same through bf16's casts (what fp16 shares): bf16 has float32's exponent range, so scaling its
# backward by a power of two is as exact.
it_standalone_spec bf16job "${sets[@]}" --set train.steps=4 --set train.precision=bf16
for r in bf16_plain bf16_scaled; do cp "$T/bf16job.yaml" "$T/$r.yaml"; done
it_standalone_run bf16_plain 2
(export DPOD_LOSS_SCALE=force:65536:1; it_standalone_run bf16_scaled 2)
for s in 1 2 3 4; do same bf16_plain $s bf16_scaled $s || it_fail "step $s: scaled bf16 training differs from unscaled"; done
[ "$(scales bf16_scaled)" = "scale 65536,scale 131072,scale 262144,scale 524288," ] || it_fail "bf16 scales: $(scales bf16_scaled)"
# LoRA (only the adapters' gradients are staged and unscaled) and Adafactor: the same exactness, and
# the inf at step 3 leaves their state as it was.
for v in lora adafactor; do
  extra=("${IT_LORA_SETS[@]}")
  state=lora_adapters.safetensors
  [ $v = adafactor ] && extra=(--set train.optimizer=adafactor) state=diffusion_pytorch_model.safetensors
  it_standalone_spec "${v}_plain" "${sets[@]}" --set train.steps=4 "${extra[@]}"
  for r in scaled inf; do cp "$T/${v}_plain.yaml" "$T/${v}_$r.yaml"; done
  it_standalone_run "${v}_plain" 2
  (export DPOD_LOSS_SCALE=force:65536:1; it_standalone_run "${v}_scaled" 2)
  (export DPOD_LOSS_SCALE=force:65536:1 DPOD_TEST_NONFINITE_STEP=3; it_standalone_run "${v}_inf" 2)
  for s in 1 2 3 4; do
    for f in $state optimizer.safetensors; do
      cmp -s "$(ck "${v}_plain" $s)/$f" "$(ck "${v}_scaled" $s)/$f" || it_fail "$v, step $s: scaled $f differs from unscaled"
    done
  done
  for f in $state optimizer.safetensors; do
    cmp -s "$(ck "${v}_inf" 2)/$f" "$(ck "${v}_inf" 3)/$f" || it_fail "$v: the skipped step 3 changed $f"
  done
  cmp -s "$(ck "${v}_inf" 3)/$state" "$(ck "${v}_inf" 4)/$state" && it_fail "$v: step 4 did not train after the skip"
done

for r in 1 0; do
  run "inf$r" DPOD_LOSS_SCALE=force:65536:2 DPOD_TEST_NONFINITE_STEP=3 DPOD_TEST_NONFINITE_RANK=$r
done
grep -q "step 3: the gradients hold inf or nan at loss scale 131072: step skipped, loss scale now 65536" "$T/inf1.log" \
  || it_fail "rank 0 did not log the skip with the new scale: $(grep -m3 'step 3' "$T/inf1.log")"
[ "$(scales inf1)" = "scale 65536,scale 65536,scale 131072 skipped,scale 65536,scale 65536,scale 131072," ] \
  || it_fail "scales around the skip: $(scales inf1)"
same plain 2 inf1 2 || it_fail "before the inf the run differs from unscaled training"
same inf1 2 inf1 3 || it_fail "the skipped step 3 changed the weights or the optimizer state"
[ "$(adam_step inf1 3)" = 2 ] || it_fail "the skipped step advanced AdamW's step count to $(adam_step inf1 3)"
[ "$(adam_step inf1 4)" = 3 ] || it_fail "step 4 did not take AdamW's third step: $(adam_step inf1 4)"
same inf1 3 inf1 4 && it_fail "the step after the skip did not train"
same plain 4 inf1 4 && it_fail "a run with a skipped step ends step 4 where the unskipped run does"
for s in 1 2 3 4 5 6; do same inf1 $s inf0 $s || it_fail "step $s: the inf on rank 1 and on rank 0 train differently"; done
diff <(losses inf1) <(losses inf0) >/dev/null || it_fail "the losses differ with the inf on rank 1 and on rank 0"
grep -q '"skipped": 1' "$(ck inf1 4)/loss_scale.json" || it_fail "the checkpoint does not count the skip: $(cat "$(ck inf1 4)/loss_scale.json")"

# Resume from step 3 (the skipped step's checkpoint) and from step 4 (one clean step into the next
# growth interval): the same run as the uninterrupted one, scaler state included.
for from in 3 4; do
  cp -a "$T/inf1" "$T/resumed$from"
  for s in $(seq $((from + 1)) 6); do rm -rf "$(ck "resumed$from" "$s")"; done
  run "resumed$from" DPOD_LOSS_SCALE=force:65536:2
  grep -q "resumed from .*step-00000$from" "$T/resumed$from.log" \
    || it_fail "did not resume from step $from: $(tail -n 5 "$T/resumed$from.log")"
  for s in $(seq $((from + 1)) 6); do
    same inf1 $s "resumed$from" $s || it_fail "step $s: the run resumed at $from differs from the uninterrupted one"
    cmp -s "$(ck inf1 $s)/loss_scale.json" "$(ck "resumed$from" $s)/loss_scale.json" \
      || it_fail "step $s: the loss scaler's state differs after a resume at $from"
  done
done
[ "$(scales resumed3)" = "scale 65536,scale 65536,scale 131072," ] || it_fail "the scales resumed at 3: $(scales resumed3)"
[ "$(scales resumed4)" = "scale 65536,scale 131072," ] || it_fail "the scales resumed at 4: $(scales resumed4)"
# And the comparison can fail: without the scaler's state (an older checkpoint) the resumed run starts at
# the initial scale again and its skip count is lost, which shifts the warmup.
cp -a "$T/inf1" "$T/stateless"
for s in 5 6; do rm -rf "$(ck stateless "$s")"; done
rm "$(ck stateless 4)/loss_scale.json"
jq 'del(.files["loss_scale.json"])' "$(ck stateless 4)/COMPLETE" >"$T/complete" && mv "$T/complete" "$(ck stateless 4)/COMPLETE"
run stateless DPOD_LOSS_SCALE=force:65536:2
grep -q "resume: .*step-000004 holds no loss scale: starting at 65536" "$T/stateless.log" \
  || it_fail "a checkpoint without loss_scale.json: $(grep -m2 resume "$T/stateless.log")"
same inf1 6 stateless 6 && it_fail "a resume that lost the skip count trained as the uninterrupted run"
# Through dpod (its environment reaches the ranks): the scale and the skip reach GetJob, dpoctl watch's
# lines, dpoctl metrics and TensorBoard (train/loss_scale, train/skipped).
export DPOD_LOSS_SCALE=force:65536:2 DPOD_TEST_NONFINITE_STEP=2
it_start_dpod
unset DPOD_LOSS_SCALE DPOD_TEST_NONFINITE_STEP
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=3 --name scaled)
"$DPOCTL_BIN" watch "$id" >"$T/watch.out" 2>&1 || it_fail "job $id did not succeed: $(tail -n 5 "$T/watch.out")"
grep -q "step 2/3 .* scale 65536 skipped (inf/nan gradients)" "$T/watch.out" \
  || it_fail "dpoctl watch does not show step 2's scale and skip: $(grep 'step 2/3' "$T/watch.out")"
grep -q "step 3/3 .* scale 32768$" "$T/watch.out" || it_fail "dpoctl watch: step 3's scale: $(grep 'step 3/3' "$T/watch.out")"
[ "$(it_job_field "$id" '.last_metrics | [.loss_scale, .skipped] | @csv')" = "32768,false" ] \
  || it_fail "GetJob's last metrics: $(it_job_field "$id" .last_metrics)"
"$DPOCTL_BIN" metrics "$id" --format jsonl | jq -e -s '[.[] | .skipped] == [false, true, false] and
  ([.[] | .loss_scale] == [65536, 65536, 32768]) and (.[1] | has("grad_norm") | not)' >/dev/null \
  || it_fail "dpoctl metrics: $("$DPOCTL_BIN" metrics "$id" --format jsonl)"
it_check_tensorboard "$id" 3 1
/usr/bin/python3 - "$IT_JOBS/$id/tensorboard" <<'PY' || it_fail "TensorBoard has no train/loss_scale or train/skipped"
import os, sys
blob = b"".join(open(os.path.join(sys.argv[1], f), "rb").read() for f in os.listdir(sys.argv[1]))
sys.exit(0 if b"train/loss_scale" in blob and b"train/skipped" in blob else 1)
PY
echo "PASS: scaled fp32 = unscaled bit for bit; the inf step skipped on both ranks, scale halved; exact resume"
