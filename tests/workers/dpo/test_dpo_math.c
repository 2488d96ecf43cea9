/* Tests of the loss arithmetic, schedule and sampler against ../shared/fixtures/tiny-sd. Run one case
 * with `test_dpo_math NAME` (ctest does), or all with no argument. */
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
#include "dpod_file.h"
#include "rng.h"
#include "schedule.h"
#include "loss.h"
#include "lr_schedule.h"
#include "sampler.h"
#include "safetensors.h"

static char *read_text(const char *path) {
  char *text = NULL, err[512];
  if (dpod_read_file(path, 0, &text, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  return text;
}

static const char *fixtures(void) { return test_fixtures_dir(); }

/* Loads a tensor as float32 into a fresh buffer of exactly `expect` elements. */
static float *load_f32(const char *file, const char *name, size_t expect) {
  char path[1024], err[512];
  snprintf(path, sizeof path, "%s/tiny-sd/%s", fixtures(), file);
  st_file *f = NULL;
  if (st_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
  const st_tensor *t = st_find(f, name);
  if (!t) fail_msg("%s: no tensor %s", path, name);
  assert_int_equal(t->numel, (int64_t)expect);
  float *out = malloc(sizeof(float) * expect);
  assert_int_equal(st_to_f32(t, out), 0);
  st_close(f);
  return out;
}

/* From the reference's per-sample MSEs to inside term, loss and accuracy, for one fixture folder. */
static void check_loss_fixture(const char *dir) {
  char file[256];
  snprintf(file, sizeof file, "%sdpo_outputs.safetensors", dir);
  float *model = load_f32(file, "model_losses", 4);
  float *ref = load_f32(file, "ref_losses", 4);
  float *inside_ref = load_f32(file, "inside_term", 2);
  float *loss_ref = load_f32(file, "loss", 1);
  char path[1024];
  snprintf(path, sizeof path, "%s/tiny-sd/%sdpo_expected.json", fixtures(), dir);
  char *json = read_text(path);
  assert_non_null(json);
  cJSON *exp = cJSON_Parse(json);
  double beta = cJSON_GetObjectItem(exp, "beta_dpo")->valuedouble;
  double acc_ref = cJSON_GetObjectItem(exp, "implicit_acc")->valuedouble;
  assert_true(beta == 5000.0);

  dpo_loss_sums s = {0};
  float inside[2], grad[4];
  dpo_loss(2, model, ref, beta, 0.5, &s, inside, grad);
  double loss = s.loss_sum / s.pairs, acc = s.acc_sum / s.pairs;
  /* The reference runs in float32; our double arithmetic sits between it and the float64 recomputation. */
  for (int i = 0; i < 2; i++) {
    double tol = 1e-3 * fmax(1.0, fabs(inside_ref[i]));
    if (fabs(inside[i] - inside_ref[i]) > tol) fail_msg("inside[%d] = %.7g, want %.7g", i, inside[i], inside_ref[i]);
  }
  if (fabs(loss - loss_ref[0]) > 1e-3 * fabs(loss_ref[0]) + 1e-12)
    fail_msg("loss = %.9g, want %.9g", loss, loss_ref[0]);
  assert_true(fabs(acc - acc_ref) < 1e-12);
  assert_int_equal((int)s.pairs, 2);
  assert_int_equal((int)s.samples, 4);
  cJSON_Delete(exp);
  free(json);
  free(model);
  free(ref);
  free(inside_ref);
  free(loss_ref);
}

static void dpo_loss_matches_fixture_unsaturated(void **state) {
  (void)state;
  check_loss_fixture("dpo_unsaturated/");
}

static void dpo_loss_matches_fixture_ref_equals_policy(void **state) {
  (void)state;
  check_loss_fixture("dpo_ref_equals_policy/");
  /* And the closed form: inside 0, loss ln 2, accuracy 0 (a tie is not a win). */
  float m[4] = {1.0f, 2.0f, 0.5f, 0.25f};
  dpo_loss_sums s = {0};
  float inside[2];
  dpo_loss(2, m, m, 5000, 1, &s, inside, NULL);
  assert_true(inside[0] == 0.0f && inside[1] == 0.0f);
  assert_true(fabs(s.loss_sum / 2 - log(2.0)) < 1e-15);
  assert_true(s.acc_sum == 0.0);
}

/* The saturated share counts pairs with |inside| > 10 on either side, and not those at the edge. */
static void dpo_loss_counts_saturated_pairs_on_both_sides(void **state) {
  (void)state;
  /* inside = -beta/2 * ((mw - ml) - (rw - rl)) with the reference's difference 0 and beta = 2:
   * pair 0: -(0 - 11) = 11, pair 1: -(11 - 0) = -11, pair 2: -(10 - 0) = -10 (not over), pair 3: 0.5. */
  float m[8] = {0.0f, 11.0f, 10.0f, 0.5f, 11.0f, 0.0f, 0.0f, 0.0f};
  float r[8] = {0};
  dpo_loss_sums s = {0};
  float inside[4];
  dpo_loss(4, m, r, 2.0, 1, &s, inside, NULL);
  assert_true(inside[0] == 11.0f && inside[1] == -11.0f && inside[2] == -10.0f && inside[3] == -0.5f);
  assert_true(s.saturated_sum == 2.0);
  dpo_loss_sums t = {0};
  sft_loss(4, m, r, 1, &t, NULL);
  assert_true(t.saturated_sum == 0.0);
}

static void dpo_loss_matches_fixture_saturated(void **state) {
  (void)state;
  check_loss_fixture("");
}

static void dpo_loss_gradient_matches_finite_differences(void **state) {
  (void)state;
  float m[6] = {1.0f, 0.9f, 1.1f, 1.02f, 0.95f, 1.05f}, r[6] = {1.0f, 0.91f, 1.08f, 1.0f, 0.96f, 1.06f};
  const double beta = 50, scale = 1.0 / 3;
  float grad[6];
  dpo_loss_sums s0 = {0};
  dpo_loss(3, m, r, beta, scale, &s0, NULL, grad);
  for (int i = 0; i < 6; i++) {
    float mp[6], mm[6];
    memcpy(mp, m, sizeof m);
    memcpy(mm, m, sizeof m);
    const float h = 1e-3f;
    mp[i] += h;
    mm[i] -= h;
    dpo_loss_sums sp = {0}, sm = {0};
    dpo_loss(3, mp, r, beta, scale, &sp, NULL, NULL);
    dpo_loss(3, mm, r, beta, scale, &sm, NULL, NULL);
    double fd = scale * (sp.loss_sum - sm.loss_sum) / ((double)mp[i] - (double)mm[i]);
    if (fabs(fd - grad[i]) > 1e-3 * fmax(1.0, fabs(fd))) fail_msg("grad[%d] = %g, finite difference %g", i, grad[i], fd);
  }
  /* Winners are pushed down, losers up. */
  assert_true(grad[0] > 0 && grad[3] < 0);
}

static void sft_loss_is_mean_winner_mse(void **state) {
  (void)state;
  float m[3] = {0.5f, 1.5f, 1.0f}, g[3];
  dpo_loss_sums s = {0};
  sft_loss(3, m, NULL, 0.25, &s, g);
  assert_true(fabs(s.loss_sum / s.pairs - 1.0) < 1e-12);
  assert_true(g[0] == 0.25f && g[2] == 0.25f);
  assert_int_equal((int)s.samples, 3);
}

static void schedule_matches_fixture_alphas_cumprod(void **state) {
  (void)state;
  float *want = load_f32("dpo_unsaturated/dpo_inputs.safetensors", "alphas_cumprod", 1000);
  char path[1024];
  snprintf(path, sizeof path, "%s/tiny-sd/scheduler/scheduler_config.json", fixtures());
  char *json = read_text(path);
  assert_non_null(json);
  dpo_schedule s;
  char err[256];
  assert_int_equal(dpo_schedule_from_json(&s, json, err, sizeof err), 0);
  assert_int_equal(s.num_train_timesteps, 1000);
  /* libtorch's vectorised linspace rounds a few values differently from scalar code: allow a few ulps. */
  for (int i = 0; i < 1000; i++)
    if (fabs(s.alphas_cumprod[i] - want[i]) > 1e-6 * want[i] + 1e-12)
      fail_msg("alphas_cumprod[%d] = %.9g, want %.9g", i, s.alphas_cumprod[i], want[i]);
  /* The built-in default is the same SD 1.5 schedule. */
  dpo_schedule d;
  assert_int_equal(dpo_schedule_default(&d), 0);
  assert_true(d.alphas_cumprod[999] == s.alphas_cumprod[999]);
  dpo_schedule_free(&d);
  dpo_schedule_free(&s);
  free(json);
  free(want);
}

static void add_noise_matches_fixture(void **state) {
  (void)state;
  const size_t img = 4 * 8 * 8;
  float *x0 = load_f32("dpo_unsaturated/dpo_inputs.safetensors", "latents_cat", 4 * img);
  float *noise = load_f32("dpo_unsaturated/dpo_inputs.safetensors", "noise_cat", 4 * img);
  float *want = load_f32("dpo_unsaturated/dpo_inputs.safetensors", "noisy_latents", 4 * img);
  float *tf = load_f32("dpo_unsaturated/dpo_inputs.safetensors", "timesteps_cat", 4);
  int64_t t[4];
  for (int i = 0; i < 4; i++) t[i] = (int64_t)tf[i];
  assert_true(t[0] == t[2] && t[1] == t[3]); /* a pair shares its timestep */
  dpo_schedule s;
  assert_int_equal(dpo_schedule_default(&s), 0);
  float *xt = malloc(sizeof(float) * 4 * img), *target = malloc(sizeof(float) * 4 * img);
  dpo_add_noise(&s, 4, img, x0, noise, t, xt, target);
  for (size_t i = 0; i < 4 * img; i++) {
    if (fabs(xt[i] - want[i]) > 1e-6) fail_msg("x_t[%zu] = %.8g, want %.8g", i, xt[i], want[i]);
    assert_true(target[i] == noise[i]);
  }
  /* v-prediction target: sqrt(acp) noise - sqrt(1 - acp) x0. */
  s.prediction_type = DPO_PRED_V;
  dpo_add_noise(&s, 4, img, x0, noise, t, xt, target);
  double a = s.alphas_cumprod[t[0]];
  assert_true(fabs(target[0] - (sqrt(a) * noise[0] - sqrt(1 - a) * x0[0])) < 1e-6);
  dpo_schedule_free(&s);
  free(x0);
  free(noise);
  free(want);
  free(tf);
  free(xt);
  free(target);
}

static void schedule_config_refuses_unsupported(void **state) {
  (void)state;
  dpo_schedule s;
  char err[256] = "";
  assert_int_not_equal(dpo_schedule_from_json(&s, "{\"beta_schedule\": \"sigmoid\"}", err, sizeof err), 0);
  assert_non_null(strstr(err, "beta_schedule"));
  assert_int_not_equal(dpo_schedule_from_json(&s, "{\"prediction_type\": \"sample\"}", err, sizeof err), 0);
  assert_non_null(strstr(err, "prediction_type"));
  assert_int_not_equal(dpo_schedule_from_json(&s, "not json", err, sizeof err), 0);
  assert_int_equal(dpo_schedule_from_json(&s, "{\"beta_schedule\": \"squaredcos_cap_v2\"}", err, sizeof err), 0);
  assert_true(s.alphas_cumprod[0] > 0.99 && s.alphas_cumprod[999] < 1e-3);
  dpo_schedule_free(&s);
}

static void sampler_shards_are_disjoint_and_cover_epoch(void **state) {
  (void)state;
  /* 10 pairs, global batch 4: an epoch is 2 steps (8 positions), 2 pairs dropped. */
  dpo_sampler s;
  assert_int_equal(sampler_init(&s, 10, 4, 7), 0);
  int seen[10] = {0};
  for (uint64_t g = 0; g < 8; g++) seen[sampler_pair(&s, g)]++;
  int distinct = 0;
  for (int i = 0; i < 10; i++) {
    assert_true(seen[i] <= 1);
    distinct += seen[i];
  }
  assert_int_equal(distinct, 8);
  /* The next epoch is a different order. */
  int same = 1;
  size_t first[8];
  for (uint64_t g = 0; g < 8; g++) first[g] = sampler_pair(&s, g);
  for (uint64_t g = 8; g < 16; g++) same &= sampler_pair(&s, g) == first[g - 8];
  assert_false(same);
  sampler_free(&s);
  assert_int_not_equal(sampler_init(&s, 3, 4, 7), 0); /* fewer pairs than a global batch */
}

static void sampler_is_independent_of_rank_layout(void **state) {
  (void)state;
  /* The worker's slice formula: position = step*G + a*ranks*B + rank*B + i. For 2 ranks x B=2 and 1 rank
   * x B=4 the set of pairs per step must be equal. */
  dpo_sampler s;
  assert_int_equal(sampler_init(&s, 32, 4, 99), 0);
  for (uint64_t step = 0; step < 12; step++) {
    int one[32] = {0}, two[32] = {0};
    for (int i = 0; i < 4; i++) one[sampler_pair(&s, step * 4 + i)]++;
    for (int rank = 0; rank < 2; rank++)
      for (int i = 0; i < 2; i++) two[sampler_pair(&s, step * 4 + rank * 2 + i)]++;
    assert_memory_equal(one, two, sizeof one);
  }
  sampler_free(&s);
}

static void rng_is_deterministic_and_normal(void **state) {
  (void)state;
  dpo_rng a, b;
  dpo_rng_seed(&a, 42, 3);
  dpo_rng_seed(&b, 42, 3);
  for (int i = 0; i < 100; i++) assert_true(dpo_rng_u64(&a) == dpo_rng_u64(&b));
  dpo_rng_seed(&b, 42, 4);
  assert_true(dpo_rng_u64(&a) != dpo_rng_u64(&b));
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; i++) {
    double x = dpo_rng_normal(&a);
    sum += x;
    sq += x * x;
  }
  assert_true(fabs(sum / n) < 0.01);
  assert_true(fabs(sq / n - 1.0) < 0.02);
  int hist[5] = {0};
  for (int i = 0; i < 50000; i++) hist[dpo_rng_below(&a, 5)]++;
  for (int i = 0; i < 5; i++) assert_true(hist[i] > 9500 && hist[i] < 10500);
}

static void lr_warmup_is_linear(void **state) {
  (void)state;
  assert_true(dpo_lr_at(1.0, 0, 1) == 1.0);
  assert_true(dpo_lr_at(1.0, 4, 1) == 0.0);  /* as diffusers: the first step runs at lr * 0 / warmup */
  assert_true(dpo_lr_at(1.0, 4, 3) == 0.5);
  assert_true(dpo_lr_at(1.0, 4, 5) == 1.0);
}

static void builtin_dataset_is_deterministic(void **state) {
  (void)state;
  dataset_builtin_params p = {.pairs = 6, .prompts = 3, .text_len = 2, .seed = 5, .channels = 4, .height = 8,
                              .width = 8, .embed_dim = 32, .mode_noise = 0.3};
  dpo_dataset a, b;
  char err[128];
  assert_int_equal(dataset_builtin(&p, &a, err, sizeof err), 0);
  assert_int_equal(dataset_builtin(&p, &b, err, sizeof err), 0);
  assert_memory_equal(a.latents, b.latents, sizeof(float) * 6 * 2 * 256);
  /* Pairs of the same prompt share its embedding; winners sit near one mode, losers near the other. */
  assert_ptr_equal(dataset_prompt(&a, 0), dataset_prompt(&a, 3));
  double dw = 0, dl = 0;
  for (int j = 0; j < 256; j++) {
    dw += fabs(dataset_winner(&a, 0)[j] - dataset_winner(&a, 3)[j]);
    dl += fabs(dataset_winner(&a, 0)[j] - dataset_loser(&a, 3)[j]);
  }
  assert_true(dw < dl);
  dataset_free(&a);
  dataset_free(&b);
  p.pairs = 0;
  assert_int_not_equal(dataset_builtin(&p, &a, err, sizeof err), 0);
}

#define CASE(name) cmocka_unit_test(name)
int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      CASE(dpo_loss_matches_fixture_unsaturated),   CASE(dpo_loss_matches_fixture_ref_equals_policy),
      CASE(dpo_loss_matches_fixture_saturated),     CASE(dpo_loss_gradient_matches_finite_differences),
      CASE(sft_loss_is_mean_winner_mse),            CASE(schedule_matches_fixture_alphas_cumprod),
      CASE(add_noise_matches_fixture),              CASE(schedule_config_refuses_unsupported),
      CASE(sampler_shards_are_disjoint_and_cover_epoch), CASE(sampler_is_independent_of_rank_layout),
      CASE(rng_is_deterministic_and_normal),        CASE(lr_warmup_is_linear),
      CASE(builtin_dataset_is_deterministic),       CASE(dpo_loss_counts_saturated_pairs_on_both_sides),
  };
  return CMOCKA_MAIN("dpo_math", all, NULL, NULL);
}
