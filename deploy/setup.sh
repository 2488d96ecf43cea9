#!/usr/bin/env bash
# Installs the Debian packages dpod needs (only the missing ones, so a machine that has them needs no
# network) and builds the tree into ./build. Sourced by demo.sh and test.sh; runs on Debian 12 as root
# (or with sudo available).
#
# It prints one line per phase (checking packages, installing N packages, building with a percentage
# taken from the build's own progress lines); everything apt and the build print goes to one log file,
# named on the first line, whose last lines are printed when a phase fails. On a terminal the building
# line is redrawn in place; elsewhere (CI) it is printed once, with the result appended.
set -euo pipefail

DPOD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DPOD_BUILD=${DPOD_BUILD:-$DPOD_ROOT/build}
DPOD_SETUP_LOG=${DPOD_SETUP_LOG:-$DPOD_BUILD/setup.log}
DPOD_PHASE_LOG=$DPOD_SETUP_LOG # where phases write; the demo points it at its own log after the set-up

DPOD_PACKAGES=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-pthread
  libgrpc-dev libprotobuf-c-dev protobuf-c-compiler
  libuv1-dev libsqlite3-dev
  libopenmpi-dev openmpi-bin
  libyaml-dev libcjson-dev libcmocka-dev zlib1g-dev
  procps jq
  libssl-dev # libcrypto: the SHA-256 of a dataset's manifest that every checkpoint records
  clang libclang-rt-14-dev # the libFuzzer targets (tests/fuzz/run.sh): clang and its fuzzer/sanitizer runtimes
  systemd # systemd-analyze checks the service unit in a test
  openssl sqlite3 # the access-control test makes certificates and reads the database
  python3-protobuf python3-grpcio # the JSON mapping's oracle (grpcio, MessageToJson); the TensorBoard files' own reader
  groff-base man-db # the man pages are rendered (groff) and found by man after cmake --install
  slurmctld slurmd slurm-client munge libpmix-dev # the Slurm launcher's tests run a private cluster
)

# dpod_phase_begin TEXT: starts a phase's line ("dpod: TEXT ..."), left open for its result.
dpod_phase_begin() {
  DPOD_PHASE="dpod: $1"
  printf '%s ...' "$DPOD_PHASE"
}

# dpod_phase_end RESULT: ends the phase's line with RESULT ("done", "ok: 3 missing").
dpod_phase_end() {
  if [ -t 1 ]; then printf '\r\033[K%s ... %s\n' "$DPOD_PHASE" "$1"; else printf ' %s\n' "$1"; fi
}

# dpod_phase_failed LOG: ends the phase's line as failed and shows the end of LOG.
dpod_phase_failed() {
  dpod_phase_end "FAILED"
  echo "---- the last 40 lines of $1:"
  tail -n 40 "$1"
  echo "---- the whole output is in $1"
}

# dpod_progress_filter: reads a command's output on stdin, appends it to $DPOD_PHASE_LOG, and on a
# terminal redraws the phase's line with the percentage the output's own progress lines give: cmake's
# Makefile "[ 45%]", Ninja's "[12/345]", or dpoctl's "step 3/20".
dpod_progress_filter() {
  local line pct last="" tty=0
  [ -t 1 ] && tty=1
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line" >>"$DPOD_PHASE_LOG"
    [ $tty -eq 1 ] || continue
    pct=$(dpod_progress_percent "$line")
    if [ -n "$pct" ] && [ "$pct" != "$last" ]; then
      last=$pct
      printf '\r\033[K%s ... %s%%' "$DPOD_PHASE" "$pct"
    fi
  done
}

# dpod_progress_percent LINE: the percentage LINE reports, or nothing.
dpod_progress_percent() {
  if [[ $1 =~ ^\[\ *([0-9]+)%\] ]]; then
    echo "${BASH_REMATCH[1]}"
  elif [[ $1 =~ ^\[([0-9]+)/([0-9]+)\] ]] || [[ $1 =~ ^step\ ([0-9]+)/([0-9]+) ]]; then
    [ "${BASH_REMATCH[2]}" -gt 0 ] && echo $((BASH_REMATCH[1] * 100 / BASH_REMATCH[2]))
  fi
  return 0
}

# dpod_run_phase TEXT COMMAND...: one phase: its line, COMMAND's output into $DPOD_PHASE_LOG (with the
# percentage on a terminal), "done" or the log's tail. Returns COMMAND's status.
dpod_run_phase() {
  local text=$1 rc=0
  shift
  dpod_phase_begin "$text"
  printf '==== %s: %s\n' "$text" "$*" >>"$DPOD_PHASE_LOG"
  "$@" 2>&1 </dev/null | dpod_progress_filter || rc=$?
  if [ $rc -ne 0 ]; then
    dpod_phase_failed "$DPOD_PHASE_LOG"
    return $rc
  fi
  dpod_phase_end done
}

dpod_apt_install_() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  # Chained with &&: run as a phase, this function is not under set -e.
  $sudo apt-get update -q &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

dpod_install_packages() {
  local missing=()
  dpod_phase_begin "checking ${#DPOD_PACKAGES[@]} packages"
  for p in "${DPOD_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    dpod_phase_end "all installed"
    return 0
  fi
  dpod_phase_end "${#missing[@]} missing"
  dpod_run_phase "installing ${#missing[@]} packages (${missing[*]})" dpod_apt_install_ "${missing[@]}"
}

# dpod_cmake_build DIR [CMAKE_ARGS...]: configures the tree into DIR and builds it (DPOD_JOBS at a
# time, default every core). Chained with &&: run as a phase, it is not under set -e.
dpod_cmake_build() {
  local dir=$1
  shift
  cmake -S "$DPOD_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" &&
    cmake --build "$dir" -j"${DPOD_JOBS:-$(nproc)}"
}

dpod_build() {
  dpod_run_phase "building in $DPOD_BUILD" dpod_cmake_build "$DPOD_BUILD"
}

dpod_setup() {
  mkdir -p "$(dirname "$DPOD_SETUP_LOG")"
  : >"$DPOD_SETUP_LOG"
  DPOD_PHASE_LOG=$DPOD_SETUP_LOG
  echo "dpod: the set-up's output goes to $DPOD_SETUP_LOG"
  dpod_install_packages
  dpod_build
}
