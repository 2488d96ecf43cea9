/* How dpoctl renders jobs and events: one-line summaries, human durations, CSV (JSON and YAML:
 * proto/spec/pb_json.h).
 * Every fmt_* that takes (buf, len) writes a NUL-terminated string into buf and returns buf. */
#ifndef DPOCTL_FORMAT_H
#define DPOCTL_FORMAT_H

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

/* "00:07", "12:34", "1:02:03", as tqdm writes elapsed and remaining times; "?" when not known (< 0). */
char *fmt_clock(double seconds, char *buf, size_t len);
/* "3.67 step/s", or "4.20 s/step" below one step a second; "? step/s" when not known (<= 0). */
char *fmt_rate(double steps_per_s, char *buf, size_t len);

/* The speed of a job in steps per second, measured between the events' own times (so that a replayed
 * history shows the job's speed, not the replay's). Zero-initialize; a step below the last one (a new
 * attempt resuming from a checkpoint) starts the measurement again. */
typedef struct {
  int started;
  uint32_t step0, step;   /* the first and the latest step measured */
  int64_t t0_ms, t_ms;    /* their event times, ms since the epoch */
} fmt_rate_meter;

void fmt_rate_meter_add(fmt_rate_meter *r, uint32_t step, int64_t t_ms);
/* Steps per second since the measurement started; 0 until two steps at different times were seen. */
double fmt_rate_meter_rate(const fmt_rate_meter *r);

/* What the progress line shows. */
typedef struct {
  uint32_t step, total;   /* total 0: not known (no bar, percentage or ETA) */
  double elapsed_s;       /* since training started, s */
  double steps_per_s;     /* 0: not known yet */
  int has_loss, has_acc;
  double loss, acc;       /* the latest step's */
} fmt_progress;

/* The tqdm-like line a terminal redraws in place:
 *   "step 45/100 [##########............]  45% 00:12<00:15 3.67 step/s loss 0.6931 acc 0.50"
 * The bar takes what is left of `columns` (at most 30 characters, none below 5), and the line is cut to
 * columns - 1 characters so that it never wraps (a wrapped line cannot be redrawn with a carriage
 * return). */
char *fmt_progress_line(const fmt_progress *p, int columns, char *buf, size_t len);

/* CSV by descriptor, for `dpoctl metrics`: the header is "time_unix_ms" and the message's field names
 * (scalar fields only, in .proto order); a row is the time and each field as a job file writes it, empty
 * where the message lacks it. No field of these messages needs quoting (numbers only). */
char *fmt_csv_header(const ProtobufCMessageDescriptor *d, char *buf, size_t len);
char *fmt_csv_row(const ProtobufCMessage *msg, int64_t time_unix_ms, char *buf, size_t len);

#endif
