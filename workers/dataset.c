#include "dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpo_math.h"
#include "dpod_error.h"

/* Streams of the dataset generator's RNG, so each table is independent of the others' sizes. */
enum { STREAM_EMBEDDINGS = 1, STREAM_MODES = 2, STREAM_PAIRS = 3, STREAM_SHUFFLE = 4 };

int dataset_builtin(const dataset_builtin_params *p, dpo_dataset *ds, char *err, size_t errlen) {
  memset(ds, 0, sizeof *ds);
  if (p->pairs == 0 || p->prompts == 0 || p->text_len == 0 || p->channels <= 0 || p->height <= 0 ||
      p->width <= 0 || p->embed_dim <= 0) {
    snprintf(err, errlen, "builtin dataset: pairs, prompts, text_len and the latent shape must be > 0");
    return DPOD_EINVAL;
  }
  ds->channels = p->channels;
  ds->height = p->height;
  ds->width = p->width;
  ds->text_len = (int)p->text_len;
  ds->embed_dim = p->embed_dim;
  ds->num_pairs = p->pairs;
  ds->num_prompts = p->prompts;
  size_t img = dataset_image_size(ds);
  size_t emb = (size_t)ds->text_len * ds->embed_dim;
  float *modes = malloc(sizeof(float) * img * 2 * ds->num_prompts);
  ds->latents = malloc(sizeof(float) * img * 2 * ds->num_pairs);
  ds->prompt_of = malloc(sizeof(uint32_t) * ds->num_pairs);
  ds->embeddings = malloc(sizeof(float) * emb * ds->num_prompts);
  if (!modes || !ds->latents || !ds->prompt_of || !ds->embeddings) {
    free(modes);
    dataset_free(ds);
    snprintf(err, errlen, "builtin dataset: out of memory");
    return DPOD_ENOMEM;
  }
  dpo_rng r;
  dpo_rng_seed(&r, p->seed, STREAM_EMBEDDINGS);
  dpo_rng_fill_normal(&r, ds->embeddings, emb * ds->num_prompts);
  dpo_rng_seed(&r, p->seed, STREAM_MODES);
  dpo_rng_fill_normal(&r, modes, img * 2 * ds->num_prompts);
  dpo_rng_seed(&r, p->seed, STREAM_PAIRS);
  double spread = p->mode_noise > 0 ? p->mode_noise : 0.3;
  for (size_t i = 0; i < ds->num_pairs; i++) {
    uint32_t prompt = (uint32_t)(i % ds->num_prompts);
    ds->prompt_of[i] = prompt;
    const float *good = modes + (size_t)prompt * 2 * img, *bad = good + img;
    float *w = ds->latents + i * 2 * img, *l = w + img;
    for (size_t j = 0; j < img; j++) {
      w[j] = good[j] + (float)(spread * dpo_rng_normal(&r));
      l[j] = bad[j] + (float)(spread * dpo_rng_normal(&r));
    }
  }
  free(modes);
  return 0;
}

void dataset_free(dpo_dataset *ds) {
  free(ds->latents);
  free(ds->prompt_of);
  free(ds->embeddings);
  ds->latents = ds->embeddings = NULL;
  ds->prompt_of = NULL;
}

int sampler_init(dpo_sampler *s, size_t num_pairs, size_t global_batch, uint64_t seed) {
  memset(s, 0, sizeof *s);
  if (global_batch == 0 || num_pairs < global_batch || num_pairs > UINT32_MAX) return DPOD_EINVAL;
  s->perm = malloc(sizeof(uint32_t) * num_pairs);
  if (!s->perm) return DPOD_ENOMEM;
  s->num_pairs = num_pairs;
  s->global_batch = global_batch;
  s->seed = seed;
  s->epoch = UINT64_MAX;
  return 0;
}

void sampler_free(dpo_sampler *s) {
  free(s->perm);
  s->perm = NULL;
}

size_t sampler_pair(dpo_sampler *s, uint64_t g) {
  uint64_t per_epoch = (s->num_pairs / s->global_batch) * s->global_batch;
  uint64_t epoch = g / per_epoch;
  if (epoch != s->epoch) {
    /* Fisher-Yates from a stream of its own per epoch. */
    dpo_rng r;
    dpo_rng_seed(&r, s->seed ^ 0x5eed5a3b1e5ull, STREAM_SHUFFLE + epoch);
    for (size_t i = 0; i < s->num_pairs; i++) s->perm[i] = (uint32_t)i;
    for (size_t i = s->num_pairs - 1; i > 0; i--) {
      uint32_t j = dpo_rng_below(&r, (uint32_t)(i + 1));
      uint32_t t = s->perm[i];
      s->perm[i] = s->perm[j];
      s->perm[j] = t;
    }
    s->epoch = epoch;
  }
  return s->perm[g % per_epoch];
}
