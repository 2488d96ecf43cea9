#include "schedule.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"

/* torch.linspace(start, end, n, dtype=float32): the first half counts up from start, the second half
 * down from end, with a float32 step, which is what diffusers' betas are built from. */
static void linspace_f32(float start, float end, int n, float *out) {
  if (n == 1) {
    out[0] = start;
    return;
  }
  float step = (end - start) / (float)(n - 1);
  int half = n / 2;
  for (int i = 0; i < n; i++)
    out[i] = i < half ? start + step * (float)i : end - step * (float)(n - 1 - i);
}

static double alpha_bar_cosine(double t) {
  double c = cos((t + 0.008) / 1.008 * M_PI / 2.0);
  return c * c;
}

static int schedule_build(dpo_schedule *s) {
  int n = s->num_train_timesteps;
  float *betas = malloc(sizeof(float) * (size_t)n);
  s->alphas_cumprod = malloc(sizeof(double) * (size_t)n);
  if (!betas || !s->alphas_cumprod) {
    free(betas);
    free(s->alphas_cumprod);
    s->alphas_cumprod = NULL;
    return DPOD_ENOMEM;
  }
  switch (s->beta_schedule) {
    case DPO_BETAS_LINEAR:
      linspace_f32((float)s->beta_start, (float)s->beta_end, n, betas);
      break;
    case DPO_BETAS_SCALED_LINEAR:
      linspace_f32((float)sqrt(s->beta_start), (float)sqrt(s->beta_end), n, betas);
      for (int i = 0; i < n; i++) betas[i] = betas[i] * betas[i];
      break;
    case DPO_BETAS_SQUAREDCOS_CAP_V2:
      for (int i = 0; i < n; i++) {
        double b = 1.0 - alpha_bar_cosine((double)(i + 1) / n) / alpha_bar_cosine((double)i / n);
        betas[i] = (float)(b < 0.999 ? b : 0.999);
      }
      break;
  }
  /* torch.cumprod over float32 accumulates in double on the CPU and stores float32. */
  double acc = 1.0;
  for (int i = 0; i < n; i++) {
    acc *= (double)(1.0f - betas[i]);
    s->alphas_cumprod[i] = (double)(float)acc;
  }
  free(betas);
  return 0;
}

int dpo_schedule_default(dpo_schedule *s) {
  memset(s, 0, sizeof *s);
  s->num_train_timesteps = 1000;
  s->beta_start = 0.00085;
  s->beta_end = 0.012;
  s->beta_schedule = DPO_BETAS_SCALED_LINEAR;
  s->prediction_type = DPO_PRED_EPSILON;
  return schedule_build(s);
}

static int json_number(const cJSON *root, const char *key, double *out, char *err, size_t errlen) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!v || cJSON_IsNull(v)) return 0;
  if (!cJSON_IsNumber(v)) {
    snprintf(err, errlen, "scheduler config: '%s' must be a number", key);
    return DPOD_EFORMAT;
  }
  *out = v->valuedouble;
  return 0;
}

int dpo_schedule_from_json(dpo_schedule *s, const char *json, char *err, size_t errlen) {
  int rc = dpo_schedule_default(s);
  if (rc) return rc;
  dpo_schedule_free(s);
  cJSON *root = cJSON_Parse(json);
  if (!root || !cJSON_IsObject(root)) {
    snprintf(err, errlen, "scheduler config: not a JSON object");
    rc = DPOD_EFORMAT;
    goto fail;
  }
  double steps = s->num_train_timesteps;
  if ((rc = json_number(root, "num_train_timesteps", &steps, err, errlen)) ||
      (rc = json_number(root, "beta_start", &s->beta_start, err, errlen)) ||
      (rc = json_number(root, "beta_end", &s->beta_end, err, errlen)))
    goto fail;
  if (steps < 2 || steps > 100000 || steps != floor(steps)) {
    snprintf(err, errlen, "scheduler config: num_train_timesteps must be an integer in [2, 100000]");
    rc = DPOD_EINVAL;
    goto fail;
  }
  s->num_train_timesteps = (int)steps;
  if (!(s->beta_start > 0 && s->beta_end > s->beta_start && s->beta_end < 1)) {
    snprintf(err, errlen, "scheduler config: need 0 < beta_start < beta_end < 1");
    rc = DPOD_EINVAL;
    goto fail;
  }
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "beta_schedule");
  if (v && !cJSON_IsNull(v)) {
    const char *name = cJSON_GetStringValue(v);
    if (name && strcmp(name, "linear") == 0) s->beta_schedule = DPO_BETAS_LINEAR;
    else if (name && strcmp(name, "scaled_linear") == 0) s->beta_schedule = DPO_BETAS_SCALED_LINEAR;
    else if (name && strcmp(name, "squaredcos_cap_v2") == 0) s->beta_schedule = DPO_BETAS_SQUAREDCOS_CAP_V2;
    else {
      snprintf(err, errlen, "scheduler config: beta_schedule '%s' is not supported (linear, scaled_linear, "
               "squaredcos_cap_v2)", name ? name : "?");
      rc = DPOD_EUNSUPPORTED;
      goto fail;
    }
  }
  v = cJSON_GetObjectItemCaseSensitive(root, "prediction_type");
  if (v && !cJSON_IsNull(v)) {
    const char *name = cJSON_GetStringValue(v);
    if (name && strcmp(name, "epsilon") == 0) s->prediction_type = DPO_PRED_EPSILON;
    else if (name && strcmp(name, "v_prediction") == 0) s->prediction_type = DPO_PRED_V;
    else {
      snprintf(err, errlen, "scheduler config: prediction_type '%s' is not supported (epsilon, v_prediction)",
               name ? name : "?");
      rc = DPOD_EUNSUPPORTED;
      goto fail;
    }
  }
  v = cJSON_GetObjectItemCaseSensitive(root, "trained_betas");
  if (v && !cJSON_IsNull(v)) {
    snprintf(err, errlen, "scheduler config: trained_betas is not supported");
    rc = DPOD_EUNSUPPORTED;
    goto fail;
  }
  v = cJSON_GetObjectItemCaseSensitive(root, "rescale_betas_zero_snr");
  if (v && cJSON_IsTrue(v)) {
    snprintf(err, errlen, "scheduler config: rescale_betas_zero_snr=true is not supported");
    rc = DPOD_EUNSUPPORTED;
    goto fail;
  }
  cJSON_Delete(root);
  return schedule_build(s);
fail:
  cJSON_Delete(root);
  return rc;
}

void dpo_schedule_free(dpo_schedule *s) {
  free(s->alphas_cumprod);
  s->alphas_cumprod = NULL;
}

void dpo_add_noise(const dpo_schedule *s, int n, size_t per_sample, const float *x0, const float *noise,
                   const int64_t *t, float *x_t, float *target) {
  for (int i = 0; i < n; i++) {
    /* diffusers does this arithmetic in float32: alphas_cumprod[t] ** 0.5. */
    float acp = (float)s->alphas_cumprod[t[i]];
    float sa = sqrtf(acp), so = sqrtf(1.0f - acp);
    const float *x = x0 + (size_t)i * per_sample, *e = noise + (size_t)i * per_sample;
    float *xt = x_t + (size_t)i * per_sample, *tg = target + (size_t)i * per_sample;
    for (size_t j = 0; j < per_sample; j++) {
      xt[j] = sa * x[j] + so * e[j];
      tg[j] = s->prediction_type == DPO_PRED_V ? sa * e[j] - so * x[j] : e[j];
    }
  }
}
