#include "reporter.h"

#include <errno.h>
#include <grpc/status.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_log.h"
#include "report_journal.h"
#include "rpc_client.h"
#include "rpc_methods.h"

#define REPORT_PERIOD_MS 200     /* batching window */
#define REPORT_TIMEOUT_MS 5000   /* one Report call */
#define REPORT_MAX_BATCH 256     /* events per call; the daemon refuses more than a few times this */
#define REPORT_QUEUE_DEFAULT 4096

typedef struct {
  uint8_t *data;
  size_t len;
} packed_event;

/* The events of one call: from memory, or from the journal (then `journal_next` is where the journal
 * resumes once they are delivered). */
typedef struct {
  packed_event *ev;
  size_t n;
  int from_journal;
  uint64_t journal_next;
} batch;

struct reporter {
  rpc_client *client;
  uint64_t job_id;
  uint32_t attempt;
  char *secret;
  char *journal;           /* path, or NULL */
  size_t queue_max;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t wake;     /* the sender: new events or stop */
  pthread_cond_t drained;  /* flushers: everything delivered */
  /* Unsent events, oldest first: the memory queue, then the journal from journal_offset. Once the
   * journal holds anything, new events go there too, so the order is kept. */
  packed_event *queue;
  size_t count, cap;
  int journal_pending;     /* the journal has records from journal_offset on */
  uint64_t journal_offset;
  packed_event heartbeat;  /* the newest heartbeat not sent yet (len 0: none) */
  size_t dropped;
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

static int reporter_idle_(const reporter *r) { return r->count == 0 && !r->journal_pending && r->heartbeat.len == 0; }

/* Takes the next batch to send (lock held): the memory queue first (it is the oldest), then the
 * journal. Memory events stay in the queue until acknowledged; journal records are copies. */
static int reporter_take_batch_(reporter *r, batch *b) {
  memset(b, 0, sizeof *b);
  if (r->count > 0) {
    b->n = r->count < REPORT_MAX_BATCH ? r->count : REPORT_MAX_BATCH;
    b->ev = r->queue;
    return 0;
  }
  if (!r->journal_pending) return 0;
  uint8_t **data = NULL;
  size_t *lens = NULL, n = 0;
  char err[512];
  int status = report_journal_read(r->journal, r->journal_offset, REPORT_MAX_BATCH, &data, &lens, &n,
                                   &b->journal_next, err, sizeof err);
  if (status != 0) {
    log_warn("cannot read the report journal (%s); its remaining events are lost", err);
    r->journal_pending = 0;
    return status;
  }
  if (n == 0) { /* delivered whole: start it afresh */
    r->journal_pending = 0;
    r->journal_offset = 0;
    if (truncate(r->journal, 0) != 0 && errno != ENOENT) log_warn("cannot empty %s: %s", r->journal, strerror(errno));
    free(data);
    free(lens);
    return 0;
  }
  b->ev = malloc(n * sizeof *b->ev);
  if (!b->ev) {
    report_journal_free_records(data, lens, n);
    return DPOD_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) b->ev[i] = (packed_event){data[i], lens[i]};
  free(data);
  free(lens);
  b->n = n;
  b->from_journal = 1;
  return 0;
}

static void reporter_free_batch_(batch *b) {
  if (!b->from_journal) return;
  for (size_t i = 0; i < b->n; i++) free(b->ev[i].data);
  free(b->ev);
}

/* The batch has been dealt with (delivered, or refused for good): forget it (lock held). */
static void reporter_retire_batch_(reporter *r, batch *b) {
  if (b->from_journal) {
    r->journal_offset = b->journal_next;
  } else {
    for (size_t i = 0; i < b->n; i++) free(r->queue[i].data);
    memmove(r->queue, r->queue + b->n, (r->count - b->n) * sizeof *r->queue);
    r->count -= b->n;
  }
}

/* Statuses that say the daemon will never take this batch: retrying would only block what follows. */
static int reporter_refused_for_good_(int grpc_status) {
  return grpc_status == GRPC_STATUS_INVALID_ARGUMENT || grpc_status == GRPC_STATUS_FAILED_PRECONDITION ||
         grpc_status == GRPC_STATUS_UNAUTHENTICATED || grpc_status == GRPC_STATUS_NOT_FOUND ||
         grpc_status == GRPC_STATUS_PERMISSION_DENIED;
}

/* Sends `b` (and a pending heartbeat, `hb`) without the lock held. Returns 0 (delivered), 1 (refused
 * for good), or a negative status (retry later). */
static int reporter_send_(reporter *r, const batch *b, const packed_event *hb, Dpod__V1__Directive *directive) {
  size_t n = b->n + (hb->len ? 1 : 0);
  Dpod__V1__WorkerEvent **events = calloc(n ? n : 1, sizeof *events);
  if (!events) return DPOD_ENOMEM;
  size_t unpacked = 0;
  int rc = 0;
  for (; unpacked < n; unpacked++) {
    const packed_event *pe = unpacked < b->n ? &b->ev[unpacked] : hb;
    if (!(events[unpacked] = dpod__v1__worker_event__unpack(NULL, pe->len, pe->data))) {
      rc = 1; /* a record we cannot read: no point in sending it ever */
      goto done;
    }
  }
  Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
  req.has_job_id = req.has_attempt = 1;
  req.job_id = r->job_id;
  req.attempt = r->attempt;
  req.secret = r->secret;
  req.n_events = n;
  req.events = events;
  ProtobufCMessage *resp = NULL;
  char err[512];
  rc = rpc_unary(r->client, rpc_method_path(&dpod__v1__worker_report__descriptor, "Report"), &req.base,
                 &dpod__v1__report_response__descriptor, &resp, REPORT_TIMEOUT_MS, err, sizeof err);
  if (rc == 0) {
    *directive = ((Dpod__V1__ReportResponse *)resp)->directive;
    protobuf_c_message_free_unpacked(resp, NULL);
  } else if (reporter_refused_for_good_(rpc_last_grpc_status())) {
    log_warn("dpod refused %zu reported events for good; dropped: %s", n, err);
    rc = 1;
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
    if (reporter_idle_(r)) {
      pthread_cond_broadcast(&r->drained);
      if (r->stopping) break;
      pthread_cond_wait(&r->wake, &r->mu);
      continue;
    }
    /* Let a batch build up for one period (or wait out the backoff), unless we are stopping. */
    if (!r->stopping) {
      struct timespec ts;
      deadline_in(&ts, backoff_ms);
      while (!r->stopping && pthread_cond_timedwait(&r->wake, &r->mu, &ts) != ETIMEDOUT) {
      }
    }
    int stopping = r->stopping;
    batch b;
    if (reporter_take_batch_(r, &b) != 0) continue;
    packed_event hb = r->heartbeat;
    r->heartbeat = (packed_event){NULL, 0};
    pthread_mutex_unlock(&r->mu);
    Dpod__V1__Directive directive = DPOD__V1__DIRECTIVE__DIRECTIVE_NONE;
    int rc = reporter_send_(r, &b, &hb, &directive);
    pthread_mutex_lock(&r->mu);
    if (rc >= 0) {
      if (rc == 1) r->dropped += b.n;
      reporter_retire_batch_(r, &b);
      if (directive != DPOD__V1__DIRECTIVE__DIRECTIVE_NONE) r->directive = directive;
      if (rc == 0 && r->failing) log_info("reporting to dpod again");
      if (rc == 0) r->failing = 0;
      free(hb.data);
      backoff_ms = REPORT_PERIOD_MS;
    } else {
      /* Keep the heartbeat unless a newer one arrived meanwhile. */
      if (r->heartbeat.len == 0) r->heartbeat = hb;
      else free(hb.data);
      backoff_ms = backoff_ms < 4000 ? backoff_ms * 2 : 4000;
    }
    reporter_free_batch_(&b);
    if (rc < 0 && stopping) break; /* one last try was made */
  }
  pthread_cond_broadcast(&r->drained);
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

int reporter_start(const reporter_params *p, reporter **out, char *err, size_t errlen) {
  *out = NULL;
  reporter *r = calloc(1, sizeof *r);
  if (!r) return DPOD_ENOMEM;
  int inited = 0; /* how many of mu, wake, drained exist */
  rpc_client_params cp = rpc_client_default_params();
  cp.tls_ca = p->tls_ca;
  int rc = rpc_client_open_with(p->addr, &cp, &r->client, err, errlen);
  if (rc) goto fail;
  r->job_id = p->job_id;
  r->attempt = p->attempt;
  r->queue_max = p->queue_max ? p->queue_max : REPORT_QUEUE_DEFAULT;
  rc = DPOD_ENOMEM;
  if (!(r->secret = strdup(p->secret ? p->secret : ""))) goto fail;
  if (p->journal_path && !(r->journal = strdup(p->journal_path))) goto fail;
  /* A journal left by an earlier run of this attempt (the ranks were restarted in place) is delivered
   * before anything new. */
  if (r->journal && access(r->journal, F_OK) == 0) r->journal_pending = 1;
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
  free(r->journal);
  free(r);
  return rc;
}

int reporter_push(reporter *r, const Dpod__V1__WorkerEvent *ev) {
  size_t len = dpod__v1__worker_event__get_packed_size(ev);
  uint8_t *data = malloc(len ? len : 1);
  if (!data) return DPOD_ENOMEM;
  dpod__v1__worker_event__pack(ev, data);
  int status = 0;
  pthread_mutex_lock(&r->mu);
  if (ev->event_case == DPOD__V1__WORKER_EVENT__EVENT_HEARTBEAT) {
    free(r->heartbeat.data);
    r->heartbeat = (packed_event){data, len};
  } else if (r->journal && (r->journal_pending || r->count >= r->queue_max)) {
    char err[512];
    if ((status = report_journal_append(r->journal, &data, &len, 1, 0, err, sizeof err)) != 0) {
      log_warn("cannot journal a report: %s", err);
    } else {
      if (!r->journal_pending) log_warn("dpod is not taking reports; keeping them in %s", r->journal);
      r->journal_pending = 1;
    }
    free(data);
  } else if (r->count >= r->queue_max) {
    r->dropped++;
    free(data);
    status = DPOD_ENOMEM;
  } else {
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
  }
  pthread_cond_signal(&r->wake);
  pthread_mutex_unlock(&r->mu);
  return status;
}

Dpod__V1__Directive reporter_directive(reporter *r) {
  pthread_mutex_lock(&r->mu);
  Dpod__V1__Directive d = r->directive;
  pthread_mutex_unlock(&r->mu);
  return d;
}

size_t reporter_dropped(reporter *r) {
  pthread_mutex_lock(&r->mu);
  size_t d = r->dropped;
  pthread_mutex_unlock(&r->mu);
  return d;
}

int reporter_flush(reporter *r, int timeout_ms) {
  struct timespec ts;
  deadline_in(&ts, timeout_ms);
  int rc = 0;
  pthread_mutex_lock(&r->mu);
  pthread_cond_signal(&r->wake);
  while ((r->count > 0 || r->journal_pending) && rc == 0)
    if (pthread_cond_timedwait(&r->drained, &r->mu, &ts) == ETIMEDOUT) rc = DPOD_ETIMEDOUT;
  pthread_mutex_unlock(&r->mu);
  return rc;
}

/* At exit: the events still in memory (the oldest) and the journal's unsent rest, in that order, become
 * the whole journal, written atomically and durably. */
static void reporter_leave_in_journal_(reporter *r) {
  if (!r->journal || (r->count == 0 && !r->journal_pending)) return;
  uint8_t **rest = NULL;
  size_t *rest_lens = NULL, n_rest = 0;
  uint64_t next;
  char err[512];
  if (r->journal_pending &&
      report_journal_read(r->journal, r->journal_offset, SIZE_MAX, &rest, &rest_lens, &n_rest, &next, err, sizeof err) != 0)
    log_warn("%s", err);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.new", r->journal);
  unlink(tmp);
  uint8_t **mem = malloc((r->count ? r->count : 1) * sizeof *mem);
  size_t *mem_lens = malloc((r->count ? r->count : 1) * sizeof *mem_lens);
  int status = mem && mem_lens ? 0 : DPOD_ENOMEM;
  for (size_t i = 0; status == 0 && i < r->count; i++) {
    mem[i] = r->queue[i].data;
    mem_lens[i] = r->queue[i].len;
  }
  if (status == 0) status = report_journal_append(tmp, mem, mem_lens, r->count, 0, err, sizeof err);
  if (status == 0) status = report_journal_append(tmp, rest, rest_lens, n_rest, 1, err, sizeof err);
  if (status == 0 && rename(tmp, r->journal) != 0) status = DPOD_EIO;
  if (status == 0) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", r->journal);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    dpod_fsync_dir(slash ? dir : ".", NULL, 0);
    log_warn("left %zu undelivered reports in %s for dpod", r->count + n_rest, r->journal);
  } else {
    log_error("could not keep %zu undelivered reports: %s", r->count + n_rest, err);
    unlink(tmp);
  }
  free(mem);
  free(mem_lens);
  report_journal_free_records(rest, rest_lens, n_rest);
}

void reporter_stop(reporter *r) {
  if (!r) return;
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_signal(&r->wake);
  pthread_mutex_unlock(&r->mu);
  pthread_join(r->thread, NULL);
  reporter_leave_in_journal_(r);
  if (r->dropped) log_warn("dpod refused %zu reported events for good", r->dropped);
  for (size_t i = 0; i < r->count; i++) free(r->queue[i].data);
  free(r->queue);
  free(r->heartbeat.data);
  rpc_client_close(r->client);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->wake);
  pthread_cond_destroy(&r->drained);
  free(r->secret);
  free(r->journal);
  free(r);
}
