#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void dpo_rng_seed(dpo_rng *r, uint64_t seed, uint64_t stream) {
  /* Mixing the stream through splitmix first makes nearby (seed, stream) pairs unrelated. */
  uint64_t x = seed ^ (0xD1B54A32D192ED03ull * (stream + 1));
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
  r->has_spare = 0;
  r->spare = 0;
}

uint64_t dpo_rng_u64(dpo_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double dpo_rng_uniform(dpo_rng *r) { return (double)(dpo_rng_u64(r) >> 11) * 0x1.0p-53; }

uint32_t dpo_rng_below(dpo_rng *r, uint32_t n) {
  /* Lemire's multiply-shift with rejection: unbiased for every n. */
  uint64_t m = (uint64_t)(uint32_t)(dpo_rng_u64(r) >> 32) * n;
  uint32_t lo = (uint32_t)m;
  if (lo < n) {
    uint32_t threshold = -n % n;
    while (lo < threshold) {
      m = (uint64_t)(uint32_t)(dpo_rng_u64(r) >> 32) * n;
      lo = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

double dpo_rng_normal(dpo_rng *r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  double u1, u2;
  do u1 = dpo_rng_uniform(r);
  while (u1 <= 0.0);
  u2 = dpo_rng_uniform(r);
  double mag = sqrt(-2.0 * log(u1));
  r->spare = mag * sin(2.0 * M_PI * u2);
  r->has_spare = 1;
  return mag * cos(2.0 * M_PI * u2);
}

void dpo_rng_fill_normal(dpo_rng *r, float *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = (float)dpo_rng_normal(r);
}
