#!/usr/bin/env bash
# Access control, with the real dpod, dpoctl and ranks: under umask 000 the socket, its directory, the
# state directory and the database are owner-only, and a second local user (made here, removed at the
# end) can neither connect nor read the state; a foreign-writable socket directory is refused; TCP needs
# TLS and the token (UNAUTHENTICATED without it), plain TCP is refused unless --insecure on loopback,
# and a job reports back over TLS; paths reach dpod absolute, are checked at submission, and a spec
# pointing at /etc/shadow fails without quoting a byte of it; dpod checks threads against the host.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || it_fail "this test makes a second user and needs root (CI runs as root)"
EX="$DPOD_SOURCE_DIR/deploy/examples/tiny-dpo.yaml"

# Only dpod's own modes may keep the other user out, not the test's private temporary directory.
chmod 755 "$T"
umask 000

# A socket directory someone else could write is refused; dpod makes its own 0700 otherwise.
mkdir -p "$T/run" && chmod 777 "$T/run"
if "$DPOD_BIN" --listen "$DPOD_ADDR" --state-dir "$T/state" >"$T/refused.log" 2>&1; then
  it_fail "dpod accepted a socket directory writable by others"
fi
grep -q "writable by others" "$T/refused.log" || it_fail "the refusal does not say why: $(cat "$T/refused.log")"
rmdir "$T/run"
rm -rf "$T/state"
it_launch_dpod
good=$(it_submit "$EX" --set train.steps=2 --name good)
"$DPOCTL_BIN" watch "$good" >/dev/null 2>&1 || it_fail "a plain job failed"

mode() { stat -c %a "$1"; }
[ "$(mode "$T/run")" = 700 ] || it_fail "socket directory mode $(mode "$T/run")"
[ "$(mode "$T/run/dpod.sock")" = 600 ] || it_fail "socket mode $(mode "$T/run/dpod.sock")"
[ "$(mode "$T/state")" = 700 ] || it_fail "state directory mode $(mode "$T/state")"
for f in "$T/state/dpod.db" "$T/state/dpod.db-wal" "$T/state/jobs/$good/spec.pb"; do
  [ ! -e "$f" ] || [ "$(mode "$f")" = 600 ] || it_fail "$f has mode $(mode "$f")"
done
# The finished job's secret is not kept.
secret=$(sqlite3 "$T/state/dpod.db" "SELECT secret FROM jobs WHERE id = $good") || it_fail "cannot read the job's row"
[ -z "$secret" ] || it_fail "a finished job's secret is still stored"

# A second local user gets nowhere.
other="dpodit$$"
useradd --no-create-home --shell /usr/sbin/nologin "$other" || it_fail "cannot make a user"
IT_CLEANUP+=('userdel "$other" 2>/dev/null')
as_other() { setpriv --reuid="$other" --regid="$other" --clear-groups "$@"; }
out=$(as_other "$DPOCTL_BIN" --addr "$DPOD_ADDR" list 2>&1) && it_fail "the other user listed the jobs: $out"
as_other cat "$T/state/dpod.db" >/dev/null 2>&1 && it_fail "the other user read the database"
as_other ls "$T/state" >/dev/null 2>&1 && it_fail "the other user listed the state directory"
as_other ls "$T/run" >/dev/null 2>&1 && it_fail "the other user listed the socket directory"
# ... and cannot plant a socket for root's dpod to take over.
mkdir "$T/theirs" && chown "$other" "$T/theirs" && chmod 700 "$T/theirs"
if "$DPOD_BIN" --listen "unix:$T/theirs/dpod.sock" --state-dir "$T/state2" >"$T/refused.log" 2>&1; then
  it_fail "dpod used a socket directory another user owns"
fi
grep -q "owned by uid" "$T/refused.log" || it_fail "the refusal does not say why: $(cat "$T/refused.log")"

# Paths: relative ones are made absolute by dpoctl, checked by dpod at submission.
cp "$DPOD_FIXTURES/tiny-sd/config.json" "$T/config.json"
spec=$(cd "$T" && "$DPOCTL_BIN" submit "$EX" --set model.config=./config.json --dry-run)
echo "$spec" | grep -q "config: \"$T/config.json\"" || it_fail "the relative path was not made absolute: $spec"
out=$("$DPOCTL_BIN" submit "$EX" --set data.dataset="$T/no-such-dataset" 2>&1) && it_fail "a missing dataset was accepted"
echo "$out" | grep -q "data.dataset: $T/no-such-dataset: No such file" || it_fail "the refusal does not name it: $out"
# A directory is taken as a model folder; one that holds no weights (only a config.json here) is refused.
out=$("$DPOCTL_BIN" submit "$EX" --set model.weights="$T" 2>&1) && it_fail "a directory without weights was accepted"
echo "$out" | grep -q "model.weights: $T holds neither diffusion_pytorch_model.safetensors" ||
  it_fail "the refusal does not name it: $out"
out=$("$DPOCTL_BIN" submit "$EX" --set threads_per_rank=1000 2>&1) && it_fail "1000 threads per rank were accepted"
echo "$out" | grep -q "threads_per_rank: .* at most $(nproc) CPU" || it_fail "the refusal does not say why: $out"
out=$("$DPOCTL_BIN" submit "$EX" --name "$(printf 'bad\xffname')" 2>&1) && it_fail "a name that is not UTF-8 was accepted"
echo "$out" | grep -q "name.*not valid UTF-8" || it_fail "the refusal does not say why: $out"

# A spec pointing at /etc/shadow: the job fails naming the file, and nothing of it shows anywhere.
for key in model.config model.weights; do
  id=$(it_submit "$EX" --set "$key=/etc/shadow" --set train.steps=2)
  "$DPOCTL_BIN" watch "$id" >/dev/null 2>&1 && it_fail "a job with $key=/etc/shadow succeeded"
  reason=$(it_job_field "$id" .reason)
  echo "$reason" | grep -q "/etc/shadow" || it_fail "the reason does not name the file: $reason"
  while IFS= read -r line; do
    user=${line%%:*}
    rest=${line#*:}
    [ ${#rest} -ge 4 ] || continue
    for where in "$reason" "$(cat "$T/state/jobs/$id/"*.log)" "$(cat "$T/dpod.log")"; do
      case "$where" in *"$user:"* | *"${rest:0:12}"*) it_fail "a line of /etc/shadow shows: $where" ;; esac
    done
  done </etc/shadow
done

# TCP: plain is refused, and so is --insecure on a non-loopback address.
port=$((20000 + RANDOM % 20000))
"$DPOD_BIN" --listen "127.0.0.1:$port" --state-dir "$T/tcp" >"$T/refused.log" 2>&1 &&
  it_fail "dpod served plain TCP without --insecure"
grep -q "without TLS" "$T/refused.log" || it_fail "the refusal does not say why: $(cat "$T/refused.log")"
"$DPOD_BIN" --listen "0.0.0.0:$port" --insecure --state-dir "$T/tcp" >"$T/refused.log" 2>&1 &&
  it_fail "dpod served 0.0.0.0 with --insecure"
grep -q "loopback" "$T/refused.log" || it_fail "the refusal does not say why: $(cat "$T/refused.log")"

# TLS and the token: a certificate for localhost, made here.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout "$T/key.pem" -out "$T/cert.pem" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1 || it_fail "openssl could not make a certificate"
chmod 600 "$T/key.pem"
it_kill_dpod
export DPOD_ADDR="localhost:$port"
"$DPOD_BIN" --listen "0.0.0.0:$port" --state-dir "$T/state" --worker "$WORKER_BIN" --tls-cert "$T/cert.pem" \
  --tls-key "$T/key.pem" >"$T/dpod.log" 2>&1 &
DPOD_PID=$!
for _ in $(seq 1 200); do
  "$DPOCTL_BIN" --tls-ca "$T/cert.pem" health >/dev/null 2>&1 && break # health needs no token
  kill -0 "$DPOD_PID" 2>/dev/null || it_fail "dpod exited during start-up"
  sleep 0.05
done
[ "$(mode "$T/state/token")" = 600 ] || it_fail "token file mode $(mode "$T/state/token")"
out=$(XDG_STATE_HOME="$T/nothing" "$DPOCTL_BIN" --tls-ca "$T/cert.pem" list 2>&1) && it_fail "listed without the token"
echo "$out" | grep -q "UNAUTHENTICATED" || it_fail "no token: not UNAUTHENTICATED: $out"
out=$(DPOD_TOKEN=not-the-token-at-all "$DPOCTL_BIN" --tls-ca "$T/cert.pem" cancel "$good" 2>&1) &&
  it_fail "cancelled with a wrong token"
echo "$out" | grep -q "UNAUTHENTICATED" || it_fail "wrong token: not UNAUTHENTICATED: $out"
out=$("$DPOCTL_BIN" --token-file "$T/state/token" health 2>&1) && it_fail "a plain client talked to the TLS listener"
auth=(--tls-ca "$T/cert.pem" --token-file "$T/state/token")
"$DPOCTL_BIN" "${auth[@]}" list --json | jq -e "map(select(.id | tonumber == $good)) | length == 1" >/dev/null ||
  it_fail "the token did not let dpoctl in"
# Over TCP, dpoctl leaves paths alone and dpod refuses a relative one.
out=$(cd "$T" && "$DPOCTL_BIN" "${auth[@]}" submit "$EX" --set model.config=config.json 2>&1) &&
  it_fail "a relative path was accepted over TCP"
echo "$out" | grep -q "model.config: must be an absolute path" || it_fail "the refusal does not say why: $out"
# A job's ranks report back over TLS (they trust the certificate through DPOD_TLS_CA).
id=$("$DPOCTL_BIN" "${auth[@]}" submit "$EX" --set train.steps=3 --name over-tls | grep -oE '[0-9]+' | head -n 1)
"$DPOCTL_BIN" "${auth[@]}" watch "$id" >/dev/null 2>&1 || it_fail "the job over TLS did not succeed"
[ "$("$DPOCTL_BIN" "${auth[@]}" get "$id" --json | jq -r .last_metrics.step)" = 3 ] || it_fail "its steps were not reported"
echo "PASS: owner-only socket, state and database under umask 000; another user kept out; TLS and token on TCP; paths checked; nothing of /etc/shadow quoted"
