/* The optimizer's inner loops over the flat buffers, written out by hand: one pass over memory instead of
 * the nine tensor ops (and two temporaries) the same arithmetic takes in ATen.
 *
 * This file includes no torch header and is compiled with -O3 -fno-math-errno -ffp-contract=off, and each
 * loop is cloned for AVX-512, AVX2 and baseline x86-64 (chosen at load time). Without contraction every
 * clone rounds exactly as the scalar code does, so ranks on different CPUs keep bit-identical replicas. */
#include "adamw_kernel.h"

#include <cmath>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define UNET_CLONES
#endif

/* Eight independent double accumulators: vectorisable without reassociating a single sum, so the result
 * does not depend on the instruction set either. */
UNET_CLONES double unet_sumsq_(const float *x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
  for (; i < n; i++) acc[0] += (double)x[i] * (double)x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* torch.optim.AdamW (1.13, single-tensor path), the gradient first scaled by the clip coefficient in
 * place (as clip_grad_norm_ leaves it), every constant rounded to float as ATen does with a double
 * scalar on a float tensor. */
UNET_CLONES void unet_adamw_kernel_(float *w, float *g, float *m, float *v, int64_t n, const unet_adamw_coef_ *c) {
  const float clip = c->clip, decay = c->decay, b1 = c->beta1, omb1 = c->one_minus_beta1, b2 = c->beta2,
              omb2 = c->one_minus_beta2, sbc2 = c->sqrt_bc2, eps = c->eps, step = c->step_size;
  const bool do_clip = c->do_clip;
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i];
    if (do_clip) {
      gi = gi * clip;
      g[i] = gi;
    }
    float mi = m[i] * b1 + omb1 * gi;
    float vi = v[i] * b2 + omb2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    float denom = std::sqrt(vi) / sbc2 + eps;
    w[i] = w[i] * decay - step * (mi / denom);
  }
}
