#!/usr/bin/env bash
# The device path's gradient staging, on the CPU: two ranks whose gradients go device -> host staging
# buffer -> MPI_Allreduce -> back (forced with DPOD_GRAD_STAGING=copy, what a GPU rank does) train
# bit-identically to two ranks all-reducing the gradient buffer in place, with the weights, the AdamW
# state and the checkpoint going through host snapshots; a resume from the staged run's checkpoint too.
# And a job asking for CUDA on this CPU-only libtorch is refused, naming train.device. With --lora, the
# same for the adapters.
source "$(dirname "$0")/lib.sh"

weights_file=diffusion_pytorch_model.safetensors
lora=()
if [ "${1:-}" = --lora ]; then
  weights_file=lora_adapters.safetensors
  lora=(--set train.lora.rank=4)
fi

spec() {  # spec NAME --set ...
  local name=$1
  shift
  "$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --dry-run --set ranks=2 \
    --set train.batch_size=2 --set train.checkpoint_every=2 --set data.pairs=32 "${lora[@]}" "$@" >"$T/$name.yaml" \
    || it_fail "dpoctl --dry-run failed for $name"
}
run() {  # run NAME SPEC [worker args...]
  local name=$1 s=$2
  shift 2
  mkdir -p "$T/$name/tmp"
  TMPDIR="$T/$name/tmp" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun -np 2 --oversubscribe --bind-to none \
    "$WORKER_BIN" --spec "$T/$s.yaml" --run-dir "$T/$name" "$@" >"$T/$name.log" 2>&1
}
ckpt() { echo "$T/$1/checkpoints/step-$(printf %06d "$2")"; }

spec four --set train.steps=4 --set train.device=cpu
run in_place four || it_fail "in_place failed: $(tail -n 5 "$T/in_place.log")"
DPOD_GRAD_STAGING=copy run staged four || it_fail "staged failed: $(tail -n 5 "$T/staged.log")"
grep -q "training on cpu" "$T/staged.log" || it_fail "the worker did not say where it trains: $(head -n 5 "$T/staged.log")"
grep -q "cpu: gradients all-reduced through a host staging buffer" "$T/staged.log" \
  || it_fail "DPOD_GRAD_STAGING=copy did not reach the ranks: $(head -n 5 "$T/staged.log")"
grep -q "host staging buffer" "$T/in_place.log" && it_fail "the in-place run staged its gradients"
for step in 2 4; do
  for f in $weights_file optimizer.safetensors; do
    cmp -s "$(ckpt in_place $step)/$f" "$(ckpt staged $step)/$f" \
      || it_fail "step $step: $f differs between in-place and staged all-reduce"
  done
done
# The comparison can fail: two steps are not four.
cmp -s "$(ckpt in_place 4)/$weights_file" "$(ckpt in_place 2)/$weights_file" && it_fail "steps 2 and 4 have the same weights"

# Resume through the host snapshots: the staged run's step-2 checkpoint, trained on to step 4.
cp -a "$T/staged" "$T/resumed"
rm -rf "$(ckpt resumed 4)"
DPOD_GRAD_STAGING=copy run resumed four || it_fail "resumed failed: $(tail -n 5 "$T/resumed.log")"
grep -q "resumed from .*step-000002" "$T/resumed.log" || it_fail "did not resume from step 2: $(tail -n 5 "$T/resumed.log")"
cmp -s "$(ckpt in_place 4)/$weights_file" "$(ckpt resumed 4)/$weights_file" \
  || it_fail "a staged run resumed at step 2 differs from the in-place run at step 4"

# CUDA asked for on a libtorch without it: refused by the worker, by name, as bad input.
spec cuda --set train.steps=1 --set train.device=cuda
if run cuda cuda; then it_fail "a cuda job ran on a CPU-only libtorch"; fi
grep -q "train.device: \"cuda\" is asked for, but this worker's libtorch sees no CUDA device" "$T/cuda.log" \
  || it_fail "the refusal does not say why: $(tail -n 3 "$T/cuda.log")"
echo "PASS: staged and in-place all-reduce train bit-identically ${lora[*]}"
