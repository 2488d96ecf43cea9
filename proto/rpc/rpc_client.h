/* A small blocking gRPC client over the gRPC C core and protobuf-c, used by dpoctl and by rank 0 of
 * dpo-worker. Each call runs on its own completion queue, so a client may be used from one thread at a
 * time per call; calls on one rpc_client from several threads are safe.
 *
 * Errors: functions return 0 or a negative dpod_status; `err` (may be NULL) receives a message naming
 * the method, the gRPC status code name and the server's details. */
#ifndef DPOD_RPC_CLIENT_H
#define DPOD_RPC_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct rpc_client rpc_client;
typedef struct rpc_stream rpc_stream;

/* How a client proves itself and checks the server. Strings are copied by rpc_client_open_with(). */
typedef struct {
  const char *tls_ca;  /* PEM file of the CA that signs dpod's certificate: TLS when set, else plain */
  const char *token;   /* sent as `authorization: Bearer TOKEN` with every call; NULL: none */
} rpc_client_params;

rpc_client_params rpc_client_default_params(void);

/* Opens a channel to `addr` ("unix:/path", "host:port"), plain. Calls grpc_init() once per process.
 * The returned client is owned by the caller and released with rpc_client_close(). */
int rpc_client_open(const char *addr, rpc_client **out, char *err, size_t errlen);
/* The same with TLS and a token as `p` says (NULL: as rpc_client_open). A CA file that cannot be read
 * is DPOD_EIO with err naming it. */
int rpc_client_open_with(const char *addr, const rpc_client_params *p, rpc_client **out, char *err, size_t errlen);
void rpc_client_close(rpc_client *c);

/* The gRPC status code of the last failed call on this thread (GRPC_STATUS_*), or 0. */
int rpc_last_grpc_status(void);

/* Unary call. `method` is the full path ("/dpod.v1.Coordinator/GetJob"). `timeout_ms` <= 0 means none.
 * On success *resp is a message unpacked with `resp_desc`; the caller frees it with
 * protobuf_c_message_free_unpacked(*resp, NULL). */
int rpc_unary(rpc_client *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, int timeout_ms,
              char *err, size_t errlen);

/* Server-streaming call: sends `req`, then rpc_stream_next() yields the messages one at a time. */
int rpc_stream_open(rpc_client *c, const char *method, const ProtobufCMessage *req, rpc_stream **out,
                    char *err, size_t errlen);
/* Returns 1 with *msg set (caller frees it with protobuf_c_message_free_unpacked), 0 when the server
 * ended the stream with OK, or a negative status (the stream failed: err says why).
 * `timeout_ms` > 0 bounds the wait for this message only; on timeout it returns DPOD_ETIMEDOUT and the
 * stream stays usable. */
int rpc_stream_next(rpc_stream *s, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg,
                    int timeout_ms, char *err, size_t errlen);
/* Cancels the call if it is still running and frees the stream. */
void rpc_stream_close(rpc_stream *s);

#endif
