/* Rendering for dpoctl: kept apart from the command logic so that what a user reads lives in one place. */
#include "format.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "job_spec.h"
#include "pb_walk.h"

int64_t fmt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *fmt_age(int64_t ms, char *buf, size_t len) {
  int64_t s = ms / 1000;
  if (s < 0) s = 0;
  if (s < 120)
    snprintf(buf, len, "%" PRId64 "s", s);
  else if (s < 2 * 3600)
    snprintf(buf, len, "%" PRId64 "m", s / 60);
  else if (s < 2 * 86400)
    snprintf(buf, len, "%" PRId64 "h", s / 3600);
  else
    snprintf(buf, len, "%" PRId64 "d", s / 86400);
  return buf;
}

char *fmt_duration(double seconds, char *buf, size_t len) {
  if (!(seconds >= 0)) seconds = 0;
  if (seconds < 60) {
    snprintf(buf, len, "%.1fs", seconds);
  } else if (seconds < 3600) {
    long s = (long)seconds;
    snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
  } else {
    long m = (long)(seconds / 60);
    snprintf(buf, len, "%ldh%02ldm", m / 60, m % 60);
  }
  return buf;
}

char *fmt_time(int64_t unix_ms, char *buf, size_t len) {
  if (unix_ms <= 0) {
    snprintf(buf, len, "-");
    return buf;
  }
  time_t t = (time_t)(unix_ms / 1000);
  struct tm tm;
  localtime_r(&t, &tm);
  strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

char *fmt_bytes(uint64_t n, char *buf, size_t len) {
  static const char *units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (n < 1024) {
    snprintf(buf, len, "%" PRIu64 " B", n);
    return buf;
  }
  double v = (double)n / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) v /= 1024, u++;
  snprintf(buf, len, "%.1f %s", v, units[u]);
  return buf;
}

/* Appends printf output at buf[*n], never past len. */
static void fmt_cat(char *buf, size_t len, size_t *n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void fmt_cat(char *buf, size_t len, size_t *n, const char *fmt, ...) {
  if (*n >= len) return;
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(buf + *n, len - *n, fmt, ap);
  va_end(ap);
  if (k > 0) *n = *n + (size_t)k < len ? *n + (size_t)k : len - 1;
}

char *fmt_metrics(const Dpod__V1__StepMetrics *m, char *buf, size_t len) {
  size_t n = 0;
  buf[0] = '\0';
  if (m->total_steps)
    fmt_cat(buf, len, &n, "step %u/%u", m->step, m->total_steps);
  else
    fmt_cat(buf, len, &n, "step %u", m->step);
  if (m->has_loss) fmt_cat(buf, len, &n, " loss %.4f", m->loss);
  if (m->has_implicit_acc) fmt_cat(buf, len, &n, " acc %.2f", m->implicit_acc);
  if (m->has_policy_mse && m->has_ref_mse)
    fmt_cat(buf, len, &n, " mse %.4f/%.4f", m->policy_mse, m->ref_mse);
  else if (m->has_policy_mse)
    fmt_cat(buf, len, &n, " mse %.4f", m->policy_mse);
  if (m->has_reward_margin) fmt_cat(buf, len, &n, " margin %.3g", m->reward_margin);
  if (m->has_grad_norm) fmt_cat(buf, len, &n, " gnorm %.3g", m->grad_norm);
  if (m->has_learning_rate) fmt_cat(buf, len, &n, " lr %.1e", m->learning_rate);
  if (m->has_samples_per_sec) fmt_cat(buf, len, &n, " %.1f samples/s", m->samples_per_sec);
  if (m->has_loss_scale) fmt_cat(buf, len, &n, " scale %g", m->loss_scale);
  if (m->has_skipped && m->skipped) fmt_cat(buf, len, &n, " skipped (inf/nan gradients)");
  return buf;
}

char *fmt_eval(const Dpod__V1__EvalMetrics *e, char *buf, size_t len) {
  size_t n = 0;
  buf[0] = '\0';
  fmt_cat(buf, len, &n, "eval step %u:", e->step);
  if (e->has_implicit_acc) fmt_cat(buf, len, &n, " held-out acc %.3f", e->implicit_acc);
  if (e->has_loss) fmt_cat(buf, len, &n, " loss %.4f", e->loss);
  if (e->has_pairs) fmt_cat(buf, len, &n, " (%u pairs)", e->pairs);
  if (e->has_preferred_mode_rate)
    fmt_cat(buf, len, &n, "%s samples: preferred mode %.1f%%, distance to modes %.3f (%u samples)",
            e->has_implicit_acc || e->has_loss || e->has_pairs ? ";" : "", 100.0 * e->preferred_mode_rate, e->mode_distance, e->samples);
  return buf;
}

char *fmt_attempt(const Dpod__V1__AttemptInfo *a, char *buf, size_t len) {
  if (!a->has_ended_unix_ms) {
    snprintf(buf, len, "attempt %u started", a->attempt);
  } else {
    snprintf(buf, len, "attempt %u ended: %s (exit code %d)%s", a->attempt, a->reason && *a->reason ? a->reason : "?",
             a->exit_code, a->will_retry ? "; the job goes on" : "");
  }
  return buf;
}

char *fmt_event(const Dpod__V1__JobEvent *ev, char *buf, size_t len) {
  char tmp[64];
  switch (ev->event_case) {
    case DPOD__V1__JOB_EVENT__EVENT_STATE: {
      const Dpod__V1__StateChange *s = ev->state;
      if (s->reason && *s->reason)
        snprintf(buf, len, "state %s: %s", job_state_name(s->state), s->reason);
      else
        snprintf(buf, len, "state %s", job_state_name(s->state));
      break;
    }
    case DPOD__V1__JOB_EVENT__EVENT_METRICS: fmt_metrics(ev->metrics, buf, len); break;
    case DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT: {
      const Dpod__V1__CheckpointInfo *c = ev->checkpoint;
      if (c->has_size_bytes)
        snprintf(buf, len, "checkpoint step %u: %s (%s)", c->step, c->path ? c->path : "?",
                 fmt_bytes(c->size_bytes, tmp, sizeof tmp));
      else
        snprintf(buf, len, "checkpoint step %u: %s", c->step, c->path ? c->path : "?");
      break;
    }
    case DPOD__V1__JOB_EVENT__EVENT_EVAL: fmt_eval(ev->eval, buf, len); break;
    case DPOD__V1__JOB_EVENT__EVENT_ATTEMPT: fmt_attempt(ev->attempt, buf, len); break;
    case DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT_REMOVED:
      snprintf(buf, len, "checkpoint step %u removed (keep_last)", ev->checkpoint_removed->step);
      break;
    default: snprintf(buf, len, "event %" PRIu64 " (unknown kind)", ev->seq); break;
  }
  return buf;
}

char *fmt_progress_bar(uint32_t step, uint32_t total, int width, char *buf, size_t len) {
  if (!total || width <= 0 || (size_t)width + 4 > len) {
    if (len) buf[0] = '\0';
    return buf;
  }
  int done = (int)((uint64_t)(step > total ? total : step) * (uint64_t)width / total);
  size_t n = 0;
  buf[n++] = '[';
  for (int i = 0; i < width; i++) buf[n++] = i < done ? '#' : '.';
  buf[n++] = ']';
  buf[n++] = ' ';
  buf[n] = '\0';
  return buf;
}

char *fmt_clock(double seconds, char *buf, size_t len) {
  if (!(seconds >= 0) || seconds > 1e9) {
    snprintf(buf, len, "?");
    return buf;
  }
  long s = (long)seconds;
  if (s < 3600)
    snprintf(buf, len, "%02ld:%02ld", s / 60, s % 60);
  else
    snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

char *fmt_rate(double steps_per_s, char *buf, size_t len) {
  if (!(steps_per_s > 0))
    snprintf(buf, len, "? step/s");
  else if (steps_per_s < 1)
    snprintf(buf, len, "%.2f s/step", 1 / steps_per_s);
  else
    snprintf(buf, len, "%.2f step/s", steps_per_s);
  return buf;
}

void fmt_rate_meter_add(fmt_rate_meter *r, uint32_t step, int64_t t_ms) {
  if (!r->started || step < r->step) {
    r->started = 1;
    r->step0 = r->step = step;
    r->t0_ms = r->t_ms = t_ms;
    return;
  }
  r->step = step;
  r->t_ms = t_ms;
}

double fmt_rate_meter_rate(const fmt_rate_meter *r) {
  if (!r->started || r->t_ms <= r->t0_ms || r->step <= r->step0) return 0;
  return (double)(r->step - r->step0) * 1000.0 / (double)(r->t_ms - r->t0_ms);
}

char *fmt_progress_line(const fmt_progress *p, int columns, char *buf, size_t len) {
  char head[48], tail[160], bar[40] = "", elapsed[32], eta[32], rate[32];
  size_t n = 0;
  if (p->total)
    snprintf(head, sizeof head, "step %u/%u ", p->step, p->total);
  else
    snprintf(head, sizeof head, "step %u ", p->step);
  double left = p->total && p->steps_per_s > 0 ? (p->step >= p->total ? 0 : (p->total - p->step) / p->steps_per_s) : -1;
  tail[0] = '\0';
  if (p->total)
    fmt_cat(tail, sizeof tail, &n, "%3u%% ", (unsigned)((uint64_t)(p->step > p->total ? p->total : p->step) * 100 / p->total));
  fmt_cat(tail, sizeof tail, &n, "%s<%s %s", fmt_clock(p->elapsed_s, elapsed, sizeof elapsed),
          fmt_clock(left, eta, sizeof eta), fmt_rate(p->steps_per_s, rate, sizeof rate));
  if (p->has_loss) fmt_cat(tail, sizeof tail, &n, " loss %.4f", p->loss);
  if (p->has_acc) fmt_cat(tail, sizeof tail, &n, " acc %.2f", p->acc);
  int room = columns - 1 - (int)strlen(head) - (int)strlen(tail) - 3; /* "[" "] " */
  if (room > 30) room = 30;
  if (p->total && room >= 5) fmt_progress_bar(p->step, p->total, room, bar, sizeof bar);
  snprintf(buf, len, "%s%s%s", head, bar, tail);
  if (columns > 1 && strlen(buf) > (size_t)columns - 1) buf[columns - 1] = '\0';
  return buf;
}

/* ----------------------------------------------------------------------------------------------- */
/* CSV by descriptor. */

static int fmt_csv_column(const ProtobufCFieldDescriptor *f) {
  return f->label != PROTOBUF_C_LABEL_REPEATED && f->type != PROTOBUF_C_TYPE_MESSAGE &&
         f->type != PROTOBUF_C_TYPE_BYTES && f->type != PROTOBUF_C_TYPE_STRING;
}

char *fmt_csv_header(const ProtobufCMessageDescriptor *d, char *buf, size_t len) {
  size_t n = 0;
  buf[0] = '\0';
  fmt_cat(buf, len, &n, "time_unix_ms");
  for (unsigned i = 0; i < d->n_fields; i++)
    if (fmt_csv_column(&d->fields[i])) fmt_cat(buf, len, &n, ",%s", d->fields[i].name);
  return buf;
}

char *fmt_csv_row(const ProtobufCMessage *msg, int64_t time_unix_ms, char *buf, size_t len) {
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  size_t n = 0;
  char v[64];
  buf[0] = '\0';
  fmt_cat(buf, len, &n, "%" PRId64, time_unix_ms);
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (!fmt_csv_column(f)) continue;
    if (!pb_is_present(msg, f) || pb_format_scalar(f, pb_member(msg, f), v, sizeof v) != 0) v[0] = '\0';
    fmt_cat(buf, len, &n, ",%s", v);
  }
  return buf;
}
