/* logs: the Logs streams, a job's worker output read from its attempts' log files.
 *
 * Each attempt writes one log in the run directory (launch_log_path), every line prefixed with its rank
 * as the launcher writes it (launch_log_parse). A stream reads the files attempt after attempt, from an
 * offset, in chunks of 64 KiB read on libuv's thread pool (never on the loop thread: a jobs directory on
 * NFS may stall), and sends one LogLine at a time (one SEND_MESSAGE in flight). Following, it looks for
 * more output every 250 ms and ends, OK, once the job is in a terminal state and everything its last
 * attempt wrote has been sent. Nothing is kept in memory beyond the chunk being read: a client that
 * reconnects with the offset of the last line it got (after a dpod restart) continues where it was.
 *
 * Offsets are (attempt << 40) + the byte just past the line in that attempt's log. Everything runs on
 * the loop thread. */
#ifndef DPOD_LOGS_H
#define DPOD_LOGS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dpod.pb-c.h"
#include "job_store.h"
#include "launch.h"
#include "rpc_server.h"

#define LOGS_TAIL_MAX 100000u   /* the most lines a request's tail may ask for */
#define LOGS_LINE_MAX 8192u     /* longer lines are sent in pieces of this many bytes */
#define LOGS_OFFSET_BITS 40     /* an offset's low bits: the position in its attempt's log */
#define LOGS_STREAMS_MAX 256    /* streams open at once (each holds a 72 KiB buffer); more are refused */

/* Checks `req` against job `req->job_id` in `store` and starts streaming on `call`. Returns 0 (the
 * stream owns the call from now on), DPOD_ENOENT (no such job), DPOD_EINVAL (a rank, attempt, tail or
 * offset the job cannot have; err says which) or DPOD_ENOMEM (also when LOGS_STREAMS_MAX are open);
 * then the caller still has to end the call. `store` and `backend` are borrowed and must outlive the
 * call. */
int logs_start(uv_loop_t *loop, job_store *store, const launch_backend *backend, rpc_call *call,
               const Dpod__V1__LogsRequest *req, char *err, size_t errlen);

/* Streams not freed yet (a stream outlives its call while a read of its file is in flight): a loop
 * that is being torn down runs until this is 0 before it closes what is left. */
size_t logs_count(void);

/* Replaces every byte of `s` that is not part of valid UTF-8 by '?', in place (a protobuf string must
 * be UTF-8; a rank may print anything). */
void logs_fix_utf8(char *s, size_t len);

#endif
