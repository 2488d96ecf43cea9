/* The optimizer and the flat buffers: AdamW against a hand computation, global-norm clipping, and
 * backward accumulating straight into the buffer the worker all-reduces. */
#include "dpod_error.h"
#include "tensor_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

static unet_t tiny(void) {
  char err[512];
  unet_t m = NULL;
  unet_params p = unet_default_params();
  p.seed = 7;
  if (unet_create(NULL, &p, &m, err, sizeof err) != 0) fail_msg("%s", err);
  return m;
}

/* torch.optim.AdamW, step k, one element, in double. */
static double adamw_ref(double p, double g, double *m, double *v, int k, const unet_adamw_params *o) {
  p *= 1.0 - o->lr * o->weight_decay;
  *m = o->beta1 * *m + (1.0 - o->beta1) * g;
  *v = o->beta2 * *v + (1.0 - o->beta2) * g * g;
  double bc1 = 1.0 - pow(o->beta1, k), bc2 = 1.0 - pow(o->beta2, k);
  return p - (o->lr / bc1) * *m / (sqrt(*v) / sqrt(bc2) + o->eps);
}

static void adamw_step_matches_hand_computed(void **state) {
  (void)state;
  unet_t m = tiny();
  size_t n, ng;
  float *w = unet_param_buffer(m, &n);
  float *g = unet_grad_buffer(m, &ng);
  assert_int_equal(n, ng);
  unet_adamw_params o = unet_adamw_default_params();
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  o.max_grad_norm = 0; /* no clipping */
  const size_t idx[4] = {0, 1, n / 2, n - 1};
  double p[4], mm[4] = {0}, vv[4] = {0};
  for (int k = 0; k < 4; k++) p[k] = w[idx[k]];
  for (int step = 1; step <= 2; step++) {
    double sq = 0;
    for (size_t i = 0; i < n; i++) {
      g[i] = (float)(1e-3 * ((int)((i * 7 + (size_t)step) % 11) - 5));
      sq += (double)g[i] * g[i];
    }
    double gn = 0;
    if (unet_adamw_step(m, &o, &gn) != 0) fail_msg("%s", unet_last_error(m));
    if (fabs(gn - sqrt(sq)) > 1e-5 * sqrt(sq)) fail_msg("grad norm %.9g, want %.9g", gn, sqrt(sq));
    for (int k = 0; k < 4; k++) {
      p[k] = adamw_ref(p[k], g[idx[k]], &mm[k], &vv[k], step, &o);
      if (fabs(w[idx[k]] - p[k]) > 1e-6 * fmax(1.0, fabs(p[k])))
        fail_msg("step %d, element %zu: %.9g, want %.9g", step, idx[k], w[idx[k]], p[k]);
    }
  }
  unet_free(m);
}

static void adamw_clips_global_norm(void **state) {
  (void)state;
  unet_t m = tiny();
  size_t n;
  float *g = unet_grad_buffer(m, &n);
  for (size_t i = 0; i < n; i++) g[i] = (i % 2) ? 0.5f : -0.5f;
  double norm = 0;
  unet_adamw_params o = unet_adamw_default_params();
  o.max_grad_norm = 2.0;
  assert_int_equal(unet_adamw_step(m, &o, &norm), 0);
  assert_true(fabs(norm - 0.5 * sqrt((double)n)) < 1e-3);
  /* The gradient buffer is clipped in place to the max norm, as clip_grad_norm_ does. */
  double sq = 0;
  for (size_t i = 0; i < n; i++) sq += (double)g[i] * g[i];
  if (fabs(sqrt(sq) - 2.0) > 1e-4) fail_msg("clipped norm %.9g, want 2", sqrt(sq));
  /* Below the limit nothing is scaled. */
  for (size_t i = 0; i < n; i++) g[i] = 0;
  g[3] = 0.25f;
  assert_int_equal(unet_adamw_step(m, &o, &norm), 0);
  assert_true(g[3] == 0.25f && fabs(norm - 0.25) < 1e-7);
  /* A non-finite gradient refuses the step and leaves the weights alone. */
  float *w = unet_param_buffer(m, &n);
  float w0 = w[3];
  g[5] = NAN;
  assert_int_equal(unet_adamw_step(m, &o, &norm), DPOD_ENUMERIC);
  assert_true(w[3] == w0);
  unet_free(m);
}

static void grads_accumulate_in_flat_buffer(void **state) {
  (void)state;
  unet_t m = tiny();
  float x[2 * 4 * 8 * 8], tgt[2 * 4 * 8 * 8], e[2 * 4 * 32], t[2] = {10, 500}, mse[2];
  for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) {
    x[i] = sinf((float)i);
    tgt[i] = cosf((float)i);
  }
  for (size_t i = 0; i < sizeof e / sizeof e[0]; i++) e[i] = sinf(0.3f * (float)i);
  const float gm[2] = {0.5f, -0.25f};
  assert_int_equal(unet_backward_mse(m, gm), DPOD_ESTATE); /* no graph yet */
  size_t n;
  const float *g = unet_grad_buffer(m, &n);
  assert_int_equal(unet_zero_grad(m), 0);
  if (unet_forward_mse(m, 2, 8, 8, 4, x, t, e, tgt, mse, NULL) != 0) fail_msg("%s", unet_last_error(m));
  if (unet_backward_mse(m, gm) != 0) fail_msg("%s", unet_last_error(m));
  float *once = malloc(n * sizeof(float));
  memcpy(once, g, n * sizeof(float));
  double sq = 0;
  for (size_t i = 0; i < n; i++) sq += (double)once[i] * once[i];
  assert_true(sq > 0);
  assert_int_equal(unet_backward_mse(m, gm), DPOD_ESTATE); /* graph released */
  if (unet_forward_mse(m, 2, 8, 8, 4, x, t, e, tgt, mse, NULL) != 0) fail_msg("%s", unet_last_error(m));
  if (unet_backward_mse(m, gm) != 0) fail_msg("%s", unet_last_error(m));
  for (size_t i = 0; i < n; i++)
    if (fabs(g[i] - 2.0 * once[i]) > 1e-5 * fabs(once[i]) + 1e-12)
      fail_msg("grad[%zu] after two backwards %.9g, want %.9g", i, g[i], 2.0 * once[i]);
  assert_int_equal(unet_zero_grad(m), 0);
  for (size_t i = 0; i < n; i++) assert_true(g[i] == 0.0f);
  free(once);
  unet_free(m);
}

static void fill_grad(float *g, size_t n, int step) {
  for (size_t i = 0; i < n; i++) g[i] = (float)(1e-3 * ((int)((i * 13 + (size_t)step * 5) % 17) - 8));
}

/* A checkpoint holds parameters, both moments and the step count; a model rebuilt from them takes the
 * next step exactly as the uninterrupted one does. */
static void adamw_state_resume_bit_identical(void **state) {
  (void)state;
  unet_t a = tiny();
  unet_adamw_params o = unet_adamw_default_params();
  o.lr = 1e-3;
  size_t n, nm;
  float *ga = unet_grad_buffer(a, &n);
  float *m0 = NULL, *v0 = NULL;
  uint64_t step = 99;
  /* Before any step the state exists, zero-filled, at step 0. */
  assert_int_equal(unet_adamw_state(a, &m0, &v0, &nm, &step), 0);
  assert_int_equal(nm, n);
  assert_int_equal(step, 0);
  for (size_t i = 0; i < n; i++) assert_true(m0[i] == 0.0f && v0[i] == 0.0f);
  for (int s = 1; s <= 2; s++) {
    fill_grad(ga, n, s);
    if (unet_adamw_step(a, &o, NULL) != 0) fail_msg("%s", unet_last_error(a));
  }
  float *ma = NULL, *va = NULL;
  assert_int_equal(unet_adamw_state(a, &ma, &va, &nm, &step), 0);
  assert_true(ma == m0 && va == v0); /* the same buffers, updated in place */
  assert_int_equal(step, 2);
  double msq = 0;
  for (size_t i = 0; i < n; i++) msq += (double)ma[i] * ma[i];
  assert_true(msq > 0);

  /* "Checkpoint": copies, as the worker would write them. */
  float *ck_w = malloc(n * sizeof(float)), *ck_m = malloc(n * sizeof(float)), *ck_v = malloc(n * sizeof(float));
  assert_true(ck_w && ck_m && ck_v);
  memcpy(ck_w, unet_param_buffer(a, NULL), n * sizeof(float));
  memcpy(ck_m, ma, n * sizeof(float));
  memcpy(ck_v, va, n * sizeof(float));

  /* "Resume": a fresh model with a different initialisation, restored from the copies. */
  char err[512];
  unet_t b = NULL;
  unet_params p = unet_default_params();
  p.seed = 1234;
  if (unet_create(NULL, &p, &b, err, sizeof err) != 0) fail_msg("%s", err);
  memcpy(unet_param_buffer(b, NULL), ck_w, n * sizeof(float));
  float *mb = NULL, *vb = NULL;
  assert_int_equal(unet_adamw_state(b, &mb, &vb, &nm, NULL), 0);
  memcpy(mb, ck_m, n * sizeof(float));
  memcpy(vb, ck_v, n * sizeof(float));
  assert_int_equal(unet_adamw_set_step(b, step), 0);

  fill_grad(ga, n, 3);
  memcpy(unet_grad_buffer(b, NULL), ga, n * sizeof(float));
  if (unet_adamw_step(a, &o, NULL) != 0) fail_msg("%s", unet_last_error(a));
  if (unet_adamw_step(b, &o, NULL) != 0) fail_msg("%s", unet_last_error(b));
  const float *wa = unet_param_buffer(a, NULL), *wb = unet_param_buffer(b, NULL);
  if (memcmp(wa, wb, n * sizeof(float)) != 0) {
    size_t at = 0;
    double d = tu_max_abs_diff(wa, wb, n, &at);
    fail_msg("resumed step differs: max |diff| %.3g at [%zu]", d, at);
  }
  assert_true(memcmp(ma, mb, n * sizeof(float)) == 0 && memcmp(va, vb, n * sizeof(float)) == 0);
  uint64_t sb = 0;
  assert_int_equal(unet_adamw_state(b, NULL, NULL, NULL, &sb), 0);
  assert_int_equal(sb, 3);
  free(ck_w);
  free(ck_m);
  free(ck_v);
  unet_free(a);
  unet_free(b);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(adamw_step_matches_hand_computed),
      cmocka_unit_test(adamw_clips_global_norm),
      cmocka_unit_test(grads_accumulate_in_flat_buffer),
      cmocka_unit_test(adamw_state_resume_bit_identical),
  };
  return CMOCKA_MAIN("adamw", tests, NULL, NULL);
}
