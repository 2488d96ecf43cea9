#include "posterior.h"

#include <math.h>
#include <stdlib.h>

#include "dpod_error.h"

void posterior_sample(const float *mean, const float *logvar, size_t n, double scale, dpo_rng *r, float *out) {
  for (size_t j = 0; j < n; j++) {
    double lv = logvar[j];
    lv = lv < POSTERIOR_LOGVAR_MIN ? POSTERIOR_LOGVAR_MIN : lv > POSTERIOR_LOGVAR_MAX ? POSTERIOR_LOGVAR_MAX : lv;
    out[j] = (float)(((double)mean[j] + exp(0.5 * lv) * dpo_rng_normal(r)) * scale);
  }
}

int posterior_draw_pair(const dpo_dataset *ds, size_t i, uint64_t seed, uint64_t key, int random_flip, float *w,
                        float *l, int flips[2]) {
  if (!ds->posterior || (random_flip && !ds->posterior_flipped)) return DPOD_ENOENT;
  if (i >= ds->num_pairs) return DPOD_EINVAL;
  const size_t img = dataset_image_size(ds);
  float *mean = malloc(2 * img * sizeof(float));
  if (!mean) return DPOD_ENOMEM;
  float *logvar = mean + img;
  dpo_rng r;
  dpo_rng_seed(&r, seed ^ POSTERIOR_SALT, key);
  int flip[2];
  for (int k = 0; k < 2; k++) {
    double u = dpo_rng_uniform(&r);
    flip[k] = random_flip && u < 0.5;
  }
  int rc = 0;
  for (int k = 0; k < 2 && rc == 0; k++) {
    if ((rc = dataset_copy_posterior(ds, i, k, flip[k], mean, logvar)) == 0)
      posterior_sample(mean, logvar, img, ds->scaling_factor, &r, k ? l : w);
  }
  if (flips) flips[0] = flip[0], flips[1] = flip[1];
  free(mean);
  return rc;
}

int posterior_fill_batch(const dpo_dataset *ds, const size_t *pairs, const uint64_t *keys, int b, uint64_t seed,
                         int random_flip, float *x0) {
  const size_t img = dataset_image_size(ds);
  for (int i = 0; i < b; i++) {
    int rc = posterior_draw_pair(ds, pairs[i], seed, keys[i], random_flip, x0 + (size_t)i * img,
                                 x0 + (size_t)(b + i) * img, NULL);
    if (rc) return rc;
  }
  return 0;
}
