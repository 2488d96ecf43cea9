/* The warnings dpoctl draws from step metrics, fed with made-up metric sequences: each rule fires on its
 * signature, not on the near misses, once when it starts to hold (what watch prints), and is active for
 * as long as it holds (what get prints). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cmocka_main.h"
#include "diagnose.h"

static Dpod__V1__StepMetrics dpo_step(uint32_t step, double loss, double acc, double policy_mse, double saturated) {
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.has_step = m.has_loss = m.has_implicit_acc = m.has_policy_mse = m.has_saturated_share = 1;
  m.step = step;
  m.loss = loss;
  m.implicit_acc = acc;
  m.policy_mse = policy_mse;
  m.saturated_share = saturated;
  return m;
}

/* Feeds steps first..last of `fn` and returns the warnings raised along the way (or'ed). */
typedef Dpod__V1__StepMetrics (*step_fn)(uint32_t step);
static unsigned feed(diagnose *d, step_fn fn, uint32_t first, uint32_t last) {
  unsigned raised = 0;
  for (uint32_t s = first; s <= last; s++) {
    Dpod__V1__StepMetrics m = fn(s);
    raised |= diag_add(d, &m);
  }
  return raised;
}

static Dpod__V1__StepMetrics healthy(uint32_t s) { return dpo_step(s, 0.69 - 0.01 * s, 0.6, 0.10, 0.05); }
static Dpod__V1__StepMetrics saturated(uint32_t s) { return dpo_step(s, 3.0, 0.5, 0.10, 0.8); }
static Dpod__V1__StepMetrics half_saturated(uint32_t s) { return dpo_step(s, 3.0, 0.5, 0.10, 0.5); }
static Dpod__V1__StepMetrics hacking(uint32_t s) { return dpo_step(s, 0.01, 1.0, 0.10 + 0.01 * s, 0.9); }
static Dpod__V1__StepMetrics acc_one_mse_falling(uint32_t s) { return dpo_step(s, 0.01, 1.0, 0.30 - 0.01 * s, 0.1); }
static Dpod__V1__StepMetrics flat(uint32_t s) { return dpo_step(s, M_LN2 + 1e-5, 0.5, 0.10, 0.0); }
static Dpod__V1__StepMetrics sft(uint32_t s) {
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.has_step = m.has_loss = m.has_policy_mse = 1; /* no implicit accuracy, no saturation: sft */
  m.step = s;
  m.loss = M_LN2;
  m.policy_mse = 0.1 * s;
  return m;
}

/* A step under loss scaling: skipped or not, at scale `scale`. */
static Dpod__V1__StepMetrics scaled_step(uint32_t s, int skipped, double scale) {
  Dpod__V1__StepMetrics m = healthy(s);
  m.has_loss_scale = m.has_skipped = 1;
  m.loss_scale = scale;
  m.skipped = skipped;
  return m;
}

/* Half of the last window's steps skipped on inf/nan gradients is raised once, naming the count and the
 * scale; four of ten, or an occasional skip, is not; a run of clean steps clears it. */
static void loss_scaling_that_keeps_skipping_is_raised(void **state) {
  (void)state;
  diagnose d;
  diag_init(&d, NULL);
  unsigned raised = 0;
  for (uint32_t s = 1; s <= 30; s++) { /* one skip in ten */
    Dpod__V1__StepMetrics m = scaled_step(s, s % 10 == 0, 65536);
    raised |= diag_add(&d, &m);
  }
  for (uint32_t s = 31; s <= 40; s++) { /* four in ten */
    Dpod__V1__StepMetrics m = scaled_step(s, s % 10 < 4, 65536);
    raised |= diag_add(&d, &m);
  }
  assert_int_equal(raised, 0);
  for (uint32_t s = 41; s <= 50; s++) { /* every other step: five in ten */
    Dpod__V1__StepMetrics m = scaled_step(s, s % 2 == 0, 1024);
    raised |= diag_add(&d, &m);
  }
  assert_int_equal(raised, DIAG_SKIPPING);
  assert_int_equal(diag_active(&d), DIAG_SKIPPING);
  char buf[512];
  diag_describe(&d, DIAG_SKIPPING, buf, sizeof buf);
  assert_non_null(strstr(buf, "5 of the last 10 steps were skipped"));
  assert_non_null(strstr(buf, "1024"));
  raised = 0;
  for (uint32_t s = 51; s <= 60; s++) {
    Dpod__V1__StepMetrics m = scaled_step(s, 0, 2048);
    raised |= diag_add(&d, &m);
  }
  assert_int_equal(raised, 0);
  assert_int_equal(diag_active(&d), 0);
}

static void a_healthy_run_raises_nothing(void **state) {
  (void)state;
  diagnose d;
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, healthy, 1, 50), 0);
  assert_int_equal(diag_active(&d), 0);
}

static void saturation_is_raised_once_while_most_pairs_are_saturated(void **state) {
  (void)state;
  diagnose d;
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, saturated, 1, 9), 0); /* fewer steps than the window */
  Dpod__V1__StepMetrics m = saturated(10);
  assert_int_equal(diag_add(&d, &m), DIAG_SATURATED);
  assert_int_equal(feed(&d, saturated, 11, 20), 0); /* raised once, active still */
  assert_int_equal(diag_active(&d), DIAG_SATURATED);
  char text[512];
  diag_describe(&d, DIAG_SATURATED, text, sizeof text);
  assert_non_null(strstr(text, "80% of pairs"));
  assert_non_null(strstr(text, "beta"));
  assert_int_equal(feed(&d, healthy, 21, 30), 0);
  assert_int_equal(diag_active(&d), 0);
  /* Half is not most. */
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, half_saturated, 1, 30), 0);
}

static void accuracy_at_one_with_a_rising_policy_mse_is_reward_hacking(void **state) {
  (void)state;
  diagnose d;
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, hacking, 1, 20) & DIAG_HACKING, DIAG_HACKING);
  assert_true(diag_active(&d) & DIAG_HACKING);
  char text[512];
  diag_describe(&d, DIAG_HACKING, text, sizeof text);
  assert_non_null(strstr(text, "reward hacking"));
  assert_non_null(strstr(text, "0.3")); /* the MSE it rose to: 0.10 + 0.01 * 20 */
  /* Accuracy at 1 while the policy MSE falls is a policy that is simply good. */
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, acc_one_mse_falling, 1, 20), 0);
}

static void a_loss_flat_at_ln2_is_raised_after_the_flat_window(void **state) {
  (void)state;
  diagnose d;
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, flat, 1, 19), 0);
  Dpod__V1__StepMetrics m = flat(20);
  assert_int_equal(diag_add(&d, &m), DIAG_FLAT);
  char text[512];
  assert_non_null(strstr(diag_describe(&d, DIAG_FLAT, text, sizeof text), "ln 2"));
  /* One step off ln 2 clears it, and it needs a whole window again. */
  m = dpo_step(21, 0.6, 0.6, 0.1, 0.0);
  diag_add(&d, &m);
  assert_int_equal(diag_active(&d), 0);
  assert_int_equal(feed(&d, flat, 22, 40), 0);
  m = flat(41);
  assert_int_equal(diag_add(&d, &m), DIAG_FLAT);
}

static void sft_steps_and_repeated_steps_raise_nothing(void **state) {
  (void)state;
  diagnose d;
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, sft, 1, 40), 0);
  diag_init(&d, NULL);
  assert_int_equal(feed(&d, flat, 1, 5), 0);
  assert_int_equal(feed(&d, flat, 1, 5), 0); /* replayed: not counted twice */
  assert_int_equal(d.count, 5);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_healthy_run_raises_nothing),
      cmocka_unit_test(saturation_is_raised_once_while_most_pairs_are_saturated),
      cmocka_unit_test(accuracy_at_one_with_a_rising_policy_mse_is_reward_hacking),
      cmocka_unit_test(a_loss_flat_at_ln2_is_raised_after_the_flat_window),
      cmocka_unit_test(sft_steps_and_repeated_steps_raise_nothing),
      cmocka_unit_test(loss_scaling_that_keeps_skipping_is_raised),
  };
  return CMOCKA_MAIN("diagnose", tests, NULL, NULL);
}
