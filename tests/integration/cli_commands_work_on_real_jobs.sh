#!/usr/bin/env bash
# The CLI a det/ray user reaches for, against the real daemon: jobs by name, list --name and -q,
# checkpoints, cancel --wait, delete (refused while a job runs; its rows gone, and its run directory
# with --run-dir, never one outside the jobs directory), and specs that say every default, including
# one stored the way dpod stored specs before it filled them in.
source "$(dirname "$0")/lib.sh"
it_start_dpod
EX="$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml"

# submit -q prints the id alone; the job is then known by its name.
a=$("$DPOCTL_BIN" submit "$EX" -q --set train.steps=2 --set train.checkpoint_every=1 --set train.keep_last=2 \
      --name cli-a) || it_fail "submit -q failed"
[[ "$a" =~ ^[0-9]+$ ]] || it_fail "submit -q printed '$a', not an id"
"$DPOCTL_BIN" watch cli-a >/dev/null 2>&1 || it_fail "watch by name: job $a did not succeed"
[ "$(it_job_state "$a")" = succeeded ] || it_fail "job $a is $(it_job_state "$a")"

# Its stored and returned spec holds every default, though the job file and --set gave only a few.
[ "$(it_job_field "$a" '.spec.train.adam_beta2')" = 0.999 ] || it_fail "the returned spec lacks its defaults: $(it_job_field "$a" .spec)"
[ "$(it_job_field "$a" '.spec.max_restarts')" = 3 ] || it_fail "max_restarts is not filled in"

# checkpoints: the ones on disk, by name, as a table and as JSON.
"$DPOCTL_BIN" checkpoints cli-a >"$T/ck.txt" || it_fail "checkpoints cli-a failed"
grep -q "step-000002" "$T/ck.txt" || it_fail "checkpoints does not list step 2: $(cat "$T/ck.txt")"
n=$("$DPOCTL_BIN" checkpoints "$a" -o json | jq 'length')
[ "$n" = 2 ] || it_fail "checkpoints -o json lists $n checkpoints, not 2"
for dir in $("$DPOCTL_BIN" checkpoints "$a" -o json | jq -r '.[].path'); do
  [ -f "$dir/COMPLETE" ] || it_fail "checkpoints lists $dir, which is not on disk"
done
"$DPOCTL_BIN" checkpoints "$a" -o json | jq -e 'all(.[]; (.size_bytes | tonumber) > 0)' >/dev/null ||
  it_fail "checkpoint sizes are missing"

# Two jobs of one name: the name is ambiguous, list --name finds both.
b=$("$DPOCTL_BIN" submit "$EX" -q --set train.steps=100000 --set train.checkpoint_every=0 --name twin)
c=$("$DPOCTL_BIN" submit "$EX" -q --set train.steps=100000 --set train.checkpoint_every=0 --name twin)
"$DPOCTL_BIN" get twin >/dev/null 2>"$T/err" && it_fail "get of an ambiguous name succeeded"
grep -q "2 jobs are named 'twin'" "$T/err" || it_fail "ambiguous name: $(cat "$T/err")"
[ "$("$DPOCTL_BIN" list -q --name twin | sort -n | tr '\n' ' ')" = "$b $c " ] || it_fail "list --name twin: $("$DPOCTL_BIN" list --name twin)"
[ "$("$DPOCTL_BIN" list -q --name 'cli-*')" = "$a" ] || it_fail "list --name with a glob"
rc=0
"$DPOCTL_BIN" get no-such-job >/dev/null 2>"$T/err" || rc=$?
[ $rc = 1 ] && grep -q "no job is named 'no-such-job'" "$T/err" || it_fail "unknown name: exit $rc, $(cat "$T/err")"

# A job that has not ended cannot be deleted; cancel --wait returns once it has.
it_wait_state "$b" running 60
"$DPOCTL_BIN" delete "$b" >/dev/null 2>"$T/err" && it_fail "a running job was deleted"
grep -q "job $b is running" "$T/err" || it_fail "delete of a running job: $(cat "$T/err")"
"$DPOCTL_BIN" cancel "$b" --wait >"$T/out" || it_fail "cancel --wait failed"
[ "$(it_job_state "$b")" = cancelled ] || it_fail "cancel --wait returned while job $b is $(it_job_state "$b")"
grep -q "job $b cancelled" "$T/out" || it_fail "cancel --wait did not say how the job ended: $(cat "$T/out")"
"$DPOCTL_BIN" cancel "$c" --wait >/dev/null || it_fail "cancel --wait of a queued or starting job failed"

# delete: the rows go; the run directory only with --run-dir.
"$DPOCTL_BIN" delete "$b" >/dev/null || it_fail "delete $b failed"
"$DPOCTL_BIN" get "$b" >/dev/null 2>&1 && it_fail "job $b is still there after delete"
[ -d "$IT_JOBS/$b" ] || it_fail "delete without --run-dir removed the run directory"
"$DPOCTL_BIN" list -q | grep -qx "$b" && it_fail "list still shows job $b"
"$DPOCTL_BIN" delete twin --run-dir >/dev/null || it_fail "delete twin --run-dir (now unique) failed"
"$DPOCTL_BIN" get "$c" >/dev/null 2>&1 && it_fail "job $c is still there after delete"
[ -e "$IT_JOBS/$c" ] && it_fail "delete --run-dir left $IT_JOBS/$c"
"$DPOCTL_BIN" delete "$c" >/dev/null 2>"$T/err" && it_fail "a deleted job was deleted again"
grep -q "not found" "$T/err" || it_fail "delete of a missing job: $(cat "$T/err")"

# Old rows: a spec stored the way older dpods stored it (only what the client set: the name), and a
# run directory outside the jobs directory, which delete --run-dir must refuse without touching.
mkdir -p "$T/outside"
touch "$T/outside/keep"
it_kill_dpod
sqlite3 "$T/state/dpod.db" "UPDATE jobs SET spec = X'0a056f6c642d61', run_dir = '$T/outside' WHERE id = $a" ||
  it_fail "cannot rewrite job $a's row"
it_start_dpod
[ "$(it_job_field "$a" '.spec.name')" = old-a ] || it_fail "the old spec was not read: $(it_job_field "$a" .spec)"
[ "$(it_job_field "$a" '.spec.train.beta')" = 5000 ] || it_fail "an old spec is not filled in when read: $(it_job_field "$a" .spec)"
[ "$(it_job_field "$a" '.spec.data.dataset')" = builtin:synthetic ] || it_fail "the old spec's data.dataset is not filled in"
"$DPOCTL_BIN" delete "$a" --run-dir >/dev/null 2>"$T/err" && it_fail "delete --run-dir removed a directory outside the jobs directory"
grep -q "not inside dpod's jobs directory" "$T/err" || it_fail "delete of an outside run dir: $(cat "$T/err")"
[ -f "$T/outside/keep" ] || it_fail "the outside directory was touched"
[ "$(it_job_state "$a")" = succeeded ] || it_fail "the refused delete changed job $a"
"$DPOCTL_BIN" health >/dev/null || it_fail "dpod stopped answering"
echo "PASS: the CLI finds, lists, cancels and deletes jobs; specs hold every default"
