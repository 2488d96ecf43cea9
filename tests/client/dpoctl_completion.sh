#!/bin/bash
# deploy/completion/dpoctl.bash, sourced into bash and called as bash calls it (COMP_WORDS, COMP_CWORD),
# against the scripted fake dpod for job ids and names; and every command `dpoctl --help` lists is one
# it completes.
# usage: dpoctl_completion.sh DPOCTL FAKE_DPOD COMPLETION_SCRIPT
set -u
dpoctl=$1 fake=$2 script=$3
. "$(dirname "$0")/start_fake_dpod.sh"
failures=0
# shellcheck source=/dev/null
. "$script"

# expect "WORDS..." WANT...: completing the last word of the line gives exactly WANT (sorted).
expect() {
  local line=$1
  shift
  read -r -a COMP_WORDS <<<"$line"
  [ "${line: -1}" = " " ] && COMP_WORDS+=("")
  COMP_WORDS[0]=$dpoctl
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  _dpoctl
  local got want
  got=$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ')
  want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
  if [ "$got" = "$want" ]; then
    echo "ok: '$line'"
  else
    echo "FAIL: '$line' completes to '$got', not '$want'"
    failures=$((failures + 1))
  fi
}

expect "dpoctl ch" checkpoints
expect "dpoctl de" delete
expect "dpoctl --addr $addr li" list
expect "dpoctl list --st" --state
expect "dpoctl list --state ru" running
expect "dpoctl list -o " table json yaml
expect "dpoctl get --o" --output
expect "dpoctl cancel --w" --wait
expect "dpoctl delete --r" --run-dir
expect "dpoctl metrics 1 --format " csv jsonl
expect "dpoctl --" --addr --token-file --tls-ca --help --version
# Job ids and names come from the daemon the line names; "fake", which two jobs have, is no name to offer.
expect "dpoctl --addr $addr get " 7 5 3 solo-7
expect "dpoctl --addr $addr watch so" solo-7
expect "dpoctl --addr $addr cancel 5" 5
expect "dpoctl --addr unix:$tmp/nothing-here.sock get "

# Every command of `dpoctl --help` completes (a command added without completion fails here).
for c in $("$dpoctl" --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }'); do
  case " $_dpoctl_commands " in
    *" $c "*) ;;
    *) echo "FAIL: dpoctl --help lists '$c', which the completion does not know"; failures=$((failures + 1)) ;;
  esac
done

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "PASS: bash completion"
