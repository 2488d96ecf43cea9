/* The verifiable preference task (`dpo-tool synth`) and the helpers that score samples on it.
 *
 * P prompts, each with a random text embedding and two latent patterns ("modes") m[p][0], m[p][1] whose
 * elements are N(0, 1). A base sample of prompt p is m[p][k] + mode_noise * N(0, I) with k a fair coin,
 * so a base model that learns the data samples each mode half the time. One mode per prompt is preferred
 * (drawn at random, stored). The reward is
 *
 *   r(p, x) = reward_scale * (d2(x, m[p][other]) - d2(x, m[p][preferred])),
 *   d2(x, m) = mean over C, H, W of (x - m)^2,
 *
 * so it is about +2 * reward_scale near the preferred mode and -2 * reward_scale near the other. A pair
 * is two fresh base samples (a, b) of one prompt; a is labelled the winner with the Bradley-Terry
 * probability sigmoid(r(a) - r(b)), so pairs from different modes are mostly but not always labelled
 * right and pairs from the same mode are labelled almost by a coin, as human labels are.
 *
 * Output, in the preference format of pref_format.h: split "base" (each base sample in both the winner
 * and loser slots: the sft objective reads the winner only), splits "train" and "validation", the prompt
 * table, an empty-prompt embedding, and synth.safetensors: modes F32 [P, 2, C, H, W], preferred I32 [P],
 * with reward_scale, mode_noise and seed in its metadata. */
#ifndef DPOD_SYNTH_H
#define DPOD_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

#define SYNTH_FILE "synth.safetensors"

typedef struct {
  uint32_t prompts;              /* P (8) */
  uint32_t base_per_prompt;      /* base samples per prompt (64) */
  uint32_t train_pairs;          /* over all prompts, prompt = pair index mod P (512) */
  uint32_t validation_pairs;     /* (128) */
  int channels, height, width;   /* latent shape (4, 8, 8: the tiny-sd fixture) */
  int text_len, embed_dim;       /* prompt embedding shape (4, 32) */
  double mode_noise;             /* std of samples around their mode (0.3) */
  double reward_scale;           /* Bradley-Terry temperature of the reward (0.5) */
  uint64_t seed;                 /* (1234) */
  st_dtype dtype;                /* stored latents and embeddings: ST_F32 (default) or ST_F16 */
  int pooled_dim;                /* > 0: also N(0, I) pooled prompt embeddings of this width, for an
                                    SDXL-shaped model (0) */
  int posterior;                 /* 1: also store VAE-style posteriors of every image (format version 2):
                                    mean = latent / 0.18215 (SD 1.x's scaling factor), logvar
                                    posterior_logvar everywhere, and flipped ones (the mean mirrored along
                                    W), so a trainer drawing latents sees each image with noise
                                    0.18215 exp(posterior_logvar / 2) around it (0) */
  double posterior_logvar;       /* in [-30, 20] (-6: about 0.009 around each latent) */
} synth_params;

synth_params synth_default_params(void);

/* What synth_generate labelled, for the log and the manifest's "info". */
typedef struct {
  size_t train_pairs, validation_pairs, base_samples;
  size_t train_mislabelled;       /* train pairs whose winner has the lower reward */
  double train_expected_mislabelled; /* sum over train pairs of sigmoid(-|r(a) - r(b)|) */
  size_t train_cross_mode;        /* train pairs whose two images come from different modes */
} synth_summary;

/* Generates the task into directory `dir` (see the header comment). Deterministic in p->seed.
 * *summary may be NULL. */
int synth_generate(const synth_params *p, const char *dir, synth_summary *summary, char *err, size_t errlen);

/* The task's ground truth, as synth_generate stored it. */
typedef struct {
  uint32_t prompts;
  int channels, height, width;
  float *modes;          /* [prompts, 2, C, H, W]; owned */
  int32_t *preferred;    /* [prompts], 0 or 1; owned */
  double reward_scale, mode_noise;
} synth_task;

/* Reads `dir`/synth.safetensors. On success *t owns its arrays: synth_task_free() them. */
int synth_task_load(const char *dir, synth_task *t, char *err, size_t errlen);
void synth_task_free(synth_task *t);

/* r(prompt, x0) of the header comment; x0 [C, H, W]. */
double synth_reward(const synth_task *t, uint32_t prompt, const float *x0);
/* The mode (0 or 1) nearest to x0 [C, H, W]; *rms (may be NULL) receives sqrt(d2) to it. */
int synth_nearest_mode(const synth_task *t, uint32_t prompt, const float *x0, double *rms);

typedef struct {
  size_t samples;
  double preferred_rate;   /* fraction of samples whose nearest mode is the preferred one */
  double mean_distance;    /* mean over samples of the RMS distance (sqrt(d2)) to the nearest mode;
                              about mode_noise for a perfect sampler */
} synth_eval;

/* Scores n samples x0 [n, C, H, W] of prompts [n]. DPOD_EINVAL if a prompt is out of range. */
int synth_evaluate(const synth_task *t, size_t n, const float *x0, const uint32_t *prompts, synth_eval *out);

#endif
