/* fake_report ADDR JOB_ID PATTERN STEPS: what fake_worker.sh runs for a job named "metrics-PATTERN":
 * reports STEPS steps of made-up metrics to dpod as rank 0 would (WorkerReport/Report, authenticated by
 * $DPOD_JOB_SECRET and $DPOD_ATTEMPT), in one batch. The patterns are the signatures dpoctl warns about:
 * "saturated" (90% of pairs saturated), "hacking" (implicit accuracy 1, the policy's MSE rising), "flat"
 * (loss at ln 2), and "healthy" (none of them). Exits 0 once dpod took the report. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod.pb-c.h"
#include "rpc_client.h"

#define FAKE_REPORT_MAX_STEPS 256

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: fake_report ADDR JOB_ID PATTERN STEPS\n");
    return 2;
  }
  const char *pattern = argv[3], *secret = getenv("DPOD_JOB_SECRET"), *attempt = getenv("DPOD_ATTEMPT");
  int steps = atoi(argv[4]);
  if (!secret || steps < 1 || steps > FAKE_REPORT_MAX_STEPS) {
    fprintf(stderr, "fake_report: no $DPOD_JOB_SECRET, or STEPS not in 1..%d\n", FAKE_REPORT_MAX_STEPS);
    return 2;
  }
  static Dpod__V1__StepMetrics m[FAKE_REPORT_MAX_STEPS];
  static Dpod__V1__WorkerEvent ev[FAKE_REPORT_MAX_STEPS + 1];
  static Dpod__V1__WorkerEvent *pev[FAKE_REPORT_MAX_STEPS + 1];
  Dpod__V1__WorkerStarted started = DPOD__V1__WORKER_STARTED__INIT;
  started.has_total_steps = 1;
  started.total_steps = (uint32_t)steps;
  ev[0] = (Dpod__V1__WorkerEvent)DPOD__V1__WORKER_EVENT__INIT;
  ev[0].event_case = DPOD__V1__WORKER_EVENT__EVENT_STARTED;
  ev[0].started = &started;
  pev[0] = &ev[0];
  for (int i = 0; i < steps; i++) {
    Dpod__V1__StepMetrics *s = &m[i];
    *s = (Dpod__V1__StepMetrics)DPOD__V1__STEP_METRICS__INIT;
    s->has_step = s->has_total_steps = s->has_loss = s->has_implicit_acc = s->has_policy_mse = s->has_ref_mse = 1;
    s->has_saturated_share = s->has_drift = 1;
    s->step = (uint32_t)i + 1;
    s->total_steps = (uint32_t)steps;
    s->ref_mse = 0.10;
    s->loss = 0.6 - 0.005 * i;
    s->implicit_acc = 0.6;
    s->policy_mse = 0.10 - 0.0001 * i;
    s->saturated_share = 0.05;
    if (strcmp(pattern, "saturated") == 0) {
      s->saturated_share = 0.9;
      s->loss = 4.0;
      s->implicit_acc = 0.5;
    } else if (strcmp(pattern, "hacking") == 0) {
      s->implicit_acc = 1.0;
      s->loss = 0.001;
      s->policy_mse = 0.10 + 0.01 * i;
    } else if (strcmp(pattern, "flat") == 0) {
      s->loss = M_LN2;
      s->implicit_acc = 0.5;
      s->saturated_share = 0.0;
    } else if (strcmp(pattern, "healthy") != 0) {
      fprintf(stderr, "fake_report: unknown pattern '%s'\n", pattern);
      return 2;
    }
    s->drift = s->policy_mse - s->ref_mse;
    ev[i + 1] = (Dpod__V1__WorkerEvent)DPOD__V1__WORKER_EVENT__INIT;
    ev[i + 1].event_case = DPOD__V1__WORKER_EVENT__EVENT_METRICS;
    ev[i + 1].metrics = s;
    pev[i + 1] = &ev[i + 1];
  }
  Dpod__V1__ReportRequest req = DPOD__V1__REPORT_REQUEST__INIT;
  req.has_job_id = req.has_attempt = 1;
  req.job_id = strtoull(argv[2], NULL, 10);
  req.attempt = attempt ? (uint32_t)strtoul(attempt, NULL, 10) : 1;
  req.secret = (char *)secret;
  req.events = pev;
  req.n_events = (size_t)steps + 1;
  char err[512];
  rpc_client *c = NULL;
  ProtobufCMessage *resp = NULL;
  if (rpc_client_open(argv[1], &c, err, sizeof err) != 0 ||
      rpc_unary(c, "/dpod.v1.WorkerReport/Report", &req.base, &dpod__v1__report_response__descriptor, &resp, 10000, err,
                sizeof err) != 0) {
    fprintf(stderr, "fake_report: %s\n", err);
    if (c) rpc_client_close(c);
    return 1;
  }
  protobuf_c_message_free_unpacked(resp, NULL);
  rpc_client_close(c);
  return 0;
}
