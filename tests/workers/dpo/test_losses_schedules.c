/* The preference losses (sigmoid, hinge, ipo) and the learning-rate schedules (constant, cosine and linear
 * with warmup) against independent float64 recomputations written the way the references write them:
 * diffusers' beta_dpo * (ref_diff - model_diff) with beta_dpo = beta / 2, and diffusers' lr_lambda
 * functions evaluated at k - 1. Gradients are also checked by finite differences. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include <math.h>
#include <string.h>

#include "loss.h"
#include "lr_schedule.h"

/* Four pairs: [winners; losers]. Pair 1 has the policy worse than the reference. */
static const float M[8] = {1.0f, 0.9f, 1.1f, 1.02f, 1.0001f, 0.95f, 1.05f, 1.00005f};
static const float R[8] = {1.0f, 0.91f, 1.08f, 1.0f, 1.0002f, 0.96f, 1.06f, 1.00002f};

/* The loss of pair i written from diffusers' terms, in float64. */
static double ref_pair_loss(dpo_loss_kind kind, double beta, const float *m, const float *r, int n, int i) {
  double model_diff = (double)m[i] - (double)m[n + i], ref_diff = (double)r[i] - (double)r[n + i];
  double beta_dpo = beta / 2, logits = ref_diff - model_diff;
  if (kind == DPO_LOSS_HINGE) return fmax(0.0, 1.0 - beta_dpo * logits);
  if (kind == DPO_LOSS_IPO) {
    double h = logits / 2, tau = beta; /* the IPO paper's (h - 1/(2 tau))^2 */
    return (h - 1.0 / (2.0 * tau)) * (h - 1.0 / (2.0 * tau));
  }
  return log1p(exp(-beta_dpo * logits));
}

/* d(pair loss)/d(model winner MSE), by hand; the loser's is its negative. */
static double ref_pair_grad_w(dpo_loss_kind kind, double beta, const float *m, const float *r, int n, int i) {
  double logits = ((double)r[i] - (double)r[n + i]) - ((double)m[i] - (double)m[n + i]);
  double z = beta / 2 * logits;
  if (kind == DPO_LOSS_HINGE) return z < 1 ? beta / 2 : 0.0;
  if (kind == DPO_LOSS_IPO) return -(logits / 2 - 1.0 / (2.0 * beta));
  return beta / 2 / (1.0 + exp(z));
}

static void check_kind(dpo_loss_kind kind, double beta) {
  const int n = 4;
  const double scale = 0.25;
  float grad[8], inside[4];
  dpo_loss_sums s = {0};
  dpo_pref_loss(kind, n, M, R, beta, scale, &s, inside, grad);
  double want = 0;
  for (int i = 0; i < n; i++) want += ref_pair_loss(kind, beta, M, R, n, i);
  if (fabs(s.loss_sum - want) > 1e-12 * fmax(1e-300, fabs(want)) + 1e-300)
    fail_msg("%s beta %g: loss sum %.17g, want %.17g", dpo_loss_kind_name(kind), beta, s.loss_sum, want);
  for (int i = 0; i < n; i++) {
    double g = scale * ref_pair_grad_w(kind, beta, M, R, n, i), tol = 1e-6 * fabs(g) + 1e-30;
    if (fabs(grad[i] - g) > tol || fabs(grad[n + i] + g) > tol)
      fail_msg("%s beta %g: grad of pair %d = (%g, %g), want (%g, %g)", dpo_loss_kind_name(kind), beta, i, grad[i],
               grad[n + i], g, -g);
  }
  /* Central differences of the implementation's own loss; the perturbation keeps every pair on its side of
   * the hinge's kink. */
  for (int j = 0; j < 2 * n; j++) {
    float mp[8], mm[8];
    memcpy(mp, M, sizeof mp);
    memcpy(mm, M, sizeof mm);
    const float h = 1e-6f;
    mp[j] += h;
    mm[j] -= h;
    dpo_loss_sums sp = {0}, sm = {0};
    dpo_pref_loss(kind, n, mp, R, beta, scale, &sp, NULL, NULL);
    dpo_pref_loss(kind, n, mm, R, beta, scale, &sm, NULL, NULL);
    double fd = scale * (sp.loss_sum - sm.loss_sum) / ((double)mp[j] - (double)mm[j]);
    if (fabs(fd - grad[j]) > 1e-4 * fabs(fd) + 1e-9 * fabs(scale * beta))
      fail_msg("%s beta %g: grad[%d] = %.9g, finite difference %.9g", dpo_loss_kind_name(kind), beta, j, grad[j], fd);
  }
  assert_int_equal((int)s.pairs, n);
  assert_int_equal((int)s.samples, 2 * n);
}

static void sigmoid_loss_matches_float64_recomputation(void **state) {
  (void)state;
  check_kind(DPO_LOSS_SIGMOID, 50);
  check_kind(DPO_LOSS_SIGMOID, 5000);
  /* dpo_loss is the sigmoid kind, bit for bit. */
  float g1[8], g2[8];
  dpo_loss_sums a = {0}, b = {0};
  dpo_loss(4, M, R, 5000, 0.25, &a, NULL, g1);
  dpo_pref_loss(DPO_LOSS_SIGMOID, 4, M, R, 5000, 0.25, &b, NULL, g2);
  assert_memory_equal(&a, &b, sizeof a);
  assert_memory_equal(g1, g2, sizeof g1);
}

static void hinge_loss_matches_float64_recomputation(void **state) {
  (void)state;
  check_kind(DPO_LOSS_HINGE, 50);
  check_kind(DPO_LOSS_HINGE, 5000);
  check_kind(DPO_LOSS_HINGE, 200000); /* most pairs past the margin: zero gradient */
}

static void ipo_loss_matches_float64_recomputation(void **state) {
  (void)state;
  check_kind(DPO_LOSS_IPO, 50);
  check_kind(DPO_LOSS_IPO, 5000);
}

/* At the kink (inside exactly 1) the hinge is 0 with zero gradient, and counted as saturated; just inside
 * it the gradient is beta/2; accuracy counts inside > 0 as for the sigmoid. */
static void hinge_loss_is_flat_past_the_margin(void **state) {
  (void)state;
  /* beta 2: inside = -(mw - ml) with the reference's difference 0. Pairs: inside 1, 0.5, -3. */
  float m[6] = {0.0f, 0.0f, 3.0f, 1.0f, 0.5f, 0.0f}, r[6] = {0};
  float g[6], in[3];
  dpo_loss_sums s = {0};
  dpo_pref_loss(DPO_LOSS_HINGE, 3, m, r, 2.0, 1.0, &s, in, g);
  assert_true(in[0] == 1.0f && in[1] == 0.5f && in[2] == -3.0f);
  assert_true(fabs(s.loss_sum - (0.0 + 0.5 + 4.0)) < 1e-15);
  assert_true(g[0] == 0.0f && g[3] == 0.0f);
  assert_true(g[1] == 1.0f && g[4] == -1.0f);
  assert_true(s.saturated_sum == 1.0);
  assert_true(s.acc_sum == 2.0);
}

/* IPO's minimum sits at h = 1/(2 beta), i.e. inside = 1/2: loss and gradient 0 there, and it never counts
 * a pair as saturated however far it is. */
static void ipo_loss_is_zero_at_its_target_margin(void **state) {
  (void)state;
  /* beta 4: h = -(mw - ml)/2 = 1/8 with mw - ml = -1/4. A second pair far on the wrong side. */
  float m[4] = {0.0f, 100.0f, 0.25f, 0.0f}, r[4] = {0};
  float g[4], in[2];
  dpo_loss_sums s = {0};
  dpo_pref_loss(DPO_LOSS_IPO, 2, m, r, 4.0, 1.0, &s, in, g);
  assert_true(in[0] == 0.5f);
  assert_true(g[0] == 0.0f && g[2] == 0.0f);
  double e = -50.0 - 1.0 / 8;
  assert_true(fabs(s.loss_sum - e * e) < 1e-9);
  assert_true(s.saturated_sum == 0.0);
  assert_true(strcmp(dpo_loss_kind_name(DPO_LOSS_IPO), "ipo") == 0);
}

/* diffusers' lr_lambda(current_step) for each schedule, with Python's integer arithmetic. */
static double ref_lambda(dpo_lr_kind kind, long current, long warmup, long total) {
  if (current < warmup) return (double)current / (double)(warmup > 1 ? warmup : 1);
  long rest = total - warmup > 1 ? total - warmup : 1;
  if (kind == DPO_LR_LINEAR) return fmax(0.0, (double)(total - current) / (double)rest);
  if (kind == DPO_LR_COSINE) {
    double progress = (double)(current - warmup) / (double)rest;
    return fmax(0.0, 0.5 * (1.0 + cos(3.141592653589793 * 0.5 * 2.0 * progress)));
  }
  return 1.0;
}

/* Every step of several runs, so both ends of the warmup and the last steps are covered, for all three. */
static void lr_schedules_match_diffusers_at_every_step(void **state) {
  (void)state;
  const long runs[][2] = {{0, 1}, {0, 10}, {1, 10}, {4, 10}, {9, 10}, {10, 10}, {12, 10}, {3, 3}, {100, 1000}};
  const dpo_lr_kind kinds[] = {DPO_LR_CONSTANT_WITH_WARMUP, DPO_LR_COSINE, DPO_LR_LINEAR};
  const double peak = 3e-4;
  for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++)
    for (size_t k = 0; k < 3; k++)
      for (long step = 1; step <= runs[r][1] + 1; step++) {
        double got = dpo_lr_schedule_at(kinds[k], peak, (uint32_t)runs[r][0], (uint32_t)runs[r][1], (uint32_t)step);
        double want = peak * ref_lambda(kinds[k], step - 1, runs[r][0], runs[r][1]);
        if (fabs(got - want) > 1e-15 * peak)
          fail_msg("%s warmup %ld total %ld step %ld: lr %.17g, want %.17g", dpo_lr_kind_name(kinds[k]), runs[r][0],
                   runs[r][1], step, got, want);
      }
}

/* The ends, by hand: warmup 4 of 10 steps. */
static void lr_warmup_ends_at_step_w_plus_one(void **state) {
  (void)state;
  for (int k = 0; k < 3; k++) {
    dpo_lr_kind kind = (dpo_lr_kind)k;
    assert_true(dpo_lr_schedule_at(kind, 1.0, 4, 10, 1) == 0.0);
    assert_true(dpo_lr_schedule_at(kind, 1.0, 4, 10, 3) == 0.5);
    assert_true(dpo_lr_schedule_at(kind, 1.0, 4, 10, 4) == 0.75); /* (W - 1) / W at step W, as diffusers */
    assert_true(dpo_lr_schedule_at(kind, 1.0, 4, 10, 5) == 1.0);  /* the full rate first at step W + 1 */
  }
  assert_true(dpo_lr_at(1.0, 4, 4) == 0.75);
  assert_true(dpo_lr_at(1.0, 0, 1) == 1.0);
  assert_true(dpo_lr_schedule_at(DPO_LR_CONSTANT_WITH_WARMUP, 1.0, 4, 10, 10) == 1.0);
  /* Linear: step 10 runs at lambda(9) = (10 - 9) / 6; cosine: 0.5 (1 + cos(pi 5/6)). */
  assert_true(fabs(dpo_lr_schedule_at(DPO_LR_LINEAR, 1.0, 4, 10, 10) - 1.0 / 6) < 1e-16);
  assert_true(fabs(dpo_lr_schedule_at(DPO_LR_LINEAR, 1.0, 4, 10, 6) - 5.0 / 6) < 1e-16);
  assert_true(fabs(dpo_lr_schedule_at(DPO_LR_COSINE, 1.0, 4, 10, 10) - 0.5 * (1 + cos(M_PI * 5 / 6))) < 1e-15);
  assert_true(fabs(dpo_lr_schedule_at(DPO_LR_COSINE, 1.0, 4, 10, 8) - 0.5) < 1e-15); /* halfway: lambda(7) */
}

int main(int argc, char **argv) {
#define CASE(name) cmocka_unit_test(name)
  const struct CMUnitTest tests[] = {
      CASE(sigmoid_loss_matches_float64_recomputation), CASE(hinge_loss_matches_float64_recomputation),
      CASE(ipo_loss_matches_float64_recomputation),     CASE(hinge_loss_is_flat_past_the_margin),
      CASE(ipo_loss_is_zero_at_its_target_margin),      CASE(lr_schedules_match_diffusers_at_every_step),
      CASE(lr_warmup_ends_at_step_w_plus_one),
  };
  return CMOCKA_MAIN("dpo.losses", tests, NULL, NULL);
}
