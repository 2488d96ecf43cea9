/* A real dpod, driven over gRPC with proto/rpc_client.h. Jobs run under the real mpirun with
 * fake_worker.sh standing in for dpo-worker. Every test starts its own daemon in a fresh state
 * directory and ends by checking that SIGTERM makes it exit 0 and remove its socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <grpc/status.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dpod.pb-c.h"
#include "dpod_error.h"
#include "health.pb-c.h"
#include "job_spec.h"
#include "rpc_client.h"

#ifndef DPOD_BIN
#error "DPOD_BIN must name the dpod binary"
#endif
#ifndef FAKE_WORKER
#error "FAKE_WORKER must name tests/daemon/fake_worker.sh"
#endif

typedef struct {
  char dir[PATH_MAX];
  char state[PATH_MAX + 8];
  char sock[PATH_MAX + 16];
  char addr[PATH_MAX + 24];
  pid_t pid;
  rpc_client *c;
} daemon_fx;

static char err[1024];

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

static int health(daemon_fx *d, const char *service, int *serving);

static int daemon_start(daemon_fx *d) {
  char log[PATH_MAX + 16];
  snprintf(log, sizeof log, "%s/dpod.log", d->dir);
  d->pid = fork();
  if (d->pid == 0) {
    FILE *f = freopen(log, "a", stderr);
    (void)f;
    execl(DPOD_BIN, "dpod", "--listen", d->addr, "--state-dir", d->state, "--slots", "2", "--worker", FAKE_WORKER,
          "--log-level", "debug", (char *)NULL);
    _exit(127);
  }
  /* The socket file may be a stale one from a killed daemon: wait for an answer, not for the file. */
  for (int i = 0; i < 200 && !file_exists(d->sock); i++) sleep_ms(50);
  if (rpc_client_open(d->addr, &d->c, err, sizeof err) != 0) return -1;
  for (int i = 0; i < 200; i++) {
    int serving = 0;
    if (health(d, "", &serving) == 0 && serving) return 0;
    sleep_ms(50);
  }
  return -1;
}

/* SIGTERM, then the exit status (or -1 if it did not exit within 20 s). */
static int daemon_stop(daemon_fx *d) {
  rpc_client_close(d->c);
  d->c = NULL;
  kill(d->pid, SIGTERM);
  int status;
  for (int i = 0; i < 400; i++) {
    pid_t r = waitpid(d->pid, &status, WNOHANG);
    if (r == d->pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    sleep_ms(50);
  }
  kill(d->pid, SIGKILL);
  waitpid(d->pid, &status, 0);
  return -1;
}

static int setup(void **state) {
  daemon_fx *d = calloc(1, sizeof *d);
  if (test_mkdtemp(d->dir, sizeof d->dir, "dpod-rpc") != 0) return -1;
  snprintf(d->state, sizeof d->state, "%s/state", d->dir);
  snprintf(d->sock, sizeof d->sock, "%s/run/dpod.sock", d->dir);
  snprintf(d->addr, sizeof d->addr, "unix:%s", d->sock);
  *state = d;
  if (daemon_start(d) != 0) {
    fprintf(stderr, "dpod did not start: %s\n", err);
    return -1;
  }
  return 0;
}

/* The same daemon with its socket deeper than a sockaddr_un's 108 bytes can name. */
static int setup_long_socket(void **state) {
  daemon_fx *d = calloc(1, sizeof *d);
  if (test_mkdtemp(d->dir, sizeof d->dir, "dpod-rpc") != 0) return -1;
  snprintf(d->state, sizeof d->state, "%s/state", d->dir);
  if (snprintf(d->sock, sizeof d->sock, "%s/run/a-directory-name-long-enough/that-no-sockaddr_un/"
               "could-hold-the-path/of-the-socket/in-it/dpod.sock", d->dir) >= (int)sizeof d->sock)
    return -1;
  snprintf(d->addr, sizeof d->addr, "unix:%s", d->sock);
  *state = d;
  if (daemon_start(d) != 0) {
    fprintf(stderr, "dpod did not start: %s\n", err);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  daemon_fx *d = *state;
  int rc = daemon_stop(d);
  int sock_left = file_exists(d->sock);
  if (rc != 0 || sock_left) {
    char cmd[PATH_MAX + 32];
    fprintf(stderr, "dpod exit status %d, socket %s; its log:\n", rc, sock_left ? "left behind" : "removed");
    snprintf(cmd, sizeof cmd, "cat %s/dpod.log >&2", d->dir);
    if (system(cmd)) {
    }
  }
  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf %s", d->dir);
  if (system(cmd)) {
  }
  free(d);
  return rc == 0 && !sock_left ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------------ */

static Dpod__V1__Job *get_job(daemon_fx *d, uint64_t id) {
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  ProtobufCMessage *resp = NULL;
  if (rpc_unary(d->c, "/dpod.v1.Coordinator/GetJob", &req.base, &dpod__v1__get_job_response__descriptor, &resp,
                5000, err, sizeof err) != 0)
    return NULL;
  Dpod__V1__GetJobResponse *r = (Dpod__V1__GetJobResponse *)resp;
  Dpod__V1__Job *job = r->job;
  r->job = NULL;
  protobuf_c_message_free_unpacked(resp, NULL);
  return job;
}

static uint64_t submit(daemon_fx *d, const char *name, unsigned ranks) {
  Dpod__V1__JobSpec *spec = job_spec_new();
  spec->name = strdup(name);
  spec->has_ranks = 1;
  spec->ranks = ranks;
  Dpod__V1__SubmitJobRequest req = DPOD__V1__SUBMIT_JOB_REQUEST__INIT;
  req.spec = spec;
  ProtobufCMessage *resp = NULL;
  int rc = rpc_unary(d->c, "/dpod.v1.Coordinator/SubmitJob", &req.base, &dpod__v1__submit_job_response__descriptor,
                     &resp, 5000, err, sizeof err);
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  if (rc != 0) {
    fprintf(stderr, "submit: %s\n", err);
    return 0;
  }
  uint64_t id = ((Dpod__V1__SubmitJobResponse *)resp)->job->id;
  protobuf_c_message_free_unpacked(resp, NULL);
  return id;
}

/* Polls until the job is in `want` (or 20 s pass); returns the state it ended up in. */
static Dpod__V1__JobState wait_state(daemon_fx *d, uint64_t id, Dpod__V1__JobState want) {
  Dpod__V1__JobState st = DPOD__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
  for (int i = 0; i < 400; i++) {
    Dpod__V1__Job *job = get_job(d, id);
    if (job) {
      st = job->state;
      protobuf_c_message_free_unpacked(&job->base, NULL);
      if (st == want) break;
    }
    sleep_ms(50);
  }
  return st;
}

static int cancel(daemon_fx *d, uint64_t id) {
  Dpod__V1__CancelJobRequest req = DPOD__V1__CANCEL_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  ProtobufCMessage *resp = NULL;
  int rc = rpc_unary(d->c, "/dpod.v1.Coordinator/CancelJob", &req.base, &dpod__v1__cancel_job_response__descriptor,
                     &resp, 5000, err, sizeof err);
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return rc;
}

static void run_file(daemon_fx *d, uint64_t id, const char *name, char *buf, size_t len) {
  snprintf(buf, len, "%s/jobs/%llu/%s", d->state, (unsigned long long)id, name);
}

/* How many live processes have `arg` as one of their command-line arguments. */
static int procs_with_arg(const char *arg) {
  DIR *dir = opendir("/proc");
  int n = 0;
  struct dirent *e;
  while (dir && (e = readdir(dir)) != NULL) {
    char path[300], buf[8192];
    snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
      if (strcmp(buf + i, arg) == 0) {
        n++;
        break;
      }
  }
  if (dir) closedir(dir);
  return n;
}

static void touch(const char *path) {
  FILE *f = fopen(path, "w");
  if (f) fclose(f);
}

/* Reads every event of a watch from after_seq to the end of the stream into states/kinds. */
static int watch_all(daemon_fx *d, uint64_t id, uint64_t after, Dpod__V1__JobEvent **evs, int max) {
  Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  req.has_after_seq = 1;
  req.after_seq = after;
  rpc_stream *s = NULL;
  if (rpc_stream_open(d->c, "/dpod.v1.Coordinator/WatchJob", &req.base, &s, err, sizeof err) != 0) return -1;
  int n = 0, rc;
  ProtobufCMessage *m;
  while ((rc = rpc_stream_next(s, &dpod__v1__job_event__descriptor, &m, 20000, err, sizeof err)) == 1) {
    if (n < max) evs[n++] = (Dpod__V1__JobEvent *)m;
    else protobuf_c_message_free_unpacked(m, NULL);
  }
  rpc_stream_close(s);
  return rc == 0 ? n : rc;
}

static void free_events(Dpod__V1__JobEvent **evs, int n) {
  for (int i = 0; i < n; i++) protobuf_c_message_free_unpacked(&evs[i]->base, NULL);
}

/* ------------------------------------------------------------------------------------------------ */

static int health(daemon_fx *d, const char *service, int *serving) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  ProtobufCMessage *resp = NULL;
  int rc = rpc_unary(d->c, "/grpc.health.v1.Health/Check", &req.base, &grpc__health__v1__health_check_response__descriptor,
                     &resp, 5000, err, sizeof err);
  if (rc == 0) {
    *serving = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status ==
               GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return rc;
}

static void health_check_reports_serving(void **state) {
  daemon_fx *d = *state;
  int serving = 0;
  assert_int_equal(health(d, "", &serving), 0);
  assert_true(serving);
  assert_int_equal(health(d, "dpod.v1.Coordinator", &serving), 0);
  assert_true(serving);
  assert_int_equal(health(d, "no.such.Service", &serving), DPOD_ENOENT);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_NOT_FOUND);
}

static void malformed_requests_are_refused_and_the_daemon_lives_on(void **state) {
  daemon_fx *d = *state;
  /* Field 1 as a string where GetJobRequest has a varint. */
  Grpc__Health__V1__HealthCheckRequest bogus = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  bogus.service = "not a job id";
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/GetJob", &bogus.base, &dpod__v1__get_job_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   DPOD_EINVAL);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "malformed"));
  /* Field 1 of SubmitJobRequest is a JobSpec: these bytes are not one. */
  bogus.service = "\xff\xff\xff\xff";
  for (int i = 0; i < 3; i++) {
    const char *methods[] = {"/dpod.v1.Coordinator/SubmitJob", "/dpod.v1.WorkerReport/Report",
                             "/dpod.v1.Coordinator/ListJobs"};
    assert_int_equal(rpc_unary(d->c, methods[i], &bogus.base, &dpod__v1__get_job_response__descriptor, &resp, 5000,
                               err, sizeof err),
                     DPOD_EINVAL);
  }
  int serving = 0;
  assert_int_equal(health(d, "", &serving), 0);
  assert_true(serving);
}

static void unknown_methods_are_unimplemented(void **state) {
  daemon_fx *d = *state;
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/Explode", &req.base, &dpod__v1__get_job_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   DPOD_ERPC);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_UNIMPLEMENTED);
  assert_int_equal(rpc_unary(d->c, "/grpc.health.v1.Health/Watch", &req.base, &dpod__v1__get_job_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   DPOD_ERPC);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_UNIMPLEMENTED);
}

static void unknown_jobs_are_not_found(void **state) {
  daemon_fx *d = *state;
  assert_null(get_job(d, 12345));
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_NOT_FOUND);
  assert_int_equal(cancel(d, 12345), DPOD_ENOENT);
  Dpod__V1__JobEvent *evs[4];
  assert_int_equal(watch_all(d, 12345, 0, evs, 4), DPOD_ENOENT);
}

static void submit_refuses_more_ranks_than_slots(void **state) {
  daemon_fx *d = *state;
  assert_int_equal(submit(d, "big", 3), 0);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "ranks"));
}

static void serves_on_a_socket_path_longer_than_sun_path(void **state) {
  daemon_fx *d = *state;
  assert_true(strlen(d->sock) > 108);
  int serving = 0;
  assert_int_equal(health(d, "", &serving), 0);
  assert_true(serving);
  uint64_t id = submit(d, "ok", 1);
  Dpod__V1__JobEvent *evs[16];
  int n = watch_all(d, id, 0, evs, 16);
  assert_int_equal(n, 3);
  assert_int_equal(evs[2]->state->state, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  free_events(evs, n);
}

static void job_succeeds_and_watch_replays_every_event(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "ok", 1);
  assert_true(id > 0);
  Dpod__V1__JobEvent *evs[16];
  int n = watch_all(d, id, 0, evs, 16);
  assert_int_equal(n, 3);
  static const Dpod__V1__JobState want[] = {DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, DPOD__V1__JOB_STATE__JOB_STATE_STARTING,
                                            DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED};
  for (int i = 0; i < n; i++) {
    assert_int_equal(evs[i]->seq, (uint64_t)i + 1);
    assert_int_equal(evs[i]->event_case, DPOD__V1__JOB_EVENT__EVENT_STATE);
    assert_int_equal(evs[i]->state->state, want[i]);
  }
  free_events(evs, n);
  /* A watch that starts at the end of a finished job ends at once. */
  assert_int_equal(watch_all(d, id, 3, evs, 16), 0);
  assert_int_equal(watch_all(d, id, 2, evs, 16), 1);
  free_events(evs, 1);

  Dpod__V1__Job *job = get_job(d, id);
  assert_non_null(job);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(job->exit_code, 0);
  assert_int_equal(job->last_seq, 3);
  assert_non_null(job->spec->train); /* normalized */
  char path[PATH_MAX * 2];
  run_file(d, id, "spec.pb", path, sizeof path);
  assert_true(file_exists(path));
  run_file(d, id, "secret", path, sizeof path);
  FILE *f = fopen(path, "r");
  char secret[80] = "";
  assert_non_null(f);
  assert_non_null(fgets(secret, sizeof secret, f));
  fclose(f);
  assert_int_equal(strlen(secret), 64);
  protobuf_c_message_free_unpacked(&job->base, NULL);
}

static void failed_worker_reason_quotes_its_error_line(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "fail1", 1);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  Dpod__V1__Job *job = get_job(d, id);
  assert_non_null(job);
  assert_int_equal(job->exit_code, 1);
  assert_non_null(strstr(job->reason, "exited with status 1"));
  assert_non_null(strstr(job->reason, "ERROR something broke"));
  protobuf_c_message_free_unpacked(&job->base, NULL);

  id = submit(d, "preempt", 1);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED), DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED);
}

static int report(daemon_fx *d, uint64_t id, const char *secret, const unsigned *steps, int n_steps, int *directive) {
  Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  req.secret = (char *)secret;
  Dpod__V1__WorkerEvent wev[8], *pev[8];
  Dpod__V1__WorkerStarted started = DPOD__V1__WORKER_STARTED__INIT;
  Dpod__V1__StepMetrics m[8];
  wev[0] = (Dpod__V1__WorkerEvent)DPOD__V1__WORKER_EVENT__INIT;
  wev[0].event_case = DPOD__V1__WORKER_EVENT__EVENT_STARTED;
  wev[0].started = &started;
  pev[0] = &wev[0];
  for (int i = 0; i < n_steps; i++) {
    m[i] = (Dpod__V1__StepMetrics)DPOD__V1__STEP_METRICS__INIT;
    m[i].has_step = 1;
    m[i].step = steps[i];
    wev[i + 1] = (Dpod__V1__WorkerEvent)DPOD__V1__WORKER_EVENT__INIT;
    wev[i + 1].event_case = DPOD__V1__WORKER_EVENT__EVENT_METRICS;
    wev[i + 1].metrics = &m[i];
    pev[i + 1] = &wev[i + 1];
  }
  req.events = pev;
  req.n_events = (size_t)n_steps + 1;
  ProtobufCMessage *resp = NULL;
  int rc = rpc_unary(d->c, "/dpod.v1.WorkerReport/Report", &req.base, &dpod__v1__report_response__descriptor, &resp,
                     5000, err, sizeof err);
  if (rc == 0) {
    *directive = ((Dpod__V1__ReportResponse *)resp)->directive;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return rc;
}

static void reports_are_authenticated_deduplicated_and_carry_the_cancel(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "hold", 1);
  char path[PATH_MAX * 2], secret[80] = "";
  run_file(d, id, "secret", path, sizeof path);
  for (int i = 0; i < 200 && !file_exists(path); i++) sleep_ms(50);
  sleep_ms(50);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  assert_non_null(fgets(secret, sizeof secret, f));
  fclose(f);

  int directive = -1;
  unsigned steps[] = {1, 1, 2};
  assert_int_equal(report(d, id, "0000", steps, 3, &directive), DPOD_EAUTH);
  assert_int_equal(report(d, id + 100, secret, steps, 3, &directive), DPOD_EAUTH);
  assert_int_equal(report(d, id, secret, steps, 3, &directive), 0);
  assert_int_equal(directive, DPOD__V1__DIRECTIVE__DIRECTIVE_NONE);
  assert_int_equal(report(d, id, secret, steps, 3, &directive), 0); /* a retry */

  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING);
  assert_int_equal(job->last_seq, 5); /* queued, starting, running, step 1, step 2 */
  assert_non_null(job->last_metrics);
  assert_int_equal(job->last_metrics->step, 2);
  protobuf_c_message_free_unpacked(&job->base, NULL);

  assert_int_equal(cancel(d, id), 0);
  assert_int_equal(report(d, id, secret, steps, 0, &directive), 0);
  assert_int_equal(directive, DPOD__V1__DIRECTIVE__DIRECTIVE_CANCEL);
  /* The fake worker ignores the directive: the daemon's SIGTERM after the grace period ends it. */
  Dpod__V1__JobEvent *evs[16];
  int n = watch_all(d, id, 3, evs, 16);
  assert_int_equal(n, 3);
  assert_int_equal(evs[0]->seq, 4);
  assert_int_equal(evs[0]->event_case, DPOD__V1__JOB_EVENT__EVENT_METRICS);
  assert_int_equal(evs[1]->metrics->step, 2);
  assert_int_equal(evs[2]->state->state, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
  assert_string_equal(evs[2]->state->reason, "cancelled by user");
  free_events(evs, n);

  assert_int_equal(cancel(d, id), DPOD_ESTATE);
  assert_non_null(strstr(err, "cancelled"));
  assert_int_equal(report(d, id, secret, steps, 0, &directive), DPOD_ESTATE);
}

static void queued_job_waits_behind_the_head_and_cancels_at_once(void **state) {
  daemon_fx *d = *state;
  uint64_t a = submit(d, "hold", 2);
  uint64_t b = submit(d, "ok", 1);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  Dpod__V1__Job *job = get_job(d, b);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  assert_int_equal(cancel(d, b), 0);
  job = get_job(d, b);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
  protobuf_c_message_free_unpacked(&job->base, NULL);

  uint64_t c = submit(d, "ok", 1);
  char path[PATH_MAX * 2];
  run_file(d, a, "release", path, sizeof path);
  touch(path);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(wait_state(d, c, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);

  Dpod__V1__ListJobsRequest lreq = DPOD__V1__LIST_JOBS_REQUEST__INIT;
  Dpod__V1__JobState only = DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
  lreq.n_states = 1;
  lreq.states = &only;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/ListJobs", &lreq.base, &dpod__v1__list_jobs_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   0);
  Dpod__V1__ListJobsResponse *l = (Dpod__V1__ListJobsResponse *)resp;
  assert_int_equal(l->n_jobs, 2);
  assert_int_equal(l->jobs[0]->id, c); /* newest first */
  assert_int_equal(l->jobs[1]->id, a);
  protobuf_c_message_free_unpacked(resp, NULL);
}

static rpc_stream *watch_open(daemon_fx *d, uint64_t id) {
  Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  rpc_stream *s = NULL;
  assert_int_equal(rpc_stream_open(d->c, "/dpod.v1.Coordinator/WatchJob", &req.base, &s, err, sizeof err), 0);
  return s;
}

/* Reads one event and returns its seq (0 if the stream ended or failed). */
static uint64_t watch_next_seq(rpc_stream *s, Dpod__V1__JobState *state) {
  ProtobufCMessage *m = NULL;
  if (rpc_stream_next(s, &dpod__v1__job_event__descriptor, &m, 20000, err, sizeof err) != 1) return 0;
  Dpod__V1__JobEvent *ev = (Dpod__V1__JobEvent *)m;
  uint64_t seq = ev->seq;
  if (state) *state = ev->event_case == DPOD__V1__JOB_EVENT__EVENT_STATE ? ev->state->state : 0;
  protobuf_c_message_free_unpacked(m, NULL);
  return seq;
}

static void watchers_that_leave_are_forgotten(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "hold", 1);
  rpc_stream *w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = watch_open(d, id);
    assert_int_equal(watch_next_seq(w[i], NULL), 1);
  }
  /* Two leave at once, one after the next event, one stays to the end. */
  rpc_stream_close(w[0]);
  rpc_stream_close(w[1]);
  assert_int_equal(watch_next_seq(w[2], NULL), 2);
  rpc_stream_close(w[2]);
  char path[PATH_MAX * 2];
  run_file(d, id, "release", path, sizeof path);
  touch(path);
  Dpod__V1__JobState st = 0;
  assert_int_equal(watch_next_seq(w[3], NULL), 2);
  assert_int_equal(watch_next_seq(w[3], &st), 3);
  assert_int_equal(st, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(watch_next_seq(w[3], NULL), 0);
  rpc_stream_close(w[3]);
  int serving = 0;
  assert_int_equal(health(d, "", &serving), 0);
}

static void shutdown_and_crash_fail_running_jobs(void **state) {
  daemon_fx *d = *state;
  uint64_t a = submit(d, "hold", 1);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  /* A watcher open across the shutdown still gets the job's last event and a clean end. */
  rpc_stream *w = watch_open(d, a);
  assert_int_equal(watch_next_seq(w, NULL), 1);
  assert_int_equal(watch_next_seq(w, NULL), 2);
  rpc_client *c = d->c;
  d->c = NULL; /* keep the channel the stream lives on */
  assert_int_equal(daemon_stop(d), 0);
  assert_false(file_exists(d->sock));
  Dpod__V1__JobState st = 0;
  assert_int_equal(watch_next_seq(w, &st), 3);
  assert_int_equal(st, DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  ProtobufCMessage *m = NULL;
  assert_int_equal(rpc_stream_next(w, &dpod__v1__job_event__descriptor, &m, 5000, err, sizeof err), 0);
  rpc_stream_close(w);
  rpc_client_close(c);
  assert_int_equal(daemon_start(d), 0);
  Dpod__V1__Job *job = get_job(d, a);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  assert_string_equal(job->reason, "dpod shut down");
  protobuf_c_message_free_unpacked(&job->base, NULL);

  /* A daemon that dies without its shutdown leaves the job STARTING and its processes (mpirun and the
   * worker) running, holding slots nobody accounts for; the next daemon stops them and fails the job. */
  uint64_t b = submit(d, "hold", 1);
  assert_int_equal(wait_state(d, b, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  char run_dir[PATH_MAX * 2];
  run_file(d, b, "", run_dir, sizeof run_dir);
  run_dir[strlen(run_dir) - 1] = '\0'; /* no trailing slash: the argument as the launcher passed it */
  /* mpirun and the worker; now and then also the worker's child between fork and exec of a sleep. */
  for (int i = 0; i < 100 && procs_with_arg(run_dir) < 2; i++) usleep(50000);
  assert_true(procs_with_arg(run_dir) >= 2);
  rpc_client_close(d->c);
  d->c = NULL;
  kill(d->pid, SIGKILL);
  waitpid(d->pid, NULL, 0);
  assert_true(procs_with_arg(run_dir) >= 2); /* orphaned, still running */
  assert_int_equal(daemon_start(d), 0);
  job = get_job(d, b);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  int stopped = 0;
  assert_int_equal(sscanf(job->reason, "dpod restarted while the job was running; stopped its %d remaining processes",
                          &stopped),
                   1);
  assert_true(stopped >= 2);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  for (int i = 0; i < 100 && procs_with_arg(run_dir) > 0; i++) usleep(50000);
  assert_int_equal(procs_with_arg(run_dir), 0);
}

/* At shutdown the ranks get SIGTERM themselves; ranks that checkpoint and exit "preempted" leave the job
 * PREEMPTED, resumable, rather than FAILED. */
static void shutdown_preempts_jobs_whose_ranks_checkpoint(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "graceful", 1);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  char secret[PATH_MAX * 2];
  run_file(d, id, "secret", secret, sizeof secret); /* written once the rank runs */
  for (int i = 0; i < 200 && !file_exists(secret); i++) usleep(50000);
  assert_true(file_exists(secret));
  /* While the rank "checkpoints" (until the release file exists), dpod still answers: not serving, and
   * refusing new jobs. */
  kill(d->pid, SIGTERM);
  int serving = 1;
  for (int i = 0; i < 200 && serving; i++) {
    assert_int_equal(health(d, "", &serving), 0);
    if (serving) sleep_ms(50);
  }
  assert_false(serving);
  Dpod__V1__SubmitJobRequest req = DPOD__V1__SUBMIT_JOB_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/SubmitJob", &req.base,
                             &dpod__v1__submit_job_response__descriptor, &resp, 5000, err, sizeof err),
                   DPOD_ERPC);
  assert_non_null(strstr(err, "shutting down"));
  char release[PATH_MAX * 2];
  run_file(d, id, "release", release, sizeof release);
  touch(release);
  assert_int_equal(daemon_stop(d), 0);
  assert_int_equal(daemon_start(d), 0);
  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED);
  assert_string_equal(job->reason, "dpod shut down; the job stopped at a checkpoint");
  assert_int_equal(job->exit_code, 4);
  protobuf_c_message_free_unpacked(&job->base, NULL);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(health_check_reports_serving, setup, teardown),
      cmocka_unit_test_setup_teardown(serves_on_a_socket_path_longer_than_sun_path, setup_long_socket, teardown),
      cmocka_unit_test_setup_teardown(malformed_requests_are_refused_and_the_daemon_lives_on, setup, teardown),
      cmocka_unit_test_setup_teardown(unknown_methods_are_unimplemented, setup, teardown),
      cmocka_unit_test_setup_teardown(unknown_jobs_are_not_found, setup, teardown),
      cmocka_unit_test_setup_teardown(submit_refuses_more_ranks_than_slots, setup, teardown),
      cmocka_unit_test_setup_teardown(job_succeeds_and_watch_replays_every_event, setup, teardown),
      cmocka_unit_test_setup_teardown(failed_worker_reason_quotes_its_error_line, setup, teardown),
      cmocka_unit_test_setup_teardown(reports_are_authenticated_deduplicated_and_carry_the_cancel, setup, teardown),
      cmocka_unit_test_setup_teardown(queued_job_waits_behind_the_head_and_cancels_at_once, setup, teardown),
      cmocka_unit_test_setup_teardown(watchers_that_leave_are_forgotten, setup, teardown),
      cmocka_unit_test_setup_teardown(shutdown_and_crash_fail_running_jobs, setup, teardown),
      cmocka_unit_test_setup_teardown(shutdown_preempts_jobs_whose_ranks_checkpoint, setup, teardown),
  };
  return CMOCKA_MAIN("dpod_rpc", tests, NULL, NULL);
}
