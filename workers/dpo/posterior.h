/* Latents drawn from stored VAE posteriors, as the reference scripts draw them: a fresh
 * `vae.encode(x).latent_dist.sample() * scaling_factor` every time a pair is used, and with random flip
 * the posterior of the horizontally flipped image for each image separately with probability 1/2.
 *
 * Every number comes from one RNG stream keyed by (seed ^ POSTERIOR_SALT, key), the key being the pair's
 * global position in the training stream (which also fixes the epoch), so the draws do not depend on
 * which rank takes the pair, nor on where a run was resumed. */
#ifndef DPOD_POSTERIOR_H
#define DPOD_POSTERIOR_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "rng.h"

/* diffusers' DiagonalGaussianDistribution clamps logvar to [-30, 20] before exp(0.5 logvar). */
#define POSTERIOR_LOGVAR_MIN (-30.0)
#define POSTERIOR_LOGVAR_MAX 20.0
/* Mixed into the seed so the posterior stream of a key is not the noise stream of the same key. */
#define POSTERIOR_SALT 0x706f737465726full

/* One image: out[j] = (mean[j] + exp(0.5 clamp(logvar[j])) n_j) x scale, n_j the j-th normal of r
 * (dpo_rng_normal), computed in double. mean, logvar and out [n]. */
void posterior_sample(const float *mean, const float *logvar, size_t n, double scale, dpo_rng *r, float *out);

/* Pair i of ds (which must store posteriors): winner into w, loser into l, each [C, H, W]. The stream
 * (seed ^ POSTERIOR_SALT, key) gives first two uniforms, the winner's and the loser's flip coins (used
 * only with random_flip, which needs flipped posteriors: flipped when the uniform is < 0.5), then the
 * winner's C x H x W normals, then the loser's; drawing the coins always keeps the normals the same with
 * and without flipping. flips (NULL to skip) receives the choices [winner, loser]. Returns 0,
 * DPOD_ENOENT without (flipped) posteriors, DPOD_EINVAL for i out of range, DPOD_ENOMEM. */
int posterior_draw_pair(const dpo_dataset *ds, size_t i, uint64_t seed, uint64_t key, int random_flip, float *w,
                        float *l, int flips[2]);

/* The b pairs `pairs` with keys `keys` into x0 [2b, C, H, W]: winners in rows 0..b-1, losers in b..2b-1,
 * as dataset_fill_batch lays them out. Same returns. */
int posterior_fill_batch(const dpo_dataset *ds, const size_t *pairs, const uint64_t *keys, int b, uint64_t seed,
                         int random_flip, float *x0);

#endif
