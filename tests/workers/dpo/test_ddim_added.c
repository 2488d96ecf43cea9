/* DDIM with SDXL's added conditioning (ddim_sample_added): every model call gets each row's pooled
 * embedding and time ids laid out like its text embedding ([uncond; cond] with guidance, the empty
 * prompt's pooled embedding in the unconditional rows, the time ids repeated), and the samples equal
 * those of the plain sampler (tested against closed forms in dpo.data) when the same conditioning is
 * carried inside the text embedding instead. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include <math.h>
#include <string.h>

#include "ddim.h"
#include "dpod_error.h"
#include "rng.h"
#include "schedule.h"

enum { N = 3, IMG = 5, EMB = 2, P = 4, NT = 6 };

/* A model whose output depends on x, t, the text embedding and the added conditioning. `in_ehs`: read
 * the added conditioning from the text embedding's tail (EMB + P + NT wide) instead. */
typedef struct {
  const dpo_schedule *s;
  int in_ehs, calls, checked;
  const float *pooled, *uncond_pooled, *tids; /* what every call must see (the added form) */
  int cfg;
} cond_model;

static double cond_of(const float *e, const float *p, const float *t) {
  return 0.3 * e[0] - 0.2 * e[1] + 0.5 * p[0] - 0.25 * p[3] + 1e-3 * (t[0] - t[5]) + 0.01 * t[2];
}

static int model_rows(cond_model *m, int n, const float *x, const float *t, const float *ehs, const float *pooled,
                      const float *tids, float *out) {
  m->calls++;
  const size_t ew = m->in_ehs ? EMB + P + NT : EMB;
  for (int i = 0; i < n; i++) {
    const float *e = ehs + (size_t)i * ew;
    const float *p = m->in_ehs ? e + EMB : pooled + (size_t)i * P;
    const float *ti = m->in_ehs ? e + EMB + P : tids + (size_t)i * NT;
    double a = m->s->alphas_cumprod[(int)t[i]], c = cond_of(e, p, ti);
    for (int j = 0; j < IMG; j++) out[(size_t)i * IMG + j] = (float)(sqrt(1 - a) * (x[(size_t)i * IMG + j] - c) * 0.7);
  }
  return 0;
}

static int added_model(void *ctx, int n, const float *x, const float *t, const float *ehs, const float *pooled,
                       const float *tids, float *out) {
  cond_model *m = ctx;
  assert_non_null(pooled);
  assert_non_null(tids);
  /* The layout: with guidance n = 2N, unconditional rows first. */
  const int rows = m->cfg ? 2 * N : N;
  assert_int_equal(n, rows);
  for (int i = 0; i < n; i++) {
    int uncond = m->cfg && i < N, k = m->cfg ? i % N : i;
    assert_memory_equal(pooled + (size_t)i * P, uncond ? m->uncond_pooled : m->pooled + (size_t)k * P, sizeof(float) * P);
    assert_memory_equal(tids + (size_t)i * NT, m->tids + (size_t)k * NT, sizeof(float) * NT);
    m->checked++;
  }
  return model_rows(m, n, x, t, ehs, pooled, tids, out);
}

static int plain_model(void *ctx, int n, const float *x, const float *t, const float *ehs, float *out) {
  return model_rows(ctx, n, x, t, ehs, NULL, NULL, out);
}

static void ddim_added_conditioning_reaches_every_row_and_samples_as_the_plain_sampler(void **state) {
  (void)state;
  dpo_schedule s;
  assert_int_equal(dpo_schedule_default(&s), 0);
  float x_T[N * IMG], ehs[N * EMB], uncond[EMB] = {-1, 0.5f}, pooled[N * P], uncond_pooled[P], tids[N * NT];
  dpo_rng r;
  dpo_rng_seed(&r, 11, 0);
  dpo_rng_fill_normal(&r, x_T, N * IMG);
  dpo_rng_fill_normal(&r, ehs, N * EMB);
  dpo_rng_fill_normal(&r, pooled, N * P);
  dpo_rng_fill_normal(&r, uncond_pooled, P);
  /* The plain sampler has one unconditional embedding for every row: the same time ids in every row. */
  const float row_tids[NT] = {1024, 768, 16, 32, 1024, 1024};
  for (int i = 0; i < N; i++) memcpy(tids + i * NT, row_tids, sizeof row_tids);
  /* The same conditioning inside wider text embeddings. */
  enum { W = EMB + P + NT };
  float wide[N * W], wide_uncond[W];
  for (int i = 0; i < N; i++) {
    memcpy(wide + i * W, ehs + i * EMB, sizeof(float) * EMB);
    memcpy(wide + i * W + EMB, pooled + i * P, sizeof(float) * P);
    memcpy(wide + i * W + EMB + P, row_tids, sizeof row_tids);
  }
  memcpy(wide_uncond, uncond, sizeof uncond);
  memcpy(wide_uncond + EMB, uncond_pooled, sizeof uncond_pooled);
  memcpy(wide_uncond + EMB + P, row_tids, sizeof row_tids);

  ddim_added added = {.pooled = P, .text_embeds = pooled, .uncond_text_embeds = uncond_pooled, .time_ids = tids};
  char err[256];
  for (int g = 1; g <= 3; g += 2) {
    ddim_params p = ddim_default_params();
    p.steps = 5;
    p.guidance = g;
    float xa[N * IMG], xp[N * IMG];
    memcpy(xa, x_T, sizeof xa);
    memcpy(xp, x_T, sizeof xp);
    cond_model ma = {.s = &s, .pooled = pooled, .uncond_pooled = uncond_pooled, .tids = tids, .cfg = g > 1};
    cond_model mp = {.s = &s, .in_ehs = 1};
    assert_int_equal(ddim_sample_added(&s, &p, added_model, &ma, N, IMG, EMB, ehs, uncond, &added, xa, err, sizeof err), 0);
    assert_int_equal(ddim_sample(&s, &p, plain_model, &mp, N, IMG, W, wide, wide_uncond, xp, err, sizeof err), 0);
    assert_int_equal(ma.calls, 5);
    assert_int_equal(ma.checked, 5 * (g > 1 ? 2 * N : N));
    assert_memory_equal(xa, xp, sizeof xa);
    double moved = 0;
    for (int j = 0; j < N * IMG; j++) moved = fmax(moved, fabs(xa[j] - x_T[j]));
    assert_true(moved > 1e-2);
  }
  /* Per-row time ids that differ reach their rows too (the recording model checks them). */
  for (int i = 0; i < N; i++) tids[i * NT + 2] = (float)(8 * i);
  ddim_params p = ddim_default_params();
  p.steps = 2;
  float xa[N * IMG];
  memcpy(xa, x_T, sizeof xa);
  cond_model ma = {.s = &s, .pooled = pooled, .uncond_pooled = uncond_pooled, .tids = tids, .cfg = 1};
  assert_int_equal(ddim_sample_added(&s, &p, added_model, &ma, N, IMG, EMB, ehs, uncond, &added, xa, err, sizeof err), 0);
  assert_int_equal(ma.checked, 2 * 2 * N);
  /* Guidance without the empty prompt's pooled embedding is refused, saying so. */
  added.uncond_text_embeds = NULL;
  assert_int_equal(ddim_sample_added(&s, &p, added_model, &ma, N, IMG, EMB, ehs, uncond, &added, xa, err, sizeof err),
                   DPOD_EINVAL);
  assert_non_null(strstr(err, "empty prompt's pooled embedding"));
  dpo_schedule_free(&s);
}

int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      cmocka_unit_test(ddim_added_conditioning_reaches_every_row_and_samples_as_the_plain_sampler),
  };
  return CMOCKA_MAIN("ddim_added", all, NULL, NULL);
}
