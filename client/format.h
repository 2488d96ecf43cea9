/* How dpoctl renders jobs and events: one-line summaries, human durations, and JSON.
 * Every fmt_* that takes (buf, len) writes a NUL-terminated string into buf and returns buf. */
#ifndef DPOCTL_FORMAT_H
#define DPOCTL_FORMAT_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "dpod.pb-c.h"

/* Milliseconds since the epoch, wall clock. */
int64_t fmt_now_ms(void);

/* "42s", "3m", "5h", "2d": how long ago, for tables. */
char *fmt_age(int64_t ms, char *buf, size_t len);
/* "12.3s", "4m05s", "2h03m": an elapsed time. */
char *fmt_duration(double seconds, char *buf, size_t len);
/* "2026-11-26 16:01:02" in local time; "-" for 0. */
char *fmt_time(int64_t unix_ms, char *buf, size_t len);
/* "512 B", "3.4 MiB". */
char *fmt_bytes(uint64_t n, char *buf, size_t len);

/* "step 3/20 loss 0.6931 acc 0.50 mse 1.0433/1.0436 margin 0.012 gnorm 1.23 lr 1.0e-05 12.3 samples/s";
 * fields the message lacks are left out. */
char *fmt_metrics(const Dpod__V1__StepMetrics *m, char *buf, size_t len);
/* "eval step 20: held-out acc 0.930 loss 0.2100 (128 pairs); samples: preferred mode 95.0%, ..." */
char *fmt_eval(const Dpod__V1__EvalMetrics *e, char *buf, size_t len);
/* "attempt 2 started", or "attempt 2 ended: no progress for 30 s (last step 12) (exit code 137); the job
 * goes on". */
char *fmt_attempt(const Dpod__V1__AttemptInfo *a, char *buf, size_t len);
/* One line for an event: "state running", "state failed: exit status 3", a metrics line, an eval line, or
 * "checkpoint step 10: /path (3.4 MiB)". */
char *fmt_event(const Dpod__V1__JobEvent *ev, char *buf, size_t len);
/* "[#######.............] " for step/total; "" when total is 0. */
char *fmt_progress_bar(uint32_t step, uint32_t total, int width, char *buf, size_t len);

/* A JSON object for any protobuf-c message: fields by proto name, enums by short lower-case name, only
 * fields that are present (or have a proto2 default). The caller frees it with cJSON_Delete(); NULL if
 * out of memory. */
cJSON *fmt_message_json(const ProtobufCMessage *msg);

#endif
