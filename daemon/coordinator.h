/* coordinator: the life of every job. Queue -> attempt -> reports -> exit, then done, or another attempt.
 *
 * Everything here runs on the loop thread. Durable state lives in the job store; in memory there is only
 * what cannot be persisted: the queue (rebuilt from QUEUED jobs at start), the jobs waiting out a restart
 * backoff, and the attempts running now with their watchdog state and the timers that escalate a stop.
 * The RPC handlers (api.c) unpack requests and call the coord_* operations below; the watch streams
 * (watch.c) hear of every appended event through the event hook. Each operation returns 0 or a negative
 * dpod_status with `err` saying why in words a client can be shown.
 *
 * Attempts outlive the daemon: stopping dpod detaches from them (coord_detach), and the next dpod adopts
 * them from their launch handles (coord_recover), or, if they ended meanwhile, records them from their
 * exit records and report journals. A failed attempt is followed by another one, resumed from the newest
 * checkpoint, up to the job's max_restarts, after a backoff that doubles each time; a preempted one is
 * requeued without using one up; one that failed on bad input (worker exit status 2) is not retried. A
 * watchdog fails an attempt that does not report in within the start timeout, or shows no progress for
 * its heartbeat timeout. */
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
  const char *state_dir;         /* absolute; holds dpod.db (and jobs/<id>/ unless jobs_dir is set) */
  const char *jobs_dir;          /* absolute; where run directories go; NULL: state_dir/jobs */
  unsigned cancel_term_ms;       /* after a cancel, how long the worker may stop by itself before SIGTERM */
  unsigned cancel_kill_ms;       /* after that SIGTERM, how long before SIGKILL */
  unsigned drain_kill_ms;        /* after a drain's preemption request, how long before SIGKILL */
  unsigned start_timeout_ms;     /* from launch to rank 0's first report */
  unsigned heartbeat_floor_ms;   /* the least a job's heartbeat timeout can be */
  unsigned restart_backoff_ms;   /* before the first automatic restart; doubles with each one */
  unsigned restart_backoff_max_ms;
} coord_params;

coord_params coord_default_params(void);

/* Opens the job store (STATE_DIR/dpod.db) and creates STATE_DIR/jobs. Strings in `p` are copied; the
 * launch backend is borrowed and must outlive the coordinator. Owned by the caller: coord_free(). */
int coord_open(uv_loop_t *loop, const coord_params *p, launch_backend *backend, coord **out, char *err,
               size_t errlen);
/* Start-up recovery. Each job a previous daemon left STARTING/RUNNING is asked of the launch backend:
 * still running -> adopted (its slots reserved before anything else starts); ended -> its report
 * journal read and its end recorded from its exit record; lost -> what is left is stopped and the
 * attempt failed (and retried as the job allows). QUEUED jobs are queued again in submission order, or
 * wait out what is left of their backoff; then whatever fits is launched. */
int coord_recover(coord *co);
/* The daemon's 1 s cron: the launch backend's poll, the watchdog, a heartbeat in the debug log. */
void coord_cron(coord *co, uint64_t loops, unsigned period_ms);
/* dpod is exiting: forget every running attempt without stopping it (the next dpod adopts them) and
 * every timer. */
void coord_detach(coord *co);
/* Closes the store. Only after coord_detach(). */
void coord_free(coord *co);

/* ---- what the RPC handlers call ---- */

/* The job store, for reads (GetJob, ListJobs, WatchJob). */
job_store *coord_store(coord *co);
/* The launch backend and the loop, for the Logs streams (where each attempt's log is, how to read it). */
const launch_backend *coord_backend(const coord *co);
uv_loop_t *coord_loop(const coord *co);

/* What the coordinator holds now, for GetStatus. */
typedef struct {
  unsigned slots, slots_free;
  size_t running; /* jobs with processes */
  size_t queued;  /* waiting for slots, or for a restart's backoff to pass */
  bool draining;
  const char *launcher;
} coord_status;
void coord_get_status(const coord *co, coord_status *out);
/* False while draining: no new work is taken. */
bool coord_serving(const coord *co);
/* Tells `fn` of every event appended to a job (one hook; the watch streams'). */
void coord_set_event_hook(coord *co, void (*fn)(void *arg, uint64_t job_id), void *arg);
/* Tells `fn` whenever coord_serving() changes (one hook; the health watchers'). */
void coord_set_serving_hook(coord *co, void (*fn)(void *arg), void *arg);

/* Validates and stores a new job, queues it and launches what fits. Takes ownership of `spec` (it is
 * normalized in place and freed here). DPOD_EINVAL: the spec is refused (err names the field);
 * DPOD_EUNAVAILABLE: dpod is draining. */
int coord_submit(coord *co, Dpod__V1__JobSpec *spec, uint64_t *id_out, char *err, size_t errlen);
/* Cancels a queued (or backing-off) job at once, or asks a running one to stop. DPOD_ENOENT for an
 * unknown job, DPOD_ESTATE for one already in a terminal state. */
int coord_cancel(coord *co, uint64_t id, char *err, size_t errlen);
/* Queues a failed, cancelled or preempted job again with a fresh restart count; its worker resumes from
 * the newest checkpoint. DPOD_ESTATE for a job in any other state. */
int coord_restart(coord *co, uint64_t id, char *err, size_t errlen);
/* Forgets a job that has ended: its rows leave the store and, with remove_run_dir, its run directory
 * goes too (daemon/run_dir.h: only one inside the jobs directory). DPOD_ENOENT for an unknown job,
 * DPOD_ESTATE for one that has not ended (err names its state). */
int coord_delete(coord *co, uint64_t id, bool remove_run_dir, char *err, size_t errlen);
/* A batch of rank 0's events. DPOD_EAUTH: unknown job or wrong secret (indistinguishable on purpose);
 * DPOD_ESTATE: the job is not running or the report is from a stale attempt; DPOD_EINVAL: the batch is
 * too large or holds an impossible event (err says which). Refused batches store nothing. On success
 * *directive tells the worker what to do. */
int coord_report(coord *co, const Dpod__V1__ReportRequest *req, Dpod__V1__Directive *directive, char *err,
                 size_t errlen);
/* Drain: running jobs are preempted (they checkpoint and end PREEMPTED), queued ones wait and new ones
 * are refused, until coord_undrain(); it survives a daemon restart. *preempting (may be NULL) receives
 * how many running jobs were asked to stop. */
int coord_drain(coord *co, unsigned *preempting, char *err, size_t errlen);
int coord_undrain(coord *co, char *err, size_t errlen);

#endif
