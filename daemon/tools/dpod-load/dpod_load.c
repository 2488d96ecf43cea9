/* dpod-load: how dpod holds up under load. A benchmark, not a test: it prints figures.
 *
 * It starts a private dpod (one slot, tests/daemon/fake_worker.sh as the worker), submits one job that
 * holds the slot and QUEUED more behind it, opens WATCHERS WatchJob streams on the running job, and for
 * SECONDS feeds that job's reports (as rank 0 would) while CLIENTS threads call GetJob on random jobs.
 * Each client thread alternates its GetJob with a call of the same size to a bare gRPC-core echo server
 * in this process, over the same kind of socket, so that both are measured under the same load. Then it
 * cancels the queue, lets the job end, and checks that every watcher received every event of the job.
 *
 * It prints: errors (goal 0), GetJob and echo p50/p99 (goal: GetJob p99 at most 3x the echo's),
 * watcher completeness (goal: every event to every watcher) and the longest stall of dpod's event loop
 * (goal under 50 ms, as dpod measures it: GetStatus). Exits 1 if it could not run or saw errors. */
#include <errno.h>
#include <getopt.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dpod.pb-c.h"
#include "dpod_parse.h"
#include "job_spec.h"
#include "rpc_client.h"

#define M_COORD(m) "/dpod.v1.Coordinator/" m
#define M_REPORT "/dpod.v1.WorkerReport/Report"
#define M_ECHO "/dpod.load.Echo/Echo"
#define CALL_TIMEOUT_MS 30000

typedef struct {
  unsigned jobs, watchers, clients, seconds, steps_per_s;
  const char *dpod, *worker;
  bool keep;
} options;

static struct {
  options o;
  char dir[PATH_MAX], addr[PATH_MAX + 16], echo_addr[PATH_MAX + 16];
  pid_t dpod_pid;
  rpc_client *c;
  uint64_t hold_id, first_queued, last_queued;
  atomic_int errors;
  atomic_bool stop_clients;
  char first_error[640];
  pthread_mutex_t err_lock;
} g;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void error_seen(const char *what, const char *err) {
  if (atomic_fetch_add(&g.errors, 1) == 0) {
    pthread_mutex_lock(&g.err_lock);
    snprintf(g.first_error, sizeof g.first_error, "%s: %s", what, err);
    pthread_mutex_unlock(&g.err_lock);
  }
}

/* ---- latencies ------------------------------------------------------------------------------- */

typedef struct {
  double *v;
  size_t n, cap;
} samples;

static void samples_add(samples *s, double x) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 4096;
    double *v = realloc(s->v, cap * sizeof *v);
    if (!v) return; /* out of memory: the sample is lost, not the run */
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The q-quantile of sorted samples (nearest rank). */
static double quantile(const samples *s, double q) {
  if (s->n == 0) return 0;
  size_t i = (size_t)(q * (double)s->n);
  return s->v[i < s->n ? i : s->n - 1];
}

/* ---- the bare echo server -------------------------------------------------------------------- */

/* One thread, one completion queue, ECHO_SLOTS calls in flight: the least a gRPC core server does. It
 * answers every call with the same bytes (a packed GetJobResponse of a real job). */
#define ECHO_SLOTS 32

typedef struct echo_call {
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  grpc_byte_buffer *recv;
  int cancelled;
  int stage; /* 0: waiting for a call, 1: reading its message, 2: replying */
} echo_call;

static struct {
  grpc_server *srv;
  grpc_completion_queue *cq;
  pthread_t thread;
  grpc_slice reply;
  echo_call calls[ECHO_SLOTS];
  bool shutting_down;
} echo;

static void echo_request(echo_call *ec) {
  grpc_call_details_destroy(&ec->details);
  grpc_metadata_array_destroy(&ec->md);
  grpc_call_details_init(&ec->details);
  grpc_metadata_array_init(&ec->md);
  ec->stage = 0;
  ec->call = NULL;
  if (grpc_server_request_call(echo.srv, &ec->call, &ec->details, &ec->md, echo.cq, echo.cq, ec) != GRPC_CALL_OK)
    ec->stage = -1;
}

static void echo_step(echo_call *ec, bool ok) {
  if (ec->stage == 0) {
    if (!ok) return; /* the server shuts down */
    grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
    op.data.recv_message.recv_message = &ec->recv;
    ec->stage = 1;
    if (grpc_call_start_batch(ec->call, &op, 1, ec, NULL) != GRPC_CALL_OK) abort();
  } else if (ec->stage == 1) {
    grpc_byte_buffer_destroy(ec->recv);
    ec->recv = NULL;
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    grpc_byte_buffer *out = grpc_raw_byte_buffer_create(&echo.reply, 1);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = out;
    ops[2].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[2].data.send_status_from_server.status = GRPC_STATUS_OK;
    ops[3].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[3].data.recv_close_on_server.cancelled = &ec->cancelled;
    ec->stage = 2;
    grpc_call_error e = grpc_call_start_batch(ec->call, ops, 4, ec, NULL);
    grpc_byte_buffer_destroy(out); /* the core took its own reference */
    if (e != GRPC_CALL_OK) abort();
  } else {
    grpc_call_unref(ec->call);
    ec->call = NULL;
    if (!echo.shutting_down) echo_request(ec);
  }
}

static void *echo_main(void *arg) {
  (void)arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(echo.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) return NULL;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    if (ev.tag == &echo) continue; /* the shutdown notification */
    echo_step(ev.tag, ev.success != 0);
  }
}

static int echo_start(const uint8_t *reply, size_t len) {
  echo.reply = grpc_slice_from_copied_buffer((const char *)reply, len);
  echo.cq = grpc_completion_queue_create_for_next(NULL);
  echo.srv = grpc_server_create(NULL, NULL);
  grpc_server_register_completion_queue(echo.srv, echo.cq, NULL);
  grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
  int port = grpc_server_add_http2_port(echo.srv, g.echo_addr, creds);
  grpc_server_credentials_release(creds);
  if (port == 0) return -1;
  grpc_server_start(echo.srv);
  for (int i = 0; i < ECHO_SLOTS; i++) {
    grpc_call_details_init(&echo.calls[i].details);
    grpc_metadata_array_init(&echo.calls[i].md);
    echo_request(&echo.calls[i]);
  }
  return pthread_create(&echo.thread, NULL, echo_main, NULL) == 0 ? 0 : -1;
}

static void echo_stop(void) {
  echo.shutting_down = true;
  grpc_server_shutdown_and_notify(echo.srv, echo.cq, &echo);
  grpc_server_cancel_all_calls(echo.srv);
  /* The thread sees the notification and the cancelled requests, then the queue's shutdown. */
  sleep_ms(200);
  grpc_completion_queue_shutdown(echo.cq);
  pthread_join(echo.thread, NULL);
  grpc_server_destroy(echo.srv);
  grpc_completion_queue_destroy(echo.cq);
  for (int i = 0; i < ECHO_SLOTS; i++) {
    grpc_call_details_destroy(&echo.calls[i].details);
    grpc_metadata_array_destroy(&echo.calls[i].md);
  }
  grpc_slice_unref(echo.reply);
}

/* ---- dpod ------------------------------------------------------------------------------------ */

static int dpod_start(void) {
  char log[PATH_MAX + 16], state[PATH_MAX + 16];
  snprintf(log, sizeof log, "%s/dpod.log", g.dir);
  snprintf(state, sizeof state, "%s/state", g.dir);
  fflush(stdout); /* or the child's freopen writes our buffered lines again */
  g.dpod_pid = fork();
  if (g.dpod_pid < 0) return -1;
  if (g.dpod_pid == 0) {
    if (!freopen(log, "a", stderr) || !freopen(log, "a", stdout)) _exit(127);
    execl(g.o.dpod, "dpod", "--listen", g.addr, "--state-dir", state, "--slots", "1", "--worker", g.o.worker,
          "--log-level", "warn", (char *)NULL);
    _exit(127);
  }
  /* A channel opened before the socket exists backs off for seconds: wait for the file first. */
  struct stat sb;
  for (int i = 0; i < 400 && stat(g.addr + 5, &sb) != 0; i++) sleep_ms(25);
  char err[512];
  if (rpc_client_open(g.addr, &g.c, err, sizeof err) != 0) return -1;
  for (int i = 0; i < 400; i++) {
    Dpod__V1__GetStatusRequest req = DPOD__V1__GET_STATUS_REQUEST__INIT;
    ProtobufCMessage *m;
    if (rpc_unary(g.c, M_COORD("GetStatus"), &req.base, &dpod__v1__get_status_response__descriptor, &m, 1000, err,
                  sizeof err) == 0) {
      protobuf_c_message_free_unpacked(m, NULL);
      return 0;
    }
    sleep_ms(50);
  }
  fprintf(stderr, "dpod-load: dpod did not answer: %s (log: %s)\n", err, log);
  return -1;
}

static void dpod_stop(void) {
  if (g.dpod_pid <= 0) return;
  kill(g.dpod_pid, SIGTERM);
  int status;
  for (int i = 0; i < 200; i++) {
    if (waitpid(g.dpod_pid, &status, WNOHANG) == g.dpod_pid) return;
    sleep_ms(50);
  }
  kill(g.dpod_pid, SIGKILL);
  waitpid(g.dpod_pid, &status, 0);
}

static uint64_t submit(const char *name, uint32_t steps, double *latency) {
  Dpod__V1__JobSpec *spec = job_spec_new();
  if (!spec) return 0;
  free(spec->name); /* job_spec_new() fills in a copy of the default */
  spec->name = strdup(name);
  spec->has_ranks = 1;
  spec->ranks = 1;
  spec->train->has_steps = 1;
  spec->train->steps = steps;
  Dpod__V1__SubmitJobRequest req = DPOD__V1__SUBMIT_JOB_REQUEST__INIT;
  req.spec = spec;
  ProtobufCMessage *m = NULL;
  char err[512];
  double t0 = now_s();
  int rc = rpc_unary(g.c, M_COORD("SubmitJob"), &req.base, &dpod__v1__submit_job_response__descriptor, &m,
                     CALL_TIMEOUT_MS, err, sizeof err);
  if (latency) *latency = now_s() - t0;
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  if (rc != 0) {
    error_seen("SubmitJob", err);
    return 0;
  }
  uint64_t id = ((Dpod__V1__SubmitJobResponse *)m)->job->id;
  protobuf_c_message_free_unpacked(m, NULL);
  return id;
}

static Dpod__V1__GetStatusResponse *get_status(void) {
  Dpod__V1__GetStatusRequest req = DPOD__V1__GET_STATUS_REQUEST__INIT;
  ProtobufCMessage *m = NULL;
  char err[512];
  if (rpc_unary(g.c, M_COORD("GetStatus"), &req.base, &dpod__v1__get_status_response__descriptor, &m, CALL_TIMEOUT_MS,
                err, sizeof err) != 0) {
    error_seen("GetStatus", err);
    return NULL;
  }
  return (Dpod__V1__GetStatusResponse *)m;
}

/* GetJob of job `id`, or NULL. Free with protobuf_c_message_free_unpacked. */
static Dpod__V1__GetJobResponse *get_job(uint64_t id) {
  Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = id;
  ProtobufCMessage *m = NULL;
  char err[512];
  if (rpc_unary(g.c, M_COORD("GetJob"), &req.base, &dpod__v1__get_job_response__descriptor, &m, CALL_TIMEOUT_MS, err,
                sizeof err) != 0)
    return NULL;
  return (Dpod__V1__GetJobResponse *)m;
}

static Dpod__V1__JobState job_state(uint64_t id) {
  Dpod__V1__GetJobResponse *r = get_job(id);
  if (!r) return DPOD__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
  Dpod__V1__JobState s = r->job->state;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return s;
}

/* The packed GetJobResponse of job `id`: what the echo server answers with. */
static int packed_get_job(uint64_t id, uint8_t **out, size_t *len) {
  Dpod__V1__GetJobResponse *r = get_job(id);
  if (!r) return -1;
  *len = protobuf_c_message_get_packed_size(&r->base);
  *out = malloc(*len ? *len : 1);
  if (*out) protobuf_c_message_pack(&r->base, *out);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return *out ? 0 : -1;
}

/* ---- rank 0's reports ------------------------------------------------------------------------ */

typedef struct {
  char secret[128];
  uint32_t steps;
  uint32_t sent;
  double seconds;
} reporter;

#define REPORT_BATCH 8

static void *reporter_main(void *arg) {
  reporter *r = arg;
  char err[512];
  double t0 = now_s();
  bool first = true;
  while (r->sent < r->steps) {
    /* Pace the steps evenly over the run, in batches as rank 0 sends them. */
    double due = t0 + r->seconds * (double)(r->sent + REPORT_BATCH) / (double)r->steps;
    double wait = due - now_s();
    if (wait > 0) sleep_ms((int)(wait * 1000));
    Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
    req.has_job_id = req.has_attempt = 1;
    req.job_id = g.hold_id;
    req.attempt = 1;
    req.secret = r->secret;
    Dpod__V1__WorkerEvent wev[REPORT_BATCH + 1], *pev[REPORT_BATCH + 1];
    Dpod__V1__StepMetrics m[REPORT_BATCH];
    Dpod__V1__WorkerStarted started = DPOD__V1__WORKER_STARTED__INIT;
    size_t n = 0;
    if (first) {
      started.has_world_size = started.has_total_steps = 1;
      started.world_size = 1;
      started.total_steps = r->steps;
      wev[n] = (Dpod__V1__WorkerEvent)DPOD__V1__WORKER_EVENT__INIT;
      wev[n].event_case = DPOD__V1__WORKER_EVENT__EVENT_STARTED;
      wev[n].started = &started;
      pev[n] = &wev[n];
      n++;
    }
    uint32_t from = r->sent;
    for (int i = 0; i < REPORT_BATCH && from + (uint32_t)i < r->steps; i++) {
      Dpod__V1__StepMetrics *s = &m[i];
      *s = (Dpod__V1__StepMetrics)DPOD__V1__STEP_METRICS__INIT;
      s->has_step = s->has_loss = s->has_implicit_acc = 1;
      s->step = from + (uint32_t)i + 1;
      s->loss = 0.693f / (float)s->step;
      s->implicit_acc = 0.75f;
      wev[n] = (Dpod__V1__WorkerEvent)DPOD__V1__WORKER_EVENT__INIT;
      wev[n].event_case = DPOD__V1__WORKER_EVENT__EVENT_METRICS;
      wev[n].metrics = s;
      pev[n] = &wev[n];
      n++;
    }
    req.events = pev;
    req.n_events = n;
    ProtobufCMessage *resp = NULL;
    if (rpc_unary(g.c, M_REPORT, &req.base, &dpod__v1__report_response__descriptor, &resp, CALL_TIMEOUT_MS, err,
                  sizeof err) != 0) {
      error_seen("Report", err);
      sleep_ms(100); /* retry the same steps, as rank 0 would */
      continue;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    first = false;
    r->sent = from + REPORT_BATCH < r->steps ? from + REPORT_BATCH : r->steps;
  }
  return NULL;
}

/* ---- watchers ------------------------------------------------------------------------------- */

/* All watchers run on one thread and one completion queue, spread over a few connections: a thread
 * per stream would have 200 threads wake for every event and fight dpod for the CPUs. */
#define WATCH_CHANNELS 8

typedef struct {
  grpc_call *call;
  grpc_byte_buffer *recv;
  grpc_metadata_array initial_md, trailing_md;
  grpc_status_code status;
  grpc_slice details;
  uint64_t events, last_seq;
  bool in_order, ended_terminal, failed, done;
} watcher;

enum { W_START = 1, W_MSG = 2, W_STATUS = 3 }; /* tag = watcher address | kind */

static struct {
  grpc_channel *channels[WATCH_CHANNELS];
  grpc_completion_queue *cq;
  pthread_t thread;
  watcher *ws;
  unsigned n;
} wpool;

static bool state_terminal(Dpod__V1__JobState s) {
  return s == DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED || s == DPOD__V1__JOB_STATE__JOB_STATE_FAILED ||
         s == DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED || s == DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED;
}

static void *watch_tag(watcher *w, int kind) { return (void *)((uintptr_t)w | (uintptr_t)kind); }

static void watcher_recv(watcher *w) {
  grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
  op.data.recv_message.recv_message = &w->recv;
  if (grpc_call_start_batch(w->call, &op, 1, watch_tag(w, W_MSG), NULL) != GRPC_CALL_OK) abort();
}

static int watchers_start(unsigned n, uint64_t job_id) {
  wpool.n = n;
  wpool.ws = calloc(n, sizeof *wpool.ws);
  if (!wpool.ws) return -1;
  wpool.cq = grpc_completion_queue_create_for_next(NULL);
  grpc_arg arg = {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, .value.integer = 1};
  grpc_channel_args args = {1, &arg};
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  for (int i = 0; i < WATCH_CHANNELS; i++) wpool.channels[i] = grpc_channel_create(g.addr, creds, &args);
  grpc_channel_credentials_release(creds);

  Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = job_id;
  uint8_t buf[64];
  size_t len = protobuf_c_message_pack(&req.base, buf);
  grpc_slice method = grpc_slice_from_static_string(M_COORD("WatchJob"));
  for (unsigned i = 0; i < n; i++) {
    watcher *w = &wpool.ws[i];
    w->in_order = true;
    grpc_metadata_array_init(&w->initial_md);
    grpc_metadata_array_init(&w->trailing_md);
    w->call = grpc_channel_create_call(wpool.channels[i % WATCH_CHANNELS], NULL, GRPC_PROPAGATE_DEFAULTS, wpool.cq,
                                       method, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_slice payload = grpc_slice_from_copied_buffer((const char *)buf, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&payload, 1);
    grpc_slice_unref(payload);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &w->initial_md;
    grpc_call_error e = grpc_call_start_batch(w->call, ops, 4, watch_tag(w, W_START), NULL);
    grpc_byte_buffer_destroy(bb);
    grpc_op st = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
    st.data.recv_status_on_client.trailing_metadata = &w->trailing_md;
    st.data.recv_status_on_client.status = &w->status;
    st.data.recv_status_on_client.status_details = &w->details;
    if (e != GRPC_CALL_OK || grpc_call_start_batch(w->call, &st, 1, watch_tag(w, W_STATUS), NULL) != GRPC_CALL_OK)
      return -1;
    watcher_recv(w);
  }
  return 0;
}

/* Runs until every stream has its status. */
static void *watchers_main(void *arg) {
  (void)arg;
  unsigned done = 0;
  while (done < wpool.n) {
    grpc_event ev = grpc_completion_queue_next(wpool.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type != GRPC_OP_COMPLETE) continue;
    watcher *w = (watcher *)((uintptr_t)ev.tag & ~(uintptr_t)3);
    int kind = (int)((uintptr_t)ev.tag & 3);
    if (kind == W_STATUS) {
      if (w->status != GRPC_STATUS_OK) {
        char *d = grpc_slice_to_c_string(w->details);
        error_seen("WatchJob stream", d);
        gpr_free(d);
        w->failed = true;
      }
      w->done = true;
      done++;
    } else if (kind == W_MSG && w->recv) {
      grpc_byte_buffer_reader r;
      grpc_byte_buffer_reader_init(&r, w->recv);
      grpc_slice all = grpc_byte_buffer_reader_readall(&r);
      grpc_byte_buffer_reader_destroy(&r);
      grpc_byte_buffer_destroy(w->recv);
      w->recv = NULL;
      Dpod__V1__JobEvent *e = dpod__v1__job_event__unpack(NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
      grpc_slice_unref(all);
      if (!e) {
        w->failed = true;
      } else {
        if (e->seq != w->last_seq + 1) w->in_order = false;
        w->last_seq = e->seq;
        w->events++;
        if (e->event_case == DPOD__V1__JOB_EVENT__EVENT_STATE && state_terminal(e->state->state)) w->ended_terminal = true;
        dpod__v1__job_event__free_unpacked(e, NULL);
      }
      watcher_recv(w);
    }
    /* W_START, and W_MSG without a message (the stream ended): the status follows. */
  }
  return NULL;
}

static void watchers_free(void) {
  for (unsigned i = 0; i < wpool.n; i++) {
    watcher *w = &wpool.ws[i];
    if (w->call) grpc_call_unref(w->call);
    grpc_metadata_array_destroy(&w->initial_md);
    grpc_metadata_array_destroy(&w->trailing_md);
    grpc_slice_unref(w->details);
  }
  for (int i = 0; i < WATCH_CHANNELS; i++)
    if (wpool.channels[i]) grpc_channel_destroy(wpool.channels[i]);
  if (wpool.cq) {
    grpc_completion_queue_shutdown(wpool.cq);
    while (grpc_completion_queue_next(wpool.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(wpool.cq);
  }
  free(wpool.ws);
}

/* The job's events as stored, replayed once it has ended: what every watcher must have had. */
static uint64_t stored_events(uint64_t job_id) {
  Dpod__V1__WatchJobRequest req = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = job_id;
  rpc_stream *s = NULL;
  char err[512];
  uint64_t n = 0;
  if (rpc_stream_open(g.c, M_COORD("WatchJob"), &req.base, &s, err, sizeof err) != 0) {
    error_seen("WatchJob", err);
    return 0;
  }
  ProtobufCMessage *m = NULL;
  int rc;
  while ((rc = rpc_stream_next(s, &dpod__v1__job_event__descriptor, &m, CALL_TIMEOUT_MS, err, sizeof err)) == 1) {
    n++;
    protobuf_c_message_free_unpacked(m, NULL);
  }
  if (rc < 0) error_seen("WatchJob replay", err);
  rpc_stream_close(s);
  return n;
}

/* ---- clients --------------------------------------------------------------------------------- */

typedef struct {
  pthread_t thread;
  rpc_client *echo_c;
  unsigned seed;
  samples get_job, echo;
} client;

static void *client_main(void *arg) {
  client *cl = arg;
  char err[512];
  uint64_t span = g.last_queued - g.hold_id + 1;
  while (!atomic_load(&g.stop_clients)) {
    Dpod__V1__GetJobRequest req = DPOD__V1__GET_JOB_REQUEST__INIT;
    req.has_job_id = 1;
    req.job_id = g.hold_id + (uint64_t)rand_r(&cl->seed) % span;
    ProtobufCMessage *m = NULL;
    double t0 = now_s();
    if (rpc_unary(g.c, M_COORD("GetJob"), &req.base, &dpod__v1__get_job_response__descriptor, &m, CALL_TIMEOUT_MS, err,
                  sizeof err) != 0)
      error_seen("GetJob", err);
    else
      samples_add(&cl->get_job, now_s() - t0), protobuf_c_message_free_unpacked(m, NULL);
    t0 = now_s();
    if (rpc_unary(cl->echo_c, M_ECHO, &req.base, &dpod__v1__get_job_response__descriptor, &m, CALL_TIMEOUT_MS, err,
                  sizeof err) != 0)
      error_seen("echo", err);
    else
      samples_add(&cl->echo, now_s() - t0), protobuf_c_message_free_unpacked(m, NULL);
  }
  return NULL;
}

/* ---- main ------------------------------------------------------------------------------------ */

static const char *const usage =
    "usage: dpod-load [--jobs N] [--watchers N] [--clients N] [--seconds S] [--rate STEPS_PER_S]\n"
    "                 [--dpod PATH] [--worker PATH] [--keep]\n"
    "  --jobs N       jobs queued behind the running one (default 1000)\n"
    "  --watchers N   WatchJob streams on the running job (default 200)\n"
    "  --clients N    threads calling GetJob and the echo in turn (default 4)\n"
    "  --seconds S    how long the load lasts (default 20)\n"
    "  --rate R       steps the running job reports per second (default 50)\n"
    "  --dpod PATH    the dpod to run (default: the one next to dpod-load)\n"
    "  --worker PATH  its worker (default: tests/daemon/fake_worker.sh of this source tree)\n"
    "  --keep         keep the scratch directory (dpod's log and state) and print its path\n";

static unsigned parse_count(const char *opt, const char *s, unsigned max) {
  uint64_t v;
  if (dpod_parse_u64(s, max, &v) != 0 || v == 0) {
    fprintf(stderr, "dpod-load: %s wants a whole number from 1 to %u, not '%s'\n", opt, max, s);
    exit(2);
  }
  return (unsigned)v;
}

static void default_dpod(char *buf, size_t len) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    snprintf(buf, len, "%s", "dpod");
    return;
  }
  self[n] = '\0';
  char *slash = strrchr(self, '/');
  if (slash) *slash = '\0';
  snprintf(buf, len, "%s/dpod", self);
}

int main(int argc, char **argv) {
  static char dpod_path[PATH_MAX + 8];
  default_dpod(dpod_path, sizeof dpod_path);
  g.o = (options){.jobs = 1000, .watchers = 200, .clients = 4, .seconds = 20, .steps_per_s = 50,
                  .dpod = dpod_path, .worker = DPOD_FAKE_WORKER};
  static const struct option longopts[] = {
      {"jobs", required_argument, NULL, 'j'},   {"watchers", required_argument, NULL, 'w'},
      {"clients", required_argument, NULL, 'c'}, {"seconds", required_argument, NULL, 's'},
      {"rate", required_argument, NULL, 'r'},    {"dpod", required_argument, NULL, 'D'},
      {"worker", required_argument, NULL, 'W'},  {"keep", no_argument, NULL, 'k'},
      {"help", no_argument, NULL, 'h'},          {0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (opt) {
      case 'j': g.o.jobs = parse_count("--jobs", optarg, 100000); break;
      case 'w': g.o.watchers = parse_count("--watchers", optarg, 2000); break;
      case 'c': g.o.clients = parse_count("--clients", optarg, 64); break;
      case 's': g.o.seconds = parse_count("--seconds", optarg, 3600); break;
      case 'r': g.o.steps_per_s = parse_count("--rate", optarg, 10000); break;
      case 'D': g.o.dpod = optarg; break;
      case 'W': g.o.worker = optarg; break;
      case 'k': g.o.keep = true; break;
      case 'h': fputs(usage, stdout); return 0;
      default: fputs(usage, stderr); return 2;
    }
  }
  if (optind != argc) {
    fputs(usage, stderr);
    return 2;
  }
  pthread_mutex_init(&g.err_lock, NULL);
  signal(SIGPIPE, SIG_IGN);
  const char *tmp = getenv("TMPDIR");
  snprintf(g.dir, sizeof g.dir, "%s/dpod-load.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g.dir)) {
    fprintf(stderr, "dpod-load: cannot make a scratch directory in %s: %s\n", tmp && *tmp ? tmp : "/tmp", strerror(errno));
    return 1;
  }
  snprintf(g.addr, sizeof g.addr, "unix:%s/dpod.sock", g.dir);
  snprintf(g.echo_addr, sizeof g.echo_addr, "unix:%s/echo.sock", g.dir);
  int rc = 1;
  bool watching = false; /* the watcher thread runs */
  uint32_t steps = g.o.seconds * g.o.steps_per_s;
  client *cs = calloc(g.o.clients, sizeof *cs);
  if (!cs) return 1;

  printf("dpod-load: %u queued jobs, %u watchers, %u clients, %u s, the running job reporting %u steps/s\n", g.o.jobs,
         g.o.watchers, g.o.clients, g.o.seconds, g.o.steps_per_s);
  if (dpod_start() != 0) goto out;

  /* The job that holds the slot; its fake worker writes the secret and waits for RUN_DIR/release. */
  g.hold_id = submit("load-hold", steps, NULL);
  if (!g.hold_id) goto out;
  reporter rep = {.steps = steps, .seconds = g.o.seconds};
  {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/state/jobs/%" PRIu64 "/secret", g.dir, g.hold_id);
    FILE *f = NULL;
    for (int i = 0; i < 600 && !(f = fopen(path, "r")); i++) sleep_ms(50);
    if (!f || !fgets(rep.secret, sizeof rep.secret, f)) {
      fprintf(stderr, "dpod-load: job %" PRIu64 " never started (see %s/dpod.log)\n", g.hold_id, g.dir);
      if (f) fclose(f);
      goto out;
    }
    fclose(f);
  }

  samples submits = {0};
  double t_sub = now_s();
  for (unsigned i = 0; i < g.o.jobs; i++) {
    double lat;
    uint64_t id = submit("load-queued", 10, &lat);
    if (!id) goto out;
    if (i == 0) g.first_queued = id;
    g.last_queued = id;
    samples_add(&submits, lat);
  }
  t_sub = now_s() - t_sub;

  uint8_t *packed = NULL;
  size_t packed_len = 0;
  if (packed_get_job(g.hold_id, &packed, &packed_len) != 0 || echo_start(packed, packed_len) != 0) {
    fprintf(stderr, "dpod-load: cannot start the echo server on %s\n", g.echo_addr);
    goto out;
  }
  free(packed);

  char err[512];
  pthread_attr_t small;
  pthread_attr_init(&small);
  pthread_attr_setstacksize(&small, 256 * 1024);
  if (watchers_start(g.o.watchers, g.hold_id) != 0 || pthread_create(&wpool.thread, NULL, watchers_main, NULL) != 0) {
    fprintf(stderr, "dpod-load: cannot start the watchers\n");
    goto out;
  }
  watching = true;
  pthread_t rep_thread;
  if (pthread_create(&rep_thread, NULL, reporter_main, &rep) != 0) goto out;
  for (unsigned i = 0; i < g.o.clients; i++) {
    cs[i].seed = 12345u + i;
    if (rpc_client_open(g.echo_addr, &cs[i].echo_c, err, sizeof err) != 0 ||
        pthread_create(&cs[i].thread, &small, client_main, &cs[i]) != 0) {
      fprintf(stderr, "dpod-load: cannot start client %u: %s\n", i, err);
      goto out;
    }
  }
  pthread_join(rep_thread, NULL);
  atomic_store(&g.stop_clients, true);
  for (unsigned i = 0; i < g.o.clients; i++) pthread_join(cs[i].thread, NULL);

  /* Cancel the queue (it would otherwise run a thousand jobs), then let the held job end. */
  double t_cancel = now_s();
  for (uint64_t id = g.first_queued; id && id <= g.last_queued; id++) {
    Dpod__V1__CancelJobRequest req = DPOD__V1__CANCEL_JOB_REQUEST__INIT;
    req.has_job_id = 1;
    req.job_id = id;
    ProtobufCMessage *m = NULL;
    if (rpc_unary(g.c, M_COORD("CancelJob"), &req.base, &dpod__v1__cancel_job_response__descriptor, &m, CALL_TIMEOUT_MS,
                  err, sizeof err) != 0)
      error_seen("CancelJob", err);
    else
      protobuf_c_message_free_unpacked(m, NULL);
  }
  t_cancel = now_s() - t_cancel;
  {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/state/jobs/%" PRIu64 "/release", g.dir, g.hold_id);
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
  }
  for (int i = 0; i < 600 && !state_terminal(job_state(g.hold_id)); i++) sleep_ms(50);
  pthread_join(wpool.thread, NULL);
  watching = false;

  uint64_t want = stored_events(g.hold_id);
  unsigned complete = 0;
  for (unsigned i = 0; i < g.o.watchers; i++) {
    const watcher *w = &wpool.ws[i];
    if (!w->failed && w->in_order && w->ended_terminal && w->events == want) complete++;
  }

  samples gj = {0}, ec = {0};
  for (unsigned i = 0; i < g.o.clients; i++) {
    for (size_t k = 0; k < cs[i].get_job.n; k++) samples_add(&gj, cs[i].get_job.v[k]);
    for (size_t k = 0; k < cs[i].echo.n; k++) samples_add(&ec, cs[i].echo.v[k]);
  }
  qsort(gj.v, gj.n, sizeof *gj.v, cmp_double);
  qsort(ec.v, ec.n, sizeof *ec.v, cmp_double);
  qsort(submits.v, submits.n, sizeof *submits.v, cmp_double);
  Dpod__V1__GetStatusResponse *st = get_status();

  printf("%-22s %d%s%s\n", "errors", atomic_load(&g.errors), g.errors ? ", the first: " : " (goal 0)",
         g.errors ? g.first_error : "");
  printf("%-22s p50 %7.3f ms  p99 %7.3f ms  (%zu calls)\n", "GetJob", quantile(&gj, 0.5) * 1e3, quantile(&gj, 0.99) * 1e3,
         gj.n);
  printf("%-22s p50 %7.3f ms  p99 %7.3f ms  (%zu calls)\n", "bare gRPC-core echo", quantile(&ec, 0.5) * 1e3,
         quantile(&ec, 0.99) * 1e3, ec.n);
  double ratio = quantile(&ec, 0.99) > 0 ? quantile(&gj, 0.99) / quantile(&ec, 0.99) : 0;
  printf("%-22s %.2fx (goal at most 3x)\n", "GetJob p99 / echo p99", ratio);
  printf("%-22s %u of %u received all %" PRIu64 " events of job %" PRIu64 " in order (goal all)\n", "watchers", complete,
         g.o.watchers, want, g.hold_id);
  if (st && st->loop)
    printf("%-22s longest stall %.1f ms (goal under 50 ms; its longest own CPU time %.1f ms), %" PRIu64
           " iterations over 50 ms, busy %.0f%% of %.1f s\n",
           "dpod's event loop", (double)st->loop->longest_stall_us / 1e3, (double)st->loop->longest_cpu_us / 1e3,
           st->loop->stalls_over_50ms,
           st->uptime_ms ? 100.0 * (double)st->loop->busy_us / ((double)st->uptime_ms * 1e3) : 0.0,
           (double)st->uptime_ms / 1e3);
  printf("%-22s %u in %.2f s (p50 %.3f ms, p99 %.3f ms); %u cancelled in %.2f s\n", "submitted", g.o.jobs, t_sub,
         quantile(&submits, 0.5) * 1e3, quantile(&submits, 0.99) * 1e3, g.o.jobs, t_cancel);
  if (st) protobuf_c_message_free_unpacked(&st->base, NULL);
  free(gj.v);
  free(ec.v);
  free(submits.v);
  rc = atomic_load(&g.errors) ? 1 : 0;
  echo_stop();

out:
  if (!watching) watchers_free(); /* a watcher thread still running (a failed start) is left to exit() */
  for (unsigned i = 0; i < g.o.clients; i++) {
    if (cs[i].echo_c) rpc_client_close(cs[i].echo_c);
    free(cs[i].get_job.v);
    free(cs[i].echo.v);
  }
  if (g.c) rpc_client_close(g.c);
  dpod_stop();
  if (g.o.keep || rc != 0) {
    printf("scratch directory (dpod's log and state): %s\n", g.dir);
  } else {
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g.dir);
    if (system(cmd) != 0) fprintf(stderr, "dpod-load: could not remove %s\n", g.dir);
  }
  free(cs);
  return rc;
}
