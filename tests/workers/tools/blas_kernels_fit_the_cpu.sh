#!/bin/sh
# dpo-bench (like dpo-worker and dpo-tool) re-executes itself with OPENBLAS_CORETYPE when OpenBLAS fell
# back to pre-AVX2 kernels on a CPU it does not know. On a CPU with AVX2 and FMA the kernels in use must
# therefore never be one of those fallbacks; the process keeps its name; and a coretype the user set
# must be kept as it is.
#   blas_kernels_fit_the_cpu.sh DPO-BENCH
set -u
bench=$1
kernels() { "$bench" --shape tiny --steps 1 --warmup 0 --threads 1 | sed -n 's/.*, BLAS \(.*\)$/\1/p' | head -n 1; }

unset OPENBLAS_CORETYPE
k=$(kernels)
[ -n "$k" ] || { echo "FAIL: dpo-bench printed no BLAS line"; exit 1; }
echo "kernels chosen: $k"
case "$k" in
  "not OpenBLAS") echo "the BLAS is not OpenBLAS: nothing to choose"; exit 0 ;;
esac
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  case $(echo "$k" | tr 'A-Z' 'a-z') in
    prescott|core2|penryn|dunnington|nehalem|sandybridge|katmai|coppermine|northwood|banias|atom|barcelona|bobcat|unknown)
      echo "FAIL: this CPU has AVX2 and FMA but OpenBLAS runs $k kernels"; exit 1 ;;
  esac
fi
# A re-executed program keeps its name, or ps, pgrep and pkill (and dpod's own tests) would lose it.
"$bench" --shape tiny --steps 1000 --warmup 0 --threads 1 >/dev/null &
pid=$!
sleep 2
name=$(cat /proc/$pid/comm 2>/dev/null)
kill $pid 2>/dev/null; wait $pid 2>/dev/null
[ "$name" = "$(basename "$bench")" ] || { echo "FAIL: the running benchmark is named '$name'"; exit 1; }
k=$(OPENBLAS_CORETYPE=Prescott kernels)
[ "$k" = "Prescott" ] || { echo "FAIL: OPENBLAS_CORETYPE=Prescott was set but the kernels are '$k'"; exit 1; }
echo "ok"
