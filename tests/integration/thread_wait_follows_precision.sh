#!/usr/bin/env bash
# dpo-worker picks how its OpenMP threads wait from the job (workers/dpo/thread_wait.h): a bf16 rank whose
# threads fit its node's CPUs re-executes itself with GOMP_SPINCOUNT and says so, an fp32 rank stays
# passive as the launchers start it (both with OpenBLAS's threads sleeping at once), and so does a bf16 job whose ranks would oversubscribe the node.
source "$(dirname "$0")/lib.sh"
cpus=$(nproc)
# wait_of NAME RANKS THREADS PRECISION: the "OpenMP wait ..." a standalone run logged.
wait_of() {
  it_standalone_spec "$1" --set train.steps=1 --set train.precision="$4" --set threads_per_rank="$3" --set ranks="$2"
  mkdir -p "$T/$1/tmp"
  TMPDIR="$T/$1/tmp" OMP_NUM_THREADS="$3" OMP_WAIT_POLICY=PASSIVE mpirun -np "$2" --oversubscribe --bind-to none \
    "$WORKER_BIN" --spec "$T/$1.yaml" --run-dir "$T/$1" >"$T/$1.log" 2>&1 || it_fail "$1 failed: $(tail -n 5 "$T/$1.log")"
  sed -n 's/.*, OpenMP wait \(.*\)$/\1/p' "$T/$1.log" | head -n 1
}
unset GOMP_SPINCOUNT OPENBLAS_THREAD_TIMEOUT
got=$(wait_of fp32 1 2 fp32)
[ "$got" = passive ] || it_fail "an fp32 rank with 2 threads waits '$got'"
grep -q "BLAS kernels .* (thread timeout 4), OpenMP wait" "$T/fp32.log" \
  || it_fail "an fp32 rank with 2 threads kept OpenBLAS's long thread timeout: $(grep -o 'BLAS kernels.*' "$T/fp32.log")"
got=$(wait_of bf16_full 2 "$cpus" bf16)
[ "$got" = passive ] || it_fail "2 bf16 ranks of $cpus threads on $cpus CPUs wait '$got'"
if [ "$cpus" -ge 2 ]; then
  got=$(wait_of bf16 1 2 bf16)
  [ "$got" = "spin 20000" ] || it_fail "a bf16 rank with 2 threads on $cpus CPUs waits '$got'"
fi
echo "PASS: fp32 passive, bf16 spinning where its threads fit ($cpus CPUs), passive where they do not"
