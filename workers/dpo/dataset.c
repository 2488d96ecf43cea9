#include "dataset.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "pref_format.h"
#include "safetensors.h"

#define DS_MANIFEST_MAX ((size_t)64 << 20) /* a manifest lists shards: it stays small */

/* Streams of the dataset generator's RNG, so each table is independent of the others' sizes. */

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
  if (p->pooled_dim < 0 || p->pooled_dim > (1 << 20)) {
    snprintf(err, errlen, "builtin dataset: pooled_dim %d is out of range", p->pooled_dim);
    return DPOD_EINVAL;
  }
  ds->pooled_dim = p->pooled_dim;
  if (p->pooled_dim > 0 && !(ds->pooled = malloc(sizeof(float) * (size_t)p->pooled_dim * ds->num_prompts))) {
    snprintf(err, errlen, "builtin dataset: out of memory");
    return DPOD_ENOMEM;
  }
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
  dpo_rng_seed(&r, p->seed, DPO_STREAM_EMBEDDINGS);
  dpo_rng_fill_normal(&r, ds->embeddings, emb * ds->num_prompts);
  if (ds->pooled) {
    dpo_rng_seed(&r, p->seed, DPO_STREAM_POOLED);
    dpo_rng_fill_normal(&r, ds->pooled, (size_t)ds->pooled_dim * ds->num_prompts);
  }
  dpo_rng_seed(&r, p->seed, DPO_STREAM_MODES);
  dpo_rng_fill_normal(&r, modes, img * 2 * ds->num_prompts);
  /* Held-out sets use their own stream: fresh samples around the same modes. */
  dpo_rng_seed(&r, p->seed, p->held_out ? DPO_STREAM_HELD_OUT : DPO_STREAM_PAIRS);
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

/* ---- the on-disk format ------------------------------------------------------------------------- */

typedef struct {
  st_file *f;
  char *path;
  const unsigned char *winner, *loser;  /* [count, C, H, W] in the latent dtype */
  const unsigned char *prompt;          /* [count] I32 or I64 */
  const unsigned char *tw, *tl;         /* [count, 6] F32 time ids (winner's or the pair's; loser's), or NULL */
  const unsigned char *post[2][PREF_POST_KINDS]; /* [count, C, H, W] posteriors in the latent dtype, or NULL */
  st_dtype prompt_dtype;
  size_t first, count;                  /* pairs [first, first + count) of the split */
} ds_shard_;

typedef struct {
  st_file *f;
  const unsigned char *emb;             /* [count, L, D] in the embedding dtype */
  const unsigned char *pooled;          /* [count, P] in the embedding dtype, or NULL */
  size_t first, count;
} ds_prompt_shard_;

struct dataset_store_ {
  st_dtype latent_dtype, embed_dtype;
  ds_shard_ *shards;
  size_t nshards;
  ds_prompt_shard_ *pshards;
  size_t npshards;
  st_file *empty_f;
  const unsigned char *empty;           /* [L, D] in the embedding dtype, or NULL */
  const unsigned char *empty_pooled;    /* [P] in the embedding dtype, or NULL */
};

static void ds_store_free_(struct dataset_store_ *s) {
  if (!s) return;
  for (size_t i = 0; i < s->nshards; i++) {
    st_close(s->shards[i].f);
    free(s->shards[i].path);
  }
  for (size_t i = 0; i < s->npshards; i++) st_close(s->pshards[i].f);
  st_close(s->empty_f);
  free(s->shards);
  free(s->pshards);
  free(s);
}

void dataset_free(dpo_dataset *ds) {
  if (!ds) return;
  free(ds->latents);
  free(ds->prompt_of);
  free(ds->embeddings);
  free(ds->empty_prompt);
  free(ds->pooled);
  ds_store_free_(ds->store_);
  ds->latents = ds->embeddings = ds->empty_prompt = ds->pooled = NULL;
  ds->prompt_of = NULL;
  ds->store_ = NULL;
}

dataset_open_params dataset_open_default_params(void) {
  dataset_open_params p = {0};
  p.split = "train";
  p.check_values = 1;
  return p;
}


/* A manifest integer field in [lo, hi]. */
static int ds_json_int_(const cJSON *o, const char *key, double lo, double hi, int64_t *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < lo ||
      j->valuedouble > hi)
    return -1;
  *out = (int64_t)j->valuedouble;
  return 0;
}

/* A shard file name from the manifest: a plain name inside the dataset directory. */
static const char *ds_json_file_(const cJSON *o, const char *key) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsString(j) || !*j->valuestring || strchr(j->valuestring, '/') || strcmp(j->valuestring, "..") == 0)
    return NULL;
  return j->valuestring;
}

/* Opens the shard `file` of the dataset in `dir` (its path left in `path`). A shard that is a symbolic
 * link leading outside the dataset is refused: whoever wrote the manifest must not make the workers
 * read, and report on, some other file of their user's. */
static int ds_open_shard_(const char *dir, const char *file, char *path, size_t pathlen, st_file **f, char *err,
                          size_t errlen) {
  if (snprintf(path, pathlen, "%s/%s", dir, file) >= (int)pathlen)
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: shard path too long", dir);
  if (dpod_path_inside(path, dir) == 0)
    return dpod_errf(err, errlen, DPOD_EACCESS, "%s: a symbolic link leading outside the dataset directory", path);
  return st_open(path, f, err, errlen);
}

static int ds_parse_dtype_(const cJSON *m, const char *key, st_dtype *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(m, key);
  if (!cJSON_IsString(j)) return -1;
  if (strcmp(j->valuestring, "F16") == 0) *out = ST_F16;
  else if (strcmp(j->valuestring, "F32") == 0) *out = ST_F32;
  else return -1;
  return 0;
}

static void ds_shape_str_(const st_tensor *t, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "%s [", st_dtype_name(t->dtype));
  for (int i = 0; i < t->ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

/* Checks that tensor `name` of shard `path` exists with `dtype` and shape dims[0..ndim). */
static int ds_expect_tensor_(st_file *f, const char *path, const char *name, st_dtype dtype, int ndim,
                             const int64_t *dims, const st_tensor **out, char *err, size_t errlen) {
  const st_tensor *t = st_find(f, name);
  if (!t) return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: no tensor '%s'", path, name);
  int ok = t->dtype == dtype && t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == dims[i];
  if (!ok) {
    char have[160], want[160] = "";
    ds_shape_str_(t, have, sizeof have);
    size_t k = (size_t)snprintf(want, sizeof want, "%s [", st_dtype_name(dtype));
    for (int i = 0; i < ndim && k < sizeof want; i++)
      k += (size_t)snprintf(want + k, sizeof want - k, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (k < sizeof want) snprintf(want + k, sizeof want - k, "]");
    return dpod_errf(err, errlen, DPOD_ESHAPE, "%s: tensor '%s' is %s, expected %s", path, name, have, want);
  }
  *out = t;
  return 0;
}

/* Index of the first non-finite value among n values of `dtype` at p, or n. */
static size_t ds_first_nonfinite_(st_dtype dtype, const unsigned char *p, size_t n, float *value) {
  for (size_t i = 0; i < n; i++) {
    float v;
    if (dtype == ST_F16) {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      if ((h & 0x7c00u) != 0x7c00u) continue;
      v = dpod_f16_to_f32(h);
    } else {
      memcpy(&v, p + 4 * i, 4);
      if (isfinite(v)) continue;
    }
    *value = v;
    return i;
  }
  return n;
}

static void ds_load_(st_dtype dtype, const unsigned char *p, size_t n, float *out) {
  if (dtype == ST_F32) {
    memcpy(out, p, n * 4);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    out[i] = dpod_f16_to_f32(h);
  }
}

static int64_t ds_prompt_at_(const ds_shard_ *s, size_t r) {
  if (s->prompt_dtype == ST_I32) {
    int32_t v;
    memcpy(&v, s->prompt + 4 * r, 4);
    return v;
  }
  int64_t v;
  memcpy(&v, s->prompt + 8 * r, 8);
  return v;
}

static int ds_open_prompts_(const char *dir, const cJSON *m, const char *mpath, struct dataset_store_ *st,
                            dpo_dataset *ds, int check_values, char *err, size_t errlen) {
  const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(m, "prompts");
  int64_t count;
  const cJSON *shards = cJSON_GetObjectItemCaseSensitive(prompts, "shards");
  if (!cJSON_IsObject(prompts) || ds_json_int_(prompts, "count", 1, (double)INT32_MAX, &count) != 0 ||
      !cJSON_IsArray(shards))
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'prompts' needs a positive 'count' and a 'shards' array",
                    mpath);
  ds->num_prompts = (size_t)count;
  size_t n = (size_t)cJSON_GetArraySize(shards);
  if (!(st->pshards = calloc(n ? n : 1, sizeof *st->pshards)))
    return dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", mpath);
  size_t emb = dataset_prompt_size(ds), esz = st_dtype_size(st->embed_dtype), first = 0;
  char path[4096];
  const cJSON *o;
  cJSON_ArrayForEach(o, shards) {
    const char *file = ds_json_file_(o, "file");
    int64_t c;
    if (!file || ds_json_int_(o, "count", 1, (double)INT32_MAX, &c) != 0)
      return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: prompt shard %zu needs a plain 'file' name and a positive "
                      "'count'", mpath, st->npshards);
    ds_prompt_shard_ *ps = &st->pshards[st->npshards++];
    int rc = ds_open_shard_(dir, file, path, sizeof path, &ps->f, err, errlen);
    if (rc) return rc;
    const st_tensor *t;
    int64_t dims[3] = {c, ds->text_len, ds->embed_dim};
    if ((rc = ds_expect_tensor_(ps->f, path, "embedding", st->embed_dtype, 3, dims, &t, err, errlen)) != 0)
      return rc;
    ps->emb = t->data;
    ps->first = first;
    ps->count = (size_t)c;
    if (ds->pooled_dim > 0) {
      int64_t pdims[2] = {c, ds->pooled_dim};
      if ((rc = ds_expect_tensor_(ps->f, path, "pooled", st->embed_dtype, 2, pdims, &t, err, errlen)) != 0) return rc;
      ps->pooled = t->data;
      float v;
      size_t np = (size_t)c * (size_t)ds->pooled_dim;
      size_t e = check_values ? ds_first_nonfinite_(st->embed_dtype, ps->pooled, np, &v) : np;
      if (e < np)
        return dpod_errf(err, errlen, DPOD_ENUMERIC, "%s: record %zu (prompt %zu): 'pooled' holds %g at element %zu",
                        path, e / (size_t)ds->pooled_dim, first + e / (size_t)ds->pooled_dim, v,
                        e % (size_t)ds->pooled_dim);
    }
    if (check_values) {
      for (size_t r = 0; r < ps->count; r++) {
        float v;
        size_t e = ds_first_nonfinite_(st->embed_dtype, ps->emb + r * emb * esz, emb, &v);
        if (e < emb)
          return dpod_errf(err, errlen, DPOD_ENUMERIC, "%s: record %zu (prompt %zu): 'embedding' holds %g at "
                          "element %zu", path, r, first + r, v, e);
      }
    }
    first += ps->count;
  }
  if (first != ds->num_prompts)
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: the prompt shards hold %zu prompts, 'prompts.count' says %zu",
                    mpath, first, ds->num_prompts);

  const char *empty = NULL;
  if (cJSON_GetObjectItemCaseSensitive(m, "empty_prompt")) {
    if (!(empty = ds_json_file_(m, "empty_prompt")))
      return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'empty_prompt' is not a plain file name", mpath);
    int rc = ds_open_shard_(dir, empty, path, sizeof path, &st->empty_f, err, errlen);
    if (rc) return rc;
    const st_tensor *t;
    int64_t dims[2] = {ds->text_len, ds->embed_dim};
    if ((rc = ds_expect_tensor_(st->empty_f, path, "embedding", st->embed_dtype, 2, dims, &t, err, errlen)) != 0)
      return rc;
    float v;
    size_t e = ds_first_nonfinite_(st->embed_dtype, t->data, emb, &v);
    if (e < emb)
      return dpod_errf(err, errlen, DPOD_ENUMERIC, "%s: 'embedding' holds %g at element %zu", path, v, e);
    st->empty = t->data;
    if (ds->pooled_dim > 0) {
      int64_t pdims[1] = {ds->pooled_dim};
      if ((rc = ds_expect_tensor_(st->empty_f, path, "pooled", st->embed_dtype, 1, pdims, &t, err, errlen)) != 0)
        return rc;
      e = ds_first_nonfinite_(st->embed_dtype, t->data, (size_t)ds->pooled_dim, &v);
      if (e < (size_t)ds->pooled_dim)
        return dpod_errf(err, errlen, DPOD_ENUMERIC, "%s: 'pooled' holds %g at element %zu", path, v, e);
      st->empty_pooled = t->data;
    }
    ds->has_empty_prompt = 1;
  }
  return 0;
}

/* The posterior tensors of pair shard s (records first .. first + count - 1 of the split): present with
 * the manifest's dtype and shape when the manifest announces them, absent when it does not (a shard with
 * flipped posteriors and no unflipped ones, or any the manifest does not name, is malformed), means
 * finite and logvars never NaN (check_values). */
static int ds_open_posteriors_(ds_shard_ *s, const char *path, const char *split, size_t first, size_t count,
                               const struct dataset_store_ *st, const dpo_dataset *ds, int check_values, char *err,
                               size_t errlen) {
  const int kinds = !ds->posterior ? 0 : ds->posterior_flipped ? PREF_POST_KINDS : 2;
  const int64_t dims[4] = {(int64_t)count, ds->channels, ds->height, ds->width};
  const size_t img = dataset_image_size(ds), lsz = st_dtype_size(st->latent_dtype);
  for (int k = 0; k < 2 * PREF_POST_KINDS; k++) {
    const int side = k % 2, kind = k / 2;
    const char *name = pref_posterior_tensor(side, kind);
    if (kind >= kinds) {
      if (st_find(s->f, name))
        return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: holds '%s' but the manifest announces no %s", path, name,
                         !ds->posterior ? "posteriors ('posterior' missing)" : "flipped posteriors (posterior.flipped "
                         "is false)");
      continue;
    }
    const st_tensor *t;
    int rc = ds_expect_tensor_(s->f, path, name, st->latent_dtype, 4, dims, &t, err, errlen);
    if (rc) return rc;
    s->post[side][kind] = t->data;
    if (!check_values) continue;
    for (size_t r = 0; r < count; r++) {
      const unsigned char *x = s->post[side][kind] + r * img * lsz;
      float v = 0;
      size_t e = img;
      if (kind & 1) { /* a logvar: +-inf is clamped at use, NaN is refused */
        for (size_t j = 0; j < img && e == img; j++) {
          float y;
          ds_load_(st->latent_dtype, x + j * lsz, 1, &y);
          if (isnan(y)) e = j, v = y;
        }
      } else {
        e = ds_first_nonfinite_(st->latent_dtype, x, img, &v);
      }
      if (e < img)
        return dpod_errf(err, errlen, DPOD_ENUMERIC, "%s: record %zu (pair %zu of '%s'): '%s' holds %g at element %zu",
                         path, r, first + r, split, name, v, e);
    }
  }
  return 0;
}

static int ds_open_split_(const char *dir, const cJSON *m, const char *mpath, const char *split,
                          struct dataset_store_ *st, dpo_dataset *ds, int check_values, char *err,
                          size_t errlen) {
  const cJSON *splits = cJSON_GetObjectItemCaseSensitive(m, "splits");
  /* Not only for the message: the names listed below are those of an object's members. */
  if (!cJSON_IsObject(splits))
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: needs a 'splits' object (split name: {pairs, shards})", mpath);
  const cJSON *sp = cJSON_GetObjectItemCaseSensitive(splits, split);
  if (!cJSON_IsObject(sp)) {
    char names[256] = "";
    size_t k = 0;
    const cJSON *o;
    cJSON_ArrayForEach(o, splits) {
      if (k < sizeof names) k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", k ? ", " : "", o->string);
    }
    return dpod_errf(err, errlen, DPOD_ENOENT, "%s: no split '%s' (the dataset has: %s)", mpath, split,
                    k ? names : "none");
  }
  int64_t pairs;
  const cJSON *shards = cJSON_GetObjectItemCaseSensitive(sp, "shards");
  if (ds_json_int_(sp, "pairs", 0, 4e15, &pairs) != 0 || !cJSON_IsArray(shards))
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: split '%s' needs 'pairs' and a 'shards' array", mpath, split);
  ds->num_pairs = (size_t)pairs;
  size_t n = (size_t)cJSON_GetArraySize(shards);
  if (!(st->shards = calloc(n ? n : 1, sizeof *st->shards)))
    return dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", mpath);
  size_t img = dataset_image_size(ds), lsz = st_dtype_size(st->latent_dtype), first = 0;
  char path[4096];
  const cJSON *o;
  cJSON_ArrayForEach(o, shards) {
    const char *file = ds_json_file_(o, "file");
    int64_t c;
    if (!file || ds_json_int_(o, "pairs", 1, (double)INT32_MAX, &c) != 0)
      return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: split '%s' shard %zu needs a plain 'file' name and a "
                      "positive 'pairs'", mpath, split, st->nshards);
    ds_shard_ *s = &st->shards[st->nshards++];
    int rc = ds_open_shard_(dir, file, path, sizeof path, &s->f, err, errlen);
    if (rc) return rc;
    if (!(s->path = strdup(path))) return dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    const st_tensor *tw = NULL, *tl = NULL, *tp;
    int64_t dims[4] = {c, ds->channels, ds->height, ds->width};
    if (!ds->posterior_only &&
        ((rc = ds_expect_tensor_(s->f, path, "winner", st->latent_dtype, 4, dims, &tw, err, errlen)) != 0 ||
         (rc = ds_expect_tensor_(s->f, path, "loser", st->latent_dtype, 4, dims, &tl, err, errlen)) != 0))
      return rc;
    if ((rc = ds_open_posteriors_(s, path, split, first, (size_t)c, st, ds, check_values, err, errlen)) != 0) return rc;
    tp = st_find(s->f, "prompt");
    st_dtype pd = tp && tp->dtype == ST_I64 ? ST_I64 : ST_I32;
    if ((rc = ds_expect_tensor_(s->f, path, "prompt", pd, 1, dims, &tp, err, errlen)) != 0) return rc;
    s->winner = tw ? tw->data : NULL;
    s->loser = tl ? tl->data : NULL;
    s->prompt = tp->data;
    s->prompt_dtype = pd;
    if (ds->time_ids != DATASET_TIME_IDS_DEFAULT) {
      int image = ds->time_ids == DATASET_TIME_IDS_IMAGE;
      const st_tensor *ttw = NULL, *ttl = NULL;
      int64_t tdims[2] = {c, DATASET_NUM_TIME_IDS};
      if ((rc = ds_expect_tensor_(s->f, path, image ? "winner_time_ids" : "time_ids", ST_F32, 2, tdims, &ttw, err,
                                  errlen)) != 0 ||
          (image && (rc = ds_expect_tensor_(s->f, path, "loser_time_ids", ST_F32, 2, tdims, &ttl, err, errlen)) != 0))
        return rc;
      s->tw = ttw->data;
      s->tl = image ? ttl->data : NULL;
      for (int k = 0; k < (image ? 2 : 1); k++) {
        float v;
        size_t nt = (size_t)c * DATASET_NUM_TIME_IDS;
        size_t e = ds_first_nonfinite_(ST_F32, k ? s->tl : s->tw, nt, &v);
        if (e < nt)
          return dpod_errf(err, errlen, DPOD_ENUMERIC, "%s: record %zu (pair %zu of '%s'): '%s' holds %g", path,
                          e / DATASET_NUM_TIME_IDS, first + e / DATASET_NUM_TIME_IDS, split,
                          k ? "loser_time_ids" : image ? "winner_time_ids" : "time_ids", v);
      }
    }
    s->first = first;
    s->count = (size_t)c;
    for (size_t r = 0; r < s->count; r++) {
      int64_t p = ds_prompt_at_(s, r);
      if (p < 0 || (uint64_t)p >= ds->num_prompts)
        return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: record %zu (pair %zu of '%s'): prompt index %lld is out "
                        "of range [0, %zu)", path, r, first + r, split, (long long)p, ds->num_prompts);
      if (!check_values || ds->posterior_only) continue;
      for (int k = 0; k < 2; k++) {
        const unsigned char *x = (k ? s->loser : s->winner) + r * img * lsz;
        float v;
        size_t e = ds_first_nonfinite_(st->latent_dtype, x, img, &v);
        if (e < img)
          return dpod_errf(err, errlen, DPOD_ENUMERIC, "%s: record %zu (pair %zu of '%s'): '%s' holds %g at "
                          "element %zu", path, r, first + r, split, k ? "loser" : "winner", v, e);
      }
    }
    first += s->count;
  }
  if (first != ds->num_pairs)
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: the shards of split '%s' hold %zu pairs, its 'pairs' says %zu",
                    mpath, split, first, ds->num_pairs);
  return 0;
}

/* The manifest's optional "posterior": {"scaling_factor", "flipped", "frozen_latents"} (version 2). */
static int ds_parse_posterior_(const cJSON *m, const char *mpath, int64_t version, dpo_dataset *ds, char *err,
                               size_t errlen) {
  const cJSON *po = cJSON_GetObjectItemCaseSensitive(m, "posterior");
  if (!po) return 0;
  if (version < PREF_FORMAT_VERSION_POSTERIOR)
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'posterior' needs format version %d (the manifest says %lld)",
                     mpath, PREF_FORMAT_VERSION_POSTERIOR, (long long)version);
  const cJSON *sf = cJSON_GetObjectItemCaseSensitive(po, "scaling_factor");
  if (!cJSON_IsObject(po) || !cJSON_IsNumber(sf) || !(sf->valuedouble > 0 && sf->valuedouble <= 100))
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'posterior' needs a 'scaling_factor' in (0, 100] (the VAE's: "
                     "0.18215 for SD 1.x, 0.13025 for SDXL)", mpath);
  const cJSON *fl = cJSON_GetObjectItemCaseSensitive(po, "flipped");
  const cJSON *fz = cJSON_GetObjectItemCaseSensitive(po, "frozen_latents");
  if ((fl && !cJSON_IsBool(fl)) || (fz && !cJSON_IsBool(fz)))
    return dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'posterior.flipped' and 'posterior.frozen_latents' must be true "
                     "or false", mpath);
  ds->posterior = 1;
  ds->scaling_factor = sf->valuedouble;
  ds->posterior_flipped = cJSON_IsTrue(fl);
  ds->posterior_only = fz && cJSON_IsFalse(fz);
  return 0;
}

int dataset_open(const char *dir, const dataset_open_params *p, dpo_dataset *ds, char *err, size_t errlen) {
  memset(ds, 0, sizeof *ds);
  dataset_open_params defaults = dataset_open_default_params();
  if (!p) p = &defaults;
  const char *split = p->split ? p->split : "train";
  char mpath[4096];
  snprintf(mpath, sizeof mpath, "%s/%s", dir, PREF_MANIFEST);
  int rc = DPOD_EFORMAT;
  cJSON *m = NULL;
  char *text = NULL;
  if (dpod_path_inside(mpath, dir) == 0)
    return dpod_errf(err, errlen, DPOD_EACCESS, "%s: a symbolic link leading outside the dataset directory", mpath);
  if ((rc = dpod_read_file(mpath, DS_MANIFEST_MAX, &text, NULL, err, errlen)) != 0) {
    if (rc == DPOD_ENOENT)
      dpod_errf(err, errlen, rc, "%s: cannot read: no such file (not a preference dataset, or an unfinished one)",
               mpath);
    return rc;
  }
  if (!(m = cJSON_Parse(text))) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: not valid JSON", mpath);
    goto fail;
  }
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(m, "format");
  int64_t version;
  if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, PREF_FORMAT_NAME) != 0 ||
      ds_json_int_(m, "version", 0, 1e9, &version) != 0) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: not a %s manifest", mpath, PREF_FORMAT_NAME);
    goto fail;
  }
  if (version != PREF_FORMAT_VERSION && version != PREF_FORMAT_VERSION_POSTERIOR) {
    rc = dpod_errf(err, errlen, DPOD_EUNSUPPORTED, "%s: format version %lld, this build reads %d and %d", mpath,
                  (long long)version, PREF_FORMAT_VERSION, PREF_FORMAT_VERSION_POSTERIOR);
    goto fail;
  }
  struct dataset_store_ *st = ds->store_ = calloc(1, sizeof *st);
  if (!st) {
    rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", mpath);
    goto fail;
  }
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(m, "latent_shape");
  int64_t dims[3] = {0}, L, D;
  int ok = cJSON_IsArray(shape) && cJSON_GetArraySize(shape) == 3;
  for (int i = 0; ok && i < 3; i++) {
    const cJSON *v = cJSON_GetArrayItem(shape, i);
    ok = cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble <= 65536 && v->valuedouble == floor(v->valuedouble);
    if (ok) dims[i] = (int64_t)v->valuedouble;
  }
  if (!ok || ds_json_int_(m, "text_len", 1, 1 << 20, &L) != 0 || ds_json_int_(m, "embed_dim", 1, 1 << 20, &D) != 0) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: needs 'latent_shape' [C, H, W], 'text_len' and 'embed_dim' "
                  "as positive integers", mpath);
    goto fail;
  }
  if (ds_parse_dtype_(m, "latent_dtype", &st->latent_dtype) != 0 ||
      ds_parse_dtype_(m, "embed_dtype", &st->embed_dtype) != 0) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'latent_dtype' and 'embed_dtype' must be \"F16\" or \"F32\"",
                  mpath);
    goto fail;
  }
  ds->channels = (int)dims[0];
  ds->height = (int)dims[1];
  ds->width = (int)dims[2];
  ds->text_len = (int)L;
  ds->embed_dim = (int)D;
  /* SDXL's added conditioning: optional, and then checked like everything else. */
  if (cJSON_GetObjectItemCaseSensitive(m, "pooled_dim")) {
    int64_t P;
    if (ds_json_int_(m, "pooled_dim", 1, 1 << 20, &P) != 0) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'pooled_dim' must be a positive integer", mpath);
      goto fail;
    }
    ds->pooled_dim = (int)P;
  }
  const cJSON *tid = cJSON_GetObjectItemCaseSensitive(m, "time_ids");
  if (tid) {
    if (cJSON_IsString(tid) && strcmp(tid->valuestring, "pair") == 0) ds->time_ids = DATASET_TIME_IDS_PAIR;
    else if (cJSON_IsString(tid) && strcmp(tid->valuestring, "image") == 0) ds->time_ids = DATASET_TIME_IDS_IMAGE;
    else {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: 'time_ids' must be \"pair\" or \"image\"", mpath);
      goto fail;
    }
  }
  if ((rc = ds_parse_posterior_(m, mpath, version, ds, err, errlen)) != 0) goto fail;
  if (p->pooled_dim > 0 && ds->pooled_dim == 0) {
    rc = dpod_errf(err, errlen, DPOD_EINVAL, "%s: the model's added conditioning (SDXL's text_time) needs pooled "
                  "prompt embeddings of width %d, and the dataset stores none ('pooled_dim' missing: re-import with "
                  "--pooled)", mpath, p->pooled_dim);
    goto fail;
  }
  if (p->pooled_dim > 0 && ds->pooled_dim != p->pooled_dim) {
    rc = dpod_errf(err, errlen, DPOD_ESHAPE, "%s: pooled prompt embeddings are %d wide, the model's added "
                  "conditioning takes %d", mpath, ds->pooled_dim, p->pooled_dim);
    goto fail;
  }
  if ((p->channels && p->channels != ds->channels) || (p->height && p->height != ds->height) ||
      (p->width && p->width != ds->width)) {
    rc = dpod_errf(err, errlen, DPOD_ESHAPE, "%s: latents are [%d, %d, %d], the model expects [%d, %d, %d]", mpath,
                  ds->channels, ds->height, ds->width, p->channels, p->height, p->width);
    goto fail;
  }
  if (p->embed_dim && p->embed_dim != ds->embed_dim) {
    rc = dpod_errf(err, errlen, DPOD_ESHAPE, "%s: prompt embeddings are %d wide, the model's cross_attention_dim "
                  "is %d", mpath, ds->embed_dim, p->embed_dim);
    goto fail;
  }
  if ((rc = ds_open_prompts_(dir, m, mpath, st, ds, p->check_values, err, errlen)) != 0) goto fail;
  if ((rc = ds_open_split_(dir, m, mpath, split, st, ds, p->check_values, err, errlen)) != 0) goto fail;
  cJSON_Delete(m);
  free(text);
  return 0;
fail:
  cJSON_Delete(m);
  free(text);
  dataset_free(ds);
  return rc;
}

/* ---- access ------------------------------------------------------------------------------------- */

static const ds_shard_ *ds_find_shard_(const struct dataset_store_ *st, size_t i, size_t *r) {
  size_t lo = 0, hi = st->nshards;
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (st->shards[mid].first <= i) lo = mid;
    else hi = mid;
  }
  *r = i - st->shards[lo].first;
  return &st->shards[lo];
}

int dataset_copy_pair(const dpo_dataset *ds, size_t i, float *w, float *l) {
  if (i >= ds->num_pairs) return DPOD_EINVAL;
  size_t img = dataset_image_size(ds);
  if (!ds->store_) {
    if (w) memcpy(w, dataset_winner(ds, i), img * sizeof(float));
    if (l) memcpy(l, dataset_loser(ds, i), img * sizeof(float));
    return 0;
  }
  size_t r;
  const ds_shard_ *s = ds_find_shard_(ds->store_, i, &r);
  size_t bytes = img * st_dtype_size(ds->store_->latent_dtype);
  if (ds->posterior_only) {
    /* No frozen latents: the posterior's mode, scaled as a drawn latent would be. */
    for (int k = 0; k < 2; k++) {
      float *out = k ? l : w;
      if (!out) continue;
      ds_load_(ds->store_->latent_dtype, s->post[k][PREF_POST_MEAN] + r * bytes, img, out);
      for (size_t j = 0; j < img; j++) out[j] = (float)(out[j] * ds->scaling_factor);
    }
    return 0;
  }
  if (w) ds_load_(ds->store_->latent_dtype, s->winner + r * bytes, img, w);
  if (l) ds_load_(ds->store_->latent_dtype, s->loser + r * bytes, img, l);
  return 0;
}

int dataset_copy_posterior(const dpo_dataset *ds, size_t i, int loser, int flipped, float *mean, float *logvar) {
  if (i >= ds->num_pairs) return DPOD_EINVAL;
  if (!ds->posterior || !ds->store_ || (flipped && !ds->posterior_flipped)) return DPOD_ENOENT;
  size_t r, img = dataset_image_size(ds);
  const ds_shard_ *s = ds_find_shard_(ds->store_, i, &r);
  const size_t bytes = img * st_dtype_size(ds->store_->latent_dtype);
  const int side = loser != 0, k = flipped ? PREF_POST_FLIP_MEAN : PREF_POST_MEAN;
  if (mean) ds_load_(ds->store_->latent_dtype, s->post[side][k] + r * bytes, img, mean);
  if (logvar) ds_load_(ds->store_->latent_dtype, s->post[side][k + 1] + r * bytes, img, logvar);
  return 0;
}

uint32_t dataset_prompt_index(const dpo_dataset *ds, size_t i) {
  if (i >= ds->num_pairs) return 0;
  if (!ds->store_) return ds->prompt_of[i];
  size_t r;
  const ds_shard_ *s = ds_find_shard_(ds->store_, i, &r);
  return (uint32_t)ds_prompt_at_(s, r);
}

/* The prompt shard holding prompt-table row `prompt`. */
static const ds_prompt_shard_ *ds_find_prompt_shard_(const struct dataset_store_ *st, uint32_t prompt) {
  size_t lo = 0, hi = st->npshards;
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (st->pshards[mid].first <= prompt) lo = mid;
    else hi = mid;
  }
  return &st->pshards[lo];
}

int dataset_copy_prompt_row(const dpo_dataset *ds, uint32_t prompt, float *emb) {
  if (prompt >= ds->num_prompts) return DPOD_EINVAL;
  size_t n = dataset_prompt_size(ds);
  if (!ds->store_) {
    memcpy(emb, ds->embeddings + (size_t)prompt * n, n * sizeof(float));
    return 0;
  }
  const struct dataset_store_ *st = ds->store_;
  const ds_prompt_shard_ *ps = ds_find_prompt_shard_(st, prompt);
  ds_load_(st->embed_dtype, ps->emb + (prompt - ps->first) * n * st_dtype_size(st->embed_dtype), n, emb);
  return 0;
}

int dataset_copy_prompt(const dpo_dataset *ds, size_t i, float *emb) {
  if (i >= ds->num_pairs) return DPOD_EINVAL;
  return dataset_copy_prompt_row(ds, dataset_prompt_index(ds, i), emb);
}

int dataset_copy_empty_prompt(const dpo_dataset *ds, float *emb) {
  if (!ds->has_empty_prompt) return DPOD_ENOENT;
  size_t n = dataset_prompt_size(ds);
  if (!ds->store_) memcpy(emb, ds->empty_prompt, n * sizeof(float));
  else ds_load_(ds->store_->embed_dtype, ds->store_->empty, n, emb);
  return 0;
}

int dataset_copy_pooled_row(const dpo_dataset *ds, uint32_t prompt, float *out) {
  if (ds->pooled_dim <= 0) return DPOD_ENOENT;
  if (prompt >= ds->num_prompts) return DPOD_EINVAL;
  size_t P = (size_t)ds->pooled_dim;
  if (!ds->store_) {
    memcpy(out, ds->pooled + (size_t)prompt * P, P * sizeof(float));
    return 0;
  }
  const struct dataset_store_ *st = ds->store_;
  const ds_prompt_shard_ *ps = ds_find_prompt_shard_(st, prompt);
  ds_load_(st->embed_dtype, ps->pooled + (prompt - ps->first) * P * st_dtype_size(st->embed_dtype), P, out);
  return 0;
}

int dataset_copy_empty_pooled(const dpo_dataset *ds, float *out) {
  if (ds->pooled_dim <= 0 || !ds->has_empty_prompt || !ds->store_ || !ds->store_->empty_pooled) return DPOD_ENOENT;
  ds_load_(ds->store_->embed_dtype, ds->store_->empty_pooled, (size_t)ds->pooled_dim, out);
  return 0;
}

int dataset_copy_time_ids(const dpo_dataset *ds, size_t i, float *w, float *l) {
  if (i >= ds->num_pairs) return DPOD_EINVAL;
  const size_t bytes = DATASET_NUM_TIME_IDS * sizeof(float);
  if (ds->time_ids == DATASET_TIME_IDS_DEFAULT || !ds->store_) {
    /* The reference script's: original and target size the training resolution, no crop. */
    const float h = 8.0f * (float)ds->height, wd = 8.0f * (float)ds->width;
    const float def[DATASET_NUM_TIME_IDS] = {h, wd, 0.0f, 0.0f, h, wd};
    if (w) memcpy(w, def, bytes);
    if (l) memcpy(l, def, bytes);
    return 0;
  }
  size_t r;
  const ds_shard_ *s = ds_find_shard_(ds->store_, i, &r);
  if (w) memcpy(w, s->tw + r * bytes, bytes);
  if (l) memcpy(l, (s->tl ? s->tl : s->tw) + r * bytes, bytes);
  return 0;
}

int dataset_fill_batch(const dpo_dataset *ds, const size_t *pairs, int b, float *x0, float *ehs, float *pooled,
                       float *time_ids) {
  const size_t img = dataset_image_size(ds), emb = dataset_prompt_size(ds), P = (size_t)ds->pooled_dim;
  const size_t T = DATASET_NUM_TIME_IDS;
  if (pooled && P == 0) return DPOD_ENOENT;
  for (int i = 0; i < b; i++) {
    const size_t wi = (size_t)i, li = (size_t)(b + i);
    int rc = dataset_copy_pair(ds, pairs[i], x0 + wi * img, x0 + li * img);
    if (rc) return rc;
    uint32_t prompt = dataset_prompt_index(ds, pairs[i]);
    dataset_copy_prompt_row(ds, prompt, ehs + wi * emb);
    memcpy(ehs + li * emb, ehs + wi * emb, emb * sizeof(float));
    if (pooled) {
      dataset_copy_pooled_row(ds, prompt, pooled + wi * P);
      memcpy(pooled + li * P, pooled + wi * P, P * sizeof(float));
    }
    if (time_ids) dataset_copy_time_ids(ds, pairs[i], time_ids + wi * T, time_ids + li * T);
  }
  return 0;
}

const float *dataset_winner(const dpo_dataset *ds, size_t pair) {
  return ds->latents ? ds->latents + pair * 2 * dataset_image_size(ds) : NULL;
}

const float *dataset_loser(const dpo_dataset *ds, size_t pair) {
  return ds->latents ? ds->latents + (pair * 2 + 1) * dataset_image_size(ds) : NULL;
}

const float *dataset_prompt(const dpo_dataset *ds, size_t pair) {
  return ds->embeddings ? ds->embeddings + (size_t)ds->prompt_of[pair] * dataset_prompt_size(ds) : NULL;
}
