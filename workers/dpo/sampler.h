/* The distributed sampler: which pair each global position of the training stream is. */
#ifndef DPOD_SAMPLER_H
#define DPOD_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

/* The distributed sampler. Training consumes the data in global batches of G pairs (G = ranks x batch x
 * accumulation); each epoch is a fresh shuffle of all pairs from the seed, cut into floor(n / G) global
 * batches, the remainder dropped. Global position g (counting every pair the run has consumed) maps to
 * one pair, so which rank or micro-batch takes a position changes nothing: 1 rank x G and N ranks x G/N
 * see the same pairs, and a resumed run continues at g = step x G. */
typedef struct {
  size_t num_pairs, global_batch;
  uint64_t seed;
  uint64_t epoch;     /* epoch whose order `perm` holds; UINT64_MAX before the first */
  uint32_t *perm;     /* [num_pairs]; owned */
} dpo_sampler;

int sampler_init(dpo_sampler *s, size_t num_pairs, size_t global_batch, uint64_t seed);
void sampler_free(dpo_sampler *s);
/* Pair index at global position g. */
size_t sampler_pair(dpo_sampler *s, uint64_t g);

#endif
