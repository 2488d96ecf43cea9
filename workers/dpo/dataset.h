/* Preference data as the trainer sees it, and the sampler that shards it over ranks.
 *
 * A dataset is one split of a set of pairs (winner latent, loser latent, prompt index) and a table of
 * prompt embeddings; prompts repeat across pairs, so embeddings are stored once. Two sources sit behind
 * the same handle: the built-in generator (arrays in memory) and the on-disk preference format
 * (docs/dataset-format.md, memory-mapped shards that may hold F16). The trainer reads both through
 * dataset_copy_pair() / dataset_copy_prompt(), which always produce float32. */
#ifndef DPOD_DATASET_H
#define DPOD_DATASET_H

#include <stddef.h>
#include <stdint.h>

struct dataset_store_;

typedef struct {
  int channels, height, width;  /* latent shape of one image */
  int text_len, embed_dim;      /* prompt embedding shape */
  size_t num_pairs;             /* pairs in the opened split */
  size_t num_prompts;           /* rows of the prompt table (shared by every split) */
  int has_empty_prompt;         /* an empty-prompt embedding is stored (caption dropout, guidance) */
  /* Built-in datasets only (NULL for on-disk ones): */
  float *latents;               /* [num_pairs, 2, C, H, W]: winner, then loser; owned */
  uint32_t *prompt_of;          /* [num_pairs]; owned */
  float *embeddings;            /* [num_prompts, text_len, embed_dim]; owned */
  float *empty_prompt;          /* [text_len, embed_dim] or NULL; owned */
  /* On-disk datasets only: the mapped shards. Private to dataset.c. */
  struct dataset_store_ *store_;
} dpo_dataset;

typedef struct {
  uint32_t pairs, prompts, text_len;
  uint64_t seed;
  int channels, height, width, embed_dim;  /* from the model config */
  double mode_noise;                       /* spread of samples around their mode pattern (0.3) */
  int held_out;                            /* draw a held-out set: same prompts and modes, new samples */
} dataset_builtin_params;

/* The built-in task: every prompt has two latent patterns ("modes"); the preferred image of a pair is a
 * noisy sample of the prompt's first mode and the rejected one of its second. Deterministic in `seed`.
 * On success *ds owns its arrays: free them with dataset_free(). */
int dataset_builtin(const dataset_builtin_params *p, dpo_dataset *ds, char *err, size_t errlen);

typedef struct {
  const char *split;            /* "train" (also "validation", "base" for synth output, ...) */
  /* Expected shapes from the model config; 0 accepts what the dataset holds. */
  int channels, height, width;  /* latent C, H, W */
  int embed_dim;                /* cross_attention_dim */
  /* Scan every latent and embedding for NaN / Inf at open (cost: one read of the split). */
  int check_values;
} dataset_open_params;

/* split "train", no expected shapes, check_values 1. */
dataset_open_params dataset_open_default_params(void);

/* Opens split p->split of the preference dataset in directory `dir`: reads manifest.json, maps the
 * split's shards and the prompt table, and checks them before returning: dtypes, every shape against the
 * manifest and against the expected shape, record counts, prompt indices in range and (check_values)
 * finiteness. A failure returns a negative dpod_status with a message naming the file and, where it
 * applies, the record ("data/train-00003.safetensors: record 17 (pair 3089): 'winner' holds NaN at
 * element 5"). On success *ds is owned by the caller: dataset_free() it. */
int dataset_open(const char *dir, const dataset_open_params *p, dpo_dataset *ds, char *err, size_t errlen);

/* Frees either kind; safe on a zeroed or already freed handle. */
void dataset_free(dpo_dataset *ds);

static inline size_t dataset_image_size(const dpo_dataset *ds) {
  return (size_t)ds->channels * ds->height * ds->width;
}
static inline size_t dataset_prompt_size(const dpo_dataset *ds) {
  return (size_t)ds->text_len * ds->embed_dim;
}

/* Copies pair i's winner and loser latents as float32: w and l each [C, H, W]; either may be NULL.
 * Returns 0, or DPOD_EINVAL if i is out of range. */
int dataset_copy_pair(const dpo_dataset *ds, size_t i, float *w, float *l);
/* Pair i's prompt index, in [0, num_prompts). */
uint32_t dataset_prompt_index(const dpo_dataset *ds, size_t i);
/* Copies pair i's prompt embedding as float32 into emb [text_len, embed_dim]. */
int dataset_copy_prompt(const dpo_dataset *ds, size_t i, float *emb);
/* Copies row `prompt` of the prompt table into emb [text_len, embed_dim]. */
int dataset_copy_prompt_row(const dpo_dataset *ds, uint32_t prompt, float *emb);
/* Copies the empty-prompt embedding into emb [text_len, embed_dim]; DPOD_ENOENT if there is none. */
int dataset_copy_empty_prompt(const dpo_dataset *ds, float *emb);

/* Zero-copy views for built-in datasets, valid while the dataset lives; NULL for on-disk datasets (use
 * the copy functions, which also convert F16). */
const float *dataset_winner(const dpo_dataset *ds, size_t pair);
const float *dataset_loser(const dpo_dataset *ds, size_t pair);
const float *dataset_prompt(const dpo_dataset *ds, size_t pair);

#endif
