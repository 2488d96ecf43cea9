/* Preference data as the trainer sees it, and the sampler that shards it over ranks.
 *
 * A dataset is a set of pairs (winner latent, loser latent, prompt index) and a table of prompt
 * embeddings; prompts repeat across pairs, so embeddings are stored once. Here the data comes from the
 * built-in generator; the on-disk shard format plugs in behind the same accessors. */
#ifndef DPOD_DATASET_H
#define DPOD_DATASET_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int channels, height, width;  /* latent shape of one image */
  int text_len, embed_dim;      /* prompt embedding shape */
  size_t num_pairs, num_prompts;
  float *latents;               /* [num_pairs, 2, C, H, W]: winner, then loser; owned */
  uint32_t *prompt_of;          /* [num_pairs]; owned */
  float *embeddings;            /* [num_prompts, text_len, embed_dim]; owned */
} dpo_dataset;

typedef struct {
  uint32_t pairs, prompts, text_len;
  uint64_t seed;
  int channels, height, width, embed_dim;  /* from the model config */
  double mode_noise;                       /* spread of samples around their mode pattern (0.3) */
} dataset_builtin_params;

/* The built-in task: every prompt has two latent patterns ("modes"); the preferred image of a pair is a
 * noisy sample of the prompt's first mode and the rejected one of its second. Deterministic in `seed`.
 * On success *ds owns its arrays: free them with dataset_free(). */
int dataset_builtin(const dataset_builtin_params *p, dpo_dataset *ds, char *err, size_t errlen);
void dataset_free(dpo_dataset *ds);

static inline size_t dataset_image_size(const dpo_dataset *ds) {
  return (size_t)ds->channels * ds->height * ds->width;
}
/* Pointers into the dataset, valid while it lives. */
static inline const float *dataset_winner(const dpo_dataset *ds, size_t pair) {
  return ds->latents + pair * 2 * dataset_image_size(ds);
}
static inline const float *dataset_loser(const dpo_dataset *ds, size_t pair) {
  return dataset_winner(ds, pair) + dataset_image_size(ds);
}
static inline const float *dataset_prompt(const dpo_dataset *ds, size_t pair) {
  return ds->embeddings + (size_t)ds->prompt_of[pair] * ds->text_len * ds->embed_dim;
}

/* The distributed sampler. Training consumes the data in global batches of G pairs (G = ranks x batch x
 * accumulation); each epoch is a fresh shuffle of all pairs from the seed, cut into floor(n / G) global
 * batches, the remainder dropped. Global position g (counting every pair the run has consumed) maps to
 * one pair, so which rank or micro-batch takes a position changes nothing: 1 rank x G and N ranks x G/N
 * see the same pairs, and a resumed run continues at g = step x G. */
typedef struct {
  size_t num_pairs, global_batch;
  uint64_t seed;
  uint64_t epoch;     /* epoch whose order `perm` holds; UINT64_MAX before the first */
  uint32_t *perm;     /* [num_pairs]; owned */
} dpo_sampler;

int sampler_init(dpo_sampler *s, size_t num_pairs, size_t global_batch, uint64_t seed);
void sampler_free(dpo_sampler *s);
/* Pair index at global position g. */
size_t sampler_pair(dpo_sampler *s, uint64_t g);

#endif
