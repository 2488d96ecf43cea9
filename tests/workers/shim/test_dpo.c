/* Diffusion-DPO parity with the reference training script: the policy and reference predictions, the
 * per-sample losses, the inside term, the loss and implicit accuracy, and then every parameter gradient
 * after back-propagating dpo_loss()'s d loss / d mse through unet_backward_mse. */
#include <cjson/cJSON.h>

#include "loss.h"
#include "tensor_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

#define NPAIRS 2
#define NSAMP (2 * NPAIRS)
#define PER (4 * 8 * 8)
#define BETA 5000.0

static double json_num(const cJSON *o, const char *k) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!cJSON_IsNumber(j)) fail_msg("dpo_expected.json: no number '%s'", k);
  return j->valuedouble;
}

static unet_t load_model(const char *weights) {
  char err[512];
  unet_t m = NULL;
  unet_params p = unet_default_params();
  p.threads = 2;
  char *cfg = tu_read_text(tu_path("config.json"));
  int rc = unet_create(cfg, &p, &m, err, sizeof err);
  free(cfg);
  if (rc != 0) fail_msg("unet_create: %s", err);
  if (unet_load_weights(m, weights) != 0) fail_msg("%s", unet_last_error(m));
  return m;
}

static void check_dpo_folder(const char *folder) {
  char rel[256];
#define F(name) (snprintf(rel, sizeof rel, "%s/%s", folder, name), tu_path(rel))
  unet_t policy = load_model(tu_path("unet.safetensors"));
  unet_t ref = load_model(F("ref_unet.safetensors"));
  assert_int_equal(unet_freeze(ref), 0);

  char inputs[1024];
  snprintf(inputs, sizeof inputs, "%s", F("dpo_inputs.safetensors"));
  size_t n;
  float *x = tu_load(inputs, "noisy_latents", &n);
  assert_int_equal(n, NSAMP * PER);
  float *t = tu_load(inputs, "timesteps_cat", &n);
  assert_int_equal(n, NSAMP);
  float *ehs = tu_load(inputs, "encoder_hidden_states_cat", &n);
  assert_int_equal(n, NSAMP * 4 * 32);
  float *target = tu_load(inputs, "noise_cat", &n);

  float model_mse[NSAMP], ref_mse[NSAMP];
  float *model_pred = calloc(NSAMP * PER, sizeof(float)), *ref_pred = calloc(NSAMP * PER, sizeof(float));
  if (unet_forward_mse(policy, NSAMP, 8, 8, 4, x, t, ehs, target, model_mse, model_pred) != 0)
    fail_msg("policy: %s", unet_last_error(policy));
  if (unet_forward_mse(ref, NSAMP, 8, 8, 4, x, t, ehs, target, ref_mse, ref_pred) != 0)
    fail_msg("ref: %s", unet_last_error(ref));

  char outputs[1024];
  snprintf(outputs, sizeof outputs, "%s", F("dpo_outputs.safetensors"));
  float *want = tu_load(outputs, "model_pred", &n);
  tu_assert_close("model_pred", model_pred, want, NSAMP * PER, 1e-5);
  free(want);
  want = tu_load(outputs, "ref_pred", &n);
  tu_assert_close("ref_pred", ref_pred, want, NSAMP * PER, 1e-5);
  free(want);
  want = tu_load(outputs, "model_losses", &n);
  tu_assert_close("model_losses", model_mse, want, NSAMP, 1e-5);
  free(want);
  want = tu_load(outputs, "ref_losses", &n);
  tu_assert_close("ref_losses", ref_mse, want, NSAMP, 1e-5);
  free(want);

  /* The loss and its gradient w.r.t. the policy MSEs, averaged over the pairs. */
  dpo_loss_sums sums;
  memset(&sums, 0, sizeof sums);
  float inside[NPAIRS], grad_mse[NSAMP];
  dpo_loss(NPAIRS, model_mse, ref_mse, BETA, 1.0 / NPAIRS, &sums, inside, grad_mse);

  char *js = tu_read_text(F("dpo_expected.json"));
  cJSON *exp = cJSON_Parse(js);
  free(js);
  assert_non_null(exp);
  double want_loss = json_num(exp, "loss"), want_acc = json_num(exp, "implicit_acc");
  double loss = sums.loss_sum / sums.pairs, acc = sums.acc_sum / sums.pairs;
  if (fabs(loss - want_loss) > 1e-3 * fabs(want_loss))
    fail_msg("%s: loss %.9g, want %.9g (rtol 1e-3)", folder, loss, want_loss);
  if (acc != want_acc) fail_msg("%s: implicit acc %g, want %g", folder, acc, want_acc);
  const cJSON *wi = cJSON_GetObjectItemCaseSensitive(exp, "inside_term");
  assert_int_equal(cJSON_GetArraySize(wi), NPAIRS);
  for (int i = 0; i < NPAIRS; i++) {
    /* inside = -beta/2 * (difference of MSE differences) amplifies float32 rounding by 2500. */
    double w = cJSON_GetArrayItem(wi, i)->valuedouble;
    if (fabs(inside[i] - w) > 1e-3 * (fabs(w) > 1 ? fabs(w) : 1))
      fail_msg("%s: inside_term[%d] %.9g, want %.9g", folder, i, inside[i], w);
  }
  cJSON_Delete(exp);

  /* Back-propagate and compare every gradient, within 1e-3 of the largest gradient in the set. */
  assert_int_equal(unet_zero_grad(policy), 0);
  if (unet_backward_mse(policy, grad_mse) != 0) fail_msg("backward: %s", unet_last_error(policy));
  size_t ngrad = 0;
  const float *grad = unet_grad_buffer(policy, &ngrad);
  unet_info info;
  unet_get_info(policy, &info);
  assert_int_equal(ngrad, info.num_params);

  char gpath[1024], err[512];
  snprintf(gpath, sizeof gpath, "%s", F("dpo_grads_all.safetensors"));
  st_file *gf = NULL;
  if (st_open(gpath, &gf, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(st_count(gf), info.num_tensors);
  double gmax = 0;
  for (size_t i = 0; i < st_count(gf); i++) {
    const st_tensor *g = st_at(gf, i);
    const float *d = g->data;
    for (int64_t k = 0; k < g->numel; k++) gmax = fmax(gmax, fabs(d[k]));
  }
  assert_true(gmax > 0);
  double tol = 1e-3 * gmax, worst = 0;
  const char *worst_name = "";
  size_t checked = 0;
  for (size_t i = 0; i < info.num_tensors; i++) {
    const char *name;
    size_t off;
    int ndim;
    int64_t shape[8];
    assert_int_equal(unet_param_at(policy, i, &name, &off, &ndim, shape), 0);
    const st_tensor *g = st_find(gf, name);
    if (!g) fail_msg("%s has no gradient for '%s'", gpath, name);
    float *w = malloc((size_t)g->numel * sizeof(float));
    st_to_f32(g, w);
    size_t at;
    double dd = tu_max_abs_diff(grad + off, w, (size_t)g->numel, &at);
    if (dd > worst) {
      worst = dd;
      worst_name = name;
    }
    if (!(dd <= tol))
      fail_msg("%s: gradient of '%s' differs by %.3g at [%zu] (got %.6g, want %.6g); tolerance %.3g", folder, name, dd,
               at, grad[off + at], w[at], tol);
    free(w);
    checked++;
  }
  assert_int_equal(checked, 208);
  printf("%s: loss %.7f (want %.7f), %zu gradients within %.3g (worst %.3g in %s)\n", folder, loss, want_loss,
         checked, tol, worst, worst_name);
  st_close(gf);

  free(x);
  free(t);
  free(ehs);
  free(target);
  free(model_pred);
  free(ref_pred);
  unet_free(policy);
  unet_free(ref);
#undef F
}

static void dpo_unsaturated_matches_reference(void **state) {
  (void)state;
  check_dpo_folder("dpo_unsaturated");
}

/* The attention backward on ATen's matmul gives the same gradients (see shim.forward's aten case). */
static void dpo_unsaturated_matches_reference_on_aten_matmul(void **state) {
  (void)state;
  setenv("DPOD_ATTENTION_GEMM", "aten", 1);
  assert_string_equal(unet_attention_gemm(), "aten");
  check_dpo_folder("dpo_unsaturated");
}

static void dpo_ref_equals_policy_matches_reference(void **state) {
  (void)state;
  check_dpo_folder("dpo_ref_equals_policy");
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(dpo_unsaturated_matches_reference),
      cmocka_unit_test(dpo_ref_equals_policy_matches_reference),
      cmocka_unit_test(dpo_unsaturated_matches_reference_on_aten_matmul),
  };
  return CMOCKA_MAIN("dpo", tests, NULL, NULL);
}
