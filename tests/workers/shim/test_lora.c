/* LoRA against diffusers + peft (../shared/fixtures/tiny-sd/lora): the UNet with adapters on to_q, to_k,
 * to_v and to_out.0 (rank 4, alpha 4) must reproduce outputs_with_lora (atol 1e-5), folding them in must
 * give merged_unet (1e-6), and one DPO step with policy = base + LoRA and reference = the same UNet with
 * its adapters off must give the fixture's predictions, losses and the gradient of every adapter weight
 * (within 1e-3 of the largest), the base getting none. Then the API's own promises: refusals by name,
 * save/load round trips (folded for diffusers, unfolded for resume), AdamW touching the adapters only. */
#include <cjson/cJSON.h>
#include <unistd.h>

#include "dpod_error.h"
#include "loss.h"
#include "tensor_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

#define LORA_DIR "tiny-sd/lora"
#define NPAIRS 2
#define NSAMP (2 * NPAIRS)
#define PER (4 * 8 * 8)
#define BETA 5000.0

static unet_t base_model(void) {
  char err[512];
  unet_t m = NULL;
  unet_params p = unet_default_params();
  p.threads = 2;
  char *cfg = tu_read_text(tu_path("config.json"));
  int rc = unet_create(cfg, &p, &m, err, sizeof err);
  free(cfg);
  if (rc != 0) fail_msg("unet_create: %s", err);
  if (unet_load_weights(m, tu_path("unet.safetensors")) != 0) fail_msg("%s", unet_last_error(m));
  return m;
}

/* The base with the fixture's adapters (diffusers' default targets, rank 4, alpha 4). */
static unet_t lora_model(double alpha) {
  unet_t m = base_model();
  unet_lora_params lp = unet_lora_default_params();
  lp.rank = 4;
  lp.alpha = alpha;
  if (unet_lora_enable(m, &lp) != 0) fail_msg("unet_lora_enable: %s", unet_last_error(m));
  if (unet_lora_load(m, tu_path("lora/pytorch_lora_weights.safetensors")) != 0) fail_msg("%s", unet_last_error(m));
  return m;
}

typedef struct {
  float *x, *t, *e;
  size_t ny;
} fwd_inputs;

static fwd_inputs load_inputs(void) {
  fwd_inputs in;
  size_t n;
  in.x = tu_load(tu_path("inputs.safetensors"), "sample", &n);
  assert_int_equal(n, 2 * PER);
  in.t = tu_load(tu_path("inputs.safetensors"), "timestep_f32", &n);
  in.e = tu_load(tu_path("inputs.safetensors"), "encoder_hidden_states", &n);
  assert_int_equal(n, 2 * 4 * 32);
  in.ny = 2 * PER;
  return in;
}

static void free_inputs(fwd_inputs *in) {
  free(in->x);
  free(in->t);
  free(in->e);
}

static void forward_into(unet_t m, const fwd_inputs *in, float *out) {
  if (unet_forward(m, 2, 8, 8, 4, in->x, in->t, in->e, out) != 0) fail_msg("%s", unet_last_error(m));
}

/* Adapters on: outputs_with_lora; off: the base's outputs, from the same handle. */
static void forward_with_adapters_matches_diffusers(void **state) {
  (void)state;
  unet_t m = lora_model(4);
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  /* lora_config.json / dpo_expected.json: 32 adapted modules, 9984 adapter parameters. */
  assert_int_equal(li.num_modules, 32);
  assert_int_equal(li.num_params, 9984);
  assert_int_equal(li.rank, 4);
  fwd_inputs in = load_inputs();
  float *got = calloc(in.ny, sizeof(float));
  float *want = tu_load(tu_path("lora/outputs_with_lora.safetensors"), "sample", NULL);
  float *base = tu_load(tu_path("outputs.safetensors"), "sample", NULL);
  forward_into(m, &in, got);
  tu_assert_close("with adapters vs diffusers", got, want, in.ny, 1e-5);
  /* The adapters must matter, or the comparison above proves nothing. */
  assert_true(tu_max_abs_diff(want, base, in.ny, NULL) > 1e-3);
  printf("with adapters: max |diff| %.3g (adapters move the output by %.3g)\n", tu_max_abs_diff(got, want, in.ny, NULL),
         tu_max_abs_diff(want, base, in.ny, NULL));
  assert_int_equal(unet_lora_set_active(m, 0), 0);
  forward_into(m, &in, got);
  tu_assert_close("adapters off vs the base UNet", got, base, in.ny, 1e-5);
  assert_int_equal(unet_lora_set_active(m, 1), 0);
  forward_into(m, &in, got);
  tu_assert_close("adapters back on", got, want, in.ny, 1e-5);
  free(got);
  free(want);
  free(base);
  free_inputs(&in);
  unet_free(m);
}

/* W + scale * up @ down for every adapted layer: merged_unet.safetensors, and the same output. */
static void merged_weights_match_diffusers(void **state) {
  (void)state;
  unet_t m = lora_model(4);
  assert_int_equal(unet_lora_merge(m), 0);
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  assert_int_equal(li.num_modules, 0);
  unet_info info;
  unet_get_info(m, &info);
  size_t n = 0;
  const float *w = unet_param_buffer(m, &n);
  assert_non_null(w);
  double worst = 0;
  for (size_t i = 0; i < info.num_tensors; i++) {
    const char *name;
    size_t off;
    int ndim;
    int64_t shape[8];
    assert_int_equal(unet_param_at(m, i, &name, &off, &ndim, shape), 0);
    size_t k;
    float *want = tu_load(tu_path("lora/merged_unet.safetensors"), name, &k);
    double d = tu_max_abs_diff(w + off, want, k, NULL);
    if (d > 1e-6) fail_msg("merged '%s' differs by %.3g", name, d);
    worst = fmax(worst, d);
    free(want);
  }
  fwd_inputs in = load_inputs();
  float *got = calloc(in.ny, sizeof(float));
  float *want = tu_load(tu_path("lora/outputs_with_lora.safetensors"), "sample", NULL);
  forward_into(m, &in, got);
  tu_assert_close("merged UNet vs with adapters", got, want, in.ny, 1e-5);
  printf("merged weights within %.3g of diffusers'\n", worst);
  /* Trainable again: a gradient buffer back, filled by a backward through the fused q/k/v leaves too. */
  assert_null(unet_lora_grad_buffer(m, NULL));
  assert_int_equal(unet_zero_grad(m), 0);
  float mse[2], gm[2] = {1, 1};
  assert_int_equal(unet_forward_mse(m, 2, 8, 8, 4, in.x, in.t, in.e, want, mse, NULL), 0);
  assert_int_equal(unet_backward_mse(m, gm), 0);
  size_t ng = 0;
  const float *g = unet_grad_buffer(m, &ng);
  assert_non_null(g);
  assert_int_equal(ng, info.num_params);
  for (size_t i = 0; i < info.num_tensors; i++) {
    const char *name;
    size_t off;
    int ndim;
    int64_t shape[8];
    assert_int_equal(unet_param_at(m, i, &name, &off, &ndim, shape), 0);
    if (!strstr(name, "attn1.to_q.weight") && strcmp(name, "conv_in.weight") != 0) continue;
    size_t k = 1;
    for (int d = 0; d < ndim; d++) k *= (size_t)shape[d];
    double gmax = 0;
    for (size_t j = 0; j < k; j++) gmax = fmax(gmax, fabs(g[off + j]));
    if (!(gmax > 0)) fail_msg("after the merge '%s' got no gradient", name);
  }
  free(got);
  free(want);
  free_inputs(&in);
  unet_free(m);
}

static double json_num(const cJSON *o, const char *k) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!cJSON_IsNumber(j)) fail_msg("dpo_expected.json: no number '%s'", k);
  return j->valuedouble;
}

/* One DPO step, policy = base + LoRA, reference = the same handle with the adapters off, in the order
 * the worker runs them: policy forward (graph kept), reference forward, backward. */
static void dpo_step_matches_reference(void **state) {
  (void)state;
  unet_t m = lora_model(4);
  const char *inputs = tu_path("lora/dpo_inputs.safetensors");
  size_t n;
  float *x = tu_load(inputs, "noisy_latents", &n);
  assert_int_equal(n, NSAMP * PER);
  float *t = tu_load(inputs, "timesteps_cat", &n);
  float *ehs = tu_load(inputs, "encoder_hidden_states_cat", &n);
  float *target = tu_load(inputs, "noise_cat", &n);
  float model_mse[NSAMP], ref_mse[NSAMP];
  float *model_pred = calloc(NSAMP * PER, sizeof(float)), *ref_pred = calloc(NSAMP * PER, sizeof(float));
  assert_int_equal(unet_zero_grad(m), 0);
  if (unet_forward_mse(m, NSAMP, 8, 8, 4, x, t, ehs, target, model_mse, model_pred) != 0)
    fail_msg("policy: %s", unet_last_error(m));
  assert_int_equal(unet_lora_set_active(m, 0), 0);
  if (unet_forward_mse(m, NSAMP, 8, 8, 4, x, t, ehs, target, ref_mse, ref_pred) != 0)
    fail_msg("reference: %s", unet_last_error(m));
  assert_int_equal(unet_lora_set_active(m, 1), 0);
  const char *outputs = tu_path("lora/dpo_outputs.safetensors");
  float *w = tu_load(outputs, "model_pred", NULL);
  tu_assert_close("model_pred", model_pred, w, NSAMP * PER, 1e-5);
  free(w);
  w = tu_load(outputs, "ref_pred", NULL);
  tu_assert_close("ref_pred", ref_pred, w, NSAMP * PER, 1e-5);
  free(w);
  w = tu_load(outputs, "model_losses", NULL);
  tu_assert_close("model_losses", model_mse, w, NSAMP, 1e-5);
  free(w);
  w = tu_load(outputs, "ref_losses", NULL);
  tu_assert_close("ref_losses", ref_mse, w, NSAMP, 1e-5);
  free(w);

  dpo_loss_sums sums;
  memset(&sums, 0, sizeof sums);
  float inside[NPAIRS], grad_mse[NSAMP];
  dpo_loss(NPAIRS, model_mse, ref_mse, BETA, 1.0 / NPAIRS, &sums, inside, grad_mse);
  char *js = tu_read_text(tu_path("lora/dpo_expected.json"));
  cJSON *exp = cJSON_Parse(js);
  free(js);
  assert_non_null(exp);
  double loss = sums.loss_sum / sums.pairs, want_loss = json_num(exp, "loss");
  if (fabs(loss - want_loss) > 1e-3 * fabs(want_loss)) fail_msg("loss %.9g, want %.9g", loss, want_loss);
  assert_true(sums.acc_sum / sums.pairs == json_num(exp, "implicit_acc"));
  const cJSON *wi = cJSON_GetObjectItemCaseSensitive(exp, "inside_term");
  for (int i = 0; i < NPAIRS; i++) {
    double v = cJSON_GetArrayItem(wi, i)->valuedouble;
    if (fabs(inside[i] - v) > 1e-3 * (fabs(v) > 1 ? fabs(v) : 1)) fail_msg("inside_term[%d] %.9g, want %.9g", i, inside[i], v);
  }
  cJSON_Delete(exp);

  if (unet_backward_mse(m, grad_mse) != 0) fail_msg("backward: %s", unet_last_error(m));
  size_t ng = 0;
  const float *g = unet_lora_grad_buffer(m, &ng);
  assert_non_null(g);
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  assert_int_equal(ng, li.num_params);
  const char *gpath = tu_path("lora/dpo_grads_all.safetensors");
  char err[512];
  st_file *gf = NULL;
  if (st_open(gpath, &gf, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(st_count(gf), li.num_tensors);
  double gmax = 0;
  for (size_t i = 0; i < st_count(gf); i++) {
    const st_tensor *gt = st_at(gf, i);
    for (int64_t k = 0; k < gt->numel; k++) gmax = fmax(gmax, fabs(((const float *)gt->data)[k]));
  }
  assert_true(gmax > 0);
  double tol = 1e-3 * gmax, worst = 0;
  for (size_t i = 0; i < li.num_tensors; i++) {
    const char *name;
    size_t off;
    int ndim;
    int64_t shape[8];
    assert_int_equal(unet_lora_param_at(m, i, &name, &off, &ndim, shape), 0);
    const st_tensor *gt = st_find(gf, name);
    if (!gt) fail_msg("%s has no gradient for '%s'", gpath, name);
    assert_int_equal(gt->numel, shape[0] * shape[1]);
    size_t at;
    double d = tu_max_abs_diff(g + off, gt->data, (size_t)gt->numel, &at);
    worst = fmax(worst, d);
    if (!(d <= tol)) fail_msg("gradient of '%s' differs by %.3g at [%zu]; tolerance %.3g", name, d, at, tol);
  }
  st_close(gf);
  /* The base is frozen: it keeps no gradient buffer at all. */
  assert_null(unet_grad_buffer(m, NULL));
  printf("LoRA DPO step: loss %.7f (want %.7f), %zu adapter gradients within %.3g (worst %.3g of the largest)\n", loss,
         want_loss, li.num_tensors, tol, worst / gmax);
  free(x);
  free(t);
  free(ehs);
  free(target);
  free(model_pred);
  free(ref_pred);
  unet_free(m);
}

/* A target naming no Linear layer, a second enable, and a file of another rank are refused by name. */
static void bad_targets_and_files_are_refused_by_name(void **state) {
  (void)state;
  unet_t m = base_model();
  unet_lora_params lp = unet_lora_default_params();
  const char *targets[] = {"to_q", "to_qq"};
  lp.targets = targets;
  lp.num_targets = 2;
  assert_int_equal(unet_lora_enable(m, &lp), DPOD_EINVAL);
  assert_non_null(strstr(unet_last_error(m), "'to_qq'"));
  lp.num_targets = 0;
  lp.rank = 0;
  assert_int_equal(unet_lora_enable(m, &lp), DPOD_EINVAL);
  assert_non_null(strstr(unet_last_error(m), "rank 0"));
  assert_null(unet_lora_param_buffer(m, NULL));
  assert_int_equal(unet_lora_set_active(m, 0), DPOD_ESTATE);
  lp.rank = 8; /* the fixture's file has rank 4 */
  assert_int_equal(unet_lora_enable(m, &lp), 0);
  assert_int_equal(unet_lora_enable(m, &lp), DPOD_ESTATE);
  size_t n;
  float *p = unet_lora_param_buffer(m, &n);
  float *before = malloc(n * sizeof(float));
  memcpy(before, p, n * sizeof(float));
  assert_int_equal(unet_lora_load(m, tu_path("lora/pytorch_lora_weights.safetensors")), DPOD_ESHAPE);
  assert_non_null(strstr(unet_last_error(m), "lora.down.weight' has shape [4, 32], expected [8, 32]"));
  assert_memory_equal(before, p, n * sizeof(float));
  /* Only to_q adapted: the file's other adapters are unexpected. */
  unet_free(m);
  m = base_model();
  lp.rank = 4;
  lp.targets = targets;
  lp.num_targets = 1;
  assert_int_equal(unet_lora_enable(m, &lp), 0);
  assert_int_equal(unet_lora_load(m, tu_path("lora/pytorch_lora_weights.safetensors")), DPOD_EFORMAT);
  assert_non_null(strstr(unet_last_error(m), "to_k.lora"));
  free(before);
  unet_free(m);
}

/* Gaussian init: down ~ N(0, 1/rank), up = 0, so the adapted UNet starts as the base. */
static void fresh_adapters_leave_the_base_output(void **state) {
  (void)state;
  unet_t m = base_model();
  unet_lora_params lp = unet_lora_default_params();
  lp.rank = 16;
  lp.seed = 7;
  assert_int_equal(unet_lora_enable(m, &lp), 0);
  size_t n;
  const float *p = unet_lora_param_buffer(m, &n);
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  double sum = 0, sq = 0, cnt = 0;
  for (size_t i = 0; i < li.num_tensors; i++) {
    const char *name;
    size_t off;
    int ndim;
    int64_t shape[8];
    assert_int_equal(unet_lora_param_at(m, i, &name, &off, &ndim, shape), 0);
    size_t k = (size_t)(shape[0] * shape[1]);
    for (size_t j = 0; j < k; j++) {
      if (i % 2) assert_true(p[off + j] == 0.0f);
      else sum += p[off + j], sq += (double)p[off + j] * p[off + j], cnt++;
    }
  }
  double sd = sqrt(sq / cnt - (sum / cnt) * (sum / cnt));
  if (fabs(sd - 1.0 / 16) > 0.1 / 16) fail_msg("down weights' sd %.4g, want 1/rank = %.4g", sd, 1.0 / 16);
  fwd_inputs in = load_inputs();
  float *got = calloc(in.ny, sizeof(float));
  float *base = tu_load(tu_path("outputs.safetensors"), "sample", NULL);
  forward_into(m, &in, got);
  tu_assert_close("fresh adapters vs the base", got, base, in.ny, 1e-5);
  free(got);
  free(base);
  free_inputs(&in);
  unet_free(m);
}

/* alpha 8 at rank 4: the folded file (diffusers' meaning, alpha = rank) and the unfolded one each give the
 * same UNet back when loaded as they are meant to be. */
static void folded_and_unfolded_files_round_trip(void **state) {
  (void)state;
  char dir[512], folded[600], raw[600];
  assert_int_equal(test_mkdtemp(dir, sizeof dir, "lora"), 0);
  snprintf(folded, sizeof folded, "%s/pytorch_lora_weights.safetensors", dir);
  snprintf(raw, sizeof raw, "%s/raw.safetensors", dir);
  unet_t a = lora_model(8);
  assert_int_equal(unet_lora_save(a, folded, 1, NULL), 0);
  assert_int_equal(unet_lora_save(a, raw, 0, NULL), 0);
  fwd_inputs in = load_inputs();
  float *ya = calloc(in.ny, sizeof(float)), *yb = calloc(in.ny, sizeof(float));
  forward_into(a, &in, ya);
  /* diffusers' reading: alpha = rank. */
  unet_t b = base_model();
  unet_lora_params lp = unet_lora_default_params();
  assert_int_equal(unet_lora_enable(b, &lp), 0);
  assert_int_equal(unet_lora_load(b, folded), 0);
  forward_into(b, &in, yb);
  tu_assert_close("folded file at alpha = rank", yb, ya, in.ny, 1e-6);
  /* Unfolded at alpha 8: bit for bit. */
  unet_t c = base_model();
  lp.alpha = 8;
  assert_int_equal(unet_lora_enable(c, &lp), 0);
  assert_int_equal(unet_lora_load(c, raw), 0);
  size_t n1 = 0, n2 = 0;
  const float *pa = unet_lora_param_buffer(a, &n1), *pc = unet_lora_param_buffer(c, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(pa, pc, n1 * sizeof(float));
  char err[512];
  st_file *f = NULL;
  assert_int_equal(st_open(raw, &f, err, sizeof err), 0);
  assert_string_equal(st_metadata(f, "lora_alpha"), "8");
  st_close(f);
  free(ya);
  free(yb);
  free_inputs(&in);
  unet_free(a);
  unet_free(b);
  unet_free(c);
  unlink(folded);
  unlink(raw);
  rmdir(dir);
}

/* AdamW with LoRA steps the adapters and leaves every base weight as it was. */
static void adamw_steps_only_the_adapters(void **state) {
  (void)state;
  unet_t m = lora_model(4);
  size_t nb, na;
  const float *bw = unet_param_buffer(m, &nb);
  float *base_before = malloc(nb * sizeof(float));
  memcpy(base_before, bw, nb * sizeof(float));
  float *aw = unet_lora_param_buffer(m, &na), *ag = unet_lora_grad_buffer(m, NULL);
  float *lora_before = malloc(na * sizeof(float));
  memcpy(lora_before, aw, na * sizeof(float));
  for (size_t i = 0; i < na; i++) ag[i] = 1e-3f * (float)((i % 7) + 1);
  unet_adamw_params op = unet_adamw_default_params();
  op.lr = 1e-2;
  double gn = 0;
  assert_int_equal(unet_adamw_step(m, &op, &gn), 0);
  assert_true(gn > 0);
  float *mom = NULL;
  size_t nm = 0;
  uint64_t step = 0;
  assert_int_equal(unet_adamw_state(m, &mom, NULL, &nm, &step), 0);
  assert_int_equal(nm, na);
  assert_int_equal(step, 1);
  assert_memory_equal(base_before, bw, nb * sizeof(float));
  size_t changed = 0;
  for (size_t i = 0; i < na; i++) changed += aw[i] != lora_before[i];
  assert_int_equal(changed, na);
  assert_int_equal(unet_zero_grad(m), 0);
  for (size_t i = 0; i < na; i++) assert_true(ag[i] == 0.0f);
  free(base_before);
  free(lora_before);
  unet_free(m);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(forward_with_adapters_matches_diffusers),
      cmocka_unit_test(merged_weights_match_diffusers),
      cmocka_unit_test(dpo_step_matches_reference),
      cmocka_unit_test(bad_targets_and_files_are_refused_by_name),
      cmocka_unit_test(fresh_adapters_leave_the_base_output),
      cmocka_unit_test(folded_and_unfolded_files_round_trip),
      cmocka_unit_test(adamw_steps_only_the_adapters),
  };
  return CMOCKA_MAIN("lora", tests, NULL, NULL);
}
