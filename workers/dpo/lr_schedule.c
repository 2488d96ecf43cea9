#include "lr_schedule.h"

#include <math.h>

const char *dpo_lr_kind_name(dpo_lr_kind kind) {
  switch (kind) {
    case DPO_LR_CONSTANT_WITH_WARMUP: return "constant_with_warmup";
    case DPO_LR_COSINE: return "cosine";
    case DPO_LR_LINEAR: return "linear";
  }
  return "?";
}

double dpo_lr_schedule_at(dpo_lr_kind kind, double peak_lr, uint32_t warmup_steps, uint32_t total_steps,
                          uint32_t step) {
  /* The scheduler is stepped after each optimizer step: step k runs at lr_lambda(k - 1). Step 0 does not
   * exist; it is read as step 1. */
  double s = step > 0 ? (double)step - 1.0 : 0.0, w = (double)warmup_steps, t = (double)total_steps;
  if (s < w) return peak_lr * (s / w);
  double f = 1.0;
  if (kind == DPO_LR_COSINE) {
    double progress = (s - w) / fmax(1.0, t - w);
    f = fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)));
  } else if (kind == DPO_LR_LINEAR) {
    f = fmax(0.0, (t - s) / fmax(1.0, t - w));
  }
  return peak_lr * f;
}

double dpo_lr_at(double peak_lr, uint32_t warmup_steps, uint32_t step) {
  return dpo_lr_schedule_at(DPO_LR_CONSTANT_WITH_WARMUP, peak_lr, warmup_steps, 0, step);
}
