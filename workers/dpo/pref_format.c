/* The preference dataset writer. See pref_format.h and docs/dataset-format.md.
 *
 * Records are converted to the stored dtype as they arrive and buffered one shard per split, so memory
 * stays at one shard per split whatever the dataset's size. Every shard is written through the atomic
 * safetensors writer; the manifest goes last. */
#include "pref_format.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dataset.h"
#include "dpod_file.h"

typedef struct {
  char *name;
  unsigned char *winner, *loser;  /* [shard_pairs, C, H, W] in latent_dtype */
  int32_t *prompt;                /* [shard_pairs] */
  float *tw, *tl;                 /* [shard_pairs, 6] time ids (tl per image only), or NULL */
  unsigned char *post[2][PREF_POST_KINDS]; /* [shard_pairs, C, H, W] posteriors in latent_dtype, or NULL */
  size_t buffered;                /* records in the buffers */
  size_t total;                   /* records in the split so far */
  cJSON *shards;                  /* [{"file", "pairs"}] */
} pref_split_;

struct pref_writer {
  char *dir;
  pref_writer_params p;
  size_t img, emb;                /* floats per latent / per prompt embedding */
  pref_split_ splits[PREF_MAX_SPLITS];
  int nsplits;
  unsigned char *prompts;         /* [shard_prompts, L, D] in embed_dtype */
  size_t prompts_buffered, prompts_total;
  cJSON *prompt_shards;
  unsigned char *empty;           /* [L, D] in embed_dtype, or NULL */
  unsigned char *pooled;          /* [shard_prompts, P] in embed_dtype, or NULL */
  unsigned char *empty_pooled;    /* [P] in embed_dtype, or NULL */
  uint32_t max_prompt;            /* largest prompt index of any pair, +1 (0: no pairs) */
  cJSON *info;
  char last_error[512];
};

pref_writer_params pref_writer_default_params(void) {
  pref_writer_params p = {0};
  p.latent_dtype = ST_F16;
  p.embed_dtype = ST_F16;
  p.shard_pairs = 1024;
  p.shard_prompts = 4096;
  return p;
}

/* Stores n floats in `dtype` at dst. */
static void pref_store_(st_dtype dtype, const float *src, size_t n, unsigned char *dst) {
  if (dtype == ST_F32) {
    memcpy(dst, src, n * 4);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h = dpod_f32_to_f16(src[i]);
    memcpy(dst + 2 * i, &h, 2);
  }
}

/* ---- writer ---- */

/* A failed add leaves its message in the writer. */
#define pref_fail_(w, status, ...) dpod_errf((w)->last_error, sizeof (w)->last_error, (status), __VA_ARGS__)

const char *pref_writer_last_error(const pref_writer *w) { return w ? w->last_error : ""; }

static int pref_valid_dtype_(st_dtype d) { return d == ST_F16 || d == ST_F32; }

/* Flipped posteriors without unflipped ones, or neither latents nor posteriors, make no dataset. */
static int pref_bad_posterior_params_(const pref_writer_params *p) {
  if (!p->posterior) return p->posterior_flipped || p->posterior_only;
  return !(p->scaling_factor > 0 && p->scaling_factor <= 100);
}

/* The posterior arrays a pair of this writer carries: kinds 0..n-1. */
static int pref_post_kinds_(const pref_writer *w) {
  return !w->p.posterior ? 0 : w->p.posterior_flipped ? PREF_POST_KINDS : 2;
}

int pref_writer_open(const char *dir, const pref_writer_params *p, pref_writer **out, char *err,
                     size_t errlen) {
  *out = NULL;
  if (p->channels <= 0 || p->height <= 0 || p->width <= 0 || p->text_len <= 0 || p->embed_dim <= 0 ||
      p->shard_pairs == 0 || p->shard_prompts == 0 || !pref_valid_dtype_(p->latent_dtype) ||
      !pref_valid_dtype_(p->embed_dtype) || p->pooled_dim < 0 || p->pooled_dim > (1 << 20) || p->time_ids < 0 ||
      p->time_ids > DATASET_TIME_IDS_IMAGE || pref_bad_posterior_params_(p)) {
    snprintf(err, errlen, "%s: the latent and embedding shapes and shard sizes must be > 0, dtypes F16 or F32%s",
             dir, pref_bad_posterior_params_(p) ? "; flipped or posterior-only datasets need posteriors, and "
                                                   "posteriors a scaling factor in (0, 100]" : "");
    return DPOD_EINVAL;
  }
  int rc = dpod_mkdirs(dir, 0777, 0, err, errlen);
  if (rc != 0) return rc;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, PREF_MANIFEST);
  if (unlink(path) != 0 && errno != ENOENT) {
    snprintf(err, errlen, "%s: cannot remove the old manifest: %s", path, strerror(errno));
    return DPOD_EIO;
  }
  pref_writer *w = calloc(1, sizeof *w);
  if (!w) goto oom;
  w->p = *p;
  w->img = (size_t)p->channels * p->height * p->width;
  w->emb = (size_t)p->text_len * p->embed_dim;
  w->dir = strdup(dir);
  w->prompts = malloc(p->shard_prompts * w->emb * st_dtype_size(p->embed_dtype));
  w->prompt_shards = cJSON_CreateArray();
  w->info = cJSON_CreateObject();
  if (p->pooled_dim > 0)
    w->pooled = malloc(p->shard_prompts * (size_t)p->pooled_dim * st_dtype_size(p->embed_dtype));
  if (!w->dir || !w->prompts || !w->prompt_shards || !w->info || (p->pooled_dim > 0 && !w->pooled)) goto oom;
  *out = w;
  return 0;
oom:
  pref_writer_free(w);
  snprintf(err, errlen, "%s: out of memory", dir);
  return DPOD_ENOMEM;
}

void pref_writer_free(pref_writer *w) {
  if (!w) return;
  for (int i = 0; i < w->nsplits; i++) {
    free(w->splits[i].name);
    free(w->splits[i].winner);
    free(w->splits[i].loser);
    free(w->splits[i].prompt);
    free(w->splits[i].tw);
    free(w->splits[i].tl);
    for (int k = 0; k < 2 * PREF_POST_KINDS; k++) free(w->splits[i].post[k / PREF_POST_KINDS][k % PREF_POST_KINDS]);
    cJSON_Delete(w->splits[i].shards);
  }
  free(w->prompts);
  free(w->empty);
  free(w->pooled);
  free(w->empty_pooled);
  cJSON_Delete(w->prompt_shards);
  cJSON_Delete(w->info);
  free(w->dir);
  free(w);
}

static int pref_check_finite_(pref_writer *w, const char *what, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return pref_fail_(w, DPOD_ENUMERIC, "%s holds %g at element %zu", what, x[i], i);
  return 0;
}

/* Writes buffered prompts as the next prompt shard. */
static int pref_flush_prompts_(pref_writer *w, char *err, size_t errlen) {
  if (w->prompts_buffered == 0) return 0;
  size_t index = (size_t)cJSON_GetArraySize(w->prompt_shards);
  char name[64], path[4096];
  snprintf(name, sizeof name, "prompts-%05zu.safetensors", index);
  snprintf(path, sizeof path, "%s/%s", w->dir, name);
  st_writer *sw = st_writer_new();
  int64_t shape[3] = {(int64_t)w->prompts_buffered, w->p.text_len, w->p.embed_dim};
  int rc = DPOD_ENOMEM;
  int64_t pshape[2] = {(int64_t)w->prompts_buffered, w->p.pooled_dim};
  if (!sw || st_writer_add(sw, "embedding", w->p.embed_dtype, 3, shape, w->prompts) != 0 ||
      (w->pooled && st_writer_add(sw, "pooled", w->p.embed_dtype, 2, pshape, w->pooled) != 0)) {
    snprintf(err, errlen, "%s: out of memory", path);
    goto done;
  }
  st_writer_set_metadata(sw, "format", PREF_FORMAT_NAME);
  if ((rc = st_writer_write(sw, path, NULL, err, errlen)) != 0) goto done;
  cJSON *s = cJSON_CreateObject();
  cJSON_AddStringToObject(s, "file", name);
  cJSON_AddNumberToObject(s, "count", (double)w->prompts_buffered);
  cJSON_AddItemToArray(w->prompt_shards, s);
  w->prompts_buffered = 0;
done:
  st_writer_free(sw);
  return rc;
}

int pref_writer_add_prompt(pref_writer *w, const float *emb) { return pref_writer_add_prompt_pooled(w, emb, NULL); }

int pref_writer_add_prompt_pooled(pref_writer *w, const float *emb, const float *pooled) {
  if (!pooled != !w->pooled)
    return pref_fail_(w, DPOD_EINVAL, w->pooled ? "this dataset stores pooled embeddings: every prompt needs one"
                                                : "this dataset stores no pooled embeddings (pooled_dim 0)");
  int rc = pref_check_finite_(w, "prompt embedding", emb, w->emb);
  if (rc) return rc;
  if (pooled && (rc = pref_check_finite_(w, "pooled prompt embedding", pooled, (size_t)w->p.pooled_dim)) != 0)
    return rc;
  if (w->prompts_total >= UINT32_MAX) return pref_fail_(w, DPOD_EINVAL, "too many prompts");
  size_t esz = st_dtype_size(w->p.embed_dtype);
  pref_store_(w->p.embed_dtype, emb, w->emb, w->prompts + w->prompts_buffered * w->emb * esz);
  if (pooled)
    pref_store_(w->p.embed_dtype, pooled, (size_t)w->p.pooled_dim,
                w->pooled + w->prompts_buffered * (size_t)w->p.pooled_dim * esz);
  w->prompts_buffered++;
  w->prompts_total++;
  if (w->prompts_buffered == w->p.shard_prompts) {
    char err[512];
    if ((rc = pref_flush_prompts_(w, err, sizeof err)) != 0) return pref_fail_(w, rc, "%s", err);
  }
  return 0;
}

int pref_writer_set_empty_prompt(pref_writer *w, const float *emb) {
  return pref_writer_set_empty_prompt_pooled(w, emb, NULL);
}

int pref_writer_set_empty_prompt_pooled(pref_writer *w, const float *emb, const float *pooled) {
  if (!pooled != !w->pooled)
    return pref_fail_(w, DPOD_EINVAL, w->pooled ? "this dataset stores pooled embeddings: the empty prompt needs one"
                                                : "this dataset stores no pooled embeddings (pooled_dim 0)");
  int rc = pref_check_finite_(w, "empty-prompt embedding", emb, w->emb);
  if (rc) return rc;
  if (pooled && (rc = pref_check_finite_(w, "empty prompt's pooled embedding", pooled, (size_t)w->p.pooled_dim)) != 0)
    return rc;
  size_t esz = st_dtype_size(w->p.embed_dtype);
  if (!w->empty && !(w->empty = malloc(w->emb * esz))) return pref_fail_(w, DPOD_ENOMEM, "out of memory");
  if (pooled && !w->empty_pooled && !(w->empty_pooled = malloc((size_t)w->p.pooled_dim * esz)))
    return pref_fail_(w, DPOD_ENOMEM, "out of memory");
  pref_store_(w->p.embed_dtype, emb, w->emb, w->empty);
  if (pooled) pref_store_(w->p.embed_dtype, pooled, (size_t)w->p.pooled_dim, w->empty_pooled);
  return 0;
}

static int pref_valid_split_name_(const char *s) {
  if (!s || !*s || strlen(s) > 32) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
  return 1;
}

static pref_split_ *pref_split_get_(pref_writer *w, const char *name) {
  for (int i = 0; i < w->nsplits; i++)
    if (strcmp(w->splits[i].name, name) == 0) return &w->splits[i];
  if (w->nsplits == PREF_MAX_SPLITS) return NULL;
  pref_split_ *s = &w->splits[w->nsplits];
  size_t lsz = st_dtype_size(w->p.latent_dtype);
  s->name = strdup(name);
  s->winner = malloc(w->p.shard_pairs * w->img * lsz);
  s->loser = malloc(w->p.shard_pairs * w->img * lsz);
  s->prompt = malloc(w->p.shard_pairs * sizeof(int32_t));
  s->shards = cJSON_CreateArray();
  size_t tbytes = w->p.shard_pairs * DATASET_NUM_TIME_IDS * sizeof(float);
  if (w->p.time_ids != DATASET_TIME_IDS_DEFAULT) s->tw = malloc(tbytes);
  if (w->p.time_ids == DATASET_TIME_IDS_IMAGE) s->tl = malloc(tbytes);
  int post_ok = 1;
  for (int k = 0; k < 2 * pref_post_kinds_(w); k++)
    post_ok &= (s->post[k & 1][k >> 1] = malloc(w->p.shard_pairs * w->img * lsz)) != NULL;
  if (!post_ok || !s->name || !s->winner || !s->loser || !s->prompt || !s->shards ||
      (w->p.time_ids != DATASET_TIME_IDS_DEFAULT && !s->tw) || (w->p.time_ids == DATASET_TIME_IDS_IMAGE && !s->tl)) {
    free(s->name);
    free(s->winner);
    free(s->loser);
    free(s->prompt);
    free(s->tw);
    free(s->tl);
    for (int k = 0; k < 2 * PREF_POST_KINDS; k++) free(s->post[k / PREF_POST_KINDS][k % PREF_POST_KINDS]);
    cJSON_Delete(s->shards);
    memset(s, 0, sizeof *s);
    return NULL;
  }
  w->nsplits++;
  return s;
}

static int pref_flush_split_(pref_writer *w, pref_split_ *s, char *err, size_t errlen) {
  if (s->buffered == 0) return 0;
  size_t index = (size_t)cJSON_GetArraySize(s->shards);
  char name[96], path[4096];
  snprintf(name, sizeof name, "%s-%05zu.safetensors", s->name, index);
  snprintf(path, sizeof path, "%s/%s", w->dir, name);
  st_writer *sw = st_writer_new();
  int64_t shape[4] = {(int64_t)s->buffered, w->p.channels, w->p.height, w->p.width};
  int64_t pshape[1] = {(int64_t)s->buffered};
  int64_t tshape[2] = {(int64_t)s->buffered, DATASET_NUM_TIME_IDS};
  int rc = DPOD_ENOMEM;
  int post_rc = 0;
  for (int k = 0; sw && k < 2 * pref_post_kinds_(w); k++)
    post_rc |= st_writer_add(sw, pref_posterior_tensor(k & 1, k >> 1), w->p.latent_dtype, 4, shape,
                             s->post[k & 1][k >> 1]);
  if (!sw || post_rc != 0 ||
      (!w->p.posterior_only && (st_writer_add(sw, "winner", w->p.latent_dtype, 4, shape, s->winner) != 0 ||
                                st_writer_add(sw, "loser", w->p.latent_dtype, 4, shape, s->loser) != 0)) ||
      st_writer_add(sw, "prompt", ST_I32, 1, pshape, s->prompt) != 0 ||
      (s->tw && st_writer_add(sw, s->tl ? "winner_time_ids" : "time_ids", ST_F32, 2, tshape, s->tw) != 0) ||
      (s->tl && st_writer_add(sw, "loser_time_ids", ST_F32, 2, tshape, s->tl) != 0)) {
    snprintf(err, errlen, "%s: out of memory", path);
    goto done;
  }
  st_writer_set_metadata(sw, "format", PREF_FORMAT_NAME);
  st_writer_set_metadata(sw, "split", s->name);
  if ((rc = st_writer_write(sw, path, NULL, err, errlen)) != 0) goto done;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "file", name);
  cJSON_AddNumberToObject(o, "pairs", (double)s->buffered);
  cJSON_AddItemToArray(s->shards, o);
  s->buffered = 0;
done:
  st_writer_free(sw);
  return rc;
}

int pref_writer_add_pair(pref_writer *w, const char *split, const float *winner, const float *loser,
                         uint32_t prompt) {
  return pref_writer_add_pair_time_ids(w, split, winner, loser, prompt, NULL, NULL);
}

int pref_writer_add_pair_time_ids(pref_writer *w, const char *split, const float *winner, const float *loser,
                                  uint32_t prompt, const float *tw, const float *tl) {
  return pref_writer_add_pair_posterior(w, split, winner, loser, prompt, tw, tl, NULL, NULL);
}

/* The posterior arrays of one image, in kind order, or a message in w. */
static int pref_check_posterior_(pref_writer *w, int loser, const pref_posterior *q, const float *arr[PREF_POST_KINDS]) {
  const int kinds = pref_post_kinds_(w);
  arr[0] = q ? q->mean : NULL;
  arr[1] = q ? q->logvar : NULL;
  arr[2] = q ? q->flip_mean : NULL;
  arr[3] = q ? q->flip_logvar : NULL;
  for (int k = 0; k < PREF_POST_KINDS; k++) {
    const char *name = pref_posterior_tensor(loser, k);
    if (k < kinds && !arr[k])
      return pref_fail_(w, DPOD_EINVAL, "this dataset stores %sposteriors: every pair needs '%s'",
                        w->p.posterior_flipped ? "unflipped and flipped " : "", name);
    if (k >= kinds && arr[k])
      return pref_fail_(w, DPOD_EINVAL, "this dataset stores no %s ('%s' given)",
                        k < 2 ? "posteriors" : "flipped posteriors", name);
    if (!arr[k]) continue;
    for (size_t i = 0; i < w->img; i++) {
      float v = arr[k][i];
      /* A logvar of +-inf is clamped at use; NaN is nowhere meaningful. */
      if (k & 1 ? isnan(v) : !isfinite(v))
        return pref_fail_(w, DPOD_ENUMERIC, "'%s' holds %g at element %zu", name, v, i);
    }
  }
  return 0;
}

int pref_writer_add_pair_posterior(pref_writer *w, const char *split, const float *winner, const float *loser,
                                   uint32_t prompt, const float *tw, const float *tl, const pref_posterior *pw,
                                   const pref_posterior *pl) {
  if (!winner != !loser || !winner != !!w->p.posterior_only)
    return pref_fail_(w, DPOD_EINVAL, "%s", w->p.posterior_only ? "this dataset stores posteriors only: no frozen latents"
                                                                  : "every pair needs its winner and loser latents");
  const float *post[2][PREF_POST_KINDS];
  int rc;
  if ((rc = pref_check_posterior_(w, 0, pw, post[0])) != 0 || (rc = pref_check_posterior_(w, 1, pl, post[1])) != 0)
    return rc;
  const int mode = w->p.time_ids;
  if ((mode == DATASET_TIME_IDS_DEFAULT) != !tw || (mode == DATASET_TIME_IDS_IMAGE && !tl))
    return pref_fail_(w, DPOD_EINVAL, "%s", mode == DATASET_TIME_IDS_DEFAULT ? "this dataset stores no time ids"
                                            : mode == DATASET_TIME_IDS_PAIR ? "this dataset stores time ids per pair: every pair needs them"
                                                                             : "this dataset stores time ids per image: every pair needs both");
  if (!pref_valid_split_name_(split))
    return pref_fail_(w, DPOD_EINVAL, "split name '%s' is not [a-z0-9_]{1,32}", split ? split : "(null)");
  if (prompt > INT32_MAX) return pref_fail_(w, DPOD_EINVAL, "prompt index %u is out of range", prompt);
  if (winner && (rc = pref_check_finite_(w, "winner latent", winner, w->img)) != 0) return rc;
  if (loser && (rc = pref_check_finite_(w, "loser latent", loser, w->img)) != 0) return rc;
  if (tw && (rc = pref_check_finite_(w, "time ids", tw, DATASET_NUM_TIME_IDS)) != 0) return rc;
  if (mode == DATASET_TIME_IDS_IMAGE && (rc = pref_check_finite_(w, "loser time ids", tl, DATASET_NUM_TIME_IDS)) != 0)
    return rc;
  pref_split_ *s = pref_split_get_(w, split);
  if (!s) return pref_fail_(w, DPOD_ENOMEM, "split '%s': out of memory or more than %d splits", split,
                            PREF_MAX_SPLITS);
  size_t lsz = st_dtype_size(w->p.latent_dtype);
  if (winner) pref_store_(w->p.latent_dtype, winner, w->img, s->winner + s->buffered * w->img * lsz);
  if (loser) pref_store_(w->p.latent_dtype, loser, w->img, s->loser + s->buffered * w->img * lsz);
  for (int k = 0; k < 2 * pref_post_kinds_(w); k++)
    pref_store_(w->p.latent_dtype, post[k & 1][k >> 1], w->img, s->post[k & 1][k >> 1] + s->buffered * w->img * lsz);
  s->prompt[s->buffered] = (int32_t)prompt;
  if (s->tw) memcpy(s->tw + s->buffered * DATASET_NUM_TIME_IDS, tw, DATASET_NUM_TIME_IDS * sizeof(float));
  if (s->tl) memcpy(s->tl + s->buffered * DATASET_NUM_TIME_IDS, tl, DATASET_NUM_TIME_IDS * sizeof(float));
  s->buffered++;
  s->total++;
  if (prompt + 1 > w->max_prompt) w->max_prompt = prompt + 1;
  if (s->buffered == w->p.shard_pairs) {
    char err[512];
    if ((rc = pref_flush_split_(w, s, err, sizeof err)) != 0) return pref_fail_(w, rc, "%s", err);
  }
  return 0;
}

int pref_writer_set_info_string(pref_writer *w, const char *key, const char *value) {
  cJSON_DeleteItemFromObjectCaseSensitive(w->info, key);
  return cJSON_AddStringToObject(w->info, key, value) ? 0 : DPOD_ENOMEM;
}

int pref_writer_set_info_number(pref_writer *w, const char *key, double value) {
  cJSON_DeleteItemFromObjectCaseSensitive(w->info, key);
  return cJSON_AddNumberToObject(w->info, key, value) ? 0 : DPOD_ENOMEM;
}

/* A manifest: the text and a final newline, whole or not at all. */
static int pref_write_text_atomic_(const char *path, const char *text, char *err, size_t errlen) {
  dpod_atomic_file f;
  int rc = dpod_atomic_open(&f, path, 0, err, errlen);
  if (rc == 0) rc = dpod_atomic_write(&f, text, strlen(text), err, errlen);
  if (rc == 0) rc = dpod_atomic_write(&f, "\n", 1, err, errlen);
  if (rc == 0) return dpod_atomic_commit(&f, err, errlen);
  dpod_atomic_abort(&f);
  return rc;
}

int pref_writer_finish(pref_writer *w, char *err, size_t errlen) {
  int rc = 0;
  cJSON *m = NULL;
  char *text = NULL;
  if (w->max_prompt > w->prompts_total) {
    snprintf(err, errlen, "%s: a pair names prompt %u but only %zu prompts were added", w->dir,
             w->max_prompt - 1, w->prompts_total);
    rc = DPOD_EINVAL;
    goto done;
  }
  if ((rc = pref_flush_prompts_(w, err, errlen)) != 0) goto done;
  for (int i = 0; i < w->nsplits; i++)
    if ((rc = pref_flush_split_(w, &w->splits[i], err, errlen)) != 0) goto done;
  if (w->empty) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", w->dir, PREF_EMPTY_PROMPT_FILE);
    st_writer *sw = st_writer_new();
    int64_t shape[2] = {w->p.text_len, w->p.embed_dim}, pshape[1] = {w->p.pooled_dim};
    if (!sw || st_writer_add(sw, "embedding", w->p.embed_dtype, 2, shape, w->empty) != 0 ||
        (w->empty_pooled && st_writer_add(sw, "pooled", w->p.embed_dtype, 1, pshape, w->empty_pooled) != 0)) {
      st_writer_free(sw);
      snprintf(err, errlen, "%s: out of memory", path);
      rc = DPOD_ENOMEM;
      goto done;
    }
    rc = st_writer_write(sw, path, NULL, err, errlen);
    st_writer_free(sw);
    if (rc) goto done;
  }

  rc = DPOD_ENOMEM;
  m = cJSON_CreateObject();
  if (!m) goto oom;
  cJSON_AddStringToObject(m, "format", PREF_FORMAT_NAME);
  cJSON_AddNumberToObject(m, "version", w->p.posterior ? PREF_FORMAT_VERSION_POSTERIOR : PREF_FORMAT_VERSION);
  int shape[3] = {w->p.channels, w->p.height, w->p.width};
  cJSON_AddItemToObject(m, "latent_shape", cJSON_CreateIntArray(shape, 3));
  cJSON_AddStringToObject(m, "latent_dtype", st_dtype_name(w->p.latent_dtype));
  cJSON_AddNumberToObject(m, "text_len", w->p.text_len);
  cJSON_AddNumberToObject(m, "embed_dim", w->p.embed_dim);
  cJSON_AddStringToObject(m, "embed_dtype", st_dtype_name(w->p.embed_dtype));
  if (w->p.pooled_dim > 0) cJSON_AddNumberToObject(m, "pooled_dim", w->p.pooled_dim);
  if (w->p.time_ids != DATASET_TIME_IDS_DEFAULT)
    cJSON_AddStringToObject(m, "time_ids", w->p.time_ids == DATASET_TIME_IDS_PAIR ? "pair" : "image");
  if (w->p.posterior) {
    cJSON *po = cJSON_AddObjectToObject(m, "posterior");
    if (!po) goto oom;
    cJSON_AddNumberToObject(po, "scaling_factor", w->p.scaling_factor);
    cJSON_AddBoolToObject(po, "flipped", w->p.posterior_flipped != 0);
    cJSON_AddBoolToObject(po, "frozen_latents", !w->p.posterior_only);
  }
  cJSON *prompts = cJSON_AddObjectToObject(m, "prompts");
  if (!prompts) goto oom;
  cJSON_AddNumberToObject(prompts, "count", (double)w->prompts_total);
  cJSON_AddItemToObject(prompts, "shards", w->prompt_shards);
  w->prompt_shards = NULL;
  if (w->empty) cJSON_AddStringToObject(m, "empty_prompt", PREF_EMPTY_PROMPT_FILE);
  cJSON *splits = cJSON_AddObjectToObject(m, "splits");
  if (!splits) goto oom;
  for (int i = 0; i < w->nsplits; i++) {
    cJSON *s = cJSON_AddObjectToObject(splits, w->splits[i].name);
    if (!s) goto oom;
    cJSON_AddNumberToObject(s, "pairs", (double)w->splits[i].total);
    cJSON_AddItemToObject(s, "shards", w->splits[i].shards);
    w->splits[i].shards = NULL;
  }
  cJSON_AddItemToObject(m, "info", w->info);
  w->info = NULL;
  if (!(text = cJSON_Print(m))) goto oom;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", w->dir, PREF_MANIFEST);
  rc = pref_write_text_atomic_(path, text, err, errlen);
  goto done;
oom:
  snprintf(err, errlen, "%s: out of memory writing the manifest", w->dir);
done:
  free(text);
  cJSON_Delete(m);
  pref_writer_free(w);
  return rc;
}
