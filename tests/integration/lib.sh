# Shared set-up for the integration tests: each test starts its own dpod on a private socket and state
# directory, talks to it only through dpoctl, and tears everything down on exit. On failure the daemon
# log and the job logs are printed.
set -euo pipefail

: "${DPOD_BIN:?}" "${DPOCTL_BIN:?}" "${WORKER_BIN:?}" "${TOOL_BIN:?}" "${DPOD_SOURCE_DIR:?}"
command -v jq >/dev/null || { echo "jq is required (apt-get install jq)"; exit 1; }

T=$(mktemp -d "${TMPDIR:-/tmp}/dpod-it.XXXXXX")
export DPOD_ADDR="unix:$T/run/dpod.sock"
DPOD_PID=""
IT_JOBS="$T/state/jobs" # run directories; a test that gives dpod --jobs-dir sets it

it_dump_logs() {
  echo "---- dpod log"; cat "$T/dpod.log" 2>/dev/null || true
  for f in "$IT_JOBS"/*/*.log; do
    [ -f "$f" ] && { echo "---- $f"; tail -n 40 "$f"; }
  done
}

it_fail() {
  echo "FAIL: $*" >&2
  it_dump_logs >&2
  exit 1
}

# Commands a test adds (IT_CLEANUP+=('slurm_down "$T/slurm"')) run first at exit. A test must not set
# its own EXIT trap: the exit status would then be that of its last command, and a failed test pass.
IT_CLEANUP=()

it_cleanup() {
  local rc=$? h
  for h in "${IT_CLEANUP[@]}"; do eval "$h" || true; done
  if [ -n "$DPOD_PID" ] && kill -0 "$DPOD_PID" 2>/dev/null; then
    kill -TERM "$DPOD_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$DPOD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DPOD_PID" 2>/dev/null || true
  fi
  [ $rc -ne 0 ] && it_dump_logs >&2
  # Whatever the test started that still runs (mpirun and ranks it launched itself: their arguments
  # name $T) goes with it, so that a failed test cannot leave ranks training in the background.
  pkill -KILL -f -- "$T/" 2>/dev/null || true
  rm -rf "$T"
  exit $rc
}
trap it_cleanup EXIT

# it_start_dpod [extra dpod args...]
it_start_dpod() {
  mkdir -p "$T/run"
  it_launch_dpod "$@"
}

# it_launch_dpod [extra dpod args...]: the same, leaving the socket's directory to dpod.
it_launch_dpod() {
  "$DPOD_BIN" --listen "$DPOD_ADDR" --state-dir "$T/state" --slots "${SLOTS:-2}" --worker "$WORKER_BIN" "$@" \
    >"$T/dpod.log" 2>&1 &
  DPOD_PID=$!
  for _ in $(seq 1 200); do
    "$DPOCTL_BIN" health >/dev/null 2>&1 && return 0
    kill -0 "$DPOD_PID" 2>/dev/null || it_fail "dpod exited during start-up"
    sleep 0.05
  done
  it_fail "dpod did not answer health checks within 10 s"
}

# it_submit FILE [dpoctl submit args...] -> prints the job id
it_submit() {
  local out
  out=$("$DPOCTL_BIN" submit "$@") || it_fail "dpoctl submit $* failed: $out"
  echo "$out" | grep -oE '[0-9]+' | head -n 1
}

# it_job_field ID JQ-PATH -> a field of `dpoctl get ID --json`, protobuf's JSON mapping: enum values by
# name ("JOB_STATE_SUCCEEDED": it_job_state gives "succeeded"), 64-bit integers as strings (compare them
# with jq's tonumber, or as text: jq -r prints "12" as 12), absent fields omitted (`.restarts // 0`).
it_job_field() {
  "$DPOCTL_BIN" get "$1" --json | jq -r "$IT_JQ_DEFS $2"
}

# jq definitions every it_job_field path (and a test's own jq, as `jq "$IT_JQ_DEFS ..."`) can use:
# `state_name` turns "JOB_STATE_SUCCEEDED" into "succeeded", the name dpoctl's tables and --state use.
IT_JQ_DEFS='def state_name: ascii_downcase | sub("^job_state_"; "");'

# it_job_state ID -> the job's state as dpoctl list shows it: "queued", "running", "succeeded", ...
it_job_state() {
  it_job_field "$1" '.state // "" | state_name'
}

# it_wait_state ID STATE TIMEOUT_S (STATE as it_job_state gives it: succeeded)
it_wait_state() {
  local s
  for _ in $(seq 1 $(($3 * 10))); do
    s=$(it_job_state "$1")
    [ "$s" = "$2" ] && return 0
    sleep 0.1
  done
  it_fail "job $1 is '$s', not '$2', after $3 s"
}

# it_wait_at_least ID JQ-PATH N TIMEOUT_S: waits until a numeric field of the job reaches N
it_wait_at_least() {
  local v=0
  for _ in $(seq 1 $(($4 * 10))); do
    v=$(it_job_field "$1" "$2 // 0")
    [ "$v" -ge "$3" ] && return 0
    sleep 0.1
  done
  it_fail "job $1: $2 is $v, not >= $3, after $4 s"
}

# it_check_steps_once ID STEPS: the job's event stream holds a metrics event for every step 1..STEPS,
# each exactly once, and lists only checkpoints that exist on disk, the final one among them.
it_check_steps_once() {
  "$DPOCTL_BIN" watch "$1" --events-jsonl >"$T/events-$1.jsonl" 2>/dev/null || true
  local steps
  steps=$(jq -c -s '[.[] | select(.metrics) | .metrics.step]' "$T/events-$1.jsonl")
  [ "$steps" = "$(jq -c -n "[range(1; $2 + 1)]")" ] || it_fail "job $1: metrics steps are $steps, not 1..$2 once each"
  local listed dir
  listed=$("$DPOCTL_BIN" get "$1" --json | jq -r '.checkpoints[]?.path')
  [ -n "$listed" ] || it_fail "job $1 lists no checkpoint"
  for dir in $listed; do
    [ -f "$dir/COMPLETE" ] || it_fail "job $1 lists $dir, which is not a complete checkpoint on disk"
  done
  echo "$listed" | grep -q "step-$(printf %06d "$2")\$" || it_fail "job $1 does not list its final checkpoint: $listed"
}

# it_check_tensorboard ID STEPS ATTEMPTS: the job's TensorBoard files (RUN_DIR/tensorboard), read back by
# tb_read.py's own reader, hold every step 1..STEPS once with the values `dpoctl metrics` gives, and
# each of ATTEMPTS attempts' start and end once. The writer runs behind the loop: a few seconds' grace.
it_check_tensorboard() {
  "$DPOCTL_BIN" metrics "$1" --format jsonl >"$T/metrics-$1.jsonl" || it_fail "dpoctl metrics $1 failed"
  local out
  for _ in $(seq 1 50); do
    out=$(/usr/bin/python3 "$DPOD_SOURCE_DIR/tests/integration/tb_read.py" "$IT_JOBS/$1/tensorboard" \
          "$T/metrics-$1.jsonl" "$2" --attempts "$3" 2>&1) && { echo "$out"; return 0; }
    sleep 0.2
  done
  it_fail "job $1's TensorBoard files: $out"
}

# it_kill_dpod: SIGKILL, as a crash would.
it_kill_dpod() {
  kill -KILL "$DPOD_PID" 2>/dev/null || true
  wait "$DPOD_PID" 2>/dev/null || true
  DPOD_PID=""
}

# it_restart_resumes ID AT STEPS: `dpoctl restart ID`, watched to SUCCEEDED; the job must resume from its
# checkpoint at step AT, and over both runs report every step 1..STEPS exactly once.
it_restart_resumes() {
  "$DPOCTL_BIN" restart "$1" >/dev/null || it_fail "dpoctl restart $1 failed"
  "$DPOCTL_BIN" watch "$1" --events-jsonl >"$T/restarted-$1.jsonl" 2>/dev/null || it_fail "the restarted job did not succeed"
  grep -q "resumed from .*(step $2)" "$IT_JOBS/$1"/attempt-*.log || it_fail "the restarted job did not resume from step $2"
  local steps
  steps=$(jq -c -s '[.[] | select(.metrics) | .metrics.step]' "$T/restarted-$1.jsonl")
  [ "$steps" = "$(jq -c -n "[range(1; $3 + 1)]")" ] || it_fail "metrics steps over both runs: $steps"
}

# Processes of a job, found by its run directory on their command line (zombies waiting for a reaper
# excluded: they are already dead).
it_job_procs() {
  local p
  for p in $(pgrep -f -- "$IT_JOBS/$1/" || true); do
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ] || echo "$p"
  done
}

# The dpo-worker ranks of a job (not mpirun, whose command line names the worker too).
it_job_ranks() {
  local p
  for p in $(it_job_procs "$1"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = dpo-worker ] && echo "$p"
  done
  return 0
}

# Live (non-zombie) processes of session $1.
it_session_procs() {
  local p
  for p in $(pgrep -s "$1" || true); do
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ] || echo "$p"
  done
}

# Standalone dpo-worker runs (no dpod), for tests that compare what training produces under two setups.
# it_standalone_spec NAME [dpoctl --set args...]: $T/NAME.yaml, the tiny DPO job for 3 steps, the final
# checkpoint only, 32 pairs, lr 1e-5, then the test's own --set options (the later wins).
it_standalone_spec() {
  local name=$1
  shift
  "$DPOCTL_BIN" submit "$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml" --dry-run --set train.steps=3 \
    --set train.checkpoint_every=0 --set train.learning_rate=1e-5 --set data.pairs=32 "$@" >"$T/$name.yaml" \
    || it_fail "dpoctl --dry-run failed for $name"
}
# it_standalone_run NAME RANKS: dpo-worker on $T/NAME.yaml under mpirun, one thread a rank, its run in $T/NAME
# and its output in $T/NAME.log.
it_standalone_run() {
  mkdir -p "$T/$1/tmp"
  TMPDIR="$T/$1/tmp" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun -np "$2" --oversubscribe --bind-to none \
    "$WORKER_BIN" --spec "$T/$1.yaml" --run-dir "$T/$1" >"$T/$1.log" 2>&1 || it_fail "$1 failed: $(tail -n 5 "$T/$1.log")"
}
# LoRA settings those comparisons use: lr 3e-5, rank 4 on to_q, to_v, to_out.0 and ff.net.2. AdamW turns a
# rounding difference in a tiny gradient into a step difference of up to lr, so a 1e-5 tolerance means
# something only while lr x steps is near it; a different batch still moves the adapters by 1e-4.
IT_LORA_SETS=(--set train.learning_rate=3e-5 --set train.lora.rank=4 --set train.lora.target_modules=to_q,to_v,to_out.0,ff.net.2)
