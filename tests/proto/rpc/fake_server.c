/* See fake_server.h. The server thread runs each call to the end before asking for the next, waiting on
 * the one completion queue for the tag of the batch it just started. */
#include "fake_server.h"

#include <limits.h>
#include <unistd.h>

#include "rpc_addr.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpod.pb-c.h"
#include "health.pb-c.h"

static grpc_server *server;
static grpc_completion_queue *cq;
static pthread_t thread;
static int watch5_calls;  /* how many WatchJob calls job 5 has had */
static char tag_new_call_, tag_op_, tag_shutdown_;
#define TAG_NEW_CALL ((void *)&tag_new_call_)
#define TAG_OP ((void *)&tag_op_)
#define TAG_SHUTDOWN ((void *)&tag_shutdown_)

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Waits for `tag`; returns its success flag. Only the current call has batches in flight. */
static int wait_tag(void *tag) {
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) return 0;
    if (ev.tag == tag) return ev.success;
  }
}

static int run_batch(grpc_call *call, grpc_op *ops, size_t n) {
  if (grpc_call_start_batch(call, ops, n, TAG_OP, NULL) != GRPC_CALL_OK) return 0;
  return wait_tag(TAG_OP);
}

static grpc_byte_buffer *pack(const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  grpc_slice s = grpc_slice_malloc(n);
  protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

static int send_msg(grpc_call *call, const ProtobufCMessage *m) {
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = pack(m);
  int ok = run_batch(call, &op, 1);
  grpc_byte_buffer_destroy(op.data.send_message.send_message);
  return ok;
}

static void finish(grpc_call *call, grpc_status_code code, const char *details) {
  int cancelled = 0;
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  grpc_slice d = grpc_slice_from_copied_string(details ? details : "");
  ops[0].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[0].data.send_status_from_server.status = code;
  ops[0].data.send_status_from_server.status_details = &d;
  ops[1].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[1].data.recv_close_on_server.cancelled = &cancelled;
  run_batch(call, ops, 2);
  grpc_slice_unref(d);
}

/* The scripted events of jobs 1, 2 and 5 (seq is 1-based). */
static void make_event(uint64_t job, uint64_t seq, int failed, Dpod__V1__JobEvent *ev, Dpod__V1__StateChange *sc,
                       Dpod__V1__StepMetrics *m, Dpod__V1__CheckpointInfo *ck) {
  dpod__v1__job_event__init(ev);
  dpod__v1__state_change__init(sc);
  dpod__v1__step_metrics__init(m);
  dpod__v1__checkpoint_info__init(ck);
  ev->has_job_id = ev->has_seq = ev->has_time_unix_ms = 1;
  ev->job_id = job;
  ev->seq = seq;
  ev->time_unix_ms = 1700000000000LL + (int64_t)seq * 1000;
  uint64_t last = failed ? 4 : 7;
  if (seq == 1 || seq == 2 || seq == last) {
    ev->event_case = DPOD__V1__JOB_EVENT__EVENT_STATE;
    ev->state = sc;
    sc->has_state = 1;
    sc->state = seq == 1   ? DPOD__V1__JOB_STATE__JOB_STATE_QUEUED
                : seq == 2 ? DPOD__V1__JOB_STATE__JOB_STATE_RUNNING
                : failed   ? DPOD__V1__JOB_STATE__JOB_STATE_FAILED
                           : DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
    if (failed && seq == last) {
      sc->reason = "exit status 3";
      sc->has_exit_code = 1;
      sc->exit_code = 3;
    }
  } else if (seq == 6) {
    ev->event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
    ev->checkpoint = ck;
    ck->has_step = ck->has_size_bytes = 1;
    ck->step = 3;
    ck->path = "/runs/job/checkpoint-3";
    ck->size_bytes = 3u << 20;
  } else {
    ev->event_case = DPOD__V1__JOB_EVENT__EVENT_METRICS;
    ev->metrics = m;
    m->has_step = m->has_total_steps = m->has_loss = m->has_implicit_acc = m->has_policy_mse = m->has_ref_mse = 1;
    m->has_reward_margin = m->has_grad_norm = m->has_learning_rate = m->has_samples_per_sec = 1;
    m->step = (uint32_t)(seq - 2);
    m->total_steps = 3;
    m->loss = 0.6931 - 0.01 * (double)seq;
    m->implicit_acc = 0.5;
    m->policy_mse = 1.0433;
    m->ref_mse = 1.0436;
    m->reward_margin = 0.012;
    m->grad_norm = 1.23;
    m->learning_rate = 1e-5;
    m->samples_per_sec = 12.3;
  }
}

static void serve_watch(grpc_call *call, const Dpod__V1__WatchJobRequest *req) {
  uint64_t job = req->job_id, after = req->after_seq;
  Dpod__V1__JobEvent ev;
  Dpod__V1__StateChange sc;
  Dpod__V1__StepMetrics m;
  Dpod__V1__CheckpointInfo ck;
  if (job == 600 || job == 700) {
    int n = job == 600 ? 2 : 50;
    for (int i = 1; i <= n; i++) {
      make_event(job, 3, 0, &ev, &sc, &m, &ck);
      ev.seq = (uint64_t)i;
      if (!send_msg(call, &ev.base)) break;
      sleep_ms(job == 600 ? 600 : 100);
    }
    finish(call, GRPC_STATUS_OK, NULL);
    return;
  }
  if (job != 1 && job != 2 && job != 5) {
    finish(call, GRPC_STATUS_NOT_FOUND, "no such job");
    return;
  }
  uint64_t last = job == 2 ? 4 : 7, from = after + 1;
  int breaks = 0;
  if (job == 5) {
    breaks = ++watch5_calls == 1;
    if (!breaks && after > 0) from = after;  /* resend one the client has seen */
  }
  for (uint64_t seq = from; seq <= last; seq++) {
    if (breaks && seq == after + 4) {
      finish(call, GRPC_STATUS_UNAVAILABLE, "fake dpod is restarting");
      return;
    }
    make_event(job, seq, job == 2, &ev, &sc, &m, &ck);
    if (!send_msg(call, &ev.base)) break;
  }
  finish(call, GRPC_STATUS_OK, NULL);
}

static void make_job(uint64_t id, Dpod__V1__JobState state, Dpod__V1__Job *j, Dpod__V1__StepMetrics *m) {
  dpod__v1__job__init(j);
  dpod__v1__step_metrics__init(m);
  j->has_id = j->has_state = j->has_created_unix_ms = j->has_last_seq = 1;
  j->id = id;
  j->name = "fake";
  j->state = state;
  j->created_unix_ms = 1700000000000LL;
  j->last_seq = 4;
  j->run_dir = "/runs/fake";
  m->has_step = m->has_total_steps = m->has_loss = 1;
  m->step = 2;
  m->total_steps = 3;
  m->loss = 0.5;
  j->last_metrics = m;
}

static void serve(grpc_call *call, const char *method, grpc_byte_buffer *req_bb) {
  grpc_byte_buffer_reader r;
  grpc_byte_buffer_reader_init(&r, req_bb);
  grpc_slice all = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  size_t len = GRPC_SLICE_LENGTH(all);
  const uint8_t *data = GRPC_SLICE_START_PTR(all);
  Dpod__V1__Job job;
  Dpod__V1__StepMetrics m;

  if (strcmp(method, "/dpod.v1.Coordinator/WatchJob") == 0) {
    Dpod__V1__WatchJobRequest *req = dpod__v1__watch_job_request__unpack(NULL, len, data);
    if (req) serve_watch(call, req); else finish(call, GRPC_STATUS_INVALID_ARGUMENT, "bad request");
    dpod__v1__watch_job_request__free_unpacked(req, NULL);
  } else if (strcmp(method, "/dpod.v1.Coordinator/GetJob") == 0 ||
             strcmp(method, "/dpod.v1.Coordinator/CancelJob") == 0) {
    Dpod__V1__GetJobRequest *req = dpod__v1__get_job_request__unpack(NULL, len, data);
    uint64_t id = req ? req->job_id : 0;
    dpod__v1__get_job_request__free_unpacked(req, NULL);
    if (id == 404) {
      finish(call, GRPC_STATUS_NOT_FOUND, "no job 404");
    } else {
      if (id == 800) sleep_ms(500);
      int cancel = method[strlen("/dpod.v1.Coordinator/")] == 'C';
      make_job(id, cancel ? DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED : DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, &job, &m);
      /* Job 7 has two checkpoints on disk, the first with the metrics of its step. */
      Dpod__V1__CheckpointInfo ck1 = DPOD__V1__CHECKPOINT_INFO__INIT, ck2 = DPOD__V1__CHECKPOINT_INFO__INIT;
      Dpod__V1__CheckpointInfo *cks[2] = {&ck1, &ck2};
      if (id == 7) {
        ck1.has_step = ck1.has_size_bytes = ck2.has_step = 1;
        ck1.step = 1, ck1.path = "/runs/fake/checkpoints/step-000001", ck1.size_bytes = 3 << 20;
        ck1.metrics = &m;
        ck2.step = 2, ck2.path = "/runs/fake/checkpoints/step-000002";
        job.n_checkpoints = 2, job.checkpoints = cks;
      }
      Dpod__V1__GetJobResponse resp = DPOD__V1__GET_JOB_RESPONSE__INIT;  /* same wire shape as CancelJobResponse */
      resp.job = &job;
      send_msg(call, &resp.base);
      finish(call, GRPC_STATUS_OK, NULL);
    }
  } else if (strcmp(method, "/dpod.v1.Coordinator/SubmitJob") == 0) {
    Dpod__V1__SubmitJobRequest *req = dpod__v1__submit_job_request__unpack(NULL, len, data);
    if (!req || !req->spec) {
      finish(call, GRPC_STATUS_INVALID_ARGUMENT, "spec: missing");
    } else {
      make_job(42, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, &job, &m);
      job.spec = req->spec;
      Dpod__V1__SubmitJobResponse resp = DPOD__V1__SUBMIT_JOB_RESPONSE__INIT;
      resp.job = &job;
      send_msg(call, &resp.base);
      finish(call, GRPC_STATUS_OK, NULL);
    }
    dpod__v1__submit_job_request__free_unpacked(req, NULL);
  } else if (strcmp(method, "/dpod.v1.Coordinator/ListJobs") == 0) {
    /* Two jobs share the name "fake" (a lookup by it is ambiguous); "solo-7" is job 7's alone. */
    Dpod__V1__Job job2, job3;
    Dpod__V1__StepMetrics m2, m3;
    Dpod__V1__Job *jobs[3] = {&job3, &job2, &job};
    make_job(3, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, &job, &m);
    make_job(5, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, &job2, &m2);
    make_job(7, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, &job3, &m3);
    job3.name = "solo-7";
    Dpod__V1__ListJobsResponse resp = DPOD__V1__LIST_JOBS_RESPONSE__INIT;
    resp.n_jobs = 3;
    resp.jobs = jobs;
    send_msg(call, &resp.base);
    finish(call, GRPC_STATUS_OK, NULL);
  } else if (strcmp(method, "/grpc.health.v1.Health/Check") == 0) {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    send_msg(call, &resp.base);
    finish(call, GRPC_STATUS_OK, NULL);
  } else {
    finish(call, GRPC_STATUS_UNIMPLEMENTED, "no such method");
  }
  grpc_slice_unref(all);
}

static void *server_main(void *arg) {
  (void)arg;
  for (;;) {
    grpc_call *call = NULL;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_call_details_init(&details);
    grpc_metadata_array_init(&md);
    if (grpc_server_request_call(server, &call, &details, &md, cq, cq, TAG_NEW_CALL) != GRPC_CALL_OK) break;
    int ok = wait_tag(TAG_NEW_CALL);
    if (ok && call) {
      char *method = grpc_slice_to_c_string(details.method);
      grpc_byte_buffer *req = NULL;
      grpc_op ops[2];
      memset(ops, 0, sizeof ops);
      ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
      ops[1].op = GRPC_OP_RECV_MESSAGE;
      ops[1].data.recv_message.recv_message = &req;
      if (run_batch(call, ops, 2) && req)
        serve(call, method, req);
      else
        finish(call, GRPC_STATUS_INVALID_ARGUMENT, "no request");
      if (req) grpc_byte_buffer_destroy(req);
      gpr_free(method);
      grpc_call_unref(call);
    }
    grpc_call_details_destroy(&details);
    grpc_metadata_array_destroy(&md);
    if (!ok) break;  /* the server is shutting down */
  }
  return NULL;
}

int fake_server_start(const char *addr) {
  grpc_init();
  server = grpc_server_create(NULL, NULL);
  cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(server, cq, NULL);
  /* Bound like dpod binds, so that a socket path longer than sun_path works here too. */
  char target[PATH_MAX + 64], err[256];
  static int dir_fd = -1;
  if (dir_fd >= 0) close(dir_fd);
  if (rpc_addr_for_socket(addr, target, sizeof target, &dir_fd, err, sizeof err) != 0) {
    fprintf(stderr, "fake_server: %s\n", err);
    return -1;
  }
  grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
  int port = grpc_server_add_http2_port(server, target, creds);
  grpc_server_credentials_release(creds);
  if (!port) {
    fprintf(stderr, "fake_server: cannot listen on %s\n", addr);
    return -1;
  }
  grpc_server_start(server);
  watch5_calls = 0;
  return pthread_create(&thread, NULL, server_main, NULL) == 0 ? 0 : -1;
}

void fake_server_stop(void) {
  grpc_server_shutdown_and_notify(server, cq, TAG_SHUTDOWN);
  grpc_server_cancel_all_calls(server);
  pthread_join(thread, NULL);
  /* The shutdown tag may still be queued; drain everything. */
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_server_destroy(server);
  grpc_completion_queue_destroy(cq);
  server = NULL;
  cq = NULL;
  grpc_shutdown();
}
