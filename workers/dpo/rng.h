/* The RNG: xoshiro256** seeded through splitmix64. Its whole state is 32 bytes, so checkpoints can store
 * it, and a stream is keyed by (seed, stream number), so that what a pair draws depends on its position
 * in the data, never on which rank draws it. */
#ifndef DPOD_RNG_H
#define DPOD_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t s[4];
  int has_spare;     /* Box-Muller produces normals in pairs */
  double spare;
} dpo_rng;

void dpo_rng_seed(dpo_rng *r, uint64_t seed, uint64_t stream);
uint64_t dpo_rng_u64(dpo_rng *r);
double dpo_rng_uniform(dpo_rng *r);               /* [0, 1) */
uint32_t dpo_rng_below(dpo_rng *r, uint32_t n);   /* [0, n), unbiased */
double dpo_rng_normal(dpo_rng *r);                /* N(0, 1) */
void dpo_rng_fill_normal(dpo_rng *r, float *out, size_t n);


/* The streams the library's own draws use; other users pick numbers apart from these. */
enum {
  DPO_STREAM_EMBEDDINGS = 1, /* the built-in dataset's prompt embeddings */
  DPO_STREAM_MODES = 2,      /* ... its mode patterns */
  DPO_STREAM_PAIRS = 3,      /* ... its training pairs */
  DPO_STREAM_SHUFFLE = 4,    /* the sampler's epoch shuffles: 4 + epoch */
  DPO_STREAM_HELD_OUT = 5,   /* the built-in dataset's held-out pairs */
};
/* The built-in dataset's pooled prompt embeddings (SDXL): far from the shuffle's 4 + epoch. */
#define DPO_STREAM_POOLED 0x706f6f6c6564ull

#endif
