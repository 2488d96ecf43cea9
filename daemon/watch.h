/* watch: the open WatchJob streams.
 *
 * A stream sends the event with seq == next_seq whenever it is idle and that event exists, so it is
 * gap-free and duplicate-free whatever order appends and sends happen in. It ends once it has sent every
 * event of a job that is in a terminal state: a terminal state followed by more events (the job was
 * restarted) does not end it. Everything runs on the loop thread. */
#ifndef DPOD_WATCH_H
#define DPOD_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include "job_store.h"
#include "rpc_server.h"

typedef struct watch_set watch_set;

/* The streams read events from `store` (borrowed). Owned by the caller: watch_set_free(), once the RPC
 * server has ended every call. */
int watch_set_create(job_store *store, watch_set **out);
void watch_set_free(watch_set *ws);

/* Streams job `job_id`'s events with seq > after_seq on `call`, then follows. Returns 0 (the stream owns
 * the call from now on) or DPOD_ENOMEM (the caller still has to end the call). */
int watch_start(watch_set *ws, rpc_call *call, uint64_t job_id, uint64_t after_seq);

/* Events were appended to job `job_id`: wake its streams. The signature of coord_set_event_hook(). */
void watch_notify(void *ws, uint64_t job_id);

/* Streams open now. */
size_t watch_count(const watch_set *ws);

#endif
