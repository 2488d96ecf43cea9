/* The on-disk preference dataset: a directory holding manifest.json, pair shards per split, prompt
 * embedding shards and optionally an empty-prompt embedding. docs/dataset-format.md is the full
 * description; dataset_open() (dataset.h) is the reader. This is the writer, used by `dpo-tool import`,
 * `dpo-tool synth` and the tests.
 *
 *   manifest.json                  written last, atomically: a directory without it is incomplete
 *   prompts-00000.safetensors      embedding [n, text_len, embed_dim]
 *   empty_prompt.safetensors       embedding [text_len, embed_dim]            (optional)
 *   <split>-00000.safetensors      winner [n, C, H, W], loser [n, C, H, W], prompt I32 [n]
 * SDXL's added conditioning, when the params ask for it: `pooled` [n, P] beside each prompt shard's
 * embeddings (and [P] in the empty prompt's file); per-pair `time_ids` F32 [n, 6] or per-image
 * `winner_time_ids` and `loser_time_ids` F32 [n, 6] in the pair shards.
 */
#ifndef DPOD_PREF_FORMAT_H
#define DPOD_PREF_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "dpod_half.h"
#include "safetensors.h"

#define PREF_FORMAT_NAME "dpod-preference"
#define PREF_FORMAT_VERSION 1
/* Datasets with VAE posteriors are version 2; those without stay version 1 (older readers keep reading them). */
#define PREF_FORMAT_VERSION_POSTERIOR 2
#define PREF_MANIFEST "manifest.json"
#define PREF_EMPTY_PROMPT_FILE "empty_prompt.safetensors"
#define PREF_MAX_SPLITS 8

typedef struct {
  int channels, height, width;  /* latent shape of one image */
  int text_len, embed_dim;      /* one prompt embedding */
  st_dtype latent_dtype;        /* ST_F16 (default) or ST_F32 */
  st_dtype embed_dtype;         /* ST_F16 (default) or ST_F32 */
  size_t shard_pairs;           /* pairs per shard (1024) */
  size_t shard_prompts;         /* prompts per prompt shard (4096) */
  int pooled_dim;               /* > 0: every prompt also stores a pooled embedding [pooled_dim] (SDXL) */
  int time_ids;                 /* DATASET_TIME_IDS_* (dataset.h): none, one row [6] per pair, or per image */
  /* VAE posteriors (diffusers' latent_dist: mean and logvar [C, H, W] per image), docs/dataset-format.md: */
  int posterior;                /* 1: every image also stores its posterior */
  int posterior_flipped;        /* 1: ... and the posterior of its horizontally flipped image (needs posterior) */
  int posterior_only;           /* 1: no frozen latents ('winner', 'loser'); readers use mean x scaling_factor */
  double scaling_factor;        /* the VAE's (0.18215 SD 1.x, 0.13025 SDXL); in (0, 100] with posterior */
} pref_writer_params;

/* One image's posterior for pref_writer_add_pair_posterior: each array [C, H, W]; the flipped ones are
 * the posterior of the horizontally flipped image (NULL unless the dataset stores them). */
typedef struct {
  const float *mean, *logvar;
  const float *flip_mean, *flip_logvar;
} pref_posterior;

/* Shape 0, F16, 1024 pairs and 4096 prompts per shard. */
pref_writer_params pref_writer_default_params(void);

/* The pair shards' posterior tensors: image 0 (winner) or 1 (loser), k = PREF_POST_MEAN ... */
enum { PREF_POST_MEAN = 0, PREF_POST_LOGVAR = 1, PREF_POST_FLIP_MEAN = 2, PREF_POST_FLIP_LOGVAR = 3, PREF_POST_KINDS = 4 };
static inline const char *pref_posterior_tensor(int loser, int k) {
  static const char *const names[2][PREF_POST_KINDS] = {
      {"winner_mean", "winner_logvar", "winner_flip_mean", "winner_flip_logvar"},
      {"loser_mean", "loser_logvar", "loser_flip_mean", "loser_flip_logvar"}};
  return names[loser != 0][k];
}

typedef struct pref_writer pref_writer;

/* Starts a dataset in `dir` (created if needed; files of an earlier dataset there are overwritten, and a
 * stale manifest.json is removed first so a crash leaves no half-valid dataset). On success *out is owned
 * by the caller: pref_writer_finish() or pref_writer_free() it. */
int pref_writer_open(const char *dir, const pref_writer_params *p, pref_writer **out, char *err,
                     size_t errlen);

/* Appends one prompt embedding emb [text_len, embed_dim]; prompts are numbered in the order added. */
int pref_writer_add_prompt(pref_writer *w, const float *emb);
/* Sets the empty-prompt embedding emb [text_len, embed_dim] (for caption dropout and guidance). */
int pref_writer_set_empty_prompt(pref_writer *w, const float *emb);
/* The same with the pooled embedding pooled [pooled_dim], which a dataset with pooled_dim > 0 needs
 * (the plain calls are refused there). */
int pref_writer_add_prompt_pooled(pref_writer *w, const float *emb, const float *pooled);
int pref_writer_set_empty_prompt_pooled(pref_writer *w, const float *emb, const float *pooled);
/* Appends a pair to `split` (a name of [a-z0-9_]): winner and loser each [C, H, W]. The prompt index
 * must name a prompt added by the time pref_writer_finish() runs. Non-finite values are refused. */
int pref_writer_add_pair(pref_writer *w, const char *split, const float *winner, const float *loser,
                         uint32_t prompt);
/* pref_writer_add_pair with time ids: tw [6] for the pair (time_ids per pair; tl ignored), or tw and tl
 * [6] for winner and loser (per image). Required when the params store time ids, refused otherwise. */
int pref_writer_add_pair_time_ids(pref_writer *w, const char *split, const float *winner, const float *loser,
                                  uint32_t prompt, const float *tw, const float *tl);
/* pref_writer_add_pair_time_ids with the posteriors pw and pl of winner and loser, required when the
 * params store posteriors (and refused otherwise). winner and loser (the frozen latents) are NULL with
 * posterior_only. Means must be finite; a logvar may hold +-inf (the reader clamps it to [-30, 20], as
 * diffusers does), never NaN. */
int pref_writer_add_pair_posterior(pref_writer *w, const char *split, const float *winner, const float *loser,
                                   uint32_t prompt, const float *tw, const float *tl, const pref_posterior *pw,
                                   const pref_posterior *pl);
/* A free-form entry of the manifest's "info" object (provenance, counts); the value is copied. */
int pref_writer_set_info_string(pref_writer *w, const char *key, const char *value);
int pref_writer_set_info_number(pref_writer *w, const char *key, double value);

/* Writes the remaining shards and then the manifest; frees w whatever happens. On failure err names the
 * file. */
int pref_writer_finish(pref_writer *w, char *err, size_t errlen);
/* Abandons the dataset (no manifest is written); safe on NULL. */
void pref_writer_free(pref_writer *w);

/* The message of the last failed add on w. */
const char *pref_writer_last_error(const pref_writer *w);

#endif
