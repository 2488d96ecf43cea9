/* Adafactor (workers/shim/adafactor.cpp) against an independent float64 recomputation of transformers'
 * Adafactor.step with the reference script's SDXL options (written below from optimization.py), for a few
 * steps on small tensors of every kind the UNet has: Linear [out, in], Conv [out, in, kh, kw] (factored
 * over the last two dimensions), 1x1 kernels and biases (1-D, unfactored). Also: the layout checks, exact
 * continuation from saved state, and the model's own layout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"
#include "unet_shim.h"

#define NT 5
static const unet_tensor_layout LAYOUT[NT] = {
    {0, 2, {3, 4}}, {12, 4, {2, 3, 2, 2}}, {36, 1, {5}}, {41, 4, {4, 1, 1, 1}}, {45, 2, {7, 3}},
};
#define NE 66

/* Deterministic gradients of varied scale: step s, element i. Step 3 is large, so the global clip acts. */
static float grad_at(int s, int i) {
  double x = sin(1.7 * i + 0.9 * s) + 0.3 * cos(0.37 * i * (s + 1));
  return (float)(x * (s == 3 ? 40.0 : 0.2));
}

/* transformers' Adafactor in float64. Tensor t of LAYOUT as [B, R, C] when factored. */
typedef struct {
  double w[NE], state[NE * 2];
  uint64_t step;
} ref_opt;

static void ref_step(ref_opt *o, const float *g_in, const unet_adafactor_params *p) {
  double g[NE], sq = 0;
  for (int i = 0; i < NE; i++) sq += (double)g_in[i] * g_in[i];
  double norm = sqrt(sq), coef = p->max_grad_norm / (norm + 1e-6);
  for (int i = 0; i < NE; i++) g[i] = coef < 1 ? g_in[i] * coef : g_in[i]; /* clip_grad_norm_ */
  o->step++;
  double beta2t = 1.0 - pow((double)o->step, p->decay_rate), lr = p->lr;
  size_t so = 0;
  for (int t = 0; t < NT; t++) {
    const unet_tensor_layout *l = &LAYOUT[t];
    size_t n = 1;
    for (int d = 0; d < l->ndim; d++) n *= (size_t)l->shape[d];
    double *gt = g + l->offset, *wt = o->w + l->offset, u[NE];
    if (l->ndim >= 2) {
      size_t R = (size_t)l->shape[l->ndim - 2], C = (size_t)l->shape[l->ndim - 1], B = n / (R * C);
      double *row = o->state + so, *col = o->state + so + B * R;
      so += B * (R + C);
      for (size_t b = 0; b < B; b++) {
        for (size_t r = 0; r < R; r++) { /* exp_avg_sq_row: update.mean(dim=-1) */
          double m = 0;
          for (size_t c = 0; c < C; c++) m += gt[b * R * C + r * C + c] * gt[b * R * C + r * C + c] + p->eps1;
          row[b * R + r] = row[b * R + r] * beta2t + (1 - beta2t) * (m / C);
        }
        for (size_t c = 0; c < C; c++) { /* exp_avg_sq_col: update.mean(dim=-2) */
          double m = 0;
          for (size_t r = 0; r < R; r++) m += gt[b * R * C + r * C + c] * gt[b * R * C + r * C + c] + p->eps1;
          col[b * C + c] = col[b * C + c] * beta2t + (1 - beta2t) * (m / R);
        }
        double rmean = 0; /* _approx_sq_grad */
        for (size_t r = 0; r < R; r++) rmean += row[b * R + r] / R;
        for (size_t r = 0; r < R; r++)
          for (size_t c = 0; c < C; c++)
            u[b * R * C + r * C + c] =
                gt[b * R * C + r * C + c] / sqrt(row[b * R + r] / rmean) / sqrt(col[b * C + c]);
      }
    } else {
      double *v = o->state + so;
      so += n;
      for (size_t i = 0; i < n; i++) {
        v[i] = v[i] * beta2t + (1 - beta2t) * (gt[i] * gt[i] + p->eps1);
        u[i] = gt[i] / sqrt(v[i]);
      }
    }
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += u[i] * u[i];
    double rms = sqrt(ss) / sqrt((double)n), div = fmax(rms / p->clip_threshold, 1.0);
    for (size_t i = 0; i < n; i++) {
      double upd = u[i] / div * lr;
      wt[i] += -p->weight_decay * lr * wt[i];
      wt[i] -= upd;
    }
  }
}

static void init_weights(float *w) {
  for (int i = 0; i < NE; i++) w[i] = (float)(0.5 * cos(0.61 * i) + 0.1);
}

static void adafactor_matches_float64_transformers_arithmetic(void **state) {
  (void)state;
  unet_adafactor_t a = NULL;
  char err[256];
  if (unet_adafactor_create(LAYOUT, NT, NE, &a, err, sizeof err) != 0) fail_msg("%s", err);
  float *st = NULL;
  size_t ns = 0;
  assert_int_equal(unet_adafactor_state(a, &st, &ns, NULL), 0);
  /* Rows + columns: [3,4] 3+4; [2,3,2,2] 6*(2+2); [5] 5; [4,1,1,1] 4*(1+1); [7,3] 7+3. */
  assert_int_equal(ns, 7 + 24 + 5 + 8 + 10);
  unet_adafactor_params p = unet_adafactor_default_params();
  p.lr = 0.05;
  p.weight_decay = 0.1;
  ref_opt r;
  memset(&r, 0, sizeof r);
  float w[NE], g[NE];
  init_weights(w);
  for (int i = 0; i < NE; i++) r.w[i] = w[i];
  double moved = 0;
  for (int s = 0; s < 6; s++) {
    for (int i = 0; i < NE; i++) g[i] = grad_at(s, i);
    ref_step(&r, g, &p);
    double norm = 0;
    if (unet_adafactor_update(a, &p, w, g, NE, &norm) != 0) fail_msg("%s", unet_adafactor_last_error(a));
    assert_true(norm > 0);
    for (int i = 0; i < NE; i++) {
      double tol = 2e-6 * fmax(1.0, fabs(r.w[i]));
      if (fabs(w[i] - r.w[i]) > tol) fail_msg("step %d: w[%d] = %.9g, float64 reference %.9g", s + 1, i, w[i], r.w[i]);
    }
    for (size_t i = 0; i < ns; i++)
      if (fabs(st[i] - r.state[i]) > 1e-5 * fabs(r.state[i]) + 1e-30)
        fail_msg("step %d: state[%zu] = %.9g, float64 reference %.9g", s + 1, i, st[i], r.state[i]);
  }
  float w0[NE];
  init_weights(w0);
  for (int i = 0; i < NE; i++) moved += fabs(w[i] - w0[i]);
  if (!(moved / NE > 0.01)) fail_msg("the weights moved %g on average: the comparison proves little", moved / NE);
  uint64_t step = 0;
  unet_adafactor_state(a, NULL, NULL, &step);
  assert_int_equal(step, 6);
  unet_adafactor_free(a);
}

/* Saved state and step count, copied into a fresh optimizer, continue bit for bit. */
static void adafactor_resumes_exactly_from_its_state(void **state) {
  (void)state;
  unet_adafactor_t a = NULL, b = NULL, c = NULL;
  char err[256];
  assert_int_equal(unet_adafactor_create(LAYOUT, NT, NE, &a, err, sizeof err), 0);
  assert_int_equal(unet_adafactor_create(LAYOUT, NT, NE, &b, err, sizeof err), 0);
  assert_int_equal(unet_adafactor_create(LAYOUT, NT, NE, &c, err, sizeof err), 0);
  unet_adafactor_params p = unet_adafactor_default_params();
  p.lr = 0.01;
  float wa[NE], wb[NE], g[NE];
  init_weights(wa);
  init_weights(wb);
  for (int s = 0; s < 5; s++) {
    for (int i = 0; i < NE; i++) g[i] = grad_at(s, i);
    assert_int_equal(unet_adafactor_update(a, &p, wa, g, NE, NULL), 0);
    if (s == 2) { /* b's run stops here and c takes over from b's state */
      float *sb, *sc;
      size_t nb, nc;
      uint64_t step;
      unet_adafactor_state(b, &sb, &nb, &step);
      unet_adafactor_state(c, &sc, &nc, NULL);
      assert_int_equal(nb, nc);
      memcpy(sc, sb, nb * sizeof(float));
      assert_int_equal(unet_adafactor_set_step(c, step), 0);
      unet_adafactor_free(b);
      b = c;
    }
    for (int i = 0; i < NE; i++) g[i] = grad_at(s, i);
    assert_int_equal(unet_adafactor_update(b, &p, wb, g, NE, NULL), 0);
  }
  assert_memory_equal(wa, wb, sizeof wa);
  float *sa, *sb;
  size_t n;
  unet_adafactor_state(a, &sa, &n, NULL);
  unet_adafactor_state(b, &sb, NULL, NULL);
  assert_memory_equal(sa, sb, n * sizeof(float));
  unet_adafactor_free(a);
  unet_adafactor_free(b);
}

static void adafactor_refuses_bad_layouts_and_sizes(void **state) {
  (void)state;
  unet_adafactor_t a = NULL;
  char err[256];
  unet_tensor_layout l[2] = {{0, 2, {3, 4}}, {10, 1, {5}}};
  assert_int_equal(unet_adafactor_create(l, 2, 20, &a, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "overlap"));
  assert_null(a);
  l[1].offset = 12;
  assert_int_equal(unet_adafactor_create(l, 2, 16, &a, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "tensor 1 does not fit"));
  l[1].ndim = 0;
  assert_int_equal(unet_adafactor_create(l, 2, 20, &a, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "tensor 1 has 0 dimensions"));
  l[1].ndim = 1;
  l[1].shape[0] = 0;
  assert_int_equal(unet_adafactor_create(l, 2, 20, &a, err, sizeof err), DPOD_EINVAL);
  l[1].shape[0] = 5;
  assert_int_equal(unet_adafactor_create(l, 2, 17, &a, err, sizeof err), 0);
  float w[17] = {0}, g[17] = {0};
  unet_adafactor_params p = unet_adafactor_default_params();
  assert_int_equal(unet_adafactor_update(a, &p, w, g, 16, NULL), DPOD_ESHAPE);
  g[3] = NAN;
  assert_int_equal(unet_adafactor_update(a, &p, w, g, 17, NULL), DPOD_ENUMERIC);
  assert_non_null(strstr(unet_adafactor_last_error(a), "gradient norm"));
  uint64_t step = 1;
  unet_adafactor_state(a, NULL, NULL, &step);
  assert_int_equal(step, 0); /* a refused step is not counted */
  unet_adafactor_free(a);
}

/* The model's layout: its tensors, factored by their shapes; with LoRA, the adapters'. */
static void adafactor_takes_the_models_layout(void **state) {
  (void)state;
  unet_params up = unet_default_params();
  unet_t m = NULL;
  char err[512];
  if (unet_create(NULL, &up, &m, err, sizeof err) != 0) fail_msg("%s", err);
  unet_info info;
  unet_get_info(m, &info);
  size_t want = 0;
  for (size_t i = 0; i < info.num_tensors; i++) {
    int nd;
    int64_t sh[8];
    size_t off;
    assert_int_equal(unet_param_at(m, i, NULL, &off, &nd, sh), 0);
    size_t n = 1;
    for (int d = 0; d < nd; d++) n *= (size_t)sh[d];
    want += nd >= 2 ? n / (size_t)(sh[nd - 2] * sh[nd - 1]) * (size_t)(sh[nd - 2] + sh[nd - 1]) : n;
  }
  unet_adafactor_t a = NULL;
  if (unet_adafactor_new(m, &a, err, sizeof err) != 0) fail_msg("%s", err);
  size_t ns = 0;
  unet_adafactor_state(a, NULL, &ns, NULL);
  assert_int_equal(ns, want);
  assert_true(ns < info.num_params); /* factoring saves memory */
  /* A step on the model's buffers moves its weights. */
  size_t n;
  float *w = unet_param_buffer(m, &n), *g = unet_grad_buffer(m, &n);
  float before = w[0];
  for (size_t i = 0; i < n; i++) g[i] = 1e-3f * (float)((i % 7) + 1);
  unet_adafactor_params p = unet_adafactor_default_params();
  p.lr = 1e-2;
  if (unet_adafactor_step(m, a, &p, NULL) != 0) fail_msg("%s", unet_adafactor_last_error(a));
  assert_true(w[0] != before);
  unet_adafactor_free(a);

  unet_lora_params lp = unet_lora_default_params();
  lp.rank = 2;
  if (unet_lora_enable(m, &lp) != 0) fail_msg("%s", unet_last_error(m));
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  if (unet_adafactor_new(m, &a, err, sizeof err) != 0) fail_msg("%s", err);
  unet_adafactor_state(a, NULL, &ns, NULL);
  size_t lw = 0;
  for (size_t i = 0; i < li.num_tensors; i++) {
    int nd;
    int64_t sh[8];
    assert_int_equal(unet_lora_param_at(m, i, NULL, NULL, &nd, sh), 0);
    assert_int_equal(nd, 2);
    lw += (size_t)(sh[0] + sh[1]);
  }
  assert_int_equal(ns, lw);
  unet_adafactor_free(a);
  unet_free(m);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(adafactor_matches_float64_transformers_arithmetic),
      cmocka_unit_test(adafactor_resumes_exactly_from_its_state),
      cmocka_unit_test(adafactor_refuses_bad_layouts_and_sizes),
      cmocka_unit_test(adafactor_takes_the_models_layout),
  };
  return CMOCKA_MAIN("shim.adafactor", tests, NULL, NULL);
}
