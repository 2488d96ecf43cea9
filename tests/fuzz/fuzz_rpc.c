/* The RPC handlers (daemon/api.c) after a request has arrived: a real coordinator, job store and watch
 * streams on a fresh state folder, with the gRPC server replaced by a stand-in that records each answer,
 * and the launch backend by one that starts nothing.
 *
 * An input is a sequence of calls, each [selector byte][length, 2 bytes little-endian][request bytes]:
 * the selector picks a method in the order api_register() registers them, unpacked by the handler itself
 * as that method's request type; one selector more ends a running attempt (payload: which run, its exit
 * status, a signal, whether it left an exit record), as a worker's exit would. A ReportRequest whose
 * secret is "fuzz" gets the job's real secret, and checkpoint paths that begin with "RUN/" the job's run
 * folder, so that reports get past authentication and the path checks.
 *
 * What is checked besides the sanitizers: a unary handler ends its call before it returns, nothing
 * answers a call twice, and every answer packs.
 *
 * DPOD_FUZZ_WRITE_SEEDS=<dir> writes the seed corpus (real requests packed with protobuf-c) and exits. */
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "api.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_paths.h"
#include "fuzz_util.h"
#include "health.pb-c.h"
#include "launch_backend.h"
#include "logs.h"

#define FUZZ_MAX_CALLS 32
#define FUZZ_SECRET "fuzz"
#define FUZZ_RUN_PREFIX "RUN/"

/* ---- the stand-in gRPC server (rpc_server.h) ---------------------------------------------------- */

struct rpc_call {
  const char *method;
  int ended;           /* answered or finished by the handler */
  int cancelled;       /* the client left */
  int sending;         /* a streamed message is in flight; its sent callback comes at the next pump */
  int finish_held;     /* a finish asked for during a send */
  rpc_sent_cb sent;
  rpc_done_cb done;
  void *data;
  rpc_call *next;
};

static struct {
  const char *path;
  rpc_handler fn;
  void *arg;
} methods[32];
static size_t n_methods;
static rpc_call *calls; /* every call not yet freed */

int rpc_server_add_method(rpc_server *s, const char *path, int flags, rpc_handler handler, void *arg) {
  (void)s;
  (void)flags; /* the token is checked before a handler runs, outside what this target exercises */
  if (n_methods == sizeof methods / sizeof methods[0]) abort();
  methods[n_methods].path = path;
  methods[n_methods].fn = handler;
  methods[n_methods].arg = arg;
  n_methods++;
  return 0;
}

/* Packing reads every field of the message: a dangling or uninitialized pointer in an answer shows. */
static void pack_checked(const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return;
  if (protobuf_c_message_pack(msg, buf) != n) abort();
  free(buf);
}

/* The real server ignores a second ending; here it is a handler's mistake, unless the client had left. */
static void end_call(rpc_call *c) {
  if (c->ended) {
    fprintf(stderr, "fuzz_rpc: %s answered twice\n", c->method);
    abort();
  }
  c->ended = 1;
}

static int call_over(const rpc_call *c) { return c->ended || c->cancelled; }

void rpc_call_reply(rpc_call *c, const ProtobufCMessage *resp) {
  fuzz_note(c->method, 0, "");
  pack_checked(resp);
  end_call(c);
}

void rpc_call_fail(rpc_call *c, grpc_status_code code, const char *fmt, ...) {
  char details[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(details, sizeof details, fmt, ap);
  va_end(ap);
  fuzz_note(c->method, -1, details);
  if (code == GRPC_STATUS_OK) abort(); /* a failure with status OK would read as success */
  end_call(c);
}

void rpc_call_set_stream(rpc_call *c, rpc_sent_cb sent, rpc_done_cb done, void *data) {
  c->sent = sent;
  c->done = done;
  c->data = data;
}

int rpc_pack_slice(const ProtobufCMessage *msg, grpc_slice *out) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  *out = grpc_slice_malloc(n);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(*out));
  return 0;
}

int rpc_call_send_slice(rpc_call *c, grpc_slice msg) {
  if (call_over(c) || c->sending) return DPOD_ESTATE;
  /* Read every byte, as the transport would. */
  static volatile uint8_t sum;
  for (size_t i = 0; i < GRPC_SLICE_LENGTH(msg); i++) sum = (uint8_t)(sum + GRPC_SLICE_START_PTR(msg)[i]);
  c->sending = 1;
  return 0;
}

int rpc_call_send(rpc_call *c, const ProtobufCMessage *msg) {
  if (call_over(c) || c->sending) return DPOD_ESTATE;
  pack_checked(msg);
  c->sending = 1;
  return 0;
}

void rpc_call_finish(rpc_call *c, grpc_status_code code, const char *details) {
  (void)code;
  (void)details;
  if (c->sending) c->finish_held = 1;
  else end_call(c);
}

int rpc_call_is_over(const rpc_call *c) { return call_over(c); }
const char *rpc_call_method(const rpc_call *c) { return c->method; }

/* Completes the sends in flight (the client leaving: ok = 0) and frees the calls that are over, telling
 * their handlers first, as the real server does once nothing of a call is in flight. */
static void calls_pump(int client_left) {
  for (rpc_call *c = calls; c; c = c->next) {
    if (client_left) c->cancelled = 1;
    if (!c->sending) continue;
    c->sending = 0;
    if (c->finish_held) c->ended = 1;
    if (c->sent) c->sent(c, !client_left, c->data);
  }
  for (rpc_call **p = &calls; *p;) {
    rpc_call *c = *p;
    if (!call_over(c) || c->sending) {
      p = &c->next;
      continue;
    }
    *p = c->next;
    if (c->done) c->done(c, c->data);
    free(c);
  }
}

/* ---- the stand-in launch backend ---------------------------------------------------------------- */

typedef struct fake_run {
  launch_run base;
  uint64_t job_id;
  int stop;               /* 0, or the signal its stop asked for */
  struct fake_run *next;
} fake_run;

/* What each launch was given, kept after the run ends: reports may still come. */
static struct {
  uint64_t job_id;
  char secret[JOB_SECRET_HEX_LEN + 1];
  char run_dir[4096];
} launched[FUZZ_MAX_CALLS * 4];
static size_t n_launched;
static fake_run *runs;

static int fake_start(launch_backend *b, const launch_request *req, launch_run **out, char *handle, char *err,
                      size_t errlen) {
  (void)b;
  fake_run *r = calloc(1, sizeof *r);
  if (!r) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  char fields[64];
  snprintf(fields, sizeof fields, "job=%llu", (unsigned long long)req->job_id);
  if (launch_handle_format_(handle, "fake", req->attempt, fields) != 0) {
    free(r);
    return dpod_errf(err, errlen, DPOD_EINVAL, "handle too long");
  }
  mkdir(req->run_dir, 0700);
  r->job_id = req->job_id;
  r->next = runs;
  runs = r;
  if (n_launched < sizeof launched / sizeof launched[0]) {
    launched[n_launched].job_id = req->job_id;
    snprintf(launched[n_launched].secret, sizeof launched[n_launched].secret, "%s", req->secret);
    snprintf(launched[n_launched].run_dir, sizeof launched[n_launched].run_dir, "%s", req->run_dir);
    n_launched++;
  }
  *out = &r->base;
  return 0;
}

static int fake_stop(launch_run *base, launch_stop_mode how, int *signalled) {
  fake_run *r = (fake_run *)base;
  r->stop = how == LAUNCH_STOP_KILL ? SIGKILL : how == LAUNCH_STOP_TERMINATE ? SIGTERM : SIGUSR1;
  if (signalled) *signalled = 1;
  return 0;
}

static void runs_unlink(fake_run *r) {
  for (fake_run **p = &runs; *p; p = &(*p)->next)
    if (*p == r) {
      *p = r->next;
      return;
    }
}

static void fake_detach(launch_run *base) {
  runs_unlink((fake_run *)base);
  free(base);
}

static int fake_recover(launch_backend *b, const char *handle, const char *run_dir, launch_run **out,
                        launch_exit *exit, int *stopped, char *err, size_t errlen) {
  (void)b, (void)handle, (void)run_dir, (void)exit, (void)err, (void)errlen;
  *out = NULL;
  if (stopped) *stopped = 0;
  return LAUNCH_RECOVERED_LOST;
}

static unsigned fake_capacity(const launch_backend *b) {
  (void)b;
  return 4;
}

static unsigned fake_max_threads(const launch_backend *b) {
  (void)b;
  return 8;
}

static void fake_log_path(const launch_backend *b, const char *run_dir, uint32_t attempt, char *buf, size_t len) {
  (void)b;
  snprintf(buf, len, "%s/attempt-%u.log", run_dir, attempt);
}

static void fake_free(launch_backend *b) { (void)b; }

static const launch_backend_ops fake_ops = {
    .name = "fake", .start = fake_start, .stop = fake_stop, .detach = fake_detach, .recover = fake_recover,
    .poll = NULL, .capacity = fake_capacity, .max_threads = fake_max_threads, .log_path = fake_log_path,
    .free = fake_free,
};

/* Ends run `r` as its processes' exit would. */
static void run_end(fake_run *r, int status, int sig, int recorded) {
  runs_unlink(r);
  launch_exit ex = {.attempt = r->base.attempt, .term_signal = sig, .exit_status = sig ? 0 : status,
                    .finished_unix_ms = (int64_t)(uv_now(r->base.backend->loop)), .recorded = recorded};
  launch_run_ended_(&r->base, &ex);
  free(r);
}

/* A stopped run ends at the next pump, as a signalled process group would a moment later. */
static void runs_pump(void) {
  for (fake_run *r = runs, *next; r; r = next) {
    next = r->next;
    if (r->stop) run_end(r, 0, r->stop == SIGUSR1 ? 0 : r->stop, 1);
  }
}

/* The pseudo-call after the methods: payload [which run][exit status][signal][recorded]. */
static void end_a_run(const uint8_t *p, size_t len) {
  size_t n = 0;
  for (fake_run *r = runs; r; r = r->next) n++;
  if (n == 0) return;
  fake_run *r = runs;
  for (size_t k = len > 0 ? p[0] % n : 0; k > 0; k--) r = r->next;
  run_end(r, len > 1 ? p[1] : 0, len > 2 ? p[2] % 32 : 0, len > 3 ? p[3] & 1 : 1);
}

/* ---- reports that get in ------------------------------------------------------------------------ */

static const char *launched_field(uint64_t job_id, int want_secret) {
  for (size_t i = n_launched; i-- > 0;)
    if (launched[i].job_id == job_id) return want_secret ? launched[i].secret : launched[i].run_dir;
  return NULL;
}

static void fix_path(char **path, const char *run_dir) {
  if (!*path || strncmp(*path, FUZZ_RUN_PREFIX, strlen(FUZZ_RUN_PREFIX)) != 0) return;
  char *p = NULL;
  if (asprintf(&p, "%s/%s", run_dir, *path + strlen(FUZZ_RUN_PREFIX)) < 0) return;
  free(*path);
  *path = p;
}

/* A ReportRequest with the placeholders filled in, packed into *out (caller frees); 0 if it does not
 * unpack, which the handler is then left to refuse. */
static size_t report_fixed(const uint8_t *req, size_t len, uint8_t **out) {
  Dpod__V1__ReportRequest *m = dpod__v1__report_request__unpack(NULL, len, req);
  if (!m) return 0;
  const char *secret = launched_field(m->job_id, 1), *run_dir = launched_field(m->job_id, 0);
  if (secret && m->secret && strcmp(m->secret, FUZZ_SECRET) == 0) {
    free(m->secret);
    m->secret = strdup(secret);
  }
  for (size_t i = 0; run_dir && i < m->n_events; i++) {
    Dpod__V1__WorkerEvent *e = m->events[i];
    if (e->event_case == DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT) fix_path(&e->checkpoint->path, run_dir);
    if (e->event_case == DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT_REMOVED)
      fix_path(&e->checkpoint_removed->path, run_dir);
  }
  size_t n = protobuf_c_message_get_packed_size(&m->base);
  *out = malloc(n ? n : 1);
  if (*out) protobuf_c_message_pack(&m->base, *out);
  protobuf_c_message_free_unpacked(&m->base, NULL);
  return *out ? n : 0;
}

/* ---- one input ---------------------------------------------------------------------------------- */

static int is_stream(const char *path) {
  size_t n = strlen(path);
  return (n >= 9 && strcmp(path + n - 9, "/WatchJob") == 0) || (n >= 6 && strcmp(path + n - 6, "/Watch") == 0) ||
         (n >= 5 && strcmp(path + n - 5, "/Logs") == 0);
}

static void call_method(size_t m, const uint8_t *req, size_t len) {
  rpc_call *c = calloc(1, sizeof *c);
  if (!c) return;
  c->method = methods[m].path;
  c->next = calls;
  calls = c;
  uint8_t *fixed = NULL;
  size_t flen = strstr(c->method, "/Report") ? report_fixed(req, len, &fixed) : 0;
  methods[m].fn(c, fixed ? fixed : req, fixed ? flen : len, methods[m].arg);
  free(fixed);
  if (!c->ended && !c->sent && !c->done) {
    fprintf(stderr, "fuzz_rpc: %s returned without ending its call%s\n", c->method,
            is_stream(c->method) ? " or making it a stream" : "");
    abort();
  }
  if (!c->ended && !is_stream(c->method)) {
    fprintf(stderr, "fuzz_rpc: unary %s returned without ending its call\n", c->method);
    abort();
  }
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void write_seeds(const char *dir);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *seeds = getenv("DPOD_FUZZ_WRITE_SEEDS");
  if (seeds) {
    write_seeds(seeds);
    exit(0);
  }
  fuzz_quiet_logs();
  return 0;
}

/* Creating the store's schema is most of what a fresh coordinator costs, so every input starts from a
 * copy of one made at the first input. */
static uint8_t *template_db;
static size_t template_len;

static void state_prepare(const char *state, const char *db) {
  if (template_db) {
    mkdir(state, 0700);
    fuzz_write_file(state, "dpod.db", template_db, template_len);
    return;
  }
  uv_loop_t loop;
  launch_backend backend = {.ops = &fake_ops, .loop = &loop};
  coord_params cp = coord_default_params();
  cp.state_dir = state;
  coord *co = NULL;
  char err[512];
  if (uv_loop_init(&loop) != 0 || coord_open(&loop, &cp, &backend, &co, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_rpc: cannot set up a coordinator in %s: %s\n", state, err);
    abort();
  }
  coord_detach(co);
  coord_free(co);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  if (dpod_read_file(db, 1 << 24, (char **)&template_db, &template_len, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_rpc: %s\n", err);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *scratch = fuzz_scratch_dir();
  fuzz_clear_dir(scratch);
  char state[4200], db[4300], err[512];
  snprintf(state, sizeof state, "%s/state", scratch);
  snprintf(db, sizeof db, "%s/dpod.db", state);
  state_prepare(state, db);
  n_launched = 0;

  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) abort();
  launch_backend backend = {.ops = &fake_ops, .loop = &loop};
  coord_params cp = coord_default_params();
  cp.state_dir = state;
  cp.restart_backoff_ms = 0; /* restarts happen within the input */
  coord *co = NULL;
  watch_set *ws = NULL;
  if (coord_open(&loop, &cp, &backend, &co, err, sizeof err) != 0 || watch_set_create(coord_store(co), &ws) != 0) {
    fprintf(stderr, "fuzz_rpc: cannot set up a coordinator in %s: %s\n", state, err);
    abort();
  }
  coord_set_event_hook(co, watch_notify, ws);
  api_ctx api = {.co = co, .ws = ws, .started_ns = uv_hrtime()};
  coord_set_serving_hook(co, api_serving_changed, &api);
  n_methods = 0;
  if (api_register((rpc_server *)&backend, &api) != 0) abort();
  coord_recover(co);

  for (int k = 0; k < FUZZ_MAX_CALLS && size > 0; k++) {
    size_t sel = data[0] % (n_methods + 1);
    size_t len = size >= 3 ? (size_t)data[1] | (size_t)data[2] << 8 : 0;
    size_t skip = size >= 3 ? 3 : size;
    data += skip, size -= skip;
    if (len > size) len = size;
    if (sel < n_methods) call_method(sel, data, len);
    else end_a_run(data, len);
    data += len, size -= len;
    calls_pump(0);
    runs_pump();
    uv_run(&loop, UV_RUN_NOWAIT);
    calls_pump(0);
  }

  /* The clients leave, then the daemon stops as main.c stops it. */
  calls_pump(1);
  /* A Logs stream whose client left waits for its read in flight before it lets go of its timer. */
  while (logs_count() > 0) uv_run(&loop, UV_RUN_ONCE);
  coord_detach(co);
  watch_set_free(ws);
  coord_free(co);
  while (runs) fake_detach(&runs->base);
  uv_walk(&loop, close_any, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) abort();
  return 0;
}

/* ---- the seed corpus ---------------------------------------------------------------------------- */

static size_t method_index(const char *suffix) {
  for (size_t i = 0; i < n_methods; i++) {
    size_t a = strlen(methods[i].path), b = strlen(suffix);
    if (a >= b && strcmp(methods[i].path + a - b, suffix) == 0) return i;
  }
  abort();
}

/* Appends one call record for method `suffix` (NULL: end a run, with `raw` as its payload). */
static void seed_add(FILE *f, const char *suffix, const ProtobufCMessage *msg, const char *raw, size_t rawlen) {
  uint8_t buf[4096];
  size_t n = msg ? protobuf_c_message_pack(msg, buf) : rawlen;
  if (!msg) memcpy(buf, raw, rawlen);
  fputc((int)(suffix ? method_index(suffix) : n_methods), f);
  fputc((int)(n & 0xff), f);
  fputc((int)(n >> 8), f);
  fwrite(buf, 1, n, f);
}

static FILE *seed_open(const char *dir, const char *name) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) {
    perror(path);
    exit(1);
  }
  return f;
}

static void write_seeds(const char *dir) {
  /* The method order is api_register()'s. */
  n_methods = 0;
  api_ctx api = {0};
  if (api_register(NULL, &api) != 0) abort();

  Dpod__V1__DataSpec data = DPOD__V1__DATA_SPEC__INIT;
  data.dataset = "builtin:synthetic";
  Dpod__V1__TrainSpec train = DPOD__V1__TRAIN_SPEC__INIT;
  train.has_steps = 1, train.steps = 10;
  Dpod__V1__JobSpec spec = DPOD__V1__JOB_SPEC__INIT;
  spec.name = "seed";
  spec.has_ranks = 1, spec.ranks = 1;
  spec.data = &data;
  spec.train = &train;
  Dpod__V1__SubmitJobRequest submit = DPOD__V1__SUBMIT_JOB_REQUEST__INIT;
  submit.spec = &spec;
  Dpod__V1__GetJobRequest get = DPOD__V1__GET_JOB_REQUEST__INIT;
  get.has_job_id = 1, get.job_id = 1;
  Dpod__V1__CancelJobRequest cancel = DPOD__V1__CANCEL_JOB_REQUEST__INIT;
  cancel.has_job_id = 1, cancel.job_id = 1;
  Dpod__V1__RestartJobRequest restart = DPOD__V1__RESTART_JOB_REQUEST__INIT;
  restart.has_job_id = 1, restart.job_id = 1;
  Dpod__V1__WatchJobRequest watch = DPOD__V1__WATCH_JOB_REQUEST__INIT;
  watch.has_job_id = 1, watch.job_id = 1;
  Dpod__V1__LogsRequest logs = DPOD__V1__LOGS_REQUEST__INIT;
  logs.has_job_id = 1, logs.job_id = 1;
  logs.has_follow = 1, logs.follow = 1;
  logs.has_tail = 1, logs.tail = 5;
  Dpod__V1__ListJobsRequest list = DPOD__V1__LIST_JOBS_REQUEST__INIT;
  Dpod__V1__GetStatusRequest status = DPOD__V1__GET_STATUS_REQUEST__INIT;
  Dpod__V1__DrainRequest drain = DPOD__V1__DRAIN_REQUEST__INIT;
  Dpod__V1__UndrainRequest undrain = DPOD__V1__UNDRAIN_REQUEST__INIT;
  Grpc__Health__V1__HealthCheckRequest health = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;

  Dpod__V1__WorkerStarted started = DPOD__V1__WORKER_STARTED__INIT;
  started.has_world_size = 1, started.world_size = 1;
  started.has_total_steps = 1, started.total_steps = 10;
  Dpod__V1__StepMetrics metrics = DPOD__V1__STEP_METRICS__INIT;
  metrics.has_step = 1, metrics.step = 1;
  Dpod__V1__CheckpointInfo ckpt = DPOD__V1__CHECKPOINT_INFO__INIT;
  ckpt.has_step = 1, ckpt.step = 2;
  ckpt.path = FUZZ_RUN_PREFIX "checkpoints/step-000002";
  Dpod__V1__EvalMetrics eval = DPOD__V1__EVAL_METRICS__INIT;
  eval.has_step = 1, eval.step = 2;
  Dpod__V1__WorkerHeartbeat beat = DPOD__V1__WORKER_HEARTBEAT__INIT;
  beat.has_step = 1, beat.step = 2;
  beat.phase = "eval";
  Dpod__V1__CheckpointRemoved removed = DPOD__V1__CHECKPOINT_REMOVED__INIT;
  removed.has_step = 1, removed.step = 2;
  removed.path = FUZZ_RUN_PREFIX "checkpoints/step-000002";
  Dpod__V1__WorkerEvent ev[6] = {DPOD__V1__WORKER_EVENT__INIT, DPOD__V1__WORKER_EVENT__INIT,
                                 DPOD__V1__WORKER_EVENT__INIT, DPOD__V1__WORKER_EVENT__INIT,
                                 DPOD__V1__WORKER_EVENT__INIT, DPOD__V1__WORKER_EVENT__INIT};
  ev[0].event_case = DPOD__V1__WORKER_EVENT__EVENT_STARTED, ev[0].started = &started;
  ev[1].event_case = DPOD__V1__WORKER_EVENT__EVENT_METRICS, ev[1].metrics = &metrics;
  ev[2].event_case = DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT, ev[2].checkpoint = &ckpt;
  ev[3].event_case = DPOD__V1__WORKER_EVENT__EVENT_EVAL, ev[3].eval = &eval;
  ev[4].event_case = DPOD__V1__WORKER_EVENT__EVENT_HEARTBEAT, ev[4].heartbeat = &beat;
  ev[5].event_case = DPOD__V1__WORKER_EVENT__EVENT_CHECKPOINT_REMOVED, ev[5].checkpoint_removed = &removed;
  Dpod__V1__WorkerEvent *evp[6] = {&ev[0], &ev[1], &ev[2], &ev[3], &ev[4], &ev[5]};
  Dpod__V1__ReportRequest report = DPOD__V1__REPORT_REQUEST__INIT;
  report.has_job_id = 1, report.job_id = 1;
  report.secret = FUZZ_SECRET;
  report.has_attempt = 1, report.attempt = 1;
  report.n_events = 3, report.events = evp;

  FILE *f = seed_open(dir, "submit-watch-report-cancel");
  seed_add(f, "/SubmitJob", &submit.base, NULL, 0);
  seed_add(f, "/WatchJob", &watch.base, NULL, 0);
  seed_add(f, "/Logs", &logs.base, NULL, 0);
  seed_add(f, "/Report", &report.base, NULL, 0);
  seed_add(f, "/GetJob", &get.base, NULL, 0);
  seed_add(f, "/CancelJob", &cancel.base, NULL, 0);
  seed_add(f, "/ListJobs", &list.base, NULL, 0);
  fclose(f);

  f = seed_open(dir, "submit-fail-restart");
  seed_add(f, "/SubmitJob", &submit.base, NULL, 0);
  seed_add(f, NULL, NULL, "\0\1\0\1", 4); /* exit status 1, with an exit record */
  seed_add(f, "/RestartJob", &restart.base, NULL, 0);
  seed_add(f, "/GetStatus", &status.base, NULL, 0);
  fclose(f);

  f = seed_open(dir, "health-drain-undrain");
  seed_add(f, "Health/Watch", &health.base, NULL, 0);
  seed_add(f, "/Check", &health.base, NULL, 0);
  seed_add(f, "/SubmitJob", &submit.base, NULL, 0);
  seed_add(f, "/Drain", &drain.base, NULL, 0);
  seed_add(f, NULL, NULL, "\0\4\0\1", 4); /* preempted */
  seed_add(f, "/Undrain", &undrain.base, NULL, 0);
  fclose(f);

  f = seed_open(dir, "broken-requests");
  seed_add(f, "/SubmitJob", NULL, "\x0a\xff\xff\x01", 4);  /* a length past the end */
  seed_add(f, "/Report", NULL, "\x12\x02\xc3\x28", 4);      /* a secret that is not UTF-8 */
  seed_add(f, "/GetJob", NULL, "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11);
  fclose(f);

  /* A second batch with the other events, a watcher from the start, then a clean exit. */
  f = seed_open(dir, "report-every-event-then-succeed");
  seed_add(f, "/SubmitJob", &submit.base, NULL, 0);
  seed_add(f, "/WatchJob", &watch.base, NULL, 0);
  seed_add(f, "/Report", &report.base, NULL, 0);
  report.n_events = 3, report.events = evp + 3;
  seed_add(f, "/Report", &report.base, NULL, 0);
  seed_add(f, NULL, NULL, "\0\0\0\1", 4);
  seed_add(f, "/GetJob", &get.base, NULL, 0);
  fclose(f);

  /* DeleteJob: refused while the job is queued, then (cancelled) forgotten with its run directory. */
  Dpod__V1__DeleteJobRequest del = DPOD__V1__DELETE_JOB_REQUEST__INIT;
  del.has_job_id = 1, del.job_id = 1;
  del.has_remove_run_dir = 1, del.remove_run_dir = 1;
  f = seed_open(dir, "submit-delete-cancel-delete");
  seed_add(f, "/SubmitJob", &submit.base, NULL, 0);
  seed_add(f, "/DeleteJob", &del.base, NULL, 0);
  seed_add(f, "/CancelJob", &cancel.base, NULL, 0);
  seed_add(f, "/DeleteJob", &del.base, NULL, 0);
  seed_add(f, "/GetJob", &get.base, NULL, 0);
  fclose(f);

  train.steps = 0; /* refused by validation */
  f = seed_open(dir, "submit-invalid-spec");
  seed_add(f, "/SubmitJob", &submit.base, NULL, 0);
  fclose(f);
}
