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

/* A model without added conditioning behind the added-conditioning callback. */
typedef struct {
  ddim_model_fn fn;
  void *ctx;
} plain_model;

static int plain_model_call(void *ctx, int n, const float *x_t, const float *t, const float *ehs,
                            const float *text_embeds, const float *time_ids, float *out) {
  (void)text_embeds;
  (void)time_ids;
  const plain_model *pm = ctx;
  return pm->fn(pm->ctx, n, x_t, t, ehs, out);
}

int ddim_sample(const dpo_schedule *s, const ddim_params *p, ddim_model_fn model, void *ctx, int n, size_t img,
                size_t emb, const float *ehs, const float *uncond, float *x, char *err, size_t errlen) {
  plain_model pm = {.fn = model, .ctx = ctx};
  return ddim_sample_added(s, p, plain_model_call, &pm, n, img, emb, ehs, uncond, NULL, x, err, errlen);
}

int ddim_sample_added(const dpo_schedule *s, const ddim_params *p, ddim_model_added_fn model, void *ctx, int n,
                      size_t img, size_t emb, const float *ehs, const float *uncond, const ddim_added *added, float *x,
                      char *err, size_t errlen) {
  if (n <= 0 || img == 0 || emb == 0) {
    snprintf(err, errlen, "ddim: n, image and embedding sizes must be > 0");
    return DPOD_EINVAL;
  }
  if (added && (added->pooled == 0 || !added->text_embeds || !added->time_ids)) {
    snprintf(err, errlen, "ddim: the added conditioning needs pooled embeddings and time ids");
    return DPOD_EINVAL;
  }
  if (added && uncond && p->guidance > 1.0 && !added->uncond_text_embeds) {
    snprintf(err, errlen, "ddim: guidance with added conditioning needs the empty prompt's pooled embedding");
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
  /* The added conditioning in the rows' layout: [uncond; cond] like ein, time ids repeated. */
  const size_t P = added ? added->pooled : 0, NT = 6;
  float *pin = NULL, *tid = NULL;
  if (added && cfg) {
    pin = malloc(sizeof(float) * (size_t)rows * P);
    tid = malloc(sizeof(float) * (size_t)rows * NT);
  }
  if (!xin || !tin || !ein || !out || (added && cfg && (!pin || !tid))) {
    snprintf(err, errlen, "ddim: out of memory");
    goto done;
  }
  const float *pooled_rows = added ? added->text_embeds : NULL, *tid_rows = added ? added->time_ids : NULL;
  if (added && cfg) {
    for (int i = 0; i < n; i++) memcpy(pin + (size_t)i * P, added->uncond_text_embeds, sizeof(float) * P);
    memcpy(pin + (size_t)n * P, added->text_embeds, sizeof(float) * (size_t)n * P);
    memcpy(tid, added->time_ids, sizeof(float) * (size_t)n * NT);
    memcpy(tid + (size_t)n * NT, added->time_ids, sizeof(float) * (size_t)n * NT);
    pooled_rows = pin;
    tid_rows = tid;
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
    if ((rc = model(ctx, rows, xin, tin, ein, pooled_rows, tid_rows, out)) != 0) {
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
  free(pin);
  free(tid);
  return rc;
}
