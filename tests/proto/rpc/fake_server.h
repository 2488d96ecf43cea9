/* A scripted stand-in for dpod's Coordinator and Health services, over the gRPC C core, so that the
 * client side (rpc_client, dpoctl) can be tested without the daemon. It serves one call at a time on
 * its own thread. What it answers depends on the job id:
 *
 *   GetJob:    404 -> NOT_FOUND; 800 -> answers after 500 ms (deadline tests); else a RUNNING job.
 *   WatchJob:  1 -> 7 events ending SUCCEEDED; 2 -> 4 events ending FAILED ("exit status 3");
 *              5 -> the same 7 events as job 1, but the first stream breaks (UNAVAILABLE) after three
 *                   events and later streams resend event after_seq again (a duplicate) before the rest;
 *              600 -> one event, 600 ms of silence, one more event, end;
 *              700 -> one event per 100 ms, 50 of them (for cancelling mid-stream);
 *              anything else -> NOT_FOUND.
 *   SubmitJob: job 42, QUEUED.   CancelJob: the job, CANCELLED.   Health/Check: SERVING.
 *   Other methods: UNIMPLEMENTED. */
#ifndef FAKE_SERVER_H
#define FAKE_SERVER_H

/* Starts serving on `addr` ("unix:/path"). Returns 0 or -1. */
int fake_server_start(const char *addr);
/* Stops and frees the server; calls in progress are cancelled. */
void fake_server_stop(void);

#endif
