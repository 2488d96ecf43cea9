/* DDIM sampling (eta = 0) with classifier-free guidance, in C over a model callback, so the same loop
 * runs on the UNet (unet_forward through the shim) and on analytic models in tests.
 *
 * Semantics are diffusers' DDIMScheduler with Stable Diffusion 1.5's settings: timestep_spacing
 * "leading", steps_offset 1, set_alpha_to_one false (the last step lands on alphas_cumprod[0], not 1),
 * clip_sample false, no thresholding, init_noise_sigma 1; the model's output is read as epsilon or v as
 * the schedule's prediction_type says. Guidance is applied to the raw model output, as the diffusers
 * pipeline does: out = out_uncond + s * (out_cond - out_uncond). */
#ifndef DPOD_DDIM_H
#define DPOD_DDIM_H

#include <stddef.h>
#include <stdint.h>

#include "schedule.h"

/* The model: x_t [n, C, H, W], t [n] (timesteps as floats), ehs [n, text_len, embed_dim];
 * writes out [n, C, H, W] (epsilon or v). Returns 0, or a negative status that stops the sampler. */
typedef int (*ddim_model_fn)(void *ctx, int n, const float *x_t, const float *t, const float *ehs, float *out);

typedef struct {
  int steps;          /* inference steps N (20) */
  int steps_offset;   /* added to every timestep (1, as SD 1.5's scheduler_config) */
  double guidance;    /* classifier-free guidance scale s (3); applied only when > 1 and an unconditional
                         embedding is given */
} ddim_params;

ddim_params ddim_default_params(void);

/* The N timesteps, first to last: t_i = (N - 1 - i) * (T / N) + steps_offset ("leading" spacing).
 * out [steps]. DPOD_EINVAL if steps < 1 or a timestep would fall outside [0, T). */
int ddim_timesteps(const dpo_schedule *s, const ddim_params *p, int64_t *out);

/* Samples n latents. x [n, img] holds x_T on entry (the caller draws it: N(0, I)) and x_0 on return.
 * ehs [n, emb] are the prompt embeddings, uncond [emb] the empty-prompt embedding or NULL (no guidance).
 * With guidance the model is called on batches of 2n: n unconditional rows first, then n conditional.
 * If the model fails, its status is returned, err says at which step, and x is left partly updated. */
int ddim_sample(const dpo_schedule *s, const ddim_params *p, ddim_model_fn model, void *ctx, int n, size_t img,
                size_t emb, const float *ehs, const float *uncond, float *x, char *err, size_t errlen);

/* SDXL's added conditioning (addition_embed_type "text_time"), per sample. With guidance the
 * unconditional rows get the empty prompt's pooled embedding and the same time ids as their conditional
 * rows, as diffusers' SDXL pipeline does when no negative sizes are given. */
typedef struct {
  size_t pooled;                    /* width P of a pooled embedding (> 0) */
  const float *text_embeds;         /* [n, P]: the prompts' pooled embeddings */
  const float *uncond_text_embeds;  /* [P]: the empty prompt's; required when guidance applies */
  const float *time_ids;            /* [n, 6]: original size (h, w), crop top-left (y, x), target size (h, w) */
} ddim_added;

/* The model with added conditioning: as ddim_model_fn, and text_embeds [n, P], time_ids [n, 6] (both
 * NULL when the sampler was given none). */
typedef int (*ddim_model_added_fn)(void *ctx, int n, const float *x_t, const float *t, const float *ehs,
                                   const float *text_embeds, const float *time_ids, float *out);

/* ddim_sample with the added conditioning `added` (NULL: none) passed to the model row by row, laid out
 * like ehs ([uncond; cond] with guidance). DPOD_EINVAL if guidance applies and added has no
 * uncond_text_embeds. */
int ddim_sample_added(const dpo_schedule *s, const ddim_params *p, ddim_model_added_fn model, void *ctx, int n,
                      size_t img, size_t emb, const float *ehs, const float *uncond, const ddim_added *added, float *x,
                      char *err, size_t errlen);

#endif
