/* launch: how dpod starts a job's processes, stops them, learns how they ended, and finds them again
 * after a restart, whatever runs them.
 *
 * A backend (launch_backend) runs attempts (launch_run) of jobs. Today's backend is mpirun on this host
 * (mpirun.c); a Slurm backend, where each attempt is a batch job, fits the same calls:
 *
 *   start    runs one attempt of a job in its run directory and returns a durable handle, text that
 *            names what was started and carries the attempt number ("mpirun:sid=1234,attempt=2",
 *            "slurm:job=5678,attempt=1"); the coordinator stores it with the job.
 *   stop     preempt (the ranks checkpoint and exit "preempted"), terminate (SIGTERM, delivered so
 *            that the launcher ends cleanly: for mpirun, to the ranks), or kill (SIGKILL).
 *   exit     when an attempt ends, the backend calls the run's exit callback once, on the loop thread,
 *            with a launch_exit. Whatever runs the attempt (dpod itself, later a per-job supervisor or a
 *            Slurm batch script) also writes that record into the run directory as an exit record, so
 *            a dpod that was down when the attempt ended still learns how it ended.
 *   recover  after a restart: from a stored handle, what became of the attempt: it ended (its exit
 *            record says how), or it is still running and the backend supervises it again, or it is
 *            lost (what was left of it has been stopped).
 *   poll     the daemon's cron calls it every second; a backend without a child process to watch
 *            (Slurm) asks its scheduler here, asynchronously: it must never block the loop.
 *   capacity how many ranks may run at once, as the backend knows it (the queue asks, never assumes).
 *   logs     where each attempt's output goes.
 *
 * Everything runs on the loop thread. "If a function that takes a callback returns an error, the
 * callback is never called." */
#ifndef DPOD_LAUNCH_H
#define DPOD_LAUNCH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dpod_paths.h"

#define LAUNCH_HANDLE_MAX 128 /* longest handle text, NUL included */
/* A backend that hands the secret to the ranks in a file (Slurm's, so that it outlives requeues) puts it
 * here in the run directory, 0600; the coordinator removes it once the job has ended. */
#define LAUNCH_SECRET_FILE "job.secret"

typedef struct launch_backend launch_backend;
typedef struct launch_run launch_run;

/* What a job asks of a batch scheduler beyond ranks and threads (the spec's `resources`; 0 and "" mean
 * "the scheduler's default"). Only the Slurm backend takes them. */
typedef struct {
  unsigned ranks_per_node, gpus_per_rank, memory_mb, time_limit_minutes;
  const char *partition, *account, *qos, *constraint;
  const char *sbatch_options; /* space-separated, checked by job_spec_check_sbatch_options() */
} launch_resources;

/* One attempt of a job, as the coordinator asks for it. Strings and the spec are borrowed for the call. */
typedef struct {
  uint64_t job_id;
  uint32_t attempt;          /* 1 for the first launch of a job, then 2, 3, ... */
  unsigned ranks;
  unsigned threads_per_rank;
  const char *run_dir;       /* created if missing, with run_dir/tmp */
  const char *secret;        /* handed to rank 0 through the environment, never argv */
  const uint8_t *spec_pb;    /* the packed, normalized JobSpec, written to run_dir/spec.pb */
  size_t spec_len;
  launch_resources resources;
} launch_request;

/* How an attempt ended. */
typedef struct {
  uint32_t attempt;
  int term_signal;           /* the signal that ended the attempt's launcher (mpirun), 0 if it exited */
  int exit_status;           /* its exit status when term_signal is 0 (the worker's WORKER_EXIT_*) */
  int64_t finished_unix_ms;
  int recorded;              /* 1: from the attempt's exit record; 0: whatever ran the attempt vanished
                                without writing one, and how it ended is unknown */
  char scheduler_state[24];  /* a batch scheduler's final word on the attempt, which wins over the exit
                                status ("CANCELLED", "NODE_FAIL", "TIMEOUT", ...); "" if none */
} launch_exit;

/* Called once per attempt, on the loop thread, when it has ended and nothing of it is left running. The
 * run is freed after the callback returns. */
typedef void (*launch_exit_cb)(launch_run *run, const launch_exit *exit, void *arg);

typedef enum {
  LAUNCH_STOP_PREEMPT,   /* the ranks checkpoint at their next step and exit WORKER_EXIT_PREEMPTED */
  LAUNCH_STOP_TERMINATE, /* SIGTERM to the attempt, never in a way that crashes its launcher (mpirun.c) */
  LAUNCH_STOP_KILL,      /* SIGKILL to every process of the attempt */
} launch_stop_mode;

/* What launch_recover() found. */
typedef enum {
  LAUNCH_RECOVERED_ENDED,   /* the attempt ended; *exit says how (from its exit record) */
  LAUNCH_RECOVERED_RUNNING, /* still running, supervised again: the exit callback will follow */
  LAUNCH_RECOVERED_LOST,    /* neither: nothing says how it ended; what was left of it was stopped */
} launch_recovered;

/* What a scheduler says of an attempt it has not started yet (running 0, with its reason: "Resources",
 * "Priority", ...) or has started (running 1). Only backends with a queue of their own (Slurm) call it.
 * `run_arg` is the arg given to launch_start()/launch_recover(). */
typedef void (*launch_status_cb)(launch_run *run, int running, const char *reason, void *run_arg);
/* The scheduler requeued an attempt (preemption, `scontrol requeue`, the job's own requeue after a
 * checkpoint at its time limit) and runs it again by itself: `ended` says how the previous attempt
 * ended, and the run goes on as the next attempt (launch_run_attempt() and launch_run_handle() already
 * name it). The exit callback is not called for the previous attempt. */
typedef void (*launch_requeue_cb)(launch_run *run, const launch_exit *ended, void *run_arg);

/* ---- the mpirun backend (mpirun.c) ---- */

typedef struct {
  const char *mpirun;      /* "mpirun" (looked up in PATH) or a path */
  const char *supervisor;  /* dpod-supervisor (supervisor.c), which runs each attempt */
  const char *worker;      /* dpo-worker, preferably an absolute path */
  const char *report_addr; /* the daemon's address, passed as --report-addr */
  const char *tls_ca;      /* CA file the ranks trust when the report address uses TLS; NULL: plain */
  const char *hostfile;    /* an Open MPI hostfile: ranks on those hosts (started over ssh, or Open MPI's
                              plm_rsh_agent); NULL: all on this host */
  unsigned slots;          /* ranks that may run at once (on this host, or on the hostfile's hosts) */
} launch_mpirun_params;

launch_mpirun_params launch_mpirun_default_params(void);

/* ---- the Slurm backend (slurm.c) ---- */

typedef struct {
  const char *sbatch, *squeue, *scancel, *sinfo; /* the Slurm commands, looked up in PATH unless paths */
  const char *sacct;       /* asked about jobs squeue forgot without an exit record; "" or NULL: never */
  const char *worker;      /* dpo-worker, where the compute nodes see it */
  const char *report_addr; /* where the ranks report, reachable from the compute nodes */
  const char *tls_ca;      /* CA file the ranks trust when the report address uses TLS; NULL: plain */
  unsigned preempt_grace_s; /* --signal=B:USR1@N: the warning before a time limit, to checkpoint in */
  unsigned poll_ms;        /* how often one squeue asks after every job (ms) */
  unsigned capacity;       /* ranks at once if sinfo cannot say */
} launch_slurm_params;

launch_slurm_params launch_slurm_default_params(void);
int launch_slurm_create(uv_loop_t *loop, const launch_slurm_params *p, launch_backend **out, char *err,
                        size_t errlen);

/* Strings in `p` are copied. The backend is owned by the caller: launch_backend_free(), once no run is
 * left. */
int launch_mpirun_create(uv_loop_t *loop, const launch_mpirun_params *p, launch_backend **out, char *err,
                         size_t errlen);

/* ---- any backend ---- */

void launch_backend_free(launch_backend *b);
/* "mpirun": the prefix of this backend's handles. Static storage. */
const char *launch_backend_name(const launch_backend *b);
/* Whether the backend's scheduler may requeue attempts by itself (Slurm), so that a report of an attempt
 * not heard of yet may be the next one. */
int launch_backend_requeues(const launch_backend *b);
/* Whether the backend takes launch_resources (partition, GPUs, nodes...); one that does not refuses them. */
int launch_backend_takes_resources(const launch_backend *b);
/* Whether an attempt's exit status 0 alone does not show that its ranks ran to the end (srun: 0 even
 * when no task could be launched); the caller then looks for the final checkpoint as well. */
int launch_backend_exit0_unproven(const launch_backend *b);
/* Ranks that may run at once. */
unsigned launch_capacity(const launch_backend *b);
/* The most intra-op threads one rank may ask for: the CPUs a rank can have where it runs. */
unsigned launch_max_threads(const launch_backend *b);

/* Starts an attempt. On success *out stays valid until `cb` has returned, and `handle` (at least
 * LAUNCH_HANDLE_MAX bytes) holds its durable handle. On failure returns a negative status with the
 * reason in err, and `cb` is never called. */
int launch_start(launch_backend *b, const launch_request *req, launch_exit_cb cb, void *arg, launch_run **out,
                 char *handle, char *err, size_t errlen);

/* Forgets a running attempt without stopping it (dpod is about to exit): its callback is never called,
 * the run is freed, and a later launch_recover() from its handle finds it again. */
void launch_detach(launch_run *r);

/* Asks a running attempt to stop. Returns 0, or DPOD_ESTATE when it has already ended. For
 * LAUNCH_STOP_PREEMPT, *signalled (may be NULL) receives how many ranks got the request: 0 means none
 * had started, and stopping needs LAUNCH_STOP_TERMINATE. For LAUNCH_STOP_TERMINATE it receives how many
 * processes got the SIGTERM: 0 when the attempt is already ending by itself. */
int launch_stop(launch_run *r, launch_stop_mode how, int *signalled);

/* The run's handle and attempt. */
const char *launch_run_handle(const launch_run *r);
uint32_t launch_run_attempt(const launch_run *r);

/* After a daemon restart: what became of the attempt `handle` names, started in `run_dir`. With
 * LAUNCH_RECOVERED_RUNNING, *out is a run whose `cb` will follow; otherwise *out is NULL, `cb` is never
 * called, *exit is filled for LAUNCH_RECOVERED_ENDED and *stopped (may be NULL) counts the processes a
 * lost attempt left that were stopped. A negative status: the handle is not this backend's or is
 * malformed (err says why). */
int launch_recover(launch_backend *b, const char *handle, const char *run_dir, launch_exit_cb cb, void *arg,
                   launch_run **out, launch_exit *exit, int *stopped, char *err, size_t errlen);

/* Who hears what a scheduler says of attempts: not started yet, started, requeued. */
void launch_set_scheduler_cbs(launch_backend *b, launch_status_cb status, launch_requeue_cb requeue);

/* The daemon's cron, every second: backends that learn of exits by asking do it here, without blocking. */
void launch_poll(launch_backend *b);

/* Where attempt `attempt` of the job in `run_dir` writes its output (stdout and stderr of every rank),
 * one file per attempt, each line prefixed with the rank it comes from as the launcher writes it
 * (launch_log_parse() reads the prefix). */
void launch_log_path(const launch_backend *b, const char *run_dir, uint32_t attempt, char *buf, size_t len);

typedef enum {
  LAUNCH_LOG_STDOUT,
  LAUNCH_LOG_STDERR,
  LAUNCH_LOG_LAUNCHER, /* the launcher's own line (mpirun, srun, the batch script), rank -1 */
} launch_log_stream;

/* One entry of an attempt's log. */
typedef struct {
  int rank;                  /* -1: the launcher's own */
  launch_log_stream stream;
  size_t text_off, text_len; /* the text without the rank prefix, within the parsed bytes */
  size_t consumed;           /* the entry's bytes: the whole line, or up to where another rank's output
                                starts in it (a rank's last output without a newline) */
} launch_log_entry;

/* Parses one line of an attempt's log (`len` bytes, without its newline) as backend `b` writes them. */
void launch_log_parse(const launch_backend *b, const char *line, size_t len, launch_log_entry *out);
/* "stdout", "stderr" or "dpod" (the launcher's lines). Static storage. */
const char *launch_log_stream_name(launch_log_stream s);

/* ---- handles: "<backend>:<key>=<value>,...,attempt=<n>" ---- */

/* The attempt number a handle carries; 0 for "" or a handle without one. */
uint32_t launch_handle_attempt(const char *handle);
/* The value of `key` in a handle into buf. Returns 0, or DPOD_ENOENT when the key is absent. */
int launch_handle_get(const char *handle, const char *key, char *buf, size_t len);
/* Whether `handle` belongs to backend `name` (its prefix is "name:"). */
int launch_handle_is(const char *handle, const char *name);

/* ---- exit records: RUN_DIR/attempt-N.exit ---- */

/* The record's path for an attempt. */
void launch_exit_record_path(const char *run_dir, uint32_t attempt, char *buf, size_t len);
/* Writes the record atomically and durably. The format is lines of "key value" (attempt, exit_status,
 * term_signal, finished_unix_ms), so that a shell script can write one with printf. */
int launch_exit_record_write(const char *run_dir, const launch_exit *exit, char *err, size_t errlen);
/* Reads attempt `attempt`'s record. DPOD_ENOENT if there is none; DPOD_EFORMAT if it is malformed or
 * names another attempt. */
int launch_exit_record_read(const char *run_dir, uint32_t attempt, launch_exit *exit, char *err, size_t errlen);

/* ---- helpers every backend and the coordinator share ---- */

/* Fills `out` with 32 bytes from getrandom() as 64 hex digits and a NUL. Returns 0 or DPOD_EIO. */
int launch_make_secret(char out[JOB_SECRET_HEX_LEN + 1]);

/* The line of a log that says why an attempt failed, trimmed, into buf ("" if there is none): the first
 * dpo-worker error, else the last line with ERROR in it. Reads only the log's tail. */
void launch_last_error_line(const char *log_path, char *buf, size_t len);

/* The default dpo-worker and dpod-supervisor: next to this executable (found through /proc/self/exe),
 * as both the build tree (build/bin) and an installation (bin/) place them. Return `buf`. */
char *launch_default_worker(char *buf, size_t len);
char *launch_default_supervisor(char *buf, size_t len);

#endif
