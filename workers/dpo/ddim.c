/* The DDIM sampler. See ddim.h for the semantics; the step is diffusers' DDIMScheduler.step with eta 0:
 *
 *   a_t = alphas_cumprod[t], a_prev = alphas_cumprod[t - T/N] (alphas_cumprod[0] past the start)
 *   epsilon: x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
 *   v:       x0 = sqrt(a_t) x - sqrt(1 - a_t) v,  eps = sqrt(a_t) v + sqrt(1 - a_t) x
 *   x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps
 *
 * computed in double per element. */
#include "ddim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"

ddim_params ddim_default_params(void) {
  ddim_params p = {.steps = 20, .steps_offset = 1, .guidance = 3.0};
  return p;
}

int ddim_timesteps(const dpo_schedule *s, const ddim_params *p, int64_t *out) {
  int T = s->num_train_timesteps;
  if (p->steps < 1 || p->steps > T || p->steps_offset < 0) return DPOD_EINVAL;
  int64_t ratio = T / p->steps;
  for (int i = 0; i < p->steps; i++) {
    int64_t t = (int64_t)(p->steps - 1 - i) * ratio + p->steps_offset;
    if (t >= T) return DPOD_EINVAL;
    out[i] = t;
  }
  return 0;
}

int ddim_sample(const dpo_schedule *s, const ddim_params *p, ddim_model_fn model, void *ctx, int n, size_t img,
                size_t emb, const float *ehs, const float *uncond, float *x, char *err, size_t errlen) {
  if (n <= 0 || img == 0 || emb == 0) {
    snprintf(err, errlen, "ddim: n, image and embedding sizes must be > 0");
    return DPOD_EINVAL;
  }
  int64_t *ts = malloc(sizeof(int64_t) * (size_t)(p->steps > 0 ? p->steps : 1));
  if (!ts) {
    snprintf(err, errlen, "ddim: out of memory");
    return DPOD_ENOMEM;
  }
  if (ddim_timesteps(s, p, ts) != 0) {
    snprintf(err, errlen, "ddim: %d steps with offset %d do not fit a %d-step schedule", p->steps, p->steps_offset,
             s->num_train_timesteps);
    free(ts);
    return DPOD_EINVAL;
  }
  const int cfg = uncond && p->guidance > 1.0;
  const int rows = cfg ? 2 * n : n;
  const size_t nimg = (size_t)n * img;
  int rc = DPOD_ENOMEM;
  float *xin = malloc(sizeof(float) * (size_t)rows * img), *tin = malloc(sizeof(float) * (size_t)rows);
  float *ein = malloc(sizeof(float) * (size_t)rows * emb), *out = malloc(sizeof(float) * (size_t)rows * img);
  if (!xin || !tin || !ein || !out) {
    snprintf(err, errlen, "ddim: out of memory");
    goto done;
  }
  if (cfg) {
    for (int i = 0; i < n; i++) memcpy(ein + (size_t)i * emb, uncond, sizeof(float) * emb);
    memcpy(ein + (size_t)n * emb, ehs, sizeof(float) * (size_t)n * emb);
  } else {
    memcpy(ein, ehs, sizeof(float) * (size_t)n * emb);
  }
  const int64_t ratio = s->num_train_timesteps / p->steps;
  for (int k = 0; k < p->steps; k++) {
    int64_t t = ts[k], prev = t - ratio;
    for (int r = 0; r < rows; r++) tin[r] = (float)t;
    memcpy(xin, x, sizeof(float) * nimg);
    if (cfg) memcpy(xin + nimg, x, sizeof(float) * nimg);
    if ((rc = model(ctx, rows, xin, tin, ein, out)) != 0) {
      snprintf(err, errlen, "ddim: the model failed at step %d of %d (t = %lld)", k + 1, p->steps, (long long)t);
      goto done;
    }
    const float *pred = cfg ? out + nimg : out;
    const double a = s->alphas_cumprod[t];
    const double a_prev = prev >= 0 ? s->alphas_cumprod[prev] : s->alphas_cumprod[0];
    const double sa = sqrt(a), sb = sqrt(1.0 - a), sap = sqrt(a_prev), sbp = sqrt(1.0 - a_prev);
    const double g = p->guidance;
    for (size_t j = 0; j < nimg; j++) {
      double o = pred[j];
      if (cfg) o = out[j] + g * (o - out[j]);
      double xt = x[j], x0, eps;
      if (s->prediction_type == DPO_PRED_V) {
        x0 = sa * xt - sb * o;
        eps = sa * o + sb * xt;
      } else {
        eps = o;
        x0 = (xt - sb * eps) / sa;
      }
      x[j] = (float)(sap * x0 + sbp * eps);
    }
  }
  rc = 0;
done:
  free(ts);
  free(xin);
  free(tin);
  free(ein);
  free(out);
  return rc;
}
