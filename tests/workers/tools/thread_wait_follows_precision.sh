#!/bin/sh
# dpo-bench (like dpo-worker) runs bf16 with OpenMP threads that spin before sleeping and fp32 with
# threads that sleep at once (and OpenBLAS's threads sleep at once for both), re-executing itself to change libgomp's environment; with a list of
# precisions each runs in a process of its own that waits as its worker would. A GOMP_SPINCOUNT the
# user set is kept, and a single thread never spins.
#   thread_wait_follows_precision.sh DPO-BENCH
set -u
bench=$1
export OMP_WAIT_POLICY=PASSIVE # as the launchers start ranks
unset GOMP_SPINCOUNT OPENBLAS_THREAD_TIMEOUT
cpus=$(nproc)
# waits PRECISION [ARGS...]: "precision wait" per block, in order.
waits() {
  p=$1; shift
  "$bench" --shape tiny --steps 1 --warmup 0 --precision "$p" "$@" |
    awk '$1 == "tiny" { p = $2 } $1 == "OpenMP" && $2 == "idle" { print p, $4 ($5 ? " " $5 : "") }' | tr '\n' ';'
}
got=$(waits fp32 --threads 2)
[ "$got" = "fp32 passive;" ] || { echo "FAIL: fp32 with 2 threads waits '$got'"; exit 1; }
got=$(waits bf16 --threads 1)
[ "$got" = "bf16 passive;" ] || { echo "FAIL: bf16 with 1 thread waits '$got'"; exit 1; }
got=$(waits bf16 --threads $((cpus + 1)))
[ "$got" = "bf16 passive;" ] || { echo "FAIL: bf16 with more threads than CPUs waits '$got'"; exit 1; }
[ "$cpus" -ge 2 ] || { echo "ok (one CPU: nothing may spin, the rest not checked)"; exit 0; }
got=$(waits bf16 --threads 2)
[ "$got" = "bf16 spin 20000;" ] || { echo "FAIL: bf16 with 2 threads waits '$got'"; exit 1; }
got=$(waits fp32,bf16 --threads 2)
[ "$got" = "fp32 passive;bf16 spin 20000;" ] || { echo "FAIL: fp32,bf16 with 2 threads wait '$got'"; exit 1; }
got=$(GOMP_SPINCOUNT=7 waits bf16 --threads 2)
[ "$got" = "bf16 spin 7;" ] || { echo "FAIL: bf16 with GOMP_SPINCOUNT=7 set waits '$got'"; exit 1; }
# OpenBLAS's threads sleep at once with two threads, at either precision, unless the user says otherwise.
blas() { "$bench" --shape tiny --steps 1 --warmup 0 "$@" | sed -n 's/^  OpenBLAS idle threads poll 2^\([0-9]*\).*/\1/p' | tr '\n' ';'; }
got=$(blas --precision fp32,bf16 --threads 2)
[ "$got" = "4;4;" ] || { echo "FAIL: OpenBLAS's thread timeout with 2 threads is '$got'"; exit 1; }
got=$(blas --precision fp32 --threads 1)
[ "$got" = "28;" ] || { echo "FAIL: OpenBLAS's thread timeout with 1 thread is '$got'"; exit 1; }
got=$(OPENBLAS_THREAD_TIMEOUT=12 blas --precision fp32 --threads 2)
[ "$got" = "12;" ] || { echo "FAIL: OPENBLAS_THREAD_TIMEOUT=12 was set but the timeout is '$got'"; exit 1; }
# The re-executed benchmark keeps its name and the list's exit status.
"$bench" --shape tiny --steps 1 --warmup 0 --precision fp32,bf16 --threads 2 >/dev/null ||
  { echo "FAIL: dpo-bench --precision fp32,bf16 exited $?"; exit 1; }
echo "ok"
