#!/bin/sh
# Stands in for dpo-worker in the daemon tests. The job's name, found in the packed spec, picks what it
# does: "ok" exits 0, "fail1" logs an ERROR line and exits 1, "preempt" exits 4, "hold" waits until the
# test creates RUN_DIR/release, "graceful" waits too but exits 4 on SIGTERM, as dpo-worker does after
# its preemption checkpoint. Every run leaves the secret it was given in RUN_DIR/secret.
while [ $# -gt 0 ]; do
  case "$1" in
    --spec) spec=$2; shift ;;
    --run-dir) dir=$2; shift ;;
  esac
  shift
done
printf '%s' "$DPOD_JOB_SECRET" > "$dir/secret"
if grep -q fail1 "$spec"; then
  echo "rank 0 ERROR something broke (train.c:12)"
  echo "aborting"
  exit 1
fi
if grep -q preempt "$spec"; then exit 4; fi
if grep -q graceful "$spec"; then
  trap 'sleep 1; exit 4' TERM  # a checkpoint takes a moment
  while [ ! -f "$dir/release" ]; do sleep 0.05; done
fi
if grep -q hold "$spec"; then
  while [ ! -f "$dir/release" ]; do sleep 0.05; done
fi
exit 0
