/* Rank 0's line to the daemon: events are queued by the training loop and sent in batches by a
 * background thread (dpod.v1.WorkerReport/Report), so a slow or restarting daemon never stalls a step.
 *
 * Nothing a job reports is lost: unsent events are kept and retried in order; past a bound in memory
 * they go to the attempt's report journal in the run directory (proto/rpc/report_journal.h), which is
 * delivered first once dpod answers again, and whatever is still unsent at exit is left there for the
 * next dpod to read. The daemon stores a step reported twice once. A batch the daemon refuses for good
 * (a stale attempt, an event it finds impossible) is dropped and counted, so that it cannot block the
 * events behind it. Heartbeats (progress that is not a step) are sent but never journaled: only the
 * newest one matters. */
#ifndef DPOD_REPORTER_H
#define DPOD_REPORTER_H

#include <stddef.h>
#include <stdint.h>

#include "dpod.pb-c.h"

typedef struct reporter reporter;

typedef struct {
  const char *addr;          /* the daemon's report address */
  uint64_t job_id;
  uint32_t attempt;          /* carried by every report; the daemon refuses a stale one */
  const char *secret;        /* the per-job secret */
  const char *tls_ca;        /* CA file to check the daemon's certificate against; NULL: plain */
  const char *journal_path;  /* RUN_DIR/attempt-N.reports; NULL: no journal (events past the bound are dropped) */
  size_t queue_max;          /* events kept in memory before the journal takes them (0: the default, 4096) */
} reporter_params;

/* Starts the sender thread. Strings are copied. On success *out is owned by the caller and released with
 * reporter_stop(). */
int reporter_start(const reporter_params *p, reporter **out, char *err, size_t errlen);

/* Queues a copy of `ev`; never blocks on the network (it may append to the journal). */
int reporter_push(reporter *r, const Dpod__V1__WorkerEvent *ev);

/* The newest directive the daemon sent (DPOD__V1__DIRECTIVE__DIRECTIVE_NONE until then). */
Dpod__V1__Directive reporter_directive(reporter *r);

/* Waits until every queued event was delivered, or `timeout_ms` passed. Returns 0 or DPOD_ETIMEDOUT. */
int reporter_flush(reporter *r, int timeout_ms);

/* Events the daemon refused for good and were dropped, so far. */
size_t reporter_dropped(reporter *r);

/* Stops the thread (after a last attempt to send what is queued), leaves whatever is still unsent in
 * the journal, durably and in order, and frees everything. */
void reporter_stop(reporter *r);

#endif
