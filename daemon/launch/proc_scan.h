/* Processes by session, from /proc: what the mpirun backend uses to signal the processes of an attempt
 * (Open MPI gives each rank a process group of its own, but all stay in the session the attempt's
 * supervisor leads) and to find an attempt again after a dpod restart. */
#ifndef DPOD_PROC_SCAN_H
#define DPOD_PROC_SCAN_H

/* Which processes of a session to signal. The caller is never signalled. */
typedef struct {
  int sid;                /* the session */
  const char *arg;        /* only processes with this exact command-line argument; NULL: any */
  int spare;              /* a pid left alone (0: none) */
  int spare_children_of;  /* leave the children of this pid alone too (0: none) */
} proc_filter;

/* Signals every live process the filter selects. Returns how many were signalled. */
int proc_signal(const proc_filter *f, int sig);

/* Signals every live process of session `sid` except `spare` (0: none), or only those with the
 * command-line argument `arg` when it is not NULL. Returns how many were signalled. */
int proc_signal_session(int sid, const char *arg, int sig, int spare);

/* A live (not zombie) child of `ppid`, or 0 if it has none. */
int proc_first_child(int ppid);

/* The CPU time, in clock ticks, of the children `pid` has waited for (cutime + cstime): 0 until it has
 * reaped a child that did any work; -1 if `pid` is gone. */
long proc_reaped_children_ticks(int pid);

/* Whether `pid` is alive (not a zombie), leads its own session and has `arg` among its arguments. */
int proc_is_session_leader_with_arg(int pid, const char *arg);

#endif
