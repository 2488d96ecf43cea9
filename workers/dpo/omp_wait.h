/* How libgomp's idle threads wait, chosen per job. Between two OpenMP parallel regions libgomp's
 * threads spin GOMP_SPINCOUNT times, then sleep on a futex that the next region must wake. dpod's
 * launchers start ranks with OMP_WAIT_POLICY=PASSIVE (no spinning), which fp32 needs: its matmuls run
 * on OpenBLAS's own threads between oneDNN's OpenMP convolutions, and OpenMP threads spinning there
 * take the cores from them (the bigger fp32 step 1.2-1.6x slower). A bf16 step runs nearly everything
 * in oneDNN's OpenMP regions, thousands of short ones a step, and waking sleeping threads for each
 * costs it a third of its time: with a short spin (OMP_WAIT_SPINCOUNT, some tens of microseconds)
 * the bigger bf16 step is 1.4-1.7x faster.
 *
 * libgomp reads its environment once, when it is loaded, so changing it means re-executing the
 * program: omp_wait_select() does that (same pid, same arguments), before MPI_Init or any thread. */
#ifndef DPOD_OMP_WAIT_H
#define DPOD_OMP_WAIT_H

#define OMP_WAIT_SPINCOUNT "20000"

/* The GOMP_SPINCOUNT a rank should run with, or NULL to leave the environment alone. Pure, for tests:
 * `low_precision` is 1 for bf16 (and fp16) compute; `policy` and `spincount` are OMP_WAIT_POLICY and
 * GOMP_SPINCOUNT as found (NULL if unset): a GOMP_SPINCOUNT already set, or OMP_WAIT_POLICY=ACTIVE, is
 * the user's choice and wins. Only a multi-threaded rank spins, and only when its node is not
 * oversubscribed: `threads` per rank times `local_ranks` on the node at most `cpus`, the CPUs this
 * process may run on (0: unknown, no spinning). */
const char *omp_wait_spincount(int low_precision, const char *policy, const char *spincount, unsigned threads,
                               unsigned local_ranks, unsigned cpus);

/* Reads the rank's surroundings (OMP_WAIT_POLICY, GOMP_SPINCOUNT, the ranks on this node from
 * OMPI_COMM_WORLD_LOCAL_SIZE or SLURM_STEP_TASKS_PER_NODE, the CPUs in its affinity mask) and, when
 * omp_wait_spincount() asks for a spin count, re-executes the program with it set. Returns when nothing
 * needs to change, or when the re-exec failed (logged; training goes on, slower). */
void omp_wait_select(char **argv, int low_precision, unsigned threads);

/* How this process's OpenMP threads wait, for log lines: "spin 20000" or "passive". */
const char *omp_wait_describe(void);

#endif
