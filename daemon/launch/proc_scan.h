/* Processes by session, from /proc: what the mpirun backend uses to signal every process of a job
 * (Open MPI gives each rank a process group of its own, but all stay in the session mpirun leads) and to
 * find what a crashed dpod left running. */
#ifndef DPOD_PROC_SCAN_H
#define DPOD_PROC_SCAN_H

/* Signals every live process of session `sid` except the caller and `spare` (0: none), or only those
 * with the command-line argument `arg` when it is not NULL. Returns how many were signalled. */
int proc_signal_session(int sid, const char *arg, int sig, int spare);

#endif
