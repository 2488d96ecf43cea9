/* coordinator: the dpod.v1 services (Coordinator, WorkerReport) and grpc.health.v1.Health/Check, and
 * the life of every job: queue -> launch -> reports -> exit, with cancellation and the watchers that
 * stream a job's events.
 *
 * Everything here runs on the loop thread. Durable state lives in the job store; in memory there is
 * only what cannot be persisted: the scheduler's queue (rebuilt from QUEUED jobs at start), the
 * launched processes and their kill timers, and the open WatchJob streams. */
#ifndef DPOD_COORDINATOR_H
#define DPOD_COORDINATOR_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rpc_server.h"

typedef struct coord coord;

typedef struct {
  const char *state_dir;     /* absolute; holds dpod.db and jobs/<id>/ */
  const char *report_addr;   /* what launched workers dial back (--report-addr) */
  unsigned slots;            /* worker slots (MPI ranks that may run at once) */
  const char *worker;        /* dpo-worker path */
  const char *mpirun;        /* mpirun path or name */
  unsigned cancel_term_ms;   /* after a cancel, how long the worker may stop by itself before SIGTERM */
  unsigned cancel_kill_ms;   /* after that SIGTERM, how long before SIGKILL */
  unsigned shutdown_kill_ms; /* at daemon shutdown, from SIGTERM to SIGKILL */
} coord_params;

coord_params coord_default_params(void);

/* Opens the job store (STATE_DIR/dpod.db) and creates STATE_DIR/jobs. Strings in `p` are copied.
 * Owned by the caller: coord_free(). */
int coord_open(uv_loop_t *loop, const coord_params *p, coord **out, char *err, size_t errlen);
/* Registers every method on `srv` (before rpc_server_start). */
int coord_register(coord *co, rpc_server *srv);
/* Start-up recovery: jobs a previous daemon left STARTING/RUNNING become FAILED, QUEUED jobs are queued
 * again in submission order, and whatever fits is launched. */
int coord_recover(coord *co);
/* Slower periodic chores; `loops` counts cron runs, for run_with_period-style pacing. */
void coord_cron(coord *co, uint64_t loops, unsigned period_ms);
/* Stops launching, SIGTERMs every running job's ranks (which checkpoint and exit "preempted"), SIGKILLs
 * what is left after shutdown_kill_ms, and marks the jobs PREEMPTED (stopped at a checkpoint) or FAILED
 * "dpod shut down" as they exit. `done` runs on the loop thread once no job process is left (possibly
 * before this returns). */
void coord_shutdown(coord *co, void (*done)(void *arg), void *arg);
/* Closes the store. Only after coord_shutdown()'s `done` (no process or watcher left). */
void coord_free(coord *co);

#endif
