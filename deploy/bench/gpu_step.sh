#!/usr/bin/env bash
# The SD 1.5-config DPO step on a GPU: dpo-bench built against the machine's PyTorch libtorch, and the
# same step in plain PyTorch + diffusers (reference_step.py), side by side. For a machine with PyTorch
# (CUDA) and no Debian packages; written without one to run it on, so not yet run.
#
#   CJSON_DIR=/path/to/cJSON DIFFUSERS_SRC=/path/to/diffusers/src HF_HUB_SRC=/path/to/huggingface_hub/src \
#     bash deploy/bench/gpu_step.sh [--pairs 2] [--steps 10] [--precision fp32,bf16]
#
# Random weights, 64x64 latents, 77 tokens; each precision in turn, dpod then PyTorch + diffusers
# (reference_step.py --precision: autocast and a half-precision reference, as train.py's
# --mixed_precision runs). bf16 is what issue 15 asks to be reported.
set -euo pipefail
pairs=2 steps=10 precisions=fp32,bf16
while [ $# -gt 0 ]; do
  case $1 in
    --pairs) pairs=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --precision) precisions=$2; shift 2 ;;
    *) echo "usage: $0 [--pairs N] [--steps N] [--precision LIST]" >&2; exit 2 ;;
  esac
done
src=$(cd "$(dirname "$0")/../.." && pwd)
config=${CONFIG:-$src/../shared/fixtures/configs/sd15-unet/config.json}
[ -f "$config" ] || { echo "no SD 1.5 config at $config (set CONFIG)" >&2; exit 1; }
py=${PYTHON:-python3}
prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
build=${BUILD:-$src/build-step}
cmake -S "$src" -B "$build" -DDPOD_STEP_ONLY=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  ${CJSON_DIR:+-DDPOD_CJSON_SOURCE_DIR="$CJSON_DIR"} >"$build.cmake.log" 2>&1 || { tail -n 20 "$build.cmake.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target dpo-bench >"$build.build.log" 2>&1 || { tail -n 20 "$build.build.log"; exit 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for prec in ${precisions//,/ }; do
  echo "== dpod, $prec (dpo-bench --device cuda)"
  # One precision per run: dpo-bench runs a list in child processes, whose GPU memory the pid below misses.
  "$build/bin/dpo-bench" --device cuda --config "$config" --pairs "$pairs" --size 64 --text-len 77 \
    --steps "$steps" --warmup 3 --precision "$prec" &
  pid=$!
  peak=0
  while kill -0 "$pid" 2>/dev/null; do  # GPU memory of dpo-bench, sampled: the shim reports none itself
    m=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
        awk -F', ' -v p="$pid" '$1 == p {print $2}')
    [ -n "$m" ] && [ "$m" -gt "$peak" ] && peak=$m
    sleep 0.5
  done
  wait "$pid" || echo "  dpo-bench --precision $prec failed (exit $?)"
  echo "  GPU memory (nvidia-smi, sampled peak): ${peak} MiB"
  echo "== PyTorch + diffusers, $prec (reference_step.py --device cuda)"
  PYTHONPATH=${DIFFUSERS_SRC:-}:${HF_HUB_SRC:-}:$src/deploy/bench/pyshim "$py" "$src/deploy/bench/reference_step.py" \
    --device cuda --config "$config" --pairs "$pairs" --text-len 77 --steps "$steps" --warmup 3 --precision "$prec" ||
    echo "  reference_step.py --precision $prec failed (exit $?)"
done
