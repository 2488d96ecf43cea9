/* The learning rate at each optimizer step. */
#ifndef DPOD_LR_SCHEDULE_H
#define DPOD_LR_SCHEDULE_H

#include <stdint.h>

/* Learning rate at optimizer step `step` (1-based): constant with linear warmup over warmup_steps. */
double dpo_lr_at(double peak_lr, uint32_t warmup_steps, uint32_t step);

#endif
