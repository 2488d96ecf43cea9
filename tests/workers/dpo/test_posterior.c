/* VAE posteriors in the preference format (version 2) and the latents drawn from them: the round trip,
 * every refusal of a malformed dataset, the draw against an independent float64 recomputation from the
 * RNG's normals for the key, and the flip choice, deterministic and keyed. Run one case with
 * `test_posterior NAME`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_util.h"

#include "cmocka_main.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "dpod_error.h"
#include "dpod_half.h"
#include "posterior.h"
#include "pref_format.h"
#include "rng.h"
#include "safetensors.h"
#include "tool_data.h"

static char tmpdir[256];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(tmpdir, sizeof tmpdir, "dpod-posterior");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(tmpdir);
}

enum { PC = 4, PH = 3, PW = 2, PL = 2, PD = 3, PIMG = PC * PH * PW, PEMB = PL * PD, PAIRS = 10 };
static const double SCALE = 0.18215;

/* Known values: image `side` (0 winner, 1 loser) of pair i, flipped or not. Element 0 of every logvar is
 * below diffusers' clamp (-30) and element 1 above it (20), so the clamp is exercised. */
static float mean_value(size_t i, int side, int flip, size_t j) {
  return (float)(3.0 * sin(0.31 * (double)i + 0.17 * (double)j + 1.3 * side + 0.7 * flip));
}
static float logvar_value(size_t i, int side, int flip, size_t j) {
  if (j == 0) return -41.0f;
  if (j == 1) return 23.5f;
  return (float)(-3.0 + 2.5 * cos(0.13 * (double)i - 0.29 * (double)j + 0.5 * side - 0.9 * flip));
}
static float frozen_value(size_t i, int side, size_t j) { return (float)(0.5 * (double)j - (double)i - 7.0 * side); }

typedef struct {
  int posterior, flipped, only;
  st_dtype dtype;
} known_opts;

/* PAIRS train pairs (4 per shard) and 2 validation pairs over 3 prompts. */
static const char *write_known(const char *name, known_opts o) {
  static char dir[512];
  snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
  pref_writer_params p = pref_writer_default_params();
  p.channels = PC;
  p.height = PH;
  p.width = PW;
  p.text_len = PL;
  p.embed_dim = PD;
  p.latent_dtype = p.embed_dtype = o.dtype;
  p.shard_pairs = 4;
  p.posterior = o.posterior;
  p.posterior_flipped = o.flipped;
  p.posterior_only = o.only;
  p.scaling_factor = SCALE;
  pref_writer *w;
  char err[512];
  assert_int_equal(pref_writer_open(dir, &p, &w, err, sizeof err), 0);
  float e[PEMB];
  for (int q = 0; q < 3; q++) {
    for (int k = 0; k < PEMB; k++) e[k] = (float)(q + 0.1 * k);
    assert_int_equal(pref_writer_add_prompt(w, e), 0);
  }
  for (size_t i = 0; i < PAIRS; i++) {
    static float arr[2][6][PIMG]; /* per side: frozen, mean, logvar, flip mean, flip logvar */
    pref_posterior q[2];
    for (int s = 0; s < 2; s++) {
      for (size_t j = 0; j < PIMG; j++) {
        arr[s][0][j] = frozen_value(i, s, j);
        arr[s][1][j] = mean_value(i, s, 0, j);
        arr[s][2][j] = logvar_value(i, s, 0, j);
        arr[s][3][j] = mean_value(i, s, 1, j);
        arr[s][4][j] = logvar_value(i, s, 1, j);
      }
      q[s] = (pref_posterior){arr[s][1], arr[s][2], o.flipped ? arr[s][3] : NULL, o.flipped ? arr[s][4] : NULL};
    }
    const float *fw = o.only ? NULL : arr[0][0], *fl = o.only ? NULL : arr[1][0];
    int rc = pref_writer_add_pair_posterior(w, "train", fw, fl, (uint32_t)(i % 3), NULL, NULL,
                                            o.posterior ? &q[0] : NULL, o.posterior ? &q[1] : NULL);
    if (rc) fprintf(stderr, "%s\n", pref_writer_last_error(w));
    assert_int_equal(rc, 0);
    if (i < 2)
      assert_int_equal(pref_writer_add_pair_posterior(w, "validation", fw, fl, 0, NULL, NULL, o.posterior ? &q[0] : NULL,
                                                      o.posterior ? &q[1] : NULL),
                       0);
  }
  int rc = pref_writer_finish(w, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  return dir;
}

static void open_ok(const char *dir, dpo_dataset *ds) {
  dataset_open_params op = dataset_open_default_params();
  char err[1024];
  int rc = dataset_open(dir, &op, ds, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
}

static void expect_refused(const char *dir, int status, const char *w1, const char *w2) {
  dataset_open_params op = dataset_open_default_params();
  dpo_dataset ds;
  char err[1024] = "";
  int rc = dataset_open(dir, &op, &ds, err, sizeof err);
  if (rc != status) fprintf(stderr, "expected %s, got %s: %s\n", dpod_err_name(status), dpod_err_name(rc), err);
  assert_int_equal(rc, status);
  const char *words[2] = {w1, w2};
  for (int i = 0; i < 2; i++) {
    if (words[i] && !strstr(err, words[i])) fprintf(stderr, "'%s' not in: %s\n", words[i], err);
    if (words[i]) assert_non_null(strstr(err, words[i]));
  }
  assert_null(ds.store_);
}

static float f16_round(float x) { return dpod_f16_to_f32(dpod_f32_to_f16(x)); }

static void check_round_trip(st_dtype dtype) {
  const char *dir = write_known(dtype == ST_F16 ? "f16" : "f32", (known_opts){1, 1, 0, dtype});
  dpo_dataset ds;
  open_ok(dir, &ds);
  assert_true(ds.posterior && ds.posterior_flipped && !ds.posterior_only);
  assert_true(ds.scaling_factor == SCALE);
  assert_int_equal(ds.num_pairs, PAIRS);
  float m[PIMG], lv[PIMG], w[PIMG], l[PIMG];
  for (size_t i = 0; i < PAIRS; i++) {
    assert_int_equal(dataset_copy_pair(&ds, i, w, l), 0);
    for (int s = 0; s < 2; s++)
      for (int f = 0; f < 2; f++) {
        assert_int_equal(dataset_copy_posterior(&ds, i, s, f, m, lv), 0);
        for (size_t j = 0; j < PIMG; j++) {
          float em = mean_value(i, s, f, j), el = logvar_value(i, s, f, j);
          if (dtype == ST_F16) em = f16_round(em), el = f16_round(el);
          assert_true(m[j] == em);
          assert_true(lv[j] == el);
        }
      }
    for (size_t j = 0; j < PIMG; j++) {
      float ew = frozen_value(i, 0, j), el = frozen_value(i, 1, j);
      if (dtype == ST_F16) ew = f16_round(ew), el = f16_round(el);
      assert_true(w[j] == ew && l[j] == el); /* the frozen latents, untouched by the posteriors */
    }
  }
  assert_int_equal(dataset_copy_posterior(&ds, PAIRS, 0, 0, m, lv), DPOD_EINVAL);
  dataset_free(&ds);
}

static void posterior_round_trip_f32_is_exact(void **state) {
  (void)state;
  check_round_trip(ST_F32);
}

static void posterior_round_trip_f16_is_rounded_f32(void **state) {
  (void)state;
  check_round_trip(ST_F16);
}

static cJSON *read_manifest(const char *dir) {
  char path[600];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  static char text[1 << 16];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = 0;
  cJSON *m = cJSON_Parse(text);
  assert_non_null(m);
  return m;
}

static void write_manifest(const char *dir, cJSON *m) {
  char path[600];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  char *text = cJSON_Print(m);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  free(text);
}

/* Old readers keep reading what has no posteriors: version 1, as before. */
static void without_posteriors_the_dataset_stays_version_1(void **state) {
  (void)state;
  const char *dir = write_known("plain", (known_opts){0, 0, 0, ST_F32});
  cJSON *m = read_manifest(dir);
  assert_int_equal(cJSON_GetObjectItem(m, "version")->valueint, 1);
  assert_null(cJSON_GetObjectItem(m, "posterior"));
  cJSON_Delete(m);
  dpo_dataset ds;
  open_ok(dir, &ds);
  assert_false(ds.posterior);
  float x[PIMG];
  assert_int_equal(dataset_copy_posterior(&ds, 0, 0, 0, x, x), DPOD_ENOENT);
  assert_int_equal(posterior_draw_pair(&ds, 0, 1, 0, 0, x, x, NULL), DPOD_ENOENT);
  dataset_free(&ds);
  dir = write_known("post", (known_opts){1, 0, 0, ST_F32});
  m = read_manifest(dir);
  assert_int_equal(cJSON_GetObjectItem(m, "version")->valueint, 2);
  cJSON *po = cJSON_GetObjectItem(m, "posterior");
  assert_true(cJSON_GetObjectItem(po, "scaling_factor")->valuedouble == SCALE);
  assert_true(cJSON_IsFalse(cJSON_GetObjectItem(po, "flipped")));
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(po, "frozen_latents")));
  cJSON_Delete(m);
}

/* Without frozen latents the shards hold none, and the copy API hands out the posterior's mean times the
 * scaling factor (what evaluations and dpo-tool sample then see). */
static void posterior_only_datasets_serve_the_scaled_mean_as_the_latent(void **state) {
  (void)state;
  const char *dir = write_known("only", (known_opts){1, 0, 1, ST_F32});
  char path[600], err[512];
  snprintf(path, sizeof path, "%s/train-00000.safetensors", dir);
  st_file *f;
  assert_int_equal(st_open(path, &f, err, sizeof err), 0);
  assert_null(st_find(f, "winner"));
  assert_non_null(st_find(f, "loser_logvar"));
  assert_null(st_find(f, "loser_flip_mean"));
  st_close(f);
  dpo_dataset ds;
  open_ok(dir, &ds);
  assert_true(ds.posterior_only);
  float w[PIMG], l[PIMG];
  for (size_t i = 0; i < PAIRS; i++) {
    assert_int_equal(dataset_copy_pair(&ds, i, w, l), 0);
    for (size_t j = 0; j < PIMG; j++) {
      assert_true(fabs(w[j] - (double)mean_value(i, 0, 0, j) * SCALE) <= 1e-6);
      assert_true(fabs(l[j] - (double)mean_value(i, 1, 0, j) * SCALE) <= 1e-6);
    }
  }
  dataset_free(&ds);
}

/* The writer refuses what would make a malformed dataset, by name. */
static void writer_refuses_malformed_posteriors_naming_them(void **state) {
  (void)state;
  pref_writer_params p = pref_writer_default_params();
  p.channels = PC;
  p.height = PH;
  p.width = PW;
  p.text_len = PL;
  p.embed_dim = PD;
  p.latent_dtype = ST_F32;
  pref_writer *w = NULL;
  char err[512] = "";
  const char *dir = write_known("base", (known_opts){0, 0, 0, ST_F32}); /* a directory to reuse */
  p.posterior_flipped = 1;                                                /* flipped without unflipped */
  assert_int_equal(pref_writer_open(dir, &p, &w, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "flipped"));
  p.posterior_flipped = 0;
  p.posterior = 1;
  p.scaling_factor = 0; /* no scaling factor */
  assert_int_equal(pref_writer_open(dir, &p, &w, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "scaling factor"));
  p.scaling_factor = SCALE;
  assert_int_equal(pref_writer_open(dir, &p, &w, err, sizeof err), 0);
  float e[PEMB] = {0}, a[PIMG], m[PIMG], lv[PIMG];
  for (size_t j = 0; j < PIMG; j++) a[j] = m[j] = lv[j] = 0.5f;
  assert_int_equal(pref_writer_add_prompt(w, e), 0);
  pref_posterior q = {m, lv, NULL, NULL}, qf = {m, lv, m, lv};
  assert_int_equal(pref_writer_add_pair(w, "train", a, a, 0), DPOD_EINVAL);
  assert_non_null(strstr(pref_writer_last_error(w), "winner_mean"));
  assert_int_equal(pref_writer_add_pair_posterior(w, "train", a, a, 0, NULL, NULL, &qf, &q), DPOD_EINVAL);
  assert_non_null(strstr(pref_writer_last_error(w), "winner_flip_mean"));
  lv[3] = NAN;
  assert_int_equal(pref_writer_add_pair_posterior(w, "train", a, a, 0, NULL, NULL, &q, &q), DPOD_ENUMERIC);
  assert_non_null(strstr(pref_writer_last_error(w), "'winner_logvar' holds nan at element 3"));
  lv[3] = -INFINITY; /* clamped at use, as diffusers does: kept */
  m[5] = INFINITY;
  assert_int_equal(pref_writer_add_pair_posterior(w, "train", a, a, 0, NULL, NULL, &q, &q), DPOD_ENUMERIC);
  assert_non_null(strstr(pref_writer_last_error(w), "'winner_mean' holds inf at element 5"));
  m[5] = 0.5f;
  assert_int_equal(pref_writer_add_pair_posterior(w, "train", a, a, 0, NULL, NULL, &q, &q), 0);
  assert_int_equal(pref_writer_finish(w, err, sizeof err), 0);
  dpo_dataset ds;
  open_ok(dir, &ds);
  assert_int_equal(dataset_copy_posterior(&ds, 0, 0, 0, m, lv), 0);
  assert_true(isinf(lv[3]) && lv[3] < 0);
  /* The draw clamps it: std exp(-15), the latent the mean's, to float precision. */
  float x[PIMG], y[PIMG];
  assert_int_equal(posterior_draw_pair(&ds, 0, 3, 9, 0, x, y, NULL), 0);
  assert_true(fabs(x[3] - 0.5 * SCALE) < 1e-6);
  dataset_free(&ds);
}

/* Rewrites shard train-00001 of dir (4 pairs, F32) with tensors as the test wants them. */
static void rewrite_shard(const char *dir, int with_unflipped, int with_flipped, int bad_shape, int nan_logvar,
                          int inf_mean) {
  char path[600], err[512];
  snprintf(path, sizeof path, "%s/train-00001.safetensors", dir);
  /* Room for the wrong shape too ([4, PC, PW, PH + 1] holds more than 4 records of PIMG). */
  enum { ROOM = 4 * PC * PW * (PH + 1) > 4 * PIMG ? 4 * PC * PW * (PH + 1) : 4 * PIMG };
  static float x[ROOM], y[ROOM], bad[ROOM];
  int32_t prompt[4] = {0, 1, 2, 0};
  for (size_t j = 0; j < ROOM; j++) x[j] = 0.25f, y[j] = -1.0f, bad[j] = 0.25f;
  int64_t s4[4] = {4, PC, PH, PW}, wrong[4] = {4, PC, PW, PH + 1}, ps[1] = {4};
  if (nan_logvar) y[PIMG + 2] = NAN; /* record 1, element 2 */
  if (inf_mean) bad[2 * PIMG + 7] = INFINITY; /* record 2, element 7 */
  st_writer *w = st_writer_new();
  assert_int_equal(st_writer_add(w, "winner", ST_F32, 4, s4, x), 0);
  assert_int_equal(st_writer_add(w, "loser", ST_F32, 4, s4, x), 0);
  assert_int_equal(st_writer_add(w, "prompt", ST_I32, 1, ps, prompt), 0);
  for (int s = 0; s < 2; s++)
    for (int k = 0; k < PREF_POST_KINDS; k++) {
      if (k < 2 ? !with_unflipped : !with_flipped) continue;
      const float *data = k & 1 ? y : s == 1 && k == 0 ? bad : x;
      const int64_t *shape = bad_shape && s == 1 && k == PREF_POST_LOGVAR ? wrong : s4;
      assert_int_equal(st_writer_add(w, pref_posterior_tensor(s, k), ST_F32, 4, shape, data), 0);
    }
  assert_int_equal(st_writer_write(w, path, NULL, err, sizeof err), 0);
  st_writer_free(w);
}

static void open_refuses_malformed_posteriors_naming_the_problem(void **state) {
  (void)state;
  const char *dir = write_known("bad", (known_opts){1, 1, 0, ST_F32});
  char d[600];
  snprintf(d, sizeof d, "%s", dir);
  /* Shards. */
  rewrite_shard(d, 1, 0, 0, 0, 0); /* the manifest says flipped, the shard has none */
  expect_refused(d, DPOD_EFORMAT, "train-00001.safetensors", "no tensor 'winner_flip_mean'");
  rewrite_shard(d, 1, 1, 1, 0, 0);
  expect_refused(d, DPOD_ESHAPE, "tensor 'loser_logvar' is F32 [4, 4, 2, 4], expected F32 [4, 4, 3, 2]", NULL);
  rewrite_shard(d, 1, 1, 0, 1, 0);
  expect_refused(d, DPOD_ENUMERIC, "record 1 (pair 5 of 'train'): 'winner_logvar' holds nan at element 2", NULL);
  rewrite_shard(d, 1, 1, 0, 0, 1);
  expect_refused(d, DPOD_ENUMERIC, "record 2 (pair 6 of 'train'): 'loser_mean' holds inf at element 7", NULL);
  rewrite_shard(d, 0, 1, 0, 0, 0); /* flipped without unflipped */
  expect_refused(d, DPOD_EFORMAT, "no tensor 'winner_mean'", NULL);
  rewrite_shard(d, 1, 1, 0, 0, 0);
  dpo_dataset ds;
  open_ok(d, &ds);
  dataset_free(&ds);

  /* The manifest. */
  cJSON *m = read_manifest(d);
  cJSON *po = cJSON_GetObjectItem(m, "posterior");
  cJSON_ReplaceItemInObject(po, "flipped", cJSON_CreateFalse());
  write_manifest(d, m);
  expect_refused(d, DPOD_EFORMAT, "holds 'winner_flip_mean' but the manifest announces no flipped posteriors", NULL);
  cJSON *saved = cJSON_DetachItemFromObject(m, "posterior");
  write_manifest(d, m);
  expect_refused(d, DPOD_EFORMAT, "holds 'winner_mean' but the manifest announces no posteriors", NULL);
  cJSON_AddItemToObject(m, "posterior", saved);
  cJSON_ReplaceItemInObject(saved, "flipped", cJSON_CreateTrue());
  cJSON_ReplaceItemInObject(m, "version", cJSON_CreateNumber(1));
  write_manifest(d, m);
  expect_refused(d, DPOD_EFORMAT, "'posterior' needs format version 2", NULL);
  cJSON_ReplaceItemInObject(m, "version", cJSON_CreateNumber(3));
  write_manifest(d, m);
  expect_refused(d, DPOD_EUNSUPPORTED, "format version 3", NULL);
  cJSON_ReplaceItemInObject(m, "version", cJSON_CreateNumber(2));
  const double bad_scales[] = {0, -1, 101};
  for (int i = 0; i < 3; i++) {
    cJSON_ReplaceItemInObject(saved, "scaling_factor", cJSON_CreateNumber(bad_scales[i]));
    write_manifest(d, m);
    expect_refused(d, DPOD_EFORMAT, "'scaling_factor' in (0, 100]", NULL);
  }
  cJSON_ReplaceItemInObject(saved, "scaling_factor", cJSON_CreateString("0.18215"));
  write_manifest(d, m);
  expect_refused(d, DPOD_EFORMAT, "scaling_factor", NULL);
  cJSON_ReplaceItemInObject(saved, "scaling_factor", cJSON_CreateNumber(SCALE));
  cJSON_ReplaceItemInObject(saved, "flipped", cJSON_CreateString("yes"));
  write_manifest(d, m);
  expect_refused(d, DPOD_EFORMAT, "'posterior.flipped'", NULL);
  cJSON_ReplaceItemInObject(saved, "flipped", cJSON_CreateTrue());
  cJSON_ReplaceItemInObject(saved, "frozen_latents", cJSON_CreateFalse());
  write_manifest(d, m);
  open_ok(d, &ds); /* frozen latents present but unannounced are simply not used */
  assert_true(ds.posterior_only);
  dataset_free(&ds);
  cJSON_Delete(m);
}

/* The RNG's normals for (seed ^ POSTERIOR_SALT, key), after the two flip coins: [2, PIMG] and the coins. */
static void reference_stream(uint64_t seed, uint64_t key, double *normals, double coins[2]) {
  dpo_rng r;
  dpo_rng_seed(&r, seed ^ POSTERIOR_SALT, key);
  coins[0] = dpo_rng_uniform(&r);
  coins[1] = dpo_rng_uniform(&r);
  for (size_t j = 0; j < 2 * PIMG; j++) normals[j] = dpo_rng_normal(&r);
}

/* latent = (mean + exp(0.5 clamp(logvar, -30, 20)) n) x scaling_factor, in float64 from the known values. */
static double reference_latent(size_t pair, int side, int flip, size_t j, double n) {
  double lv = fmin(fmax((double)logvar_value(pair, side, flip, j), -30.0), 20.0);
  return ((double)mean_value(pair, side, flip, j) + exp(0.5 * lv) * n) * SCALE;
}

static void assert_close(double got, double want) {
  if (!(fabs(got - want) <= 1e-6 * fabs(want) + 1e-6)) fail_msg("got %.9g, want %.9g", got, want);
}

static void the_draw_matches_a_float64_recomputation_from_the_key(void **state) {
  (void)state;
  const char *dir = write_known("draw", (known_opts){1, 1, 0, ST_F32});
  dpo_dataset ds;
  open_ok(dir, &ds);
  double n[2 * PIMG], coins[2];
  float w[PIMG], l[PIMG];
  const uint64_t seeds[] = {0, 42};
  for (int si = 0; si < 2; si++)
    for (uint64_t key = 0; key < 40; key++) {
      size_t pair = (size_t)(key * 3 % PAIRS);
      reference_stream(seeds[si], key, n, coins);
      for (int flip_on = 0; flip_on < 2; flip_on++) {
        int flips[2];
        assert_int_equal(posterior_draw_pair(&ds, pair, seeds[si], key, flip_on, w, l, flips), 0);
        for (int s = 0; s < 2; s++) assert_int_equal(flips[s], flip_on && coins[s] < 0.5);
        for (size_t j = 0; j < PIMG; j++) {
          assert_close(w[j], reference_latent(pair, 0, flips[0], j, n[j]));
          assert_close(l[j], reference_latent(pair, 1, flips[1], j, n[PIMG + j]));
        }
      }
    }
  /* Winner and loser are separate draws, and the clamp is what bounds element 1's spread. */
  reference_stream(0, 0, n, coins);
  assert_true(n[0] != n[PIMG]);
  dataset_free(&ds);
}

/* The batch layout is dataset_fill_batch's: winners in rows 0..b-1, losers in b..2b-1, each pair drawn
 * from its own key, whatever else is in the batch. */
static void a_batch_draws_each_pair_from_its_own_key(void **state) {
  (void)state;
  const char *dir = write_known("batch", (known_opts){1, 1, 0, ST_F16});
  dpo_dataset ds;
  open_ok(dir, &ds);
  size_t pairs[3] = {7, 2, 7};
  uint64_t keys[3] = {100, 5, 101};
  float x0[6 * PIMG], w[PIMG], l[PIMG];
  assert_int_equal(posterior_fill_batch(&ds, pairs, keys, 3, 11, 1, x0), 0);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(posterior_draw_pair(&ds, pairs[i], 11, keys[i], 1, w, l, NULL), 0);
    assert_memory_equal(x0 + (size_t)i * PIMG, w, sizeof w);
    assert_memory_equal(x0 + (size_t)(3 + i) * PIMG, l, sizeof l);
  }
  /* The same pair under two keys (two epochs) gets two draws. */
  assert_memory_not_equal(x0, x0 + 2 * PIMG, PIMG * sizeof(float));
  size_t bad = PAIRS;
  assert_int_equal(posterior_fill_batch(&ds, &bad, keys, 1, 11, 1, x0), DPOD_EINVAL);
  dataset_free(&ds);
}

/* Each image's flip is its own coin from its pair's key: about half of the images flipped, winner and
 * loser independently, the same choices on every call, other choices for other keys or seeds, and none
 * at all without random_flip (which a dataset without flipped posteriors refuses). */
static void flip_selection_is_per_image_deterministic_and_keyed(void **state) {
  (void)state;
  const char *dir = write_known("flip", (known_opts){1, 1, 0, ST_F32});
  dpo_dataset ds;
  open_ok(dir, &ds);
  float w[PIMG], l[PIMG];
  int flips[2], again[2], count[2] = {0, 0}, differ = 0, seed_differs = 0;
  const int N = 2000;
  for (uint64_t key = 0; key < (uint64_t)N; key++) {
    assert_int_equal(posterior_draw_pair(&ds, key % PAIRS, 7, key, 1, w, l, flips), 0);
    assert_int_equal(posterior_draw_pair(&ds, (key + 1) % PAIRS, 7, key, 1, w, l, again), 0);
    assert_int_equal(flips[0], again[0]); /* keyed by the position, not by the pair drawn */
    assert_int_equal(flips[1], again[1]);
    count[0] += flips[0];
    count[1] += flips[1];
    differ += flips[0] != flips[1];
    assert_int_equal(posterior_draw_pair(&ds, key % PAIRS, 8, key, 1, w, l, again), 0);
    seed_differs += again[0] != flips[0];
    assert_int_equal(posterior_draw_pair(&ds, key % PAIRS, 7, key, 0, w, l, again), 0);
    assert_true(again[0] == 0 && again[1] == 0);
  }
  /* Binomial(2000, 1/2): sd 22; 5 sd either side. */
  for (int s = 0; s < 2; s++) assert_true(abs(count[s] - N / 2) < 112);
  assert_true(abs(differ - N / 2) < 112);
  assert_true(abs(seed_differs - N / 2) < 112);
  dataset_free(&ds);
  dir = write_known("noflip", (known_opts){1, 0, 0, ST_F32});
  open_ok(dir, &ds);
  assert_int_equal(posterior_draw_pair(&ds, 0, 7, 0, 1, w, l, flips), DPOD_ENOENT);
  assert_int_equal(posterior_draw_pair(&ds, 0, 7, 0, 0, w, l, flips), 0);
  dataset_free(&ds);
}

/* ---- dpo-tool import --posteriors --------------------------------------------------------------- */

/* Image uid u's posterior parameters [2C, H, W]: mean then logvar, flipped or not. */
static void params_of(int u, int flip, float *x) {
  for (size_t j = 0; j < PIMG; j++) {
    x[j] = mean_value((size_t)u, 0, flip, j);
    x[PIMG + j] = logvar_value((size_t)u, 0, flip, j);
  }
}

static const char *in_tmp(const char *name) {
  static char path[16][512];
  static int k;
  k = (k + 1) % 16;
  snprintf(path[k], sizeof path[k], "%s/%s", tmpdir, name);
  return path[k];
}

/* posteriors.safetensors and flipped.safetensors for images "u0", "u1", "u2" (one of them, `skip`, left
 * out of the unflipped file; -1 keeps all), embeddings for "cat" and "dog", and pairs.jsonl. */
static void write_import_inputs(int skip, int nan_logvar) {
  char err[512];
  for (int f = 0; f < 2; f++) {
    st_writer *w = st_writer_new();
    static float x[3][2 * PIMG];
    int64_t shape[4] = {1, 2 * PC, PH, PW};
    for (int u = 0; u < 3; u++) {
      if (!f && u == skip) continue;
      char name[8];
      snprintf(name, sizeof name, "u%d", u);
      params_of(u, f, x[u]);
      if (nan_logvar && !f && u == 1) x[u][PIMG + 4] = NAN;
      assert_int_equal(st_writer_add(w, name, ST_F32, u == 2 ? 3 : 4, u == 2 ? shape + 1 : shape, x[u]), 0);
    }
    assert_int_equal(st_writer_write(w, in_tmp(f ? "flipped.safetensors" : "posteriors.safetensors"), NULL, err,
                                     sizeof err), 0);
    st_writer_free(w);
  }
  st_writer *w = st_writer_new();
  static float e[2][PEMB];
  int64_t eshape[2] = {PL, PD};
  for (int k = 0; k < PEMB; k++) e[0][k] = 0.5f, e[1][k] = -0.5f;
  assert_int_equal(st_writer_add(w, "cat", ST_F32, 2, eshape, e[0]), 0);
  assert_int_equal(st_writer_add(w, "dog", ST_F32, 2, eshape, e[1]), 0);
  assert_int_equal(st_writer_write(w, in_tmp("embeddings.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);
  FILE *fp = fopen(in_tmp("pairs.jsonl"), "w");
  assert_non_null(fp);
  fputs("{\"caption\": \"cat\", \"image_0_uid\": \"u0\", \"image_1_uid\": \"u1\", \"label_0\": 0}\n"
        "{\"caption\": \"dog\", \"image_0_uid\": \"u2\", \"image_1_uid\": \"u0\", \"label_0\": 1}\n",
        fp);
  fclose(fp);
}

static int run_import(const char *out, int with_flipped, int with_scale, int skip_missing) {
  const char *argv[24];
  int argc = 0;
  argv[argc++] = "import";
  argv[argc++] = "--posteriors";
  argv[argc++] = in_tmp("posteriors.safetensors");
  if (with_flipped) {
    argv[argc++] = "--flipped-posteriors";
    argv[argc++] = in_tmp("flipped.safetensors");
  }
  if (with_scale) {
    argv[argc++] = "--scaling-factor";
    argv[argc++] = "0.13025";
  }
  if (skip_missing) argv[argc++] = "--skip-missing";
  argv[argc++] = "--embeddings";
  argv[argc++] = in_tmp("embeddings.safetensors");
  argv[argc++] = "--pairs";
  argv[argc++] = in_tmp("pairs.jsonl");
  argv[argc++] = "--dtype";
  argv[argc++] = "f32";
  argv[argc++] = "--out";
  argv[argc++] = out;
  argv[argc] = NULL;
  return tool_import_main(argc, (char **)argv);
}

/* Posteriors keyed by image uid follow their image when a pair is stored swapped, [2C, H, W] and
 * [1, 2C, H, W] alike; without --latents the dataset holds posteriors only. */
static void import_takes_posteriors_and_flipped_posteriors(void **state) {
  (void)state;
  write_import_inputs(-1, 0);
  const char *out = in_tmp("imported");
  assert_int_equal(run_import(out, 1, 1, 0), 0);
  dpo_dataset ds;
  open_ok(out, &ds);
  assert_true(ds.posterior && ds.posterior_flipped && ds.posterior_only);
  assert_true(ds.scaling_factor == 0.13025);
  assert_int_equal(ds.num_pairs, 2);
  const int uid[2][2] = {{1, 0}, {2, 0}}; /* winner, loser of each pair: the first is stored swapped */
  float m[PIMG], lv[PIMG], want[2 * PIMG];
  for (size_t i = 0; i < 2; i++)
    for (int s = 0; s < 2; s++)
      for (int f = 0; f < 2; f++) {
        assert_int_equal(dataset_copy_posterior(&ds, i, s, f, m, lv), 0);
        params_of(uid[i][s], f, want);
        assert_memory_equal(m, want, sizeof m);
        assert_memory_equal(lv, want + PIMG, sizeof lv);
      }
  dataset_free(&ds);
}

static void import_refuses_incomplete_posterior_options_and_data(void **state) {
  (void)state;
  write_import_inputs(1, 0);
  assert_int_equal(run_import(in_tmp("a"), 1, 0, 0), 2); /* no --scaling-factor */
  const char *argv[] = {"import", "--flipped-posteriors", in_tmp("flipped.safetensors"), "--embeddings",
                        in_tmp("embeddings.safetensors"), "--pairs", in_tmp("pairs.jsonl"), "--out", in_tmp("b"),
                        NULL};
  assert_int_equal(tool_import_main(9, (char **)argv), 2); /* flipped without unflipped */
  assert_int_equal(run_import(in_tmp("c"), 1, 1, 0), 1);   /* u1 has no posterior */
  assert_int_equal(run_import(in_tmp("d"), 1, 1, 1), 0);   /* ... skipped: the second pair remains */
  dpo_dataset ds;
  open_ok(in_tmp("d"), &ds);
  assert_int_equal(ds.num_pairs, 1);
  assert_true(ds.posterior_flipped);
  dataset_free(&ds);
  write_import_inputs(-1, 1);
  assert_int_equal(run_import(in_tmp("e"), 0, 1, 0), 1); /* NaN in u1's logvar */
}

#define CASE(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      CASE(posterior_round_trip_f32_is_exact),
      CASE(posterior_round_trip_f16_is_rounded_f32),
      CASE(without_posteriors_the_dataset_stays_version_1),
      CASE(posterior_only_datasets_serve_the_scaled_mean_as_the_latent),
      CASE(writer_refuses_malformed_posteriors_naming_them),
      CASE(open_refuses_malformed_posteriors_naming_the_problem),
      CASE(the_draw_matches_a_float64_recomputation_from_the_key),
      CASE(a_batch_draws_each_pair_from_its_own_key),
      CASE(flip_selection_is_per_image_deterministic_and_keyed),
      CASE(import_takes_posteriors_and_flipped_posteriors),
      CASE(import_refuses_incomplete_posterior_options_and_data),
  };
  return CMOCKA_MAIN("posterior", all, NULL, NULL);
}
