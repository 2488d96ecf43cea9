#!/usr/bin/env bash
# Diagnostics through the real dpod: the fake worker reports made-up steps (fake_report.c) with each
# signature dpoctl warns about; `dpoctl watch` must warn on stderr and `dpoctl get` in its "warnings:"
# block, naming the problem in words, and a healthy run must draw no warning. The new metrics fields
# reach the stored job as reported.
source "$DPOD_SOURCE_DIR/tests/integration/lib.sh"
it_start_dpod

declare -A expect=([saturated]="most pairs are saturated" [hacking]="possible reward hacking"
                   [flat]="the loss has stayed at ln 2")
for pattern in saturated hacking flat healthy; do
  printf 'name: metrics-%s\ntrain:\n  steps: 30\n' "$pattern" >"$T/$pattern.yaml"
  id=$(it_submit "$T/$pattern.yaml")
  "$DPOCTL_BIN" watch "$id" --no-progress >"$T/$pattern.out" 2>"$T/$pattern.err" ||
    it_fail "job $id (metrics-$pattern) did not succeed: $(tail -n 3 "$T/$pattern.out")"
  "$DPOCTL_BIN" get "$id" >"$T/$pattern.get" || it_fail "dpoctl get $id failed"
  [ "$(it_job_field "$id" '.last_metrics.step | tonumber')" = 30 ] || it_fail "job $id: not all 30 steps stored"
  if [ "$pattern" = healthy ]; then
    ! grep -q "warning" "$T/$pattern.err" || it_fail "a healthy run drew a warning: $(cat "$T/$pattern.err")"
    ! grep -q "warnings:" "$T/$pattern.get" || it_fail "a healthy run's get shows warnings: $(cat "$T/$pattern.get")"
    continue
  fi
  want=${expect[$pattern]}
  [ "$(grep -c "^warning: step [0-9]*: $want" "$T/$pattern.err")" = 1 ] ||
    it_fail "watch of metrics-$pattern did not warn '$want' once on stderr: $(cat "$T/$pattern.err")"
  ! grep -q "$want" "$T/$pattern.out" || it_fail "watch printed the warning on stdout"
  sed -n '/^  warnings:/,/^  spec:/p' "$T/$pattern.get" | grep -q -- "- $want" ||
    it_fail "get of metrics-$pattern has no warning '$want': $(cat "$T/$pattern.get")"
done
# The saturated share and the drift are stored as the worker reported them.
awk -v s="$(it_job_field 1 '.last_metrics.saturated_share | tonumber')" 'BEGIN { exit !(s == 0.9) }' ||
  it_fail "job 1's saturated share is not 0.9"
awk -v d="$(it_job_field 2 '.last_metrics.drift | tonumber')" 'BEGIN { exit !(d > 0.28 && d < 0.30) }' ||
  it_fail "job 2's drift is not policy_mse - ref_mse (0.29)"
echo "PASS: dpoctl warns from the metrics the fake worker reported"
