#include "coordinator.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_log.h"
#include "job_queue.h"
#include "job_spec.h"

/* A job with an attempt running: its run, its slots and the timer that escalates a stop. */
typedef struct coord_job {
  coord *co;
  uint64_t id;
  unsigned ranks;
  launch_run *run;
  uv_timer_t *timer;   /* separate allocation: it is freed in its close callback, after the job */
  bool cancel_requested;
  int stop_stage;      /* 0: none, 1: SIGTERM sent (or preemption asked), 2: SIGKILL sent */
  struct coord_job *prev, *next;
} coord_job;

struct coord {
  uv_loop_t *loop;
  job_store *store;
  job_queue queue;
  launch_backend *backend;
  char *jobs_dir;
  unsigned cancel_term_ms, cancel_kill_ms, shutdown_kill_ms;
  coord_job *jobs;
  size_t n_jobs;
  void (*event_hook)(void *arg, uint64_t job_id);
  void *event_hook_arg;
  bool shutting_down;
  void (*shutdown_done)(void *arg);
  void *shutdown_arg;
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
  p.shutdown_kill_ms = 30000; /* time for every rank to reach a step boundary and write a checkpoint */
  return p;
}

job_store *coord_store(coord *co) { return co->store; }
bool coord_serving(const coord *co) { return !co->shutting_down; }

void coord_set_event_hook(coord *co, void (*fn)(void *arg, uint64_t job_id), void *arg) {
  co->event_hook = fn;
  co->event_hook_arg = arg;
}

static void coord_notify(coord *co, uint64_t id) {
  if (co->event_hook) co->event_hook(co->event_hook_arg, id);
}

static int coord_store_errf(coord *co, char *err, size_t errlen) {
  return dpod_errf(err, errlen, DPOD_EDB, "job store: %s", job_store_last_error(co->store));
}

/* ---------------------------------------------------------------------------------------------------
 * Jobs: launch, stop, exit. */

static coord_job *coord_find_job(coord *co, uint64_t id) {
  for (coord_job *j = co->jobs; j; j = j->next)
    if (j->id == id) return j;
  return NULL;
}

static int coord_append_state(coord *co, uint64_t id, Dpod__V1__JobState state, const char *reason,
                              int exit_code) {
  int status = job_store_append_state(co->store, id, state, reason, exit_code, coord_now_ms(), NULL);
  if (status != 0)
    log_error("job %" PRIu64 ": recording state %s failed: %s", id, job_state_name(state),
              job_store_last_error(co->store));
  else if (job_state_is_terminal(state))
    log_info("job %" PRIu64 ": %s%s%s", id, job_state_name(state), reason && *reason ? ": " : "", reason ? reason : "");
  else
    log_info("job %" PRIu64 ": %s", id, job_state_name(state));
  coord_notify(co, id);
  return status;
}

static void coord_timer_closed(uv_handle_t *h) { free(h); }

/* Escalates a stop: SIGTERM after the grace period, SIGKILL after the next one. */
static void coord_stop_timer(uv_timer_t *t) {
  coord_job *j = t->data;
  if (j->stop_stage == 0) {
    log_info("job %" PRIu64 ": still running; SIGTERM to %s", j->id, launch_run_handle(j->run));
    launch_stop(j->run, LAUNCH_STOP_TERMINATE, NULL);
    j->stop_stage = 1;
    uv_timer_start(t, coord_stop_timer, j->co->shutting_down ? j->co->shutdown_kill_ms : j->co->cancel_kill_ms, 0);
  } else if (j->stop_stage == 1) {
    log_warn("job %" PRIu64 ": ignored SIGTERM; SIGKILL to %s", j->id, launch_run_handle(j->run));
    launch_stop(j->run, LAUNCH_STOP_KILL, NULL);
    j->stop_stage = 2;
  }
}

static void coord_schedule(coord *co);

/* The state an ended attempt puts its job in, and why. */
static Dpod__V1__JobState coord_exit_state(coord *co, uint64_t id, bool cancel, const launch_exit *ex, char *reason,
                                           size_t len) {
  if (cancel) {
    snprintf(reason, len, "cancelled by user");
    return DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED;
  }
  if (co->shutting_down && !ex->term_signal && ex->exit_status == WORKER_EXIT_PREEMPTED) {
    snprintf(reason, len, "dpod shut down; the job stopped at a checkpoint");
    return DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED;
  }
  if (co->shutting_down) {
    snprintf(reason, len, "dpod shut down");
    return DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
  }
  if (ex->term_signal) {
    snprintf(reason, len, "killed by signal %d", ex->term_signal);
    return DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
  }
  if (ex->exit_status == WORKER_EXIT_OK) {
    reason[0] = '\0';
    return DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
  }
  if (ex->exit_status == WORKER_EXIT_PREEMPTED) {
    snprintf(reason, len, "preempted after a checkpoint (exit status %d)", ex->exit_status);
    return DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED;
  }
  char run_dir[PATH_MAX], log_path[PATH_MAX], line[300];
  snprintf(run_dir, sizeof run_dir, "%s/%" PRIu64, co->jobs_dir, id);
  launch_log_path(co->backend, run_dir, ex->attempt, log_path, sizeof log_path);
  launch_last_error_line(log_path, line, sizeof line);
  snprintf(reason, len, "dpo-worker exited with status %d%s%s", ex->exit_status, line[0] ? ": " : "", line);
  return DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
}

static void coord_on_exit(launch_run *run, const launch_exit *ex, void *arg) {
  (void)run;
  coord_job *j = arg;
  coord *co = j->co;
  job_info info;
  bool cancel = j->cancel_requested || (job_store_get_info(co->store, j->id, &info) == 0 && info.cancel_requested);
  char reason[512];
  Dpod__V1__JobState state = coord_exit_state(co, j->id, cancel, ex, reason, sizeof reason);
  /* Signals are recorded the way shells report them. */
  int code = ex->term_signal ? 128 + ex->term_signal : ex->exit_status;

  if (j->prev) j->prev->next = j->next;
  else co->jobs = j->next;
  if (j->next) j->next->prev = j->prev;
  co->n_jobs--;
  job_queue_release(&co->queue, j->ranks);
  uint64_t id = j->id;
  uv_close((uv_handle_t *)j->timer, coord_timer_closed);
  free(j);

  coord_append_state(co, id, state, reason, code);
  if (co->shutting_down) {
    if (co->n_jobs == 0 && co->shutdown_done) {
      void (*done)(void *) = co->shutdown_done;
      co->shutdown_done = NULL;
      done(co->shutdown_arg);
    }
    return;
  }
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
  if (launch_make_secret(secret) != 0) {
    snprintf(err, sizeof err, "cannot generate a secret");
    goto fail;
  }
  if (job_store_set_secret(co->store, id, secret) != 0) {
    snprintf(err, sizeof err, "cannot store the secret: %s", job_store_last_error(co->store));
    goto fail;
  }
  size_t spec_len = protobuf_c_message_get_packed_size(&job->spec->base);
  if (!(spec_pb = malloc(spec_len ? spec_len : 1)) || !(j = calloc(1, sizeof *j)) ||
      !(j->timer = malloc(sizeof *j->timer))) {
    snprintf(err, sizeof err, "out of memory");
    goto fail;
  }
  protobuf_c_message_pack(&job->spec->base, spec_pb);
  j->co = co;
  j->id = id;
  j->ranks = ranks;
  launch_request lr = {
      .job_id = id,
      .attempt = launch_handle_attempt(info.launch_handle) + 1,
      .ranks = ranks,
      .threads_per_rank = job->spec->threads_per_rank,
      .run_dir = job->run_dir,
      .secret = secret,
      .spec_pb = spec_pb,
      .spec_len = spec_len,
  };
  if (launch_start(co->backend, &lr, coord_on_exit, j, &j->run, handle, err, sizeof err) != 0) goto fail;
  /* Should this daemon die, the next one finds what is left of the attempt by this. */
  if (job_store_set_launch_handle(co->store, id, handle) != 0)
    log_warn("job %" PRIu64 ": cannot store its launch handle: %s", id, job_store_last_error(co->store));
  if (uv_timer_init(co->loop, j->timer) != 0) log_error("job %" PRIu64 ": cannot create its stop timer", id);
  j->timer->data = j;
  j->next = co->jobs;
  if (co->jobs) co->jobs->prev = j;
  co->jobs = j;
  co->n_jobs++;
  /* Appended before any Report can be handled: those run on this thread, after we return. */
  coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, NULL, 0);
  goto done;

fail:
  log_error("job %" PRIu64 ": launch failed: %s", id, err);
  if (j) free(j->timer);
  free(j);
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

/* Launches queued jobs for as long as the head of the queue fits. */
static void coord_schedule(coord *co) {
  if (co->shutting_down) return;
  uint64_t id;
  unsigned ranks;
  while ((id = job_queue_next(&co->queue, &ranks)) != 0) coord_launch(co, id, ranks);
}

/* ---------------------------------------------------------------------------------------------------
 * Operations for the RPC handlers. */

int coord_submit(coord *co, Dpod__V1__JobSpec *spec, uint64_t *id_out, char *err, size_t errlen) {
  int status;
  *id_out = 0;
  if (!spec && !(spec = job_spec_new())) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  if (co->shutting_down) {
    status = dpod_errf(err, errlen, DPOD_EUNAVAILABLE, "dpod is shutting down");
  } else if (job_spec_normalize(spec) != 0) {
    status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  } else if ((status = job_spec_validate(spec, launch_capacity(co->backend), err, errlen)) != 0) {
    /* err names the field */
  } else if ((status = job_store_create(co->store, spec, co->jobs_dir, coord_now_ms(), id_out)) != 0) {
    status = coord_store_errf(co, err, errlen);
  } else {
    log_info("job %" PRIu64 " submitted: \"%s\", %u ranks", *id_out, spec->name ? spec->name : "", spec->ranks);
    if (job_queue_enqueue(&co->queue, *id_out, spec->ranks) != 0) {
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
    job_queue_remove(&co->queue, id);
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED, "cancelled by user", 0);
    /* The cancelled job may have been the head blocking the queue. */
    coord_schedule(co);
    return 0;
  }
  coord_job *j = coord_find_job(co, id);
  if (!j)
    return dpod_errf(err, errlen, DPOD_EINTERNAL, "job %" PRIu64 " is %s but has no process", id,
                     job_state_name(info.state));
  if (!j->cancel_requested) {
    j->cancel_requested = true;
    if (job_store_set_cancel_requested(co->store, id) != 0) return coord_store_errf(co, err, errlen);
    log_info("job %" PRIu64 ": cancel requested", id);
    /* The worker sees the directive on its next report and stops cleanly; if it has not exited by the
     * end of the grace period, the stop timer takes over. */
    if (j->stop_stage == 0) uv_timer_start(j->timer, coord_stop_timer, co->cancel_term_ms, 0);
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
  protobuf_c_message_free_unpacked(&job->base, NULL);
  if (s != DPOD__V1__JOB_STATE__JOB_STATE_FAILED && s != DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED &&
      s != DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED)
    return dpod_errf(err, errlen, DPOD_ESTATE,
                     "job %" PRIu64 " is %s; only failed, cancelled or preempted jobs can be restarted", id,
                     job_state_name(s));
  if (co->shutting_down) return dpod_errf(err, errlen, DPOD_EUNAVAILABLE, "dpod is shutting down");
  if (job_queue_enqueue(&co->queue, id, ranks) != 0)
    return dpod_errf(err, errlen, DPOD_ESTATE, "job %" PRIu64 " needs %u slots, dpod has %u", id, ranks,
                     launch_capacity(co->backend));
  coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, "restarted by user", 0);
  coord_schedule(co);
  return 0;
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
  if (info.state != DPOD__V1__JOB_STATE__JOB_STATE_STARTING && info.state != DPOD__V1__JOB_STATE__JOB_STATE_RUNNING)
    return dpod_errf(err, errlen, DPOD_ESTATE, "job %" PRIu64 " is %s", id, job_state_name(info.state));
  /* The first authenticated report means rank 0 is up. */
  if (info.state == DPOD__V1__JOB_STATE__JOB_STATE_STARTING)
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, NULL, 0);
  int64_t now = coord_now_ms();
  for (size_t i = 0; i < req->n_events; i++) {
    const Dpod__V1__WorkerEvent *we = req->events[i];
    Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
    switch (we->event_case) {
      case DPOD__V1__WORKER_EVENT__EVENT_STARTED:
        log_info("job %" PRIu64 ": worker started (%u ranks, %u steps, %" PRIu64 " parameters, from step %u)", id,
                 we->started->world_size, we->started->total_steps, we->started->parameters, we->started->start_step);
        continue;
      case DPOD__V1__WORKER_EVENT__EVENT_METRICS:
        ev.event_case = DPOD__V1__JOB_EVENT__EVENT_METRICS;
        ev.metrics = we->metrics;
        break;
      case DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT:
        ev.event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
        ev.checkpoint = we->checkpoint;
        break;
      case DPOD__V1__WORKER_EVENT__EVENT_EVAL:
        ev.event_case = DPOD__V1__JOB_EVENT__EVENT_EVAL;
        ev.eval = we->eval;
        break;
      default: continue; /* an event kind from a newer worker */
    }
    uint64_t seq = 0;
    if (job_store_append(co->store, id, &ev, now, &seq) != 0) {
      coord_notify(co, id); /* what was stored before the failure */
      return coord_store_errf(co, err, errlen);
    }
    if (seq == 0) log_debug("job %" PRIu64 ": duplicate event skipped", id);
  }
  coord_notify(co, id);
  coord_job *j = coord_find_job(co, id);
  if (info.cancel_requested || (j && j->cancel_requested)) *directive = DPOD__V1__DIRECTIVE__DIRECTIVE_CANCEL;
  return 0;
}

/* ---------------------------------------------------------------------------------------------------
 * Life cycle. */

int coord_open(uv_loop_t *loop, const coord_params *p, launch_backend *backend, coord **out, char *err,
               size_t errlen) {
  int status = DPOD_ENOMEM;
  coord *co = calloc(1, sizeof *co);
  *out = NULL;
  if (!co) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  co->loop = loop;
  co->backend = backend;
  co->cancel_term_ms = p->cancel_term_ms;
  co->cancel_kill_ms = p->cancel_kill_ms;
  co->shutdown_kill_ms = p->shutdown_kill_ms;
  job_queue_init(&co->queue, launch_capacity(backend));
  size_t jl = strlen(p->state_dir) + sizeof "/jobs";
  if (!(co->jobs_dir = malloc(jl))) {
    status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
    goto fail;
  }
  snprintf(co->jobs_dir, jl, "%s/jobs", p->state_dir);
  if ((status = dpod_mkdirs(co->jobs_dir, 0700, 0, err, errlen)) != 0) goto fail;
  char db[PATH_MAX];
  snprintf(db, sizeof db, "%s/dpod.db", p->state_dir);
  if ((status = job_store_open(db, &co->store, err, errlen)) != 0) goto fail;
  *out = co;
  return 0;

fail:
  coord_free(co);
  return status;
}

/* The exit of an attempt found running after a restart but not supervised: only logged (the job has
 * already been recorded). */
static void coord_on_orphan_exit(launch_run *run, const launch_exit *ex, void *arg) {
  (void)arg;
  log_info("%s ended (exit status %d, signal %d)", launch_run_handle(run), ex->exit_status, ex->term_signal);
}

/* A job the previous daemon was running when it stopped: the launch backend says what became of its
 * newest attempt. An attempt that ended is recorded as it ended; one the backend cannot supervise again
 * is lost (what was left of it is stopped, so no slot is used twice) and the job fails, to be resumed
 * from its newest checkpoint with RestartJob. */
static void coord_recover_interrupted(coord *co, const Dpod__V1__Job *job) {
  job_info info;
  int stopped = 0;
  launch_exit ex;
  launch_run *run = NULL;
  char err[256] = "", reason[512];
  int found = LAUNCH_RECOVERED_LOST;
  if (job_store_get_info(co->store, job->id, &info) == 0 && info.launch_handle[0])
    found = launch_recover(co->backend, info.launch_handle, job->run_dir, coord_on_orphan_exit, NULL, &run, &ex,
                           &stopped, err, sizeof err);
  if (found < 0) log_warn("job %" PRIu64 ": %s", job->id, err);
  if (found == LAUNCH_RECOVERED_ENDED) {
    bool cancel = info.cancel_requested;
    Dpod__V1__JobState state = coord_exit_state(co, job->id, cancel, &ex, reason, sizeof reason);
    coord_append_state(co, job->id, state, reason, ex.term_signal ? 128 + ex.term_signal : ex.exit_status);
    return;
  }
  if (found == LAUNCH_RECOVERED_RUNNING) {
    /* No backend supervises again yet (mpirun's attempts are dpod's children); adoption comes with a
     * per-job supervisor. Stop it rather than run it unwatched. */
    launch_stop(run, LAUNCH_STOP_KILL, NULL);
  }
  if (stopped > 0) {
    snprintf(reason, sizeof reason, "dpod restarted while the job was running; stopped its %d remaining processes",
             stopped);
    log_warn("job %" PRIu64 ": %s", job->id, reason);
  } else {
    snprintf(reason, sizeof reason, "dpod restarted while the job was running");
  }
  coord_append_state(co, job->id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, reason, -1);
}

int coord_recover(coord *co) {
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  static const Dpod__V1__JobState active[] = {DPOD__V1__JOB_STATE__JOB_STATE_STARTING,
                                              DPOD__V1__JOB_STATE__JOB_STATE_RUNNING};
  int status = job_store_list(co->store, active, 2, 0, true, &jobs, &n);
  if (status != 0) return status;
  for (size_t i = 0; i < n; i++) coord_recover_interrupted(co, jobs[i]);
  job_store_free_jobs(jobs, n);

  static const Dpod__V1__JobState queued[] = {DPOD__V1__JOB_STATE__JOB_STATE_QUEUED};
  if ((status = job_store_list(co->store, queued, 1, 0, true, &jobs, &n)) != 0) return status;
  for (size_t i = 0; i < n; i++) {
    unsigned ranks = jobs[i]->spec->ranks;
    if (job_queue_enqueue(&co->queue, jobs[i]->id, ranks) != 0) {
      /* Submitted to a daemon with more slots than this one. */
      char reason[128];
      snprintf(reason, sizeof reason, "needs %u slots, dpod has %u", ranks, co->queue.slots);
      coord_append_state(co, jobs[i]->id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, reason, -1);
    }
  }
  if (n) log_info("recovered %zu queued jobs", n);
  job_store_free_jobs(jobs, n);
  coord_schedule(co);
  return 0;
}

void coord_cron(coord *co, uint64_t loops, unsigned period_ms) {
  launch_poll(co->backend);
  /* run_with_period(60000): a heartbeat in the debug log. */
  uint64_t every = period_ms ? 60000 / period_ms : 1;
  if (every == 0 || loops % every == 0)
    log_debug("%zu jobs running, %zu queued, %u/%u slots free", co->n_jobs, co->queue.queued, co->queue.free_slots,
              co->queue.slots);
}

void coord_shutdown(coord *co, void (*done)(void *arg), void *arg) {
  if (co->shutting_down) return;
  co->shutting_down = true;
  co->shutdown_done = done;
  co->shutdown_arg = arg;
  if (co->n_jobs == 0) {
    co->shutdown_done = NULL;
    if (done) done(arg);
    return;
  }
  log_info("stopping %zu running jobs", co->n_jobs);
  for (coord_job *j = co->jobs; j; j = j->next) {
    if (j->stop_stage >= 1) continue;
    /* Ranks that get the request themselves checkpoint and exit "preempted", resumable with RestartJob;
     * an attempt with no rank started yet is simply stopped. */
    int asked = 0;
    launch_stop(j->run, LAUNCH_STOP_PREEMPT, &asked);
    if (asked == 0) launch_stop(j->run, LAUNCH_STOP_TERMINATE, NULL);
    j->stop_stage = 1;
    uv_timer_start(j->timer, coord_stop_timer, co->shutdown_kill_ms, 0);
  }
}

void coord_free(coord *co) {
  if (!co) return;
  if (co->n_jobs) log_error("coord_free with %zu jobs left", co->n_jobs);
  job_store_close(co->store);
  job_queue_free(&co->queue);
  free(co->jobs_dir);
  free(co);
}
