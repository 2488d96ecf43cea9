#!/usr/bin/env bash
# Installs the Debian packages dpod needs (only the missing ones, so a machine that has them needs no
# network) and builds the tree into ./build. Sourced by demo.sh and test.sh; runs on Debian 12 as root
# (or with sudo available).
set -euo pipefail

DPOD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DPOD_BUILD=${DPOD_BUILD:-$DPOD_ROOT/build}

DPOD_PACKAGES=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-pthread
  libgrpc-dev libprotobuf-c-dev protobuf-c-compiler
  libuv1-dev libsqlite3-dev
  libopenmpi-dev openmpi-bin
  libyaml-dev libcjson-dev libcmocka-dev zlib1g-dev
  procps jq
  clang libclang-rt-14-dev # the libFuzzer targets (tests/fuzz/run.sh): clang and its fuzzer/sanitizer runtimes
  systemd # systemd-analyze checks the service unit in a test
)

dpod_install_packages() {
  local missing=()
  for p in "${DPOD_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "dpod: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

dpod_build() {
  cmake -S "$DPOD_ROOT" -B "$DPOD_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$DPOD_BUILD" -j"$(nproc)"
}

dpod_setup() {
  dpod_install_packages
  dpod_build
}
