#!/usr/bin/env bash
# WatchJob resumed from sequence k replays exactly the events after k: no gap, no duplicate.
source "$(dirname "$0")/lib.sh"
it_start_dpod

id=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=5 --name resume)
"$DPOCTL_BIN" watch "$id" --events-jsonl >"$T/all.jsonl" 2>/dev/null || it_fail "watch failed"
n=$(wc -l <"$T/all.jsonl")
[ "$n" -ge 9 ] || it_fail "only $n events"
for k in 0 1 3 $((n - 1)) "$n"; do
  "$DPOCTL_BIN" watch "$id" --after-seq "$k" --events-jsonl >"$T/from.jsonl" 2>/dev/null || true
  tail -n +$((k + 1)) "$T/all.jsonl" | jq -c . >"$T/want.jsonl"
  jq -c . "$T/from.jsonl" >"$T/got.jsonl"
  cmp -s "$T/want.jsonl" "$T/got.jsonl" \
    || it_fail "after_seq=$k: got seqs $(jq -c -s '[.[].seq]' "$T/got.jsonl"), want $(jq -c -s '[.[].seq]' "$T/want.jsonl")"
done

# Live: a watcher that joins mid-run from a sequence number it saw misses nothing.
id2=$(it_submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --set train.steps=6 --name live)
it_wait_state "$id2" running 60
"$DPOCTL_BIN" watch "$id2" --after-seq 2 --events-jsonl >"$T/live.jsonl" 2>/dev/null || it_fail "live watch failed"
"$DPOCTL_BIN" watch "$id2" --events-jsonl >"$T/live_all.jsonl" 2>/dev/null || it_fail "second watch failed"
tail -n +3 "$T/live_all.jsonl" | jq -c . >"$T/want.jsonl"
jq -c . "$T/live.jsonl" >"$T/got.jsonl"
cmp -s "$T/want.jsonl" "$T/got.jsonl" || it_fail "live watch from seq 2 differs from the replay"
echo "PASS: resume from any seq replays exactly the rest ($n events)"
