#!/usr/bin/env bash
# train.precision through dpod: a short 2-rank bf16 DPO job succeeds with a finite loss at every step, and
# an fp16 job fails on this CPU with a reason naming train.precision and fp16.
source "$(dirname "$0")/lib.sh"
it_start_dpod
EX="$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml"

id=$(it_submit "$EX" --set train.steps=3 --set train.precision=bf16 --name bf16)
"$DPOCTL_BIN" watch "$id" --events-jsonl >"$T/events.jsonl" 2>"$T/watch.err" \
  || it_fail "the bf16 job $id did not succeed: $(it_job_field "$id" .reason)"
[ "$(it_job_state "$id")" = succeeded ] || it_fail "job $id ended '$(it_job_state "$id")'"
steps=$(jq -c -s '[.[] | select(.metrics) | .metrics.step]' "$T/events.jsonl")
[ "$steps" = "[1,2,3]" ] || it_fail "metrics steps are $steps"
jq -e -s 'all(.[] | select(.metrics) | .metrics; (.loss | type) == "number" and .loss > 0 and .loss < 100)' \
  "$T/events.jsonl" >/dev/null || it_fail "a bf16 step's loss is not a finite positive number: $(jq -c -s '[.[] | select(.metrics) | .metrics.loss]' "$T/events.jsonl")"

id=$(it_submit "$EX" --set train.steps=2 --set train.precision=fp16 --name fp16)
"$DPOCTL_BIN" watch "$id" >/dev/null 2>&1 && it_fail "the fp16 job $id succeeded on a CPU"
[ "$(it_job_state "$id")" = failed ] || it_fail "the fp16 job $id is $(it_job_state "$id")"
reason=$(it_job_field "$id" .reason)
echo "$reason" | grep -q "train.precision: precision fp16 is not supported on the CPU" \
  || it_fail "the fp16 job's reason does not name the problem: $reason"
echo "PASS: bf16 job succeeded with finite losses; fp16 refused: $reason"
