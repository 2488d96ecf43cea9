#!/bin/sh
# `PROGRAM --version` prints "NAME VERSION" (the project's version, the one GetStatus reports) and exits 0.
#   programs_print_their_version.sh VERSION PROGRAM...
set -u
version=$1
shift
status=0
for prog in "$@"; do
  name=$(basename "$prog")
  out=$("$prog" --version 2>&1)
  rc=$?
  if [ $rc -ne 0 ] || [ "$out" != "$name $version" ]; then
    echo "FAIL: $prog --version: exit $rc, printed '$out', want '$name $version'"
    status=1
  else
    echo "ok: $out"
  fi
done
exit $status
