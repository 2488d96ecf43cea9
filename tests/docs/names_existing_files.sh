#!/bin/sh
# Every source path a document names (in backticks, with a folder and an extension) exists in the tree.
#   names_existing_files.sh SOURCE_DIR DOC...
set -u
root=$1
shift
status=0
for doc in "$@"; do
  n=0
  for path in $(grep -o '`[a-z][a-z0-9_./-]*/[a-z0-9_.-]*\.[a-z]*`' "$root/$doc" | tr -d '`' | sort -u); do
    n=$((n + 1))
    [ -e "$root/$path" ] || { echo "FAIL: $doc names $path, which does not exist"; status=1; }
  done
  [ "$n" -gt 0 ] || { echo "FAIL: $doc names no file at all (is the pattern still right?)"; status=1; }
  echo "$doc: $n paths checked"
done
exit $status
