#include "coordinator.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_log.h"
#include "dpod_paths.h"
#include "health.pb-c.h"
#include "job_spec.h"
#include "job_store.h"
#include "launcher.h"
#include "job_queue.h"

#define COORD_LIST_MAX 1000 /* ListJobs never returns more, whatever the request asks */

/* A launched job: its processes, its slots and the timer that escalates a stop. */
typedef struct coord_job {
  coord *co;
  uint64_t id;
  unsigned ranks;
  launcher_proc *proc;
  uv_timer_t *timer;   /* separate allocation: it is freed in its close callback, after the job */
  bool cancel_requested;
  int stop_stage;      /* 0: none, 1: SIGTERM sent, 2: SIGKILL sent */
  struct coord_job *prev, *next;
} coord_job;

/* An open WatchJob stream. It sends the event with seq == next_seq whenever it is idle and that event
 * exists, so the stream is gap-free and duplicate-free whatever order appends and sends happen in. It
 * ends once it has sent every event of a job that is in a terminal state: a terminal state followed by
 * more events (the job was restarted) does not end it. */
typedef struct coord_watch {
  coord *co;
  rpc_call *call;
  uint64_t job_id;
  uint64_t next_seq;
  bool sending;        /* a send is in flight */
  bool ending;         /* the stream was ended (or the client left): send nothing more */
  struct coord_watch *prev, *next;
} coord_watch;

struct coord {
  uv_loop_t *loop;
  job_store *store;
  job_queue queue;
  launcher_params lp;
  char *state_dir, *jobs_dir, *report_addr, *worker, *mpirun;
  unsigned cancel_term_ms, cancel_kill_ms, shutdown_kill_ms;
  coord_job *jobs;
  size_t n_jobs;
  coord_watch *watches;
  size_t n_watches;
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
  p.slots = 2;
  p.mpirun = "mpirun";
  p.worker = "dpo-worker";
  p.cancel_term_ms = 2000;
  p.cancel_kill_ms = 5000;
  p.shutdown_kill_ms = 30000; /* time for every rank to reach a step boundary and write a checkpoint */
  return p;
}

/* ---------------------------------------------------------------------------------------------------
 * Watchers. */

static void coord_watch_pump(coord_watch *w);

/* Events were appended to `job_id`: wake its watchers. */
static void coord_notify(coord *co, uint64_t job_id) {
  for (coord_watch *w = co->watches; w; w = w->next)
    if (w->job_id == job_id) coord_watch_pump(w);
}

static void coord_watch_end(coord_watch *w, grpc_status_code code, const char *details) {
  w->ending = true;
  rpc_call_finish(w->call, code, details);
}

static void coord_watch_pump(coord_watch *w) {
  if (w->sending || w->ending) return;
  if (rpc_call_is_over(w->call)) {
    w->ending = true;
    return;
  }
  Dpod__V1__JobEvent *ev = NULL;
  int status = job_store_get_event(w->co->store, w->job_id, w->next_seq, &ev);
  if (status == DPOD_ENOENT) {
    /* Nothing new. A finished job gets no more events: a watch that starts past its end ends here. */
    job_info info;
    if (job_store_get_info(w->co->store, w->job_id, &info) == 0 && job_state_is_terminal(info.state) &&
        w->next_seq > info.last_seq)
      coord_watch_end(w, GRPC_STATUS_OK, NULL);
    return;
  }
  if (status != 0) {
    coord_watch_end(w, GRPC_STATUS_INTERNAL, "cannot read the job's events");
    return;
  }
  status = rpc_call_send(w->call, &ev->base);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  if (status != 0) {
    w->ending = true; /* the client is gone; the done callback frees the watch */
    return;
  }
  w->sending = true;
  w->next_seq++;
}

static void coord_watch_sent(rpc_call *call, int ok, void *data) {
  (void)call;
  coord_watch *w = data;
  w->sending = false;
  if (!ok) {
    w->ending = true;
    return;
  }
  coord_watch_pump(w);
}

static void coord_watch_done(rpc_call *call, void *data) {
  (void)call;
  coord_watch *w = data;
  coord *co = w->co;
  if (w->prev) w->prev->next = w->next;
  else co->watches = w->next;
  if (w->next) w->next->prev = w->prev;
  co->n_watches--;
  log_debug("watch of job %llu closed", (unsigned long long)w->job_id);
  free(w);
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
    log_error("job %llu: recording state %s failed: %s", (unsigned long long)id, job_state_name(state),
              job_store_last_error(co->store));
  else if (job_state_is_terminal(state))
    log_info("job %llu: %s%s%s", (unsigned long long)id, job_state_name(state), reason && *reason ? ": " : "",
             reason ? reason : "");
  else
    log_info("job %llu: %s", (unsigned long long)id, job_state_name(state));
  coord_notify(co, id);
  return status;
}

static void coord_timer_closed(uv_handle_t *h) { free(h); }

/* Escalates a stop: SIGTERM to the group after the grace period, SIGKILL after the next one. */
static void coord_stop_timer(uv_timer_t *t) {
  coord_job *j = t->data;
  if (j->stop_stage == 0) {
    log_info("job %llu: still running; SIGTERM to process group %d", (unsigned long long)j->id,
             launcher_pid(j->proc));
    launcher_kill(j->proc, SIGTERM);
    j->stop_stage = 1;
    uv_timer_start(t, coord_stop_timer, j->co->shutting_down ? j->co->shutdown_kill_ms : j->co->cancel_kill_ms, 0);
  } else if (j->stop_stage == 1) {
    log_warn("job %llu: ignored SIGTERM; SIGKILL to process group %d", (unsigned long long)j->id,
             launcher_pid(j->proc));
    launcher_kill(j->proc, SIGKILL);
    j->stop_stage = 2;
  }
}

static void coord_schedule(coord *co);

static void coord_on_exit(launcher_proc *p, int64_t exit_status, int term_signal, void *arg) {
  (void)p;
  coord_job *j = arg;
  coord *co = j->co;
  job_info info;
  bool cancel = j->cancel_requested ||
                (job_store_get_info(co->store, j->id, &info) == 0 && info.cancel_requested);
  char reason[512];
  Dpod__V1__JobState state;
  /* Signals are recorded the way shells report them. */
  int code = term_signal ? 128 + term_signal : (int)exit_status;
  if (cancel) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED;
    snprintf(reason, sizeof reason, "cancelled by user");
  } else if (co->shutting_down && !term_signal && exit_status == WORKER_EXIT_PREEMPTED) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED;
    snprintf(reason, sizeof reason, "dpod shut down; the job stopped at a checkpoint");
  } else if (co->shutting_down) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    snprintf(reason, sizeof reason, "dpod shut down");
  } else if (term_signal) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    snprintf(reason, sizeof reason, "killed by signal %d", term_signal);
  } else if (exit_status == WORKER_EXIT_OK) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
    reason[0] = '\0';
  } else if (exit_status == WORKER_EXIT_PREEMPTED) {
    state = DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED;
    snprintf(reason, sizeof reason, "preempted after a checkpoint (exit status %d)", (int)exit_status);
  } else {
    state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    char run_dir[PATH_MAX], line[300];
    snprintf(run_dir, sizeof run_dir, "%s/%llu", co->jobs_dir, (unsigned long long)j->id);
    launcher_last_error_line(run_dir, line, sizeof line);
    snprintf(reason, sizeof reason, "dpo-worker exited with status %d%s%s", (int)exit_status,
             line[0] ? ": " : "", line);
  }

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

/* Launches a job the scheduler has given slots to. On failure the job ends FAILED and the slots are
 * returned (the caller's loop then considers the next job). */
static void coord_launch(coord *co, uint64_t id, unsigned ranks) {
  Dpod__V1__Job *job = NULL;
  coord_job *j = NULL;
  uint8_t *spec_pb = NULL;
  char err[512] = "";
  char secret[JOB_SECRET_HEX_LEN + 1];

  if (job_store_get(co->store, id, &job) != 0) {
    snprintf(err, sizeof err, "cannot read the job: %s", job_store_last_error(co->store));
    goto fail;
  }
  if (launcher_make_secret(secret) != 0) {
    snprintf(err, sizeof err, "cannot generate a secret: %s", strerror(errno));
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
  launcher_job lj = {
      .job_id = id,
      .ranks = ranks,
      .threads_per_rank = job->spec->threads_per_rank,
      .run_dir = job->run_dir,
      .secret = secret,
      .spec_pb = spec_pb,
      .spec_len = spec_len,
  };
  if (launcher_start(co->loop, &co->lp, &lj, coord_on_exit, j, &j->proc, err, sizeof err) != 0) goto fail;
  /* Should this daemon die, the next one finds what is left of the job by this. */
  if (job_store_set_session(co->store, id, launcher_pid(j->proc)) != 0)
    log_warn("job %llu: cannot store its session: %s", (unsigned long long)id, job_store_last_error(co->store));
  uv_timer_init(co->loop, j->timer);
  j->timer->data = j;
  j->next = co->jobs;
  if (co->jobs) co->jobs->prev = j;
  co->jobs = j;
  co->n_jobs++;
  /* Appended before any Report can be handled: those run on this thread, after we return. */
  coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, NULL, 0);
  goto done;

fail:
  log_error("job %llu: launch failed: %s", (unsigned long long)id, err);
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
 * Handlers. Each unpacks its request, refusing a malformed one, and ends its call before returning. */

#define COORD_UNPACK(type, fn, call, req, len)                                      \
  type *msg = fn(NULL, (len), (req));                                               \
  if (!msg) {                                                                       \
    rpc_call_fail((call), GRPC_STATUS_INVALID_ARGUMENT, "malformed " #type);        \
    return;                                                                         \
  }

static void coord_fail_store(coord *co, rpc_call *call, int status, uint64_t id) {
  if (status == DPOD_ENOENT)
    rpc_call_fail(call, GRPC_STATUS_NOT_FOUND, "job %llu not found", (unsigned long long)id);
  else
    rpc_call_fail(call, GRPC_STATUS_INTERNAL, "job store: %s", job_store_last_error(co->store));
}

static void coord_health_check(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  const coord *co = arg;
  Grpc__Health__V1__HealthCheckRequest *msg = grpc__health__v1__health_check_request__unpack(NULL, len, req);
  if (!msg) {
    rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "malformed HealthCheckRequest");
    return;
  }
  const char *svc = msg->service ? msg->service : "";
  if (strcmp(svc, "") == 0 || strcmp(svc, "dpod.v1.Coordinator") == 0) {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    /* While it stops its jobs a shutting-down dpod still answers, but takes no new work. */
    resp.status = co->shutting_down ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                                    : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    rpc_call_reply(call, &resp.base);
  } else {
    rpc_call_fail(call, GRPC_STATUS_NOT_FOUND, "unknown service \"%.200s\"", svc);
  }
  protobuf_c_message_free_unpacked(&msg->base, NULL);
}

static void coord_submit_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  coord *co = arg;
  Dpod__V1__Job *job = NULL;
  COORD_UNPACK(Dpod__V1__SubmitJobRequest, dpod__v1__submit_job_request__unpack, call, req, len);
  Dpod__V1__JobSpec *spec = msg->spec;
  msg->spec = NULL; /* taken: normalize may replace its sub-messages */
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  if (!spec && !(spec = job_spec_new())) {
    rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  char err[512];
  uint64_t id = 0;
  int status;
  if (co->shutting_down) {
    rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "dpod is shutting down");
    goto done;
  }
  if (job_spec_normalize(spec) != 0) {
    rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  if (job_spec_validate(spec, co->queue.slots, err, sizeof err) != 0) {
    rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", err);
    goto done;
  }
  if ((status = job_store_create(co->store, spec, co->jobs_dir, coord_now_ms(), &id)) != 0) {
    coord_fail_store(co, call, status, 0);
    goto done;
  }
  log_info("job %llu submitted: \"%s\", %u ranks", (unsigned long long)id, spec->name ? spec->name : "",
           spec->ranks);
  if (job_queue_enqueue(&co->queue, id, spec->ranks) != 0) {
    /* Validation already bounded ranks by the slots, so only memory can fail here. */
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "cannot queue the job", -1);
  }
  coord_schedule(co);
  if ((status = job_store_get(co->store, id, &job)) != 0) {
    coord_fail_store(co, call, status, id);
    goto done;
  }
  Dpod__V1__SubmitJobResponse resp = DPOD__V1__SUBMIT_JOB_RESPONSE__INIT;
  resp.job = job;
  rpc_call_reply(call, &resp.base);

done:
  if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
  protobuf_c_message_free_unpacked(&spec->base, NULL);
}

static void coord_get_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  coord *co = arg;
  COORD_UNPACK(Dpod__V1__GetJobRequest, dpod__v1__get_job_request__unpack, call, req, len);
  Dpod__V1__Job *job = NULL;
  int status = job_store_get(co->store, msg->job_id, &job);
  if (status != 0) {
    coord_fail_store(co, call, status, msg->job_id);
  } else {
    Dpod__V1__GetJobResponse resp = DPOD__V1__GET_JOB_RESPONSE__INIT;
    resp.job = job;
    rpc_call_reply(call, &resp.base);
    protobuf_c_message_free_unpacked(&job->base, NULL);
  }
  protobuf_c_message_free_unpacked(&msg->base, NULL);
}

static void coord_list_jobs(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  coord *co = arg;
  COORD_UNPACK(Dpod__V1__ListJobsRequest, dpod__v1__list_jobs_request__unpack, call, req, len);
  uint32_t limit = msg->limit == 0 || msg->limit > COORD_LIST_MAX ? (msg->limit ? COORD_LIST_MAX : 100) : msg->limit;
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  int status = job_store_list(co->store, (const Dpod__V1__JobState *)msg->states, msg->n_states, limit, false,
                              &jobs, &n);
  if (status != 0) {
    coord_fail_store(co, call, status, 0);
  } else {
    Dpod__V1__ListJobsResponse resp = DPOD__V1__LIST_JOBS_RESPONSE__INIT;
    resp.jobs = jobs;
    resp.n_jobs = n;
    rpc_call_reply(call, &resp.base);
    job_store_free_jobs(jobs, n);
  }
  protobuf_c_message_free_unpacked(&msg->base, NULL);
}

static void coord_cancel_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  coord *co = arg;
  COORD_UNPACK(Dpod__V1__CancelJobRequest, dpod__v1__cancel_job_request__unpack, call, req, len);
  uint64_t id = msg->job_id;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  job_info info;
  int status = job_store_get_info(co->store, id, &info);
  if (status != 0) {
    coord_fail_store(co, call, status, id);
    return;
  }
  if (job_state_is_terminal(info.state)) {
    rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "job %llu is already %s", (unsigned long long)id,
                  job_state_name(info.state));
    return;
  }
  if (info.state == DPOD__V1__JOB_STATE__JOB_STATE_QUEUED) {
    job_queue_remove(&co->queue, id);
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED, "cancelled by user", 0);
    /* The cancelled job may have been the head blocking the queue. */
    coord_schedule(co);
  } else {
    coord_job *j = coord_find_job(co, id);
    if (!j) {
      rpc_call_fail(call, GRPC_STATUS_INTERNAL, "job %llu is %s but has no process", (unsigned long long)id,
                    job_state_name(info.state));
      return;
    }
    if (!j->cancel_requested) {
      j->cancel_requested = true;
      if ((status = job_store_set_cancel_requested(co->store, id)) != 0) {
        coord_fail_store(co, call, status, id);
        return;
      }
      log_info("job %llu: cancel requested", (unsigned long long)id);
      /* The worker sees the directive on its next report and stops cleanly; if it has not exited by
       * the end of the grace period, the stop timer takes over. */
      if (j->stop_stage == 0) uv_timer_start(j->timer, coord_stop_timer, co->cancel_term_ms, 0);
    }
  }
  Dpod__V1__Job *job = NULL;
  if ((status = job_store_get(co->store, id, &job)) != 0) {
    coord_fail_store(co, call, status, id);
    return;
  }
  Dpod__V1__CancelJobResponse resp = DPOD__V1__CANCEL_JOB_RESPONSE__INIT;
  resp.job = job;
  rpc_call_reply(call, &resp.base);
  protobuf_c_message_free_unpacked(&job->base, NULL);
}

static void coord_restart_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  coord *co = arg;
  COORD_UNPACK(Dpod__V1__RestartJobRequest, dpod__v1__restart_job_request__unpack, call, req, len);
  uint64_t id = msg->job_id;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  Dpod__V1__Job *job = NULL;
  int status = job_store_get(co->store, id, &job);
  if (status != 0) {
    coord_fail_store(co, call, status, id);
    return;
  }
  Dpod__V1__JobState s = job->state;
  if (s != DPOD__V1__JOB_STATE__JOB_STATE_FAILED && s != DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED &&
      s != DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED) {
    rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
                  "job %llu is %s; only failed, cancelled or preempted jobs can be restarted", (unsigned long long)id,
                  job_state_name(s));
    goto done;
  }
  if (co->shutting_down) {
    rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "dpod is shutting down");
    goto done;
  }
  if (job_queue_enqueue(&co->queue, id, job->spec->ranks) != 0) {
    rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "job %llu needs %u slots, dpod has %u",
                  (unsigned long long)id, job->spec->ranks, co->queue.slots);
    goto done;
  }
  coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, "restarted by user", 0);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  job = NULL;
  if ((status = job_store_get(co->store, id, &job)) != 0) {
    coord_fail_store(co, call, status, id);
    coord_schedule(co);
    return;
  }
  Dpod__V1__RestartJobResponse resp = DPOD__V1__RESTART_JOB_RESPONSE__INIT;
  resp.job = job;
  rpc_call_reply(call, &resp.base);
  coord_schedule(co);
done:
  if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
}

static void coord_watch_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  coord *co = arg;
  COORD_UNPACK(Dpod__V1__WatchJobRequest, dpod__v1__watch_job_request__unpack, call, req, len);
  uint64_t id = msg->job_id, after = msg->after_seq;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  job_info info;
  int status = job_store_get_info(co->store, id, &info);
  if (status != 0) {
    coord_fail_store(co, call, status, id);
    return;
  }
  coord_watch *w = calloc(1, sizeof *w);
  if (!w) {
    rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->co = co;
  w->call = call;
  w->job_id = id;
  w->next_seq = after == UINT64_MAX ? after : after + 1;
  w->next = co->watches;
  if (co->watches) co->watches->prev = w;
  co->watches = w;
  co->n_watches++;
  rpc_call_set_stream(call, coord_watch_sent, coord_watch_done, w);
  log_debug("watch of job %llu from seq %llu", (unsigned long long)id, (unsigned long long)w->next_seq);
  coord_watch_pump(w);
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

static void coord_report(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  coord *co = arg;
  COORD_UNPACK(Dpod__V1__ReportRequest, dpod__v1__report_request__unpack, call, req, len);
  uint64_t id = msg->job_id;
  job_info info;
  int status = job_store_get_info(co->store, id, &info);
  /* An unknown job and a wrong secret look the same to the caller. */
  if ((status != 0 && status != DPOD_ENOENT)) {
    coord_fail_store(co, call, status, id);
    goto done;
  }
  if (status == DPOD_ENOENT || !coord_secret_ok(info.secret, msg->secret)) {
    log_warn("report for job %llu refused: unknown job or wrong secret", (unsigned long long)id);
    rpc_call_fail(call, GRPC_STATUS_UNAUTHENTICATED, "unknown job or wrong secret");
    goto done;
  }
  if (info.state != DPOD__V1__JOB_STATE__JOB_STATE_STARTING && info.state != DPOD__V1__JOB_STATE__JOB_STATE_RUNNING) {
    rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "job %llu is %s", (unsigned long long)id,
                  job_state_name(info.state));
    goto done;
  }
  /* The first authenticated report means rank 0 is up. */
  if (info.state == DPOD__V1__JOB_STATE__JOB_STATE_STARTING)
    coord_append_state(co, id, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, NULL, 0);
  int64_t now = coord_now_ms();
  for (size_t i = 0; i < msg->n_events; i++) {
    const Dpod__V1__WorkerEvent *we = msg->events[i];
    Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
    switch (we->event_case) {
      case DPOD__V1__WORKER_EVENT__EVENT_STARTED:
        log_info("job %llu: worker started (%u ranks, %u steps, %llu parameters, from step %u)",
                 (unsigned long long)id, we->started->world_size, we->started->total_steps,
                 (unsigned long long)we->started->parameters, we->started->start_step);
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
      default:
        continue; /* an event kind from a newer worker */
    }
    uint64_t seq = 0;
    if ((status = job_store_append(co->store, id, &ev, now, &seq)) != 0) {
      coord_fail_store(co, call, status, id);
      goto done;
    }
    if (seq == 0) log_debug("job %llu: duplicate event skipped", (unsigned long long)id);
  }
  coord_notify(co, id);

  Dpod__V1__ReportResponse resp = DPOD__V1__REPORT_RESPONSE__INIT;
  coord_job *j = coord_find_job(co, id);
  if (info.cancel_requested || (j && j->cancel_requested)) {
    resp.has_directive = 1;
    resp.directive = DPOD__V1__DIRECTIVE__DIRECTIVE_CANCEL;
  }
  rpc_call_reply(call, &resp.base);

done:
  protobuf_c_message_free_unpacked(&msg->base, NULL);
}

/* ---------------------------------------------------------------------------------------------------
 * Life cycle. */

int coord_open(uv_loop_t *loop, const coord_params *p, coord **out, char *err, size_t errlen) {
  int status = DPOD_ENOMEM;
  coord *co = calloc(1, sizeof *co);
  *out = NULL;
  if (!co) goto nomem;
  co->loop = loop;
  co->cancel_term_ms = p->cancel_term_ms;
  co->cancel_kill_ms = p->cancel_kill_ms;
  co->shutdown_kill_ms = p->shutdown_kill_ms;
  job_queue_init(&co->queue, p->slots);
  co->state_dir = strdup(p->state_dir);
  co->report_addr = strdup(p->report_addr);
  co->worker = strdup(p->worker);
  co->mpirun = strdup(p->mpirun);
  size_t jl = strlen(p->state_dir) + sizeof "/jobs";
  if (!co->state_dir || !co->report_addr || !co->worker || !co->mpirun || !(co->jobs_dir = malloc(jl)))
    goto nomem;
  snprintf(co->jobs_dir, jl, "%s/jobs", p->state_dir);
  co->lp.mpirun = co->mpirun;
  co->lp.worker = co->worker;
  co->lp.report_addr = co->report_addr;

  if ((status = dpod_mkdirs(co->jobs_dir, 0700, 0, err, errlen)) != 0) goto fail;
  char db[PATH_MAX];
  snprintf(db, sizeof db, "%s/dpod.db", p->state_dir);
  if ((status = job_store_open(db, &co->store, err, errlen)) != 0) goto fail;
  *out = co;
  return 0;

nomem:
  snprintf(err, errlen, "out of memory");
fail:
  coord_free(co);
  return status;
}

int coord_register(coord *co, rpc_server *srv) {
  static const struct {
    const char *path;
    rpc_handler fn;
  } methods[] = {
      {"/dpod.v1.Coordinator/SubmitJob", coord_submit_job},
      {"/dpod.v1.Coordinator/GetJob", coord_get_job},
      {"/dpod.v1.Coordinator/ListJobs", coord_list_jobs},
      {"/dpod.v1.Coordinator/CancelJob", coord_cancel_job},
      {"/dpod.v1.Coordinator/RestartJob", coord_restart_job},
      {"/dpod.v1.Coordinator/WatchJob", coord_watch_job},
      {"/dpod.v1.WorkerReport/Report", coord_report},
      {"/grpc.health.v1.Health/Check", coord_health_check},
  };
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    int status = rpc_server_add_method(srv, methods[i].path, methods[i].fn, co);
    if (status != 0) return status;
  }
  return 0;
}

/* A job the previous daemon was running when it stopped. Its processes are not this daemon's children,
 * so it can neither watch them nor learn their exit status, and their slots would be handed out again:
 * what is left of them is killed and the job fails, to be resumed from its newest checkpoint with
 * RestartJob. (Adopting the running job instead belongs to the crash-recovery work.) */
static void coord_recover_interrupted(coord *co, const Dpod__V1__Job *job) {
  job_info info;
  int stopped = 0;
  if (job_store_get_info(co->store, job->id, &info) == 0)
    stopped = launcher_stop_orphans(info.session, job->run_dir);
  char reason[160];
  if (stopped > 0) {
    snprintf(reason, sizeof reason, "dpod restarted while the job was running; stopped its %d remaining processes",
             stopped);
    log_warn("job %llu: %s", (unsigned long long)job->id, reason);
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
  /* run_with_period(60000): a heartbeat in the debug log. */
  uint64_t every = period_ms ? 60000 / period_ms : 1;
  if (every == 0 || loops % every == 0)
    log_debug("%zu jobs running, %zu queued, %u/%u slots free, %zu watchers", co->n_jobs, co->queue.queued,
              co->queue.free_slots, co->queue.slots, co->n_watches);
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
    /* Ranks that get the signal themselves checkpoint and exit "preempted", resumable with RestartJob;
     * a job with no rank started yet is simply stopped. */
    if (launcher_preempt(j->proc) == 0) launcher_kill(j->proc, SIGTERM);
    j->stop_stage = 1;
    uv_timer_start(j->timer, coord_stop_timer, co->shutdown_kill_ms, 0);
  }
}

void coord_free(coord *co) {
  if (!co) return;
  if (co->n_jobs || co->n_watches)
    log_error("coord_free with %zu jobs and %zu watchers left", co->n_jobs, co->n_watches);
  job_store_close(co->store);
  job_queue_free(&co->queue);
  free(co->state_dir);
  free(co->jobs_dir);
  free(co->report_addr);
  free(co->worker);
  free(co->mpirun);
  free(co);
}
