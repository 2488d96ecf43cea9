/* The DDPM schedule, the RNG and the DPO loss. See dpo_math.h for the contracts. */
#include "dpo_math.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"

/* ---- RNG ------------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void dpo_rng_seed(dpo_rng *r, uint64_t seed, uint64_t stream) {
  /* Mixing the stream through splitmix first makes nearby (seed, stream) pairs unrelated. */
  uint64_t x = seed ^ (0xD1B54A32D192ED03ull * (stream + 1));
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
  r->has_spare = 0;
  r->spare = 0;
}

uint64_t dpo_rng_u64(dpo_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double dpo_rng_uniform(dpo_rng *r) { return (double)(dpo_rng_u64(r) >> 11) * 0x1.0p-53; }

uint32_t dpo_rng_below(dpo_rng *r, uint32_t n) {
  /* Lemire's multiply-shift with rejection: unbiased for every n. */
  uint64_t m = (uint64_t)(uint32_t)(dpo_rng_u64(r) >> 32) * n;
  uint32_t lo = (uint32_t)m;
  if (lo < n) {
    uint32_t threshold = -n % n;
    while (lo < threshold) {
      m = (uint64_t)(uint32_t)(dpo_rng_u64(r) >> 32) * n;
      lo = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

double dpo_rng_normal(dpo_rng *r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  double u1, u2;
  do u1 = dpo_rng_uniform(r);
  while (u1 <= 0.0);
  u2 = dpo_rng_uniform(r);
  double mag = sqrt(-2.0 * log(u1));
  r->spare = mag * sin(2.0 * M_PI * u2);
  r->has_spare = 1;
  return mag * cos(2.0 * M_PI * u2);
}

void dpo_rng_fill_normal(dpo_rng *r, float *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = (float)dpo_rng_normal(r);
}

/* ---- Schedule ------------------------------------------------------------------------------------- */

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

/* ---- Loss ----------------------------------------------------------------------------------------- */

/* -logsigmoid(x) = softplus(-x), written so that neither branch overflows. */
static double neg_logsigmoid(double x) { return x >= 0 ? log1p(exp(-x)) : -x + log1p(exp(x)); }
static double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

void dpo_loss(int n, const float *model_mse, const float *ref_mse, double beta, double grad_scale,
              dpo_loss_sums *sums, float *inside, float *grad_model_mse) {
  for (int i = 0; i < n; i++) {
    double mw = model_mse[i], ml = model_mse[n + i], rw = ref_mse[i], rl = ref_mse[n + i];
    double in = -0.5 * beta * ((mw - ml) - (rw - rl));
    sums->loss_sum += neg_logsigmoid(in);
    sums->acc_sum += in > 0 ? 1.0 : 0.0;
    sums->margin_sum += in;
    sums->policy_mse_sum += mw + ml;
    sums->ref_mse_sum += rw + rl;
    if (inside) inside[i] = (float)in;
    if (grad_model_mse) {
      /* d(-logsigmoid(in))/d(in) = -sigmoid(-in); d(in)/d(mw) = -beta/2, d(in)/d(ml) = +beta/2. */
      double g = grad_scale * sigmoid(-in) * 0.5 * beta;
      grad_model_mse[i] = (float)g;
      grad_model_mse[n + i] = (float)-g;
    }
  }
  sums->pairs += n;
  sums->samples += 2 * n;
}

void sft_loss(int n, const float *model_mse, const float *ref_mse, double grad_scale, dpo_loss_sums *sums,
              float *grad_model_mse) {
  for (int i = 0; i < n; i++) {
    sums->loss_sum += model_mse[i];
    sums->policy_mse_sum += model_mse[i];
    if (ref_mse) sums->ref_mse_sum += ref_mse[i];
    if (grad_model_mse) grad_model_mse[i] = (float)grad_scale;
  }
  sums->pairs += n;
  sums->samples += n;
}

double dpo_lr_at(double peak_lr, uint32_t warmup_steps, uint32_t step) {
  if (warmup_steps == 0 || step >= warmup_steps) return peak_lr;
  /* diffusers' get_constant_schedule_with_warmup: lr * step / warmup, with the scheduler stepped after
   * each optimizer step, so optimizer step k (1-based) uses (k - 1) / warmup. */
  return peak_lr * (double)(step - 1) / (double)warmup_steps;
}
