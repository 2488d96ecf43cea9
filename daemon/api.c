#include "api.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"
#include "health.pb-c.h"
#include "job_store.h"
#include "logs.h"
#include "rpc_methods.h"

#define API_LIST_MAX 1000 /* ListJobs never returns more, whatever the request asks */
#define API_LIST_DEFAULT 100

grpc_status_code api_code(int status) {
  switch (status) {
    case DPOD_OK: return GRPC_STATUS_OK;
    case DPOD_EINVAL:
    case DPOD_EFORMAT:
    case DPOD_ESHAPE:
    case DPOD_EUNSUPPORTED:
    case DPOD_ENUMERIC: return GRPC_STATUS_INVALID_ARGUMENT;
    case DPOD_ENOENT: return GRPC_STATUS_NOT_FOUND;
    case DPOD_ESTATE: return GRPC_STATUS_FAILED_PRECONDITION;
    case DPOD_EAUTH: return GRPC_STATUS_UNAUTHENTICATED;
    case DPOD_EACCESS: return GRPC_STATUS_PERMISSION_DENIED;
    case DPOD_ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case DPOD_ETIMEDOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
    case DPOD_ECANCELED: return GRPC_STATUS_CANCELLED;
    case DPOD_EUNAVAILABLE: return GRPC_STATUS_UNAVAILABLE;
    default: return GRPC_STATUS_INTERNAL;
  }
}

/* Ends the call with the status's code and message. */
static void api_fail(rpc_call *call, int status, const char *err) {
  rpc_call_fail(call, api_code(status), "%s", err);
}

#define API_UNPACK(type, fn, call, req, len)                                      \
  type *msg = fn(NULL, (len), (req));                                             \
  if (!msg) {                                                                     \
    rpc_call_fail((call), GRPC_STATUS_INVALID_ARGUMENT, "malformed " #type);      \
    return;                                                                       \
  }

/* Answers with the job's current state in `resp`, whose job field is `slot`. */
static void api_reply_job(coord *co, rpc_call *call, uint64_t id, ProtobufCMessage *resp, Dpod__V1__Job **slot) {
  Dpod__V1__Job *job = NULL;
  int status = job_store_get(coord_store(co), id, &job);
  if (status == DPOD_ENOENT) {
    rpc_call_fail(call, GRPC_STATUS_NOT_FOUND, "job %" PRIu64 " not found", id);
    return;
  }
  if (status != 0) {
    rpc_call_fail(call, GRPC_STATUS_INTERNAL, "job store: %s", job_store_last_error(coord_store(co)));
    return;
  }
  *slot = job;
  rpc_call_reply(call, resp);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  *slot = NULL;
}

static int api_health_status(const api_ctx *a, bool known);

static void api_health_check(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  const api_ctx *a = arg;
  API_UNPACK(Grpc__Health__V1__HealthCheckRequest, grpc__health__v1__health_check_request__unpack, call, req, len);
  const char *svc = msg->service ? msg->service : "";
  if (strcmp(svc, "") == 0 || strcmp(svc, dpod__v1__coordinator__descriptor.name) == 0) {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    /* A draining dpod still answers, but takes no new work. */
    resp.status = api_health_status(a, true);
    rpc_call_reply(call, &resp.base);
  } else {
    rpc_call_fail(call, GRPC_STATUS_NOT_FOUND, "unknown service \"%.200s\"", svc);
  }
  protobuf_c_message_free_unpacked(&msg->base, NULL);
}

/* ---- grpc.health.v1.Health/Watch: the status now, then every change, for as long as the client stays. */

struct api_health_watch {
  api_ctx *a;
  rpc_call *call;
  bool known;           /* the service is ours (else SERVICE_UNKNOWN is sent once) */
  bool sending;
  int sent;             /* the status last sent; -1 none */
  api_health_watch *prev, *next;
};

static int api_health_status(const api_ctx *a, bool known) {
  if (!known) return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  return coord_serving(a->co) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                              : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

/* Sends the current status if it is news and no send is in flight. */
static void api_health_pump(api_health_watch *w) {
  if (w->sending || rpc_call_is_over(w->call)) return;
  int now = api_health_status(w->a, w->known);
  if (now == w->sent) return;
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = now;
  if (rpc_call_send(w->call, &resp.base) == 0) {
    w->sending = true;
    w->sent = now;
  }
}

static void api_health_sent(rpc_call *call, int ok, void *data) {
  (void)call;
  api_health_watch *w = data;
  w->sending = false;
  if (ok) api_health_pump(w); /* a change may have come while this send was in flight */
}

static void api_health_done(rpc_call *call, void *data) {
  (void)call;
  api_health_watch *w = data;
  if (w->prev) w->prev->next = w->next;
  else w->a->health_watches = w->next;
  if (w->next) w->next->prev = w->prev;
  free(w);
}

void api_serving_changed(void *ctx) {
  api_ctx *a = ctx;
  for (api_health_watch *w = a->health_watches; w; w = w->next) api_health_pump(w);
}

static void api_health_watch_start(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Grpc__Health__V1__HealthCheckRequest, grpc__health__v1__health_check_request__unpack, call, req, len);
  const char *svc = msg->service ? msg->service : "";
  bool known = strcmp(svc, "") == 0 || strcmp(svc, dpod__v1__coordinator__descriptor.name) == 0;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  api_health_watch *w = calloc(1, sizeof *w);
  if (!w) {
    rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->a = a;
  w->call = call;
  w->known = known;
  w->sent = -1;
  w->next = a->health_watches;
  if (a->health_watches) a->health_watches->prev = w;
  a->health_watches = w;
  rpc_call_set_stream(call, api_health_sent, api_health_done, w);
  api_health_pump(w);
}

static void api_drain(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__DrainRequest, dpod__v1__drain_request__unpack, call, req, len);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  char err[256];
  unsigned n = 0;
  int status = coord_drain(a->co, &n, err, sizeof err);
  if (status != 0) {
    api_fail(call, status, err);
    return;
  }
  Dpod__V1__DrainResponse resp = DPOD__V1__DRAIN_RESPONSE__INIT;
  resp.has_preempting = 1;
  resp.preempting = n;
  rpc_call_reply(call, &resp.base);
}

static void api_undrain(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__UndrainRequest, dpod__v1__undrain_request__unpack, call, req, len);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  char err[256];
  int status = coord_undrain(a->co, err, sizeof err);
  if (status != 0) {
    api_fail(call, status, err);
    return;
  }
  Dpod__V1__UndrainResponse resp = DPOD__V1__UNDRAIN_RESPONSE__INIT;
  rpc_call_reply(call, &resp.base);
}

static void api_get_status(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__GetStatusRequest, dpod__v1__get_status_request__unpack, call, req, len);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  coord_status cs;
  coord_get_status(a->co, &cs);
  Dpod__V1__LoopStats loop = DPOD__V1__LOOP_STATS__INIT;
  Dpod__V1__GetStatusResponse resp = DPOD__V1__GET_STATUS_RESPONSE__INIT;
  resp.version = (char *)DPOD_VERSION_STRING;
  resp.has_uptime_ms = 1;
  resp.uptime_ms = (uv_hrtime() - a->started_ns) / 1000000;
  resp.has_slots = resp.has_slots_free = resp.has_running = resp.has_queued = resp.has_draining = 1;
  resp.slots = cs.slots;
  resp.slots_free = cs.slots_free;
  resp.running = (uint32_t)cs.running;
  resp.queued = (uint32_t)cs.queued;
  resp.draining = cs.draining;
  resp.has_watchers = 1;
  resp.watchers = (uint32_t)watch_count(a->ws);
  resp.launcher = (char *)cs.launcher;
  if (a->loop) {
    loop.has_iterations = loop.has_busy_us = loop.has_longest_stall_us = loop.has_stalls_over_50ms = 1;
    loop.iterations = a->loop->iterations;
    loop.busy_us = a->loop->busy_ns / 1000;
    loop.longest_stall_us = a->loop->longest_ns / 1000;
    loop.stalls_over_50ms = a->loop->slow_iterations;
    loop.has_longest_cpu_us = 1;
    loop.longest_cpu_us = a->loop->longest_cpu_ns / 1000;
    resp.loop = &loop;
  }
  rpc_call_reply(call, &resp.base);
}

static void api_submit_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__SubmitJobRequest, dpod__v1__submit_job_request__unpack, call, req, len);
  Dpod__V1__JobSpec *spec = msg->spec;
  msg->spec = NULL; /* taken: the coordinator normalizes and frees it */
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  char err[512];
  uint64_t id = 0;
  int status = coord_submit(a->co, spec, &id, err, sizeof err);
  if (status != 0) {
    api_fail(call, status, err);
    return;
  }
  Dpod__V1__SubmitJobResponse resp = DPOD__V1__SUBMIT_JOB_RESPONSE__INIT;
  api_reply_job(a->co, call, id, &resp.base, &resp.job);
}

/* The shape of GetJob, CancelJob and RestartJob: an operation on one job (none for GetJob), then the
 * job as it is now. */
typedef int (*api_job_op)(coord *co, uint64_t id, char *err, size_t errlen);

static void api_on_job(rpc_call *call, api_ctx *a, uint64_t id, api_job_op op, ProtobufCMessage *resp,
                       Dpod__V1__Job **slot) {
  char err[512];
  int status = op ? op(a->co, id, err, sizeof err) : 0;
  if (status != 0) api_fail(call, status, err);
  else api_reply_job(a->co, call, id, resp, slot);
}

static void api_get_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  API_UNPACK(Dpod__V1__GetJobRequest, dpod__v1__get_job_request__unpack, call, req, len);
  uint64_t id = msg->job_id;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  Dpod__V1__GetJobResponse resp = DPOD__V1__GET_JOB_RESPONSE__INIT;
  api_on_job(call, arg, id, NULL, &resp.base, &resp.job);
}

static void api_list_jobs(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__ListJobsRequest, dpod__v1__list_jobs_request__unpack, call, req, len);
  uint32_t limit = msg->limit == 0 ? API_LIST_DEFAULT : msg->limit > API_LIST_MAX ? API_LIST_MAX : msg->limit;
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  job_store *store = coord_store(a->co);
  int status = job_store_list(store, (const Dpod__V1__JobState *)msg->states, msg->n_states, limit, false, &jobs, &n);
  if (status != 0) {
    rpc_call_fail(call, GRPC_STATUS_INTERNAL, "job store: %s", job_store_last_error(store));
  } else {
    Dpod__V1__ListJobsResponse resp = DPOD__V1__LIST_JOBS_RESPONSE__INIT;
    resp.jobs = jobs;
    resp.n_jobs = n;
    rpc_call_reply(call, &resp.base);
    job_store_free_jobs(jobs, n);
  }
  protobuf_c_message_free_unpacked(&msg->base, NULL);
}

static void api_cancel_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  API_UNPACK(Dpod__V1__CancelJobRequest, dpod__v1__cancel_job_request__unpack, call, req, len);
  uint64_t id = msg->job_id;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  Dpod__V1__CancelJobResponse resp = DPOD__V1__CANCEL_JOB_RESPONSE__INIT;
  api_on_job(call, arg, id, coord_cancel, &resp.base, &resp.job);
}

static void api_restart_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  API_UNPACK(Dpod__V1__RestartJobRequest, dpod__v1__restart_job_request__unpack, call, req, len);
  uint64_t id = msg->job_id;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  Dpod__V1__RestartJobResponse resp = DPOD__V1__RESTART_JOB_RESPONSE__INIT;
  api_on_job(call, arg, id, coord_restart, &resp.base, &resp.job);
}

static void api_delete_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__DeleteJobRequest, dpod__v1__delete_job_request__unpack, call, req, len);
  char err[1536];
  int status = coord_delete(a->co, msg->job_id, msg->remove_run_dir, err, sizeof err);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  if (status != 0) {
    api_fail(call, status, err);
    return;
  }
  Dpod__V1__DeleteJobResponse resp = DPOD__V1__DELETE_JOB_RESPONSE__INIT;
  rpc_call_reply(call, &resp.base);
}

static void api_watch_job(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__WatchJobRequest, dpod__v1__watch_job_request__unpack, call, req, len);
  uint64_t id = msg->job_id, after = msg->after_seq;
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  job_info info;
  job_store *store = coord_store(a->co);
  int status = job_store_get_info(store, id, &info);
  if (status == DPOD_ENOENT) {
    rpc_call_fail(call, GRPC_STATUS_NOT_FOUND, "job %" PRIu64 " not found", id);
  } else if (status != 0) {
    rpc_call_fail(call, GRPC_STATUS_INTERNAL, "job store: %s", job_store_last_error(store));
  } else if (watch_start(a->ws, call, id, after) != 0) {
    rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
}

static void api_logs(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__LogsRequest, dpod__v1__logs_request__unpack, call, req, len);
  char err[512];
  int status = logs_start(coord_loop(a->co), coord_store(a->co), coord_backend(a->co), call, msg, err, sizeof err);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  if (status != 0) api_fail(call, status, err);
}

static void api_report(rpc_call *call, const uint8_t *req, size_t len, void *arg) {
  api_ctx *a = arg;
  API_UNPACK(Dpod__V1__ReportRequest, dpod__v1__report_request__unpack, call, req, len);
  char err[512];
  Dpod__V1__ReportResponse resp = DPOD__V1__REPORT_RESPONSE__INIT;
  int status = coord_report(a->co, msg, &resp.directive, err, sizeof err);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  if (status != 0) {
    api_fail(call, status, err);
    return;
  }
  resp.has_directive = resp.directive != DPOD__V1__DIRECTIVE__DIRECTIVE_NONE;
  rpc_call_reply(call, &resp.base);
}

/* The methods of `n` entries, registered on `srv`. */
typedef struct {
  const ProtobufCServiceDescriptor *svc;
  const char *method;
  rpc_handler fn;
  int flags;
} api_method;

static int api_add(rpc_server *srv, api_ctx *ctx, const api_method *methods, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const char *path = rpc_method_path(methods[i].svc, methods[i].method);
    if (!path) return DPOD_EINVAL; /* a handler for a method the contract does not have */
    int status = rpc_server_add_method(srv, path, methods[i].flags, methods[i].fn, ctx);
    if (status != 0) return status;
  }
  return 0;
}

/* A report proves itself with its job's secret; health answers probes, which hold no token. */
static const api_method api_report_methods[] = {
    {&dpod__v1__worker_report__descriptor, "Report", api_report, RPC_METHOD_NO_TOKEN},
    {&grpc__health__v1__health__descriptor, "Check", api_health_check, RPC_METHOD_NO_TOKEN},
    {&grpc__health__v1__health__descriptor, "Watch", api_health_watch_start, RPC_METHOD_NO_TOKEN},
};

int api_register_reports(rpc_server *srv, api_ctx *ctx) {
  return api_add(srv, ctx, api_report_methods, sizeof api_report_methods / sizeof api_report_methods[0]);
}

int api_register(rpc_server *srv, api_ctx *ctx) {
  const ProtobufCServiceDescriptor *coordinator = &dpod__v1__coordinator__descriptor;
  const api_method methods[] = {
      {coordinator, "SubmitJob", api_submit_job, 0},   {coordinator, "GetJob", api_get_job, 0},
      {coordinator, "ListJobs", api_list_jobs, 0},     {coordinator, "CancelJob", api_cancel_job, 0},
      {coordinator, "RestartJob", api_restart_job, 0}, {coordinator, "WatchJob", api_watch_job, 0},
      {coordinator, "Drain", api_drain, 0},            {coordinator, "Undrain", api_undrain, 0},
      {coordinator, "GetStatus", api_get_status, 0},
      {coordinator, "Logs", api_logs, 0},
      {coordinator, "DeleteJob", api_delete_job, 0},
  };
  int status = api_add(srv, ctx, methods, sizeof methods / sizeof methods[0]);
  return status ? status : api_register_reports(srv, ctx);
}
