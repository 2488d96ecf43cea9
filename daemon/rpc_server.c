#include "rpc_server.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_log.h"
#include "rpc_addr.h"

#define RPC_MAX_METHODS 16
#define RPC_SLICE_NS 500000 /* the most completions may take in one loop iteration, about */

typedef enum {
  RPC_TAG_NEW,      /* a requested call arrived (or the request was cancelled by shutdown) */
  RPC_TAG_CLOSE,    /* RECV_CLOSE_ON_SERVER: the call is over */
  RPC_TAG_SEND,     /* a streamed SEND_MESSAGE completed */
  RPC_TAG_STATUS,   /* the batch carrying SEND_STATUS_FROM_SERVER completed */
  RPC_TAG_SHUTDOWN, /* grpc_server_shutdown_and_notify completed */
} rpc_tag_kind;

/* What goes through the completion queue: the kind of batch and its owner (a call, or the server). */
typedef struct {
  rpc_tag_kind kind;
  void *owner;
} rpc_tag;

typedef struct {
  char *path;
  void *handle; /* from grpc_server_register_method */
  rpc_handler handler;
  void *arg;
  int flags; /* RPC_METHOD_* */
} rpc_method;

struct rpc_call {
  rpc_server *server;
  int method; /* index into server->methods, or -1 for the generic (unknown method) request */
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array request_md;
  grpc_call_details details; /* generic requests only */
  grpc_byte_buffer *payload; /* registered requests: the request message */
  rpc_tag tag_new, tag_close, tag_send, tag_status;

  int pending;         /* batches started and not completed, including the request itself */
  bool arrived;        /* the request completed with a call */
  bool close_done;     /* RECV_CLOSE_ON_SERVER completed */
  int cancelled;       /* written by RECV_CLOSE_ON_SERVER */
  bool sent_initial_md;
  bool send_in_flight;
  bool ended;          /* a status was sent or is held back behind a send */
  bool status_deferred;
  grpc_status_code deferred_code;
  char *deferred_details;
  grpc_byte_buffer *send_buf;
  grpc_byte_buffer *reply_buf;
  grpc_slice status_details;
  bool has_status_details;

  rpc_sent_cb sent_cb;
  rpc_done_cb done_cb;
  void *data;
  struct rpc_call *prev, *next; /* live calls (debugging, counts) */
};

typedef struct {
  rpc_tag *tag;
  int ok;
} rpc_event;

struct rpc_server {
  uv_loop_t *loop;
  grpc_server *server;
  grpc_completion_queue *cq;
  rpc_method methods[RPC_MAX_METHODS];
  int n_methods;
  bool started, shutting_down, shutdown_notified, cq_shutdown_called, finished;
  rpc_tag tag_shutdown;
  void (*done)(void *arg);
  void *done_arg;
  rpc_call *calls;
  size_t n_calls;

  /* Handed from the completion-queue thread to the loop, under `lock`. */
  pthread_t thread;
  bool thread_running;
  pthread_mutex_t lock;
  rpc_event *events;
  size_t n_events, cap_events;
  bool cq_drained;
  uv_async_t async;
  bool async_open;
  /* Taken from `events` by the loop and worked off in slices (RPC_SLICE_NS per loop iteration), so a
   * burst of completions never keeps the loop from polling. */
  rpc_event *work;
  size_t n_work, cap_work, work_pos;
  int dir_fd; /* the socket's directory, when its path is too long to bind directly; -1 if none */
  char *token; /* the bearer token calls must carry; NULL: none */
  int port;    /* the TCP port it listens on (the real one when asked for port 0); 0 for a unix socket */
};

/* ---------------------------------------------------------------------------------------------------
 * The completion-queue thread: drain, enqueue, wake the loop. Nothing else happens here. */

static void *rpc_cq_thread(void *arg) {
  rpc_server *s = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    pthread_mutex_lock(&s->lock);
    if (ev.type == GRPC_OP_COMPLETE) {
      /* Dropping a tag would leak its call forever and hang shutdown, so without memory for the queue
       * this thread waits (the loop keeps handling what is queued, and frees as it goes) and tries again. */
      for (int tries = 0; s->n_events == s->cap_events; tries++) {
        size_t cap = s->cap_events ? 2 * s->cap_events : 64;
        rpc_event *grown = realloc(s->events, cap * sizeof *grown);
        if (grown) {
          s->events = grown;
          s->cap_events = cap;
          break;
        }
        if (tries == 0) log_error("out of memory queueing a completion; waiting for memory");
        pthread_mutex_unlock(&s->lock);
        uv_async_send(&s->async);
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
        pthread_mutex_lock(&s->lock);
      }
      s->events[s->n_events++] = (rpc_event){ev.tag, ev.success};
    } else if (ev.type == GRPC_QUEUE_SHUTDOWN) {
      s->cq_drained = true;
    }
    pthread_mutex_unlock(&s->lock);
    uv_async_send(&s->async);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
  }
  return NULL;
}

/* ---------------------------------------------------------------------------------------------------
 * Calls. */

static int rpc_request(rpc_server *s, int method);

static rpc_call *rpc_call_new(rpc_server *s, int method) {
  rpc_call *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->server = s;
  c->method = method;
  grpc_metadata_array_init(&c->request_md);
  grpc_call_details_init(&c->details);
  c->tag_new = (rpc_tag){RPC_TAG_NEW, c};
  c->tag_close = (rpc_tag){RPC_TAG_CLOSE, c};
  c->tag_send = (rpc_tag){RPC_TAG_SEND, c};
  c->tag_status = (rpc_tag){RPC_TAG_STATUS, c};
  c->next = s->calls;
  if (s->calls) s->calls->prev = c;
  s->calls = c;
  s->n_calls++;
  return c;
}

static void rpc_call_free(rpc_call *c) {
  rpc_server *s = c->server;
  if (c->prev) c->prev->next = c->next;
  else s->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  s->n_calls--;
  if (c->payload) grpc_byte_buffer_destroy(c->payload);
  if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
  if (c->reply_buf) grpc_byte_buffer_destroy(c->reply_buf);
  if (c->has_status_details) grpc_slice_unref(c->status_details);
  free(c->deferred_details);
  grpc_metadata_array_destroy(&c->request_md);
  grpc_call_details_destroy(&c->details);
  if (c->call) grpc_call_unref(c->call);
  free(c);
}

/* Frees the call once nothing can refer to it any more: the call is over and no batch is pending. */
static void rpc_call_maybe_free(rpc_call *c) {
  if (c->pending > 0) return;
  if (c->arrived && !c->close_done) return;
  if (c->done_cb) {
    rpc_done_cb cb = c->done_cb;
    c->done_cb = NULL;
    c->sent_cb = NULL;
    cb(c, c->data);
  }
  rpc_call_free(c);
}

/* No batch may be started once the completion queue is being shut down. */
static bool rpc_call_can_start(const rpc_call *c) {
  return c->arrived && !c->server->cq_shutdown_called && !(c->close_done && c->cancelled);
}

static int rpc_start(rpc_call *c, const grpc_op *ops, size_t n, rpc_tag *tag) {
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
  if (e != GRPC_CALL_OK) {
    /* A programming error (two sends at once, ...): the tag will never complete. */
    log_error("%s: grpc_call_start_batch: %s", rpc_call_method(c), grpc_call_error_to_string(e));
    return DPOD_ERPC;
  }
  c->pending++;
  return 0;
}

int rpc_pack_slice(const ProtobufCMessage *msg, grpc_slice *out) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf) return DPOD_ENOMEM;
  protobuf_c_message_pack(msg, buf);
  *out = grpc_slice_new(buf, len, free);
  return 0;
}

static grpc_byte_buffer *rpc_pack(const ProtobufCMessage *msg) {
  grpc_slice slice;
  if (rpc_pack_slice(msg, &slice) != 0) return NULL;
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return bb;
}

/* Starts the batch that ends the call: [initial metadata] [message] status. */
static void rpc_send_status(rpc_call *c, grpc_status_code code, const char *details, grpc_byte_buffer *msg) {
  grpc_op ops[3];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (!c->sent_initial_md) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
    c->sent_initial_md = true;
  }
  if (msg) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = msg;
    n++;
    c->reply_buf = msg;
  }
  if (c->has_status_details) grpc_slice_unref(c->status_details);
  c->status_details = grpc_slice_from_copied_string(details ? details : "");
  c->has_status_details = true;
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status = code;
  ops[n].data.send_status_from_server.status_details = &c->status_details;
  n++;
  rpc_start(c, ops, n, &c->tag_status);
}

void rpc_call_reply(rpc_call *c, const ProtobufCMessage *resp) {
  if (c->ended) return;
  c->ended = true;
  if (!rpc_call_can_start(c)) return;
  grpc_byte_buffer *bb = rpc_pack(resp);
  if (!bb) {
    rpc_send_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
    return;
  }
  rpc_send_status(c, GRPC_STATUS_OK, NULL, bb);
}

void rpc_call_fail(rpc_call *c, grpc_status_code code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  log_debug("%s -> status %d: %s", rpc_call_method(c), (int)code, msg);
  rpc_call_finish(c, code, msg);
}

void rpc_call_set_stream(rpc_call *c, rpc_sent_cb sent, rpc_done_cb done, void *data) {
  c->sent_cb = sent;
  c->done_cb = done;
  c->data = data;
}

static int rpc_call_send_buffer(rpc_call *c, grpc_byte_buffer *bb);

int rpc_call_send(rpc_call *c, const ProtobufCMessage *msg) {
  if (c->ended || c->send_in_flight) return DPOD_ESTATE;
  if (!rpc_call_can_start(c)) return DPOD_ECANCELED;
  grpc_byte_buffer *bb = rpc_pack(msg);
  if (!bb) return DPOD_ENOMEM;
  return rpc_call_send_buffer(c, bb);
}

int rpc_call_send_slice(rpc_call *c, grpc_slice msg) {
  if (c->ended || c->send_in_flight) return DPOD_ESTATE;
  if (!rpc_call_can_start(c)) return DPOD_ECANCELED;
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&msg, 1); /* takes its own reference */
  if (!bb) return DPOD_ENOMEM;
  return rpc_call_send_buffer(c, bb);
}

/* Starts the SEND_MESSAGE batch of `bb`, which it owns from here on. */
static int rpc_call_send_buffer(rpc_call *c, grpc_byte_buffer *bb) {
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (!c->sent_initial_md) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = bb;
  n++;
  int status = rpc_start(c, ops, n, &c->tag_send);
  if (status != 0) {
    grpc_byte_buffer_destroy(bb);
    return status;
  }
  c->sent_initial_md = true;
  c->send_in_flight = true;
  c->send_buf = bb;
  return 0;
}

void rpc_call_finish(rpc_call *c, grpc_status_code code, const char *details) {
  if (c->ended) return;
  c->ended = true;
  if (!rpc_call_can_start(c)) return;
  if (c->send_in_flight) {
    /* Held back: a status may not overtake the message before it. */
    c->status_deferred = true;
    c->deferred_code = code;
    c->deferred_details = strdup(details ? details : ""); /* NULL (no memory) sends no details */
    return;
  }
  rpc_send_status(c, code, details, NULL);
}

int rpc_call_is_over(const rpc_call *c) { return c->ended || c->cancelled || !rpc_call_can_start(c); }

const char *rpc_call_method(const rpc_call *c) {
  if (c->method >= 0) return c->server->methods[c->method].path;
  return "(unknown method)";
}

/* Copies the generic request's method name, which is a slice, for the UNIMPLEMENTED message. */
static void rpc_generic_method(const rpc_call *c, char *buf, size_t len) {
  size_t n = GRPC_SLICE_LENGTH(c->details.method);
  if (n >= len) n = len - 1;
  memcpy(buf, GRPC_SLICE_START_PTR(c->details.method), n);
  buf[n] = '\0';
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)buf[i] < 32 || (unsigned char)buf[i] > 126) buf[i] = '?';
}

/* Whether the call's metadata holds `authorization: Bearer TOKEN`. Compares every byte whatever the
 * input, so the time taken says nothing about the token. */
static bool rpc_token_ok(const grpc_metadata_array *md, const char *token) {
  size_t n = strlen(token);
  for (size_t i = 0; i < md->count; i++) {
    if (grpc_slice_str_cmp(md->metadata[i].key, "authorization") != 0) continue;
    const grpc_slice v = md->metadata[i].value;
    size_t len = GRPC_SLICE_LENGTH(v);
    const unsigned char *p = GRPC_SLICE_START_PTR(v);
    if (len != n + 7 || memcmp(p, "Bearer ", 7) != 0) continue;
    unsigned char diff = 0;
    for (size_t k = 0; k < n; k++) diff |= (unsigned char)(p[7 + k] ^ (unsigned char)token[k]);
    if (diff == 0) return true;
  }
  return false;
}

static void rpc_on_new(rpc_call *c, int ok) {
  rpc_server *s = c->server;
  if (!ok) return; /* the server is shutting down; the shell is freed by the caller */
  c->arrived = true;
  if (!s->shutting_down) rpc_request(s, c->method);

  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->cancelled;
  if (rpc_start(c, &op, 1, &c->tag_close) != 0) {
    /* Without RECV_CLOSE we would never learn the call is over: cancel and free it now. */
    grpc_call_cancel(c->call, NULL);
    c->close_done = true;
    c->ended = true;
    return;
  }

  if (s->shutting_down) {
    rpc_call_fail(c, GRPC_STATUS_UNAVAILABLE, "dpod is shutting down");
    return;
  }
  if (c->method < 0) {
    char name[256];
    rpc_generic_method(c, name, sizeof name);
    log_debug("unknown method %s", name);
    rpc_call_fail(c, GRPC_STATUS_UNIMPLEMENTED, "unknown method %s", name);
    return;
  }
  const rpc_method *m = &s->methods[c->method];
  if (s->token && !(m->flags & RPC_METHOD_NO_TOKEN) && !rpc_token_ok(&c->request_md, s->token)) {
    log_debug("%s refused: no valid bearer token", m->path);
    rpc_call_fail(c, GRPC_STATUS_UNAUTHENTICATED, "missing or wrong token (send \"authorization: Bearer TOKEN\")");
    return;
  }
  if (!c->payload) {
    rpc_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "missing request message");
    return;
  }
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, c->payload)) {
    rpc_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "unreadable request message");
    return;
  }
  grpc_slice req = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  grpc_byte_buffer_destroy(c->payload);
  c->payload = NULL;
  log_debug("%s (%zu bytes)", m->path, (size_t)GRPC_SLICE_LENGTH(req));
  m->handler(c, GRPC_SLICE_START_PTR(req), GRPC_SLICE_LENGTH(req), m->arg);
  grpc_slice_unref(req);
}

static void rpc_on_event(rpc_server *s, rpc_tag *tag, int ok) {
  if (tag->kind == RPC_TAG_SHUTDOWN) {
    log_debug("rpc server stopped accepting; %zu calls left", s->n_calls);
    s->shutdown_notified = true;
    return;
  }
  rpc_call *c = tag->owner;
  c->pending--;
  switch (tag->kind) {
    case RPC_TAG_NEW:
      rpc_on_new(c, ok);
      break;
    case RPC_TAG_CLOSE:
      c->close_done = true;
      if (c->cancelled) log_debug("%s: cancelled by the client", rpc_call_method(c));
      break;
    case RPC_TAG_SEND:
      c->send_in_flight = false;
      if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
      c->send_buf = NULL;
      if (c->status_deferred) {
        c->status_deferred = false;
        if (rpc_call_can_start(c)) rpc_send_status(c, c->deferred_code, c->deferred_details, NULL);
      } else if (c->sent_cb) {
        c->sent_cb(c, ok && rpc_call_can_start(c), c->data);
      }
      break;
    case RPC_TAG_STATUS:
      if (c->reply_buf) grpc_byte_buffer_destroy(c->reply_buf);
      c->reply_buf = NULL;
      break;
    default:
      break;
  }
  rpc_call_maybe_free(c);
}

static void rpc_finish_shutdown(rpc_server *s) {
  if (s->finished) return;
  s->finished = true;
  if (s->thread_running) {
    pthread_join(s->thread, NULL);
    s->thread_running = false;
  }
  if (s->n_calls) log_warn("rpc server: %zu calls left at shutdown", s->n_calls);
  if (s->done) s->done(s->done_arg);
}

/* The queue is shut down once the server has stopped and the last call (and pending request) is gone:
 * from then on no batch may be started, and the thread ends when the queue is empty. */
static void rpc_maybe_shutdown_cq(rpc_server *s) {
  if (!s->shutdown_notified || s->cq_shutdown_called || s->n_calls > 0) return;
  s->cq_shutdown_called = true;
  grpc_completion_queue_shutdown(s->cq);
}

/* Appends completions to the loop's own work list. */
static bool rpc_work_append(rpc_server *s, const rpc_event *evs, size_t n) {
  if (s->work_pos == s->n_work) s->work_pos = s->n_work = 0;
  if (s->n_work + n > s->cap_work) {
    size_t cap = s->cap_work ? s->cap_work : 64;
    while (cap < s->n_work + n) cap *= 2;
    rpc_event *grown = realloc(s->work, cap * sizeof *grown);
    if (!grown) return false;
    s->work = grown;
    s->cap_work = cap;
  }
  memcpy(s->work + s->n_work, evs, n * sizeof *evs);
  s->n_work += n;
  return true;
}

/* Handles queued completions for at most about RPC_SLICE_NS, then lets the loop poll again (waking
 * itself to go on) if any are left. New calls go first: a burst of stream sends (an event fanned out
 * to hundreds of watchers) must not make a GetJob wait for all of it. That reordering is safe because a
 * call's arrival is its first completion: nothing else of that call can be queued before it. */
static void rpc_on_async(uv_async_t *h) {
  rpc_server *s = h->data;
  uint64_t start = uv_hrtime();
  pthread_mutex_lock(&s->lock);
  rpc_event *incoming = s->events;
  size_t n = s->n_events;
  bool drained = s->cq_drained;
  s->events = NULL;
  s->n_events = s->cap_events = 0;
  pthread_mutex_unlock(&s->lock);
  size_t kept = 0;
  for (size_t i = 0; i < n; i++) {
    if (incoming[i].tag->kind == RPC_TAG_NEW) rpc_on_event(s, incoming[i].tag, incoming[i].ok);
    else incoming[kept++] = incoming[i];
  }
  /* Without memory to queue them, handle them now: slower to answer, never lost. */
  if (kept && !rpc_work_append(s, incoming, kept))
    for (size_t i = 0; i < kept; i++) rpc_on_event(s, incoming[i].tag, incoming[i].ok);
  free(incoming);
  while (s->work_pos < s->n_work) {
    rpc_event ev = s->work[s->work_pos++];
    rpc_on_event(s, ev.tag, ev.ok);
    if ((s->work_pos & 7) == 0 && uv_hrtime() - start > RPC_SLICE_NS) break;
  }
  rpc_maybe_shutdown_cq(s);
  if (s->work_pos < s->n_work) {
    uv_async_send(&s->async);
    return;
  }
  s->work_pos = s->n_work = 0;
  if (drained && n == 0) rpc_finish_shutdown(s);
  else if (drained) uv_async_send(&s->async); /* once more, to see the queue empty */
}

/* Asks for the next call of `method` (-1: any unregistered method). */
static int rpc_request(rpc_server *s, int method) {
  rpc_call *c = rpc_call_new(s, method);
  if (!c) return DPOD_ENOMEM;
  grpc_call_error e;
  if (method >= 0)
    e = grpc_server_request_registered_call(s->server, s->methods[method].handle, &c->call, &c->deadline,
                                            &c->request_md, &c->payload, s->cq, s->cq, &c->tag_new);
  else
    e = grpc_server_request_call(s->server, &c->call, &c->details, &c->request_md, s->cq, s->cq,
                                 &c->tag_new);
  if (e != GRPC_CALL_OK) {
    log_error("requesting a call: %s", grpc_call_error_to_string(e));
    rpc_call_free(c);
    return DPOD_ERPC;
  }
  c->pending++;
  return 0;
}

/* ---------------------------------------------------------------------------------------------------
 * The server. */

int rpc_server_create(uv_loop_t *loop, rpc_server **out) {
  rpc_server *s = calloc(1, sizeof *s);
  if (!s) return DPOD_ENOMEM;
  s->dir_fd = -1;
  if (pthread_mutex_init(&s->lock, NULL) != 0) {
    free(s);
    return DPOD_ENOMEM;
  }
  grpc_init();
  s->loop = loop;
  s->tag_shutdown = (rpc_tag){RPC_TAG_SHUTDOWN, s};
  s->cq = grpc_completion_queue_create_for_next(NULL);
  s->server = grpc_server_create(NULL, NULL);
  if (!s->cq || !s->server) {
    if (s->server) grpc_server_destroy(s->server);
    if (s->cq) grpc_completion_queue_destroy(s->cq);
    grpc_shutdown();
    pthread_mutex_destroy(&s->lock);
    free(s);
    return DPOD_ENOMEM;
  }
  grpc_server_register_completion_queue(s->server, s->cq, NULL);
  *out = s;
  return 0;
}

int rpc_server_add_method(rpc_server *s, const char *path, int flags, rpc_handler handler, void *arg) {
  if (s->started || s->n_methods == RPC_MAX_METHODS) return DPOD_ESTATE;
  rpc_method *m = &s->methods[s->n_methods];
  if (!(m->path = strdup(path))) return DPOD_ENOMEM;
  /* Every method here takes exactly one request message, so core reads it with the call. */
  m->handle = grpc_server_register_method(s->server, m->path, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  if (!m->handle) {
    free(m->path);
    m->path = NULL;
    return DPOD_EINVAL;
  }
  m->handler = handler;
  m->arg = arg;
  m->flags = flags;
  s->n_methods++;
  return 0;
}

int rpc_server_start(rpc_server *s, const char *addr, const rpc_server_security *sec, char *err, size_t errlen) {
  char target[PATH_MAX + 64];
  int status = rpc_addr_for_socket(addr, target, sizeof target, &s->dir_fd, err, errlen);
  if (status != 0) return status;
  if (sec && sec->token && !(s->token = strdup(sec->token))) {
    snprintf(err, errlen, "out of memory");
    return DPOD_ENOMEM;
  }
  grpc_server_credentials *creds;
  if (sec && sec->tls_cert_pem && sec->tls_key_pem) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = sec->tls_key_pem, .cert_chain = sec->tls_cert_pem};
    creds = grpc_ssl_server_credentials_create(NULL, &pair, 1, 0, NULL);
  } else {
    creds = grpc_insecure_server_credentials_create();
  }
  if (!creds) {
    snprintf(err, errlen, "cannot use the TLS certificate and key");
    return DPOD_EIO;
  }
  int port = grpc_server_add_http2_port(s->server, target, creds);
  grpc_server_credentials_release(creds);
  if (port == 0) {
    snprintf(err, errlen, "cannot listen on %s", addr);
    return DPOD_EIO;
  }
  s->port = port > 0 && !rpc_unix_path(addr) ? port : 0;
  if (uv_async_init(s->loop, &s->async, rpc_on_async) != 0) {
    snprintf(err, errlen, "uv_async_init failed");
    return DPOD_EIO;
  }
  s->async.data = s;
  s->async_open = true;
  if (pthread_create(&s->thread, NULL, rpc_cq_thread, s) != 0) {
    snprintf(err, errlen, "cannot start the completion-queue thread");
    return DPOD_EIO;
  }
  s->thread_running = true;
  grpc_server_start(s->server);
  s->started = true;
  for (int i = -1; i < s->n_methods; i++) {
    if (rpc_request(s, i) != 0) {
      snprintf(err, errlen, "cannot request calls");
      return DPOD_ERPC;
    }
  }
  return 0;
}

int rpc_server_port(const rpc_server *s) { return s->port; }

void rpc_server_shutdown(rpc_server *s, void (*done)(void *arg), void *arg) {
  if (s->shutting_down) return;
  s->shutting_down = true;
  s->done = done;
  s->done_arg = arg;
  if (!s->started) {
    if (done) done(arg);
    return;
  }
  grpc_server_shutdown_and_notify(s->server, s->cq, &s->tag_shutdown);
}

void rpc_server_cancel_all(rpc_server *s) {
  if (s->started && s->shutting_down && !s->cq_shutdown_called) grpc_server_cancel_all_calls(s->server);
}

static void rpc_async_closed(uv_handle_t *h) {
  rpc_server *s = h->data;
  for (int i = 0; i < s->n_methods; i++) free(s->methods[i].path);
  pthread_mutex_destroy(&s->lock);
  free(s->events);
  free(s->work);
  free(s);
  grpc_shutdown();
}

void rpc_server_free(rpc_server *s) {
  if (!s) return;
  if (s->started && !s->finished) {
    log_error("rpc_server_free before its shutdown completed; leaking it");
    return;
  }
  if (!s->started) {
    /* Never started (setup failed): shut it down synchronously, nobody else drains the queue. */
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->tag_shutdown);
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
  }
  /* The server holds no more calls: shutdown completed and every tag was handled. */
  grpc_server_destroy(s->server);
  grpc_completion_queue_destroy(s->cq);
  if (s->dir_fd >= 0) close(s->dir_fd);
  free(s->token);
  while (s->calls) rpc_call_free(s->calls);
  if (s->async_open) {
    uv_close((uv_handle_t *)&s->async, rpc_async_closed);
  } else {
    for (int i = 0; i < s->n_methods; i++) free(s->methods[i].path);
    pthread_mutex_destroy(&s->lock);
    free(s->events);
    free(s->work);
    free(s);
    grpc_shutdown();
  }
}
