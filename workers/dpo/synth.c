/* The synthetic preference task and its scoring. See synth.h. */
#include "synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "dpod_error.h"
#include "pref_format.h"

/* RNG streams, one per table, so each is independent of the others' sizes. */
enum {
  SYNTH_STREAM_EMBEDDINGS = 101,
  SYNTH_STREAM_EMPTY = 102,
  SYNTH_STREAM_MODES = 103,
  SYNTH_STREAM_PREFERRED = 104,
  SYNTH_STREAM_BASE = 105,
  SYNTH_STREAM_TRAIN = 106,
  SYNTH_STREAM_VALIDATION = 107,
  SYNTH_STREAM_POOLED = 108,
};

synth_params synth_default_params(void) {
  synth_params p = {0};
  p.prompts = 8;
  p.base_per_prompt = 64;
  p.train_pairs = 512;
  p.validation_pairs = 128;
  p.channels = 4;
  p.height = 8;
  p.width = 8;
  p.text_len = 4;
  p.embed_dim = 32;
  p.mode_noise = 0.3;
  p.reward_scale = 0.5;
  p.seed = 1234;
  p.dtype = ST_F32;
  p.posterior_logvar = -6;
  return p;
}

static size_t synth_img_(const synth_task *t) { return (size_t)t->channels * t->height * t->width; }

static double synth_d2_(const float *x, const float *m, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)x[i] - m[i];
    s += d * d;
  }
  return s / (double)n;
}

double synth_reward(const synth_task *t, uint32_t prompt, const float *x0) {
  size_t img = synth_img_(t);
  const float *m = t->modes + (size_t)prompt * 2 * img;
  int pref = t->preferred[prompt];
  return t->reward_scale * (synth_d2_(x0, m + (size_t)(1 - pref) * img, img) - synth_d2_(x0, m + (size_t)pref * img, img));
}

int synth_nearest_mode(const synth_task *t, uint32_t prompt, const float *x0, double *rms) {
  size_t img = synth_img_(t);
  const float *m = t->modes + (size_t)prompt * 2 * img;
  double d0 = synth_d2_(x0, m, img), d1 = synth_d2_(x0, m + img, img);
  int k = d1 < d0;
  if (rms) *rms = sqrt(k ? d1 : d0);
  return k;
}

int synth_evaluate(const synth_task *t, size_t n, const float *x0, const uint32_t *prompts, synth_eval *out) {
  memset(out, 0, sizeof *out);
  size_t img = synth_img_(t), pref = 0;
  double dist = 0;
  for (size_t i = 0; i < n; i++) {
    if (prompts[i] >= t->prompts) return DPOD_EINVAL;
    double rms;
    int k = synth_nearest_mode(t, prompts[i], x0 + i * img, &rms);
    pref += k == t->preferred[prompts[i]];
    dist += rms;
  }
  out->samples = n;
  out->preferred_rate = n ? (double)pref / (double)n : 0;
  out->mean_distance = n ? dist / (double)n : 0;
  return 0;
}

void synth_task_free(synth_task *t) {
  free(t->modes);
  free(t->preferred);
  t->modes = NULL;
  t->preferred = NULL;
}

int synth_task_load(const char *dir, synth_task *t, char *err, size_t errlen) {
  memset(t, 0, sizeof *t);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, SYNTH_FILE);
  st_file *f = NULL;
  int rc = st_open(path, &f, err, errlen);
  if (rc) return rc;
  const st_tensor *m = st_find(f, "modes"), *p = st_find(f, "preferred");
  const char *rs = st_metadata(f, "reward_scale"), *mn = st_metadata(f, "mode_noise");
  rc = DPOD_EFORMAT;
  if (!m || m->dtype != ST_F32 || m->ndim != 5 || m->shape[1] != 2 || m->shape[0] < 1 || m->shape[0] > INT32_MAX ||
      !p || p->dtype != ST_I32 || p->ndim != 1 || p->shape[0] != m->shape[0] || !rs || !mn) {
    snprintf(err, errlen, "%s: needs 'modes' F32 [P, 2, C, H, W], 'preferred' I32 [P] and the metadata "
             "reward_scale and mode_noise", path);
    goto done;
  }
  t->prompts = (uint32_t)m->shape[0];
  t->channels = (int)m->shape[2];
  t->height = (int)m->shape[3];
  t->width = (int)m->shape[4];
  t->reward_scale = strtod(rs, NULL);
  t->mode_noise = strtod(mn, NULL);
  t->modes = malloc(m->nbytes);
  t->preferred = malloc(p->nbytes);
  if (!t->modes || !t->preferred) {
    rc = DPOD_ENOMEM;
    snprintf(err, errlen, "%s: out of memory", path);
    goto done;
  }
  memcpy(t->modes, m->data, m->nbytes);
  memcpy(t->preferred, p->data, p->nbytes);
  for (uint32_t i = 0; i < t->prompts; i++) {
    if (t->preferred[i] != 0 && t->preferred[i] != 1) {
      snprintf(err, errlen, "%s: preferred[%u] is %d, not 0 or 1", path, i, (int)t->preferred[i]);
      goto done;
    }
  }
  rc = 0;
done:
  if (rc) synth_task_free(t);
  st_close(f);
  return rc;
}

/* One base sample of `prompt`: a fair coin picks the mode; returns it. */
static int synth_draw_(const synth_task *t, dpo_rng *r, uint32_t prompt, float *x) {
  size_t img = synth_img_(t);
  int k = (int)(dpo_rng_u64(r) >> 63);
  const float *m = t->modes + ((size_t)prompt * 2 + (size_t)k) * img;
  for (size_t j = 0; j < img; j++) x[j] = m[j] + (float)(t->mode_noise * dpo_rng_normal(r));
  return k;
}

#define SYNTH_SCALING_FACTOR 0.18215

/* Adds a pair; with posteriors (post: scratch [2, 4, C, H, W], else NULL) each image's stored posterior
 * has the latent / scaling factor as its mean, logvar `logvar`, and its mirror image along W flipped. */
static int synth_add_(const synth_task *t, pref_writer *w, const char *split, const float *win, const float *lose,
                      uint32_t prompt, float *post, double logvar) {
  if (!post) return pref_writer_add_pair(w, split, win, lose, prompt);
  const size_t img = synth_img_(t), W = (size_t)t->width;
  pref_posterior q[2];
  for (int s = 0; s < 2; s++) {
    const float *x = s ? lose : win;
    float *m = post + (size_t)s * 4 * img, *lv = m + img, *fm = lv + img, *flv = fm + img;
    for (size_t j = 0; j < img; j++) {
      m[j] = (float)(x[j] / SYNTH_SCALING_FACTOR);
      lv[j] = flv[j] = (float)logvar;
    }
    for (size_t j = 0; j < img; j++) fm[j] = m[j - j % W + (W - 1 - j % W)];
    q[s] = (pref_posterior){m, lv, fm, flv};
  }
  return pref_writer_add_pair_posterior(w, split, win, lose, prompt, NULL, NULL, &q[0], &q[1]);
}

static int synth_pairs_(const synth_task *t, pref_writer *w, const char *split, uint32_t n, dpo_rng *r,
                        float *a, float *b, synth_summary *sum, float *post, double logvar, char *err,
                        size_t errlen) {
  for (uint32_t i = 0; i < n; i++) {
    uint32_t prompt = i % t->prompts;
    int ka = synth_draw_(t, r, prompt, a), kb = synth_draw_(t, r, prompt, b);
    double diff = synth_reward(t, prompt, a) - synth_reward(t, prompt, b);
    /* Bradley-Terry: a wins with probability sigmoid(diff). */
    int a_wins = dpo_rng_uniform(r) < 1.0 / (1.0 + exp(-diff));
    if (sum && strcmp(split, "train") == 0) {
      sum->train_mislabelled += a_wins ? diff < 0 : diff > 0;
      sum->train_expected_mislabelled += 1.0 / (1.0 + exp(fabs(diff)));
      sum->train_cross_mode += ka != kb;
    }
    int rc = synth_add_(t, w, split, a_wins ? a : b, a_wins ? b : a, prompt, post, logvar);
    if (rc) {
      snprintf(err, errlen, "split %s pair %u: %s", split, i, pref_writer_last_error(w));
      return rc;
    }
  }
  return 0;
}

int synth_generate(const synth_params *p, const char *dir, synth_summary *summary, char *err, size_t errlen) {
  if (p->prompts == 0 || p->base_per_prompt == 0 || p->train_pairs == 0 || p->channels <= 0 || p->height <= 0 ||
      p->width <= 0 || p->text_len <= 0 || p->embed_dim <= 0 || !(p->mode_noise >= 0) || !(p->reward_scale >= 0) ||
      (p->dtype != ST_F32 && p->dtype != ST_F16) ||
      (p->posterior && !(p->posterior_logvar >= -30 && p->posterior_logvar <= 20))) {
    snprintf(err, errlen, "synth: prompts, base samples, train pairs and shapes must be > 0, noise and reward "
             "scale >= 0, dtype F16 or F32, posterior logvar in [-30, 20]");
    return DPOD_EINVAL;
  }
  synth_summary sum_local;
  synth_summary *sum = summary ? summary : &sum_local;
  memset(sum, 0, sizeof *sum);
  synth_task t = {.prompts = p->prompts, .channels = p->channels, .height = p->height, .width = p->width,
                  .reward_scale = p->reward_scale, .mode_noise = p->mode_noise};
  size_t img = synth_img_(&t), emb = (size_t)p->text_len * p->embed_dim;
  int rc = DPOD_ENOMEM;
  pref_writer *w = NULL;
  st_writer *sw = NULL;
  float *e = malloc(sizeof(float) * emb), *a = malloc(sizeof(float) * img), *b = malloc(sizeof(float) * img);
  float *post = p->posterior ? malloc(sizeof(float) * img * 8) : NULL;
  t.modes = malloc(sizeof(float) * img * 2 * p->prompts);
  t.preferred = malloc(sizeof(int32_t) * p->prompts);
  if (!e || !a || !b || !t.modes || !t.preferred || (p->posterior && !post)) {
    snprintf(err, errlen, "synth: out of memory");
    goto done;
  }
  dpo_rng r;
  dpo_rng_seed(&r, p->seed, SYNTH_STREAM_MODES);
  dpo_rng_fill_normal(&r, t.modes, img * 2 * p->prompts);
  dpo_rng_seed(&r, p->seed, SYNTH_STREAM_PREFERRED);
  for (uint32_t i = 0; i < p->prompts; i++) t.preferred[i] = (int32_t)(dpo_rng_u64(&r) >> 63);

  pref_writer_params wp = pref_writer_default_params();
  wp.channels = p->channels;
  wp.height = p->height;
  wp.width = p->width;
  wp.text_len = p->text_len;
  wp.embed_dim = p->embed_dim;
  wp.latent_dtype = wp.embed_dtype = p->dtype;
  wp.pooled_dim = p->pooled_dim > 0 ? p->pooled_dim : 0;
  wp.posterior = wp.posterior_flipped = p->posterior != 0;
  wp.scaling_factor = SYNTH_SCALING_FACTOR;
  if ((rc = pref_writer_open(dir, &wp, &w, err, errlen)) != 0) goto done;
  /* Pooled embeddings from a stream of their own: the rest of the task is the same with or without. */
  float *pooled = NULL;
  dpo_rng rp;
  if (wp.pooled_dim > 0) {
    if (!(pooled = malloc(sizeof(float) * (size_t)wp.pooled_dim))) {
      rc = DPOD_ENOMEM;
      snprintf(err, errlen, "synth: out of memory");
      goto done;
    }
    dpo_rng_seed(&rp, p->seed, SYNTH_STREAM_POOLED);
  }

  dpo_rng_seed(&r, p->seed, SYNTH_STREAM_EMBEDDINGS);
  for (uint32_t i = 0; i < p->prompts; i++) {
    dpo_rng_fill_normal(&r, e, emb);
    if (pooled) dpo_rng_fill_normal(&rp, pooled, (size_t)wp.pooled_dim);
    if ((rc = pref_writer_add_prompt_pooled(w, e, pooled)) != 0) {
      free(pooled);
      goto writer_error;
    }
  }
  dpo_rng_seed(&r, p->seed, SYNTH_STREAM_EMPTY);
  dpo_rng_fill_normal(&r, e, emb);
  if (pooled) dpo_rng_fill_normal(&rp, pooled, (size_t)wp.pooled_dim);
  rc = pref_writer_set_empty_prompt_pooled(w, e, pooled);
  free(pooled);
  if (rc != 0) goto writer_error;

  /* Base samples, prompt-major so each prompt's samples are contiguous. */
  dpo_rng_seed(&r, p->seed, SYNTH_STREAM_BASE);
  for (uint32_t i = 0; i < p->prompts; i++) {
    for (uint32_t k = 0; k < p->base_per_prompt; k++) {
      synth_draw_(&t, &r, i, a);
      if ((rc = synth_add_(&t, w, "base", a, a, i, post, p->posterior_logvar)) != 0) goto writer_error;
      sum->base_samples++;
    }
  }
  dpo_rng_seed(&r, p->seed, SYNTH_STREAM_TRAIN);
  if ((rc = synth_pairs_(&t, w, "train", p->train_pairs, &r, a, b, sum, post, p->posterior_logvar, err, errlen)) != 0) goto done;
  sum->train_pairs = p->train_pairs;
  dpo_rng_seed(&r, p->seed, SYNTH_STREAM_VALIDATION);
  if (p->validation_pairs &&
      (rc = synth_pairs_(&t, w, "validation", p->validation_pairs, &r, a, b, sum, post, p->posterior_logvar, err,
                                                   errlen)) != 0)
    goto done;
  sum->validation_pairs = p->validation_pairs;

  /* The ground truth, before the manifest, so a dataset with a manifest always has it. */
  char path[4096], num[64];
  snprintf(path, sizeof path, "%s/%s", dir, SYNTH_FILE);
  int64_t mshape[5] = {p->prompts, 2, p->channels, p->height, p->width}, pshape[1] = {p->prompts};
  rc = DPOD_ENOMEM;
  if (!(sw = st_writer_new()) || st_writer_add(sw, "modes", ST_F32, 5, mshape, t.modes) != 0 ||
      st_writer_add(sw, "preferred", ST_I32, 1, pshape, t.preferred) != 0) {
    snprintf(err, errlen, "%s: out of memory", path);
    goto done;
  }
  st_writer_set_metadata(sw, "format", "dpod-synth");
  snprintf(num, sizeof num, "%.17g", p->reward_scale);
  st_writer_set_metadata(sw, "reward_scale", num);
  snprintf(num, sizeof num, "%.17g", p->mode_noise);
  st_writer_set_metadata(sw, "mode_noise", num);
  snprintf(num, sizeof num, "%llu", (unsigned long long)p->seed);
  st_writer_set_metadata(sw, "seed", num);
  if ((rc = st_writer_write(sw, path, NULL, err, errlen)) != 0) goto done;

  pref_writer_set_info_string(w, "source", "dpo-tool synth");
  pref_writer_set_info_string(w, "synth", SYNTH_FILE);
  pref_writer_set_info_number(w, "seed", (double)p->seed);
  pref_writer_set_info_number(w, "mode_noise", p->mode_noise);
  pref_writer_set_info_number(w, "reward_scale", p->reward_scale);
  pref_writer_set_info_number(w, "train_mislabelled", (double)sum->train_mislabelled);
  pref_writer_set_info_number(w, "train_expected_mislabelled", sum->train_expected_mislabelled);
  pref_writer_set_info_number(w, "train_cross_mode", (double)sum->train_cross_mode);
  rc = pref_writer_finish(w, err, errlen);
  w = NULL;
  goto done;
writer_error:
  snprintf(err, errlen, "synth: %s", pref_writer_last_error(w));
done:
  pref_writer_free(w);
  st_writer_free(sw);
  synth_task_free(&t);
  free(e);
  free(a);
  free(b);
  free(post);
  return rc;
}
