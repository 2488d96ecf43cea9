#!/bin/sh
# The man pages (deploy/man) render without a warning and describe what the programs offer: every
# command `dpoctl --help` lists, every option `dpod --help` lists, every command `dpo-tool --help` lists
# (a command or option added without its man page entry fails here).
#   man_pages_name_every_command.sh MAN_DIR DPOCTL DPOD [DPO_TOOL]
set -u
man=$1 dpoctl=$2 dpod=$3 tool=${4:-}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

for page in "$man/dpoctl.1" "$man/dpod.1" "$man/dpo-tool.1"; do
  [ -f "$page" ] || { fail "$page is missing"; continue; }
  warnings=$(groff -t -man -Tutf8 -ww -z "$page" 2>&1)
  [ -z "$warnings" ] || fail "$page: groff warns: $warnings"
  text=$(groff -t -man -Tutf8 "$page" 2>/dev/null | sed 's/.\x08//g')
  echo "$text" | grep -q "^NAME" || fail "$page renders no NAME section"
done

# A command's entry: a .TP paragraph tag that starts with it in bold (a '-' in it written as roff's \-).
has_entry() {
  set -- "$1" "$(echo "$2" | sed 's/-/\\\\-/g')"
  grep -Eq "^(\\\\fB$2\\\\fR|\\.B $2\$)" "$1"
}

cmds=$("$dpoctl" --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }')
[ -n "$cmds" ] || fail "dpoctl --help lists no commands"
for c in $cmds; do
  has_entry "$man/dpoctl.1" "$c" || fail "dpoctl.1 has no entry for '$c' (dpoctl --help lists it)"
done

opts=$("$dpod" --help | grep -oE '^  --[a-z-]+' | sed 's/^  //')
[ -n "$opts" ] || fail "dpod --help lists no options"
for o in $opts; do
  esc=$(echo "$o" | sed 's/-/\\\\-/g')
  grep -q "fB$esc\\\\fR\|^\\.B $esc\$" "$man/dpod.1" || fail "dpod.1 does not describe $o (dpod --help lists it)"
done

if [ -n "$tool" ]; then
  tcmds=$("$tool" --help | sed -n '/^commands:/,/^$/p' | awk 'NR > 1 && /^  [a-z]/ { print $1 }')
  [ -n "$tcmds" ] || fail "dpo-tool --help lists no commands"
  for c in $tcmds; do
    has_entry "$man/dpo-tool.1" "$c" || fail "dpo-tool.1 has no entry for '$c' (dpo-tool --help lists it)"
  done
fi

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "PASS: the man pages render and name every command and option"
