/* The bounds of train.loss_scale (dpod.v1.LossScaleSpec), part of job_spec_validate: in a file of their own,
 * beside the other train.* rules. The worker's scaler (workers/dpo/loss_scale.h) applies the same bounds. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dpod_error.h"
#include "job_spec.h"

#define LOSS_SCALE_DEFAULT_INIT 65536.0
#define LOSS_SCALE_DEFAULT_INTERVAL 2000u
#define LOSS_SCALE_INIT_MAX 4294967296.0     /* 2^32 */
#define LOSS_SCALE_INTERVAL_MAX 100000000u   /* train.steps' bound */

int job_spec_validate_loss_scale_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen) {
  const Dpod__V1__TrainSpec *t = spec->train;
  const Dpod__V1__LossScaleSpec *l = t ? t->loss_scale : NULL;
  if (!l) return 0;
  int e;
  /* A power of two: frexp's mantissa is exactly 1/2. */
  if (!isfinite(l->init_scale) || l->init_scale < 1 || l->init_scale > LOSS_SCALE_INIT_MAX ||
      frexp(l->init_scale, &e) != 0.5)
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "train.loss_scale.init_scale: must be a power of two from 1 to 4294967296 (2^32), so that "
                     "unscaling is exact (got %g)",
                     l->init_scale);
  if (l->growth_interval < 1 || l->growth_interval > LOSS_SCALE_INTERVAL_MAX)
    return dpod_errf(err, errlen, DPOD_EINVAL, "train.loss_scale.growth_interval: must be from 1 to %u (got %u)",
                     LOSS_SCALE_INTERVAL_MAX, l->growth_interval);
  /* Only fp16 scales its loss: a setting changed for another precision would be silently ignored. */
  const char *prec = t->precision ? t->precision : "fp32";
  if (strcmp(prec, "fp16") != 0 && (l->init_scale != LOSS_SCALE_DEFAULT_INIT || l->growth_interval != LOSS_SCALE_DEFAULT_INTERVAL))
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "train.loss_scale: only train.precision fp16 uses loss scaling (this job is %.8s); leave "
                     "init_scale and growth_interval at their defaults",
                     prec);
  return 0;
}
