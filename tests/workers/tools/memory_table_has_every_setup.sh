#!/bin/sh
# dpo-bench --memory runs four training setups in child processes and prints one row for each, with a
# peak resident memory no smaller than what the models took once built, and checkpointing lowering the
# full fine-tuning peak. Its children once hung forever: the parent had started libgomp's thread pool
# (the matmul probe) before fork(); the test's timeout catches that.
#   memory_table_has_every_setup.sh DPO-BENCH
set -u
out=$("$1" --shape tiny --steps 1 --warmup 1 --threads 2 --memory) || { echo "FAIL: dpo-bench --memory failed"; exit 1; }
echo "$out"
for setup in "full fine-tuning" "full + checkpointing" "LoRA" "LoRA + checkpointing"; do
  row=$(echo "$out" | grep "^  $setup  ") || { echo "FAIL: no row for '$setup'"; exit 1; }
  echo "$row" | awk -v s="$setup" '{ n = NF; if (!($(n - 1) >= $n && $n > 0)) { print "FAIL: " s ": peak " $(n - 1) " MB below the built models " $n " MB"; exit 1 } }' || exit 1
done
peak() { echo "$out" | grep "^  $1  " | awk '{ print $(NF - 1) }'; }
awk -v a="$(peak 'full fine-tuning')" -v b="$(peak 'full + checkpointing')" 'BEGIN { exit !(b < a) }' \
  || { echo "FAIL: checkpointing did not lower the full fine-tuning peak"; exit 1; }
echo "PASS"
