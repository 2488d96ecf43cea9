/* For implementers of a launch backend (internal to daemon/launch): the table of operations behind the
 * launch_* calls, and the parts of a backend and of a run that launch.c manages. */
#ifndef DPOD_LAUNCH_BACKEND_H
#define DPOD_LAUNCH_BACKEND_H

#include "launch.h"

typedef struct {
  const char *name; /* handle prefix */
  int requeues;     /* 1: its scheduler may run an attempt again by itself (launch_requeue_cb) */
  int resources;    /* 1: it takes a request's launch_resources (a batch scheduler's placement) */
  int exit0_unproven; /* 1: exit status 0 does not prove the ranks ran (srun exits 0 when it could not
                       * launch them), so success also needs the final checkpoint */
  int (*start)(launch_backend *b, const launch_request *req, launch_run **out, char *handle, char *err,
               size_t errlen);
  int (*stop)(launch_run *r, launch_stop_mode how, int *signalled);
  void (*detach)(launch_run *r);
  int (*recover)(launch_backend *b, const char *handle, const char *run_dir, launch_run **out, launch_exit *exit,
                 int *stopped, char *err, size_t errlen);
  void (*poll)(launch_backend *b);     /* may be NULL */
  unsigned (*capacity)(const launch_backend *b);
  unsigned (*max_threads)(const launch_backend *b);
  void (*log_path)(const launch_backend *b, const char *run_dir, uint32_t attempt, char *buf, size_t len);
  /* How a line of its logs says its rank and stream (launch_log_parse); NULL: every line is the launcher's. */
  void (*parse_log_line)(const char *line, size_t len, launch_log_entry *out);
  void (*free)(launch_backend *b);
} launch_backend_ops;

/* The first member of every backend. */
struct launch_backend {
  const launch_backend_ops *ops;
  uv_loop_t *loop;
  launch_status_cb status_cb;   /* may be NULL */
  launch_requeue_cb requeue_cb; /* may be NULL */
};

/* The first member of every backend's run. The backend allocates the run; launch.c fills cb, arg and
 * handle and calls launch_run_ended_() once the attempt is over. */
struct launch_run {
  launch_backend *backend;
  launch_exit_cb cb;
  void *arg;
  uint32_t attempt;
  int ended;
  char handle[LAUNCH_HANDLE_MAX];
};

/* A backend reports an attempt's end: calls the exit callback. The backend frees the run afterwards. */
void launch_run_ended_(launch_run *r, const launch_exit *exit);

/* Formats "<name>:<fields>,attempt=<n>" into handle (LAUNCH_HANDLE_MAX bytes). Returns 0 or DPOD_EINVAL
 * when it does not fit. */
int launch_handle_format_(char *handle, const char *name, uint32_t attempt, const char *fields);

/* The log formats of the backends (log_line.c): mpirun --tag-output's "[J,R]<stdout>:" and srun
 * --label's "R: ". */
void launch_log_parse_mpi_tags_(const char *line, size_t len, launch_log_entry *out);
void launch_log_parse_srun_label_(const char *line, size_t len, launch_log_entry *out);

/* The wall clock in ms since the epoch, as exit records carry it. */
int64_t launch_now_ms_(void);

/* Attempt `attempt`'s exit record into *ex; without one (whatever ran it was killed before it could
 * write it), an end by SIGKILL, now, not recorded. Returns 1 when there was a record, else 0. */
int launch_exit_or_killed_(const char *run_dir, uint32_t attempt, launch_exit *ex);

/* The daemon's environment minus the variables in `extra` ("NAME=value", borrowed), plus those: a
 * malloc'd array for uv_spawn's env, which the caller frees (not its strings). NULL: out of memory. */
char **launch_build_env_(char *const extra[], size_t n_extra);

#endif
