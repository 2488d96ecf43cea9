# Sourced by the dpoctl scripts: starts the scripted fake dpod ($fake) on a socket in a fresh $tmp, sets
# $addr for dpoctl's --addr, and stops it and removes $tmp when the script exits.
tmp=$(mktemp -d) || exit 1
addr=unix:$tmp/fake.sock
"$fake" "$addr" &
fake_pid=$!
trap 'kill "$fake_pid" 2>/dev/null; wait "$fake_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
i=0
while [ ! -S "$tmp/fake.sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
