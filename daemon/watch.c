#include "watch.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>

#include "dpod_error.h"
#include "dpod_log.h"

typedef struct watch {
  watch_set *ws;
  rpc_call *call;
  uint64_t job_id;
  uint64_t next_seq;
  bool sending;        /* a send is in flight */
  bool ending;         /* the stream was ended (or the client left): send nothing more */
  struct watch *prev, *next;
} watch;

/* Recent events, packed once for every stream that sends them (200 watchers of one job read and pack
 * an event once, not 200 times). Direct-mapped by (job, seq); events never change once stored. */
#define WATCH_CACHE_SLOTS 1024

typedef struct {
  uint64_t job_id, seq; /* job_id 0: empty */
  grpc_slice bytes;
} watch_cached;

/* The newest facts of recently notified jobs (its last seq, whether it has ended), so that a stream
 * that has caught up learns there is nothing to send without asking the store. Every append is
 * followed by watch_notify(), which refreshes the entry. */
#define WATCH_JOB_SLOTS 64

typedef struct {
  uint64_t job_id; /* 0: empty */
  uint64_t last_seq;
  bool terminal;
} watch_job;

struct watch_set {
  job_store *store;
  watch *head;
  size_t n;
  watch_cached cache[WATCH_CACHE_SLOTS];
  watch_job jobs[WATCH_JOB_SLOTS];
};

int watch_set_create(job_store *store, watch_set **out) {
  *out = calloc(1, sizeof **out);
  if (!*out) return DPOD_ENOMEM;
  (*out)->store = store;
  return 0;
}

void watch_set_free(watch_set *ws) {
  if (!ws) return;
  if (ws->n) log_error("watch_set_free with %zu streams open", ws->n);
  for (size_t i = 0; i < WATCH_CACHE_SLOTS; i++)
    if (ws->cache[i].job_id) grpc_slice_unref(ws->cache[i].bytes);
  free(ws);
}

/* The job's entry, read from the store if it is not there (NULL if the store cannot say). */
static const watch_job *watch_job_facts(watch_set *ws, uint64_t job_id, bool refresh) {
  watch_job *j = &ws->jobs[job_id % WATCH_JOB_SLOTS];
  if (j->job_id == job_id && !refresh) return j;
  job_info info;
  if (job_store_get_info(ws->store, job_id, &info) != 0) {
    if (j->job_id == job_id) j->job_id = 0;
    return NULL;
  }
  *j = (watch_job){job_id, info.last_seq, job_state_is_terminal(info.state)};
  return j;
}

static watch_cached *watch_cache_slot(watch_set *ws, uint64_t job_id, uint64_t seq) {
  return &ws->cache[(seq + job_id * 0x9E3779B97F4A7C15ull) % WATCH_CACHE_SLOTS];
}

/* The packed event (job_id, seq), from the cache or the store; the slice stays the cache's. */
static int watch_event_bytes(watch_set *ws, uint64_t job_id, uint64_t seq, grpc_slice *out) {
  watch_cached *c = watch_cache_slot(ws, job_id, seq);
  if (c->job_id == job_id && c->seq == seq) {
    *out = c->bytes;
    return 0;
  }
  Dpod__V1__JobEvent *ev = NULL;
  int status = job_store_get_event(ws->store, job_id, seq, &ev);
  if (status != 0) return status;
  grpc_slice bytes;
  status = rpc_pack_slice(&ev->base, &bytes);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  if (status != 0) return status;
  if (c->job_id) grpc_slice_unref(c->bytes);
  *c = (watch_cached){job_id, seq, bytes};
  *out = bytes;
  return 0;
}

size_t watch_count(const watch_set *ws) { return ws->n; }

static void watch_end(watch *w, grpc_status_code code, const char *details) {
  w->ending = true;
  rpc_call_finish(w->call, code, details);
}

static void watch_pump(watch *w) {
  if (w->sending || w->ending) return;
  if (rpc_call_is_over(w->call)) {
    w->ending = true;
    return;
  }
  const watch_job *known = watch_job_facts(w->ws, w->job_id, false);
  if (known && w->next_seq > known->last_seq) {
    /* Nothing new. A finished job gets no more events: a watch that starts past its end ends here. */
    if (known->terminal) watch_end(w, GRPC_STATUS_OK, NULL);
    return;
  }
  grpc_slice bytes;
  int status = watch_event_bytes(w->ws, w->job_id, w->next_seq, &bytes);
  if (status == DPOD_ENOENT) return; /* appended meanwhile? the next notify says */
  if (status != 0) {
    watch_end(w, GRPC_STATUS_INTERNAL, "cannot read the job's events");
    return;
  }
  status = rpc_call_send_slice(w->call, bytes);
  if (status != 0) {
    w->ending = true; /* the client is gone; the done callback frees the watch */
    return;
  }
  w->sending = true;
  w->next_seq++;
}

void watch_notify(void *arg, uint64_t job_id) {
  watch_set *ws = arg;
  watch_job_facts(ws, job_id, true);
  for (watch *w = ws->head; w; w = w->next)
    if (w->job_id == job_id) watch_pump(w);
}

static void watch_sent(rpc_call *call, int ok, void *data) {
  (void)call;
  watch *w = data;
  w->sending = false;
  if (!ok) {
    w->ending = true;
    return;
  }
  watch_pump(w);
}

static void watch_done(rpc_call *call, void *data) {
  (void)call;
  watch *w = data;
  watch_set *ws = w->ws;
  if (w->prev) w->prev->next = w->next;
  else ws->head = w->next;
  if (w->next) w->next->prev = w->prev;
  ws->n--;
  log_debug("watch of job %" PRIu64 " closed", w->job_id);
  free(w);
}

int watch_start(watch_set *ws, rpc_call *call, uint64_t job_id, uint64_t after_seq) {
  watch *w = calloc(1, sizeof *w);
  if (!w) return DPOD_ENOMEM;
  w->ws = ws;
  w->call = call;
  w->job_id = job_id;
  w->next_seq = after_seq == UINT64_MAX ? after_seq : after_seq + 1;
  w->next = ws->head;
  if (ws->head) ws->head->prev = w;
  ws->head = w;
  ws->n++;
  rpc_call_set_stream(call, watch_sent, watch_done, w);
  log_debug("watch of job %" PRIu64 " from seq %" PRIu64, job_id, w->next_seq);
  watch_pump(w);
  return 0;
}
