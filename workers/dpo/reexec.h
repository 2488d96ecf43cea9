/* Re-executing the running program, for settings a library reads only when it is loaded (OpenBLAS's
 * kernels, libgomp's wait policy). */
#ifndef DPOD_REEXEC_H
#define DPOD_REEXEC_H

/* execv()s this program by its real path (not /proc/self/exe, so that it keeps its name for ps, pgrep
 * and pkill) with argv and the current environment: same pid, same arguments. Returns only on
 * failure. Call it before any thread or MPI_Init. */
void dpod_reexec_self(char **argv);

#endif
