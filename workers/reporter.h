/* Rank 0's line to the daemon: events are queued by the training loop and sent in batches by a
 * background thread (dpod.v1.WorkerReport/Report), so a slow or restarting daemon never stalls a step.
 * Unsent events are kept and retried in order; the daemon stores a step reported twice once. */
#ifndef DPOD_REPORTER_H
#define DPOD_REPORTER_H

#include <stdint.h>

#include "dpod.pb-c.h"

typedef struct reporter reporter;

/* Starts the sender thread. `secret` is copied. On success *out is owned by the caller and released with
 * reporter_stop(). */
int reporter_start(const char *addr, uint64_t job_id, const char *secret, reporter **out, char *err,
                   size_t errlen);

/* Queues a copy of `ev`; never blocks on the network. */
int reporter_push(reporter *r, const Dpod__V1__WorkerEvent *ev);

/* The newest directive the daemon sent (DPOD__V1__DIRECTIVE__DIRECTIVE_NONE until then). */
Dpod__V1__Directive reporter_directive(reporter *r);

/* Waits until every queued event was acknowledged, or `timeout_ms` passed. Returns 0 or DPOD_ETIMEDOUT. */
int reporter_flush(reporter *r, int timeout_ms);

/* Stops the thread (after a last attempt to send what is queued) and frees everything. */
void reporter_stop(reporter *r);

#endif
