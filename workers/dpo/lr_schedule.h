/* The learning rate at each optimizer step: diffusers' schedulers (optimization.py), stepped as the
 * reference scripts step them, once after each optimizer step, so optimizer step k (1-based) runs at the
 * schedule's value for k - 1. */
#ifndef DPOD_LR_SCHEDULE_H
#define DPOD_LR_SCHEDULE_H

#include <stdint.h>

typedef enum {
  DPO_LR_CONSTANT_WITH_WARMUP = 0, /* get_constant_schedule_with_warmup */
  DPO_LR_COSINE = 1,               /* get_cosine_schedule_with_warmup, num_cycles 0.5 */
  DPO_LR_LINEAR = 2                /* get_linear_schedule_with_warmup */
} dpo_lr_kind;

/* "constant_with_warmup", "cosine", "linear"; "?" otherwise. Static storage. */
const char *dpo_lr_kind_name(dpo_lr_kind kind);

/* Learning rate at optimizer step `step` (1-based) of a run of total_steps, with s = step - 1 and
 * W = warmup_steps: peak_lr * s / W while s < W, then
 *   constant: peak_lr
 *   cosine:   peak_lr * max(0, 0.5 * (1 + cos(pi * (s - W) / max(1, total - W))))
 *   linear:   peak_lr * max(0, (total - s) / max(1, total - W)). */
double dpo_lr_schedule_at(dpo_lr_kind kind, double peak_lr, uint32_t warmup_steps, uint32_t total_steps,
                          uint32_t step);

/* The constant schedule: dpo_lr_schedule_at(DPO_LR_CONSTANT_WITH_WARMUP, ...). */
double dpo_lr_at(double peak_lr, uint32_t warmup_steps, uint32_t step);

#endif
