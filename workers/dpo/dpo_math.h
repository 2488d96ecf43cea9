/* The Diffusion-DPO arithmetic that needs no autograd: the DDPM noise schedule, forward noising and
 * targets, a seedable counter-free RNG, and the loss with its gradient with respect to the per-sample
 * MSEs. The UNet (in the shim) turns those gradients into parameter gradients, so the loss is written
 * once, here, in double precision, and tested against the reference fixtures. */
#ifndef DPOD_DPO_MATH_H
#define DPOD_DPO_MATH_H

#include <stddef.h>
#include <stdint.h>

/* ---- RNG: xoshiro256** seeded through splitmix64; its whole state is 32 bytes, so checkpoints can
 * store it and a resumed run draws exactly the numbers an uninterrupted one would. */
typedef struct {
  uint64_t s[4];
  int has_spare;     /* Box-Muller produces normals in pairs */
  double spare;
} dpo_rng;

void dpo_rng_seed(dpo_rng *r, uint64_t seed, uint64_t stream);
uint64_t dpo_rng_u64(dpo_rng *r);
double dpo_rng_uniform(dpo_rng *r);               /* [0, 1) */
uint32_t dpo_rng_below(dpo_rng *r, uint32_t n);   /* [0, n), unbiased */
double dpo_rng_normal(dpo_rng *r);                /* N(0, 1) */
void dpo_rng_fill_normal(dpo_rng *r, float *out, size_t n);

/* ---- The DDPM training schedule (diffusers DDPMScheduler). */
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

/* ---- The loss. The batch is laid out as the reference script builds it: winners first, then losers,
 * so model_mse and ref_mse are [2n] with pair i at i (winner) and n + i (loser). */
typedef struct {
  double loss_sum;          /* sum over pairs of -logsigmoid(inside) (dpo) or of winner MSE (sft) */
  double acc_sum;           /* pairs with inside > 0 (a tie counts as wrong) */
  double margin_sum;        /* sum of inside terms */
  double policy_mse_sum;    /* sum over all 2n samples of the policy's MSE */
  double ref_mse_sum;       /* same for the reference */
  double pairs;             /* n */
  double samples;           /* images the MSE sums cover: 2n (dpo) or n (sft) */
} dpo_loss_sums;

/* DPO: inside_i = -beta/2 * ((mw - ml) - (rw - rl)), loss = mean_i -logsigmoid(inside_i).
 * Accumulates into *sums (so micro-batches and ranks can be added up), writes inside [n] if non-NULL and
 * grad_model_mse [2n] = d(grad_scale * sum_i -logsigmoid(inside_i)) / d model_mse if non-NULL.
 * With grad_scale = 1 / (pairs in the global batch) the gradients summed over micro-batches and ranks are
 * exactly those of the mean loss over the global batch. */
void dpo_loss(int n, const float *model_mse, const float *ref_mse, double beta, double grad_scale,
              dpo_loss_sums *sums, float *inside, float *grad_model_mse);

/* SFT baseline: the plain denoising loss on winners only; model_mse is [n] (winners only) and ref_mse may
 * be NULL. grad_model_mse [n] = grad_scale. */
void sft_loss(int n, const float *model_mse, const float *ref_mse, double grad_scale, dpo_loss_sums *sums,
              float *grad_model_mse);

/* Learning rate at optimizer step `step` (1-based): constant with linear warmup over warmup_steps. */
double dpo_lr_at(double peak_lr, uint32_t warmup_steps, uint32_t step);

#endif
