/* launcher: starts one job's MPI processes and reports when they have exited.
 *
 *   mpirun -np N --oversubscribe --bind-to none [--allow-run-as-root] -x DPOD_JOB_SECRET -x TMPDIR
 *          -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS <dpo-worker> --spec RUN_DIR/spec.pb --run-dir RUN_DIR --job-id ID
 *          --report-addr ADDR
 *
 * spawned from an argv array (never through a shell) with UV_PROCESS_DETACHED, so mpirun leads a new
 * session. Open MPI gives every rank a process group of its own, but they all stay in that session:
 * launcher_kill() signals the whole session, and the session is SIGKILLed once mpirun has exited so
 * that no rank outlives its job.
 * The secret travels in the environment, never on the command line where ps would show it. */
#ifndef DPOD_LAUNCHER_H
#define DPOD_LAUNCHER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dpod_paths.h"

typedef struct launcher_proc launcher_proc;

typedef struct {
  const char *mpirun;      /* "mpirun" (looked up in PATH) or a path */
  const char *worker;      /* dpo-worker, preferably an absolute path */
  const char *report_addr; /* the daemon's address, passed as --report-addr */
} launcher_params;

typedef struct {
  uint64_t job_id;
  unsigned ranks;
  unsigned threads_per_rank;
  const char *run_dir;     /* created if missing, with run_dir/tmp */
  const char *secret;      /* exported as DPOD_JOB_SECRET */
  const uint8_t *spec_pb;  /* the packed, normalized JobSpec, written to run_dir/spec.pb */
  size_t spec_len;
} launcher_job;

/* Called once, on the loop thread, after mpirun has exited and its process group has been killed.
 * `exit_status` is mpirun's exit status, `term_signal` the signal that ended it (0 if it exited).
 * The proc is freed after the callback returns; do not use it afterwards. */
typedef void (*launcher_exit_cb)(launcher_proc *p, int64_t exit_status, int term_signal, void *arg);

/* Prepares the run directory and spawns mpirun; output goes to run_dir/job.log. On failure returns a
 * negative status with the reason in err, and `cb` is never called. On success *out stays valid until
 * `cb` returns. */
int launcher_start(uv_loop_t *loop, const launcher_params *params, const launcher_job *job,
                   launcher_exit_cb cb, void *arg, launcher_proc **out, char *err, size_t errlen);

/* mpirun's pid, which is also its process group id. */
int launcher_pid(const launcher_proc *p);

/* Sends `sig` to every process of the job's session (mpirun and its ranks). Returns 0 or DPOD_ESTATE
 * when mpirun has already exited. */
int launcher_kill(launcher_proc *p, int sig);

/* SIGTERM to the job's ranks but not to mpirun, as Slurm signals tasks on preemption: each rank
 * checkpoints at its next step boundary and exits with WORKER_EXIT_PREEMPTED, and so does mpirun.
 * Returns how many processes were signalled (0 before mpirun has started any, or after it exited). */
int launcher_preempt(launcher_proc *p);

/* Signals every process of session `sid` except the caller; returns how many were signalled. */
int launcher_signal_session_(int sid, int sig);

/* After a daemon crash: SIGKILLs what is left of a job that an earlier dpod launched as session `sid`
 * in `run_dir`, i.e. the processes of that session that have `run_dir` among their arguments (mpirun
 * and every rank do, as --run-dir), so that a session id since reused by something else is left alone.
 * Returns how many processes were signalled. */
int launcher_stop_orphans(int sid, const char *run_dir);

/* Fills `out` with 32 bytes from getrandom() as 64 hex digits and a NUL. Returns 0 or DPOD_EIO. */
int launcher_make_secret(char out[JOB_SECRET_HEX_LEN + 1]);

/* The last line of RUN_DIR/job.log that contains "ERROR", trimmed, into buf ("" if there is none). */
void launcher_last_error_line(const char *run_dir, char *buf, size_t len);

/* The default dpo-worker: next to this executable (found through /proc/self/exe), as both the build tree
 * (build/bin) and an installation (bin/) place them. Returns `buf`. */
char *launcher_default_worker(char *buf, size_t len);

#endif
