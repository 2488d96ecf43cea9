/* dpo-tool import and dpo-tool synth. See tool_data.h and docs/dataset-format.md. */
#include "tool_data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "dpod_error.h"
#include "pref_format.h"
#include "safetensors.h"
#include "synth.h"
#include "dpod_parse.h"

/* ---- small helpers ------------------------------------------------------------------------------ */

int tool_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
  uint64_t v;
  if (dpod_parse_u64(s, hi, &v) != 0 || v < lo) {
    fprintf(stderr, "dpo-tool %s: %s wants an integer in [%llu, %llu], got '%s'\n", cmd, opt,
            (unsigned long long)lo, (unsigned long long)hi, s);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_double(const char *cmd, const char *opt, const char *s, double lo, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !isfinite(v) || v < lo) {
    fprintf(stderr, "dpo-tool %s: %s wants a number >= %g, got '%s'\n", cmd, opt, lo, s);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_dtype(const char *cmd, const char *s, st_dtype *out) {
  if (strcmp(s, "f16") == 0 || strcmp(s, "F16") == 0) *out = ST_F16;
  else if (strcmp(s, "f32") == 0 || strcmp(s, "F32") == 0) *out = ST_F32;
  else {
    fprintf(stderr, "dpo-tool %s: --dtype wants f16 or f32, got '%s'\n", cmd, s);
    return -1;
  }
  return 0;
}

/* A string-keyed open-addressing table; keys are borrowed (they live in mapped files or cJSON). */
typedef struct {
  const char **keys;
  const void **values;
  size_t cap, count;
} name_table;

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static void name_table_free(name_table *t) {
  free(t->keys);
  free(t->values);
  memset(t, 0, sizeof *t);
}

static const void *name_table_get(const name_table *t, const char *key) {
  if (!t->cap) return NULL;
  for (size_t i = name_hash(key) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    if (!t->keys[i]) return NULL;
    if (strcmp(t->keys[i], key) == 0) return t->values[i];
  }
}

/* Inserts key unless present; returns 1 if inserted, 0 if present, -1 out of memory. */
static int name_table_put(name_table *t, const char *key, const void *value) {
  if (2 * (t->count + 1) > t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 1024;
    const char **k = calloc(cap, sizeof *k);
    const void **v = calloc(cap, sizeof *v);
    if (!k || !v) {
      free(k);
      free(v);
      return -1;
    }
    for (size_t i = 0; i < t->cap; i++) {
      if (!t->keys[i]) continue;
      size_t j = name_hash(t->keys[i]) & (cap - 1);
      while (k[j]) j = (j + 1) & (cap - 1);
      k[j] = t->keys[i];
      v[j] = t->values[i];
    }
    free(t->keys);
    free(t->values);
    t->keys = k;
    t->values = v;
    t->cap = cap;
  }
  size_t i = name_hash(key) & (t->cap - 1);
  for (; t->keys[i]; i = (i + 1) & (t->cap - 1))
    if (strcmp(t->keys[i], key) == 0) return 0;
  t->keys[i] = key;
  t->values[i] = value;
  t->count++;
  return 1;
}

/* ---- import ------------------------------------------------------------------------------------- */

#define IMPORT_MAX_FILES 256

typedef struct {
  st_file *files[IMPORT_MAX_FILES];
  int nfiles;
  name_table latents, embeddings;  /* name -> const st_tensor * */
  name_table pooled, time_ids;     /* SDXL: caption -> pooled embedding, image uid -> its 6 time ids */
  int has_pooled, has_time_ids;    /* --pooled / --time-ids given */
  int P;                           /* pooled width, fixed by the first one */
  float *pe, *tw, *tl;             /* conversion buffers for those */
  name_table captions;             /* caption -> prompt index + 1 (as a pointer-sized integer) */
  char **captions_owned;           /* the captions table's keys */
  size_t ncaptions, capcaptions;
  int C, H, W, L, D;               /* shapes fixed by the first latent / embedding used */
  float *w, *l, *e;                /* conversion buffers */
  uint32_t prompts;
  pref_writer *out;               /* opened on the first kept pair: it needs the shapes */
  const pref_writer_params *wp;
  const char *outdir;
  int skip_missing;
  /* Time ids given on the pairs' JSONL lines (see import_line_time_ids): the form of the first labelled
   * line, which every other line must share, and where that line is. */
  int line_form;                   /* -1 undecided, else DATASET_TIME_IDS_* */
  char line_form_where[4200];
  /* VAE posteriors: image uid -> diffusers' latent_dist.parameters [2C, H, W] (mean; logvar). */
  name_table post, post_flip;      /* --posteriors, --flipped-posteriors */
  int has_post, has_post_flip, posterior_only; /* posterior_only: no --latents */
  float *pbuf;                     /* [2 images][PREF_POST_KINDS][C, H, W] */
} importer;

typedef struct {
  size_t lines, kept, ties, flipped, missing;
} import_counts;

static int import_map(importer *im, const char *path, name_table *t) {
  if (im->nfiles == IMPORT_MAX_FILES) {
    fprintf(stderr, "dpo-tool import: more than %d input files\n", IMPORT_MAX_FILES);
    return -1;
  }
  char err[1024];
  st_file *f = NULL;
  int rc = st_open(path, &f, err, sizeof err);
  if (rc) {
    fprintf(stderr, "dpo-tool import: %s (%s)\n", err, dpod_err_name(rc));
    return -1;
  }
  im->files[im->nfiles++] = f;
  size_t dup = 0;
  for (size_t i = 0; i < st_count(f); i++) {
    const st_tensor *tn = st_at(f, i);
    int r = name_table_put(t, tn->name, tn);
    if (r < 0) {
      fprintf(stderr, "dpo-tool import: out of memory\n");
      return -1;
    }
    dup += r == 0;
  }
  if (dup) fprintf(stderr, "dpo-tool import: %s: %zu names already seen in an earlier file; the first kept\n", path, dup);
  return 0;
}

static int is_float_dtype(st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64; }

/* The latent named uid as float32 into im->w (loser 0) or im->l (loser 1); shapes [C, H, W] or
 * [1, C, H, W], fixed by the first one. Returns 1 if absent, 0 on success, -1 on a bad tensor (reported). */
static int import_latent(importer *im, const char *where, const char *uid, int loser) {
  const st_tensor *t = name_table_get(&im->latents, uid);
  if (!t) return 1;
  const int64_t *s = t->shape;
  int nd = t->ndim;
  if (nd == 4 && s[0] == 1) {
    s++;
    nd = 3;
  }
  if (!is_float_dtype(t->dtype) || nd != 3 || s[0] < 1 || s[1] < 1 || s[2] < 1 || s[0] > 4096 || s[1] > 65536 ||
      s[2] > 65536) {
    fprintf(stderr, "dpo-tool import: %s: latent '%s' is %s with %d dims, expected a float [C, H, W]\n", where, uid,
            st_dtype_name(t->dtype), t->ndim);
    return -1;
  }
  if (!im->C) {
    im->C = (int)s[0];
    im->H = (int)s[1];
    im->W = (int)s[2];
    if (!(im->w = malloc(sizeof(float) * (size_t)t->numel)) || !(im->l = malloc(sizeof(float) * (size_t)t->numel))) {
      fprintf(stderr, "dpo-tool import: out of memory\n");
      return -1;
    }
  }
  if (s[0] != im->C || s[1] != im->H || s[2] != im->W) {
    fprintf(stderr, "dpo-tool import: %s: latent '%s' is [%lld, %lld, %lld], earlier latents are [%d, %d, %d]\n",
            where, uid, (long long)s[0], (long long)s[1], (long long)s[2], im->C, im->H, im->W);
    return -1;
  }
  float *out = loser ? im->l : im->w;
  st_to_f32(t, out);
  for (int64_t i = 0; i < t->numel; i++) {
    if (!isfinite(out[i])) {
      fprintf(stderr, "dpo-tool import: %s: latent '%s' holds %g at element %lld\n", where, uid, out[i], (long long)i);
      return -1;
    }
  }
  return 0;
}

/* The embedding named `caption` as float32 into im->e ([L, D] or [1, L, D]). Same returns as above. */
static int import_embedding(importer *im, const char *where, const char *caption) {
  const st_tensor *t = name_table_get(&im->embeddings, caption);
  if (!t) return 1;
  const int64_t *s = t->shape;
  int nd = t->ndim;
  if (nd == 3 && s[0] == 1) {
    s++;
    nd = 2;
  }
  if (!is_float_dtype(t->dtype) || nd != 2 || s[0] < 1 || s[1] < 1 || s[0] > 1 << 20 || s[1] > 1 << 20) {
    fprintf(stderr, "dpo-tool import: %s: embedding of caption \"%s\" is %s with %d dims, expected a float [L, D]\n",
            where, caption, st_dtype_name(t->dtype), t->ndim);
    return -1;
  }
  if (!im->L) {
    im->L = (int)s[0];
    im->D = (int)s[1];
    if (!(im->e = malloc(sizeof(float) * (size_t)t->numel))) {
      fprintf(stderr, "dpo-tool import: out of memory\n");
      return -1;
    }
  }
  if (s[0] != im->L || s[1] != im->D) {
    fprintf(stderr, "dpo-tool import: %s: embedding of caption \"%s\" is [%lld, %lld], earlier ones are [%d, %d]\n",
            where, caption, (long long)s[0], (long long)s[1], im->L, im->D);
    return -1;
  }
  st_to_f32(t, im->e);
  return 0;
}

/* A vector [n] or [1, n] of table t named `key` as float32 into out, its width fixed by *width (0: set it
 * from this one). `what` names it in messages. Same returns as above. */
static int import_vector(const name_table *t, const char *where, const char *what, const char *key, int *width,
                         float **out) {
  const st_tensor *x = name_table_get(t, key);
  if (!x) return 1;
  int64_t n = x->ndim == 1 ? x->shape[0] : x->ndim == 2 && x->shape[0] == 1 ? x->shape[1] : -1;
  if (!is_float_dtype(x->dtype) || n < 1 || n > 1 << 20) {
    fprintf(stderr, "dpo-tool import: %s: %s '%s' is %s with %d dims, expected a float vector\n", where, what, key,
            st_dtype_name(x->dtype), x->ndim);
    return -1;
  }
  if (!*width) {
    *width = (int)n;
    if (!(*out = malloc(sizeof(float) * (size_t)n))) {
      fprintf(stderr, "dpo-tool import: out of memory\n");
      return -1;
    }
  }
  if (n != *width) {
    fprintf(stderr, "dpo-tool import: %s: %s '%s' has %lld values, expected %d\n", where, what, key, (long long)n, *width);
    return -1;
  }
  st_to_f32(x, *out);
  for (int64_t i = 0; i < n; i++)
    if (!isfinite((*out)[i])) {
      fprintf(stderr, "dpo-tool import: %s: %s '%s' holds %g at element %lld\n", where, what, key, (*out)[i], (long long)i);
      return -1;
    }
  return 0;
}

/* Both images' time ids into im->tw and im->tl: 0, 1 missing, -1 error. */
static int import_time_ids(importer *im, const char *where, const char *win, const char *lose) {
  int six = DATASET_NUM_TIME_IDS, r;
  /* The width is preset, so the buffers (allocated up front) are never replaced. */
  if ((r = import_vector(&im->time_ids, where, "time ids of image", win, &six, &im->tw)) != 0) return r;
  return import_vector(&im->time_ids, where, "time ids of image", lose, &six, &im->tl);
}

static const char *json_str(const cJSON *o, const char *key) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* The JSON array `key` of a pairs line as exactly six finite numbers (float32-representable) into out. */
static int json_time_ids(const cJSON *row, const char *where, const char *key, float *out) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(row, key);
  if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != DATASET_NUM_TIME_IDS) {
    fprintf(stderr, "dpo-tool import: %s: '%s' must be an array of %d numbers (original h, w, crop top, left, "
            "target h, w)\n", where, key, DATASET_NUM_TIME_IDS);
    return -1;
  }
  int k = 0;
  for (const cJSON *v = a->child; v; v = v->next, k++) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > 3.4e38) {
      fprintf(stderr, "dpo-tool import: %s: '%s' element %d is not a finite number\n", where, key, k);
      return -1;
    }
    out[k] = (float)v->valuedouble;
  }
  return 0;
}

/* Image uid's posterior in table t (`what` names its option) into im->pbuf at `slot` (mean, then logvar
 * [C, H, W] each): a float tensor [2C, H, W] or [1, 2C, H, W], diffusers' `latent_dist.parameters`
 * (mean in the first C channels, logvar in the rest). Without --latents the first one fixes the shape.
 * Returns 1 if absent, 0 on success, -1 on a bad tensor (reported). */
static int import_posterior(importer *im, const char *where, const name_table *t, const char *what, const char *uid,
                            int slot) {
  const st_tensor *x = name_table_get(t, uid);
  if (!x) return 1;
  const int lead = x->ndim == 4 && x->shape[0] == 1;
  const int64_t *s = x->shape + lead;
  if (!is_float_dtype(x->dtype) || x->ndim - lead != 3 || s[0] < 2 || s[0] % 2 || s[0] > 8192 || s[1] < 1 ||
      s[2] < 1 || s[1] > 65536 || s[2] > 65536) {
    fprintf(stderr, "dpo-tool import: %s: %s of image '%s' is %s with %d dims, expected a float [2C, H, W] (mean, "
            "then logvar: diffusers' latent_dist.parameters)\n", where, what, uid, st_dtype_name(x->dtype), x->ndim);
    return -1;
  }
  if (!im->C) {
    im->C = (int)s[0] / 2;
    im->H = (int)s[1];
    im->W = (int)s[2];
  }
  if (s[0] != 2 * (int64_t)im->C || s[1] != im->H || s[2] != im->W) {
    fprintf(stderr, "dpo-tool import: %s: %s of image '%s' is [%lld, %lld, %lld], expected [%d, %d, %d] (twice the "
            "latent channels)\n", where, what, uid, (long long)s[0], (long long)s[1], (long long)s[2], 2 * im->C, im->H,
            im->W);
    return -1;
  }
  const size_t img = (size_t)im->C * im->H * im->W;
  if (!im->pbuf && !(im->pbuf = malloc(sizeof(float) * img * 2 * PREF_POST_KINDS))) {
    fprintf(stderr, "dpo-tool import: out of memory\n");
    return -1;
  }
  float *both = im->pbuf + (size_t)slot * img;
  st_to_f32(x, both);
  for (size_t i = 0; i < 2 * img; i++)
    if (i < img ? !isfinite(both[i]) : isnan(both[i])) {
      fprintf(stderr, "dpo-tool import: %s: %s of image '%s' holds %g at element %zu (of its %s)\n", where, what,
              uid, both[i], i % img, i < img ? "mean" : "logvar");
      return -1;
    }
  return 0;
}

/* Both images' posteriors (and flipped ones) into im->pbuf, q[2] pointing at them: 0, 1 missing with
 * --skip-missing (counted by the caller), -1 error (reported, a missing one without --skip-missing too). */
static int import_posteriors(importer *im, const char *where, const char *win, const char *lose, pref_posterior q[2]) {
  for (int k = 0; k < 2 * (1 + im->has_post_flip); k++) {
    const int side = k & 1, f = k >> 1;
    const char *uid = side ? lose : win, *opt = f ? "--flipped-posteriors" : "--posteriors";
    int r = import_posterior(im, where, f ? &im->post_flip : &im->post, opt + 2, uid, side * PREF_POST_KINDS + 2 * f);
    if (r < 0) return -1;
    if (r == 1 && im->skip_missing) return 1;
    if (r == 1) {
      fprintf(stderr, "dpo-tool import: %s: no posterior of image '%s' in the %s files (--skip-missing skips such "
              "pairs)\n", where, uid, opt);
      return -1;
    }
  }
  const size_t img = (size_t)im->C * im->H * im->W;
  for (int side = 0; side < 2; side++) {
    float *b = im->pbuf + (size_t)side * PREF_POST_KINDS * img;
    q[side] = (pref_posterior){b, b + img, im->has_post_flip ? b + 2 * img : NULL, im->has_post_flip ? b + 3 * img : NULL};
  }
  return 0;
}

/* SDXL time ids on a pairs line: "time_ids" [6] for the pair (winner and loser alike), or
 * "image_0_time_ids" and "image_1_time_ids" [6] per image (swapped with their images when label_0 is 0).
 * One form for the whole import, fixed by the first labelled line, and not together with --time-ids
 * files (which source would win is not obvious). *tw and *tl get the winner's and loser's rows (tl = tw
 * per pair), or NULL when the lines carry none. Returns 0 or -1 (reported). */
static int import_line_time_ids(importer *im, const cJSON *row, const char *where, int image0_wins, float *t0,
                                float *t1, const float **tw, const float **tl) {
  static const char *const PAIR = "time_ids", *const IMG0 = "image_0_time_ids", *const IMG1 = "image_1_time_ids";
  int has_pair = cJSON_GetObjectItemCaseSensitive(row, PAIR) != NULL;
  int has0 = cJSON_GetObjectItemCaseSensitive(row, IMG0) != NULL, has1 = cJSON_GetObjectItemCaseSensitive(row, IMG1) != NULL;
  *tw = *tl = NULL;
  if ((has_pair || has0 || has1) && im->has_time_ids) {
    fprintf(stderr, "dpo-tool import: %s: the line carries '%s' and --time-ids files were given: take the time ids "
            "from one source\n", where, has_pair ? PAIR : has0 ? IMG0 : IMG1);
    return -1;
  }
  if (has_pair && (has0 || has1)) {
    fprintf(stderr, "dpo-tool import: %s: the line carries both '%s' (per pair) and '%s' (per image): use one form\n",
            where, PAIR, has0 ? IMG0 : IMG1);
    return -1;
  }
  if (has0 != has1) {
    fprintf(stderr, "dpo-tool import: %s: the line carries '%s' but no '%s'\n", where, has0 ? IMG0 : IMG1,
            has0 ? IMG1 : IMG0);
    return -1;
  }
  int form = has_pair ? DATASET_TIME_IDS_PAIR : has0 ? DATASET_TIME_IDS_IMAGE : DATASET_TIME_IDS_DEFAULT;
  if (im->line_form < 0) {
    im->line_form = form;
    snprintf(im->line_form_where, sizeof im->line_form_where, "%s", where);
  } else if (form != im->line_form) {
    static const char *const what[] = {"no time ids", "'time_ids' (per pair)", "'image_0_time_ids' and "
                                       "'image_1_time_ids' (per image)"};
    fprintf(stderr, "dpo-tool import: %s: the line carries %s but %s, the first labelled line, carries %s: every "
            "line must give its time ids the same way\n", where, what[form], im->line_form_where, what[im->line_form]);
    return -1;
  }
  if (form == DATASET_TIME_IDS_PAIR) {
    if (json_time_ids(row, where, PAIR, t0) != 0) return -1;
    *tw = *tl = t0;
  } else if (form == DATASET_TIME_IDS_IMAGE) {
    if (json_time_ids(row, where, IMG0, t0) != 0 || json_time_ids(row, where, IMG1, t1) != 0) return -1;
    *tw = image0_wins ? t0 : t1;
    *tl = image0_wins ? t1 : t0;
  }
  return 0;
}

/* Adds one labelled pair: 0 added, 1 skipped as missing (counted), -1 error (reported). line_tw and
 * line_tl: the time ids the JSONL line gave (NULL: none, or they come from --time-ids files). */
static int import_pair(importer *im, const char *where, const char *split, const char *caption, const char *win,
                       const char *lose, const float *line_tw, const float *line_tl, import_counts *c) {
  int rw = 0, rl = 0;
  if (!im->posterior_only && (rw = import_latent(im, where, win, 0)) < 0) return -1;
  if (!im->posterior_only && rw == 0 && (rl = import_latent(im, where, lose, 1)) < 0) return -1;
  if (rw == 1 || rl == 1) {
    if (!im->skip_missing) {
      fprintf(stderr, "dpo-tool import: %s: no latent named '%s' in the --latents files (--skip-missing skips "
              "such pairs)\n", where, rw == 1 ? win : lose);
      return -1;
    }
    c->missing++;
    return 1;
  }
  pref_posterior post[2];
  int rq = im->has_post ? import_posteriors(im, where, win, lose, post) : 0;
  if (rq != 0) {
    c->missing += rq == 1;
    return rq;
  }
  if (im->has_time_ids) {
    int rt = import_time_ids(im, where, win, lose);
    if (rt < 0) return -1;
    if (rt == 1) {
      if (!im->skip_missing) {
        fprintf(stderr, "dpo-tool import: %s: no time ids for image '%s' or '%s' in the --time-ids files\n", where, win,
                lose);
        return -1;
      }
      c->missing++;
      return 1;
    }
  } else if (line_tw) {
    memcpy(im->tw, line_tw, sizeof(float) * DATASET_NUM_TIME_IDS);
    memcpy(im->tl, line_tl, sizeof(float) * DATASET_NUM_TIME_IDS);
  }
  const int form = im->has_time_ids ? DATASET_TIME_IDS_IMAGE : im->line_form > 0 ? im->line_form : DATASET_TIME_IDS_DEFAULT;
  uintptr_t idx = (uintptr_t)name_table_get(&im->captions, caption);
  if (!idx) {
    int re = import_embedding(im, where, caption);
    if (re < 0) return -1;
    if (re == 1) {
      if (!im->skip_missing) {
        fprintf(stderr, "dpo-tool import: %s: no embedding for caption \"%s\" in the --embeddings files\n", where,
                caption);
        return -1;
      }
      c->missing++;
      return 1;
    }
    if (im->has_pooled) {
      int rp = import_vector(&im->pooled, where, "pooled embedding of caption", caption, &im->P, &im->pe);
      if (rp < 0) return -1;
      if (rp == 1) {
        if (!im->skip_missing) {
          fprintf(stderr, "dpo-tool import: %s: no pooled embedding for caption \"%s\" in the --pooled files\n", where,
                  caption);
          return -1;
        }
        c->missing++;
        return 1;
      }
    }
    if (!im->out) {
      pref_writer_params wp = *im->wp;
      wp.channels = im->C;
      wp.height = im->H;
      wp.width = im->W;
      wp.text_len = im->L;
      wp.embed_dim = im->D;
      wp.pooled_dim = im->has_pooled ? im->P : 0;
      wp.time_ids = form;
      wp.posterior = im->has_post;
      wp.posterior_flipped = im->has_post_flip;
      wp.posterior_only = im->posterior_only;
      char err[1024];
      int rc = pref_writer_open(im->outdir, &wp, &im->out, err, sizeof err);
      if (rc) {
        fprintf(stderr, "dpo-tool import: %s (%s)\n", err, dpod_err_name(rc));
        return -1;
      }
    }
    if (pref_writer_add_prompt_pooled(im->out, im->e, im->has_pooled ? im->pe : NULL) != 0) {
      fprintf(stderr, "dpo-tool import: %s: caption \"%s\": %s\n", where, caption, pref_writer_last_error(im->out));
      return -1;
    }
    idx = ++im->prompts;
    if (im->ncaptions == im->capcaptions) {
      size_t nc = im->capcaptions ? 2 * im->capcaptions : 1024;
      char **na = realloc(im->captions_owned, nc * sizeof *na);
      if (!na) {
        fprintf(stderr, "dpo-tool import: out of memory\n");
        return -1;
      }
      im->captions_owned = na;
      im->capcaptions = nc;
    }
    char *key = strdup(caption);
    if (!key) {
      fprintf(stderr, "dpo-tool import: out of memory\n");
      return -1;
    }
    im->captions_owned[im->ncaptions++] = key;
    if (name_table_put(&im->captions, key, (const void *)idx) < 0) {
      fprintf(stderr, "dpo-tool import: out of memory\n");
      return -1;
    }
  }
  if (pref_writer_add_pair_posterior(im->out, split, im->posterior_only ? NULL : im->w, im->posterior_only ? NULL : im->l,
                                     (uint32_t)(idx - 1), form ? im->tw : NULL,
                                     form ? im->tl : NULL, im->has_post ? &post[0] : NULL,
                                     im->has_post ? &post[1] : NULL) != 0) {
    fprintf(stderr, "dpo-tool import: %s: %s\n", where, pref_writer_last_error(im->out));
    return -1;
  }
  c->kept++;
  return 0;
}

/* Imports one JSONL file into `split`. */
static int import_jsonl(importer *im, const char *path, const char *split, import_counts *c) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "dpo-tool import: cannot open %s: %s\n", path, strerror(errno));
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int status = -1;
  char where[4200];
  while ((len = getline(&line, &cap, f)) >= 0) {
    c->lines++;
    snprintf(where, sizeof where, "%s:%zu", path, c->lines);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = 0;
    if (len == 0) continue;
    cJSON *row = cJSON_Parse(line);
    if (!row || !cJSON_IsObject(row)) {
      cJSON_Delete(row);
      fprintf(stderr, "dpo-tool import: %s: not a JSON object\n", where);
      goto done;
    }
    const char *caption = json_str(row, "caption");
    const char *u0 = json_str(row, "image_0_uid"), *u1 = json_str(row, "image_1_uid");
    const cJSON *lab = cJSON_GetObjectItemCaseSensitive(row, "label_0");
    if (!caption || !u0 || !u1 || !cJSON_IsNumber(lab)) {
      fprintf(stderr, "dpo-tool import: %s: needs string fields caption, image_0_uid, image_1_uid and a number "
              "label_0\n", where);
      cJSON_Delete(row);
      goto done;
    }
    double label = lab->valuedouble;
    if (label == 0.5) {
      c->ties++;
      cJSON_Delete(row);
      continue;
    }
    if (label != 0 && label != 1) {
      fprintf(stderr, "dpo-tool import: %s: label_0 is %g; expected 1 (image 0 preferred), 0 or 0.5 (tie)\n",
              where, label);
      cJSON_Delete(row);
      goto done;
    }
    const char *win = label == 1 ? u0 : u1, *lose = label == 1 ? u1 : u0;
    float t0[DATASET_NUM_TIME_IDS], t1[DATASET_NUM_TIME_IDS];
    const float *ltw, *ltl;
    if (import_line_time_ids(im, row, where, label == 1, t0, t1, &ltw, &ltl) != 0) {
      cJSON_Delete(row);
      goto done;
    }
    int r = import_pair(im, where, split, caption, win, lose, ltw, ltl, c);
    cJSON_Delete(row);
    if (r < 0) goto done;
    c->flipped += r == 0 && label == 0;
  }
  if (ferror(f)) {
    fprintf(stderr, "dpo-tool import: reading %s: %s\n", path, strerror(errno));
    goto done;
  }
  status = 0;
done:
  free(line);
  fclose(f);
  return status;
}
int tool_import_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"latents", required_argument, NULL, 'l'},    {"embeddings", required_argument, NULL, 'e'},
      {"pairs", required_argument, NULL, 'p'},      {"validation", required_argument, NULL, 'v'},
      {"out", required_argument, NULL, 'o'},        {"dtype", required_argument, NULL, 'd'},
      {"shard-pairs", required_argument, NULL, 's'}, {"skip-missing", no_argument, NULL, 'k'},
      {"pooled", required_argument, NULL, 'P'},     {"time-ids", required_argument, NULL, 'T'},
      {"posteriors", required_argument, NULL, 'Q'}, {"flipped-posteriors", required_argument, NULL, 'F'},
      {"scaling-factor", required_argument, NULL, 'S'},
      {"help", no_argument, NULL, 'h'},             {NULL, 0, NULL, 0},
  };
  const char *lat[IMPORT_MAX_FILES], *emb[IMPORT_MAX_FILES], *pool[IMPORT_MAX_FILES], *tids[IMPORT_MAX_FILES];
  int nlat = 0, nemb = 0, npool = 0, ntids = 0;
  const char *posts[IMPORT_MAX_FILES], *flips[IMPORT_MAX_FILES];
  int npost = 0, nflip = 0;
  const char *pairs = NULL, *val = NULL, *outdir = NULL;
  pref_writer_params wp = pref_writer_default_params();
  importer im;
  memset(&im, 0, sizeof im);
  optind = 0; /* 0, not 1: a full reset of GNU getopt, as these may run more than once per process */
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case 'l':
      case 'e':
        if ((c == 'l' ? nlat : nemb) == IMPORT_MAX_FILES / 2) {
          fprintf(stderr, "dpo-tool import: too many input files\n");
          return 2;
        }
        if (c == 'l') lat[nlat++] = optarg;
        else emb[nemb++] = optarg;
        break;
      case 'P':
      case 'T':
        if (npool + ntids == IMPORT_MAX_FILES / 2) {
          fprintf(stderr, "dpo-tool import: too many input files\n");
          return 2;
        }
        if (c == 'P') pool[npool++] = optarg;
        else tids[ntids++] = optarg;
        break;
      case 'Q':
      case 'F':
        if (npost + nflip == IMPORT_MAX_FILES / 2) {
          fprintf(stderr, "dpo-tool import: too many input files\n");
          return 2;
        }
        if (c == 'Q') posts[npost++] = optarg;
        else flips[nflip++] = optarg;
        break;
      case 'S':
        if (parse_double("import", "--scaling-factor", optarg, 0, &wp.scaling_factor) != 0) return 2;
        if (!(wp.scaling_factor > 0 && wp.scaling_factor <= 100)) {
          fprintf(stderr, "dpo-tool import: --scaling-factor wants the VAE's, in (0, 100] (0.18215 for SD 1.x, "
                  "0.13025 for SDXL), got '%s'\n", optarg);
          return 2;
        }
        break;
      case 'p': pairs = optarg; break;
      case 'v': val = optarg; break;
      case 'o': outdir = optarg; break;
      case 'd':
        if (parse_dtype("import", optarg, &wp.latent_dtype) != 0) return 2;
        wp.embed_dtype = wp.latent_dtype;
        break;
      case 's': {
        uint64_t v;
        if (tool_parse_u64("import", "--shard-pairs", optarg, 1, 1u << 24, &v) != 0) return 2;
        wp.shard_pairs = (size_t)v;
        break;
      }
      case 'k': im.skip_missing = 1; break;
      case 'h': printf("usage: dpo-tool import %s\n  %s\n", TOOL_IMPORT_ARGS, TOOL_IMPORT_SUMMARY); return 0;
      default: fprintf(stderr, "usage: dpo-tool import %s\n", TOOL_IMPORT_ARGS); return 2;
    }
  }
  if (optind != argc || (!nlat && !npost) || !nemb || !pairs || !outdir || (nflip && !npost) ||
      (npost && !wp.scaling_factor)) {
    if (optind != argc) fprintf(stderr, "dpo-tool import: unexpected argument '%s'\n", argv[optind]);
    else if (nflip && !npost)
      fprintf(stderr, "dpo-tool import: --flipped-posteriors needs --posteriors (of the unflipped images)\n");
    else if (npost && !wp.scaling_factor)
      fprintf(stderr, "dpo-tool import: --posteriors needs --scaling-factor, the VAE's (0.18215 for SD 1.x, 0.13025 "
              "for SDXL)\n");
    else fprintf(stderr, "dpo-tool import: --latents (or --posteriors), --embeddings, --pairs and --out are required\n");
    fprintf(stderr, "usage: dpo-tool import %s\n", TOOL_IMPORT_ARGS);
    return 2;
  }

  int status = 1;
  import_counts tc = {0}, vc = {0};
  im.wp = &wp;
  im.outdir = outdir;
  for (int i = 0; i < nlat; i++)
    if (import_map(&im, lat[i], &im.latents) != 0) goto done;
  for (int i = 0; i < nemb; i++)
    if (import_map(&im, emb[i], &im.embeddings) != 0) goto done;
  for (int i = 0; i < npool; i++)
    if (import_map(&im, pool[i], &im.pooled) != 0) goto done;
  for (int i = 0; i < ntids; i++)
    if (import_map(&im, tids[i], &im.time_ids) != 0) goto done;
  for (int i = 0; i < npost; i++)
    if (import_map(&im, posts[i], &im.post) != 0) goto done;
  for (int i = 0; i < nflip; i++)
    if (import_map(&im, flips[i], &im.post_flip) != 0) goto done;
  im.has_post = npost > 0;
  im.has_post_flip = nflip > 0;
  im.posterior_only = nlat == 0;
  im.has_pooled = npool > 0;
  im.has_time_ids = ntids > 0;
  im.line_form = -1;
  if (!(im.tw = malloc(sizeof(float) * DATASET_NUM_TIME_IDS)) || !(im.tl = malloc(sizeof(float) * DATASET_NUM_TIME_IDS))) {
    fprintf(stderr, "dpo-tool import: out of memory\n");
    goto done;
  }
  if (import_jsonl(&im, pairs, "train", &tc) != 0) goto done;
  if (!im.out) {
    fprintf(stderr, "dpo-tool import: %s: no usable pair (%zu lines, %zu ties, %zu missing)\n", pairs, tc.lines,
            tc.ties, tc.missing);
    goto done;
  }
  if (val && import_jsonl(&im, val, "validation", &vc) != 0) goto done;
  /* The empty caption's embedding, if the embeddings hold one, serves caption dropout and guidance. */
  int has_empty = 0;
  if (name_table_get(&im.embeddings, "")) {
    int re = import_embedding(&im, "the embedding of \"\"", "");
    if (re < 0) goto done;
    if (im.has_pooled) {
      int rp = import_vector(&im.pooled, "the pooled embedding of \"\"", "pooled embedding of caption", "", &im.P, &im.pe);
      if (rp != 0) {
        if (rp == 1) fprintf(stderr, "dpo-tool import: the embeddings hold the empty caption \"\" but the --pooled files do not\n");
        goto done;
      }
    }
    if (pref_writer_set_empty_prompt_pooled(im.out, im.e, im.has_pooled ? im.pe : NULL) != 0) {
      fprintf(stderr, "dpo-tool import: the empty prompt: %s\n", pref_writer_last_error(im.out));
      goto done;
    }
    has_empty = 1;
  }
  pref_writer_set_info_string(im.out, "source", "dpo-tool import");
  pref_writer_set_info_string(im.out, "train_jsonl", pairs);
  pref_writer_set_info_number(im.out, "train_ties_dropped", (double)tc.ties);
  pref_writer_set_info_number(im.out, "train_missing_skipped", (double)tc.missing);
  pref_writer_set_info_number(im.out, "train_label0_zero_flipped", (double)tc.flipped);
  if (val) {
    pref_writer_set_info_string(im.out, "validation_jsonl", val);
    pref_writer_set_info_number(im.out, "validation_ties_dropped", (double)vc.ties);
    pref_writer_set_info_number(im.out, "validation_missing_skipped", (double)vc.missing);
  }
  char err[1024];
  int rc = pref_writer_finish(im.out, err, sizeof err);
  im.out = NULL;
  if (rc) {
    fprintf(stderr, "dpo-tool import: %s (%s)\n", err, dpod_err_name(rc));
    goto done;
  }
  printf("train: %zu pairs kept, %zu ties dropped, %zu with label_0 = 0 stored swapped, %zu skipped as missing\n",
         tc.kept, tc.ties, tc.flipped, tc.missing);
  if (val)
    printf("validation: %zu pairs kept, %zu ties dropped, %zu swapped, %zu skipped as missing\n", vc.kept, vc.ties,
           vc.flipped, vc.missing);
  printf("%u prompts, latents [%d, %d, %d] %s, embeddings [%d, %d], empty prompt %s", im.prompts, im.C, im.H, im.W,
         st_dtype_name(wp.latent_dtype), im.L, im.D, has_empty ? "yes" : "no");
  if (im.has_pooled) printf(", pooled embeddings [%d]", im.P);
  if (im.has_time_ids) printf(", time ids per image");
  else if (im.line_form == DATASET_TIME_IDS_PAIR) printf(", time ids per pair (from the pairs files)");
  else if (im.line_form == DATASET_TIME_IDS_IMAGE) printf(", time ids per image (from the pairs files)");
  if (im.has_post)
    printf(", VAE posteriors%s (scaling factor %g)%s", im.has_post_flip ? " and flipped ones" : "", wp.scaling_factor,
           im.posterior_only ? " and no frozen latents" : "");
  printf(" -> %s\n", outdir);
  status = 0;
done:
  pref_writer_free(im.out);
  for (int i = 0; i < im.nfiles; i++) st_close(im.files[i]);
  for (size_t i = 0; i < im.ncaptions; i++) free(im.captions_owned[i]);
  free(im.captions_owned);
  name_table_free(&im.latents);
  name_table_free(&im.embeddings);
  name_table_free(&im.captions);
  name_table_free(&im.pooled);
  name_table_free(&im.time_ids);
  name_table_free(&im.post);
  name_table_free(&im.post_flip);
  free(im.pbuf);
  free(im.pe);
  free(im.tw);
  free(im.tl);
  free(im.w);
  free(im.l);
  free(im.e);
  return status;
}

/* ---- synth -------------------------------------------------------------------------------------- */

/* Latent shape and cross_attention_dim from a diffusers UNet config.json. */
static int synth_from_config(const char *path, synth_params *p) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "dpo-tool synth: cannot open %s: %s\n", path, strerror(errno));
    return -1;
  }
  char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  cJSON *j = cJSON_Parse(buf);
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "in_channels");
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "sample_size");
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "cross_attention_dim");
  int ok = cJSON_IsNumber(c) && cJSON_IsNumber(s) && cJSON_IsNumber(d) && c->valueint > 0 && s->valueint > 0 &&
           d->valueint > 0;
  if (ok) {
    p->channels = c->valueint;
    p->height = p->width = s->valueint;
    p->embed_dim = d->valueint;
  } else {
    fprintf(stderr, "dpo-tool synth: %s: needs integer in_channels, sample_size and cross_attention_dim\n", path);
  }
  /* SDXL's text_time added conditioning takes pooled embeddings: their width is what the projection takes
   * besides the six time ids' embeddings. */
  const cJSON *add = cJSON_GetObjectItemCaseSensitive(j, "addition_embed_type");
  if (ok && cJSON_IsString(add) && strcmp(add->valuestring, "text_time") == 0) {
    const cJSON *proj = cJSON_GetObjectItemCaseSensitive(j, "projection_class_embeddings_input_dim");
    const cJSON *tdim = cJSON_GetObjectItemCaseSensitive(j, "addition_time_embed_dim");
    ok = cJSON_IsNumber(proj) && cJSON_IsNumber(tdim) && tdim->valueint > 0 && proj->valueint > 6 * tdim->valueint;
    if (ok) p->pooled_dim = proj->valueint - 6 * tdim->valueint;
    else
      fprintf(stderr, "dpo-tool synth: %s: text_time needs projection_class_embeddings_input_dim > 6 x "
              "addition_time_embed_dim\n", path);
  }
  cJSON_Delete(j);
  return ok ? 0 : -1;
}

int tool_synth_main(int argc, char **argv) {
  enum { O_OUT = 1, O_CONFIG, O_PROMPTS, O_BASE, O_TRAIN, O_VAL, O_SHAPE, O_TEXT, O_EMBED, O_NOISE, O_REWARD, O_SEED,
         O_DTYPE, O_POSTERIOR };
  static const struct option opts[] = {
      {"out", required_argument, NULL, O_OUT},           {"config", required_argument, NULL, O_CONFIG},
      {"prompts", required_argument, NULL, O_PROMPTS},   {"base-per-prompt", required_argument, NULL, O_BASE},
      {"train-pairs", required_argument, NULL, O_TRAIN}, {"validation-pairs", required_argument, NULL, O_VAL},
      {"latent-shape", required_argument, NULL, O_SHAPE}, {"text-len", required_argument, NULL, O_TEXT},
      {"embed-dim", required_argument, NULL, O_EMBED},   {"mode-noise", required_argument, NULL, O_NOISE},
      {"reward-scale", required_argument, NULL, O_REWARD}, {"seed", required_argument, NULL, O_SEED},
      {"dtype", required_argument, NULL, O_DTYPE},       {"help", no_argument, NULL, 'h'},
      {"posterior-logvar", required_argument, NULL, O_POSTERIOR},
      {NULL, 0, NULL, 0},
  };
  synth_params p = synth_default_params();
  const char *outdir = NULL, *config = NULL, *shape = NULL;
  uint64_t v;
  optind = 0; /* 0, not 1: a full reset of GNU getopt, as these may run more than once per process */
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case O_OUT: outdir = optarg; break;
      case O_CONFIG: config = optarg; break;
      case O_SHAPE: shape = optarg; break;
      case O_PROMPTS:
        if (tool_parse_u64("synth", "--prompts", optarg, 1, 1u << 24, &v)) return 2;
        p.prompts = (uint32_t)v;
        break;
      case O_BASE:
        if (tool_parse_u64("synth", "--base-per-prompt", optarg, 1, 1u << 24, &v)) return 2;
        p.base_per_prompt = (uint32_t)v;
        break;
      case O_TRAIN:
        if (tool_parse_u64("synth", "--train-pairs", optarg, 1, 1u << 30, &v)) return 2;
        p.train_pairs = (uint32_t)v;
        break;
      case O_VAL:
        if (tool_parse_u64("synth", "--validation-pairs", optarg, 0, 1u << 30, &v)) return 2;
        p.validation_pairs = (uint32_t)v;
        break;
      case O_TEXT:
        if (tool_parse_u64("synth", "--text-len", optarg, 1, 4096, &v)) return 2;
        p.text_len = (int)v;
        break;
      case O_EMBED:
        if (tool_parse_u64("synth", "--embed-dim", optarg, 1, 1u << 16, &v)) return 2;
        p.embed_dim = (int)v;
        break;
      case O_NOISE:
        if (parse_double("synth", "--mode-noise", optarg, 0, &p.mode_noise)) return 2;
        break;
      case O_REWARD:
        if (parse_double("synth", "--reward-scale", optarg, 0, &p.reward_scale)) return 2;
        break;
      case O_SEED:
        if (tool_parse_u64("synth", "--seed", optarg, 0, UINT64_MAX, &p.seed)) return 2;
        break;
      case O_DTYPE:
        if (parse_dtype("synth", optarg, &p.dtype)) return 2;
        break;
      case O_POSTERIOR:
        if (parse_double("synth", "--posterior-logvar", optarg, -30, &p.posterior_logvar)) return 2;
        if (p.posterior_logvar > 20) {
          fprintf(stderr, "dpo-tool synth: --posterior-logvar wants a number in [-30, 20], got '%s'\n", optarg);
          return 2;
        }
        p.posterior = 1;
        break;
      case 'h': printf("usage: dpo-tool synth %s\n  %s\n", TOOL_SYNTH_ARGS, TOOL_SYNTH_SUMMARY); return 0;
      default: fprintf(stderr, "usage: dpo-tool synth %s\n", TOOL_SYNTH_ARGS); return 2;
    }
  }
  if (optind != argc || !outdir) {
    if (optind != argc) fprintf(stderr, "dpo-tool synth: unexpected argument '%s'\n", argv[optind]);
    else fprintf(stderr, "dpo-tool synth: --out is required\n");
    fprintf(stderr, "usage: dpo-tool synth %s\n", TOOL_SYNTH_ARGS);
    return 2;
  }
  /* --config first, so an explicit --latent-shape overrides it. */
  if (config && synth_from_config(config, &p) != 0) return 1;
  if (shape) {
    int a, b, d;
    char tail;
    if (sscanf(shape, "%dx%dx%d%c", &a, &b, &d, &tail) != 3 || a < 1 || b < 1 || d < 1 || a > 4096 || b > 65536 ||
        d > 65536) {
      fprintf(stderr, "dpo-tool synth: --latent-shape wants CxHxW, got '%s'\n", shape);
      return 2;
    }
    p.channels = a;
    p.height = b;
    p.width = d;
  }
  char err[1024];
  synth_summary s;
  int rc = synth_generate(&p, outdir, &s, err, sizeof err);
  if (rc) {
    fprintf(stderr, "dpo-tool synth: %s (%s)\n", err, dpod_err_name(rc));
    return 1;
  }
  printf("%u prompts, latents [%d, %d, %d] %s: %zu base samples, %zu train pairs (%zu mislabelled, %.1f expected; "
         "%zu across modes), %zu validation pairs -> %s\n",
         p.prompts, p.channels, p.height, p.width, st_dtype_name(p.dtype), s.base_samples, s.train_pairs,
         s.train_mislabelled, s.train_expected_mislabelled, s.train_cross_mode, s.validation_pairs, outdir);
  return 0;
}
