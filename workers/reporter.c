#include "reporter.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpod_error.h"
#include "dpod_log.h"
#include "rpc_client.h"
#include "rpc_methods.h"

#define REPORT_PERIOD_MS 200   /* batching window */
#define REPORT_TIMEOUT_MS 5000 /* one Report call */
#define REPORT_MAX_BATCH 256

typedef struct {
  uint8_t *data;
  size_t len;
} packed_event;

struct reporter {
  rpc_client *client;
  uint64_t job_id;
  char *secret;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t wake;     /* the sender: new events or stop */
  pthread_cond_t drained;  /* flushers: the queue emptied */
  packed_event *queue;     /* unacknowledged events, oldest first */
  size_t count, cap;
  int stopping;
  int failing;             /* the last call failed; logged once per outage */
  Dpod__V1__Directive directive;
};

static void deadline_in(struct timespec *ts, int ms) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

/* Sends up to REPORT_MAX_BATCH of the oldest events. Called without the lock held; only the sender
 * thread removes events, so the first `n` stay put while the lock is released. */
static int reporter_send_batch(reporter *r, size_t n) {
  Dpod__V1__WorkerEvent **events = calloc(n, sizeof *events);
  if (!events) return DPOD_ENOMEM;
  size_t unpacked = 0;
  int rc = 0;
  for (; unpacked < n; unpacked++) {
    pthread_mutex_lock(&r->mu);
    packed_event pe = r->queue[unpacked];
    pthread_mutex_unlock(&r->mu);
    events[unpacked] = dpod__v1__worker_event__unpack(NULL, pe.len, pe.data);
    if (!events[unpacked]) {
      rc = DPOD_EFORMAT;
      goto done;
    }
  }
  Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
  req.has_job_id = 1;
  req.job_id = r->job_id;
  req.secret = r->secret;
  req.n_events = n;
  req.events = events;
  ProtobufCMessage *resp = NULL;
  char err[512];
  rc = rpc_unary(r->client, rpc_method_path(&dpod__v1__worker_report__descriptor, "Report"), &req.base, &dpod__v1__report_response__descriptor,
                 &resp, REPORT_TIMEOUT_MS, err, sizeof err);
  if (rc == 0) {
    Dpod__V1__ReportResponse *rr = (Dpod__V1__ReportResponse *)resp;
    pthread_mutex_lock(&r->mu);
    if (rr->directive != DPOD__V1__DIRECTIVE__DIRECTIVE_NONE) r->directive = rr->directive;
    for (size_t i = 0; i < n; i++) free(r->queue[i].data);
    memmove(r->queue, r->queue + n, (r->count - n) * sizeof *r->queue);
    r->count -= n;
    if (r->failing) log_info("reporting to dpod again");
    r->failing = 0;
    if (r->count == 0) pthread_cond_broadcast(&r->drained);
    pthread_mutex_unlock(&r->mu);
    protobuf_c_message_free_unpacked(resp, NULL);
  } else if (!r->failing) {
    r->failing = 1;
    log_warn("report to dpod failed, will retry: %s", err);
  }
done:
  for (size_t i = 0; i < unpacked; i++) dpod__v1__worker_event__free_unpacked(events[i], NULL);
  free(events);
  return rc;
}

static void *reporter_main(void *arg) {
  reporter *r = arg;
  int backoff_ms = REPORT_PERIOD_MS;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    if (r->count == 0 && !r->stopping) {
      pthread_cond_wait(&r->wake, &r->mu);
      continue;
    }
    if (r->count == 0 && r->stopping) break;
    /* Let a batch build up for one period, unless we are stopping. */
    if (!r->stopping) {
      struct timespec ts;
      deadline_in(&ts, backoff_ms);
      while (!r->stopping && pthread_cond_timedwait(&r->wake, &r->mu, &ts) != ETIMEDOUT) {
      }
    }
    size_t n = r->count < REPORT_MAX_BATCH ? r->count : REPORT_MAX_BATCH;
    int stopping = r->stopping;
    pthread_mutex_unlock(&r->mu);
    int rc = reporter_send_batch(r, n);
    pthread_mutex_lock(&r->mu);
    if (rc != 0) {
      if (stopping) break; /* one last try was made; the caller's flush timed out or gave up */
      backoff_ms = backoff_ms < 4000 ? backoff_ms * 2 : 4000;
    } else {
      backoff_ms = REPORT_PERIOD_MS;
    }
  }
  pthread_cond_broadcast(&r->drained);
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

int reporter_start(const char *addr, uint64_t job_id, const char *secret, reporter **out, char *err,
                   size_t errlen) {
  reporter *r = calloc(1, sizeof *r);
  if (!r) return DPOD_ENOMEM;
  int inited = 0; /* how many of mu, wake, drained exist */
  int rc = rpc_client_open(addr, &r->client, err, errlen);
  if (rc) goto fail;
  r->job_id = job_id;
  rc = DPOD_ENOMEM;
  if (!(r->secret = strdup(secret ? secret : ""))) goto fail;
  if (pthread_mutex_init(&r->mu, NULL) != 0) goto fail;
  inited++;
  if (pthread_cond_init(&r->wake, NULL) != 0) goto fail;
  inited++;
  if (pthread_cond_init(&r->drained, NULL) != 0) goto fail;
  inited++;
  if (pthread_create(&r->thread, NULL, reporter_main, r) != 0) goto fail;
  *out = r;
  return 0;
fail:
  if (inited > 2) pthread_cond_destroy(&r->drained);
  if (inited > 1) pthread_cond_destroy(&r->wake);
  if (inited > 0) pthread_mutex_destroy(&r->mu);
  if (r->client) rpc_client_close(r->client);
  free(r->secret);
  free(r);
  return rc;
}

int reporter_push(reporter *r, const Dpod__V1__WorkerEvent *ev) {
  size_t len = dpod__v1__worker_event__get_packed_size(ev);
  uint8_t *data = malloc(len ? len : 1);
  if (!data) return DPOD_ENOMEM;
  dpod__v1__worker_event__pack(ev, data);
  pthread_mutex_lock(&r->mu);
  if (r->count == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 64;
    packed_event *q = realloc(r->queue, cap * sizeof *q);
    if (!q) {
      pthread_mutex_unlock(&r->mu);
      free(data);
      return DPOD_ENOMEM;
    }
    r->queue = q;
    r->cap = cap;
  }
  r->queue[r->count++] = (packed_event){data, len};
  pthread_cond_signal(&r->wake);
  pthread_mutex_unlock(&r->mu);
  return 0;
}

Dpod__V1__Directive reporter_directive(reporter *r) {
  pthread_mutex_lock(&r->mu);
  Dpod__V1__Directive d = r->directive;
  pthread_mutex_unlock(&r->mu);
  return d;
}

int reporter_flush(reporter *r, int timeout_ms) {
  struct timespec ts;
  deadline_in(&ts, timeout_ms);
  int rc = 0;
  pthread_mutex_lock(&r->mu);
  pthread_cond_signal(&r->wake);
  while (r->count > 0 && rc == 0)
    if (pthread_cond_timedwait(&r->drained, &r->mu, &ts) == ETIMEDOUT) rc = DPOD_ETIMEDOUT;
  pthread_mutex_unlock(&r->mu);
  return rc;
}

void reporter_stop(reporter *r) {
  if (!r) return;
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_signal(&r->wake);
  pthread_mutex_unlock(&r->mu);
  pthread_join(r->thread, NULL);
  for (size_t i = 0; i < r->count; i++) free(r->queue[i].data);
  free(r->queue);
  rpc_client_close(r->client);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->wake);
  pthread_cond_destroy(&r->drained);
  free(r->secret);
  free(r);
}
