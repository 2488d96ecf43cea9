#include "coordinator.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_log.h"
#include "job_chain.h"
#include "job_queue.h"
#include "job_spec.h"
#include "model_source.h"
#include "report_journal.h"
#include "run_dir.h"

#define COORD_REPORT_MAX_EVENTS 1024  /* a report holds at most this many (the reporter sends 256) */
#define COORD_DRAINING_KEY "draining"

/* A job with an attempt running: its run, its slots, its watchdog state and the timer that escalates a
 * stop. */
typedef struct coord_job {
  coord *co;
  uint64_t id;
  unsigned ranks;
  uint32_t attempt;
  uint32_t total_steps;
  double heartbeat_timeout_s;  /* the spec's; 0: derived */
  char *run_dir;
  launch_run *run;
  uv_timer_t *timer;           /* separate allocation: it is freed in its close callback, after the job */
  bool cancel_requested;
  bool reported;               /* rank 0 has reported in */
  bool pending;                /* the backend's scheduler has not started it yet (no start timeout) */
  bool holds_slots;
  int stop_stage;              /* 0: none, 1: SIGTERM (or preemption) sent, 2: SIGKILL sent */
  uint64_t launched_ms, progress_ms;  /* loop time (uv_now) */
  uint32_t last_step;
  double slowest_step_s;
  char fail_reason[256];       /* set when dpod itself ended the attempt (the watchdog) */
  struct coord_job *prev, *next;
} coord_job;

/* A job waiting out its restart backoff, outside the queue. */
typedef struct coord_held {
  coord *co;
  uint64_t id;
  unsigned ranks;
  uv_timer_t *timer;
  struct coord_held *prev, *next;
} coord_held;

/* A queued job waiting for other jobs to succeed (JobSpec.after, job:ID weights), outside the queue. */
typedef struct coord_wait {
  uint64_t id;
  unsigned ranks;
  size_t n_deps;
  uint64_t deps[JOB_SPEC_AFTER_MAX + 2];
  char why[128];               /* the reason last recorded ("waiting for job 3") */
  struct coord_wait *next;
} coord_wait;

struct coord {
  uv_loop_t *loop;
  job_store *store;
  job_queue queue;
  launch_backend *backend;
  char *jobs_dir;
  coord_params p;
  coord_job *jobs;
  size_t n_jobs;
  coord_held *held;
  coord_wait *waiting;
  bool waits_dirty;            /* a job ended: the waiting ones may go on */
  void (*event_hook)(void *arg, uint64_t job_id);
  void *event_hook_arg;
  void (*serving_hook)(void *arg);
  void *serving_hook_arg;
  bool draining;
};

static int64_t coord_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

coord_params coord_default_params(void) {
  coord_params p;
  memset(&p, 0, sizeof p);
  p.cancel_term_ms = 2000;
  p.cancel_kill_ms = 5000;
  p.drain_kill_ms = 30000;            /* time for every rank to reach a step boundary and checkpoint */
  p.start_timeout_ms = 600000;        /* loading a large model from a slow file system */
  p.heartbeat_floor_ms = 300000;
  p.restart_backoff_ms = 10000;
  p.restart_backoff_max_ms = 600000;
  return p;
}

job_store *coord_store(coord *co) { return co->store; }
const launch_backend *coord_backend(const coord *co) { return co->backend; }
uv_loop_t *coord_loop(const coord *co) { return co->loop; }
bool coord_serving(const coord *co) { return !co->draining; }

void coord_get_status(const coord *co, coord_status *out) {
  size_t held = 0;
  for (const coord_held *h = co->held; h; h = h->next) held++;
  for (const coord_wait *w = co->waiting; w; w = w->next) held++;
  *out = (coord_status){.slots = co->queue.slots,
                        .slots_free = co->queue.free_slots,
                        .running = co->n_jobs,
                        .queued = co->queue.queued + held,
                        .draining = co->draining,
                        .launcher = launch_backend_name(co->backend)};
}

void coord_set_event_hook(coord *co, void (*fn)(void *arg, uint64_t job_id), void *arg) {
  co->event_hook = fn;
  co->event_hook_arg = arg;
}

void coord_set_serving_hook(coord *co, void (*fn)(void *arg), void *arg) {
  co->serving_hook = fn;
  co->serving_hook_arg = arg;
}

static void coord_notify(coord *co, uint64_t id) {
  if (co->event_hook) co->event_hook(co->event_hook_arg, id);
}

static int coord_store_errf(coord *co, char *err, size_t errlen) {
  return dpod_errf(err, errlen, DPOD_EDB, "job store: %s", job_store_last_error(co->store));
}

static void coord_timer_closed(uv_handle_t *h) { free(h); }

/* ---------------------------------------------------------------------------------------------------
 * Recording. */

static int coord_append_state(coord *co, uint64_t id, Dpod__V1__JobState state, const char *reason, int exit_code) {
  int status = job_store_append_state(co->store, id, state, reason, exit_code, coord_now_ms(), NULL);
  if (status != 0)
    log_error("job %" PRIu64 ": recording state %s failed: %s", id, job_state_name(state),
              job_store_last_error(co->store));
  else if (reason && *reason)
    log_info("job %" PRIu64 ": %s: %s", id, job_state_name(state), reason);
  else
    log_info("job %" PRIu64 ": %s", id, job_state_name(state));
  /* A terminal job has no attempt left to report (its journal was read before this): its secret is
   * no use to anyone any more, so it is not kept. `dpoctl restart` makes a new one. */
  if (status == 0 && job_state_is_terminal(state) && job_store_set_secret(co->store, id, "") != 0)
    log_warn("job %" PRIu64 ": clearing its secret failed: %s", id, job_store_last_error(co->store));
  if (job_state_is_terminal(state)) co->waits_dirty = true; /* jobs waiting for it may go on */
  coord_notify(co, id);
  return status;
}

/* An attempt started (ended NULL) or ended. */
static void coord_append_attempt(coord *co, uint64_t id, uint32_t attempt, const launch_exit *ended, int exit_code,
                                 const char *reason, bool will_retry) {
  Dpod__V1__AttemptInfo a = DPOD__V1__ATTEMPT_INFO__INIT;
  a.has_attempt = 1;
  a.attempt = attempt;
  if (ended) {
    a.has_ended_unix_ms = a.has_exit_code = a.has_will_retry = 1;
    a.ended_unix_ms = ended->finished_unix_ms ? ended->finished_unix_ms : coord_now_ms();
    a.exit_code = exit_code;
    a.reason = (char *)reason;
    a.will_retry = will_retry;
  } else {
    a.has_started_unix_ms = 1;
    a.started_unix_ms = coord_now_ms();
  }
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_ATTEMPT;
  ev.attempt = &a;
  if (job_store_append(co->store, id, &ev, coord_now_ms(), NULL) != 0)
    log_error("job %" PRIu64 ": recording attempt %" PRIu32 " failed: %s", id, attempt, job_store_last_error(co->store));
  coord_notify(co, id);
}

/* ---------------------------------------------------------------------------------------------------
 * Rank 0's events, from a report or a report journal: checked, then stored as job events. */

/* Whether `path` names something under `dir` (lexically: a removed checkpoint no longer exists). */
static bool coord_path_under(const char *path, const char *dir) {
  size_t n = strlen(dir);
  return path && strncmp(path, dir, n) == 0 && path[n] == '/' && !strstr(path, "/../") && !strstr(path, "/./");
}

/* Checks one event and points `ev` at it. Returns 0, or DPOD_EINVAL with err naming the problem. */
static int coord_convert_event(const Dpod__V1__WorkerEvent *we, const char *run_dir, uint32_t total_steps,
                               Dpod__V1__JobEvent *ev, char *err, size_t errlen) {
  Dpod__V1__JobEvent e = DPOD__V1__JOB_EVENT__INIT;
  *ev = e;
  switch (we->event_case) {
    case DPOD__V1__WORKER_EVENT__EVENT_METRICS:
      if (!we->metrics->has_step || we->metrics->step == 0 || we->metrics->step > total_steps)
        return dpod_errf(err, errlen, DPOD_EINVAL, "metrics of step %" PRIu32 " in a job of %" PRIu32 " steps",
                         we->metrics->step, total_steps);
      ev->event_case = DPOD__V1__JOB_EVENT__EVENT_METRICS;
      ev->metrics = we->metrics;
      return 0;
    case DPOD__V1__WORKER_EVENT__EVENT_EVAL:
      if (we->eval->step > total_steps)
        return dpod_errf(err, errlen, DPOD_EINVAL, "an evaluation at step %" PRIu32 " in a job of %" PRIu32 " steps",
                         we->eval->step, total_steps);
      ev->event_case = DPOD__V1__JOB_EVENT__EVENT_EVAL;
      ev->eval = we->eval;
      return 0;
    case DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT:
      if (we->checkpoint->step == 0 || we->checkpoint->step > total_steps)
        return dpod_errf(err, errlen, DPOD_EINVAL, "a checkpoint at step %" PRIu32 " in a job of %" PRIu32 " steps",
                         we->checkpoint->step, total_steps);
      /* A checkpoint that has since been pruned (a report replayed from the journal) is checked by name only. */
      if (!coord_path_under(we->checkpoint->path, run_dir) ||
          (dpod_path_inside(we->checkpoint->path, run_dir) != 1 && access(we->checkpoint->path, F_OK) == 0))
        return dpod_errf(err, errlen, DPOD_EINVAL, "checkpoint %" PRIu32 ": not a directory in the job's run directory",
                         we->checkpoint->step);
      ev->event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
      ev->checkpoint = we->checkpoint;
      return 0;
    case DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT_REMOVED:
      if (!coord_path_under(we->checkpoint_removed->path, run_dir))
        return dpod_errf(err, errlen, DPOD_EINVAL, "a removed checkpoint outside the job's run directory");
      ev->event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT_REMOVED;
      ev->checkpoint_removed = we->checkpoint_removed;
      return 0;
    case DPOD__V1__WORKER_EVENT__EVENT_HEARTBEAT:
      if (we->heartbeat->step > total_steps)
        return dpod_errf(err, errlen, DPOD_EINVAL, "a heartbeat at step %" PRIu32 " in a job of %" PRIu32 " steps",
                         we->heartbeat->step, total_steps);
      return 0; /* progress, not an event */
    default:
      return 0; /* WorkerStarted is logged by the caller; a kind from a newer worker is skipped */
  }
}

/* Progress the watchdog counts: anything but the first WorkerStarted. */
static void coord_note_progress(coord_job *j, const Dpod__V1__WorkerEvent *we) {
  j->progress_ms = uv_now(j->co->loop);
  if (we->event_case == DPOD__V1__WORKER_EVENT__EVENT_METRICS) {
    if (we->metrics->step > j->last_step) j->last_step = we->metrics->step;
    if (we->metrics->has_step_seconds && we->metrics->step_seconds > j->slowest_step_s &&
        isfinite(we->metrics->step_seconds))
      j->slowest_step_s = we->metrics->step_seconds;
  }
}

/* Stores the events of an ended attempt's report journal (what rank 0 could not deliver), skipping any
 * that are impossible; the store drops what it already has. The journal is removed once stored. */
static void coord_ingest_journal(coord *co, uint64_t id, const char *run_dir, uint32_t attempt, uint32_t total_steps) {
  char path[PATH_MAX], err[512];
  report_journal_path(run_dir, attempt, path, sizeof path);
  if (access(path, F_OK) != 0) return;
  uint8_t **data = NULL;
  size_t *lens = NULL, n = 0, skipped = 0, stored = 0;
  uint64_t next;
  if (report_journal_read(path, 0, SIZE_MAX, &data, &lens, &n, &next, err, sizeof err) != 0) {
    log_warn("job %" PRIu64 ": %s", id, err);
    return;
  }
  Dpod__V1__WorkerEvent **we = calloc(n ? n : 1, sizeof *we);
  Dpod__V1__JobEvent *evs = calloc(n ? n : 1, sizeof *evs);
  Dpod__V1__JobEvent **ptrs = calloc(n ? n : 1, sizeof *ptrs);
  size_t m = 0;
  int status = we && evs && ptrs ? 0 : DPOD_ENOMEM;
  for (size_t i = 0; status == 0 && i < n; i++) {
    if (!(we[i] = dpod__v1__worker_event__unpack(NULL, lens[i], data[i])) ||
        coord_convert_event(we[i], run_dir, total_steps, &evs[m], err, sizeof err) != 0) {
      skipped++;
      continue;
    }
    if (evs[m].event_case != DPOD__V1__JOB_EVENT__EVENT__NOT_SET) ptrs[m] = &evs[m], m++;
  }
  if (status == 0) status = job_store_append_batch(co->store, id, ptrs, m, coord_now_ms(), &stored);
  if (status == 0) {
    log_info("job %" PRIu64 ": read %zu undelivered reports of attempt %" PRIu32 " from its journal (%zu new%s)", id, n,
             attempt, stored, skipped ? ", some impossible ones skipped" : "");
    unlink(path);
    coord_notify(co, id);
  } else {
    log_error("job %" PRIu64 ": storing its report journal failed: %s", id, job_store_last_error(co->store));
  }
  for (size_t i = 0; we && i < n; i++)
    if (we[i]) dpod__v1__worker_event__free_unpacked(we[i], NULL);
  free(we);
  free(evs);
  free(ptrs);
  report_journal_free_records(data, lens, n);
}

/* ---------------------------------------------------------------------------------------------------
 * Jobs: launch, stop, exit, restart. */

static coord_job *coord_find_job(coord *co, uint64_t id) {
  for (coord_job *j = co->jobs; j; j = j->next)
    if (j->id == id) return j;
  return NULL;
}

static coord_held *coord_find_held(coord *co, uint64_t id) {
  for (coord_held *h = co->held; h; h = h->next)
    if (h->id == id) return h;
  return NULL;
}

static void coord_schedule(coord *co);
static void coord_on_exit(launch_run *run, const launch_exit *ex, void *arg);

/* A coord_job for an attempt that runs (launched now, or adopted). Its spec gives the watchdog's limits. */
static coord_job *coord_job_new(coord *co, const Dpod__V1__Job *job, uint32_t attempt) {
  coord_job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  if (!(j->timer = malloc(sizeof *j->timer)) || !(j->run_dir = strdup(job->run_dir)) ||
      uv_timer_init(co->loop, j->timer) != 0) {
    free(j->timer);
    free(j->run_dir);
    free(j);
    return NULL;
  }
  j->timer->data = j;
  j->co = co;
  j->id = job->id;
  j->ranks = job->spec->ranks;
  j->attempt = attempt;
  j->total_steps = job->spec->train->steps;
  j->heartbeat_timeout_s = job->spec->train->heartbeat_timeout;
  j->launched_ms = j->progress_ms = uv_now(co->loop);
  return j;
}

static void coord_job_link(coord *co, coord_job *j) {
  j->next = co->jobs;
  if (co->jobs) co->jobs->prev = j;
  co->jobs = j;
  co->n_jobs++;
}

/* Unlinks and frees a job (its run is gone or forgotten). */
static void coord_job_free(coord_job *j) {
  coord *co = j->co;
  if (j->prev) j->prev->next = j->next;
  else co->jobs = j->next;
  if (j->next) j->next->prev = j->prev;
  co->n_jobs--;
  if (j->holds_slots) job_queue_release(&co->queue, j->ranks);
  uv_close((uv_handle_t *)j->timer, coord_timer_closed);
  free(j->run_dir);
  free(j);
}

/* Escalates a stop: SIGTERM after the grace period, SIGKILL after the next one. */
static void coord_stop_timer(uv_timer_t *t) {
  coord_job *j = t->data;
  if (j->stop_stage == 0) {
    int n = 0;
    launch_stop(j->run, LAUNCH_STOP_TERMINATE, &n);
    if (n > 0)
      log_info("job %" PRIu64 ": still running; SIGTERM to %d processes of %s", j->id, n, launch_run_handle(j->run));
    else
      log_info("job %" PRIu64 ": %s is ending by itself; SIGKILL if it has not in %u ms", j->id,
               launch_run_handle(j->run), j->co->p.cancel_kill_ms);
    j->stop_stage = 1;
    uv_timer_start(t, coord_stop_timer, j->co->p.cancel_kill_ms, 0);
  } else if (j->stop_stage == 1) {
    log_warn("job %" PRIu64 ": ignored SIGTERM; SIGKILL to %s", j->id, launch_run_handle(j->run));
    launch_stop(j->run, LAUNCH_STOP_KILL, NULL);
    j->stop_stage = 2;
  }
}

/* dpod ends the attempt itself (the watchdog): it fails with `reason`, and is retried as allowed. */
static void coord_fail_attempt(coord_job *j, const char *reason) {
  if (j->fail_reason[0] || j->stop_stage >= 2) return;
  snprintf(j->fail_reason, sizeof j->fail_reason, "%s", reason);
  log_warn("job %" PRIu64 ": %s; killing attempt %" PRIu32, j->id, reason, j->attempt);
  launch_stop(j->run, LAUNCH_STOP_KILL, NULL);
  j->stop_stage = 2;
}

/* Why an attempt failed, in words, from how it ended. */
static void coord_failure_reason(coord *co, const char *run_dir, const launch_exit *ex, char *reason, size_t len) {
  if (!ex->recorded) {
    snprintf(reason, len, "the attempt's supervisor died without recording how it ended");
  } else if (ex->term_signal) {
    snprintf(reason, len, "killed by signal %d", ex->term_signal);
  } else {
    char log_path[PATH_MAX], line[300];
    launch_log_path(co->backend, run_dir, ex->attempt, log_path, sizeof log_path);
    launch_last_error_line(log_path, line, sizeof line);
    snprintf(reason, len, "dpo-worker exited with status %d%s%s", ex->exit_status, line[0] ? ": " : "", line);
  }
}

/* Whether the job's last step has a complete checkpoint: what every successful worker writes last. */
static bool coord_has_final_checkpoint(const Dpod__V1__Job *job) {
  char path[PATH_MAX];
  int n = snprintf(path, sizeof path, "%s/checkpoints/step-%06u/COMPLETE", job->run_dir, job->spec->train->steps);
  return n > 0 && (size_t)n < sizeof path && access(path, F_OK) == 0;
}

/* Holds a job out of the queue until `delay_ms` from now (its restart backoff). */
static void coord_hold(coord *co, uint64_t id, unsigned ranks, uint64_t delay_ms);

/* An attempt is over: read what it could not report, then record it and decide what follows: the job's
 * end, or another attempt (now, or after a backoff). `j` may be NULL for an attempt found ended at
 * start-up. */
static void coord_attempt_ended(coord *co, const Dpod__V1__Job *job, coord_job *j, const launch_exit *ex) {
  uint64_t id = job->id;
  uint32_t attempt = ex->attempt;
  coord_ingest_journal(co, id, job->run_dir, attempt, job->spec->train->steps);
  job_info info;
  bool have_info = job_store_get_info(co->store, id, &info) == 0;
  bool cancel = (j && j->cancel_requested) || (have_info && info.cancel_requested);
  int code = !ex->recorded ? -1 : ex->term_signal ? 128 + ex->term_signal : ex->exit_status;
  uint32_t restarts = have_info ? info.restarts : 0;
  char reason[600], attempt_reason[400];
  Dpod__V1__JobState state;
  bool retry = false, requeue_now = false;
  uint64_t backoff_ms = 0;

  const char *sched = ex->scheduler_state;
  bool preempted_exit = ex->recorded && !ex->term_signal && ex->exit_status == WORKER_EXIT_PREEMPTED;
  if (cancel) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED;
    snprintf(attempt_reason, sizeof attempt_reason, "cancelled by user");
  } else if (strcmp(sched, "CANCELLED") == 0) {
    /* Cancelled outside dpod (scancel): the scheduler's word wins over the ranks' "preempted". */
    state = DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED;
    snprintf(attempt_reason, sizeof attempt_reason, "cancelled in the scheduler");
  } else if (*sched && !preempted_exit) {
    /* NODE_FAIL, OUT_OF_MEMORY, TIMEOUT without a checkpoint, ...: the attempt failed, and may be
     * restarted like any other failure. */
    state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    snprintf(attempt_reason, sizeof attempt_reason, "the scheduler ended it: %s", sched);
  } else if (j && j->fail_reason[0]) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    snprintf(attempt_reason, sizeof attempt_reason, "%s", j->fail_reason);
  } else if (ex->recorded && !ex->term_signal && ex->exit_status == WORKER_EXIT_OK &&
             launch_backend_exit0_unproven(co->backend) && !coord_has_final_checkpoint(job)) {
    /* srun says 0 although no rank ran: a failed attempt, restarted like any other. */
    state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    snprintf(attempt_reason, sizeof attempt_reason,
             "exit status 0 but no final checkpoint (step %u): the ranks did not run to the end; see attempt-%u.log",
             job->spec->train->steps, attempt);
  } else if (ex->recorded && !ex->term_signal && ex->exit_status == WORKER_EXIT_OK) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
    snprintf(attempt_reason, sizeof attempt_reason, "succeeded");
  } else if (ex->recorded && !ex->term_signal && ex->exit_status == WORKER_EXIT_PREEMPTED) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED;
    snprintf(attempt_reason, sizeof attempt_reason, "preempted after a checkpoint (exit status %d)", ex->exit_status);
    requeue_now = !co->draining; /* preemption is not the job's fault: no restart used */
  } else {
    state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    coord_failure_reason(co, job->run_dir, ex, attempt_reason, sizeof attempt_reason);
  }
  bool bad_input = ex->recorded && !ex->term_signal && ex->exit_status == WORKER_EXIT_BAD_INPUT;
  if (state == DPOD__V1__JOB_STATE__JOB_STATE_FAILED && !bad_input && restarts < job->spec->max_restarts) {
    retry = true;
    restarts++;
    backoff_ms = co->p.restart_backoff_ms;
    for (uint32_t k = 1; k < restarts && backoff_ms < co->p.restart_backoff_max_ms; k++) backoff_ms *= 2;
    if (backoff_ms > co->p.restart_backoff_max_ms) backoff_ms = co->p.restart_backoff_max_ms;
  }
  coord_append_attempt(co, id, attempt, ex, code, attempt_reason, retry || requeue_now);

  unsigned ranks = job->spec->ranks;
  if (j) coord_job_free(j); /* gives the slots back */
  if (retry) {
    job_store_set_restarts(co->store, id, restarts);
    job_store_set_not_before(co->store, id, coord_now_ms() + (int64_t)backoff_ms);
    snprintf(reason, sizeof reason, "attempt %" PRIu32 " failed (%s); restart %" PRIu32 " of %" PRIu32 " in %.0f s",
             attempt, attempt_reason, restarts, job->spec->max_restarts, (double)backoff_ms / 1000.0);
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, reason, 0);
    coord_hold(co, id, ranks, backoff_ms);
  } else if (requeue_now) {
    snprintf(reason, sizeof reason, "attempt %" PRIu32 " was preempted at a checkpoint; requeued", attempt);
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, reason, 0);
    if (job_queue_enqueue(&co->queue, id, ranks) != 0)
      coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "cannot queue the job again", -1);
  } else {
    if (state == DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED) reason[0] = '\0';
    else if (state == DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED) snprintf(reason, sizeof reason, "%s", attempt_reason);
    else if (state == DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED)
      snprintf(reason, sizeof reason, "dpod is draining; the job stopped at a checkpoint");
    else if (bad_input) snprintf(reason, sizeof reason, "%s (bad input: not retried)", attempt_reason);
    else if (job->spec->max_restarts > 0)
      snprintf(reason, sizeof reason, "%s (attempt %" PRIu32 "; all %" PRIu32 " restarts used)", attempt_reason,
               attempt, job->spec->max_restarts);
    else snprintf(reason, sizeof reason, "%s", attempt_reason);
    coord_append_state(co, id, state, reason, code);
    /* A launcher that hands the secret over in a file (Slurm's) leaves it in the run directory: the job
     * is over and its journal read, so nothing needs it any more. */
    char secret_file[PATH_MAX];
    snprintf(secret_file, sizeof secret_file, "%s/" LAUNCH_SECRET_FILE, job->run_dir);
    if (unlink(secret_file) != 0 && errno != ENOENT) log_warn("job %" PRIu64 ": %s: %s", id, secret_file, strerror(errno));
  }
}

static void coord_on_exit(launch_run *run, const launch_exit *ex, void *arg) {
  (void)run;
  coord_job *j = arg;
  coord *co = j->co;
  Dpod__V1__Job *job = NULL;
  if (job_store_get(co->store, j->id, &job) != 0) {
    log_error("job %" PRIu64 ": attempt %" PRIu32 " ended but the job cannot be read: %s", j->id, ex->attempt,
              job_store_last_error(co->store));
    coord_job_free(j);
    coord_schedule(co);
    return;
  }
  coord_attempt_ended(co, job, j, ex);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  coord_schedule(co);
}

/* Launches a job the queue has given slots to. On failure the job ends FAILED and the slots are returned
 * (the caller's loop then considers the next job). */
static void coord_launch(coord *co, uint64_t id, unsigned ranks) {
  Dpod__V1__Job *job = NULL;
  coord_job *j = NULL;
  uint8_t *spec_pb = NULL;
  char err[512] = "", handle[LAUNCH_HANDLE_MAX];
  char secret[JOB_SECRET_HEX_LEN + 1];
  job_info info;

  if (job_store_get(co->store, id, &job) != 0 || job_store_get_info(co->store, id, &info) != 0) {
    snprintf(err, sizeof err, "cannot read the job: %s", job_store_last_error(co->store));
    goto fail;
  }
  uint32_t attempt = launch_handle_attempt(info.launch_handle) + 1;
  /* job:ID weights become the path of that checkpoint, stored in the spec: later attempts, and
   * `dpoctl get`, see what was used. */
  char chain_note[1200];
  if (job_chain_resolve(co->store, job->spec, chain_note, sizeof chain_note, err, sizeof err) != 0) goto fail;
  if (chain_note[0]) {
    log_info("job %" PRIu64 ": %s", id, chain_note);
    if (job_store_set_spec(co->store, id, job->spec) != 0) {
      snprintf(err, sizeof err, "cannot store the resolved spec: %s", job_store_last_error(co->store));
      goto fail;
    }
  }
  /* The secret stays the same across attempts: a journal or a late report of the previous one still
   * authenticates (the attempt number tells them apart). */
  if (info.secret[0]) {
    snprintf(secret, sizeof secret, "%s", info.secret);
  } else if (launch_make_secret(secret) != 0 || job_store_set_secret(co->store, id, secret) != 0) {
    snprintf(err, sizeof err, "cannot make the job's secret");
    goto fail;
  }
  size_t spec_len = protobuf_c_message_get_packed_size(&job->spec->base);
  if (!(spec_pb = malloc(spec_len ? spec_len : 1)) || !(j = coord_job_new(co, job, attempt))) {
    snprintf(err, sizeof err, "out of memory");
    goto fail;
  }
  protobuf_c_message_pack(&job->spec->base, spec_pb);
  j->holds_slots = true;
  launch_request lr = {
      .job_id = id,
      .attempt = attempt,
      .ranks = ranks,
      .threads_per_rank = job->spec->threads_per_rank,
      .run_dir = job->run_dir,
      .secret = secret,
      .spec_pb = spec_pb,
      .spec_len = spec_len,
  };
  const Dpod__V1__ResourceSpec *res = job->spec->resources;
  if (res)
    lr.resources = (launch_resources){.ranks_per_node = res->ranks_per_node,
                                      .gpus_per_rank = res->gpus_per_rank,
                                      .memory_mb = res->memory_mb,
                                      .time_limit_minutes = res->time_limit_minutes,
                                      .partition = res->partition,
                                      .account = res->account,
                                      .qos = res->qos,
                                      .constraint = res->constraint,
                                      .sbatch_options = res->sbatch_options};
  if (launch_start(co->backend, &lr, coord_on_exit, j, &j->run, handle, err, sizeof err) != 0) goto fail;
  /* Should this daemon die, the next one finds the attempt by this. */
  if (job_store_set_launch_handle(co->store, id, handle) != 0)
    log_warn("job %" PRIu64 ": cannot store its launch handle: %s", id, job_store_last_error(co->store));
  coord_job_link(co, j);
  /* Appended before any Report can be handled: those run on this thread, after we return. */
  coord_append_attempt(co, id, attempt, NULL, 0, NULL, false);
  coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, chain_note[0] ? chain_note : NULL, 0);
  goto done;

fail:
  log_error("job %" PRIu64 ": launch failed: %s", id, err);
  if (j) {
    j->holds_slots = false;
    coord_job_link(co, j);
    coord_job_free(j);
  }
  job_queue_release(&co->queue, ranks);
  {
    char reason[600];
    snprintf(reason, sizeof reason, "launch failed: %s", err);
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, reason, -1);
  }
done:
  free(spec_pb);
  if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
}

/* The waiting jobs whose jobs all succeeded join the queue; those one of whose jobs failed, was
 * cancelled or is gone fail, naming it (which may let others go on: the caller loops while dirty). */
static void coord_check_waiting(coord *co) {
  co->waits_dirty = false;
  for (coord_wait **link = &co->waiting, *w; (w = *link) != NULL;) {
    char why[600];
    job_chain_state cs = job_chain_status(co->store, w->deps, w->n_deps, why, sizeof why);
    if (cs == JOB_CHAIN_WAIT) {
      if (strncmp(why, w->why, sizeof w->why - 1) != 0) {
        snprintf(w->why, sizeof w->why, "%.*s", (int)sizeof w->why - 1, why);
        coord_append_state(co, w->id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, why, 0);
      }
      link = &w->next;
      continue;
    }
    *link = w->next;
    uint64_t id = w->id;
    unsigned ranks = w->ranks;
    free(w);
    if (cs == JOB_CHAIN_BROKEN) {
      coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, why, -1);
    } else {
      coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, "the jobs it waited for succeeded", 0);
      if (job_queue_enqueue(&co->queue, id, ranks) != 0)
        coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "cannot queue the job", -1);
    }
  }
}

/* Launches queued jobs for as long as the head of the queue fits (not while draining), after letting
 * in the waiting jobs that may go. */
static void coord_schedule(coord *co) {
  do {
    if (co->waits_dirty) coord_check_waiting(co);
    if (co->draining) return;
    uint64_t id;
    unsigned ranks;
    while ((id = job_queue_next(&co->queue, &ranks)) != 0) coord_launch(co, id, ranks);
  } while (co->waits_dirty);
}

/* A QUEUED job joins the queue, or, if it names jobs it waits for, the waiting list (checked at the next
 * coord_schedule). `why` is the reason it has recorded already (NULL: none). DPOD_EINVAL when it needs
 * more slots than dpod has; DPOD_ENOMEM. */
static int coord_queue_job(coord *co, uint64_t id, const Dpod__V1__JobSpec *spec, const char *why) {
  if (spec->ranks == 0 || spec->ranks > co->queue.slots) return DPOD_EINVAL;
  uint64_t deps[JOB_SPEC_AFTER_MAX + 2];
  size_t n = job_spec_deps(spec, deps, JOB_SPEC_AFTER_MAX + 2);
  if (n == 0) return job_queue_enqueue(&co->queue, id, spec->ranks);
  coord_wait *w = calloc(1, sizeof *w);
  if (!w) return DPOD_ENOMEM;
  w->id = id;
  w->ranks = spec->ranks;
  w->n_deps = n > JOB_SPEC_AFTER_MAX + 2 ? JOB_SPEC_AFTER_MAX + 2 : n;
  memcpy(w->deps, deps, w->n_deps * sizeof *deps);
  snprintf(w->why, sizeof w->why, "%s", why ? why : "");
  coord_wait **link = &co->waiting; /* in submission order */
  while (*link) link = &(*link)->next;
  *link = w;
  co->waits_dirty = true;
  return 0;
}

/* Takes a cancelled job off the waiting list. Returns 0, or DPOD_ENOENT if it was not on it. */
static int coord_unwait(coord *co, uint64_t id) {
  for (coord_wait **link = &co->waiting, *w; (w = *link) != NULL; link = &w->next)
    if (w->id == id) {
      *link = w->next;
      free(w);
      return 0;
    }
  return DPOD_ENOENT;
}

static void coord_held_free(coord_held *h) {
  coord *co = h->co;
  if (h->prev) h->prev->next = h->next;
  else co->held = h->next;
  if (h->next) h->next->prev = h->prev;
  uv_close((uv_handle_t *)h->timer, coord_timer_closed);
  free(h);
}

static void coord_held_due(uv_timer_t *t) {
  coord_held *h = t->data;
  coord *co = h->co;
  uint64_t id = h->id;
  unsigned ranks = h->ranks;
  coord_held_free(h);
  job_store_set_not_before(co->store, id, 0);
  if (job_queue_enqueue(&co->queue, id, ranks) != 0)
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "cannot queue the job again", -1);
  coord_schedule(co);
}

static void coord_hold(coord *co, uint64_t id, unsigned ranks, uint64_t delay_ms) {
  coord_held *h = calloc(1, sizeof *h);
  if (h && !(h->timer = malloc(sizeof *h->timer))) {
    free(h);
    h = NULL;
  }
  if (!h || uv_timer_init(co->loop, h->timer) != 0) {
    /* No timer: queue it now rather than lose it. */
    if (h) free(h->timer);
    free(h);
    if (job_queue_enqueue(&co->queue, id, ranks) != 0)
      coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "cannot queue the job again", -1);
    return;
  }
  h->co = co;
  h->id = id;
  h->ranks = ranks;
  h->timer->data = h;
  h->next = co->held;
  if (co->held) co->held->prev = h;
  co->held = h;
  uv_timer_start(h->timer, coord_held_due, delay_ms, 0);
}

/* ---------------------------------------------------------------------------------------------------
 * Operations for the RPC handlers. */

/* The files a spec names, checked when it is submitted rather than when a worker trips over them:
 * absolute (dpod's working directory means nothing to the client), there, readable, and of the right
 * kind. The messages name the field, the path and the problem, never anything read from the file. */
static int coord_check_path(const char *key, const char *path, bool want_dir, char *err, size_t errlen) {
  if (!path || !*path || strncmp(path, JOB_SPEC_REF_PREFIX, 4) == 0) return 0; /* job:ID: job_chain_check */
  if (path[0] != '/')
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: must be an absolute path (got \"%s\")", key, path);
  struct stat st;
  if (stat(path, &st) != 0)
    return dpod_errf(err, errlen, errno == EACCES ? DPOD_EACCESS : DPOD_EINVAL, "%s: %s: %s", key, path,
                     strerror(errno));
  if (want_dir && !S_ISDIR(st.st_mode))
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: not a directory", key, path);
  if (!want_dir && !S_ISREG(st.st_mode))
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: not a regular file", key, path);
  if (access(path, want_dir ? R_OK | X_OK : R_OK) != 0)
    return dpod_errf(err, errlen, DPOD_EACCESS, "%s: %s: %s", key, path, strerror(errno));
  return 0;
}

static int coord_check_spec(coord *co, const Dpod__V1__JobSpec *spec, char *err, size_t errlen) {
  const char *field;
  if (!launch_backend_takes_resources(co->backend) && job_spec_uses_resources(spec, &field))
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: only the slurm launcher takes it (this dpod runs jobs with %s)",
                     field, launch_backend_name(co->backend));
  unsigned threads = launch_max_threads(co->backend);
  if (spec->threads_per_rank > threads)
    return dpod_errf(err, errlen, DPOD_EINVAL, "threads_per_rank: %u threads per rank requested but a rank has at "
                     "most %u CPU%s here", spec->threads_per_rank, threads, threads == 1 ? "" : "s");
  const Dpod__V1__ModelSpec *m = spec->model;
  int status;
  if ((status = coord_check_path("model.config", m->config, false, err, errlen)) != 0 ||
      (status = model_spec_check(m, err, errlen)) != 0 || /* weights: a file or a model folder */
      (status = coord_check_path("model.scheduler_config", m->scheduler_config, false, err, errlen)) != 0)
    return status;
  if ((status = job_chain_check(co->store, spec, err, errlen)) != 0) return status;
  if (strncmp(spec->data->dataset, "builtin:", 8) == 0) return 0;
  return coord_check_path("data.dataset", spec->data->dataset, true, err, errlen);
}

int coord_submit(coord *co, Dpod__V1__JobSpec *spec, uint64_t *id_out, char *err, size_t errlen) {
  int status;
  *id_out = 0;
  if (!spec && !(spec = job_spec_new())) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  if (co->draining) {
    status = dpod_errf(err, errlen, DPOD_EUNAVAILABLE, "dpod is draining: new jobs are refused until it is undrained");
  } else if (job_spec_normalize(spec) != 0) {
    status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  } else if ((status = job_spec_validate(spec, launch_capacity(co->backend), err, errlen)) != 0 ||
             (status = coord_check_spec(co, spec, err, errlen)) != 0) {
    /* err names the field */
  } else if ((status = job_store_create(co->store, spec, co->jobs_dir, coord_now_ms(), id_out)) != 0) {
    status = coord_store_errf(co, err, errlen);
  } else {
    log_info("job %" PRIu64 " submitted: \"%s\", %u ranks", *id_out, spec->name ? spec->name : "", spec->ranks);
    if (coord_queue_job(co, *id_out, spec, NULL) != 0) {
      /* Validation already bounded ranks by the capacity, so only memory can fail here. */
      coord_append_state(co, *id_out, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "cannot queue the job", -1);
    }
    coord_schedule(co);
  }
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  return status;
}

int coord_cancel(coord *co, uint64_t id, char *err, size_t errlen) {
  job_info info;
  int status = job_store_get_info(co->store, id, &info);
  if (status == DPOD_ENOENT) return dpod_errf(err, errlen, DPOD_ENOENT, "job %" PRIu64 " not found", id);
  if (status != 0) return coord_store_errf(co, err, errlen);
  if (job_state_is_terminal(info.state))
    return dpod_errf(err, errlen, DPOD_ESTATE, "job %" PRIu64 " is already %s", id, job_state_name(info.state));
  if (info.state == DPOD__V1__JOB_STATE__JOB_STATE_QUEUED) {
    coord_held *h = coord_find_held(co, id);
    if (h) coord_held_free(h);
    else if (coord_unwait(co, id) != 0) job_queue_remove(&co->queue, id);
    job_store_set_not_before(co->store, id, 0);
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED, "cancelled by user", 0);
    /* The cancelled job may have been the head blocking the queue. */
    coord_schedule(co);
    return 0;
  }
  coord_job *j = coord_find_job(co, id);
  if (!j)
    return dpod_errf(err, errlen, DPOD_EINTERNAL, "job %" PRIu64 " is %s but has no attempt running", id,
                     job_state_name(info.state));
  if (!j->cancel_requested) {
    j->cancel_requested = true;
    if (job_store_set_cancel_requested(co->store, id) != 0) return coord_store_errf(co, err, errlen);
    log_info("job %" PRIu64 ": cancel requested", id);
    /* The worker sees the directive on its next report and stops cleanly; if it has not exited by the
     * end of the grace period, the stop timer takes over. */
    if (j->stop_stage == 0) uv_timer_start(j->timer, coord_stop_timer, co->p.cancel_term_ms, 0);
  }
  return 0;
}

int coord_restart(coord *co, uint64_t id, char *err, size_t errlen) {
  Dpod__V1__Job *job = NULL;
  int status = job_store_get(co->store, id, &job);
  if (status == DPOD_ENOENT) return dpod_errf(err, errlen, DPOD_ENOENT, "job %" PRIu64 " not found", id);
  if (status != 0) return coord_store_errf(co, err, errlen);
  Dpod__V1__JobState s = job->state;
  unsigned ranks = job->spec->ranks;
  if (s != DPOD__V1__JOB_STATE__JOB_STATE_FAILED && s != DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED &&
      s != DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED) {
    protobuf_c_message_free_unpacked(&job->base, NULL);
    return dpod_errf(err, errlen, DPOD_ESTATE,
                     "job %" PRIu64 " is %s; only failed, cancelled or preempted jobs can be restarted", id,
                     job_state_name(s));
  }
  /* A job that failed because one it waited for did waits for it again. */
  status = coord_queue_job(co, id, job->spec, NULL);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  if (status != 0)
    return dpod_errf(err, errlen, DPOD_ESTATE, "job %" PRIu64 " needs %u slots, dpod has %u", id, ranks,
                     launch_capacity(co->backend));
  /* A restart by hand starts a fresh count of automatic ones. */
  job_store_set_restarts(co->store, id, 0);
  job_store_set_not_before(co->store, id, 0);
  coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, "restarted by user", 0);
  coord_schedule(co);
  return 0;
}

int coord_delete(coord *co, uint64_t id, bool remove_run_dir, char *err, size_t errlen) {
  Dpod__V1__Job *job = NULL;
  int status = job_store_get(co->store, id, &job);
  if (status == DPOD_ENOENT) return dpod_errf(err, errlen, DPOD_ENOENT, "job %" PRIu64 " not found", id);
  if (status != 0) return coord_store_errf(co, err, errlen);
  char why[1024];
  if (!job_state_is_terminal(job->state)) {
    status = dpod_errf(err, errlen, DPOD_ESTATE, "job %" PRIu64 " is %s; only jobs that have ended can be deleted "
                       "(cancel it first)", id, job_state_name(job->state));
  } else if (remove_run_dir && (status = run_dir_check(co->jobs_dir, job->run_dir, why, sizeof why)) != 0) {
    dpod_errf(err, errlen, status, "job %" PRIu64 " not deleted: %s", id, why); /* nothing is touched */
  } else if ((status = job_store_delete(co->store, id)) != 0) {
    status = coord_store_errf(co, err, errlen);
  } else {
    log_info("job %" PRIu64 " deleted%s", id, remove_run_dir ? " with its run directory" : "");
    if (remove_run_dir && (status = run_dir_remove(co->jobs_dir, job->run_dir, why, sizeof why)) != 0)
      dpod_errf(err, errlen, status, "job %" PRIu64 " is deleted, but its run directory is not: %s", id, why);
  }
  protobuf_c_message_free_unpacked(&job->base, NULL);
  return status;
}

/* Compares the whole length whatever the input, so the time taken says nothing about the secret. */
static bool coord_secret_ok(const char *expected, const char *given) {
  if (!given || !expected[0]) return false;
  size_t glen = strnlen(given, JOB_SECRET_HEX_LEN + 1);
  unsigned diff = (unsigned)(glen ^ JOB_SECRET_HEX_LEN);
  for (size_t i = 0; i < JOB_SECRET_HEX_LEN; i++)
    diff |= (unsigned char)expected[i] ^ (unsigned char)(i < glen ? given[i] : 0);
  return diff == 0;
}

int coord_report(coord *co, const Dpod__V1__ReportRequest *req, Dpod__V1__Directive *directive, char *err,
                 size_t errlen) {
  *directive = DPOD__V1__DIRECTIVE__DIRECTIVE_NONE;
  uint64_t id = req->job_id;
  job_info info;
  int status = job_store_get_info(co->store, id, &info);
  if (status != 0 && status != DPOD_ENOENT) return coord_store_errf(co, err, errlen);
  /* An unknown job and a wrong secret look the same to the caller. */
  if (status == DPOD_ENOENT || !coord_secret_ok(info.secret, req->secret)) {
    log_warn("report for job %" PRIu64 " refused: unknown job or wrong secret", id);
    return dpod_errf(err, errlen, DPOD_EAUTH, "unknown job or wrong secret");
  }
  coord_job *j = coord_find_job(co, id);
  if ((info.state != DPOD__V1__JOB_STATE__JOB_STATE_STARTING && info.state != DPOD__V1__JOB_STATE__JOB_STATE_RUNNING) ||
      !j)
    return dpod_errf(err, errlen, DPOD_ESTATE, "job %" PRIu64 " is %s", id, job_state_name(info.state));
  /* A later attempt than dpod knows of: a scheduler requeued the job and dpod has not heard yet (its
   * next poll will say). Retryable, so nothing of the new attempt is lost meanwhile. */
  if (req->has_attempt && req->attempt > j->attempt && launch_backend_requeues(co->backend))
    return dpod_errf(err, errlen, DPOD_EUNAVAILABLE, "attempt %" PRIu32 " of job %" PRIu64 " is not known yet",
                     req->attempt, id);
  /* An earlier attempt of a requeued job: the scheduler's requeue reached dpod before the old attempt's
   * ranks stopped, and they may still checkpoint in their grace time and report it. What they measured
   * is stored (the next attempt resumes from that checkpoint, so nothing else would report those steps);
   * nothing they say changes the job's state. */
  bool late = req->has_attempt && req->attempt >= 1 && req->attempt < j->attempt && launch_backend_requeues(co->backend);
  if (!late && (!req->has_attempt || req->attempt != j->attempt))
    return dpod_errf(err, errlen, DPOD_ESTATE, "a report of attempt %" PRIu32 " for job %" PRIu64 ", which is on attempt %" PRIu32,
                     req->attempt, id, j->attempt);
  if (req->n_events > COORD_REPORT_MAX_EVENTS)
    return dpod_errf(err, errlen, DPOD_EINVAL, "a report holds at most %d events (got %zu)", COORD_REPORT_MAX_EVENTS,
                     req->n_events);
  Dpod__V1__JobEvent evs[COORD_REPORT_MAX_EVENTS], *ptrs[COORD_REPORT_MAX_EVENTS];
  size_t m = 0;
  for (size_t i = 0; i < req->n_events; i++) {
    const Dpod__V1__WorkerEvent *we = req->events[i];
    char why[256];
    if (coord_convert_event(we, j->run_dir, j->total_steps, &evs[m], why, sizeof why) != 0) {
      log_warn("report for job %" PRIu64 " refused: %s", id, why);
      return dpod_errf(err, errlen, DPOD_EINVAL, "event %zu: %s", i, why);
    }
    if (we->event_case == DPOD__V1__WORKER_EVENT__EVENT_STARTED && !late)
      log_info("job %" PRIu64 ": worker started (%u ranks, %u steps, %" PRIu64 " parameters, from step %u)", id,
               we->started->world_size, we->started->total_steps, we->started->parameters, we->started->start_step);
    if (evs[m].event_case != DPOD__V1__JOB_EVENT__EVENT__NOT_SET) ptrs[m] = &evs[m], m++;
  }
  if (late) {
    size_t stored = 0;
    if (job_store_append_batch(co->store, id, ptrs, m, coord_now_ms(), &stored) != 0)
      return coord_store_errf(co, err, errlen);
    log_info("job %" PRIu64 ": %zu late events of attempt %" PRIu32 " stored (%zu new)", id, m, req->attempt, stored);
    coord_notify(co, id);
    return 0;
  }
  /* The first authenticated report means rank 0 is up. */
  if (info.state == DPOD__V1__JOB_STATE__JOB_STATE_STARTING)
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, NULL, 0);
  j->reported = true;
  for (size_t i = 0; i < req->n_events; i++) coord_note_progress(j, req->events[i]);
  size_t stored = 0;
  /* One transaction for the whole batch: a report of a thousand events costs the loop a few ms. */
  if (job_store_append_batch(co->store, id, ptrs, m, coord_now_ms(), &stored) != 0)
    return coord_store_errf(co, err, errlen);
  if (stored < m) log_debug("job %" PRIu64 ": %zu duplicate events skipped", id, m - stored);
  coord_notify(co, id);
  if (info.cancel_requested || j->cancel_requested) *directive = DPOD__V1__DIRECTIVE__DIRECTIVE_CANCEL;
  return 0;
}

static void coord_set_draining(coord *co, bool draining) {
  if (co->draining == draining) return;
  co->draining = draining;
  if (job_store_set_setting(co->store, COORD_DRAINING_KEY, draining ? "1" : "0") != 0)
    log_warn("cannot store the drain: %s", job_store_last_error(co->store));
  if (co->serving_hook) co->serving_hook(co->serving_hook_arg);
}

/* SIGKILL for a drained attempt that did not stop at its checkpoint in time. */
static void coord_drain_timer(uv_timer_t *t) {
  coord_job *j = t->data;
  if (j->stop_stage >= 2) return;
  log_warn("job %" PRIu64 ": did not stop within the drain's grace; SIGKILL", j->id);
  launch_stop(j->run, LAUNCH_STOP_KILL, NULL);
  j->stop_stage = 2;
}

int coord_drain(coord *co, unsigned *preempting, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  coord_set_draining(co, true);
  unsigned n = 0;
  for (coord_job *j = co->jobs; j; j = j->next) {
    if (j->stop_stage >= 1) continue;
    /* Ranks that get the request checkpoint and exit "preempted"; an attempt with no rank started yet is
     * simply stopped. */
    int asked = 0;
    launch_stop(j->run, LAUNCH_STOP_PREEMPT, &asked);
    if (asked == 0) launch_stop(j->run, LAUNCH_STOP_TERMINATE, NULL);
    j->stop_stage = 1;
    uv_timer_start(j->timer, coord_drain_timer, co->p.drain_kill_ms, 0);
    n++;
  }
  log_info("draining: %u running jobs asked to checkpoint and stop; new jobs refused", n);
  if (preempting) *preempting = n;
  return 0;
}

int coord_undrain(coord *co, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  coord_set_draining(co, false);
  log_info("undrained: taking jobs again");
  coord_schedule(co);
  return 0;
}

/* ---------------------------------------------------------------------------------------------------
 * Life cycle. */

/* A scheduler (Slurm) has not started an attempt yet, and says why; or it has: the start timeout counts
 * from then. */
static void coord_on_status(launch_run *run, int running, const char *reason, void *arg) {
  (void)run;
  coord_job *j = arg;
  j->pending = !running;
  if (running) {
    j->launched_ms = uv_now(j->co->loop);
    return;
  }
  char text[160];
  snprintf(text, sizeof text, "waiting in the scheduler's queue: %s", reason);
  coord_append_state(j->co, j->id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, text, 0);
}

/* The scheduler requeued the attempt (preemption, `scontrol requeue`, the batch script's own requeue
 * after a checkpoint) and starts the next one by itself: record the old attempt's end and the new one's
 * start, keep the slots, and wait for the new attempt's rank 0 as after a launch. No restart is used up:
 * being preempted is not the job's fault. */
static void coord_on_requeue(launch_run *run, const launch_exit *ex, void *arg) {
  coord_job *j = arg;
  coord *co = j->co;
  coord_ingest_journal(co, j->id, j->run_dir, ex->attempt, j->total_steps);
  int code = !ex->recorded ? -1 : ex->term_signal ? 128 + ex->term_signal : ex->exit_status;
  coord_append_attempt(co, j->id, ex->attempt, ex, code, "requeued by the scheduler", true);
  j->attempt = launch_run_attempt(run);
  j->reported = false;
  j->pending = true;
  j->fail_reason[0] = '\0';
  if (j->stop_stage) {
    uv_timer_stop(j->timer);
    j->stop_stage = 0;
  }
  j->launched_ms = j->progress_ms = uv_now(co->loop);
  if (job_store_set_launch_handle(co->store, j->id, launch_run_handle(run)) != 0)
    log_warn("job %" PRIu64 ": cannot store its launch handle: %s", j->id, job_store_last_error(co->store));
  coord_append_attempt(co, j->id, j->attempt, NULL, 0, NULL, false);
  char reason[96];
  snprintf(reason, sizeof reason, "requeued by the scheduler after attempt %" PRIu32, ex->attempt);
  coord_append_state(co, j->id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, reason, 0);
}

int coord_open(uv_loop_t *loop, const coord_params *p, launch_backend *backend, coord **out, char *err,
               size_t errlen) {
  int status = DPOD_ENOMEM;
  coord *co = calloc(1, sizeof *co);
  *out = NULL;
  if (!co) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  co->loop = loop;
  co->backend = backend;
  launch_set_scheduler_cbs(backend, coord_on_status, coord_on_requeue);
  co->p = *p;
  co->p.state_dir = co->p.jobs_dir = NULL; /* not kept */
  job_queue_init(&co->queue, launch_capacity(backend));
  size_t jl = strlen(p->jobs_dir ? p->jobs_dir : p->state_dir) + sizeof "/jobs";
  if (!(co->jobs_dir = malloc(jl))) {
    status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
    goto fail;
  }
  if (p->jobs_dir) snprintf(co->jobs_dir, jl, "%s", p->jobs_dir);
  else snprintf(co->jobs_dir, jl, "%s/jobs", p->state_dir);
  /* Private: run directories hold specs and journals; on a shared file system, only ours to read. */
  if ((status = dpod_mkdirs(co->jobs_dir, 0700, DPOD_MKDIRS_PRIVATE, err, errlen)) != 0) goto fail;
  char db[PATH_MAX], v[8];
  snprintf(db, sizeof db, "%s/dpod.db", p->state_dir);
  if ((status = job_store_open(db, &co->store, err, errlen)) != 0) goto fail;
  co->draining = job_store_get_setting(co->store, COORD_DRAINING_KEY, v, sizeof v) == 0 && strcmp(v, "1") == 0;
  *out = co;
  return 0;

fail:
  coord_free(co);
  return status;
}

/* A job the previous daemon was running when it stopped: the launch backend says what became of its
 * newest attempt. */
static void coord_recover_running(coord *co, const Dpod__V1__Job *job) {
  job_info info;
  int stopped = 0;
  launch_exit ex;
  launch_run *run = NULL;
  char err[256] = "";
  int found = LAUNCH_RECOVERED_LOST;
  if (job_store_get_info(co->store, job->id, &info) != 0) return;
  uint32_t attempt = launch_handle_attempt(info.launch_handle);
  coord_job *j = coord_job_new(co, job, attempt);
  if (!j) {
    log_error("job %" PRIu64 ": out of memory recovering it", job->id);
    return;
  }
  if (info.launch_handle[0])
    found = launch_recover(co->backend, info.launch_handle, job->run_dir, coord_on_exit, j, &run, &ex, &stopped, err,
                           sizeof err);
  if (found < 0) log_warn("job %" PRIu64 ": %s", job->id, err);
  if (found == LAUNCH_RECOVERED_RUNNING) {
    j->run = run;
    j->cancel_requested = info.cancel_requested;
    j->reported = job->state == DPOD__V1__JOB_STATE__JOB_STATE_RUNNING;
    if (job_queue_hold(&co->queue, j->ranks) == 0) j->holds_slots = true;
    else log_warn("job %" PRIu64 ": runs on %u ranks, more than this dpod has free", job->id, j->ranks);
    coord_job_link(co, j);
    log_info("job %" PRIu64 ": adopted attempt %" PRIu32 " (%s)", job->id, attempt, info.launch_handle);
    /* A cancel asked of the previous daemon is carried out by this one. */
    if (j->cancel_requested) uv_timer_start(j->timer, coord_stop_timer, co->p.cancel_term_ms, 0);
    return;
  }
  coord_job_link(co, j); /* for coord_attempt_ended's bookkeeping; holds no slots */
  if (found != LAUNCH_RECOVERED_ENDED) {
    /* Lost: nothing says how it ended. What was left of it has been stopped. */
    memset(&ex, 0, sizeof ex);
    ex.attempt = attempt;
    snprintf(j->fail_reason, sizeof j->fail_reason, "dpod restarted and could not find the attempt again%s",
             stopped > 0 ? "; stopped its remaining processes" : "");
  }
  coord_attempt_ended(co, job, j, &ex);
}

int coord_recover(coord *co) {
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  static const Dpod__V1__JobState active[] = {DPOD__V1__JOB_STATE__JOB_STATE_STARTING,
                                              DPOD__V1__JOB_STATE__JOB_STATE_RUNNING};
  int status = job_store_list(co->store, active, 2, 0, true, &jobs, &n);
  if (status != 0) return status;
  /* Running attempts first, so that their slots are held before the queue hands any out. */
  for (size_t i = 0; i < n; i++) coord_recover_running(co, jobs[i]);
  job_store_free_jobs(jobs, n);

  static const Dpod__V1__JobState queued[] = {DPOD__V1__JOB_STATE__JOB_STATE_QUEUED};
  if ((status = job_store_list(co->store, queued, 1, 0, true, &jobs, &n)) != 0) return status;
  int64_t now = coord_now_ms();
  for (size_t i = 0; i < n; i++) {
    unsigned ranks = jobs[i]->spec->ranks;
    uint64_t id = jobs[i]->id;
    if (coord_find_held(co, id)) continue; /* put back just now, by a recovered attempt */
    job_info info;
    if (job_store_get_info(co->store, id, &info) == 0 && info.not_before_ms > now) {
      coord_hold(co, id, ranks, (uint64_t)(info.not_before_ms - now));
    } else if (coord_queue_job(co, id, jobs[i]->spec, jobs[i]->reason) != 0) {
      /* Submitted to a daemon with more slots than this one. */
      char reason[128];
      snprintf(reason, sizeof reason, "needs %u slots, dpod has %u", ranks, co->queue.slots);
      coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, reason, -1);
    }
  }
  if (n) log_info("recovered %zu queued jobs", n);
  job_store_free_jobs(jobs, n);
  if (co->draining) log_info("draining (since before the restart): queued jobs wait until dpod is undrained");
  coord_schedule(co);
  return 0;
}

/* The heartbeat timeout of a running attempt, in ms: the spec's, or 10x its slowest step, never below
 * the floor. */
static uint64_t coord_heartbeat_ms(const coord_job *j) {
  if (j->heartbeat_timeout_s > 0) return (uint64_t)(j->heartbeat_timeout_s * 1000.0);
  uint64_t derived = (uint64_t)(10.0 * j->slowest_step_s * 1000.0);
  return derived > j->co->p.heartbeat_floor_ms ? derived : j->co->p.heartbeat_floor_ms;
}

/* The watchdog: an attempt that has not reported in within the start timeout, or shows no progress for
 * its heartbeat timeout, is hung. */
static void coord_watchdog(coord *co) {
  uint64_t now = uv_now(co->loop);
  for (coord_job *j = co->jobs, *next; j; j = next) {
    next = j->next;
    if (j->stop_stage >= 2 || j->fail_reason[0]) continue;
    char reason[200];
    if (!j->reported && !j->pending && now - j->launched_ms > co->p.start_timeout_ms) {
      snprintf(reason, sizeof reason, "did not report in within %.0f s of its start",
               (double)co->p.start_timeout_ms / 1000.0);
      coord_fail_attempt(j, reason);
    } else if (j->reported && now - j->progress_ms > coord_heartbeat_ms(j)) {
      snprintf(reason, sizeof reason, "no progress for %.0f s (last step %" PRIu32 ")",
               (double)(now - j->progress_ms) / 1000.0, j->last_step);
      coord_fail_attempt(j, reason);
    }
  }
}

void coord_cron(coord *co, uint64_t loops, unsigned period_ms) {
  launch_poll(co->backend);
  coord_watchdog(co);
  /* run_with_period(60000): a heartbeat in the debug log. */
  uint64_t every = period_ms ? 60000 / period_ms : 1;
  if (every == 0 || loops % every == 0)
    log_debug("%zu jobs running, %zu queued, %u/%u slots free%s", co->n_jobs, co->queue.queued, co->queue.free_slots,
              co->queue.slots, co->draining ? ", draining" : "");
}

void coord_detach(coord *co) {
  if (co->n_jobs) log_info("leaving %zu running jobs to the next dpod", co->n_jobs);
  while (co->jobs) {
    coord_job *j = co->jobs;
    launch_detach(j->run);
    coord_job_free(j);
  }
  while (co->held) coord_held_free(co->held);
  while (co->waiting) coord_unwait(co, co->waiting->id);
}

void coord_free(coord *co) {
  if (!co) return;
  if (co->n_jobs) log_error("coord_free with %zu jobs left", co->n_jobs);
  job_store_close(co->store);
  job_queue_free(&co->queue);
  free(co->jobs_dir);
  free(co);
}
