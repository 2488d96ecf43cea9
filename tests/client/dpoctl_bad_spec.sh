#!/bin/sh
# dpoctl refuses a bad job file before connecting: exit status 2 and a message naming the key.
# The address points nowhere, so a dpoctl that tried to connect would fail with status 3 instead.
# usage: dpoctl_bad_spec.sh DPOCTL DATA_DIR EXAMPLE_JOB
set -u
dpoctl=$1 data=$2 example=$3
addr=unix:/nonexistent/dpod-test.sock
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
failures=0

# expect STATUS FRAGMENT ARGS...: runs dpoctl, checks its exit status and that stderr holds FRAGMENT.
expect() {
  want=$1 frag=$2
  shift 2
  "$dpoctl" --addr "$addr" "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  if [ "$got" -ne "$want" ] || ! grep -qF -- "$frag" "$tmp/err"; then
    echo "FAIL: dpoctl $*: exit $got (want $want), stderr should name '$frag':"
    sed 's/^/  | /' "$tmp/err"
    failures=$((failures + 1))
  else
    echo "ok: dpoctl $* -> $got: $(head -n1 "$tmp/err")"
  fi
}

expect 2 "train.betta" submit "$data/unknown-key.yaml"
expect 2 "did you mean 'train.beta'" submit "$data/unknown-key.yaml"
expect 2 "train.beta" submit "$data/zero-beta.yaml"
expect 2 "data.pairs" submit "$data/string-for-int.yaml"
expect 2 "'train'" submit "$data/scalar-for-section.yaml"
expect 2 "train.warmup_fraction" submit "$example" --set train.warmup_fraction=1.0
expect 2 "ranks" submit "$example" --set ranks=-2
expect 2 "train.loss: unknown loss 'dpo'" submit "$example" --set train.loss=dpo
expect 2 "train.lr_scheduler" submit "$example" --set train.lr_scheduler=constant
expect 2 "train.optimizer" submit "$example" --set train.optimizer=sgd
expect 2 "train.adam_beta2" submit "$example" --set train.optimizer=adafactor --set train.adam_beta2=0.99
expect 2 "train.stepz" submit "$example" --set train.stepz=3
expect 2 "KEY=VALUE" submit "$example" --set train.steps
expect 2 "cannot open" submit "$data/no-such-file.yaml"
expect 2 "unknown option" submit "$example" --bogus
# A good file gets past validation and only then fails to connect (status 3).
expect 3 "cannot reach dpod" submit "$example"
# --dry-run prints the normalized spec and connects to nothing.
if "$dpoctl" --addr "$addr" submit "$example" --dry-run --set train.beta=2000 >"$tmp/out" 2>"$tmp/err" &&
  grep -q "beta: 2000" "$tmp/out" && grep -q "keep_last:" "$tmp/out" && grep -q "loss: \"sigmoid\"" "$tmp/out" &&
  grep -q "lr_scheduler: \"constant_with_warmup\"" "$tmp/out" && grep -q "optimizer: \"adamw\"" "$tmp/out"; then
  echo "ok: --dry-run"
else
  echo "FAIL: --dry-run"; cat "$tmp/out" "$tmp/err"; failures=$((failures + 1))
fi

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
