#!/usr/bin/env bash
# The step benchmark's figures for the README, measured side by side in one run (a program, not a test):
# the machine's own fp32 and bf16 matmul rate through libtorch; dpod's step (dpo-bench) on the tiny and
# bigger shapes in fp32 and bf16; the Python reference's step (reference_step.py: diffusers + torch on the
# same libtorch and BLAS, "not measured" where diffusers is absent) in fp32, without and with gradient
# checkpointing; and the peak resident memory of one process (= one rank) for full fine-tuning and LoRA,
# each without and with gradient checkpointing (dpo-bench --memory). Ends with a table of the goals.
#   bash deploy/bench/step_matrix.sh            THREADS=2 STEPS=10 by default
# The raw outputs go to $WORK (a temporary folder, kept with KEEP=1).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${DPOD_BUILD:-$root/build}
threads=${THREADS:-2}
steps=${STEPS:-10}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/dpod-step-matrix.XXXXXX")}
mkdir -p "$work"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
py=${PYTHON:-/usr/bin/python3}
# The Python reference's diffusers and huggingface_hub come from /opt/ref (deploy/bench/README.md).
export PYTHONPATH=${PYTHONPATH:-/opt/ref/diffusers/src:/opt/ref/huggingface_hub/src:$root/deploy/bench/pyshim}

bench=("$build/bin/dpo-bench" --threads "$threads" --steps "$steps" --warmup 2)
echo "== dpo-bench, fp32 and bf16 ($threads threads, $steps steps)"
"${bench[@]}" --shape all --precision fp32,bf16 | tee "$work/dpod.txt"
echo "== reference_step.py, fp32"
for shape in tiny bigger; do
  for ck in "" --gradient-checkpointing; do
    "$py" "$root/deploy/bench/reference_step.py" --shape "$shape" --threads "$threads" --steps "$steps" --warmup 2 \
      $ck | tee -a "$work/ref.txt"
  done
done
echo "== dpo-bench --memory, fp32"
"${bench[@]}" --shape all --memory | tee "$work/memory.txt"

# ---- the summary ----
# dpod_rate SHAPE PREC FIELD: samples/s or GFLOP/s of one dpo-bench block.
dpod_rate() {
  awk -v shape="$1" -v prec="$2" -v field="$3" '
    $1 == shape && $2 == prec { on = 1; next }
    on && $1 == "samples/s" { print (field == "samples" ? $2 : $4); exit }' "$work/dpod.txt"
}
ref_field() {  # ref_field SHAPE CKPT(0|1) KEY: a key=value of reference_step.py's line
  awk -v shape="$1" -v ck="$2" -v key="$3" '
    index($0, "shape=" shape " ") == 1 && index($0, "gradient_checkpointing=" ck) {
      for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) { print substr($i, length(key) + 2); exit } }' "$work/ref.txt"
}
mem() {  # mem SHAPE SETUP: peak RSS MB of one row of dpo-bench --memory's table
  awk -v shape="$1" -v setup="$2" '
    index($0, shape ", peak resident memory") == 1 { on = 1; next }
    on && index($0, "  " setup " ") == 1 { n = split(substr($0, length(setup) + 3), f, " "); print f[4]; exit }' "$work/memory.txt"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

# Each precision's process measures both matmul rates under its own OpenMP wait: the machine's rate is
# the better of the two readings.
read -r mm32 mm16 < <(awk '$1 == "machine" { for (i = 1; i <= NF; i++) { if ($i == "fp32:" || $i == "fp32") a = ($(i + 1) > a ? $(i + 1) : a); if ($i == "bf16") b = ($(i + 1) > b ? $(i + 1) : b) } }
  END { print a + 0, b + 0 }' "$work/dpod.txt")
echo
echo "== summary ($threads threads; machine matmul 1024^3: fp32 $mm32, bf16 $mm16 GFLOP/s)"
printf '%-8s %-36s %10s %10s %8s\n' shape figure value against goal
for shape in tiny bigger; do
  s32=$(dpod_rate $shape fp32 samples) s16=$(dpod_rate $shape bf16 samples)
  g32=$(dpod_rate $shape fp32 gflops) g16=$(dpod_rate $shape bf16 gflops)
  rs=$(ref_field $shape 0 samples/s)
  printf '%-8s %-36s %10s %10s %8s\n' $shape "fp32 samples/s (GFLOP/s $g32)" "$s32" "x$(ratio "$g32" "$mm32") mm" "$([ $shape = bigger ] && echo '>=0.5')"
  printf '%-8s %-36s %10s %10s %8s\n' $shape "bf16 samples/s (GFLOP/s $g16)" "$s16" "x$(ratio "$s16" "$s32") fp32" "$([ $shape = bigger ] && echo '>=2')"
  printf '%-8s %-36s %10s %10s %8s\n' $shape "reference fp32 samples/s" "${rs:-n/a}" "x$(ratio "$s32" "$rs") dpod" "$([ $shape = tiny ] && echo '>=2' || echo '>=1.5')"
  rm0=$(ref_field $shape 0 peak_rss_mb) rm1=$(ref_field $shape 1 peak_rss_mb)
  for setup in "full fine-tuning" "full + checkpointing" "LoRA" "LoRA + checkpointing"; do
    m=$(mem $shape "$setup")
    goal=""
    [ $shape = bigger ] && case $setup in full*) goal='<=0.6' ;; LoRA*) goal='<=0.35' ;; esac
    printf '%-8s %-36s %10s %10s %8s\n' $shape "peak RSS MB, $setup" "$m" "x$(ratio "$m" "$rm0") ref" "$goal"
  done
  printf '%-8s %-36s %10s %10s %8s\n' $shape "reference peak RSS MB (+ checkpointing)" "${rm0:-n/a} (${rm1:-n/a})" "" ""
done
