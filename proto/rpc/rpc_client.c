/* A small blocking gRPC client over the C core (1.51) and protobuf-c.
 *
 * Every call gets its own pluck completion queue, so calls never see each other's events and a client
 * can be shared between threads (the channel itself is thread-safe). The rule that keeps the core
 * happy: every batch started on a call is plucked before the call is unreffed and its queue destroyed.
 * Calls are fail-fast (no wait-for-ready): with no daemon listening they end at once with UNAVAILABLE,
 * which is what a CLI wants; callers that want to wait retry. */
#include "rpc_client.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <unistd.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "rpc_addr.h"

struct rpc_client {
  grpc_channel *channel;
  char *addr;
  grpc_metadata auth;    /* authorization: Bearer ...; used when has_auth */
  int has_auth;
  int dir_fd; /* the socket's directory, for a unix path too long to connect to directly; -1 if none */
};

struct rpc_stream {
  char *method;
  grpc_completion_queue *cq;
  grpc_call *call;
  grpc_metadata_array initial_md;
  grpc_metadata_array trailing_md;
  grpc_status_code status;
  grpc_slice details;
  const char *error_string;  /* gpr_malloc'd by the core */
  grpc_byte_buffer *recv_buf; /* written by the pending RECV_MESSAGE batch */
  int got_initial_md;         /* RECV_INITIAL_METADATA was part of an earlier batch */
  int recv_pending;           /* a RECV_MESSAGE batch is started and not yet plucked */
  int status_pending;         /* the RECV_STATUS_ON_CLIENT batch is started and not yet plucked */
  int finished;               /* the stream ended (status plucked); next() only reports it */
  int final_rc;
  char final_err[512];
};

/* Distinct addresses serve as tags. */
static char rpc_tag_send_, rpc_tag_recv_, rpc_tag_status_;
#define RPC_TAG_SEND ((void *)&rpc_tag_send_)
#define RPC_TAG_RECV ((void *)&rpc_tag_recv_)
#define RPC_TAG_STATUS ((void *)&rpc_tag_status_)

static _Thread_local int rpc_last_status_;
static pthread_once_t rpc_once_ = PTHREAD_ONCE_INIT;

static void rpc_init_once(void) { grpc_init(); }

int rpc_last_grpc_status(void) { return rpc_last_status_; }

#define rpc_errf(err, errlen, ...) (void)dpod_errf((err), (errlen), 0, __VA_ARGS__)

static const char *rpc_status_name(grpc_status_code code) {
  switch (code) {
    case GRPC_STATUS_OK: return "OK";
    case GRPC_STATUS_CANCELLED: return "CANCELLED";
    case GRPC_STATUS_UNKNOWN: return "UNKNOWN";
    case GRPC_STATUS_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case GRPC_STATUS_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case GRPC_STATUS_NOT_FOUND: return "NOT_FOUND";
    case GRPC_STATUS_ALREADY_EXISTS: return "ALREADY_EXISTS";
    case GRPC_STATUS_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case GRPC_STATUS_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case GRPC_STATUS_ABORTED: return "ABORTED";
    case GRPC_STATUS_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case GRPC_STATUS_UNIMPLEMENTED: return "UNIMPLEMENTED";
    case GRPC_STATUS_INTERNAL: return "INTERNAL";
    case GRPC_STATUS_UNAVAILABLE: return "UNAVAILABLE";
    case GRPC_STATUS_DATA_LOSS: return "DATA_LOSS";
    case GRPC_STATUS_UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN_STATUS";
  }
}

/* Maps a gRPC status onto ours, so callers can branch without knowing gRPC. */
static int rpc_status_to_dpod(grpc_status_code code) {
  switch (code) {
    case GRPC_STATUS_OK: return 0;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return DPOD_ETIMEDOUT;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE: return DPOD_EINVAL;
    case GRPC_STATUS_NOT_FOUND: return DPOD_ENOENT;
    case GRPC_STATUS_FAILED_PRECONDITION: return DPOD_ESTATE;
    case GRPC_STATUS_UNAUTHENTICATED:
    case GRPC_STATUS_PERMISSION_DENIED: return DPOD_EAUTH;
    case GRPC_STATUS_CANCELLED: return DPOD_ECANCELED;
    default: return DPOD_ERPC;
  }
}

/* Records a finished call's status; on failure writes "METHOD: CODE: details" into err. */
static int rpc_finish_status(const char *method, grpc_status_code code, grpc_slice details, char *err,
                             size_t errlen) {
  rpc_last_status_ = (int)code;
  if (code == GRPC_STATUS_OK) return 0;
  char *d = grpc_slice_to_c_string(details);
  rpc_errf(err, errlen, "%s: %s: %s", method, rpc_status_name(code), d && *d ? d : "(no details)");
  gpr_free(d);
  return rpc_status_to_dpod(code);
}

static gpr_timespec rpc_deadline(int timeout_ms) {
  if (timeout_ms <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
  return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

/* Packs a message into a new byte buffer (owned by the caller), or NULL when out of memory. */
static grpc_byte_buffer *rpc_pack(const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice slice = grpc_slice_malloc(n);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return bb;
}

/* Unpacks a received byte buffer; NULL if it is not a valid `desc`. */
static ProtobufCMessage *rpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc) {
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, bb)) return NULL;
  grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
  grpc_slice_unref(all);
  return m;
}

/* Blocks until the batch tagged `tag` completes. Returns its success flag, or -1 when `deadline` passed
 * first (the batch is then still pending). */
static int rpc_pluck(grpc_completion_queue *cq, void *tag, gpr_timespec deadline) {
  grpc_event ev = grpc_completion_queue_pluck(cq, tag, deadline, NULL);
  if (ev.type == GRPC_QUEUE_TIMEOUT) return -1;
  return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* The SEND_INITIAL_METADATA op of a call: the client's token, if it has one. */
static void rpc_set_auth(rpc_client *c, grpc_op *op) {
  op->op = GRPC_OP_SEND_INITIAL_METADATA;
  op->data.send_initial_metadata.count = c->has_auth ? 1 : 0;
  op->data.send_initial_metadata.metadata = c->has_auth ? &c->auth : NULL;
}

static void rpc_destroy_cq(grpc_completion_queue *cq) {
  grpc_completion_queue_shutdown(cq);
  /* Every tag has been plucked, so shutdown completes at once; wait for it as the core asks. */
  for (;;) {
    grpc_event ev = grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
  }
  grpc_completion_queue_destroy(cq);
}

rpc_client_params rpc_client_default_params(void) {
  rpc_client_params p = {0};
  return p;
}

int rpc_client_open(const char *addr, rpc_client **out, char *err, size_t errlen) {
  return rpc_client_open_with(addr, NULL, out, err, errlen);
}

/* TLS credentials trusting the CA in `path`, or NULL with err set. */
static grpc_channel_credentials *rpc_tls_credentials(const char *path, char *err, size_t errlen) {
  char *pem = NULL;
  char why[512];
  if (dpod_read_file(path, 1 << 20, &pem, NULL, why, sizeof why) != 0) {
    rpc_errf(err, errlen, "TLS CA file: %s", why);
    return NULL;
  }
  grpc_channel_credentials *creds = grpc_ssl_credentials_create(pem, NULL, NULL, NULL);
  free(pem);
  if (!creds) rpc_errf(err, errlen, "TLS CA file %s: not usable", path);
  return creds;
}

int rpc_client_open_with(const char *addr, const rpc_client_params *p, rpc_client **out, char *err, size_t errlen) {
  *out = NULL;
  if (!addr || !*addr) {
    rpc_errf(err, errlen, "rpc_client_open: empty address");
    return DPOD_EINVAL;
  }
  pthread_once(&rpc_once_, rpc_init_once);
  rpc_client *c = calloc(1, sizeof *c);
  if (!c) goto nomem;
  c->dir_fd = -1;
  c->addr = strdup(addr);
  if (!c->addr) goto nomem;
  char target[PATH_MAX + 64];
  int status = rpc_addr_for_socket(addr, target, sizeof target, &c->dir_fd, err, errlen);
  if (status != 0) {
    rpc_client_close(c);
    return status;
  }
  /* The daemon is local and restarts quickly: reconnect within a second or two instead of gRPC's default
   * backoff (which grows to two minutes), and keep our own subchannels so that a new client really makes
   * a new connection instead of sharing one that is backing off. */
  grpc_arg args[4];
  memset(args, 0, sizeof args);
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS;
  args[0].value.integer = 100;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
  args[1].value.integer = 200;
  args[2].type = GRPC_ARG_INTEGER;
  args[2].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
  args[2].value.integer = 2000;
  args[3].type = GRPC_ARG_INTEGER;
  args[3].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  args[3].value.integer = 1;
  grpc_channel_args chargs = {.num_args = 4, .args = args};
  grpc_channel_credentials *creds = p && p->tls_ca && *p->tls_ca ? rpc_tls_credentials(p->tls_ca, err, errlen)
                                                                  : grpc_insecure_credentials_create();
  if (!creds) {
    rpc_client_close(c);
    return DPOD_EIO;
  }
  c->channel = grpc_channel_create(target, creds, &chargs);
  grpc_channel_credentials_release(creds);
  if (c->channel && p && p->token && *p->token) {
    /* Metadata rather than call credentials: the core sends call credentials only over TLS, and a
     * loopback listener may be plain (--insecure). */
    size_t n = strlen(p->token);
    char *bearer = malloc(n + 8);
    if (!bearer) {
      rpc_client_close(c);
      goto nomem_closed;
    }
    memcpy(bearer, "Bearer ", 7);
    memcpy(bearer + 7, p->token, n + 1);
    c->auth.key = grpc_slice_from_static_string("authorization");
    c->auth.value = grpc_slice_from_copied_string(bearer);
    free(bearer);
    c->has_auth = 1;
  }
  if (!c->channel) {
    rpc_errf(err, errlen, "cannot create a channel to %s", addr);
    free(c->addr);
    free(c);
    return DPOD_ERPC;
  }
  *out = c;
  return 0;
nomem:
  if (c) free(c->addr);
  free(c);
nomem_closed:
  rpc_errf(err, errlen, "rpc_client_open: out of memory");
  return DPOD_ENOMEM;
}

void rpc_client_close(rpc_client *c) {
  if (!c) return;
  if (c->channel) grpc_channel_destroy(c->channel);
  if (c->has_auth) grpc_slice_unref(c->auth.value);
  if (c->dir_fd >= 0) close(c->dir_fd);
  free(c->addr);
  free(c);
}

int rpc_unary(rpc_client *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, int timeout_ms, char *err,
              size_t errlen) {
  *resp = NULL;
  rpc_last_status_ = 0;
  if (!c || !method || !req || !resp_desc) {
    rpc_errf(err, errlen, "rpc_unary: NULL argument");
    return DPOD_EINVAL;
  }
  int rc = 0;
  grpc_byte_buffer *send_buf = rpc_pack(req), *recv_buf = NULL;
  grpc_metadata_array initial_md, trailing_md;
  grpc_metadata_array_init(&initial_md);
  grpc_metadata_array_init(&trailing_md);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  const char *error_string = NULL;
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                             grpc_slice_from_static_string(method), NULL,
                                             rpc_deadline(timeout_ms), NULL);
  if (!call || !send_buf) {
    rpc_errf(err, errlen, "%s: cannot start the call", method);
    rc = DPOD_ERPC;
    goto fail;
  }

  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  rpc_set_auth(c, &ops[0]);
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send_buf;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv_buf;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  ops[5].data.recv_status_on_client.error_string = &error_string;
  grpc_call_error ce = grpc_call_start_batch(call, ops, 6, RPC_TAG_STATUS, NULL);
  if (ce != GRPC_CALL_OK) {
    rpc_errf(err, errlen, "%s: cannot start the call (grpc_call_error %d)", method, (int)ce);
    rc = DPOD_ERPC;
    goto fail;
  }
  /* The deadline is the call's own: the core ends the call with DEADLINE_EXCEEDED, so wait forever. */
  rpc_pluck(cq, RPC_TAG_STATUS, gpr_inf_future(GPR_CLOCK_REALTIME));

  rc = rpc_finish_status(method, status, details, err, errlen);
  if (rc) goto fail;
  if (!recv_buf) {
    rpc_errf(err, errlen, "%s: the server sent no response message", method);
    rc = DPOD_ERPC;
    goto fail;
  }
  *resp = rpc_unpack(recv_buf, resp_desc);
  if (!*resp) {
    rpc_errf(err, errlen, "%s: malformed %s in the response", method, resp_desc->name);
    rc = DPOD_EFORMAT;
    goto fail;
  }

fail:
  if (call) grpc_call_unref(call);
  rpc_destroy_cq(cq);
  if (send_buf) grpc_byte_buffer_destroy(send_buf);
  if (recv_buf) grpc_byte_buffer_destroy(recv_buf);
  grpc_metadata_array_destroy(&initial_md);
  grpc_metadata_array_destroy(&trailing_md);
  grpc_slice_unref(details);
  gpr_free((void *)error_string);
  return rc;
}

/* ----------------------------------------------------------------------------------------------- */
/* Server streaming. Three kinds of batch: the sends (plucked at once in open), one RECV_STATUS started
 * in open and plucked when the stream ends or is closed, and one RECV_MESSAGE at a time. */

static void rpc_stream_free(rpc_stream *s) {
  if (s->call) grpc_call_unref(s->call);
  if (s->cq) rpc_destroy_cq(s->cq);
  if (s->recv_buf) grpc_byte_buffer_destroy(s->recv_buf);
  grpc_metadata_array_destroy(&s->initial_md);
  grpc_metadata_array_destroy(&s->trailing_md);
  grpc_slice_unref(s->details);
  gpr_free((void *)s->error_string);
  free(s->method);
  free(s);
}

int rpc_stream_open(rpc_client *c, const char *method, const ProtobufCMessage *req, rpc_stream **out, char *err,
                    size_t errlen) {
  *out = NULL;
  rpc_last_status_ = 0;
  if (!c || !method || !req) {
    rpc_errf(err, errlen, "rpc_stream_open: NULL argument");
    return DPOD_EINVAL;
  }
  rpc_stream *s = calloc(1, sizeof *s);
  if (!s) {
    rpc_errf(err, errlen, "%s: out of memory", method);
    return DPOD_ENOMEM;
  }
  grpc_metadata_array_init(&s->initial_md);
  grpc_metadata_array_init(&s->trailing_md);
  s->details = grpc_empty_slice();
  s->status = GRPC_STATUS_UNKNOWN;
  int rc = 0;
  grpc_byte_buffer *send_buf = NULL;
  s->method = strdup(method);
  if (!s->method) {
    rpc_errf(err, errlen, "%s: out of memory", method);
    rc = DPOD_ENOMEM;
    goto fail;
  }
  s->cq = grpc_completion_queue_create_for_pluck(NULL);
  s->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq,
                                     grpc_slice_from_static_string(s->method), NULL,
                                     gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  send_buf = rpc_pack(req);
  if (!s->call || !send_buf) {
    rpc_errf(err, errlen, "%s: cannot start the call", method);
    rc = DPOD_ERPC;
    goto fail;
  }

  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
  ops[0].data.recv_status_on_client.status = &s->status;
  ops[0].data.recv_status_on_client.status_details = &s->details;
  ops[0].data.recv_status_on_client.error_string = &s->error_string;
  if (grpc_call_start_batch(s->call, ops, 1, RPC_TAG_STATUS, NULL) != GRPC_CALL_OK) {
    rpc_errf(err, errlen, "%s: cannot start the call", method);
    rc = DPOD_ERPC;
    goto fail;
  }
  s->status_pending = 1;

  memset(ops, 0, sizeof ops);
  rpc_set_auth(c, &ops[0]);
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send_buf;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  if (grpc_call_start_batch(s->call, ops, 3, RPC_TAG_SEND, NULL) != GRPC_CALL_OK) {
    rpc_errf(err, errlen, "%s: cannot start the call", method);
    rc = DPOD_ERPC;
    goto fail;
  }
  int ok = rpc_pluck(s->cq, RPC_TAG_SEND, gpr_inf_future(GPR_CLOCK_REALTIME));
  grpc_byte_buffer_destroy(send_buf);
  send_buf = NULL;
  if (!ok) {
    /* The sends fail when the call is already dead (no server); the status says why. */
    rpc_pluck(s->cq, RPC_TAG_STATUS, gpr_inf_future(GPR_CLOCK_REALTIME));
    s->status_pending = 0;
    rc = rpc_finish_status(method, s->status, s->details, err, errlen);
    if (!rc) {
      rpc_errf(err, errlen, "%s: the request could not be sent", method);
      rc = DPOD_ERPC;
    }
    goto fail;
  }
  *out = s;
  return 0;

fail:
  if (send_buf) grpc_byte_buffer_destroy(send_buf);
  if (s->status_pending) {
    grpc_call_cancel(s->call, NULL);
    rpc_pluck(s->cq, RPC_TAG_STATUS, gpr_inf_future(GPR_CLOCK_REALTIME));
  }
  rpc_stream_free(s);
  return rc;
}

int rpc_stream_next(rpc_stream *s, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg, int timeout_ms,
                    char *err, size_t errlen) {
  *msg = NULL;
  if (!s || !desc) {
    rpc_errf(err, errlen, "rpc_stream_next: NULL argument");
    return DPOD_EINVAL;
  }
  if (s->finished) {
    if (s->final_rc) rpc_errf(err, errlen, "%s", s->final_err);
    return s->final_rc;
  }
  if (!s->recv_pending) {
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (!s->got_initial_md) {
      ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
      ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &s->recv_buf;
    s->recv_buf = NULL;
    grpc_call_error ce = grpc_call_start_batch(s->call, ops, n, RPC_TAG_RECV, NULL);
    if (ce != GRPC_CALL_OK) {
      rpc_errf(err, errlen, "%s: cannot read from the stream (grpc_call_error %d)", s->method, (int)ce);
      return DPOD_ERPC;
    }
    s->got_initial_md = 1;
    s->recv_pending = 1;
  }
  int ok = rpc_pluck(s->cq, RPC_TAG_RECV, rpc_deadline(timeout_ms));
  if (ok < 0) {
    rpc_errf(err, errlen, "%s: no message within %d ms", s->method, timeout_ms);
    return DPOD_ETIMEDOUT;
  }
  s->recv_pending = 0;

  if (ok && s->recv_buf) {
    *msg = rpc_unpack(s->recv_buf, desc);
    grpc_byte_buffer_destroy(s->recv_buf);
    s->recv_buf = NULL;
    if (*msg) return 1;
    /* A message we cannot read: give up on the stream rather than skip an event. */
    grpc_call_cancel(s->call, NULL);
    rpc_pluck(s->cq, RPC_TAG_STATUS, gpr_inf_future(GPR_CLOCK_REALTIME));
    s->status_pending = 0;
    s->finished = 1;
    s->final_rc = DPOD_EFORMAT;
    snprintf(s->final_err, sizeof s->final_err, "%s: malformed %s in the stream", s->method, desc->name);
    rpc_errf(err, errlen, "%s", s->final_err);
    return s->final_rc;
  }

  /* No message: the stream is over; the status says whether it ended well. */
  if (s->recv_buf) {
    grpc_byte_buffer_destroy(s->recv_buf);
    s->recv_buf = NULL;
  }
  rpc_pluck(s->cq, RPC_TAG_STATUS, gpr_inf_future(GPR_CLOCK_REALTIME));
  s->status_pending = 0;
  s->finished = 1;
  s->final_rc = rpc_finish_status(s->method, s->status, s->details, s->final_err, sizeof s->final_err);
  if (s->final_rc) rpc_errf(err, errlen, "%s", s->final_err);
  return s->final_rc;
}

void rpc_stream_close(rpc_stream *s) {
  if (!s) return;
  if (s->recv_pending || s->status_pending) grpc_call_cancel(s->call, NULL);
  if (s->recv_pending) rpc_pluck(s->cq, RPC_TAG_RECV, gpr_inf_future(GPR_CLOCK_REALTIME));
  if (s->status_pending) rpc_pluck(s->cq, RPC_TAG_STATUS, gpr_inf_future(GPR_CLOCK_REALTIME));
  s->recv_pending = s->status_pending = 0;
  rpc_stream_free(s);
}
