/* coordinator: the life of every job. Queue -> launch -> reports -> exit, with cancellation, restarts,
 * recovery after a daemon restart and the stop at shutdown.
 *
 * Everything here runs on the loop thread. Durable state lives in the job store; in memory there is only
 * what cannot be persisted: the queue (rebuilt from QUEUED jobs at start) and the attempts running now,
 * with the timers that escalate their stop. The RPC handlers (api.c) unpack requests and call the
 * coord_* operations below; the watch streams (watch.c) hear of every appended event through the
 * event hook. Each operation returns 0 or a negative dpod_status with `err` saying why in words a client
 * can be shown. */
#ifndef DPOD_COORDINATOR_H
#define DPOD_COORDINATOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dpod.pb-c.h"
#include "job_store.h"
#include "launch.h"

typedef struct coord coord;

typedef struct {
  const char *state_dir;     /* absolute; holds dpod.db and jobs/<id>/ */
  unsigned cancel_term_ms;   /* after a cancel, how long the worker may stop by itself before SIGTERM */
  unsigned cancel_kill_ms;   /* after that SIGTERM, how long before SIGKILL */
  unsigned shutdown_kill_ms; /* at daemon shutdown, from the preemption request to SIGKILL */
} coord_params;

coord_params coord_default_params(void);

/* Opens the job store (STATE_DIR/dpod.db) and creates STATE_DIR/jobs. Strings in `p` are copied; the
 * launch backend is borrowed and must outlive the coordinator. Owned by the caller: coord_free(). */
int coord_open(uv_loop_t *loop, const coord_params *p, launch_backend *backend, coord **out, char *err,
               size_t errlen);
/* Start-up recovery: each job a previous daemon left STARTING/RUNNING is recovered through the launch
 * backend (ended: recorded from its exit record; lost: what is left is stopped and the job FAILED),
 * QUEUED jobs are queued again in submission order, and whatever fits is launched. */
int coord_recover(coord *co);
/* Slower periodic chores; `loops` counts cron runs, for run_with_period-style pacing. */
void coord_cron(coord *co, uint64_t loops, unsigned period_ms);
/* Stops launching and preempts every running attempt (the ranks checkpoint and exit "preempted"),
 * SIGKILLs what is left after shutdown_kill_ms, and records the jobs PREEMPTED (stopped at a checkpoint)
 * or FAILED "dpod shut down" as they end. `done` runs on the loop thread once no attempt is left (possibly
 * before this returns). */
void coord_shutdown(coord *co, void (*done)(void *arg), void *arg);
/* Closes the store. Only after coord_shutdown()'s `done`. */
void coord_free(coord *co);

/* ---- what the RPC handlers call ---- */

/* The job store, for reads (GetJob, ListJobs, WatchJob). */
job_store *coord_store(coord *co);
/* False while shutting down: no new work is taken. */
bool coord_serving(const coord *co);
/* Tells `fn` of every event appended to a job (one hook; the watch streams'). */
void coord_set_event_hook(coord *co, void (*fn)(void *arg, uint64_t job_id), void *arg);

/* Validates and stores a new job, queues it and launches what fits. Takes ownership of `spec` (it is
 * normalized in place and freed here). DPOD_EINVAL: the spec is refused (err names the field);
 * DPOD_ESTATE: dpod is shutting down. */
int coord_submit(coord *co, Dpod__V1__JobSpec *spec, uint64_t *id_out, char *err, size_t errlen);
/* Cancels a queued job at once, or asks a running one to stop. DPOD_ENOENT for an unknown job,
 * DPOD_ESTATE for one already in a terminal state. */
int coord_cancel(coord *co, uint64_t id, char *err, size_t errlen);
/* Queues a failed, cancelled or preempted job again; its worker resumes from the newest checkpoint.
 * DPOD_ESTATE for a job in any other state or while shutting down. */
int coord_restart(coord *co, uint64_t id, char *err, size_t errlen);
/* A batch of rank 0's events. DPOD_EAUTH: unknown job or wrong secret (indistinguishable on purpose);
 * DPOD_ESTATE: the job is not STARTING or RUNNING. On success *directive tells the worker what to do. */
int coord_report(coord *co, const Dpod__V1__ReportRequest *req, Dpod__V1__Directive *directive, char *err,
                 size_t errlen);

#endif
