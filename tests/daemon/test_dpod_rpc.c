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
#include "dpod_file.h"
#include "report_journal.h"
#include "rpc_client.h"
#include "tb_seen.h"

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
  const char *start_timeout;  /* dpod's --start-timeout, seconds */
  const char *heartbeat_floor;
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
    /* Short restart backoffs and timeouts, so that the restart and watchdog cases take seconds. */
    execl(DPOD_BIN, "dpod", "--listen", d->addr, "--state-dir", d->state, "--slots", "2", "--worker", FAKE_WORKER,
          "--log-level", "debug", "--restart-backoff", "0.2", "--drain-grace", "10", "--start-timeout",
          d->start_timeout ? d->start_timeout : "60", "--heartbeat-floor", d->heartbeat_floor ? d->heartbeat_floor : "60",
          (char *)NULL);
    _exit(127);
  }
  /* The socket file may be a stale one from a killed daemon: wait for an answer, not for the file. */
  for (int i = 0; i < 200 && !file_exists(d->sock); i++) sleep_ms(50);
  if (rpc_client_open(d->addr, &d->c, err, sizeof err) != 0) return -1;
  for (int i = 0; i < 200; i++) {
    int serving = 0; /* a draining dpod answers NOT_SERVING: an answer is what counts */
    if (health(d, "", &serving) == 0) return 0;
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
  /* Jobs outlive dpod: whatever a failed case left running (their command lines name the directory)
   * goes with it. */
  char cmd[PATH_MAX * 2 + 64];
  /* "[/]tmp/..." matches the processes' "/tmp/..." but not this shell's own command line. */
  snprintf(cmd, sizeof cmd, "pkill -KILL -f -- '[%c]%s/' ; rm -rf '%s'", d->dir[0], d->dir + 1, d->dir);
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

/* Submits a job the fake worker acts out by its name, with `max_restarts` automatic restarts and a
 * heartbeat timeout (0: derived). */
static uint64_t submit_opts(daemon_fx *d, const char *name, unsigned ranks, unsigned max_restarts,
                            double heartbeat_timeout) {
  Dpod__V1__JobSpec *spec = job_spec_new();
  free(spec->name); /* job_spec_new() fills in a copy of the default */
  spec->name = strdup(name);
  spec->has_ranks = 1;
  spec->ranks = ranks;
  spec->has_max_restarts = 1;
  spec->max_restarts = max_restarts;
  spec->train->has_heartbeat_timeout = 1;
  spec->train->heartbeat_timeout = heartbeat_timeout;
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

/* Most cases look at one attempt: no automatic restarts. */
static uint64_t submit(daemon_fx *d, const char *name, unsigned ranks) { return submit_opts(d, name, ranks, 0, 0); }

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
  assert_int_equal(rpc_unary(d->c, "/grpc.health.v1.Health/Listen", &req.base, &dpod__v1__get_job_response__descriptor,
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
  assert_int_equal(n, 5);
  assert_int_equal(evs[4]->state->state, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  free_events(evs, n);
}

static void job_succeeds_and_watch_replays_every_event(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "ok", 1);
  assert_true(id > 0);
  Dpod__V1__JobEvent *evs[16];
  int n = watch_all(d, id, 0, evs, 16);
  assert_int_equal(n, 5);
  /* queued, attempt 1 started, starting, attempt 1 ended, succeeded */
  static const int kinds[] = {DPOD__V1__JOB_EVENT__EVENT_STATE, DPOD__V1__JOB_EVENT__EVENT_ATTEMPT,
                              DPOD__V1__JOB_EVENT__EVENT_STATE, DPOD__V1__JOB_EVENT__EVENT_ATTEMPT,
                              DPOD__V1__JOB_EVENT__EVENT_STATE};
  static const Dpod__V1__JobState want[] = {DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, 0,
                                            DPOD__V1__JOB_STATE__JOB_STATE_STARTING, 0,
                                            DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED};
  for (int i = 0; i < n; i++) {
    assert_int_equal(evs[i]->seq, (uint64_t)i + 1);
    assert_int_equal(evs[i]->event_case, kinds[i]);
    if (kinds[i] == DPOD__V1__JOB_EVENT__EVENT_STATE) assert_int_equal(evs[i]->state->state, want[i]);
  }
  assert_int_equal(evs[1]->attempt->attempt, 1);
  assert_false(evs[1]->attempt->has_ended_unix_ms);
  assert_true(evs[3]->attempt->has_ended_unix_ms);
  assert_string_equal(evs[3]->attempt->reason, "succeeded");
  free_events(evs, n);
  /* A watch that starts at the end of a finished job ends at once. */
  assert_int_equal(watch_all(d, id, 5, evs, 16), 0);
  assert_int_equal(watch_all(d, id, 4, evs, 16), 1);
  free_events(evs, 1);

  Dpod__V1__Job *job = get_job(d, id);
  assert_non_null(job);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(job->exit_code, 0);
  assert_int_equal(job->last_seq, 5);
  assert_int_equal(job->n_attempts, 1);
  assert_int_equal(job->attempts[0]->exit_code, 0);
  assert_non_null(job->spec->train); /* normalized */
  char path[PATH_MAX * 2];
  run_file(d, id, "spec.pb", path, sizeof path);
  assert_true(file_exists(path));
  run_file(d, id, "attempt-1.exit", path, sizeof path);
  assert_true(file_exists(path)); /* written by the attempt's supervisor */
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
  assert_null(strstr(job->reason, "<stdout>")); /* the rank's words, without mpirun's tag */
  protobuf_c_message_free_unpacked(&job->base, NULL);

}

/* Each failed attempt is followed by another, after a backoff, until max_restarts are used; then the job
 * stays FAILED, every attempt's reason kept. A dpoctl restart starts a fresh count. */
static void failed_attempts_are_restarted_until_max_restarts(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit_opts(d, "fail1", 1, 2, 0);
  for (int i = 0; i < 400; i++) {
    Dpod__V1__Job *job = get_job(d, id);
    int done = job && job->state == DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
    if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
    if (done) break;
    sleep_ms(50);
  }
  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  assert_int_equal(job->n_attempts, 3);
  assert_int_equal(job->restarts, 2);
  for (size_t i = 0; i < job->n_attempts; i++) {
    assert_non_null(strstr(job->attempts[i]->reason, "ERROR something broke"));
    assert_int_equal(job->attempts[i]->exit_code, 1);
    assert_int_equal(job->attempts[i]->will_retry, i < 2);
  }
  assert_non_null(strstr(job->reason, "all 2 restarts used"));
  protobuf_c_message_free_unpacked(&job->base, NULL);
  /* Between attempts the job was QUEUED with the reason and the backoff. */
  Dpod__V1__JobEvent *evs[32];
  int n = watch_all(d, id, 0, evs, 32), requeued = 0;
  for (int i = 0; i < n; i++)
    if (evs[i]->event_case == DPOD__V1__JOB_EVENT__EVENT_STATE &&
        evs[i]->state->state == DPOD__V1__JOB_STATE__JOB_STATE_QUEUED && evs[i]->state->reason &&
        strstr(evs[i]->state->reason, "restart "))
      requeued++;
  free_events(evs, n < 32 ? n : 32);
  assert_int_equal(requeued, 2);
}

/* A worker that refuses its input (exit status 2) is not retried; a preempted attempt is requeued
 * without using up a restart. */
static void bad_input_is_not_retried_and_preemption_is_requeued(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit_opts(d, "badinput", 1, 3, 0);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->n_attempts, 1);
  assert_int_equal(job->exit_code, 2);
  assert_non_null(strstr(job->reason, "not retried"));
  protobuf_c_message_free_unpacked(&job->base, NULL);

  id = submit_opts(d, "preempt", 1, 0, 0); /* no restarts at all, and still requeued */
  for (int i = 0; i < 400; i++) {
    job = get_job(d, id);
    size_t attempts = job ? job->n_attempts : 0;
    if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
    if (attempts >= 2) break;
    sleep_ms(50);
  }
  job = get_job(d, id);
  assert_true(job->n_attempts >= 2);
  assert_non_null(strstr(job->attempts[0]->reason, "preempted"));
  assert_true(job->attempts[0]->will_retry);
  assert_int_equal(job->restarts, 0);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  assert_int_equal(cancel(d, id), 0);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED), DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
}

/* Sends rank 0's report for attempt `attempt`: a WorkerStarted and a metrics event per step. */
static int report_attempt(daemon_fx *d, uint64_t id, const char *secret, uint32_t attempt, const unsigned *steps,
                          int n_steps, int *directive) {
  Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
  req.has_job_id = req.has_attempt = 1;
  req.job_id = id;
  req.attempt = attempt;
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
    m[i].has_step = m[i].has_loss = 1;
    m[i].step = steps[i];
    m[i].loss = 1.0 / steps[i];
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

static int report(daemon_fx *d, uint64_t id, const char *secret, const unsigned *steps, int n_steps, int *directive) {
  return report_attempt(d, id, secret, 1, steps, n_steps, directive);
}

/* The secret the fake worker of job `id` was given (it writes it once it runs). */
static void read_secret(daemon_fx *d, uint64_t id, char *secret, size_t len) {
  char path[PATH_MAX * 2];
  run_file(d, id, "secret", path, sizeof path);
  for (int i = 0; i < 200 && !file_exists(path); i++) sleep_ms(50);
  sleep_ms(50);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  assert_non_null(fgets(secret, (int)len, f));
  fclose(f);
}

static void reports_are_authenticated_deduplicated_and_carry_the_cancel(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "hold", 1);
  char secret[80] = "";
  read_secret(d, id, secret, sizeof secret);

  int directive = -1;
  unsigned steps[] = {1, 1, 2};
  assert_int_equal(report(d, id, "0000", steps, 3, &directive), DPOD_EAUTH);
  assert_int_equal(report(d, id + 100, secret, steps, 3, &directive), DPOD_EAUTH);
  assert_int_equal(report(d, id, secret, steps, 3, &directive), 0);
  assert_int_equal(directive, DPOD__V1__DIRECTIVE__DIRECTIVE_NONE);
  assert_int_equal(report(d, id, secret, steps, 3, &directive), 0); /* a retry */

  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING);
  assert_int_equal(job->last_seq, 6); /* queued, attempt, starting, running, step 1, step 2 */
  assert_non_null(job->last_metrics);
  assert_int_equal(job->last_metrics->step, 2);
  protobuf_c_message_free_unpacked(&job->base, NULL);

  assert_int_equal(cancel(d, id), 0);
  assert_int_equal(report(d, id, secret, steps, 0, &directive), 0);
  assert_int_equal(directive, DPOD__V1__DIRECTIVE__DIRECTIVE_CANCEL);
  /* The fake worker ignores the directive: the daemon's SIGTERM after the grace period ends it. */
  Dpod__V1__JobEvent *evs[16];
  int n = watch_all(d, id, 4, evs, 16);
  assert_int_equal(n, 4);
  assert_int_equal(evs[0]->seq, 5);
  assert_int_equal(evs[0]->event_case, DPOD__V1__JOB_EVENT__EVENT_METRICS);
  assert_int_equal(evs[1]->metrics->step, 2);
  assert_int_equal(evs[2]->event_case, DPOD__V1__JOB_EVENT__EVENT_ATTEMPT);
  assert_int_equal(evs[3]->state->state, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
  assert_string_equal(evs[3]->state->reason, "cancelled by user");
  free_events(evs, n);

  assert_int_equal(cancel(d, id), DPOD_ESTATE);
  assert_non_null(strstr(err, "cancelled"));
  /* An ended job's secret is not kept: nothing can report for it any more. */
  assert_int_equal(report(d, id, secret, steps, 0, &directive), DPOD_EAUTH);
}

/* Reports are checked, not trusted: a stale attempt, a step past the job's end (which would have made
 * every later real step look like a duplicate), an oversized batch and a checkpoint outside the run
 * directory are refused with a status the reporter does not retry, and store nothing, while the job's
 * real reports keep flowing. */
static void forged_and_oversized_reports_are_refused(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "hold", 1); /* train.steps: the default 20 */
  char secret[80] = "";
  read_secret(d, id, secret, sizeof secret);
  int directive;
  unsigned first[] = {1}, forged[] = {4000000000u}, next[] = {2, 3};
  assert_int_equal(report(d, id, secret, first, 1, &directive), 0);
  assert_int_equal(report_attempt(d, id, secret, 2, next, 2, &directive), DPOD_ESTATE);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_FAILED_PRECONDITION);
  assert_non_null(strstr(err, "attempt 2"));
  assert_int_equal(report(d, id, secret, forged, 1, &directive), DPOD_EINVAL);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "step 4000000000"));

  /* 50,000 events in one report: refused at once, the daemon goes on. */
  size_t big = 50000;
  Dpod__V1__WorkerEvent *wev = calloc(big, sizeof *wev), **pev = calloc(big, sizeof *pev);
  Dpod__V1__WorkerHeartbeat hb = DPOD__V1__WORKER_HEARTBEAT__INIT;
  for (size_t i = 0; i < big; i++) {
    wev[i] = (Dpod__V1__WorkerEvent)DPOD__V1__WORKER_EVENT__INIT;
    wev[i].event_case = DPOD__V1__WORKER_EVENT__EVENT_HEARTBEAT;
    wev[i].heartbeat = &hb;
    pev[i] = &wev[i];
  }
  Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
  req.has_job_id = req.has_attempt = 1;
  req.job_id = id;
  req.attempt = 1;
  req.secret = secret;
  req.n_events = big;
  req.events = pev;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.WorkerReport/Report", &req.base, &dpod__v1__report_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   DPOD_EINVAL);
  assert_non_null(strstr(err, "at most"));
  /* A checkpoint outside the run directory. */
  Dpod__V1__CheckpointInfo ck = DPOD__V1__CHECKPOINT_INFO__INIT;
  ck.has_step = 1;
  ck.step = 1;
  ck.path = "/etc";
  wev[0].event_case = DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT;
  wev[0].checkpoint = &ck;
  req.n_events = 1;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.WorkerReport/Report", &req.base, &dpod__v1__report_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   DPOD_EINVAL);
  assert_non_null(strstr(err, "run directory"));
  free(wev);
  free(pev);

  /* The real steps still count. */
  assert_int_equal(report(d, id, secret, next, 2, &directive), 0);
  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->last_metrics->step, 3);
  assert_int_equal(job->n_checkpoints, 0);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  char path[PATH_MAX * 2];
  run_file(d, id, "release", path, sizeof path);
  touch(path);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
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
  assert_int_equal(watch_next_seq(w[3], NULL), 2); /* attempt 1 started */
  assert_int_equal(watch_next_seq(w[3], NULL), 3); /* starting */
  assert_int_equal(watch_next_seq(w[3], NULL), 4); /* attempt 1 ended */
  assert_int_equal(watch_next_seq(w[3], &st), 5);
  assert_int_equal(st, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(watch_next_seq(w[3], NULL), 0);
  rpc_stream_close(w[3]);
  int serving = 0;
  assert_int_equal(health(d, "", &serving), 0);
}

static Dpod__V1__GetStatusResponse *get_status(daemon_fx *d) {
  Dpod__V1__GetStatusRequest req = DPOD__V1__GET_STATUS_REQUEST__INIT;
  ProtobufCMessage *m = NULL;
  if (rpc_unary(d->c, "/dpod.v1.Coordinator/GetStatus", &req.base, &dpod__v1__get_status_response__descriptor, &m,
                5000, err, sizeof err) != 0)
    fail_msg("GetStatus: %s", err);
  return (Dpod__V1__GetStatusResponse *)m;
}

/* GetStatus counts what dpod holds: slots in use, running and queued jobs, open watchers, and its
 * event loop's iterations and stalls. */
static void status_counts_slots_jobs_watchers_and_loop_iterations(void **state) {
  daemon_fx *d = *state;
  Dpod__V1__GetStatusResponse *st = get_status(d);
  assert_string_equal(st->version, DPOD_VERSION_STRING);
  assert_int_equal(st->slots, 2);
  assert_int_equal(st->slots_free, 2);
  assert_int_equal(st->running + st->queued + st->watchers, 0);
  assert_string_equal(st->launcher, "mpirun");
  assert_non_null(st->loop);
  uint64_t iterations = st->loop->iterations;
  assert_true(st->loop->longest_stall_us * st->loop->iterations >= st->loop->busy_us); /* the longest bounds the mean */
  protobuf_c_message_free_unpacked(&st->base, NULL);

  uint64_t a = submit(d, "hold", 1), b = submit(d, "hold", 2); /* b waits: one slot is free, it needs two */
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  rpc_stream *w = watch_open(d, a);
  assert_int_equal(watch_next_seq(w, NULL), 1);
  st = get_status(d);
  assert_int_equal(st->slots_free, 1);
  assert_int_equal(st->running, 1);
  assert_int_equal(st->queued, 1);
  assert_int_equal(st->watchers, 1);
  assert_false(st->draining);
  assert_true(st->loop->iterations > iterations);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  rpc_stream_close(w);
  assert_int_equal(cancel(d, b), 0);
  assert_int_equal(cancel(d, a), 0);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED), DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
  st = get_status(d);
  assert_int_equal(st->slots_free, 2);
  assert_int_equal(st->running + st->queued + st->watchers, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

/* Stopping dpod leaves a running job alone: its supervisor keeps it going, and the next dpod adopts it
 * and sees it to its end. The same after a dpod killed with SIGKILL. */
static void stopped_or_killed_dpod_leaves_jobs_running_and_the_next_adopts_them(void **state) {
  daemon_fx *d = *state;
  uint64_t a = submit(d, "hold", 1);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  char run_dir[PATH_MAX * 2];
  run_file(d, a, "", run_dir, sizeof run_dir);
  run_dir[strlen(run_dir) - 1] = '\0'; /* no trailing slash: the argument as the launcher passed it */
  /* Counted once the worker runs (it writes its secret) and the count holds still: while mpirun
   * forks, a child not yet exec'd counts twice. */
  char secret[80];
  read_secret(d, a, secret, sizeof secret);
  int procs = procs_with_arg(run_dir); /* the supervisor, mpirun, the worker */
  for (int i = 0, prev = -1; i < 100 && procs != prev; i++) usleep(100000), prev = procs, procs = procs_with_arg(run_dir);
  assert_true(procs >= 3);
  assert_int_equal(daemon_stop(d), 0);
  assert_false(file_exists(d->sock));
  assert_int_equal(procs_with_arg(run_dir), procs); /* untouched */
  assert_int_equal(daemon_start(d), 0);
  Dpod__V1__Job *job = get_job(d, a);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  protobuf_c_message_free_unpacked(&job->base, NULL);

  rpc_client_close(d->c);
  d->c = NULL;
  kill(d->pid, SIGKILL);
  waitpid(d->pid, NULL, 0);
  assert_int_equal(procs_with_arg(run_dir), procs);
  assert_int_equal(daemon_start(d), 0);
  char path[PATH_MAX * 2];
  run_file(d, a, "release", path, sizeof path);
  touch(path);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  job = get_job(d, a);
  assert_int_equal(job->n_attempts, 1); /* adopted twice, never restarted */
  protobuf_c_message_free_unpacked(&job->base, NULL);
  for (int i = 0; i < 100 && procs_with_arg(run_dir) > 0; i++) usleep(50000);
  assert_int_equal(procs_with_arg(run_dir), 0);
}

/* A job that ends while no dpod runs is recorded by the next one from its exit record, and what rank 0
 * could not deliver meanwhile is read from its report journal. */
static void job_that_ends_while_dpod_is_down_is_recorded_with_its_journal(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "hold", 1);
  char secret[80] = "";
  read_secret(d, id, secret, sizeof secret);
  int directive;
  unsigned steps[] = {1};
  assert_int_equal(report(d, id, secret, steps, 1, &directive), 0);
  assert_int_equal(daemon_stop(d), 0);
  /* Rank 0's undelivered reports: steps 2 and 3 and a checkpoint, in its journal. */
  char journal[PATH_MAX * 2], ck_dir[PATH_MAX * 2], path[PATH_MAX * 2];
  run_file(d, id, "attempt-1.reports", journal, sizeof journal);
  run_file(d, id, "checkpoints/step-000003", ck_dir, sizeof ck_dir);
  assert_int_equal(dpod_mkdirs(ck_dir, 0700, 0, err, sizeof err), 0);
  Dpod__V1__StepMetrics m[2] = {DPOD__V1__STEP_METRICS__INIT, DPOD__V1__STEP_METRICS__INIT};
  Dpod__V1__CheckpointInfo ck = DPOD__V1__CHECKPOINT_INFO__INIT;
  Dpod__V1__WorkerEvent ev[3] = {DPOD__V1__WORKER_EVENT__INIT, DPOD__V1__WORKER_EVENT__INIT, DPOD__V1__WORKER_EVENT__INIT};
  uint8_t *data[3];
  size_t lens[3];
  for (int i = 0; i < 3; i++) {
    if (i < 2) {
      m[i].has_step = m[i].has_loss = 1;
      m[i].step = (uint32_t)i + 2;
      m[i].loss = 1.0 / (i + 2);
      ev[i].event_case = DPOD__V1__WORKER_EVENT__EVENT_METRICS;
      ev[i].metrics = &m[i];
    } else {
      ck.has_step = 1;
      ck.step = 3;
      ck.path = ck_dir;
      ev[i].event_case = DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT;
      ev[i].checkpoint = &ck;
    }
    lens[i] = dpod__v1__worker_event__get_packed_size(&ev[i]);
    data[i] = malloc(lens[i]);
    dpod__v1__worker_event__pack(&ev[i], data[i]);
  }
  assert_int_equal(report_journal_append(journal, data, lens, 3, 1, err, sizeof err), 0);
  for (int i = 0; i < 3; i++) free(data[i]);
  run_file(d, id, "release", path, sizeof path);
  touch(path);
  char exit_record[PATH_MAX * 2];
  run_file(d, id, "attempt-1.exit", exit_record, sizeof exit_record);
  for (int i = 0; i < 200 && !file_exists(exit_record); i++) sleep_ms(50);
  assert_true(file_exists(exit_record)); /* the supervisor recorded the end with no dpod around */

  assert_int_equal(daemon_start(d), 0);
  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(job->last_metrics->step, 3);
  assert_int_equal(job->n_checkpoints, 1);
  assert_int_equal(job->checkpoints[0]->step, 3);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  assert_false(file_exists(journal)); /* read, then removed */
  Dpod__V1__JobEvent *evs[32];
  int n = watch_all(d, id, 0, evs, 32), metrics = 0;
  uint64_t last_recorded = 0; /* the seq of the last event TensorBoard's files get */
  for (int i = 0; i < n; i++) {
    metrics += evs[i]->event_case == DPOD__V1__JOB_EVENT__EVENT_METRICS;
    if (evs[i]->event_case != DPOD__V1__JOB_EVENT__EVENT_STATE) last_recorded = evs[i]->seq;
  }
  free_events(evs, n);
  assert_int_equal(metrics, 3); /* steps 1, 2, 3: each once */

  /* The TensorBoard files, from two dpods (the second wrote what the journal held), hold each once
   * too. The writer runs behind the loop: wait until a file reaches the last event that has a record. */
  char tb[PATH_MAX * 2];
  run_file(d, id, "tensorboard", tb, sizeof tb);
  uint64_t written = 0;
  for (int i = 0; i < 200 && written < last_recorded; i++, sleep_ms(25)) {
    DIR *dir = opendir(tb);
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
      char file[PATH_MAX * 3];
      snprintf(file, sizeof file, "%s/%s", tb, de->d_name);
      tb_file_info info;
      if (de->d_name[0] != '.' && tb_file_scan(file, &info, err, sizeof err) == 0 && info.max_seq > written)
        written = info.max_seq;
    }
    if (dir) closedir(dir);
  }
  assert_int_equal(written, last_recorded);
  tb_seen seen;
  tb_seen_read(tb, &seen);
  tb_seen_assert_steps_once(&seen, 3);
  for (unsigned s = 1; s <= 3; s++) assert_float_equal(seen.loss_value[s], 1.0 / s, 1e-6);
  assert_int_equal(seen.checkpoints, 1);
  assert_int_equal(seen.attempts, 1);
  assert_int_equal(seen.exits, 1);
}

/* Drain: running jobs checkpoint and end PREEMPTED, new ones are refused and health says NOT_SERVING,
 * across a restart, until undrain. */
static void drain_preempts_running_jobs_and_refuses_new_ones(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "graceful", 1);
  char secret[PATH_MAX * 2];
  run_file(d, id, "secret", secret, sizeof secret); /* written once the rank runs */
  for (int i = 0; i < 200 && !file_exists(secret); i++) usleep(50000);
  assert_true(file_exists(secret));
  Dpod__V1__DrainRequest dreq = DPOD__V1__DRAIN_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/Drain", &dreq.base, &dpod__v1__drain_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   0);
  assert_int_equal(((Dpod__V1__DrainResponse *)resp)->preempting, 1);
  protobuf_c_message_free_unpacked(resp, NULL);
  int serving = 1;
  assert_int_equal(health(d, "", &serving), 0);
  assert_false(serving);
  assert_int_equal(submit(d, "ok", 1), 0);
  assert_non_null(strstr(err, "draining"));
  char release[PATH_MAX * 2];
  run_file(d, id, "release", release, sizeof release);
  touch(release);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED), DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED);
  Dpod__V1__Job *job = get_job(d, id);
  assert_string_equal(job->reason, "dpod is draining; the job stopped at a checkpoint");
  assert_int_equal(job->exit_code, 4);
  protobuf_c_message_free_unpacked(&job->base, NULL);

  assert_int_equal(daemon_stop(d), 0);
  assert_int_equal(daemon_start(d), 0);
  assert_int_equal(health(d, "", &serving), 0);
  assert_false(serving); /* still draining */
  Dpod__V1__UndrainRequest ureq = DPOD__V1__UNDRAIN_REQUEST__INIT;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/Undrain", &ureq.base, &dpod__v1__undrain_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   0);
  protobuf_c_message_free_unpacked(resp, NULL);
  assert_int_equal(health(d, "", &serving), 0);
  assert_true(serving);
  uint64_t ok = submit(d, "ok", 1);
  assert_int_equal(wait_state(d, ok, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
}

/* grpc.health.v1.Health/Watch: the status now, then each change. */
static void health_watch_streams_each_change(void **state) {
  daemon_fx *d = *state;
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = "";
  rpc_stream *s = NULL;
  assert_int_equal(rpc_stream_open(d->c, "/grpc.health.v1.Health/Watch", &req.base, &s, err, sizeof err), 0);
  ProtobufCMessage *m = NULL;
  assert_int_equal(rpc_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, 5000, err, sizeof err), 1);
  assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status,
                   GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  protobuf_c_message_free_unpacked(m, NULL);
  Dpod__V1__DrainRequest dreq = DPOD__V1__DRAIN_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/Drain", &dreq.base, &dpod__v1__drain_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   0);
  protobuf_c_message_free_unpacked(resp, NULL);
  assert_int_equal(rpc_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, 5000, err, sizeof err), 1);
  assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status,
                   GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
  protobuf_c_message_free_unpacked(m, NULL);
  rpc_stream_close(s);
  /* An unknown service is SERVICE_UNKNOWN, and the stream stays open. */
  req.service = "no.such.Service";
  assert_int_equal(rpc_stream_open(d->c, "/grpc.health.v1.Health/Watch", &req.base, &s, err, sizeof err), 0);
  assert_int_equal(rpc_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, 5000, err, sizeof err), 1);
  assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status,
                   GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN);
  protobuf_c_message_free_unpacked(m, NULL);
  assert_int_equal(rpc_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, 300, err, sizeof err),
                   DPOD_ETIMEDOUT);
  rpc_stream_close(s);
  Dpod__V1__UndrainRequest ureq = DPOD__V1__UNDRAIN_REQUEST__INIT;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.Coordinator/Undrain", &ureq.base, &dpod__v1__undrain_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   0);
  protobuf_c_message_free_unpacked(resp, NULL);
}

/* The watchdog: a job that never reports in (a FIFO as its weights file would do that) fails after the
 * start timeout; one that reported and then shows no progress fails after its heartbeat timeout. */
static int setup_watchdog(void **state) {
  daemon_fx *d = calloc(1, sizeof *d);
  if (test_mkdtemp(d->dir, sizeof d->dir, "dpod-rpc") != 0) return -1;
  snprintf(d->state, sizeof d->state, "%s/state", d->dir);
  snprintf(d->sock, sizeof d->sock, "%s/run/dpod.sock", d->dir);
  snprintf(d->addr, sizeof d->addr, "unix:%s", d->sock);
  d->start_timeout = "1";
  d->heartbeat_floor = "1";
  *state = d;
  return daemon_start(d);
}

static void watchdog_fails_jobs_that_do_not_report_or_stop_progressing(void **state) {
  daemon_fx *d = *state;
  uint64_t silent = submit(d, "hold", 1);
  assert_int_equal(wait_state(d, silent, DPOD__V1__JOB_STATE__JOB_STATE_FAILED), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  Dpod__V1__Job *job = get_job(d, silent);
  assert_non_null(strstr(job->reason, "did not report in within 1 s"));
  protobuf_c_message_free_unpacked(&job->base, NULL);

  uint64_t stuck = submit_opts(d, "hold", 1, 0, 0); /* derived timeout: the 1 s floor */
  char secret[80] = "";
  read_secret(d, stuck, secret, sizeof secret);
  int directive;
  unsigned steps[] = {1, 2};
  assert_int_equal(report(d, stuck, secret, steps, 2, &directive), 0);
  assert_int_equal(wait_state(d, stuck, DPOD__V1__JOB_STATE__JOB_STATE_FAILED), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  job = get_job(d, stuck);
  assert_non_null(strstr(job->reason, "no progress for"));
  assert_non_null(strstr(job->reason, "(last step 2)"));
  protobuf_c_message_free_unpacked(&job->base, NULL);
}

/* ---- Logs ---- */

typedef struct {
  uint32_t attempt;
  int rank;
  char stream[8];
  char text[64];
  uint64_t offset;
} log_line;

static Dpod__V1__LogsRequest logs_req(uint64_t id) {
  Dpod__V1__LogsRequest req = DPOD__V1__LOGS_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  return req;
}

/* Reads lines from an open Logs stream until it ends (returns the count), or fails or stays silent for
 * `wait_ms` (returns the status; *n the lines read before). */
static int logs_next_lines(rpc_stream *s, log_line *out, int max, int *n, int wait_ms) {
  ProtobufCMessage *m;
  int rc;
  while ((rc = rpc_stream_next(s, &dpod__v1__log_line__descriptor, &m, wait_ms, err, sizeof err)) == 1) {
    Dpod__V1__LogLine *l = (Dpod__V1__LogLine *)m;
    if (*n < max) {
      log_line *o = &out[(*n)++];
      o->attempt = l->attempt;
      o->rank = l->rank;
      snprintf(o->stream, sizeof o->stream, "%s", l->stream ? l->stream : "");
      snprintf(o->text, sizeof o->text, "%s", l->text ? l->text : "");
      o->offset = l->offset;
    }
    protobuf_c_message_free_unpacked(m, NULL);
  }
  return rc;
}

/* A whole Logs call: the lines, or a negative status with the gRPC code in *code. */
static int logs_read(daemon_fx *d, const Dpod__V1__LogsRequest *req, log_line *out, int max, int *code) {
  rpc_stream *s = NULL;
  int n = 0, rc = rpc_stream_open(d->c, "/dpod.v1.Coordinator/Logs", &req->base, &s, err, sizeof err);
  if (rc == 0) rc = logs_next_lines(s, out, max, &n, 10000);
  if (s) rpc_stream_close(s);
  if (code) *code = rc < 0 ? rpc_last_grpc_status() : 0;
  return rc < 0 ? rc : n;
}

static int logs_refused(daemon_fx *d, const Dpod__V1__LogsRequest *req) {
  log_line l[4];
  int code = 0;
  assert_true(logs_read(d, req, l, 4, &code) < 0);
  return code;
}

static void assert_same_lines(const log_line *a, const log_line *b, int n) {
  for (int i = 0; i < n; i++) {
    assert_int_equal(a[i].attempt, b[i].attempt);
    assert_int_equal(a[i].rank, b[i].rank);
    assert_string_equal(a[i].stream, b[i].stream);
    assert_string_equal(a[i].text, b[i].text);
    assert_int_equal(a[i].offset, b[i].offset);
  }
}

/* Logs streams every rank's stdout and stderr, each line tagged with its attempt and rank, without the
 * launcher's prefix; resumes after any line's offset; filters by rank; keeps only the tail; refuses
 * what the job cannot have; and follows until the job ends, across a dpod restart. */
static void logs_stream_every_rank_resume_filter_tail_and_follow(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit(d, "chatty-hold", 2);
  log_line all[32], got[32];
  Dpod__V1__LogsRequest req = logs_req(id);
  int n = 0;
  for (int i = 0; i < 200 && (n = logs_read(d, &req, all, 32, NULL)) < 12; i++) sleep_ms(50);
  assert_int_equal(n, 12);
  int per[2][2] = {{0}}, next_out[2] = {1, 1};
  for (int i = 0; i < n; i++) {
    assert_int_equal(all[i].attempt, 1);
    assert_true(all[i].rank == 0 || all[i].rank == 1);
    assert_true(i == 0 || all[i].offset > all[i - 1].offset);
    int err_stream = strcmp(all[i].stream, "stderr") == 0;
    assert_true(err_stream || strcmp(all[i].stream, "stdout") == 0);
    per[all[i].rank][err_stream]++;
    char want[64];
    snprintf(want, sizeof want, "%s %d of rank %d", err_stream ? "err" : "out", err_stream ? 0 : next_out[all[i].rank],
             all[i].rank);
    if (!err_stream) {
      assert_string_equal(all[i].text, want); /* a rank's stdout in its order, no "[1,0]<stdout>:" */
      next_out[all[i].rank]++;
    } else {
      assert_non_null(strstr(all[i].text, "err "));
    }
  }
  assert_int_equal(per[0][0] + per[0][1] + per[1][0] + per[1][1], 12);
  for (int r = 0; r < 2; r++) assert_int_equal(per[r][0], 3), assert_int_equal(per[r][1], 3);

  /* From an offset: the lines after it, exactly. */
  req.has_after_offset = 1;
  req.after_offset = all[4].offset;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 7);
  assert_same_lines(got, all + 5, 7);
  req.after_offset = all[11].offset;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 0);
  req.has_after_offset = 0;
  req.after_offset = 0;

  /* One rank. */
  req.has_rank = 1;
  req.rank = 1;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 6);
  for (int i = 0, k = 0; i < 12; i++)
    if (all[i].rank == 1) assert_same_lines(&got[k++], &all[i], 1);
  /* The tail, of one rank and of all. */
  req.has_tail = 1;
  req.tail = 2;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 2);
  for (int i = 11, k = 1; i >= 0 && k >= 0; i--)
    if (all[i].rank == 1) assert_same_lines(&got[k--], &all[i], 1);
  req.has_rank = 0;
  req.rank = -1;
  req.tail = 3;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 3);
  assert_same_lines(got, all + 9, 3);
  req.tail = 100;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 12);
  req.has_tail = 0;
  req.tail = 0;

  /* What the job cannot have is refused, naming it; an unknown job is NOT_FOUND. */
  Dpod__V1__LogsRequest bad = logs_req(id);
  bad.has_rank = 1;
  bad.rank = 2;
  assert_int_equal(logs_refused(d, &bad), GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "rank 2"));
  bad.rank = -2;
  assert_int_equal(logs_refused(d, &bad), GRPC_STATUS_INVALID_ARGUMENT);
  bad = logs_req(id);
  bad.has_attempt = 1;
  bad.attempt = 2;
  assert_int_equal(logs_refused(d, &bad), GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "attempt 2"));
  bad = logs_req(id);
  bad.has_tail = 1;
  bad.tail = 100001;
  assert_int_equal(logs_refused(d, &bad), GRPC_STATUS_INVALID_ARGUMENT);
  bad = logs_req(id);
  bad.has_after_offset = 1;
  bad.after_offset = (uint64_t)7 << 40;
  assert_int_equal(logs_refused(d, &bad), GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "offset"));
  bad = logs_req(id + 100);
  assert_int_equal(logs_refused(d, &bad), GRPC_STATUS_NOT_FOUND);

  /* Following from the last line: nothing comes while the job holds, and the stream stays open. */
  req.has_follow = 1;
  req.follow = 1;
  req.has_after_offset = 1;
  req.after_offset = all[11].offset;
  rpc_stream *s = NULL;
  assert_int_equal(rpc_stream_open(d->c, "/dpod.v1.Coordinator/Logs", &req.base, &s, err, sizeof err), 0);
  n = 0;
  assert_int_equal(logs_next_lines(s, got, 32, &n, 700), DPOD_ETIMEDOUT);
  assert_int_equal(n, 0);
  /* dpod restarts: the stream breaks; the client comes back with its offset and goes on to the end. */
  assert_int_equal(daemon_stop(d), 0);
  assert_true(logs_next_lines(s, got, 32, &n, 5000) < 0);
  rpc_stream_close(s);
  assert_int_equal(daemon_start(d), 0);
  assert_int_equal(rpc_stream_open(d->c, "/dpod.v1.Coordinator/Logs", &req.base, &s, err, sizeof err), 0);
  char path[PATH_MAX * 2];
  run_file(d, id, "release", path, sizeof path);
  touch(path);
  n = 0;
  assert_int_equal(logs_next_lines(s, got, 32, &n, 20000), 0); /* ended OK, with the job */
  rpc_stream_close(s);
  assert_int_equal(n, 2);
  for (int i = 0; i < 2; i++) {
    assert_non_null(strstr(got[i].text, "bye from rank "));
    assert_true(got[i].offset > all[11].offset);
  }
  assert_int_not_equal(got[0].rank, got[1].rank);
  Dpod__V1__Job *job = get_job(d, id);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  /* A follow of a job that has ended ends too, after its output. */
  req.after_offset = all[11].offset;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 2);
}

/* Each attempt has its own log: every attempt streams in order, tagged, and one may be asked alone. */
static void logs_of_every_attempt_in_order_or_one_alone(void **state) {
  daemon_fx *d = *state;
  uint64_t id = submit_opts(d, "chatty-fail1", 1, 1, 0);
  assert_int_equal(wait_state(d, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  log_line all[32], got[32];
  Dpod__V1__LogsRequest req = logs_req(id);
  int n = logs_read(d, &req, all, 32, NULL);
  /* Per attempt: 3 out, 3 err, the ERROR line and "aborting"; maybe lines of mpirun's own (rank -1). */
  int per[3] = {0};
  for (int i = 0; i < n; i++) {
    assert_true(all[i].attempt == 1 || all[i].attempt == 2);
    assert_true(i == 0 || all[i].attempt >= all[i - 1].attempt);
    if (all[i].rank == 0) per[all[i].attempt]++;
    else assert_int_equal(all[i].rank, -1), assert_string_equal(all[i].stream, "dpod");
  }
  assert_int_equal(per[1], 8);
  assert_int_equal(per[2], 8);
  req.has_attempt = 1;
  req.attempt = 2;
  req.has_rank = 1;
  req.rank = 0;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 8);
  int errors = 0;
  for (int i = 0; i < 8; i++) {
    assert_int_equal(got[i].attempt, 2);
    if (strstr(got[i].text, "ERROR")) {
      assert_string_equal(got[i].text, "rank 0 ERROR something broke (train.c:12)");
      assert_string_equal(got[i].stream, "stdout");
      errors++;
    }
  }
  assert_int_equal(errors, 1);
  /* An offset in attempt 1 with attempt 2 asked: attempt 2 from its start. */
  req.has_after_offset = 1;
  req.after_offset = all[0].offset;
  assert_int_equal(logs_read(d, &req, got, 32, NULL), 8);
}

static int delete_job(daemon_fx *d, uint64_t id, int remove_run_dir) {
  Dpod__V1__DeleteJobRequest req = DPOD__V1__DELETE_JOB_REQUEST__INIT;
  req.has_job_id = req.has_remove_run_dir = 1;
  req.job_id = id;
  req.remove_run_dir = remove_run_dir;
  ProtobufCMessage *resp = NULL;
  int rc = rpc_unary(d->c, "/dpod.v1.Coordinator/DeleteJob", &req.base, &dpod__v1__delete_job_response__descriptor,
                     &resp, 5000, err, sizeof err);
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return rc;
}

/* DeleteJob refuses a job that has not ended (naming its state) and forgets one that has: its record,
 * its events, and its run directory only when asked. */
static void delete_refuses_unfinished_jobs_and_forgets_finished_ones(void **state) {
  daemon_fx *d = *state;
  uint64_t a = submit(d, "hold", 1);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  assert_int_not_equal(delete_job(d, a, 1), 0);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_FAILED_PRECONDITION);
  assert_non_null(strstr(err, "is starting"));
  char dir[PATH_MAX * 2], path[PATH_MAX * 2];
  snprintf(dir, sizeof dir, "%s/jobs/%llu", d->state, (unsigned long long)a);
  assert_true(file_exists(dir));
  run_file(d, a, "release", path, sizeof path);
  touch(path);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);

  assert_int_equal(delete_job(d, a, 1), 0);
  assert_null(get_job(d, a));
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_NOT_FOUND);
  assert_false(file_exists(dir));
  assert_int_not_equal(delete_job(d, a, 0), 0);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_NOT_FOUND);

  uint64_t b = submit(d, "ok", 1);
  assert_int_equal(wait_state(d, b, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(delete_job(d, b, 0), 0);
  assert_null(get_job(d, b));
  snprintf(dir, sizeof dir, "%s/jobs/%llu", d->state, (unsigned long long)b);
  assert_true(file_exists(dir)); /* not asked to remove it */
  /* A watch of a deleted job finds nothing, and the daemon serves on. */
  Dpod__V1__JobEvent *evs[4];
  assert_true(watch_all(d, b, 0, evs, 4) < 0);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_NOT_FOUND);
  int serving = 0;
  assert_int_equal(health(d, "", &serving), 0);
  assert_true(serving);
}

/* ------------------------------------------------------------------------------------------------ */
/* Chained jobs: `after` and job:ID weights. */

/* Submits a fake-worker job that waits for `after` and starts from `weights` (NULL: none). Returns its
 * id, or 0 with err saying why it was refused. */
static uint64_t submit_chained(daemon_fx *d, const char *name, const uint64_t *after, size_t n_after,
                               const char *weights) {
  Dpod__V1__JobSpec *spec = job_spec_new();
  free(spec->name); /* job_spec_new() fills in a copy of the default */
  spec->name = strdup(name);
  spec->has_max_restarts = 1;
  spec->max_restarts = 0;
  if (n_after) {
    spec->after = malloc(n_after * sizeof *spec->after);
    memcpy(spec->after, after, n_after * sizeof *after);
    spec->n_after = n_after;
  }
  if (weights) {
    free(spec->model->weights);
    spec->model->weights = strdup(weights);
  }
  Dpod__V1__SubmitJobRequest req = DPOD__V1__SUBMIT_JOB_REQUEST__INIT;
  req.spec = spec;
  ProtobufCMessage *resp = NULL;
  err[0] = '\0';
  int rc = rpc_unary(d->c, "/dpod.v1.Coordinator/SubmitJob", &req.base, &dpod__v1__submit_job_response__descriptor,
                     &resp, 5000, err, sizeof err);
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  if (rc != 0) return 0;
  uint64_t id = ((Dpod__V1__SubmitJobResponse *)resp)->job->id;
  protobuf_c_message_free_unpacked(resp, NULL);
  return id;
}

/* The job's state and reason, the reason copied into `reason`. */
static Dpod__V1__JobState job_state_reason(daemon_fx *d, uint64_t id, char *reason, size_t len) {
  Dpod__V1__Job *job = get_job(d, id);
  assert_non_null(job);
  Dpod__V1__JobState st = job->state;
  snprintf(reason, len, "%s", job->reason ? job->reason : "");
  protobuf_c_message_free_unpacked(&job->base, NULL);
  return st;
}

/* A "hold" job reports a checkpoint of step 1 that exists on disk (weights file included). */
static void report_checkpoint(daemon_fx *d, uint64_t id, char *weights, size_t len) {
  char secret[80], dir[PATH_MAX * 2];
  read_secret(d, id, secret, sizeof secret);
  run_file(d, id, "checkpoints/step-000001", dir, sizeof dir);
  assert_int_equal(dpod_mkdirs(dir, 0700, 0, err, sizeof err), 0);
  snprintf(weights, len, "%s/diffusion_pytorch_model.safetensors", dir);
  touch(weights);
  Dpod__V1__CheckpointInfo ck = DPOD__V1__CHECKPOINT_INFO__INIT;
  ck.has_step = 1;
  ck.step = 1;
  ck.path = dir;
  Dpod__V1__WorkerEvent ev = DPOD__V1__WORKER_EVENT__INIT, *pev = &ev;
  ev.event_case = DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT;
  ev.checkpoint = &ck;
  Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
  req.has_job_id = req.has_attempt = 1;
  req.job_id = id;
  req.attempt = 1;
  req.secret = secret;
  req.events = &pev;
  req.n_events = 1;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(rpc_unary(d->c, "/dpod.v1.WorkerReport/Report", &req.base, &dpod__v1__report_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   0);
  protobuf_c_message_free_unpacked(resp, NULL);
}

static void chained_jobs_wait_for_theirs_start_from_their_checkpoint_and_survive_a_restart(void **state) {
  daemon_fx *d = *state;
  uint64_t a = submit(d, "hold", 1);
  assert_int_equal(wait_state(d, a, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  char weights[PATH_MAX * 2 + 64], reason[700], ref[32];
  report_checkpoint(d, a, weights, sizeof weights);

  /* Refused at submission, by name. */
  uint64_t missing = 99;
  assert_int_equal(submit_chained(d, "ok", &missing, 1, NULL), 0);
  assert_non_null(strstr(err, "after: job 99 not found"));
  assert_int_equal(submit_chained(d, "ok", NULL, 0, "job:99"), 0);
  assert_non_null(strstr(err, "model.weights: job 99 not found"));
  snprintf(ref, sizeof ref, "job:%llu@step-3", (unsigned long long)a);
  assert_int_equal(submit_chained(d, "ok", NULL, 0, ref), 0);
  assert_non_null(strstr(err, "writes no checkpoint at step 3"));

  snprintf(ref, sizeof ref, "job:%llu", (unsigned long long)a);
  uint64_t b = submit_chained(d, "ok", NULL, 0, ref); /* waits for a without naming it in after */
  assert_true(b > 0);
  uint64_t c = submit_chained(d, "ok", &a, 1, NULL);
  assert_true(c > 0);
  char want[64];
  snprintf(want, sizeof want, "waiting for job %llu", (unsigned long long)a);
  assert_int_equal(job_state_reason(d, b, reason, sizeof reason), DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  assert_string_equal(reason, want);
  assert_int_equal(job_state_reason(d, c, reason, sizeof reason), DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  assert_string_equal(reason, want);

  /* A free slot does not start them, nor does a new dpod. */
  assert_int_equal(daemon_stop(d), 0);
  assert_int_equal(daemon_start(d), 0);
  sleep_ms(300);
  assert_int_equal(job_state_reason(d, b, reason, sizeof reason), DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  assert_string_equal(reason, want);

  char path[PATH_MAX * 2];
  run_file(d, a, "release", path, sizeof path);
  touch(path);
  assert_int_equal(wait_state(d, b, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  assert_int_equal(wait_state(d, c, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  Dpod__V1__Job *job = get_job(d, b);
  assert_string_equal(job->spec->model->weights, weights); /* what was used, in the stored spec */
  protobuf_c_message_free_unpacked(&job->base, NULL);
  /* Now that a succeeded, a step it has no checkpoint of is refused too. */
  snprintf(ref, sizeof ref, "job:%llu@step-20", (unsigned long long)a);
  assert_int_equal(submit_chained(d, "ok", NULL, 0, ref), 0);
  assert_non_null(strstr(err, "no checkpoint at step 20"));
}

static void a_job_fails_when_one_it_waits_for_fails_or_is_cancelled(void **state) {
  daemon_fx *d = *state;
  char reason[700], want[64];
  uint64_t f = submit(d, "fail1", 1);
  uint64_t g = submit_chained(d, "ok", &f, 1, NULL);
  uint64_t g2 = submit_chained(d, "ok", &g, 1, NULL); /* fails in turn */
  assert_true(f > 0 && g > 0 && g2 > 0);
  assert_int_equal(wait_state(d, g2, DPOD__V1__JOB_STATE__JOB_STATE_FAILED), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  assert_int_equal(job_state_reason(d, g, reason, sizeof reason), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  snprintf(want, sizeof want, "job %llu, which this job waited for, ended failed", (unsigned long long)f);
  if (!strstr(reason, want)) fail_msg("reason \"%s\" lacks \"%s\"", reason, want);
  job_state_reason(d, g2, reason, sizeof reason);
  snprintf(want, sizeof want, "job %llu, which this job waited for, ended failed", (unsigned long long)g);
  if (!strstr(reason, want)) fail_msg("reason \"%s\" lacks \"%s\"", reason, want);

  uint64_t h = submit(d, "hold", 1);
  uint64_t i = submit_chained(d, "ok", &h, 1, NULL);
  assert_int_equal(wait_state(d, h, DPOD__V1__JOB_STATE__JOB_STATE_STARTING), DPOD__V1__JOB_STATE__JOB_STATE_STARTING);
  assert_int_equal(cancel(d, h), 0);
  assert_int_equal(wait_state(d, i, DPOD__V1__JOB_STATE__JOB_STATE_FAILED), DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  job_state_reason(d, i, reason, sizeof reason);
  snprintf(want, sizeof want, "job %llu, which this job waited for, ended cancelled", (unsigned long long)h);
  if (!strstr(reason, want)) fail_msg("reason \"%s\" lacks \"%s\"", reason, want);

  /* A waiting job cancelled by itself leaves the list: nothing starts it later. */
  uint64_t k = submit(d, "hold", 1);
  uint64_t l = submit_chained(d, "ok", &k, 1, NULL);
  assert_int_equal(cancel(d, l), 0);
  assert_int_equal(job_state_reason(d, l, reason, sizeof reason), DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
  char path[PATH_MAX * 2];
  run_file(d, k, "release", path, sizeof path);
  touch(path);
  assert_int_equal(wait_state(d, k, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
  sleep_ms(200);
  assert_int_equal(job_state_reason(d, l, reason, sizeof reason), DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
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
      cmocka_unit_test_setup_teardown(failed_attempts_are_restarted_until_max_restarts, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_input_is_not_retried_and_preemption_is_requeued, setup, teardown),
      cmocka_unit_test_setup_teardown(reports_are_authenticated_deduplicated_and_carry_the_cancel, setup, teardown),
      cmocka_unit_test_setup_teardown(forged_and_oversized_reports_are_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(queued_job_waits_behind_the_head_and_cancels_at_once, setup, teardown),
      cmocka_unit_test_setup_teardown(watchers_that_leave_are_forgotten, setup, teardown),
      cmocka_unit_test_setup_teardown(stopped_or_killed_dpod_leaves_jobs_running_and_the_next_adopts_them, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(job_that_ends_while_dpod_is_down_is_recorded_with_its_journal, setup, teardown),
      cmocka_unit_test_setup_teardown(drain_preempts_running_jobs_and_refuses_new_ones, setup, teardown),
      cmocka_unit_test_setup_teardown(health_watch_streams_each_change, setup, teardown),
      cmocka_unit_test_setup_teardown(chained_jobs_wait_for_theirs_start_from_their_checkpoint_and_survive_a_restart,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(a_job_fails_when_one_it_waits_for_fails_or_is_cancelled, setup, teardown),
      cmocka_unit_test_setup_teardown(status_counts_slots_jobs_watchers_and_loop_iterations, setup, teardown),
      cmocka_unit_test_setup_teardown(watchdog_fails_jobs_that_do_not_report_or_stop_progressing, setup_watchdog,
                                      teardown),
      cmocka_unit_test_setup_teardown(logs_stream_every_rank_resume_filter_tail_and_follow, setup, teardown),
      cmocka_unit_test_setup_teardown(logs_of_every_attempt_in_order_or_one_alone, setup, teardown),
      cmocka_unit_test_setup_teardown(delete_refuses_unfinished_jobs_and_forgets_finished_ones, setup, teardown),
  };
  return CMOCKA_MAIN("dpod_rpc", tests, NULL, NULL);
}
