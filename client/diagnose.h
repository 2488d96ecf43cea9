/* diagnose: plain-word warnings from a job's step metrics, for `dpoctl watch` and `dpoctl get`.
 *
 * Three signatures of a run going wrong that the loss curve alone hides:
 *   DIAG_SATURATED  most pairs' sigmoid is saturated (StepMetrics.saturated_share: |inside| > 10, where
 *                   the pair's gradient has all but vanished) on average over the last `window` steps:
 *                   beta is likely too large.
 *   DIAG_HACKING    implicit accuracy has sat at 1 for the last `window` steps while the policy's own MSE
 *                   kept rising: the policy wins the preference by drifting off the data (the reward
 *                   hacking the synthetic task's mode distance also shows).
 *   DIAG_FLAT       the dpo loss has stayed at ln 2 (within `flat_tolerance`) for the last `flat_window`
 *                   steps: the policy is not moving away from the reference (beta or the learning rate
 *                   too small).
 *   DIAG_SKIPPING   with loss scaling (fp16), at least half of the last `window` steps were skipped on
 *                   inf/nan gradients (StepMetrics.skipped): the run is barely training.
 * Only steps carrying the fields a rule reads count (the sft objective has no sigmoid, no implicit
 * accuracy: no rule applies to it). Pure bookkeeping: fed one step at a time, it keeps the last
 * DIAG_HISTORY steps. */
#ifndef DPOD_DIAGNOSE_H
#define DPOD_DIAGNOSE_H

#include <stddef.h>
#include <stdint.h>

#include "dpod.pb-c.h"

#define DIAG_HISTORY 64

typedef enum {
  DIAG_SATURATED = 1 << 0,
  DIAG_HACKING = 1 << 1,
  DIAG_FLAT = 1 << 2,
  DIAG_SKIPPING = 1 << 3,
} diag_kind;
/* The last kind: loops over every kind run from 1 to this. */
#define DIAG_LAST DIAG_SKIPPING

typedef struct {
  unsigned window;          /* steps the saturation and reward-hacking rules look back over */
  double saturated_share;   /* the mean share above which "most pairs" are saturated */
  double acc_at_one;        /* implicit accuracy at or above this counts as 1 */
  double mse_rise;          /* relative rise of the policy MSE over the window that counts as rising */
  unsigned flat_window;     /* steps the loss must sit at ln 2 */
  double flat_tolerance;    /* |loss - ln 2| within this counts as at ln 2 */
} diag_params;

diag_params diag_default_params(void);

typedef struct {
  double loss, acc, policy_mse, saturated, loss_scale;
  int has_acc, has_saturated, skipped;
  uint32_t step;
} diag_step;

typedef struct {
  diag_params p;
  diag_step hist[DIAG_HISTORY];  /* a ring: the newest at (next - 1) */
  size_t next, count;
  unsigned active;               /* the warnings that hold after the newest step */
} diagnose;

/* Parameters are copied; p NULL: the defaults. Windows are clamped to DIAG_HISTORY. */
void diag_init(diagnose *d, const diag_params *p);

/* Adds one step (a step already seen, by number, is ignored) and returns the warnings that hold now but
 * did not after the previous step: what `watch` prints as it happens. */
unsigned diag_add(diagnose *d, const Dpod__V1__StepMetrics *m);

/* The warnings that hold after the newest step. */
unsigned diag_active(const diagnose *d);

/* One warning in words, with the numbers that triggered it, into buf. Returns buf. */
const char *diag_describe(const diagnose *d, diag_kind kind, char *buf, size_t len);

#endif
