/* rpc_client against the scripted fake server (fake_server.h): unary calls, status codes and their
 * messages, deadlines, server streams to the end, per-message timeouts, closing a live stream, and use
 * from another thread. `test_rpc_client NAME` runs one test. */
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "cmocka_main.h"
#include <grpc/status.h>

#include "dpod.pb-c.h"
#include "dpod_error.h"
#include "fake_server.h"
#include "health.pb-c.h"
#include "rpc_client.h"
#include "rpc_methods.h"

static char dir[PATH_MAX], addr[PATH_MAX + 32];
static rpc_client *client;
static char err[1024];

#define assert_err_has(frag)                                                        \
  do {                                                                              \
    if (!strstr(err, (frag))) fail_msg("error \"%s\" lacks \"%s\"", err, (frag));  \
  } while (0)

static int group_setup(void **state) {
  (void)state;
  if (test_mkdtemp(dir, sizeof dir, "dpod-rpc-client") != 0) return -1;
  snprintf(addr, sizeof addr, "unix:%s/fake.sock", dir);
  return fake_server_start(addr);
}

static int group_teardown(void **state) {
  (void)state;
  fake_server_stop();
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/fake.sock", dir);
  unlink(path);
  rmdir(dir);
  return 0;
}

static int setup(void **state) {
  (void)state;
  err[0] = '\0';
  return rpc_client_open(addr, &client, err, sizeof err);
}

static int teardown(void **state) {
  (void)state;
  rpc_client_close(client);
  client = NULL;
  return 0;
}

static int get_job(uint64_t id, int timeout_ms, Dpod__V1__GetJobResponse **out) {
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  return rpc_unary(client, "/dpod.v1.Coordinator/GetJob", &req.base, &dpod__v1__get_job_response__descriptor,
                   (ProtobufCMessage **)out, timeout_ms, err, sizeof err);
}

static rpc_stream *watch(uint64_t id, uint64_t after) {
  Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  req.has_job_id = req.has_after_seq = 1;
  req.job_id = id;
  req.after_seq = after;
  rpc_stream *s = NULL;
  if (rpc_stream_open(client, "/dpod.v1.Coordinator/WatchJob", &req.base, &s, err, sizeof err) != 0)
    fail_msg("stream_open: %s", err);
  return s;
}

static int next_event(rpc_stream *s, int timeout_ms, Dpod__V1__JobEvent **ev) {
  return rpc_stream_next(s, &dpod__v1__job_event__descriptor, (ProtobufCMessage **)ev, timeout_ms, err, sizeof err);
}

/* ----------------------------------------------------------------------------------------------- */

static void unary_returns_the_response(void **state) {
  (void)state;
  Dpod__V1__GetJobResponse *resp;
  if (get_job(7, 5000, &resp) != 0) fail_msg("%s", err);
  assert_non_null(resp->job);
  assert_int_equal(resp->job->id, 7);
  assert_string_equal(resp->job->name, "fake");
  assert_int_equal(resp->job->state, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING);
  assert_int_equal(rpc_last_grpc_status(), 0);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void unary_error_names_method_code_and_details(void **state) {
  (void)state;
  Dpod__V1__GetJobResponse *resp = (void *)1;
  assert_int_equal(get_job(404, 5000, &resp), DPOD_ENOENT);
  assert_null(resp);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_NOT_FOUND);
  assert_err_has("/dpod.v1.Coordinator/GetJob");
  assert_err_has("NOT_FOUND");
  assert_err_has("no job 404");
}

static void unary_unimplemented_method(void **state) {
  (void)state;
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  ProtobufCMessage *resp;
  assert_int_equal(rpc_unary(client, "/dpod.v1.Coordinator/Nope", &req.base, &dpod__v1__get_job_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   DPOD_ERPC);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_UNIMPLEMENTED);
  assert_err_has("UNIMPLEMENTED");
}

static void unary_deadline_expires(void **state) {
  (void)state;
  Dpod__V1__GetJobResponse *resp;
  assert_int_equal(get_job(800, 100, &resp), DPOD_ETIMEDOUT);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_DEADLINE_EXCEEDED);
  assert_err_has("DEADLINE_EXCEEDED");
  /* The server is still busy with the abandoned call; the next call waits its turn and succeeds. */
  if (get_job(8, 5000, &resp) != 0) fail_msg("%s", err);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void health_check_serving(void **state) {
  (void)state;
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  Grpc__Health__V1__HealthCheckResponse *resp;
  if (rpc_unary(client, "/grpc.health.v1.Health/Check", &req.base,
                &grpc__health__v1__health_check_response__descriptor, (ProtobufCMessage **)&resp, 5000, err,
                sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(resp->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void unreachable_server_is_unavailable(void **state) {
  (void)state;
  rpc_client *c;
  char a[PATH_MAX + 32];
  snprintf(a, sizeof a, "unix:%s/nobody-here.sock", dir);
  assert_int_equal(rpc_client_open(a, &c, err, sizeof err), 0);
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  ProtobufCMessage *resp;
  assert_int_equal(rpc_unary(c, "/dpod.v1.Coordinator/GetJob", &req.base, &dpod__v1__get_job_response__descriptor,
                             &resp, 5000, err, sizeof err),
                   DPOD_ERPC);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_UNAVAILABLE);
  assert_err_has("/dpod.v1.Coordinator/GetJob: UNAVAILABLE");
  /* A stream fails the same way, at open or at the first read. */
  Dpod__V1__WatchJobRequest wreq = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  rpc_stream *s;
  int rc = rpc_stream_open(c, "/dpod.v1.Coordinator/WatchJob", &wreq.base, &s, err, sizeof err);
  if (rc == 0) {
    ProtobufCMessage *m;
    rc = rpc_stream_next(s, &dpod__v1__job_event__descriptor, &m, 0, err, sizeof err);
    rpc_stream_close(s);
  }
  assert_true(rc < 0);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_UNAVAILABLE);
  assert_err_has("UNAVAILABLE");
  rpc_client_close(c);
}

static void stream_yields_every_event_then_ends(void **state) {
  (void)state;
  rpc_stream *s = watch(1, 0);
  Dpod__V1__JobEvent *ev;
  uint64_t want = 1;
  int rc;
  while ((rc = next_event(s, 0, &ev)) == 1) {
    assert_int_equal(ev->seq, want++);
    protobuf_c_message_free_unpacked(&ev->base, NULL);
  }
  assert_int_equal(rc, 0);
  assert_int_equal(want, 8);
  assert_int_equal(next_event(s, 0, &ev), 0);  /* stays ended */
  rpc_stream_close(s);
}

static void stream_replays_after_seq(void **state) {
  (void)state;
  rpc_stream *s = watch(1, 5);
  Dpod__V1__JobEvent *ev;
  assert_int_equal(next_event(s, 0, &ev), 1);
  assert_int_equal(ev->seq, 6);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  rpc_stream_close(s);  /* one event left unread */
}

static void stream_error_status(void **state) {
  (void)state;
  rpc_stream *s = watch(999, 0);
  Dpod__V1__JobEvent *ev;
  assert_int_equal(next_event(s, 0, &ev), DPOD_ENOENT);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_NOT_FOUND);
  assert_err_has("/dpod.v1.Coordinator/WatchJob: NOT_FOUND");
  rpc_stream_close(s);
}

static void stream_broken_midway(void **state) {
  (void)state;
  rpc_stream *s = watch(5, 0);  /* the fake breaks job 5's first stream after three events */
  Dpod__V1__JobEvent *ev;
  int n = 0, rc;
  while ((rc = next_event(s, 0, &ev)) == 1) {
    n++;
    protobuf_c_message_free_unpacked(&ev->base, NULL);
  }
  assert_int_equal(n, 3);
  assert_int_equal(rc, DPOD_ERPC);
  assert_int_equal(rpc_last_grpc_status(), GRPC_STATUS_UNAVAILABLE);
  rpc_stream_close(s);
}

static void stream_next_times_out_and_stays_usable(void **state) {
  (void)state;
  rpc_stream *s = watch(600, 0);  /* one event, 600 ms of silence, another */
  Dpod__V1__JobEvent *ev;
  assert_int_equal(next_event(s, 2000, &ev), 1);
  assert_int_equal(ev->seq, 1);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  assert_int_equal(next_event(s, 100, &ev), DPOD_ETIMEDOUT);
  assert_null(ev);
  int rc;
  while ((rc = next_event(s, 100, &ev)) == DPOD_ETIMEDOUT) {
  }
  assert_int_equal(rc, 1);
  assert_int_equal(ev->seq, 2);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  assert_int_equal(next_event(s, 2000, &ev), 0);
  rpc_stream_close(s);
}

static void stream_close_while_running(void **state) {
  (void)state;
  rpc_stream *s = watch(700, 0);  /* 50 events, one per 100 ms */
  Dpod__V1__JobEvent *ev;
  assert_int_equal(next_event(s, 2000, &ev), 1);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  /* Leave a read pending, then close: the call is cancelled and drained. */
  assert_int_equal(next_event(s, 1, &ev), DPOD_ETIMEDOUT);
  rpc_stream_close(s);
  /* The client still works afterwards. */
  Dpod__V1__GetJobResponse *resp;
  if (get_job(9, 5000, &resp) != 0) fail_msg("%s", err);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void *thread_call(void *arg) {
  char e[512];
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = 11;
  ProtobufCMessage *resp;
  intptr_t rc = rpc_unary(arg, "/dpod.v1.Coordinator/GetJob", &req.base, &dpod__v1__get_job_response__descriptor,
                          &resp, 5000, e, sizeof e);
  if (rc == 0) {
    if (((Dpod__V1__GetJobResponse *)resp)->job->id != 11) rc = -100;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return (void *)rc;
}

static void works_from_other_threads(void **state) {
  (void)state;
  pthread_t t[3];
  for (int i = 0; i < 3; i++) assert_int_equal(pthread_create(&t[i], NULL, thread_call, client), 0);
  for (int i = 0; i < 3; i++) {
    void *rc;
    pthread_join(t[i], &rc);
    assert_int_equal((intptr_t)rc, 0);
  }
}

/* Paths come from protoc-c's descriptors: exactly the contract's, one string per method, and NULL for a
 * method the service does not have. */
static void method_paths_come_from_the_contract(void **state) {
  (void)state;
  const char *get = rpc_method_path(&dpod__v1__coordinator__descriptor, "GetJob");
  assert_non_null(get);
  assert_string_equal(get, "/dpod.v1.Coordinator/GetJob");
  assert_ptr_equal(get, rpc_method_path(&dpod__v1__coordinator__descriptor, "GetJob"));
  assert_string_equal(rpc_method_path(&dpod__v1__worker_report__descriptor, "Report"), "/dpod.v1.WorkerReport/Report");
  assert_string_equal(rpc_method_path(&grpc__health__v1__health__descriptor, "Check"), "/grpc.health.v1.Health/Check");
  assert_null(rpc_method_path(&dpod__v1__coordinator__descriptor, "Report"));
  assert_null(rpc_method_path(&dpod__v1__worker_report__descriptor, "GetJob"));
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      T(unary_returns_the_response),
      T(unary_error_names_method_code_and_details),
      T(unary_unimplemented_method),
      T(unary_deadline_expires),
      T(health_check_serving),
      T(unreachable_server_is_unavailable),
      T(stream_yields_every_event_then_ends),
      T(stream_replays_after_seq),
      T(stream_error_status),
      T(stream_broken_midway),
      T(stream_next_times_out_and_stays_usable),
      T(stream_close_while_running),
      T(works_from_other_threads),
      cmocka_unit_test(method_paths_come_from_the_contract),
  };
  return CMOCKA_MAIN("rpc_client", tests, group_setup, group_teardown);
}
