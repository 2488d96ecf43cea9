#include "sampler.h"

#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"
#include "rng.h"

int sampler_init(dpo_sampler *s, size_t num_pairs, size_t global_batch, uint64_t seed) {
  memset(s, 0, sizeof *s);
  if (global_batch == 0 || num_pairs < global_batch || num_pairs > UINT32_MAX) return DPOD_EINVAL;
  s->perm = malloc(sizeof(uint32_t) * num_pairs);
  if (!s->perm) return DPOD_ENOMEM;
  s->num_pairs = num_pairs;
  s->global_batch = global_batch;
  s->seed = seed;
  s->epoch = UINT64_MAX;
  return 0;
}

void sampler_free(dpo_sampler *s) {
  free(s->perm);
  s->perm = NULL;
}

size_t sampler_pair(dpo_sampler *s, uint64_t g) {
  uint64_t per_epoch = (s->num_pairs / s->global_batch) * s->global_batch;
  uint64_t epoch = g / per_epoch;
  if (epoch != s->epoch) {
    /* Fisher-Yates from a stream of its own per epoch. */
    dpo_rng r;
    dpo_rng_seed(&r, s->seed ^ 0x5eed5a3b1e5ull, DPO_STREAM_SHUFFLE + epoch);
    for (size_t i = 0; i < s->num_pairs; i++) s->perm[i] = (uint32_t)i;
    for (size_t i = s->num_pairs - 1; i > 0; i--) {
      uint32_t j = dpo_rng_below(&r, (uint32_t)(i + 1));
      uint32_t t = s->perm[i];
      s->perm[i] = s->perm[j];
      s->perm[j] = t;
    }
    s->epoch = epoch;
  }
  return s->perm[g % per_epoch];
}
