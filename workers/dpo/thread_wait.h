/* How a rank's idle threads wait, chosen per job. Two pools share a rank's cores: libgomp's (ATen and
 * oneDNN: convolutions, bf16 matmuls, elementwise ops) and OpenBLAS's own pthreads (fp32 matmuls).
 *
 * libgomp's idle threads spin GOMP_SPINCOUNT times, then sleep on a futex that the next parallel region
 * must wake. dpod's launchers start ranks with OMP_WAIT_POLICY=PASSIVE (no spinning), which fp32 needs:
 * OpenMP threads still spinning between oneDNN's convolutions take the cores from OpenBLAS's threads
 * (the bigger fp32 step 1.2-1.6x slower). A bf16 step runs nearly everything in oneDNN's OpenMP regions,
 * thousands of short ones a step, and waking sleeping threads for each costs it a third of its time:
 * with a short spin (THREAD_WAIT_SPINCOUNT, some tens of microseconds) the bigger bf16 step is
 * 1.4-1.7x faster.
 *
 * OpenBLAS's idle threads poll, yielding, for 2^OPENBLAS_THREAD_TIMEOUT cycles (2^28 by default, about
 * a tenth of a second) before they sleep: after every fp32 matmul they keep taking turns on the cores
 * that oneDNN's next convolution wants. With the shortest timeout (THREAD_WAIT_BLAS_TIMEOUT) the bigger
 * fp32 step is about 1.15x faster, and bf16 is no slower.
 *
 * Both libraries read their environment once, when they are loaded, so changing it means re-executing
 * the program (blas_select_kernels() does, once for all of it), before MPI_Init or any thread. */
#ifndef DPOD_THREAD_WAIT_H
#define DPOD_THREAD_WAIT_H

#define THREAD_WAIT_SPINCOUNT "20000"
#define THREAD_WAIT_BLAS_TIMEOUT "4"

/* The GOMP_SPINCOUNT a rank should run with, or NULL to leave the environment alone. Pure, for tests:
 * `low_precision` is 1 for bf16 (and fp16) compute; `policy` and `spincount` are OMP_WAIT_POLICY and
 * GOMP_SPINCOUNT as found (NULL if unset): a GOMP_SPINCOUNT already set, or OMP_WAIT_POLICY=ACTIVE, is
 * the user's choice and wins. Only a multi-threaded rank spins, and only when its node is not
 * oversubscribed: `threads` per rank times `local_ranks` on the node at most `cpus`, the CPUs this
 * process may run on (0: unknown, no spinning). */
const char *thread_wait_spincount(int low_precision, const char *policy, const char *spincount, unsigned threads,
                                  unsigned local_ranks, unsigned cpus);

/* The OPENBLAS_THREAD_TIMEOUT a rank should run with, or NULL: THREAD_WAIT_BLAS_TIMEOUT for a rank of
 * two or more threads (any precision), unless `timeout`, the variable as found, is set. Pure. */
const char *thread_wait_blas_timeout(const char *timeout, unsigned threads);

/* Reads the rank's surroundings (OMP_WAIT_POLICY, GOMP_SPINCOUNT, OPENBLAS_THREAD_TIMEOUT, the ranks on
 * this node from OMPI_COMM_WORLD_LOCAL_SIZE or SLURM_STEP_TASKS_PER_NODE, the CPUs in its affinity mask)
 * and sets what the two functions above ask for. Returns 1 when it changed the environment (the caller
 * then re-executes: blas_select_kernels(argv, 1)), else 0. */
int thread_wait_prepare(int low_precision, unsigned threads);

/* How this process's OpenMP threads wait, for log lines: "spin 20000" or "passive". */
const char *thread_wait_describe(void);

#endif
