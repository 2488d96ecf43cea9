/* dpo-tool sample on an SDXL-shaped UNet (../shared/fixtures/tiny-sdxl), in-process: the samples are
 * deterministic, one DDIM step equals a direct unet_forward_added with the prompt's pooled embedding and
 * the default time ids (recomputed here in float64 from the schedule's definition), with and without
 * guidance; --lora with zero up weights samples the base, with nonzero ones differs from it and equals
 * sampling the weights `dpo-tool merge-lora` writes. Each case works in a fresh temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tensor_test_util.h"

#include "cmocka_main.h"
#include "tool_case.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "dpod_file.h"
#include "pref_format.h"
#include "rng.h"
#include "safetensors.h"
#include "tool_data.h"
#include "tool_lora.h"
#include "unet_shim.h"

static char *read_text(const char *path) {
  char *text = NULL, err[512];
  if (dpod_read_file(path, 1 << 20, &text, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  return text;
}

/* A checkpoint folder `name` with tiny-sdxl's config and `weights` (symlinked) as its weights. */
static const char *make_checkpoint(const char *name, const char *weights) {
  const char *dir = in_tmp(name);
  char path[700];
  assert_int_equal(mkdir(dir, 0700), 0);
  snprintf(path, sizeof path, "%s/config.json", dir);
  char *cfg = read_text(tu_fixture("tiny-sdxl", "config.json"));
  write_text(path, cfg);
  free(cfg);
  snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
  assert_int_equal(symlink(weights, path), 0);
  return dir;
}

/* The synthetic task shaped for tiny-sdxl: pooled embeddings [16], no stored time ids, an empty prompt. */
static const char *make_dataset(void) {
  const char *dir = in_tmp("synth-xl");
  char *argv[] = {"synth", "--out", (char *)dir, "--config", (char *)tu_fixture("tiny-sdxl", "config.json"),
                  "--prompts", "3", "--train-pairs", "12", "--validation-pairs", "9", "--text-len", "5", NULL};
  assert_int_equal(tool_synth_main(13, argv), 0);
  return dir;
}

/* Runs dpo-tool sample with the given extra arguments (NULL-terminated) and returns its `latents`
 * [n, 4, 8, 8]; *n_out gets n. */
static float *run_sample(const char *ckpt, const char *data, const char *out, size_t *n_out, ...) {
  char *argv[40] = {"sample", "--checkpoint", (char *)ckpt, "--dataset", (char *)data, "--out", (char *)out,
                    "--threads", "2"};
  int argc = 9;
  va_list ap;
  va_start(ap, n_out);
  for (const char *a; (a = va_arg(ap, const char *)) != NULL;) argv[argc++] = (char *)a;
  va_end(ap);
  argv[argc] = NULL;
  assert_int_equal(tool_sample_main(argc, argv), 0);
  float *x = tu_load(out, "latents", n_out);
  *n_out /= 4 * 8 * 8;
  return x;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
  return m;
}

enum { IMG = 4 * 8 * 8, P = 16 };

/* One DDIM step (t = 1 -> alphas_cumprod[0]) of a 10-step linear schedule with betas 0.2 .. 0.5: steep
 * enough that the step's result depends strongly on the model's output. */
static const char *SCHED = "{\"num_train_timesteps\": 10, \"beta_start\": 0.2, \"beta_end\": 0.5, "
                           "\"beta_schedule\": \"linear\", \"prediction_type\": \"epsilon\"}";

/* Checks one-step samples g1 (guidance 1) and g3 (guidance 3) of split 'validation' of dataset `data`
 * against the same computed here: x_T from stream (seed, j), a direct unet_forward_added of sample j on
 * prompt prompts[j] with time ids tids[j] (the unconditional rows: the empty prompt, its pooled
 * embedding, the same time ids), and the DDIM step in float64 with SCHED's alphas_cumprod. */
static void expect_one_step(const char *data, const uint32_t *prompts, size_t n, const float *tids, uint64_t seed,
                            const float *g1, const float *g3) {
  char err[1024];
  char *cfg = read_text(tu_fixture("tiny-sdxl", "config.json"));
  unet_params up = unet_default_params();
  up.threads = 2;
  unet_t m = NULL;
  if (unet_create(cfg, &up, &m, err, sizeof err) != 0) fail_msg("%s", err);
  free(cfg);
  assert_int_equal(unet_load_weights(m, tu_fixture("tiny-sdxl", "unet.safetensors")), 0);
  assert_int_equal(unet_freeze(m), 0);
  dataset_open_params op = dataset_open_default_params();
  op.split = "validation";
  op.pooled_dim = P;
  dpo_dataset ds;
  if (dataset_open(data, &op, &ds, err, sizeof err) != 0) fail_msg("%s", err);
  const size_t E = dataset_prompt_size(&ds), R = 2 * n;
  /* Rows 0..n-1 conditional, n..2n-1 unconditional. */
  float *x = malloc(sizeof(float) * R * IMG), *ehs = malloc(sizeof(float) * R * E), *eps = malloc(sizeof(float) * R * IMG);
  float *pooled = malloc(sizeof(float) * R * P), *rt = malloc(sizeof(float) * R * 6), *t = malloc(sizeof(float) * R);
  for (size_t j = 0; j < n; j++) {
    dpo_rng r;
    dpo_rng_seed(&r, seed, j);
    dpo_rng_fill_normal(&r, x + j * IMG, IMG);
    memcpy(x + (n + j) * IMG, x + j * IMG, sizeof(float) * IMG);
    assert_int_equal(dataset_copy_prompt_row(&ds, prompts[j], ehs + j * E), 0);
    assert_int_equal(dataset_copy_empty_prompt(&ds, ehs + (n + j) * E), 0);
    assert_int_equal(dataset_copy_pooled_row(&ds, prompts[j], pooled + j * P), 0);
    assert_int_equal(dataset_copy_empty_pooled(&ds, pooled + (n + j) * P), 0);
    memcpy(rt + j * 6, tids + j * 6, sizeof(float) * 6);
    memcpy(rt + (n + j) * 6, tids + j * 6, sizeof(float) * 6);
    t[j] = t[n + j] = 1;
  }
  unet_added_cond added = {.text_embeds = pooled, .time_ids = rt};
  if (unet_forward_added(m, (int)R, 8, 8, ds.text_len, x, t, ehs, &added, eps) != 0) fail_msg("%s", unet_last_error(m));
  /* alphas_cumprod of betas linspace(0.2, 0.5, 10): a_0 = 0.8, a_1 = 0.8 (1 - (0.2 + 0.3 / 9)). */
  const double a1 = 0.8 * (1 - (0.2 + 0.3 / 9)), a0 = 0.8;
  double worst1 = 0, worst3 = 0, moved = 0;
  for (size_t j = 0; j < n * IMG; j++) {
    double xt = x[j];
    for (int g = 1; g <= 3; g += 2) {
      double e = g == 1 ? eps[j] : eps[n * IMG + j] + 3.0 * (eps[j] - eps[n * IMG + j]);
      double x0 = (xt - sqrt(1 - a1) * e) / sqrt(a1);
      double want = sqrt(a0) * x0 + sqrt(1 - a0) * e;
      if (g == 1) worst1 = fmax(worst1, fabs(want - g1[j])), moved = fmax(moved, fabs(want - xt));
      else worst3 = fmax(worst3, fabs(want - g3[j]));
    }
  }
  if (worst1 > 1e-5 || worst3 > 1e-5)
    fail_msg("one DDIM step differs from a direct forward by %g (guidance 1), %g (3)", worst1, worst3);
  assert_true(moved > 1e-2); /* the step does move x: the comparison can tell */
  assert_true(max_abs_diff(g1, g3, n * IMG) > 1e-3);
  free(x), free(ehs), free(eps), free(pooled), free(rt), free(t);
  dataset_free(&ds);
  unet_free(m);
}

static void sdxl_sample_is_deterministic_and_one_step_is_a_direct_forward(void **state) {
  (void)state;
  const char *data = make_dataset();
  const char *ckpt = make_checkpoint("ckpt", tu_fixture("tiny-sdxl", "unet.safetensors"));
  write_text(in_tmp("sched.json"), SCHED);
  const char *sched = in_tmp("sched.json");
  size_t n, n2;
  /* 3 prompts x 2, guidance 1 and 3. */
  float *g1 = run_sample(ckpt, data, in_tmp("g1.safetensors"), &n, "--steps", "1", "--guidance", "1", "--seed", "7",
                         "--prompts", "3", "--per-prompt", "2", "--scheduler-config", sched, "--batch", "4", NULL);
  float *g3 = run_sample(ckpt, data, in_tmp("g3.safetensors"), &n2, "--steps", "1", "--guidance", "3", "--seed", "7",
                         "--prompts", "3", "--per-prompt", "2", "--scheduler-config", sched, "--batch", "4", NULL);
  assert_int_equal(n, 6);
  assert_int_equal(n2, 6);
  /* Prompts in order of first appearance in the split, each twice; synth stores no time ids, so every
   * sample gets the default [res, res, 0, 0, res, res], res = 8 x 8. */
  dataset_open_params op = dataset_open_default_params();
  op.split = "validation";
  op.pooled_dim = P;
  dpo_dataset ds;
  char err[1024];
  if (dataset_open(data, &op, &ds, err, sizeof err) != 0) fail_msg("%s", err);
  uint32_t prompts[6];
  size_t np = 0;
  for (size_t i = 0; i < ds.num_pairs && np < 3; i++) {
    uint32_t p = dataset_prompt_index(&ds, i);
    int seen = 0;
    for (size_t k = 0; k < np; k++) seen |= prompts[k] == p;
    if (!seen) prompts[np++] = p;
  }
  dataset_free(&ds);
  assert_int_equal(np, 3);
  float tids[6 * 6];
  for (size_t j = 0; j < 6; j++) {
    prompts[j] = prompts[j % 3];
    const float def[6] = {64, 64, 0, 0, 64, 64};
    memcpy(tids + j * 6, def, sizeof def);
  }
  expect_one_step(data, prompts, 6, tids, 7, g1, g3);

  /* Deterministic, and independent of the batch it was computed in. */
  float *again = run_sample(ckpt, data, in_tmp("again.safetensors"), &n, "--steps", "1", "--guidance", "3", "--seed",
                            "7", "--prompts", "3", "--per-prompt", "2", "--scheduler-config", sched, "--batch", "4",
                            NULL);
  assert_memory_equal(again, g3, sizeof(float) * 6 * IMG);
  free(again);
  again = run_sample(ckpt, data, in_tmp("b1.safetensors"), &n, "--steps", "1", "--guidance", "3", "--seed", "7",
                     "--prompts", "3", "--per-prompt", "2", "--scheduler-config", sched, "--batch", "1", NULL);
  assert_true(max_abs_diff(again, g3, 6 * IMG) < 1e-5);
  free(again);
  /* Twenty steps of the default schedule run and stay finite. */
  again = run_sample(ckpt, data, in_tmp("full.safetensors"), &n, "--seed", "7", "--prompts", "3", NULL);
  for (size_t j = 0; j < n * IMG; j++) assert_true(isfinite(again[j]));
  free(again);
  free(g1), free(g3);
}

/* A dataset that stores time ids per pair: each prompt's samples take those of its first pair in the
 * split. Prompt rows: N(0, 1) text [5, 32] and pooled [16] embeddings; the empty prompt's too. */
static void sdxl_sample_takes_the_datasets_own_time_ids(void **state) {
  (void)state;
  const char *data = in_tmp("xl-tids");
  pref_writer_params wp = pref_writer_default_params();
  wp.channels = 4, wp.height = wp.width = 8, wp.text_len = 5, wp.embed_dim = 32;
  wp.latent_dtype = wp.embed_dtype = ST_F32;
  wp.pooled_dim = P;
  wp.time_ids = DATASET_TIME_IDS_PAIR;
  pref_writer *w;
  char err[1024];
  if (pref_writer_open(data, &wp, &w, err, sizeof err) != 0) fail_msg("%s", err);
  float e[5 * 32], pe[P], a[IMG], b[IMG];
  dpo_rng r;
  dpo_rng_seed(&r, 21, 0);
  for (int q = 0; q < 3; q++) {
    dpo_rng_fill_normal(&r, e, 5 * 32);
    dpo_rng_fill_normal(&r, pe, P);
    assert_int_equal(q < 2 ? pref_writer_add_prompt_pooled(w, e, pe) : pref_writer_set_empty_prompt_pooled(w, e, pe), 0);
  }
  /* Pairs of prompts 1, 0, 1: the samples are of prompt 1 (pair 0's time ids), then 0 (pair 1's). */
  const uint32_t pair_prompt[3] = {1, 0, 1};
  float tids[3][6];
  for (int i = 0; i < 3; i++) {
    const float v[6] = {512.0f + 64 * i, 768, 8.0f * i, 16, 1024, 1024};
    memcpy(tids[i], v, sizeof v);
    dpo_rng_fill_normal(&r, a, IMG);
    dpo_rng_fill_normal(&r, b, IMG);
    assert_int_equal(pref_writer_add_pair_time_ids(w, "validation", a, b, pair_prompt[i], tids[i], NULL), 0);
  }
  if (pref_writer_finish(w, err, sizeof err) != 0) fail_msg("%s", err);
  const char *ckpt = make_checkpoint("ckpt", tu_fixture("tiny-sdxl", "unet.safetensors"));
  write_text(in_tmp("sched.json"), SCHED);
  const char *sched = in_tmp("sched.json");
  size_t n, n2;
  float *g1 = run_sample(ckpt, data, in_tmp("g1.safetensors"), &n, "--steps", "1", "--guidance", "1", "--seed", "5",
                         "--scheduler-config", sched, NULL);
  float *g3 = run_sample(ckpt, data, in_tmp("g3.safetensors"), &n2, "--steps", "1", "--guidance", "3", "--seed", "5",
                         "--scheduler-config", sched, NULL);
  assert_int_equal(n, 2);
  assert_int_equal(n2, 2);
  const uint32_t prompts[2] = {1, 0};
  float want[2 * 6];
  memcpy(want, tids[0], sizeof tids[0]);
  memcpy(want + 6, tids[1], sizeof tids[1]);
  expect_one_step(data, prompts, 2, want, 5, g1, g3);
  free(g1), free(g3);
}

/* A LoRA file for tiny-sdxl: rank-2 adapters on every attention's to_q, to_k, to_v and to_out.0, the
 * down weights N(0, 0.3), the up weights N(0, up_std) (0: all zero). */
static void write_lora(const char *path, double up_std) {
  st_file *base = NULL;
  char err[512];
  assert_int_equal(st_open(tu_fixture("tiny-sdxl", "unet.safetensors"), &base, err, sizeof err), 0);
  st_writer *w = st_writer_new();
  static const char *const targets[] = {".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"};
  float *bufs[512];
  char *names[512];
  size_t nb = 0, adapted = 0;
  dpo_rng r;
  dpo_rng_seed(&r, 99, 0);
  for (size_t i = 0; i < st_count(base); i++) {
    const st_tensor *t = st_at(base, i);
    size_t len = strlen(t->name);
    for (int k = 0; k < 4; k++) {
      size_t sl = strlen(targets[k]);
      if (len <= sl || strcmp(t->name + len - sl, targets[k]) != 0 || t->ndim != 2) continue;
      int64_t out = t->shape[0], in = t->shape[1];
      int64_t sd[2] = {2, in}, su[2] = {out, 2};
      assert_true(nb + 4 <= 512);
      char *dn = malloc(len + 32), *un = malloc(len + 32);
      snprintf(dn, len + 32, "unet.%.*s.lora.down.weight", (int)(len - 7), t->name);
      snprintf(un, len + 32, "unet.%.*s.lora.up.weight", (int)(len - 7), t->name);
      float *d = malloc(sizeof(float) * 2 * (size_t)in), *u = malloc(sizeof(float) * 2 * (size_t)out);
      for (int64_t j = 0; j < 2 * in; j++) d[j] = (float)(0.3 * dpo_rng_normal(&r));
      for (int64_t j = 0; j < 2 * out; j++) u[j] = (float)(up_std * dpo_rng_normal(&r));
      assert_int_equal(st_writer_add(w, dn, ST_F32, 2, sd, d), 0);
      assert_int_equal(st_writer_add(w, un, ST_F32, 2, su, u), 0);
      names[nb] = dn, bufs[nb++] = d;
      names[nb] = un, bufs[nb++] = u;
      adapted++;
    }
  }
  assert_true(adapted >= 8);
  assert_int_equal(st_writer_write(w, path, NULL, err, sizeof err), 0);
  st_writer_free(w);
  for (size_t i = 0; i < nb; i++) free(names[i]), free(bufs[i]);
  st_close(base);
}

static void sdxl_lora_sample_is_the_base_at_zero_and_the_merged_weights_otherwise(void **state) {
  (void)state;
  const char *data = make_dataset();
  const char *ckpt = make_checkpoint("ckpt", tu_fixture("tiny-sdxl", "unet.safetensors"));
  write_lora(in_tmp("zero.safetensors"), 0);
  write_lora(in_tmp("lora.safetensors"), 0.2);
  size_t n, nz, nl, nm;
  float *base = run_sample(ckpt, data, in_tmp("base.safetensors"), &n, "--steps", "4", "--seed", "3", NULL);
  float *zero = run_sample(ckpt, data, in_tmp("zero-s.safetensors"), &nz, "--steps", "4", "--seed", "3", "--lora",
                           in_tmp("zero.safetensors"), NULL);
  float *lora = run_sample(ckpt, data, in_tmp("lora-s.safetensors"), &nl, "--steps", "4", "--seed", "3", "--lora",
                           in_tmp("lora.safetensors"), NULL);
  assert_int_equal(n, 3);
  assert_int_equal(nz, n);
  assert_int_equal(nl, n);
  double dz = max_abs_diff(base, zero, n * IMG), dl = max_abs_diff(base, lora, n * IMG);
  if (dz > 1e-6) fail_msg("zero-up adapters change the sample by %g", dz);
  if (dl < 1e-3) fail_msg("the adapters barely change the sample (%g): the test cannot tell", dl);

  char *margv[] = {"merge-lora", (char *)tu_fixture("tiny-sdxl", "unet.safetensors"), (char *)in_tmp("lora.safetensors"),
                   (char *)in_tmp("merged.safetensors"), "--config", (char *)tu_fixture("tiny-sdxl", "config.json"),
                   NULL};
  assert_int_equal(tool_merge_lora_main(6, margv), 0);
  const char *mck = make_checkpoint("merged-ckpt", in_tmp("merged.safetensors"));
  float *merged = run_sample(mck, data, in_tmp("merged-s.safetensors"), &nm, "--steps", "4", "--seed", "3", NULL);
  assert_int_equal(nm, n);
  double dm = max_abs_diff(lora, merged, n * IMG);
  if (dm > 1e-5) fail_msg("sampling with --lora and sampling the merged weights differ by %g", dm);
  free(base), free(zero), free(lora), free(merged);
}

/* A dataset without pooled embeddings cannot condition an SDXL-shaped model: refused, naming it. */
static void sdxl_sample_refuses_a_dataset_without_pooled_embeddings(void **state) {
  (void)state;
  const char *dir = in_tmp("plain");
  char *sargv[] = {"synth", "--out", (char *)dir, "--embed-dim", "32", "--train-pairs", "4", "--validation-pairs", "2",
                   NULL};
  assert_int_equal(tool_synth_main(9, sargv), 0);
  const char *ckpt = make_checkpoint("ckpt", tu_fixture("tiny-sdxl", "unet.safetensors"));
  char *argv[] = {"sample", "--checkpoint", (char *)ckpt, "--dataset", (char *)dir, "--out",
                  (char *)in_tmp("never.safetensors"), NULL};
  char msg[4096];
  int rc = tc_run_captured(tool_sample_main, 7, argv, msg, sizeof msg);
  if (rc == 0 || !strstr(msg, "pooled prompt embeddings of width 16")) fail_msg("rc %d: %s", rc, msg);
}

int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      TC_CASE(sdxl_sample_is_deterministic_and_one_step_is_a_direct_forward),
      TC_CASE(sdxl_sample_takes_the_datasets_own_time_ids),
      TC_CASE(sdxl_lora_sample_is_the_base_at_zero_and_the_merged_weights_otherwise),
      TC_CASE(sdxl_sample_refuses_a_dataset_without_pooled_embeddings),
  };
  return CMOCKA_MAIN("sample", all, NULL, NULL);
}
