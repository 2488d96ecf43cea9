/* The preference dataset format, its validation, dpo-tool import and synth, and the DDIM sampler.
 * Run one case with `test_data NAME` (ctest does), or all with no argument. Each case works in a fresh
 * temporary directory. */
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
#include <unistd.h>

#include "dataset.h"
#include "ddim.h"
#include "rng.h"
#include "schedule.h"
#include "dpod_error.h"
#include "pref_format.h"
#include "safetensors.h"
#include "synth.h"
#include "tool_data.h"

static char tmpdir[256];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(tmpdir, sizeof tmpdir, "dpod-data");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(tmpdir);
}

static const char *in_tmp(const char *name) {
  static char path[16][512];
  static int k;
  k = (k + 1) % 16;
  snprintf(path[k], sizeof path[k], "%s/%s", tmpdir, name);
  return path[k];
}

/* ---- a small known dataset ---------------------------------------------------------------------- */

enum { TC = 4, TH = 3, TW = 2, TL = 3, TD = 5, TIMG = TC * TH * TW, TEMB = TL * TD };

static float winner_value(size_t pair, size_t j) { return (float)(2.0 * sin(0.37 * (double)pair + 0.11 * (double)j)); }
static float loser_value(size_t pair, size_t j) { return (float)(1.5 * cos(0.23 * (double)pair - 0.07 * (double)j)); }
static float prompt_value(size_t p, size_t k) { return (float)(0.01 * (double)k - (double)p * 0.5); }
static uint32_t prompt_of_pair(size_t pair, uint32_t prompts) { return (uint32_t)((pair * 7) % prompts); }

/* Writes `pairs` train pairs (4 per shard) and 3 validation pairs over `prompts` prompts (2 per prompt
 * shard) into tmpdir/name, with an empty prompt. */
static const char *write_known(const char *name, st_dtype dtype, size_t pairs, uint32_t prompts) {
  const char *dir = in_tmp(name);
  pref_writer_params p = pref_writer_default_params();
  p.channels = TC;
  p.height = TH;
  p.width = TW;
  p.text_len = TL;
  p.embed_dim = TD;
  p.latent_dtype = p.embed_dtype = dtype;
  p.shard_pairs = 4;
  p.shard_prompts = 2;
  pref_writer *w;
  char err[512];
  assert_int_equal(pref_writer_open(dir, &p, &w, err, sizeof err), 0);
  float a[TIMG], b[TIMG], e[TEMB];
  for (uint32_t q = 0; q < prompts; q++) {
    for (size_t k = 0; k < TEMB; k++) e[k] = prompt_value(q, k);
    assert_int_equal(pref_writer_add_prompt(w, e), 0);
  }
  for (size_t k = 0; k < TEMB; k++) e[k] = 0.25f;
  assert_int_equal(pref_writer_set_empty_prompt(w, e), 0);
  for (size_t i = 0; i < pairs; i++) {
    for (size_t j = 0; j < TIMG; j++) {
      a[j] = winner_value(i, j);
      b[j] = loser_value(i, j);
    }
    assert_int_equal(pref_writer_add_pair(w, "train", a, b, prompt_of_pair(i, prompts)), 0);
    if (i < 3) assert_int_equal(pref_writer_add_pair(w, "validation", b, a, 0), 0);
  }
  int rc = pref_writer_finish(w, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  return dir;
}

static void check_round_trip(st_dtype dtype) {
  const char *dir = write_known(dtype == ST_F16 ? "f16" : "f32", dtype, 10, 5);
  dataset_open_params op = dataset_open_default_params();
  op.channels = TC;
  op.height = TH;
  op.width = TW;
  op.embed_dim = TD;
  dpo_dataset ds;
  char err[512];
  int rc = dataset_open(dir, &op, &ds, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(ds.num_pairs, 10);
  assert_int_equal(ds.num_prompts, 5);
  assert_int_equal(ds.text_len, TL);
  assert_int_equal(ds.embed_dim, TD);
  assert_true(ds.has_empty_prompt);
  float w[TIMG], l[TIMG], e[TEMB];
  for (size_t i = 0; i < 10; i++) {
    assert_int_equal(dataset_copy_pair(&ds, i, w, l), 0);
    for (size_t j = 0; j < TIMG; j++) {
      float ew = winner_value(i, j), el = loser_value(i, j);
      if (dtype == ST_F16) {
        ew = dpod_f16_to_f32(dpod_f32_to_f16(ew));
        el = dpod_f16_to_f32(dpod_f32_to_f16(el));
      }
      assert_true(w[j] == ew);
      assert_true(l[j] == el);
    }
    assert_int_equal(dataset_prompt_index(&ds, i), prompt_of_pair(i, 5));
    assert_int_equal(dataset_copy_prompt(&ds, i, e), 0);
    for (size_t k = 0; k < TEMB; k++)
      assert_true(fabsf(e[k] - prompt_value(prompt_of_pair(i, 5), k)) <= (dtype == ST_F16 ? 2e-3f : 0.0f));
  }
  assert_int_equal(dataset_copy_empty_prompt(&ds, e), 0);
  assert_true(e[0] == 0.25f && e[TEMB - 1] == 0.25f);
  assert_int_not_equal(dataset_copy_pair(&ds, 10, w, l), 0);
  /* On-disk datasets hand out no float views. */
  assert_null(dataset_winner(&ds, 0));
  dataset_free(&ds);

  op.split = "validation";
  assert_int_equal(dataset_open(dir, &op, &ds, err, sizeof err), 0);
  assert_int_equal(ds.num_pairs, 3);
  assert_int_equal(dataset_copy_pair(&ds, 2, w, l), 0);
  assert_true(fabsf(w[5] - loser_value(2, 5)) < 2e-3f); /* validation stored (b, a) */
  dataset_free(&ds);
}

static void format_round_trip_f32_is_exact(void **state) {
  (void)state;
  check_round_trip(ST_F32);
}

static void format_round_trip_f16_is_rounded_f32(void **state) {
  (void)state;
  check_round_trip(ST_F16);
}

static void f16_conversion_rounds_to_nearest_even(void **state) {
  (void)state;
  assert_int_equal(dpod_f32_to_f16(1.0f), 0x3c00);
  assert_int_equal(dpod_f32_to_f16(-2.0f), 0xc000);
  assert_int_equal(dpod_f32_to_f16(65504.0f), 0x7bff);
  assert_int_equal(dpod_f32_to_f16(65520.0f), 0x7c00);          /* rounds up to infinity */
  assert_int_equal(dpod_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);   /* tie: to even */
  assert_int_equal(dpod_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie: to even, upwards */
  assert_int_equal(dpod_f32_to_f16(0x1p-24f), 0x0001);          /* smallest subnormal */
  assert_int_equal(dpod_f32_to_f16(0x1p-26f), 0x0000);
  assert_true(isnan(dpod_f16_to_f32(dpod_f32_to_f16(NAN))));
  for (int i = -20000; i < 20000; i += 7) {
    float x = (float)i * 0.013f;
    assert_true(fabsf(dpod_f16_to_f32(dpod_f32_to_f16(x)) - x) <= fabsf(x) * 0x1p-11f + 0x1p-25f);
  }
}

/* ---- validation on purpose-built bad shards ----------------------------------------------------- */

/* Opens tmpdir/name's train split expecting `status` and a message containing each non-NULL word. */
static void expect_open_refused(const char *dir, int status, const char *w1, const char *w2, const char *w3) {
  dataset_open_params op = dataset_open_default_params();
  op.channels = TC;
  op.height = TH;
  op.width = TW;
  op.embed_dim = TD;
  dpo_dataset ds;
  char err[1024] = "";
  int rc = dataset_open(dir, &op, &ds, err, sizeof err);
  if (rc != status) fprintf(stderr, "expected %s, got %s: %s\n", dpod_err_name(status), dpod_err_name(rc), err);
  assert_int_equal(rc, status);
  const char *words[3] = {w1, w2, w3};
  for (int i = 0; i < 3; i++) {
    if (words[i] && !strstr(err, words[i])) fprintf(stderr, "'%s' not in: %s\n", words[i], err);
    if (words[i]) assert_non_null(strstr(err, words[i]));
  }
  assert_null(ds.store_);
}

/* Replaces shard train-00001 (4 pairs) of `dir` with one whose tensors are given. */
static void replace_shard(const char *dir, st_dtype dtype, const int64_t *lat_shape, const void *winner,
                          const void *loser, const int32_t *prompt) {
  char path[600], err[512];
  snprintf(path, sizeof path, "%s/train-00001.safetensors", dir);
  st_writer *w = st_writer_new();
  int64_t ps[1] = {4};
  assert_int_equal(st_writer_add(w, "winner", dtype, 4, lat_shape, winner), 0);
  assert_int_equal(st_writer_add(w, "loser", dtype, 4, lat_shape, loser), 0);
  assert_int_equal(st_writer_add(w, "prompt", ST_I32, 1, ps, prompt), 0);
  assert_int_equal(st_writer_write(w, path, NULL, err, sizeof err), 0);
  st_writer_free(w);
}

static void open_refuses_truncated_shard_naming_it(void **state) {
  (void)state;
  const char *dir = write_known("trunc", ST_F16, 10, 5);
  char path[600];
  snprintf(path, sizeof path, "%s/train-00001.safetensors", dir);
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fclose(f);
  assert_int_equal(truncate(path, n - 10), 0);
  expect_open_refused(dir, DPOD_EFORMAT, "train-00001.safetensors", NULL, NULL);
}

/* A shard that is a symbolic link leading out of the dataset (here to a copy of another dataset's
 * shard, so the file itself would be valid) is refused by name; one leading inside is followed. */
static void open_refuses_shard_symlinked_outside_the_dataset(void **state) {
  (void)state;
  const char *other = write_known("other", ST_F16, 10, 5);
  char outside[600], inside[600], shard[600];
  snprintf(outside, sizeof outside, "%s/train-00001.safetensors", other);
  const char *dir = write_known("linked", ST_F16, 10, 5);
  snprintf(shard, sizeof shard, "%s/train-00001.safetensors", dir);
  snprintf(inside, sizeof inside, "%s/train-00001.real", dir);
  assert_int_equal(rename(shard, inside), 0);
  assert_int_equal(symlink("train-00001.real", shard), 0);
  dataset_open_params op = dataset_open_default_params();
  dpo_dataset ds;
  char err[1024] = "";
  int rc = dataset_open(dir, &op, &ds, err, sizeof err);
  if (rc) fail_msg("a link inside the dataset was refused: %s", err);
  dataset_free(&ds);
  assert_int_equal(unlink(shard), 0);
  assert_int_equal(symlink(outside, shard), 0);
  expect_open_refused(dir, DPOD_EACCESS, "train-00001.safetensors", "outside the dataset directory", NULL);
}

static void open_refuses_wrong_latent_shape_naming_shard_and_tensor(void **state) {
  (void)state;
  const char *dir = write_known("shape", ST_F32, 10, 5);
  static float w[4 * TC * TH * (TW + 1)], l[4 * TC * TH * (TW + 1)];
  int32_t p[4] = {0, 1, 2, 3};
  int64_t shape[4] = {4, TC, TH, TW + 1};
  replace_shard(dir, ST_F32, shape, w, l, p);
  expect_open_refused(dir, DPOD_ESHAPE, "train-00001.safetensors", "'winner'", "[4, 4, 3, 2]");
}

static void open_refuses_dataset_shaped_for_another_model(void **state) {
  (void)state;
  const char *dir = write_known("model", ST_F32, 10, 5);
  dataset_open_params op = dataset_open_default_params();
  op.channels = TC;
  op.height = 64;
  op.width = 64;
  dpo_dataset ds;
  char err[512];
  assert_int_equal(dataset_open(dir, &op, &ds, err, sizeof err), DPOD_ESHAPE);
  assert_non_null(strstr(err, "manifest.json"));
  op.height = TH;
  op.width = TW;
  op.embed_dim = 768;
  assert_int_equal(dataset_open(dir, &op, &ds, err, sizeof err), DPOD_ESHAPE);
  assert_non_null(strstr(err, "cross_attention_dim"));
}

static void open_refuses_nan_latent_naming_shard_and_record(void **state) {
  (void)state;
  const char *dir = write_known("nan", ST_F32, 10, 5);
  static float w[4 * TIMG], l[4 * TIMG];
  for (size_t j = 0; j < 4 * TIMG; j++) w[j] = l[j] = 0.5f;
  l[2 * TIMG + 7] = NAN; /* record 2, element 7 of the loser */
  int32_t p[4] = {0, 1, 2, 3};
  int64_t shape[4] = {4, TC, TH, TW};
  replace_shard(dir, ST_F32, shape, w, l, p);
  expect_open_refused(dir, DPOD_ENUMERIC, "train-00001.safetensors: record 2 (pair 6", "'loser'", "element 7");
}

static void open_refuses_inf_in_f16_latent_naming_shard_and_record(void **state) {
  (void)state;
  const char *dir = write_known("inf16", ST_F16, 10, 5);
  static uint16_t w[4 * TIMG], l[4 * TIMG];
  for (size_t j = 0; j < 4 * TIMG; j++) w[j] = l[j] = dpod_f32_to_f16(0.5f);
  w[3 * TIMG] = 0x7c00; /* +inf at record 3, element 0 of the winner */
  int32_t p[4] = {0, 1, 2, 3};
  int64_t shape[4] = {4, TC, TH, TW};
  replace_shard(dir, ST_F16, shape, w, l, p);
  expect_open_refused(dir, DPOD_ENUMERIC, "train-00001.safetensors: record 3 (pair 7", "'winner'", "inf");
}

static void open_refuses_prompt_index_out_of_range_naming_shard_and_record(void **state) {
  (void)state;
  const char *dir = write_known("prange", ST_F32, 10, 5);
  static float w[4 * TIMG], l[4 * TIMG];
  int32_t p[4] = {0, 4, 5, 1}; /* 5 prompts: index 5 is out of range */
  int64_t shape[4] = {4, TC, TH, TW};
  replace_shard(dir, ST_F32, shape, w, l, p);
  expect_open_refused(dir, DPOD_EFORMAT, "train-00001.safetensors: record 2 (pair 6", "prompt index 5",
                      "[0, 5)");
}

static void open_refuses_dtype_other_than_manifest(void **state) {
  (void)state;
  const char *dir = write_known("dtype", ST_F32, 10, 5);
  static uint16_t w[4 * TIMG], l[4 * TIMG];
  int32_t p[4] = {0, 1, 2, 3};
  int64_t shape[4] = {4, TC, TH, TW};
  replace_shard(dir, ST_F16, shape, w, l, p);
  expect_open_refused(dir, DPOD_ESHAPE, "train-00001.safetensors", "F16", "expected F32");
}

static void open_names_missing_split_and_missing_manifest(void **state) {
  (void)state;
  const char *dir = write_known("split", ST_F32, 10, 5);
  dataset_open_params op = dataset_open_default_params();
  op.split = "test";
  dpo_dataset ds;
  char err[512];
  assert_int_equal(dataset_open(dir, &op, &ds, err, sizeof err), DPOD_ENOENT);
  assert_non_null(strstr(err, "no split 'test'"));
  assert_non_null(strstr(err, "validation"));
  assert_int_equal(dataset_open(tmpdir, NULL, &ds, err, sizeof err), DPOD_ENOENT);
  assert_non_null(strstr(err, "manifest.json"));
}

static void builtin_dataset_serves_the_copy_api(void **state) {
  (void)state;
  dataset_builtin_params p = {.pairs = 6, .prompts = 3, .text_len = 2, .seed = 5, .channels = 4, .height = 8,
                              .width = 8, .embed_dim = 32, .mode_noise = 0.3};
  dpo_dataset ds;
  char err[128];
  assert_int_equal(dataset_builtin(&p, &ds, err, sizeof err), 0);
  float w[256], l[256], e[64];
  assert_int_equal(dataset_copy_pair(&ds, 4, w, l), 0);
  assert_memory_equal(w, dataset_winner(&ds, 4), sizeof w);
  assert_memory_equal(l, dataset_loser(&ds, 4), sizeof l);
  assert_int_equal(dataset_copy_prompt(&ds, 4, e), 0);
  assert_memory_equal(e, dataset_prompt(&ds, 4), sizeof e);
  assert_int_equal(dataset_copy_empty_prompt(&ds, e), DPOD_ENOENT);
  dataset_free(&ds);
}

/* ---- synth -------------------------------------------------------------------------------------- */

static const char *make_synth(const char *name, uint32_t train_pairs, synth_summary *sum) {
  const char *dir = in_tmp(name);
  synth_params p = synth_default_params();
  p.channels = 2;
  p.height = p.width = 4;
  p.prompts = 16;
  p.base_per_prompt = 128;
  p.train_pairs = train_pairs;
  p.validation_pairs = 64;
  p.seed = 77;
  char err[512];
  int rc = synth_generate(&p, dir, sum, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  return dir;
}

static void synth_reward_prefers_the_preferred_mode(void **state) {
  (void)state;
  const char *dir = make_synth("reward", 64, NULL);
  synth_task t;
  char err[512];
  assert_int_equal(synth_task_load(dir, &t, err, sizeof err), 0);
  assert_int_equal(t.prompts, 16);
  size_t img = (size_t)t.channels * t.height * t.width;
  int pref0 = 0;
  for (uint32_t p = 0; p < t.prompts; p++) {
    const float *m = t.modes + (size_t)p * 2 * img;
    int k = t.preferred[p];
    pref0 += k == 0;
    assert_true(synth_reward(&t, p, m + (size_t)k * img) > 0);
    assert_true(synth_reward(&t, p, m + (size_t)(1 - k) * img) < 0);
    assert_int_equal(synth_nearest_mode(&t, p, m + img, NULL), 1);
  }
  /* Which mode is preferred varies with the prompt, so a model must read the prompt. */
  assert_true(pref0 > 0 && pref0 < 16);
  /* Evaluation of the exact patterns: all preferred at distance 0, or none. */
  float *x = malloc(sizeof(float) * img * t.prompts);
  uint32_t *pr = malloc(sizeof(uint32_t) * t.prompts);
  for (int want = 0; want < 2; want++) {
    for (uint32_t p = 0; p < t.prompts; p++) {
      int k = want ? t.preferred[p] : 1 - t.preferred[p];
      memcpy(x + p * img, t.modes + ((size_t)p * 2 + (size_t)k) * img, sizeof(float) * img);
      pr[p] = p;
    }
    synth_eval ev;
    assert_int_equal(synth_evaluate(&t, t.prompts, x, pr, &ev), 0);
    assert_true(ev.preferred_rate == (double)want);
    assert_true(ev.mean_distance < 1e-6);
  }
  free(x);
  free(pr);
  synth_task_free(&t);
}

static void synth_labels_err_at_the_bradley_terry_rate(void **state) {
  (void)state;
  synth_summary sum;
  const char *dir = make_synth("bt", 6000, &sum);
  synth_task t;
  char err[512];
  assert_int_equal(synth_task_load(dir, &t, err, sizeof err), 0);
  dpo_dataset ds;
  assert_int_equal(dataset_open(dir, NULL, &ds, err, sizeof err), 0);
  assert_int_equal(ds.num_pairs, 6000);
  size_t img = dataset_image_size(&ds), wrong = 0, cross = 0, cross_wrong = 0;
  double expected = 0, var = 0;
  float *w = malloc(sizeof(float) * img), *l = malloc(sizeof(float) * img);
  for (size_t i = 0; i < ds.num_pairs; i++) {
    dataset_copy_pair(&ds, i, w, l);
    uint32_t p = dataset_prompt_index(&ds, i);
    double d = synth_reward(&t, p, w) - synth_reward(&t, p, l);
    double pw = 1.0 / (1.0 + exp(fabs(d))); /* probability the BT draw picked the worse image */
    expected += pw;
    var += pw * (1 - pw);
    wrong += d < 0;
    if (synth_nearest_mode(&t, p, w, NULL) != synth_nearest_mode(&t, p, l, NULL)) {
      cross++;
      cross_wrong += synth_nearest_mode(&t, p, w, NULL) != t.preferred[p];
    }
  }
  /* The stored labels err as often as Bradley-Terry says, within 4 standard deviations; a deterministic
   * labeller (0 wrong) or a coin (half wrong) fails this. */
  fprintf(stderr, "mislabelled %zu, expected %.1f +- %.1f; cross-mode %zu, of which wrong %zu\n", wrong, expected,
          sqrt(var), cross, cross_wrong);
  assert_true(fabs((double)wrong - expected) < 4 * sqrt(var));
  assert_true(wrong > 0);
  assert_int_equal(wrong, sum.train_mislabelled);
  /* Pairs across modes are mostly labelled right (sigmoid(4 * 0.5) = 0.88), but not all. */
  assert_true(cross > ds.num_pairs / 3);
  assert_true(cross_wrong > 0 && (double)cross_wrong < 0.2 * (double)cross);
  free(w);
  free(l);
  dataset_free(&ds);
  synth_task_free(&t);
}

static void synth_base_samples_are_half_preferred(void **state) {
  (void)state;
  const char *dir = make_synth("base", 64, NULL);
  synth_task t;
  char err[512];
  assert_int_equal(synth_task_load(dir, &t, err, sizeof err), 0);
  dataset_open_params op = dataset_open_default_params();
  op.split = "base";
  dpo_dataset ds;
  assert_int_equal(dataset_open(dir, &op, &ds, err, sizeof err), 0);
  size_t n = ds.num_pairs, img = dataset_image_size(&ds);
  assert_int_equal(n, 16 * 128);
  float *x = malloc(sizeof(float) * n * img);
  uint32_t *pr = malloc(sizeof(uint32_t) * n);
  for (size_t i = 0; i < n; i++) {
    dataset_copy_pair(&ds, i, x + i * img, NULL);
    pr[i] = dataset_prompt_index(&ds, i);
  }
  synth_eval ev;
  assert_int_equal(synth_evaluate(&t, n, x, pr, &ev), 0);
  fprintf(stderr, "base: preferred rate %.4f, mean distance %.4f\n", ev.preferred_rate, ev.mean_distance);
  assert_true(fabs(ev.preferred_rate - 0.5) < 4 * sqrt(0.25 / (double)n));
  /* RMS distance of a 32-element sample around its mode: about mode_noise. */
  assert_true(fabs(ev.mean_distance - 0.3) < 0.03);
  free(x);
  free(pr);
  dataset_free(&ds);
  synth_task_free(&t);
}

static void synth_tool_writes_all_splits(void **state) {
  (void)state;
  const char *dir = in_tmp("tool");
  char *argv[] = {"synth", "--out", (char *)dir, "--prompts", "3", "--base-per-prompt", "5", "--train-pairs", "12",
                  "--validation-pairs", "6", "--latent-shape", "4x8x8", "--dtype", "f16", NULL};
  assert_int_equal(tool_synth_main(15, argv), 0);
  const char *splits[3] = {"base", "train", "validation"};
  size_t want[3] = {15, 12, 6};
  for (int i = 0; i < 3; i++) {
    dataset_open_params op = dataset_open_default_params();
    op.split = splits[i];
    op.channels = 4;
    op.height = op.width = 8;
    op.embed_dim = 32;
    dpo_dataset ds;
    char err[512];
    assert_int_equal(dataset_open(dir, &op, &ds, err, sizeof err), 0);
    assert_int_equal(ds.num_pairs, want[i]);
    assert_int_equal(ds.num_prompts, 3);
    assert_true(ds.has_empty_prompt);
    dataset_free(&ds);
  }
  char *bad[] = {"synth", "--out", (char *)dir, "--latent-shape", "4x8", NULL};
  assert_int_equal(tool_synth_main(5, bad), 2);
}

/* ---- import ------------------------------------------------------------------------------------- */

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Latents img_a .. img_f: every element of img_X is the value ('X' - 'a' + 1); img_a is [1, C, H, W] F32,
 * the others [C, H, W] F16. Embeddings: "a cat" = 1, "a dog" = 2 ([1, L, D]), "" = 0.5. */
static void write_import_inputs(void) {
  static float lat[6][4 * 2 * 2];
  static uint16_t lat16[6][4 * 2 * 2];
  static float ecat[3 * 8], edog[3 * 8], eempty[3 * 8];
  st_writer *w = st_writer_new();
  char name[6][8], err[512];
  for (int i = 0; i < 6; i++) {
    snprintf(name[i], sizeof name[i], "img_%c", 'a' + i);
    for (int j = 0; j < 16; j++) {
      lat[i][j] = (float)(i + 1);
      lat16[i][j] = dpod_f32_to_f16((float)(i + 1));
    }
    int64_t s4[4] = {1, 4, 2, 2}, s3[3] = {4, 2, 2};
    if (i == 0) assert_int_equal(st_writer_add(w, name[i], ST_F32, 4, s4, lat[i]), 0);
    else assert_int_equal(st_writer_add(w, name[i], ST_F16, 3, s3, lat16[i]), 0);
  }
  assert_int_equal(st_writer_write(w, in_tmp("latents.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);
  for (int k = 0; k < 24; k++) {
    ecat[k] = 1;
    edog[k] = 2;
    eempty[k] = 0.5f;
  }
  w = st_writer_new();
  int64_t s2[2] = {3, 8}, s3[3] = {1, 3, 8};
  assert_int_equal(st_writer_add(w, "a cat", ST_F32, 2, s2, ecat), 0);
  assert_int_equal(st_writer_add(w, "a dog", ST_F32, 3, s3, edog), 0);
  assert_int_equal(st_writer_add(w, "", ST_F32, 2, s2, eempty), 0);
  assert_int_equal(st_writer_write(w, in_tmp("embeddings.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);
  write_text(in_tmp("train.jsonl"),
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 1}\n"
             "{\"caption\": \"a dog\", \"image_0_uid\": \"img_c\", \"image_1_uid\": \"img_d\", \"label_0\": 0, "
             "\"label_1\": 1}\n"
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_e\", \"image_1_uid\": \"img_f\", \"label_0\": 0.5}\n"
             "\n"
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_f\", \"image_1_uid\": \"img_e\", \"label_0\": 1.0, "
             "\"ranking_id\": 7}\n");
  write_text(in_tmp("val.jsonl"),
             "{\"caption\": \"a dog\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 0.5}\n"
             "{\"caption\": \"a dog\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_c\", \"label_0\": 0}\n");
}

/* The manifest of dataset `dir`, parsed; the caller deletes it. Its path goes into path[600]. */
static cJSON *manifest_load(const char *dir, char *path) {
  snprintf(path, 600, "%s/manifest.json", dir);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  cJSON *m = cJSON_Parse(buf);
  assert_non_null(m);
  return m;
}

static double manifest_info(const char *dir, const char *key) {
  char path[600];
  cJSON *m = manifest_load(dir, path);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "info"), key);
  assert_true(cJSON_IsNumber(v));
  double d = v->valuedouble;
  cJSON_Delete(m);
  return d;
}

/* 'splits' as an array: the message listing the splits there are used to print its members' names, which
 * an array's members do not have (NULL through %s). */
static void open_refuses_splits_that_are_not_an_object(void **state) {
  (void)state;
  const char *dir = write_known("splits", ST_F32, 10, 5);
  char path[600];
  cJSON *m = manifest_load(dir, path);
  cJSON_ReplaceItemInObjectCaseSensitive(m, "splits", cJSON_CreateIntArray((const int[]){1, 2}, 2));
  char *text = cJSON_Print(m);
  write_text(path, text);
  free(text);
  cJSON_Delete(m);
  expect_open_refused(dir, DPOD_EFORMAT, "manifest.json", "'splits' object", NULL);
}

static void import_drops_ties_and_stores_the_winner_first(void **state) {
  (void)state;
  write_import_inputs();
  const char *out = in_tmp("imported");
  char *argv[] = {"import", "--latents", (char *)in_tmp("latents.safetensors"), "--embeddings",
                  (char *)in_tmp("embeddings.safetensors"), "--pairs", (char *)in_tmp("train.jsonl"),
                  "--validation", (char *)in_tmp("val.jsonl"), "--out", (char *)out, "--dtype", "f32", NULL};
  assert_int_equal(tool_import_main(13, argv), 0);
  assert_true(manifest_info(out, "train_ties_dropped") == 1);
  assert_true(manifest_info(out, "validation_ties_dropped") == 1);
  assert_true(manifest_info(out, "train_label0_zero_flipped") == 1);

  dpo_dataset ds;
  char err[512];
  assert_int_equal(dataset_open(out, NULL, &ds, err, sizeof err), 0);
  assert_int_equal(ds.num_pairs, 3);
  assert_int_equal(ds.num_prompts, 2);
  assert_int_equal(ds.channels, 4);
  assert_int_equal(ds.height, 2);
  assert_int_equal(ds.text_len, 3);
  assert_int_equal(ds.embed_dim, 8);
  assert_true(ds.has_empty_prompt);
  /* (winner, loser, caption value) per kept pair: label_0 = 1 keeps the order, 0 swaps it. */
  const float want[3][3] = {{1, 2, 1}, {4, 3, 2}, {6, 5, 1}};
  float w[16], l[16], e[24];
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(dataset_copy_pair(&ds, i, w, l), 0);
    assert_int_equal(dataset_copy_prompt(&ds, i, e), 0);
    assert_true(w[0] == want[i][0] && w[15] == want[i][0]);
    assert_true(l[0] == want[i][1] && l[15] == want[i][1]);
    assert_true(e[0] == want[i][2] && e[23] == want[i][2]);
  }
  /* Prompts are shared: both "a cat" pairs name the same row. */
  assert_int_equal(dataset_prompt_index(&ds, 0), dataset_prompt_index(&ds, 2));
  assert_int_equal(dataset_copy_empty_prompt(&ds, e), 0);
  assert_true(e[0] == 0.5f);
  dataset_free(&ds);

  dataset_open_params op = dataset_open_default_params();
  op.split = "validation";
  assert_int_equal(dataset_open(out, &op, &ds, err, sizeof err), 0);
  assert_int_equal(ds.num_pairs, 1);
  assert_int_equal(dataset_copy_pair(&ds, 0, w, l), 0);
  assert_true(w[0] == 3 && l[0] == 1);
  dataset_free(&ds);
}

/* ---- SDXL's added conditioning: pooled embeddings and time ids ------------------------------------ */

enum { TP = 7 };
static float pooled_value(size_t p, size_t k) { return (float)(0.25 * (double)k + (double)p); }
static void time_ids_of(size_t pair, int loser, float *t) {
  const float v[6] = {1024, 768, (float)pair, (float)(2 * pair), 1024, 1024};
  memcpy(t, v, sizeof v);
  if (loser) t[0] = 512; /* the loser's original size differs: per-image ids */
}

/* `pairs` train pairs over 3 prompts with pooled embeddings [TP], an empty prompt with its pooled one,
 * and time ids stored per `mode` (DATASET_TIME_IDS_*). */
static const char *write_sdxl(const char *name, int mode, int pooled, size_t pairs) {
  const char *dir = in_tmp(name);
  pref_writer_params p = pref_writer_default_params();
  p.channels = TC, p.height = TH, p.width = TW, p.text_len = TL, p.embed_dim = TD;
  p.latent_dtype = p.embed_dtype = ST_F32;
  p.shard_pairs = 4;
  p.shard_prompts = 2;
  p.pooled_dim = pooled ? TP : 0;
  p.time_ids = mode;
  pref_writer *w;
  char err[512];
  assert_int_equal(pref_writer_open(dir, &p, &w, err, sizeof err), 0);
  float a[TIMG], b[TIMG], e[TEMB], pe[TP], tw[6], tl[6];
  for (uint32_t q = 0; q < 3; q++) {
    for (size_t k = 0; k < TEMB; k++) e[k] = prompt_value(q, k);
    for (size_t k = 0; k < TP; k++) pe[k] = pooled_value(q, k);
    if (pooled) {
      /* The plain call is refused in a dataset that stores pooled embeddings. */
      assert_int_equal(pref_writer_add_prompt(w, e), DPOD_EINVAL);
      assert_int_equal(pref_writer_add_prompt_pooled(w, e, pe), 0);
    } else {
      assert_int_equal(pref_writer_add_prompt(w, e), 0);
    }
  }
  for (size_t k = 0; k < TEMB; k++) e[k] = -1;
  for (size_t k = 0; k < TP; k++) pe[k] = -2;
  assert_int_equal(pooled ? pref_writer_set_empty_prompt_pooled(w, e, pe) : pref_writer_set_empty_prompt(w, e), 0);
  for (size_t i = 0; i < pairs; i++) {
    for (size_t j = 0; j < TIMG; j++) a[j] = winner_value(i, j), b[j] = loser_value(i, j);
    time_ids_of(i, 0, tw);
    time_ids_of(i, 1, tl);
    uint32_t q = (uint32_t)(i % 3);
    if (mode == DATASET_TIME_IDS_DEFAULT) {
      assert_int_equal(pref_writer_add_pair(w, "train", a, b, q), 0);
    } else {
      assert_int_equal(pref_writer_add_pair(w, "train", a, b, q), DPOD_EINVAL); /* time ids are required */
      assert_int_equal(pref_writer_add_pair_time_ids(w, "train", a, b, q, tw, tl), 0);
    }
  }
  assert_int_equal(pref_writer_finish(w, err, sizeof err), 0);
  return dir;
}

static dataset_open_params sdxl_params(void) {
  dataset_open_params op = dataset_open_default_params();
  op.channels = TC, op.height = TH, op.width = TW, op.embed_dim = TD, op.pooled_dim = TP;
  return op;
}

static void sdxl_dataset_round_trips_pooled_embeddings_and_time_ids(void **state) {
  (void)state;
  for (int mode = DATASET_TIME_IDS_PAIR; mode <= DATASET_TIME_IDS_IMAGE; mode++) {
    const char *dir = write_sdxl(mode == DATASET_TIME_IDS_PAIR ? "xl-pair" : "xl-image", mode, 1, 6);
    dataset_open_params op = sdxl_params();
    dpo_dataset ds;
    char err[1024];
    if (dataset_open(dir, &op, &ds, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(ds.pooled_dim, TP);
    assert_int_equal(ds.time_ids, mode);
    /* The batch: [winners; losers], text and pooled embeddings repeated, time ids per image or pair. */
    const size_t pairs[2] = {4, 2};
    float x0[2 * 2 * TIMG], ehs[2 * 2 * TEMB], pooled[2 * 2 * TP], tids[2 * 2 * 6], want[6];
    assert_int_equal(dataset_fill_batch(&ds, pairs, 2, x0, ehs, pooled, tids), 0);
    for (int i = 0; i < 2; i++) {
      size_t q = pairs[i] % 3;
      for (int side = 0; side < 2; side++) {
        size_t row = (size_t)(side * 2 + i);
        assert_true(x0[row * TIMG + 5] == (side ? loser_value(pairs[i], 5) : winner_value(pairs[i], 5)));
        assert_true(ehs[row * TEMB + 3] == prompt_value(q, 3));
        for (size_t k = 0; k < TP; k++) assert_true(pooled[row * TP + k] == pooled_value(q, k));
        time_ids_of(pairs[i], side && mode == DATASET_TIME_IDS_IMAGE, want);
        assert_memory_equal(tids + row * 6, want, sizeof want);
      }
    }
    float pe[TP];
    assert_int_equal(dataset_copy_empty_pooled(&ds, pe), 0);
    assert_true(pe[0] == -2 && pe[TP - 1] == -2);
    dataset_free(&ds);
  }
}

static void without_stored_time_ids_a_batch_gets_the_reference_default(void **state) {
  (void)state;
  const char *dir = write_sdxl("xl-default", DATASET_TIME_IDS_DEFAULT, 1, 4);
  dataset_open_params op = sdxl_params();
  dpo_dataset ds;
  char err[1024];
  if (dataset_open(dir, &op, &ds, err, sizeof err) != 0) fail_msg("%s", err);
  float w[6], l[6];
  assert_int_equal(dataset_copy_time_ids(&ds, 3, w, l), 0);
  /* [res, res, 0, 0, res, res] with res = 8x the latent size (TH x TW = 3 x 2). */
  const float want[6] = {8 * TH, 8 * TW, 0, 0, 8 * TH, 8 * TW};
  assert_memory_equal(w, want, sizeof want);
  assert_memory_equal(l, want, sizeof want);
  dataset_free(&ds);
}

static void a_dataset_lacking_what_the_model_needs_is_refused_naming_it(void **state) {
  (void)state;
  const char *plain = write_sdxl("xl-none", DATASET_TIME_IDS_DEFAULT, 0, 4);
  dataset_open_params op = sdxl_params();
  dpo_dataset ds;
  char err[1024] = "";
  assert_int_equal(dataset_open(plain, &op, &ds, err, sizeof err), DPOD_EINVAL);
  if (!strstr(err, "pooled prompt embeddings") || !strstr(err, "manifest.json")) fail_msg("%s", err);
  /* The same dataset is fine for a model without added conditioning. */
  op.pooled_dim = 0;
  assert_int_equal(dataset_open(plain, &op, &ds, err, sizeof err), 0);
  dataset_free(&ds);
  /* Another width is refused naming both. */
  const char *xl = write_sdxl("xl-width", DATASET_TIME_IDS_PAIR, 1, 4);
  op.pooled_dim = TP + 1;
  assert_int_equal(dataset_open(xl, &op, &ds, err, sizeof err), DPOD_ESHAPE);
  if (!strstr(err, "7 wide") || !strstr(err, "takes 8")) fail_msg("%s", err);
  /* A shard that lost its time ids is refused naming the shard and the tensor. */
  char path[600];
  cJSON *m = manifest_load(xl, path);
  cJSON_ReplaceItemInObjectCaseSensitive(m, "time_ids", cJSON_CreateString("image"));
  char *text = cJSON_Print(m);
  write_text(path, text);
  free(text);
  cJSON_Delete(m);
  op.pooled_dim = TP;
  assert_int_equal(dataset_open(xl, &op, &ds, err, sizeof err), DPOD_EFORMAT);
  if (!strstr(err, "train-00000.safetensors: no tensor 'winner_time_ids'")) fail_msg("%s", err);
}

static void import_takes_pooled_embeddings_and_time_ids(void **state) {
  (void)state;
  write_import_inputs();
  /* Pooled embeddings per caption ([P] and [1, P]), time ids per image. */
  static float pcat[5], pdog[5], pempty[5], t[6][6];
  for (int k = 0; k < 5; k++) pcat[k] = 10, pdog[k] = 20, pempty[k] = 5;
  st_writer *w = st_writer_new();
  int64_t s1[1] = {5}, s2[2] = {1, 5}, s6[1] = {6};
  assert_int_equal(st_writer_add(w, "a cat", ST_F32, 1, s1, pcat), 0);
  assert_int_equal(st_writer_add(w, "a dog", ST_F32, 2, s2, pdog), 0);
  char err[512];
  assert_int_equal(st_writer_write(w, in_tmp("pooled-partial.safetensors"), NULL, err, sizeof err), 0);
  assert_int_equal(st_writer_add(w, "", ST_F32, 1, s1, pempty), 0);
  assert_int_equal(st_writer_write(w, in_tmp("pooled.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);
  w = st_writer_new();
  char names[6][8];
  for (int i = 0; i < 6; i++) {
    snprintf(names[i], sizeof names[i], "img_%c", 'a' + i);
    for (int k = 0; k < 6; k++) t[i][k] = (float)(100 * (i + 1) + k);
    assert_int_equal(st_writer_add(w, names[i], ST_F32, 1, s6, t[i]), 0);
  }
  assert_int_equal(st_writer_write(w, in_tmp("time_ids.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);

  const char *out = in_tmp("imported-xl");
  char *argv[] = {"import", "--latents", (char *)in_tmp("latents.safetensors"), "--embeddings",
                  (char *)in_tmp("embeddings.safetensors"), "--pooled", (char *)in_tmp("pooled.safetensors"),
                  "--time-ids", (char *)in_tmp("time_ids.safetensors"), "--pairs", (char *)in_tmp("train.jsonl"),
                  "--out", (char *)out, "--dtype", "f32", NULL};
  assert_int_equal(tool_import_main(15, argv), 0);
  dataset_open_params op = dataset_open_default_params();
  op.pooled_dim = 5;
  dpo_dataset ds;
  if (dataset_open(out, &op, &ds, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(ds.time_ids, DATASET_TIME_IDS_IMAGE);
  /* Pair 1 is "a dog", c vs d with label_0 = 0: stored d first, and its time ids with it. */
  float pe[5], tw[6], tl[6];
  assert_int_equal(dataset_copy_pooled_row(&ds, dataset_prompt_index(&ds, 1), pe), 0);
  assert_true(pe[0] == 20 && pe[4] == 20);
  assert_int_equal(dataset_copy_time_ids(&ds, 1, tw, tl), 0);
  assert_memory_equal(tw, t[3], sizeof tw);
  assert_memory_equal(tl, t[2], sizeof tl);
  assert_int_equal(dataset_copy_empty_pooled(&ds, pe), 0);
  assert_true(pe[0] == 5);
  dataset_free(&ds);
  /* Without the empty caption's pooled embedding the import says so. */
  argv[6] = (char *)in_tmp("pooled-partial.safetensors");
  assert_int_equal(tool_import_main(15, argv), 1);
}

/* For an SDXL-shaped model synth adds pooled embeddings, from a stream of their own: the rest of the task
 * is the same numbers with or without them. */
static void synth_with_pooled_embeddings_changes_nothing_else(void **state) {
  (void)state;
  synth_params p = synth_default_params();
  p.train_pairs = 16;
  p.validation_pairs = 4;
  char err[512];
  assert_int_equal(synth_generate(&p, in_tmp("plain"), NULL, err, sizeof err), 0);
  p.pooled_dim = 16;
  assert_int_equal(synth_generate(&p, in_tmp("xl"), NULL, err, sizeof err), 0);
  dataset_open_params op = dataset_open_default_params();
  dpo_dataset a, b;
  assert_int_equal(dataset_open(in_tmp("plain"), &op, &a, err, sizeof err), 0);
  op.pooled_dim = 16;
  if (dataset_open(in_tmp("xl"), &op, &b, err, sizeof err) != 0) fail_msg("%s", err);
  size_t img = dataset_image_size(&a), emb = dataset_prompt_size(&a);
  float *wa = malloc(img * sizeof(float)), *wb = malloc(img * sizeof(float));
  float *ea = malloc(emb * sizeof(float)), *eb = malloc(emb * sizeof(float)), pa[16], pb[16];
  for (size_t i = 0; i < a.num_pairs; i++) {
    assert_int_equal(dataset_copy_pair(&a, i, wa, NULL), 0);
    assert_int_equal(dataset_copy_pair(&b, i, wb, NULL), 0);
    assert_memory_equal(wa, wb, img * sizeof(float));
    assert_int_equal(dataset_copy_prompt(&a, i, ea), 0);
    assert_int_equal(dataset_copy_prompt(&b, i, eb), 0);
    assert_memory_equal(ea, eb, emb * sizeof(float));
  }
  assert_int_equal(dataset_copy_pooled_row(&b, 0, pa), 0);
  assert_int_equal(dataset_copy_pooled_row(&b, 1, pb), 0);
  assert_true(memcmp(pa, pb, sizeof pa) != 0);
  assert_int_equal(dataset_copy_empty_pooled(&b, pa), 0);
  assert_int_equal(dataset_copy_pooled_row(&a, 0, pa), DPOD_ENOENT);
  free(wa), free(wb), free(ea), free(eb);
  dataset_free(&a);
  dataset_free(&b);
}

static void import_fails_on_a_missing_latent_unless_told_to_skip(void **state) {
  (void)state;
  write_import_inputs();
  write_text(in_tmp("missing.jsonl"),
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 1}\n"
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_zz\", \"label_0\": 0}\n");
  const char *out = in_tmp("imported");
  char *argv[] = {"import", "--latents", (char *)in_tmp("latents.safetensors"), "--embeddings",
                  (char *)in_tmp("embeddings.safetensors"), "--pairs", (char *)in_tmp("missing.jsonl"),
                  "--out", (char *)out, "--skip-missing", NULL};
  assert_int_equal(tool_import_main(9, argv), 1);
  char mpath[600];
  snprintf(mpath, sizeof mpath, "%s/manifest.json", out);
  assert_int_not_equal(access(mpath, F_OK), 0); /* no manifest: not a dataset */
  assert_int_equal(tool_import_main(10, argv), 0);
  assert_true(manifest_info(out, "train_missing_skipped") == 1);
  write_text(in_tmp("tie3.jsonl"),
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 0.3}\n");
  argv[6] = (char *)in_tmp("tie3.jsonl");
  assert_int_equal(tool_import_main(9, argv), 1);
}

/* ---- DDIM against a Gaussian target ------------------------------------------------------------- */

/* For x0 ~ N(mu, sigma^2 I) and x_t = sqrt(a) x0 + sqrt(1 - a) eps, the exact prediction is
 *   E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a sigma^2 + 1 - a),
 * and E[x0 | x_t] = (x_t - sqrt(1 - a) E[eps | x_t]) / sqrt(a); v = sqrt(a) eps - sqrt(1 - a) x0.
 * Rows whose embedding starts with 0 see mean mu_uncond (the guidance test). */
typedef struct {
  const dpo_schedule *s;
  double mu, mu_uncond, sigma;
  int v;
  size_t img, emb;
  int calls;
} gauss_model;

static int gauss_eps(void *ctx, int n, const float *x, const float *t, const float *ehs, float *out) {
  gauss_model *g = ctx;
  g->calls++;
  for (int i = 0; i < n; i++) {
    double a = g->s->alphas_cumprod[(int)t[i]];
    double mu = ehs[(size_t)i * g->emb] == 0 ? g->mu_uncond : g->mu;
    double var = a * g->sigma * g->sigma + 1 - a;
    for (size_t j = 0; j < g->img; j++) {
      double xt = x[(size_t)i * g->img + j];
      double eps = sqrt(1 - a) * (xt - sqrt(a) * mu) / var;
      double x0 = (xt - sqrt(1 - a) * eps) / sqrt(a);
      out[(size_t)i * g->img + j] = (float)(g->v ? sqrt(a) * eps - sqrt(1 - a) * x0 : eps);
    }
  }
  return 0;
}

/* The deterministic endpoint of DDIM on that model: each step maps the standardised value
 * u = (x - sqrt(a) mu) / sqrt(v(a)), v(a) = a sigma^2 + 1 - a, to k u with
 * k = (sqrt(a a') sigma^2 + sqrt((1 - a)(1 - a'))) / sqrt(v(a) v(a')), so
 * x_out = sqrt(a_f) mu + sqrt(v(a_f)) K (x_T - sqrt(a_T) mu) / sqrt(v(a_T)), K the product of the k. */
static void gauss_endpoint(const dpo_schedule *s, int steps, double mu, double sigma, double *scale, double *shift) {
  int T = s->num_train_timesteps, ratio = T / steps;
  double K = 1, s2 = sigma * sigma;
  double aT = s->alphas_cumprod[(steps - 1) * ratio + 1];
  double a = aT;
  for (int i = 0; i < steps; i++) {
    int t = (steps - 1 - i) * ratio + 1, prev = t - ratio;
    (void)t;
    double ap = prev >= 0 ? s->alphas_cumprod[prev] : s->alphas_cumprod[0]; /* set_alpha_to_one = false */
    K *= (sqrt(a * ap) * s2 + sqrt((1 - a) * (1 - ap))) / sqrt((a * s2 + 1 - a) * (ap * s2 + 1 - ap));
    a = ap;
  }
  double vf = a * s2 + 1 - a, vT = aT * s2 + 1 - aT;
  *scale = sqrt(vf) * K / sqrt(vT);
  *shift = sqrt(a) * mu - *scale * sqrt(aT) * mu;
}

static void ddim_timesteps_match_diffusers_leading_spacing(void **state) {
  (void)state;
  dpo_schedule s;
  assert_int_equal(dpo_schedule_default(&s), 0);
  ddim_params p = ddim_default_params();
  int64_t ts[50];
  assert_int_equal(ddim_timesteps(&s, &p, ts), 0);
  assert_int_equal(ts[0], 951);
  assert_int_equal(ts[1], 901);
  assert_int_equal(ts[19], 1);
  p.steps = 50;
  assert_int_equal(ddim_timesteps(&s, &p, ts), 0);
  assert_int_equal(ts[0], 981);
  assert_int_equal(ts[49], 1);
  p.steps = 1000; /* the last timestep would be 1000 */
  assert_int_not_equal(ddim_timesteps(&s, &p, ts), 0);
  dpo_schedule_free(&s);
}

static void check_endpoint(int v) {
  dpo_schedule s;
  assert_int_equal(dpo_schedule_default(&s), 0);
  if (v) s.prediction_type = DPO_PRED_V;
  enum { N = 4, IMG = 6, EMB = 2 };
  gauss_model g = {.s = &s, .mu = 1.5, .mu_uncond = 1.5, .sigma = 0.5, .v = v, .img = IMG, .emb = EMB};
  float x[N * IMG], x_T[N * IMG], ehs[N * EMB];
  dpo_rng r;
  dpo_rng_seed(&r, 3, 0);
  dpo_rng_fill_normal(&r, x, N * IMG);
  memcpy(x_T, x, sizeof x);
  for (int i = 0; i < N * EMB; i++) ehs[i] = 1;
  ddim_params p = ddim_default_params();
  char err[256];
  assert_int_equal(ddim_sample(&s, &p, gauss_eps, &g, N, IMG, EMB, ehs, NULL, x, err, sizeof err), 0);
  assert_int_equal(g.calls, 20);
  double scale, shift;
  gauss_endpoint(&s, 20, g.mu, g.sigma, &scale, &shift);
  for (int j = 0; j < N * IMG; j++) assert_true(fabs(x[j] - (scale * x_T[j] + shift)) < 2e-5);
  dpo_schedule_free(&s);
}

static void ddim_endpoint_matches_gaussian_closed_form(void **state) {
  (void)state;
  check_endpoint(0);
}

static void ddim_v_prediction_reaches_the_same_endpoint(void **state) {
  (void)state;
  check_endpoint(1);
}

static void ddim_samples_have_the_target_mean_and_std(void **state) {
  (void)state;
  dpo_schedule s;
  assert_int_equal(dpo_schedule_default(&s), 0);
  enum { N = 2000, IMG = 8, EMB = 1 };
  const double mu = 1.5, sigma = 0.5;
  gauss_model g = {.s = &s, .mu = mu, .mu_uncond = mu, .sigma = sigma, .img = IMG, .emb = EMB};
  float *x = malloc(sizeof(float) * N * IMG), *ehs = malloc(sizeof(float) * N * EMB);
  dpo_rng r;
  dpo_rng_seed(&r, 11, 0);
  dpo_rng_fill_normal(&r, x, (size_t)N * IMG);
  for (int i = 0; i < N; i++) ehs[i] = 1;
  ddim_params p = ddim_default_params();
  p.steps = 50;
  char err[256];
  assert_int_equal(ddim_sample(&s, &p, gauss_eps, &g, N, IMG, EMB, ehs, NULL, x, err, sizeof err), 0);
  double sum = 0, sq = 0;
  for (int j = 0; j < N * IMG; j++) sum += x[j];
  double mean = sum / (N * IMG);
  for (int j = 0; j < N * IMG; j++) sq += (x[j] - mean) * (x[j] - mean);
  double sd = sqrt(sq / (N * IMG - 1));
  double scale, shift;
  gauss_endpoint(&s, 50, mu, sigma, &scale, &shift);
  fprintf(stderr, "mean %.4f (closed form %.4f, target %.2f), std %.4f (closed form %.4f, target %.2f)\n", mean,
          shift, mu, sd, scale, sigma);
  /* Against the closed form of x_T ~ N(0, I): 4 standard errors. */
  double se = scale / sqrt(N * IMG);
  assert_true(fabs(mean - shift) < 4 * se);
  assert_true(fabs(sd / scale - 1) < 4 / sqrt(2.0 * N * IMG));
  /* Against the target itself: SD's schedule ends at alphas_cumprod[999] = 0.0047, not 0, and 50 DDIM
   * steps shrink the spread a little, so the match is to within ~4% here. */
  assert_true(fabs(mean - mu) < 0.15 * sigma);
  assert_true(fabs(sd / sigma - 1) < 0.08);
  free(x);
  free(ehs);
  dpo_schedule_free(&s);
}

static void ddim_guidance_extrapolates_the_conditional_mean(void **state) {
  (void)state;
  dpo_schedule s;
  assert_int_equal(dpo_schedule_default(&s), 0);
  enum { N = 3, IMG = 4, EMB = 2 };
  /* The exact eps is affine in mu for a fixed sigma, so guidance s on means (mu_u, mu_c) is the exact eps
   * of mean mu_u + s (mu_c - mu_u). */
  gauss_model g = {.s = &s, .mu = 1.0, .mu_uncond = -0.5, .sigma = 0.7, .img = IMG, .emb = EMB};
  float x[N * IMG], x_T[N * IMG], ehs[N * EMB], uncond[EMB] = {0, 0};
  dpo_rng r;
  dpo_rng_seed(&r, 5, 0);
  dpo_rng_fill_normal(&r, x, N * IMG);
  memcpy(x_T, x, sizeof x);
  for (int i = 0; i < N * EMB; i++) ehs[i] = 1;
  ddim_params p = ddim_default_params();
  p.guidance = 3;
  char err[256];
  assert_int_equal(ddim_sample(&s, &p, gauss_eps, &g, N, IMG, EMB, ehs, uncond, x, err, sizeof err), 0);
  double scale, shift;
  gauss_endpoint(&s, 20, -0.5 + 3 * (1.0 + 0.5), 0.7, &scale, &shift);
  for (int j = 0; j < N * IMG; j++) assert_true(fabs(x[j] - (scale * x_T[j] + shift)) < 1e-4);
  /* Guidance 1 (or no unconditional embedding) samples the conditional model alone. */
  memcpy(x, x_T, sizeof x);
  p.guidance = 1;
  g.calls = 0;
  assert_int_equal(ddim_sample(&s, &p, gauss_eps, &g, N, IMG, EMB, ehs, uncond, x, err, sizeof err), 0);
  gauss_endpoint(&s, 20, 1.0, 0.7, &scale, &shift);
  for (int j = 0; j < N * IMG; j++) assert_true(fabs(x[j] - (scale * x_T[j] + shift)) < 1e-4);
  dpo_schedule_free(&s);
}

#define CASE(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      CASE(format_round_trip_f32_is_exact),
      CASE(open_refuses_shard_symlinked_outside_the_dataset),
      CASE(format_round_trip_f16_is_rounded_f32),
      CASE(f16_conversion_rounds_to_nearest_even),
      CASE(open_refuses_truncated_shard_naming_it),
      CASE(open_refuses_wrong_latent_shape_naming_shard_and_tensor),
      CASE(open_refuses_dataset_shaped_for_another_model),
      CASE(open_refuses_nan_latent_naming_shard_and_record),
      CASE(open_refuses_inf_in_f16_latent_naming_shard_and_record),
      CASE(open_refuses_prompt_index_out_of_range_naming_shard_and_record),
      CASE(open_refuses_dtype_other_than_manifest),
      CASE(open_refuses_splits_that_are_not_an_object),
      CASE(open_names_missing_split_and_missing_manifest),
      CASE(builtin_dataset_serves_the_copy_api),
      CASE(synth_reward_prefers_the_preferred_mode),
      CASE(synth_labels_err_at_the_bradley_terry_rate),
      CASE(synth_base_samples_are_half_preferred),
      CASE(synth_tool_writes_all_splits),
      CASE(import_drops_ties_and_stores_the_winner_first),
      CASE(import_fails_on_a_missing_latent_unless_told_to_skip),
      CASE(sdxl_dataset_round_trips_pooled_embeddings_and_time_ids),
      CASE(without_stored_time_ids_a_batch_gets_the_reference_default),
      CASE(a_dataset_lacking_what_the_model_needs_is_refused_naming_it),
      CASE(import_takes_pooled_embeddings_and_time_ids),
      CASE(synth_with_pooled_embeddings_changes_nothing_else),
      CASE(ddim_timesteps_match_diffusers_leading_spacing),
      CASE(ddim_endpoint_matches_gaussian_closed_form),
      CASE(ddim_v_prediction_reaches_the_same_endpoint),
      CASE(ddim_samples_have_the_target_mean_and_std),
      CASE(ddim_guidance_extrapolates_the_conditional_mean),
  };
  return CMOCKA_MAIN("data", all, NULL, NULL);
}
