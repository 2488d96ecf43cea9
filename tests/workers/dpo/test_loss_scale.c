/* Dynamic loss scaling (loss_scale.h): GradScaler's growth and backoff, the skip count, the bounds, the
 * exact unscale and its inf/nan verdict, and the state's round trip through a checkpoint's JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_util.h"

#include "cmocka_main.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "loss_scale.h"

static dpo_loss_scaler make(double init, uint32_t interval) {
  dpo_loss_scale_params p = dpo_loss_scale_default_params();
  p.init_scale = init;
  p.growth_interval = interval;
  dpo_loss_scaler s;
  char err[256];
  if (dpo_loss_scaler_init(&s, &p, err, sizeof err) != 0) fail_msg("%s", err);
  return s;
}

static void defaults_are_grad_scalers(void **state) {
  (void)state;
  dpo_loss_scaler s;
  char err[256];
  assert_int_equal(dpo_loss_scaler_init(&s, NULL, err, sizeof err), 0);
  assert_true(s.scale == 65536.0);
  assert_int_equal(s.p.growth_interval, 2000);
  assert_true(s.p.growth_factor == 2.0 && s.p.backoff_factor == 0.5);
  assert_int_equal(s.growth_tracker, 0);
  assert_int_equal(s.skipped, 0);
}

/* growth_interval clean steps double the scale, and the count starts again. */
static void grows_after_growth_interval_clean_steps(void **state) {
  (void)state;
  dpo_loss_scaler s = make(1024, 3);
  assert_int_equal(dpo_loss_scaler_update(&s, 0), DPO_LOSS_SCALE_KEPT);
  assert_int_equal(dpo_loss_scaler_update(&s, 0), DPO_LOSS_SCALE_KEPT);
  assert_true(s.scale == 1024);
  assert_int_equal(s.growth_tracker, 2);
  assert_int_equal(dpo_loss_scaler_update(&s, 0), DPO_LOSS_SCALE_GREW);
  assert_true(s.scale == 2048);
  assert_int_equal(s.growth_tracker, 0);
  for (int i = 0; i < 3; i++) dpo_loss_scaler_update(&s, 0);
  assert_true(s.scale == 4096);
  assert_int_equal(s.skipped, 0);
}

/* A non-finite step halves the scale, counts a skip and resets the growth count: the next growth needs
 * growth_interval clean steps again. */
static void nonfinite_step_backs_off_and_resets_growth(void **state) {
  (void)state;
  dpo_loss_scaler s = make(1024, 3);
  dpo_loss_scaler_update(&s, 0);
  dpo_loss_scaler_update(&s, 0);
  assert_int_equal(dpo_loss_scaler_update(&s, 1), DPO_LOSS_SCALE_BACKOFF);
  assert_true(s.scale == 512);
  assert_int_equal(s.growth_tracker, 0);
  assert_int_equal(s.skipped, 1);
  dpo_loss_scaler_update(&s, 0);
  dpo_loss_scaler_update(&s, 0);
  assert_true(s.scale == 512);
  assert_int_equal(dpo_loss_scaler_update(&s, 0), DPO_LOSS_SCALE_GREW);
  assert_true(s.scale == 1024);
  dpo_loss_scaler_update(&s, 1);
  dpo_loss_scaler_update(&s, 1);
  assert_true(s.scale == 256);
  assert_int_equal(s.skipped, 3);
}

/* The scale stops at min_scale (skips still count) and at max_scale. */
static void scale_stays_within_min_and_max(void **state) {
  (void)state;
  dpo_loss_scaler s = make(4, 1);
  for (int i = 0; i < 5; i++) dpo_loss_scaler_update(&s, 1);
  assert_true(s.scale == DPO_LOSS_SCALE_MIN);
  assert_int_equal(s.skipped, 5);
  s = make(DPO_LOSS_SCALE_MAX / 2, 1);
  assert_int_equal(dpo_loss_scaler_update(&s, 0), DPO_LOSS_SCALE_GREW);
  assert_true(s.scale == DPO_LOSS_SCALE_MAX);
  dpo_loss_scaler_update(&s, 0);
  assert_true(s.scale == DPO_LOSS_SCALE_MAX);
}

static void bad_parameters_are_refused_by_name(void **state) {
  (void)state;
  dpo_loss_scale_params p = dpo_loss_scale_default_params();
  dpo_loss_scaler s;
  char err[256];
  const double bad_init[] = {3.0, 0.5, 0.0, -65536.0, 8589934592.0, NAN, INFINITY, 65535.0};
  for (size_t i = 0; i < sizeof bad_init / sizeof bad_init[0]; i++) {
    p.init_scale = bad_init[i];
    assert_int_equal(dpo_loss_scaler_init(&s, &p, err, sizeof err), DPOD_EINVAL);
    assert_non_null(strstr(err, "init_scale"));
  }
  p = dpo_loss_scale_default_params();
  p.growth_interval = 0;
  assert_int_equal(dpo_loss_scaler_init(&s, &p, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "growth_interval"));
  p.growth_interval = DPO_LOSS_SCALE_INTERVAL_MAX + 1;
  assert_int_equal(dpo_loss_scaler_init(&s, &p, err, sizeof err), DPOD_EINVAL);
  p = dpo_loss_scale_default_params();
  p.growth_factor = 3;
  assert_int_equal(dpo_loss_scaler_init(&s, &p, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "growth"));
  p.init_scale = 1;
  p.growth_factor = 2;
  assert_int_equal(dpo_loss_scaler_init(&s, &p, err, sizeof err), 0);
}

/* Unscaling by a power of two is exact (compared with a float64 division), and the verdict sees an inf
 * or a nan anywhere, including in the last element. */
static void unscale_is_exact_and_finds_inf_and_nan(void **state) {
  (void)state;
  float g[37], want[37];
  for (int i = 0; i < 37; i++) {
    g[i] = (float)((i - 18) * 0.37 + 1e-3 * i * i) * 65536.0f;
    want[i] = (float)((double)g[i] / 65536.0);
  }
  assert_int_equal(dpo_loss_scale_unscale(65536.0, g, 37), 0);
  assert_memory_equal(g, want, sizeof g);
  g[36] = INFINITY;
  assert_int_equal(dpo_loss_scale_unscale(2.0, g, 37), 1);
  assert_true(g[0] == want[0] / 2); /* the rest is still unscaled */
  g[36] = 0;
  g[5] = -INFINITY;
  assert_int_equal(dpo_loss_scale_unscale(1.0, g, 37), 1);
  g[5] = NAN;
  assert_int_equal(dpo_loss_scale_unscale(1.0, g, 37), 1);
  g[5] = 3.4e38f; /* large but finite */
  assert_int_equal(dpo_loss_scale_unscale(1.0, g, 37), 0);
  assert_int_equal(dpo_loss_scale_unscale(1.0, g, 0), 0);
}

/* The state written into a checkpoint reads back to the same scaler; mismatches and junk are refused by
 * name, leaving the scaler as it was. */
static void state_round_trips_and_bad_state_is_refused(void **state) {
  (void)state;
  dpo_loss_scaler s = make(65536, 5);
  dpo_loss_scaler_update(&s, 1);
  dpo_loss_scaler_update(&s, 0);
  dpo_loss_scaler_update(&s, 0);
  char buf[256], err[256];
  assert_true(dpo_loss_scaler_to_json(&s, buf, sizeof buf) > 0);
  dpo_loss_scaler r = make(65536, 5);
  assert_int_equal(dpo_loss_scaler_from_json(&r, buf, "ck/loss_scale.json", err, sizeof err), 0);
  assert_true(r.scale == 32768);
  assert_int_equal(r.growth_tracker, 2);
  assert_int_equal(r.skipped, 1);
  assert_int_equal(dpo_loss_scaler_to_json(&s, buf, 8), -1);

  /* Another job's parameters. */
  assert_true(dpo_loss_scaler_to_json(&s, buf, sizeof buf) > 0);
  dpo_loss_scaler o = make(65536, 6);
  assert_int_equal(dpo_loss_scaler_from_json(&o, buf, "ck/loss_scale.json", err, sizeof err), DPOD_EFORMAT);
  assert_non_null(strstr(err, "ck/loss_scale.json"));
  assert_non_null(strstr(err, "growth_interval"));
  assert_true(o.scale == 65536);

  const char *bad[] = {
      "",
      "not json at all",
      "{\"magic\": \"x\", \"version\": 1, \"scale\": 2, \"growth_tracker\": 0, \"skipped\": 0, \"init_scale\": 65536, "
      "\"growth_interval\": 5}",
      "{\"magic\": \"dpod-loss-scale\", \"version\": 1, \"scale\": 3, \"growth_tracker\": 0, \"skipped\": 0, "
      "\"init_scale\": 65536, \"growth_interval\": 5}",
      "{\"magic\": \"dpod-loss-scale\", \"version\": 1, \"scale\": 2, \"growth_tracker\": 5, \"skipped\": 0, "
      "\"init_scale\": 65536, \"growth_interval\": 5}",
      "{\"magic\": \"dpod-loss-scale\", \"version\": 1, \"scale\": 2, \"growth_tracker\": 0, \"skipped\": -1, "
      "\"init_scale\": 65536, \"growth_interval\": 5}",
      "{\"magic\": \"dpod-loss-scale\", \"version\": 1, \"scale\": 0.5, \"growth_tracker\": 0, \"skipped\": 0, "
      "\"init_scale\": 65536, \"growth_interval\": 5}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(dpo_loss_scaler_from_json(&o, bad[i], "f.json", err, sizeof err), DPOD_EFORMAT);
    assert_non_null(strstr(err, "f.json"));
    assert_null(strstr(err, "magic")); /* never the file's text */
  }
  o = make(65536, 5);
  assert_int_equal(dpo_loss_scaler_from_json(&o,
                                             "{\"magic\": \"dpod-loss-scale\", \"version\": 2, \"scale\": 2, "
                                             "\"growth_tracker\": 0, \"skipped\": 0, \"init_scale\": 65536, "
                                             "\"growth_interval\": 5}",
                                             "f.json", err, sizeof err),
                   DPOD_EUNSUPPORTED);
  assert_true(o.scale == 65536 && o.skipped == 0);
}

/* In a checkpoint directory: saved and loaded back; a checkpoint without the file (written without loss
 * scaling) is DPOD_ENOENT and leaves the scaler at its start. */
static void checkpoint_file_round_trips_and_may_be_absent(void **state) {
  (void)state;
  char dir[256], err[512];
  assert_int_equal(test_mkdtemp(dir, sizeof dir, "dpod-loss-scale"), 0);
  dpo_loss_scaler s = make(1024, 7), r = make(1024, 7);
  assert_int_equal(dpo_loss_scaler_load(&r, dir, err, sizeof err), DPOD_ENOENT);
  assert_true(r.scale == 1024);
  dpo_loss_scaler_update(&s, 1);
  dpo_loss_scaler_update(&s, 0);
  if (dpo_loss_scaler_save(&s, dir, err, sizeof err) != 0) fail_msg("%s", err);
  if (dpo_loss_scaler_load(&r, dir, err, sizeof err) != 0) fail_msg("%s", err);
  assert_true(r.scale == 512);
  assert_int_equal(r.growth_tracker, 1);
  assert_int_equal(r.skipped, 1);
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_LOSS_SCALE);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("{\"magic\": \"dpod-loss-scale\", \"version\": 1, \"scale\": 6", f);
  fclose(f);
  assert_int_equal(dpo_loss_scaler_load(&r, dir, err, sizeof err), DPOD_EFORMAT);
  assert_non_null(strstr(err, CKPT_LOSS_SCALE));
  assert_int_equal(test_rmtree(dir), 0);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(defaults_are_grad_scalers),
      cmocka_unit_test(grows_after_growth_interval_clean_steps),
      cmocka_unit_test(nonfinite_step_backs_off_and_resets_growth),
      cmocka_unit_test(scale_stays_within_min_and_max),
      cmocka_unit_test(bad_parameters_are_refused_by_name),
      cmocka_unit_test(unscale_is_exact_and_finds_inf_and_nan),
      cmocka_unit_test(state_round_trips_and_bad_state_is_refused),
      cmocka_unit_test(checkpoint_file_round_trips_and_may_be_absent),
  };
  return CMOCKA_MAIN("dpo.loss_scale", tests, NULL, NULL);
}
