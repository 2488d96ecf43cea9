/* The device path on the CPU: device names refused by name where libtorch has no CUDA, the gradient
 * staging and host snapshots a GPU model uses (forced here with DPOD_GRAD_STAGING=copy) giving training
 * bit-identical to the zero-copy CPU path, the ATen-op AdamW a device runs rounding exactly as the CPU
 * loop, and the ATen-op attention core against the direct-sgemm one. */
#include "dpod_error.h"
#include "tensor_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

enum { N = 2, HW = 8, TL = 4 };

static unet_t make(const char *staging) {
  char err[512];
  unet_t m = NULL;
  unet_params p = unet_default_params();
  p.seed = 11;
  if (staging) setenv("DPOD_GRAD_STAGING", staging, 1);
  int rc = unet_create(NULL, &p, &m, err, sizeof err);
  unsetenv("DPOD_GRAD_STAGING");
  if (rc != 0) fail_msg("%s", err);
  return m;
}

/* Deterministic inputs of the tiny config: x, target [N, 4, HW, HW], t [N], ehs [N, TL, dim]. */
typedef struct {
  float x[N * 4 * HW * HW], target[N * 4 * HW * HW], t[N], *ehs;
} batch;

static void fill_batch(unet_t m, batch *b, int step) {
  unet_info info;
  unet_get_info(m, &info);
  size_t ne = (size_t)N * TL * info.cross_attention_dim;
  b->ehs = malloc(ne * sizeof(float));
  for (size_t i = 0; i < sizeof b->x / sizeof b->x[0]; i++) {
    b->x[i] = (float)sin(0.37 * (double)i + step);
    b->target[i] = (float)cos(0.11 * (double)i - step);
  }
  for (size_t i = 0; i < ne; i++) b->ehs[i] = (float)sin(0.05 * (double)i * (step + 1));
  b->t[0] = 10.0f + (float)step;
  b->t[1] = 500.0f;
}

/* One data-parallel step as the worker takes it: forward, backward, the gradient on the host (staged or
 * not), "all-reduced" over two identical ranks (doubled in place), back, then AdamW. */
static double train_step(unet_t m, int step, const unet_adamw_params *o) {
  batch b;
  fill_batch(m, &b, step);
  float mse[N], gm[N] = {0.5f, -0.25f};
  if (unet_zero_grad(m) != 0 || unet_forward_mse(m, N, HW, HW, TL, b.x, b.t, b.ehs, b.target, mse, NULL) != 0 ||
      unet_backward_mse(m, gm) != 0)
    fail_msg("%s", unet_last_error(m));
  free(b.ehs);
  size_t n = 0;
  float *g = unet_grad_stage(m, &n);
  if (!g) fail_msg("%s", unet_last_error(m));
  for (size_t i = 0; i < n; i++) g[i] += g[i];
  if (unet_grad_unstage(m) != 0) fail_msg("%s", unet_last_error(m));
  double norm = 0;
  if (unet_adamw_step(m, o, &norm) != 0) fail_msg("%s", unet_last_error(m));
  return norm;
}

static void assert_same_floats(const float *a, const float *b, size_t n, const char *what) {
  for (size_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], sizeof(float)) != 0) fail_msg("%s differ at %zu: %.9g vs %.9g", what, i, a[i], b[i]);
}

/* Within 1e-5 of the largest |want|: float32 sums taken in another order. */
static void assert_close_rel(const char *what, const float *got, const float *want, size_t n) {
  double scale = 0;
  for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)want[i]));
  assert_true(scale > 0);
  tu_assert_close(what, got, want, n, 1e-5 * scale);
}

static void cuda_refused_by_name_without_a_gpu(void **state) {
  (void)state;
  if (unet_cuda_device_count() > 0) skip();
  const char *names[] = {"cuda", "cuda:0", "cuda:3"};
  for (size_t k = 0; k < 3; k++) {
    char err[512] = "";
    unet_t m = NULL;
    unet_params p = unet_default_params();
    p.device = names[k];
    assert_int_equal(unet_create(NULL, &p, &m, err, sizeof err), DPOD_EUNSUPPORTED);
    assert_null(m);
    char want[64];
    snprintf(want, sizeof want, "device '%s'", names[k]);
    if (!strstr(err, want) || !strstr(err, "no CUDA device")) fail_msg("message: %s", err);
  }
}

static void malformed_device_refused(void **state) {
  (void)state;
  const char *names[] = {"tpu", "cuda0", "cuda:", "cuda:x", "cuda:-1", "cuda:99999", "CPU"};
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
    char err[512] = "";
    unet_t m = NULL;
    unet_params p = unet_default_params();
    p.device = names[k];
    assert_int_equal(unet_create(NULL, &p, &m, err, sizeof err), DPOD_EINVAL);
    if (!strstr(err, "not one of cpu, cuda, cuda:N")) fail_msg("%s: message: %s", names[k], err);
  }
  setenv("DPOD_GRAD_STAGING", "yes", 1);
  char err[512] = "";
  unet_t m = NULL;
  int rc = unet_create(NULL, NULL, &m, err, sizeof err);
  unsetenv("DPOD_GRAD_STAGING");
  assert_int_equal(rc, DPOD_EINVAL);
  if (!strstr(err, "DPOD_GRAD_STAGING")) fail_msg("message: %s", err);
}

/* Without host copies the staging buffer is the gradient buffer (no copy); with them it is not. */
static void cpu_stages_in_place_unless_forced(void **state) {
  (void)state;
  unet_t a = make(NULL), b = make("copy");
  assert_string_equal(unet_device(a), "cpu");
  assert_int_equal(unet_host_copies(a), 0);
  assert_int_equal(unet_host_copies(b), 1);
  size_t na = 0, nb = 0, ng = 0;
  float *ga = unet_grad_buffer(a, &ng);
  assert_ptr_equal(unet_grad_stage(a, &na), ga);
  assert_int_equal(na, ng);
  float *gb = unet_grad_buffer(b, &ng);
  float *sb = unet_grad_stage(b, &nb);
  assert_non_null(sb);
  assert_ptr_not_equal(sb, gb);
  assert_int_equal(nb, ng);
  unet_free(a);
  unet_free(b);
}

static void staged_training_is_bit_identical(void **state) {
  (void)state;
  unet_t a = make(NULL), b = make("copy");
  unet_adamw_params o = unet_adamw_default_params();
  o.lr = 1e-3;
  o.max_grad_norm = 0.05; /* clipping on: the staged gradient's norm decides the step */
  for (int s = 0; s < 3; s++) {
    double na = train_step(a, s, &o), nb = train_step(b, s, &o);
    if (!(na > 0) || memcmp(&na, &nb, sizeof na) != 0) fail_msg("step %d: grad norm %.17g vs %.17g", s, na, nb);
  }
  size_t n = 0, nb = 0;
  const float *pa = unet_param_buffer(a, &n), *pb = unet_param_buffer(b, &nb);
  assert_int_equal(n, nb);
  assert_same_floats(pa, pb, n, "parameters");
  float *ma, *va, *mb, *vb;
  uint64_t sa, sb;
  if (unet_adamw_state(a, &ma, &va, &n, &sa) != 0 || unet_adamw_state(b, &mb, &vb, &nb, &sb) != 0) fail();
  assert_int_equal(sa, 3);
  assert_int_equal(sb, 3);
  assert_same_floats(ma, mb, n, "exp_avg");
  assert_same_floats(va, vb, n, "exp_avg_sq");
  unet_free(a);
  unet_free(b);
}

/* A host snapshot's writes reach the model at the next call, and only through it. */
static void snapshot_writes_apply_at_the_next_call(void **state) {
  (void)state;
  unet_t b = make("copy");
  size_t n = 0;
  float *p = unet_param_buffer(b, &n);
  float was = p[1];
  p[1] = 0.125f;
  float *again = unet_param_buffer(b, &n); /* the next call: applies the write, then snapshots anew */
  assert_true(again[1] == 0.125f);
  again[1] = was;
  float *m = NULL, *v = NULL;
  uint64_t step;
  if (unet_adamw_state(b, &m, &v, &n, &step) != 0) fail_msg("%s", unet_last_error(b));
  assert_true(m[0] == 0.0f);
  m[0] = 2.0f;
  v[n - 1] = 3.0f;
  if (unet_adamw_state(b, &m, &v, &n, &step) != 0) fail_msg("%s", unet_last_error(b));
  assert_true(m[0] == 2.0f && v[n - 1] == 3.0f);
  p = unet_param_buffer(b, &n);
  assert_true(p[1] == was);
  /* A snapshot's writes reach a model that copies from it: unet_copy_weights is a call on both. */
  p[2] = 0.375f;
  unet_t c = make(NULL);
  if (unet_copy_weights(c, b) != 0) fail_msg("%s", unet_last_error(c));
  assert_true(unet_param_buffer(c, &n)[2] == 0.375f);
  unet_free(c);
  unet_free(b);
}

/* The AdamW a device model runs (ATen ops) against the CPU loop, clipping off and on, bit for bit. */
static void aten_adamw_rounds_as_the_cpu_loop(void **state) {
  (void)state;
  for (int clip = 0; clip < 2; clip++) {
    unet_t a = make(NULL), b = make(NULL);
    unet_adamw_params o = unet_adamw_default_params();
    o.lr = 1e-3;
    o.weight_decay = 0.1;
    o.max_grad_norm = clip ? 0.01 : 0;
    for (int s = 0; s < 3; s++) {
      double na = train_step(a, s, &o);
      setenv("DPOD_ADAMW", "aten", 1);
      double nb = train_step(b, s, &o);
      unsetenv("DPOD_ADAMW");
      if (memcmp(&na, &nb, sizeof na) != 0) fail_msg("step %d: grad norm %.17g vs %.17g", s, na, nb);
    }
    size_t n = 0, nb = 0;
    const float *pa = unet_param_buffer(a, &n), *pb = unet_param_buffer(b, &nb);
    assert_same_floats(pa, pb, n, clip ? "parameters (clipped)" : "parameters");
    float *ma, *va, *mb, *vb;
    if (unet_adamw_state(a, &ma, &va, &n, NULL) != 0 || unet_adamw_state(b, &mb, &vb, &nb, NULL) != 0) fail();
    assert_same_floats(va, vb, n, "exp_avg_sq");
    unet_free(a);
    unet_free(b);
  }
}

/* The attention core a device runs (matmul and softmax through autograd) against the direct-sgemm one:
 * the same function, summed in another order, so equal to float rounding (relative 1e-5), outputs and
 * gradients. The fixtures check each path absolutely in shim.forward_ops and shim.dpo_ops. */
static void ops_attention_matches_sgemm_attention(void **state) {
  (void)state;
  unet_t a = make(NULL), b = make(NULL);
  batch in;
  fill_batch(a, &in, 0);
  float ma[N], mb[N], pa[N * 4 * HW * HW], pb[N * 4 * HW * HW], gm[N] = {1.0f, 1.0f};
  if (unet_forward_mse(a, N, HW, HW, TL, in.x, in.t, in.ehs, in.target, ma, pa) != 0 || unet_backward_mse(a, gm) != 0)
    fail_msg("%s", unet_last_error(a));
  setenv("DPOD_ATTENTION_GEMM", "ops", 1);
  int rc = unet_forward_mse(b, N, HW, HW, TL, in.x, in.t, in.ehs, in.target, mb, pb) || unet_backward_mse(b, gm);
  unsetenv("DPOD_ATTENTION_GEMM");
  if (rc) fail_msg("%s", unet_last_error(b));
  free(in.ehs);
  assert_close_rel("prediction", pb, pa, sizeof pa / sizeof pa[0]);
  size_t n = 0;
  const float *ga = unet_grad_buffer(a, &n), *gb = unet_grad_buffer(b, &n);
  assert_close_rel("gradients", gb, ga, n);
  unet_free(a);
  unet_free(b);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(cuda_refused_by_name_without_a_gpu),
      cmocka_unit_test(malformed_device_refused),
      cmocka_unit_test(cpu_stages_in_place_unless_forced),
      cmocka_unit_test(staged_training_is_bit_identical),
      cmocka_unit_test(snapshot_writes_apply_at_the_next_call),
      cmocka_unit_test(aten_adamw_rounds_as_the_cpu_loop),
      cmocka_unit_test(ops_attention_matches_sgemm_attention),
  };
  return CMOCKA_MAIN("shim.device", tests, NULL, NULL);
}
