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

struct watch_set {
  job_store *store;
  watch *head;
  size_t n;
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
  free(ws);
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
  Dpod__V1__JobEvent *ev = NULL;
  int status = job_store_get_event(w->ws->store, w->job_id, w->next_seq, &ev);
  if (status == DPOD_ENOENT) {
    /* Nothing new. A finished job gets no more events: a watch that starts past its end ends here. */
    job_info info;
    if (job_store_get_info(w->ws->store, w->job_id, &info) == 0 && job_state_is_terminal(info.state) &&
        w->next_seq > info.last_seq)
      watch_end(w, GRPC_STATUS_OK, NULL);
    return;
  }
  if (status != 0) {
    watch_end(w, GRPC_STATUS_INTERNAL, "cannot read the job's events");
    return;
  }
  status = rpc_call_send(w->call, &ev->base);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  if (status != 0) {
    w->ending = true; /* the client is gone; the done callback frees the watch */
    return;
  }
  w->sending = true;
  w->next_seq++;
}

void watch_notify(void *arg, uint64_t job_id) {
  watch_set *ws = arg;
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
