/* The DDPM training schedule (diffusers' DDPMScheduler): alphas_cumprod from a scheduler config, and
 * forward noising with its epsilon or v target. */
#ifndef DPOD_SCHEDULE_H
#define DPOD_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

typedef enum { DPO_BETAS_LINEAR, DPO_BETAS_SCALED_LINEAR, DPO_BETAS_SQUAREDCOS_CAP_V2 } dpo_beta_schedule;
typedef enum { DPO_PRED_EPSILON, DPO_PRED_V } dpo_prediction_type;

typedef struct {
  int num_train_timesteps;          /* 1000 */
  double beta_start, beta_end;      /* 0.00085, 0.012 for SD 1.5 */
  dpo_beta_schedule beta_schedule;
  dpo_prediction_type prediction_type;
  double *alphas_cumprod;           /* [num_train_timesteps], owned; computed in float64, then as diffusers
                                       stores them: float32 */
} dpo_schedule;

/* Stable Diffusion 1.5's schedule: scaled_linear 0.00085..0.012, 1000 steps, epsilon. */
int dpo_schedule_default(dpo_schedule *s);
/* From the text of a diffusers scheduler_config.json. Unsupported values (beta_schedule "sigmoid",
 * prediction_type "sample", trained_betas, ...) are refused by name. */
int dpo_schedule_from_json(dpo_schedule *s, const char *json, char *err, size_t errlen);
void dpo_schedule_free(dpo_schedule *s);

/* x_t = sqrt(acp[t]) x0 + sqrt(1 - acp[t]) noise, per sample; target = noise (epsilon) or
 * sqrt(acp[t]) noise - sqrt(1 - acp[t]) x0 (v_prediction). Arrays are [n, per_sample]. */
void dpo_add_noise(const dpo_schedule *s, int n, size_t per_sample, const float *x0, const float *noise,
                   const int64_t *t, float *x_t, float *target);

#endif
