#!/usr/bin/env bash
# The whole path: dpod + dpoctl + a 2-rank MPI job to SUCCEEDED, a metrics event for every step, and a
# checkpoint that is a loadable diffusers model directory.
source "$(dirname "$0")/lib.sh"
it_start_dpod

STEPS=4
id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=$STEPS \
       --set train.checkpoint_every=2 --name e2e)
"$DPOCTL_BIN" watch "$id" --events-jsonl >"$T/events.jsonl" 2>"$T/watch.err" \
  || it_fail "dpoctl watch exited $? for job $id: $(cat "$T/watch.err")"

state=$(it_job_state "$id")
[ "$state" = succeeded ] || it_fail "job $id ended '$state'"

# Sequence numbers are 1..n without gaps or duplicates.
n=$(wc -l <"$T/events.jsonl")
[ "$(jq -s '[.[].seq | tonumber] == [range(1; length + 1)]' "$T/events.jsonl")" = true ] \
  || it_fail "event seqs are not 1..$n: $(jq -c -s '[.[].seq]' "$T/events.jsonl")"

# One metrics event per optimizer step, each with loss and implicit accuracy.
steps=$(jq -c -s '[.[] | select(.metrics) | .metrics.step]' "$T/events.jsonl")
[ "$steps" = "$(jq -c -n "[range(1; $STEPS + 1)]")" ] || it_fail "metrics steps are $steps"
jq -e -s 'all(.[] | select(.metrics) | .metrics; (.loss | type) == "number" and .implicit_acc >= 0
          and .implicit_acc <= 1 and .samples_per_sec > 0)' "$T/events.jsonl" >/dev/null \
  || it_fail "a metrics event lacks loss, accuracy or throughput"

# The state changes, in order.
states=$(jq -r -s "$IT_JQ_DEFS"' [.[] | select(.state) | .state.state | state_name] | join(",")' "$T/events.jsonl")
[ "$states" = "queued,starting,running,succeeded" ] || it_fail "state events are $states"

# Checkpoints at steps 2 and 4; the last is a diffusers directory that loads and runs.
ck_steps=$(jq -c -s '[.[] | select(.checkpoint) | .checkpoint.step]' "$T/events.jsonl")
[ "$ck_steps" = "[2,4]" ] || it_fail "checkpoint events at steps $ck_steps"
dir=$(jq -r -s '[.[] | select(.checkpoint)] | last | .checkpoint.path' "$T/events.jsonl")
[ -f "$dir/diffusion_pytorch_model.safetensors" ] || it_fail "no weights in $dir"
[ -f "$dir/config.json" ] || it_fail "no config.json in $dir"
"$TOOL_BIN" inspect "$dir/diffusion_pytorch_model.safetensors" >"$T/inspect.txt" || it_fail "dpo-tool inspect failed"
grep -q "208 tensors" "$T/inspect.txt" || it_fail "checkpoint does not hold the 208 UNet tensors: $(tail -n 3 "$T/inspect.txt")"
"$TOOL_BIN" forward --config "$dir/config.json" --weights "$dir/diffusion_pytorch_model.safetensors" \
  --inputs "$DPOD_FIXTURES/tiny-sd/inputs.safetensors" --out "$T/out.safetensors" \
  || it_fail "the checkpoint does not load into the UNet"

# Both ranks' output, through the Logs RPC: tagged with attempt and rank, without mpirun's own tags; one
# rank alone; the tail.
"$DPOCTL_BIN" logs "$id" >"$T/logs.txt" || it_fail "dpoctl logs $id failed"
for r in 0 1; do
  grep -q "^\[attempt 1 rank $r\( stderr\)\?\] .*rank $r of 2 on " "$T/logs.txt" || it_fail "no line of rank $r in: $(head -n 20 "$T/logs.txt")"
done
grep -q "<stdout>:\|<stderr>:" "$T/logs.txt" && it_fail "mpirun's tags are left in the lines"
"$DPOCTL_BIN" logs "$id" --rank 1 --jsonl >"$T/logs-1.jsonl" || it_fail "dpoctl logs $id --rank 1 failed"
jq -e -s 'length > 0 and all(.[]; (.rank | tonumber) == 1 and (.attempt | tonumber) == 1)' "$T/logs-1.jsonl" \
  >/dev/null || it_fail "--rank 1 gave other lines: $(head -n 5 "$T/logs-1.jsonl")"
"$DPOCTL_BIN" logs "$id" --tail 2 >"$T/tail.txt" || it_fail "dpoctl logs $id --tail 2 failed"
tail -n 2 "$T/logs.txt" | cmp -s - "$T/tail.txt" || it_fail "--tail 2 is not the last 2 lines: $(cat "$T/tail.txt")"

# The daemon's record agrees with the stream.
[ "$(it_job_field "$id" .last_metrics.step)" = "$STEPS" ] || it_fail "GetJob last_metrics.step is wrong"
[ "$(it_job_field "$id" .last_seq)" = "$n" ] || it_fail "GetJob last_seq differs from the stream"
# The diagnostics the worker adds to each step: a share in [0, 1], and the drift as policy - reference MSE.
it_job_field "$id" '.last_metrics | (.saturated_share | tonumber) as $s | (.drift | tonumber) as $d |
    ((.policy_mse | tonumber) - (.ref_mse | tonumber)) as $want |
    $s >= 0 and $s <= 1 and (($d - $want) | fabs) <= 1e-12 * ([1, ($want | fabs)] | max)' | grep -qx true ||
  it_fail "GetJob last_metrics lacks a sound saturated_share and drift: $(it_job_field "$id" .last_metrics)"
echo "PASS: job $id, $n events, checkpoint $dir"
