/* rpc_server: a gRPC C-core server whose handlers run on a libuv loop.
 *
 * Threading. grpc_completion_queue_next() blocks, so one thread of our own drains the completion queue
 * and does nothing else: it appends (tag, ok) to a queue under a mutex and wakes the loop with
 * uv_async_send(). Every tag is then handled on the loop thread, where all state lives; batches are
 * started from the loop thread only.
 *
 * Call lifecycle. Each call is an rpc_call with a counter of batches in flight. When a request
 * arrives the server starts RECV_CLOSE_ON_SERVER (which completes when the call is over, telling
 * whether the client cancelled) and hands the request bytes to the method's handler. The handler answers
 * with rpc_call_reply()/rpc_call_fail() (unary) or with rpc_call_send()... rpc_call_finish() (server
 * streaming; at most one SEND_MESSAGE in flight, a finish requested during a send is held back until the
 * send completes). The call is freed only when RECV_CLOSE has completed and no batch is in flight, so a
 * completion never finds its call gone; just before that, the call's done callback (if any) tells the
 * handler to forget it.
 *
 * Unknown methods are requested generically and answered UNIMPLEMENTED. */
#ifndef DPOD_RPC_SERVER_H
#define DPOD_RPC_SERVER_H

#include <grpc/grpc.h>
#include <grpc/slice.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;

/* A request for a registered method. `req` (the request message's bytes) is valid during the call only.
 * The handler must end the call (reply, fail or finish) now or later; the call stays valid at least
 * until then, or, for a call with a done callback, until that callback. */
typedef void (*rpc_handler)(rpc_call *call, const uint8_t *req, size_t len, void *arg);
/* A streamed message has been sent (ok=1) or could not be, because the call is over (ok=0). */
typedef void (*rpc_sent_cb)(rpc_call *call, int ok, void *data);
/* The call is over and about to be freed; forget it. */
typedef void (*rpc_done_cb)(rpc_call *call, void *data);

/* Creates a server bound to `loop` (grpc_init() is called here, grpc_shutdown() in rpc_server_free()).
 * Owned by the caller. */
int rpc_server_create(uv_loop_t *loop, rpc_server **out);
enum {
  /* Served without the bearer token: health (probes have none) and worker reports (which carry their
   * job's secret instead). */
  RPC_METHOD_NO_TOKEN = 1 << 0,
};

/* Registers a method by full path ("/dpod.v1.Coordinator/GetJob"). Before rpc_server_start() only. */
int rpc_server_add_method(rpc_server *s, const char *path, int flags, rpc_handler handler, void *arg);

/* Who may call, and over what. Strings are copied by rpc_server_start(). */
typedef struct {
  const char *tls_cert_pem; /* the server's certificate chain (PEM text); with tls_key_pem: TLS */
  const char *tls_key_pem;  /* its private key (PEM text) */
  const char *token;        /* every method without RPC_METHOD_NO_TOKEN needs `authorization: Bearer
                               TOKEN`, else UNAUTHENTICATED; NULL: no token asked */
} rpc_server_security;

/* Listens on `addr` ("unix:/path" or "host:port") as `sec` says (NULL: plain, no token), starts the
 * completion-queue thread and requests the first calls. Returns 0 or DPOD_EIO with err set. */
int rpc_server_start(rpc_server *s, const char *addr, const rpc_server_security *sec, char *err, size_t errlen);
/* The TCP port it listens on (the real one for an address with port 0); 0 on a unix socket. */
int rpc_server_port(const rpc_server *s);
/* Stops accepting calls; calls in progress go on (a WatchJob can still deliver a job's last events).
 * `done` runs on the loop thread once every call has ended and been freed and the completion-queue
 * thread has exited; then rpc_server_free() may be called. Calling it again does nothing. */
void rpc_server_shutdown(rpc_server *s, void (*done)(void *arg), void *arg);
/* After rpc_server_shutdown(): cancels every call still in progress, so that `done` follows soon. */
void rpc_server_cancel_all(rpc_server *s);
/* Frees a server that was never started or whose shutdown has completed. */
void rpc_server_free(rpc_server *s);

/* Unary: sends `resp` with status OK and ends the call. */
void rpc_call_reply(rpc_call *c, const ProtobufCMessage *resp);
/* Ends the call with a non-OK status and a message (printf-style). */
void rpc_call_fail(rpc_call *c, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Streaming: the callbacks and their data for this call (set them before the first send). */
void rpc_call_set_stream(rpc_call *c, rpc_sent_cb sent, rpc_done_cb done, void *data);
/* Sends one message of a stream. Returns 0 (the sent callback follows), DPOD_ESTATE while another send
 * is in flight or after the call was ended, or DPOD_ECANCELED when the client has gone. */
int rpc_call_send(rpc_call *c, const ProtobufCMessage *msg);
/* The same with a message packed beforehand (rpc_pack_slice): one event sent to many streams is packed
 * once. The call takes its own reference to the slice. */
int rpc_call_send_slice(rpc_call *c, grpc_slice msg);
/* Packs `msg` into a new slice, which the caller releases with grpc_slice_unref(). 0 or DPOD_ENOMEM. */
int rpc_pack_slice(const ProtobufCMessage *msg, grpc_slice *out);
/* Ends a stream with `code` (details may be NULL). If a send is in flight the status follows it. */
void rpc_call_finish(rpc_call *c, grpc_status_code code, const char *details);
/* Whether the client has cancelled or the call has been ended. */
int rpc_call_is_over(const rpc_call *c);
/* The method's full path; static storage or owned by the call. */
const char *rpc_call_method(const rpc_call *c);

#endif
