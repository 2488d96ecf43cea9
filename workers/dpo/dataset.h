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

/* SDXL's six time ids per image: original size (h, w), crop top-left (y, x), target size (h, w), pixels. */
#define DATASET_NUM_TIME_IDS 6
enum {
  DATASET_TIME_IDS_DEFAULT = 0, /* none stored: [8H, 8W, 0, 0, 8H, 8W] for H x W latents */
  DATASET_TIME_IDS_PAIR = 1,    /* one row per pair, shared by winner and loser */
  DATASET_TIME_IDS_IMAGE = 2,   /* one row per image */
};

typedef struct {
  int channels, height, width;  /* latent shape of one image */
  int text_len, embed_dim;      /* prompt embedding shape */
  size_t num_pairs;             /* pairs in the opened split */
  size_t num_prompts;           /* rows of the prompt table (shared by every split) */
  int has_empty_prompt;         /* an empty-prompt embedding is stored (caption dropout, guidance) */
  int pooled_dim;               /* width of the pooled prompt embeddings stored with every prompt (SDXL's
                                   text_embeds); 0: none */
  int time_ids;                 /* DATASET_TIME_IDS_*: how SDXL's time ids are stored */
  /* VAE posteriors (format version 2, docs/dataset-format.md), on-disk datasets only: */
  int posterior;                /* every image stores diffusers' latent_dist (mean, logvar [C, H, W]) */
  int posterior_flipped;        /* ... and that of its horizontally flipped image */
  int posterior_only;           /* no frozen latents: dataset_copy_pair gives mean x scaling_factor */
  double scaling_factor;        /* the VAE's, which every drawn latent is multiplied by */
  /* Built-in datasets only (NULL for on-disk ones): */
  float *latents;               /* [num_pairs, 2, C, H, W]: winner, then loser; owned */
  uint32_t *prompt_of;          /* [num_pairs]; owned */
  float *embeddings;            /* [num_prompts, text_len, embed_dim]; owned */
  float *empty_prompt;          /* [text_len, embed_dim] or NULL; owned */
  float *pooled;                /* [num_prompts, pooled_dim] or NULL; owned */
  /* On-disk datasets only: the mapped shards. Private to dataset.c. */
  struct dataset_store_ *store_;
} dpo_dataset;

typedef struct {
  uint32_t pairs, prompts, text_len;
  uint64_t seed;
  int channels, height, width, embed_dim;  /* from the model config */
  double mode_noise;                       /* spread of samples around their mode pattern (0.3) */
  int pooled_dim;                          /* > 0: also pooled embeddings N(0, 1) of this width (SDXL) */
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
  int pooled_dim;               /* > 0: the model needs pooled embeddings of this width (text_embeds_dim);
                                   a dataset without them, or with another width, is refused */
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
/* Copies the posterior of pair i's winner (loser 0) or loser (loser 1), of the flipped image if `flipped`:
 * mean and logvar [C, H, W] each, as stored (logvar not clamped); either may be NULL. DPOD_ENOENT if the
 * dataset stores no such posterior, DPOD_EINVAL if i is out of range. */
int dataset_copy_posterior(const dpo_dataset *ds, size_t i, int loser, int flipped, float *mean, float *logvar);
/* Copies pair i's prompt embedding as float32 into emb [text_len, embed_dim]. */
int dataset_copy_prompt(const dpo_dataset *ds, size_t i, float *emb);
/* Copies row `prompt` of the prompt table into emb [text_len, embed_dim]. */
int dataset_copy_prompt_row(const dpo_dataset *ds, uint32_t prompt, float *emb);
/* Copies the empty-prompt embedding into emb [text_len, embed_dim]; DPOD_ENOENT if there is none. */
int dataset_copy_empty_prompt(const dpo_dataset *ds, float *emb);

/* Copies the pooled embedding of prompt-table row `prompt` into out [pooled_dim]; DPOD_ENOENT without
 * pooled embeddings. */
int dataset_copy_pooled_row(const dpo_dataset *ds, uint32_t prompt, float *out);
/* The empty prompt's pooled embedding into out [pooled_dim]; DPOD_ENOENT if either is absent. */
int dataset_copy_empty_pooled(const dpo_dataset *ds, float *out);
/* Pair i's time ids for its winner and loser, w and l each [6] (either may be NULL): stored, or the
 * default [8H, 8W, 0, 0, 8H, 8W] (the reference script's, res = 8x the latent size). */
int dataset_copy_time_ids(const dpo_dataset *ds, size_t i, float *w, float *l);

/* A DPO micro-batch of the b pairs `pairs` as the reference script builds it: winners in rows 0..b-1,
 * losers in rows b..2b-1, the prompt's embedding (and pooled embedding) repeated for both:
 * x0 [2b, C, H, W], ehs [2b, L, D], pooled [2b, pooled_dim] (NULL to skip), time_ids [2b, 6] (NULL to
 * skip). Returns 0, or DPOD_EINVAL for a pair out of range, DPOD_ENOENT for pooled without any. */
int dataset_fill_batch(const dpo_dataset *ds, const size_t *pairs, int b, float *x0, float *ehs, float *pooled,
                       float *time_ids);

/* Zero-copy views for built-in datasets, valid while the dataset lives; NULL for on-disk datasets (use
 * the copy functions, which also convert F16). */
const float *dataset_winner(const dpo_dataset *ds, size_t pair);
const float *dataset_loser(const dpo_dataset *ds, size_t pair);
const float *dataset_prompt(const dpo_dataset *ds, size_t pair);

#endif
