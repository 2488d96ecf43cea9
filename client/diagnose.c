#include "diagnose.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

diag_params diag_default_params(void) {
  diag_params p = {.window = 10,
                   .saturated_share = 0.5,
                   .acc_at_one = 0.999,
                   .mse_rise = 0.02,
                   .flat_window = 20,
                   .flat_tolerance = 1e-3};
  return p;
}

void diag_init(diagnose *d, const diag_params *p) {
  memset(d, 0, sizeof *d);
  d->p = p ? *p : diag_default_params();
  if (d->p.window == 0) d->p.window = 1;
  if (d->p.window > DIAG_HISTORY) d->p.window = DIAG_HISTORY;
  if (d->p.flat_window == 0) d->p.flat_window = 1;
  if (d->p.flat_window > DIAG_HISTORY) d->p.flat_window = DIAG_HISTORY;
}

/* The k-th newest step (0: the newest); k < count. */
static const diag_step *diag_back(const diagnose *d, size_t k) {
  return &d->hist[(d->next + DIAG_HISTORY - 1 - k) % DIAG_HISTORY];
}

/* The mean saturated share over the last `window` steps, or -1 if fewer of them carry it. */
static double diag_saturated_mean(const diagnose *d) {
  size_t w = d->p.window;
  if (d->count < w) return -1;
  double sum = 0;
  for (size_t k = 0; k < w; k++) {
    const diag_step *s = diag_back(d, k);
    if (!s->has_saturated) return -1;
    sum += s->saturated;
  }
  return sum / (double)w;
}

/* Accuracy at 1 over the whole window, and the policy MSE higher at its end than at its start by
 * mse_rise, having risen in most of its steps (one noisy step neither makes nor breaks it). */
static int diag_hacking(const diagnose *d) {
  size_t w = d->p.window;
  if (d->count < w || w < 2) return 0;
  size_t rises = 0;
  for (size_t k = 0; k < w; k++) {
    const diag_step *s = diag_back(d, k);
    if (!s->has_acc || !(s->acc >= d->p.acc_at_one)) return 0;
    if (k + 1 < w && s->policy_mse > diag_back(d, k + 1)->policy_mse) rises++;
  }
  double first = diag_back(d, w - 1)->policy_mse, last = diag_back(d, 0)->policy_mse;
  return last > first * (1.0 + d->p.mse_rise) && 2 * rises > w - 1;
}

static int diag_flat(const diagnose *d) {
  size_t w = d->p.flat_window;
  if (d->count < w) return 0;
  for (size_t k = 0; k < w; k++) {
    const diag_step *s = diag_back(d, k);
    if (!s->has_acc || !(fabs(s->loss - M_LN2) <= d->p.flat_tolerance)) return 0; /* has_acc: a dpo step */
  }
  return 1;
}

/* Steps skipped on inf/nan gradients among the last `window` (loss scaling), or 0 with fewer steps. */
static size_t diag_skipped(const diagnose *d) {
  size_t w = d->p.window, n = 0;
  if (d->count < w) return 0;
  for (size_t k = 0; k < w; k++) n += diag_back(d, k)->skipped ? 1 : 0;
  return n;
}

unsigned diag_active(const diagnose *d) { return d->active; }

unsigned diag_add(diagnose *d, const Dpod__V1__StepMetrics *m) {
  if (!m || !m->has_step || (d->count > 0 && m->step <= diag_back(d, 0)->step)) return 0;
  diag_step *s = &d->hist[d->next];
  *s = (diag_step){.loss = m->loss,
                   .acc = m->implicit_acc,
                   .policy_mse = m->policy_mse,
                   .saturated = m->saturated_share,
                   .has_acc = m->has_implicit_acc,
                   .has_saturated = m->has_saturated_share,
                   .loss_scale = m->has_loss_scale ? m->loss_scale : 0.0,
                   .skipped = m->has_skipped && m->skipped,
                   .step = m->step};
  d->next = (d->next + 1) % DIAG_HISTORY;
  if (d->count < DIAG_HISTORY) d->count++;
  unsigned now = 0;
  if (diag_saturated_mean(d) > d->p.saturated_share) now |= DIAG_SATURATED;
  if (diag_hacking(d)) now |= DIAG_HACKING;
  if (diag_flat(d)) now |= DIAG_FLAT;
  size_t skipped = diag_skipped(d);
  if (skipped > 0 && 2 * skipped >= d->p.window) now |= DIAG_SKIPPING;
  unsigned raised = now & ~d->active;
  d->active = now;
  return raised;
}

const char *diag_describe(const diagnose *d, diag_kind kind, char *buf, size_t len) {
  size_t w = d->p.window;
  buf[0] = '\0';
  if (d->count == 0) return buf;
  switch (kind) {
    case DIAG_SATURATED:
      snprintf(buf, len,
               "most pairs are saturated: over the last %zu steps %.0f%% of pairs on average had |inside| > 10, "
               "where the sigmoid is flat and they teach the policy next to nothing; train.beta is likely too large",
               w, 100.0 * fmax(diag_saturated_mean(d), 0.0));
      break;
    case DIAG_HACKING:
      snprintf(buf, len,
               "possible reward hacking: implicit accuracy has been 1 for the last %zu steps while the policy's own "
               "MSE rose from %.4g to %.4g; it may be winning the preferences by drifting off the data (watch the "
               "evaluation's mode distance; a lower learning rate or fewer steps may help)",
               w, d->count >= w ? diag_back(d, w - 1)->policy_mse : 0.0, diag_back(d, 0)->policy_mse);
      break;
    case DIAG_FLAT:
      snprintf(buf, len,
               "the loss has stayed at ln 2 (%.4f) for the last %u steps: the policy is not moving away from the "
               "reference; train.beta or train.learning_rate is likely too small",
               M_LN2, d->p.flat_window);
      break;
    case DIAG_SKIPPING:
      snprintf(buf, len,
               "%zu of the last %zu steps were skipped: their fp16 gradients held inf or nan even after the loss "
               "scale backed off (it is %g now); the run is barely training: try train.precision bf16, or a lower "
               "train.learning_rate",
               diag_skipped(d), w, diag_back(d, 0)->loss_scale);
      break;
  }
  return buf;
}
