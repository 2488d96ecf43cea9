#!/bin/sh
# Stands in for dpo-worker in the daemon tests. The job's name, found in the packed spec, picks what it
# does: "ok" exits 0, "fail1" logs an ERROR line and exits 1, "badinput" exits 2 (the worker's status for
# a model or dataset it refuses), "preempt" exits 4, "metrics-PATTERN" reports made-up steps (fake_report.c,
# named by $DPOD_FAKE_REPORT: PATTERN is saturated, hacking, flat or healthy) and exits 0, "hold" waits until the
# test creates RUN_DIR/release, "graceful" waits too but exits 4 after SIGTERM (once RUN_DIR/release
# exists), as dpo-worker does after its preemption checkpoint. With "chatty" in the name as well, each
# rank first prints three lines on stdout and three on stderr, and "bye" when it ends. Every run leaves the secret it was given
# in RUN_DIR/secret. Waiting ends, with status 1, if the run directory goes: jobs outlive dpod, so a
# test that failed half-way must not leave a fake worker waiting for ever.
while [ $# -gt 0 ]; do
  case "$1" in
    --spec) spec=$2; shift ;;
    --run-dir) dir=$2; shift ;;
    --job-id) job=$2; shift ;;
    --report-addr) addr=$2; shift ;;
  esac
  shift
done
wait_release() {
  while [ ! -f "$dir/release" ]; do
    [ -d "$dir" ] || exit 1
    sleep 0.05
  done
}
# "graceful": SIGTERM starts the "checkpoint", which lasts until RUN_DIR/release exists, then exits 4.
# The trap is set before the secret is written: the test signals once it sees the secret.
if grep -q graceful "$spec"; then
  trap 'wait_release; exit 4' TERM
fi
printf '%s' "$DPOD_JOB_SECRET" > "$dir/secret"
rank=${OMPI_COMM_WORLD_RANK:-0}
chatty=0
if grep -q chatty "$spec"; then
  chatty=1
  for i in 1 2 3; do
    echo "out $i of rank $rank"
    echo "err $i of rank $rank" >&2
  done
fi
pattern=$(grep -ao 'metrics-[a-z]*' "$spec" | head -n 1)
if [ -n "$pattern" ]; then
  "$DPOD_FAKE_REPORT" "$addr" "$job" "${pattern#metrics-}" 30 || exit 1
  exit 0
fi
if grep -q fail1 "$spec"; then
  echo "rank 0 ERROR something broke (train.c:12)"
  echo "aborting"
  exit 1
fi
if grep -q badinput "$spec"; then
  echo "rank 0 ERROR model.config: no such file"
  exit 2
fi
if grep -q preempt "$spec"; then exit 4; fi
if grep -q graceful "$spec"; then
  wait_release
fi
if grep -q hold "$spec"; then
  wait_release
fi
if [ "$chatty" = 1 ]; then echo "bye from rank $rank"; fi
exit 0
