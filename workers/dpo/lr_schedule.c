#include "lr_schedule.h"

double dpo_lr_at(double peak_lr, uint32_t warmup_steps, uint32_t step) {
  if (warmup_steps == 0 || step >= warmup_steps) return peak_lr;
  /* diffusers' get_constant_schedule_with_warmup: lr * step / warmup, with the scheduler stepped after
   * each optimizer step, so optimizer step k (1-based) uses (k - 1) / warmup. */
  return peak_lr * (double)(step - 1) / (double)warmup_steps;
}
