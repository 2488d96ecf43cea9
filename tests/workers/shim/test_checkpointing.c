/* Gradient checkpointing gives the step it replaces: one DPO step on the fixtures' inputs (tiny-sd and
 * tiny-sdxl full fine-tuning, tiny-sd with the fixture's LoRA adapters) taken without and then with
 * unet_set_gradient_checkpointing, on the same weights. The per-sample MSEs, so the loss, must be
 * identical (the recomputation runs the same ops on the same inputs), and every gradient tensor must agree
 * within 1e-5 of that tensor's largest gradient (what may differ is the order float32 sums are taken in).
 * The checkpoint counters prove the blocks really ran without their activations and were recomputed,
 * and the step without checkpointing is itself held to the fixture's loss, so neither side is vacuous. */
#include <cjson/cJSON.h>

#include "dpod_error.h"
#include "loss.h"
#include "shim_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

#define NPAIRS 2
#define NSAMP (2 * NPAIRS)
#define PER (4 * 8 * 8)
#define BETA 5000.0
#define GRAD_RTOL 1e-5

static unet_t load_model(const char *dir, const char *weights_rel) {
  return stu_fixture_model(dir, tu_fixture(dir, weights_rel));
}

typedef struct {
  float *x, *t, *ehs, *target, *text_embeds, *time_ids;
  int text_len;
  unet_added_cond added;
} step_inputs;

static step_inputs load_inputs(const char *dir, const char *folder, const unet_info *info) {
  char rel[256];
  snprintf(rel, sizeof rel, "%s/dpo_inputs.safetensors", folder);
  char path[1024];
  snprintf(path, sizeof path, "%s", tu_fixture(dir, rel));
  step_inputs in;
  memset(&in, 0, sizeof in);
  size_t n;
  in.x = tu_load(path, "noisy_latents", &n);
  assert_int_equal(n, NSAMP * PER);
  in.t = tu_load(path, "timesteps_cat", &n);
  assert_int_equal(n, NSAMP);
  in.ehs = tu_load(path, "encoder_hidden_states_cat", &n);
  in.text_len = (int)(n / (NSAMP * (size_t)info->cross_attention_dim));
  in.target = tu_load(path, "noise_cat", &n);
  if (info->text_embeds_dim > 0) {
    in.added.text_embeds = in.text_embeds = tu_load(path, "text_embeds_cat", &n);
    in.added.time_ids = in.time_ids = tu_load(path, "time_ids_cat", &n);
  }
  return in;
}

static void free_inputs(step_inputs *in) {
  free(in->x);
  free(in->t);
  free(in->ehs);
  free(in->target);
  free(in->text_embeds);
  free(in->time_ids);
}

/* What one step leaves: the policy's per-sample MSEs, the loss, and a copy of the trainable gradients. */
typedef struct {
  float mse[NSAMP];
  double loss;
  float *grad;
  size_t ngrad;
} step_result;

/* One DPO step as dpo-worker takes it: policy forward (graph kept), reference forward, dpo_loss, backward.
 * With `ref` NULL the reference is `policy` with its LoRA adapters off; `backward_with_adapters_off` then
 * leaves them off until after the backward, so a recomputation must use the adapters as its forward had
 * them. */
static step_result dpo_step(unet_t policy, unet_t ref, const step_inputs *in, int backward_with_adapters_off) {
  step_result r;
  memset(&r, 0, sizeof r);
  float ref_mse[NSAMP], grad_mse[NSAMP];
  assert_int_equal(unet_zero_grad(policy), 0);
  if (unet_forward_mse_added(policy, NSAMP, 8, 8, in->text_len, in->x, in->t, in->ehs, &in->added, in->target, r.mse,
                             NULL) != 0)
    fail_msg("policy: %s", unet_last_error(policy));
  unet_t rm = ref ? ref : policy;
  if (!ref) assert_int_equal(unet_lora_set_active(policy, 0), 0);
  if (unet_forward_mse_added(rm, NSAMP, 8, 8, in->text_len, in->x, in->t, in->ehs, &in->added, in->target, ref_mse,
                             NULL) != 0)
    fail_msg("reference: %s", unet_last_error(rm));
  if (!ref && !backward_with_adapters_off) assert_int_equal(unet_lora_set_active(policy, 1), 0);
  dpo_loss_sums sums;
  memset(&sums, 0, sizeof sums);
  dpo_loss(NPAIRS, r.mse, ref_mse, BETA, 1.0 / NPAIRS, &sums, NULL, grad_mse);
  r.loss = sums.loss_sum / sums.pairs;
  if (unet_backward_mse(policy, grad_mse) != 0) fail_msg("backward: %s", unet_last_error(policy));
  if (!ref && backward_with_adapters_off) assert_int_equal(unet_lora_set_active(policy, 1), 0);
  const float *g = ref ? unet_grad_buffer(policy, &r.ngrad) : unet_lora_grad_buffer(policy, &r.ngrad);
  assert_non_null(g);
  r.grad = malloc(r.ngrad * sizeof(float));
  memcpy(r.grad, g, r.ngrad * sizeof(float));
  return r;
}

/* The tensors of the trainable buffer: the base's or the adapters'. */
static void tensor_at(unet_t m, int lora, size_t i, const char **name, size_t *off, size_t *numel) {
  int ndim;
  int64_t shape[8];
  assert_int_equal(lora ? unet_lora_param_at(m, i, name, off, &ndim, shape) : unet_param_at(m, i, name, off, &ndim, shape), 0);
  *numel = 1;
  for (int d = 0; d < ndim; d++) *numel *= (size_t)shape[d];
}

/* Same MSEs bit for bit, every gradient tensor within GRAD_RTOL of its own largest magnitude. */
static void assert_same_step(unet_t m, int lora, size_t ntensors, const step_result *plain, const step_result *ckpt,
                             const char *what) {
  for (int i = 0; i < NSAMP; i++)
    if (plain->mse[i] != ckpt->mse[i])
      fail_msg("%s: mse[%d] %.9g with checkpointing, %.9g without", what, i, ckpt->mse[i], plain->mse[i]);
  if (plain->loss != ckpt->loss) fail_msg("%s: loss %.12g with checkpointing, %.12g without", what, ckpt->loss, plain->loss);
  assert_int_equal(plain->ngrad, ckpt->ngrad);
  double worst = 0, gmax_all = 0;
  const char *worst_name = "";
  size_t total = 0;
  for (size_t i = 0; i < ntensors; i++) {
    const char *name;
    size_t off, numel;
    tensor_at(m, lora, i, &name, &off, &numel);
    double gmax = 0;
    for (size_t k = 0; k < numel; k++) gmax = fmax(gmax, fabs(plain->grad[off + k]));
    gmax_all = fmax(gmax_all, gmax);
    size_t at;
    double d = tu_max_abs_diff(ckpt->grad + off, plain->grad + off, numel, &at);
    if (!(d <= GRAD_RTOL * gmax))
      fail_msg("%s: gradient of '%s' differs by %.3g at [%zu] (%.9g with checkpointing, %.9g without), over %.0e of "
               "its largest %.3g",
               what, name, d, at, ckpt->grad[off + at], plain->grad[off + at], GRAD_RTOL, gmax);
    if (gmax > 0 && d / gmax > worst) {
      worst = d / gmax;
      worst_name = name;
    }
    total += numel;
  }
  assert_int_equal(total, plain->ngrad);
  assert_true(gmax_all > 0);
  printf("%s: loss %.9f both ways, %zu gradient tensors equal within %.3g of their largest (worst in %s)\n", what,
         plain->loss, ntensors, worst, worst_name);
}

/* Checkpointing ran: blocks went through without activations in the forward and were recomputed once each
 * in the backward. */
static void assert_checkpointed(unet_t m, uint64_t f0, uint64_t r0, uint64_t want_units) {
  uint64_t f, r;
  unet_checkpoint_counts(m, &f, &r);
  assert_int_equal(f - f0, want_units);
  assert_int_equal(r - r0, want_units);
}

static double fixture_loss(const char *dir, const char *folder) {
  char rel[256];
  snprintf(rel, sizeof rel, "%s/dpo_expected.json", folder);
  char *js = tu_read_text(tu_fixture(dir, rel));
  cJSON *exp = cJSON_Parse(js);
  free(js);
  assert_non_null(exp);
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(exp, "loss");
  assert_true(cJSON_IsNumber(j));
  double v = j->valuedouble;
  cJSON_Delete(exp);
  return v;
}

/* units: resnets plus transformers of the fixture's UNet, counted from its config by hand. */
static void full_step_is_unchanged(const char *dir, size_t ntensors, uint64_t units) {
  unet_t policy = load_model(dir, "unet.safetensors");
  unet_t ref = load_model(dir, "dpo_unsaturated/ref_unet.safetensors");
  assert_int_equal(unet_freeze(ref), 0);
  unet_info info;
  unet_get_info(policy, &info);
  assert_int_equal(info.num_tensors, ntensors);
  step_inputs in = load_inputs(dir, "dpo_unsaturated", &info);

  uint64_t f0, r0;
  step_result plain = dpo_step(policy, ref, &in, 0);
  unet_checkpoint_counts(policy, &f0, &r0);
  assert_int_equal(f0, 0);
  assert_int_equal(r0, 0);
  double want = fixture_loss(dir, "dpo_unsaturated");
  if (fabs(plain.loss - want) > 1e-3 * fabs(want)) fail_msg("%s: loss %.9g, fixture %.9g", dir, plain.loss, want);

  assert_int_equal(unet_set_gradient_checkpointing(policy, 1), 0);
  assert_int_equal(unet_set_gradient_checkpointing(ref, 1), 0); /* frozen: no graph, nothing to do */
  step_result ckpt = dpo_step(policy, ref, &in, 0);
  assert_checkpointed(policy, f0, r0, units);
  uint64_t rf, rr;
  unet_checkpoint_counts(ref, &rf, &rr);
  assert_int_equal(rf, 0);
  assert_int_equal(rr, 0);
  assert_same_step(policy, 0, ntensors, &plain, &ckpt, dir);

  free(plain.grad);
  free(ckpt.grad);
  free_inputs(&in);
  unet_free(policy);
  unet_free(ref);
}

/* tiny-sd (one layer per block): the down blocks' resnet + transformer and resnet, the mid block's two
 * resnets and transformer, the up blocks' 2 resnets and 2 resnets + 2 transformers: 3 + 3 + 6 = 12 units. */
static void full_fine_tuning_tiny_sd_same_gradients(void **state) {
  (void)state;
  full_step_is_unchanged("tiny-sd", 208, 12);
}

/* tiny-sdxl's UNet, with its added conditioning and the gradients of add_embedding flowing through every
 * recomputed resnet's time embedding. Two layers per block: 2 resnets and 2 + 2 down, 3 in the mid block,
 * 3 + 3 and 3 up: 18 units (the two-layer transformers count once: a transformer is one unit). */
static void full_fine_tuning_tiny_sdxl_same_gradients(void **state) {
  (void)state;
  full_step_is_unchanged("tiny-sdxl", 428, 18);
}

/* LoRA (the fixture's adapters, rank 4, alpha 4): the adapters' gradients, with the reference forward on
 * the same handle between the policy forward and the backward, and the backward itself run once with
 * the adapters left off. */
static void lora_same_adapter_gradients(void **state) {
  (void)state;
  unet_t m = load_model("tiny-sd", "unet.safetensors");
  unet_lora_params lp = unet_lora_default_params();
  lp.rank = 4;
  lp.alpha = 4;
  if (unet_lora_enable(m, &lp) != 0) fail_msg("unet_lora_enable: %s", unet_last_error(m));
  if (unet_lora_load(m, tu_path("lora/pytorch_lora_weights.safetensors")) != 0) fail_msg("%s", unet_last_error(m));
  unet_info info;
  unet_get_info(m, &info);
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  step_inputs in = load_inputs("tiny-sd", "lora", &info);

  step_result plain = dpo_step(m, NULL, &in, 0);
  double want = fixture_loss("tiny-sd", "lora");
  if (fabs(plain.loss - want) > 1e-3 * fabs(want)) fail_msg("lora: loss %.9g, fixture %.9g", plain.loss, want);
  assert_int_equal(unet_set_gradient_checkpointing(m, 1), 0);
  uint64_t f0, r0;
  unet_checkpoint_counts(m, &f0, &r0);
  step_result ckpt = dpo_step(m, NULL, &in, 0);
  assert_checkpointed(m, f0, r0, 12);
  assert_same_step(m, 1, li.num_tensors, &plain, &ckpt, "tiny-sd/lora");
  free(ckpt.grad);

  unet_checkpoint_counts(m, &f0, &r0);
  ckpt = dpo_step(m, NULL, &in, 1);
  assert_checkpointed(m, f0, r0, 12);
  assert_same_step(m, 1, li.num_tensors, &plain, &ckpt, "tiny-sd/lora, backward with the adapters off");

  /* Off again: the plain step, no blocks checkpointed. */
  assert_int_equal(unet_set_gradient_checkpointing(m, 0), 0);
  unet_checkpoint_counts(m, &f0, &r0);
  free(ckpt.grad);
  ckpt = dpo_step(m, NULL, &in, 0);
  assert_checkpointed(m, f0, r0, 0);
  assert_same_step(m, 1, li.num_tensors, &plain, &ckpt, "tiny-sd/lora, checkpointing off again");

  free(plain.grad);
  free(ckpt.grad);
  free_inputs(&in);
  unet_free(m);
}

/* The other memory a step need not hold: a frozen reference keeps no gradient buffer (it never trains),
 * still runs its forward, and says why it has no gradients when asked for them. */
static void frozen_reference_keeps_no_gradient_buffer(void **state) {
  (void)state;
  unet_t ref = load_model("tiny-sd", "unet.safetensors");
  size_t n = 0;
  assert_non_null(unet_grad_buffer(ref, &n));
  assert_true(n > 0);
  assert_int_equal(unet_freeze(ref), 0);
  n = 0;
  assert_null(unet_grad_buffer(ref, &n));
  assert_non_null(strstr(unet_last_error(ref), "frozen"));
  assert_int_equal(unet_zero_grad(ref), 0);
  unet_info info;
  unet_get_info(ref, &info);
  step_inputs in = load_inputs("tiny-sd", "dpo_unsaturated", &info);
  float mse[NSAMP], g[NSAMP] = {1, 1, 1, 1};
  assert_int_equal(unet_forward_mse(ref, NSAMP, 8, 8, in.text_len, in.x, in.t, in.ehs, in.target, mse, NULL), 0);
  assert_true(mse[0] > 0);
  assert_int_equal(unet_backward_mse(ref, g), DPOD_ESTATE);
  free_inputs(&in);
  unet_free(ref);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(full_fine_tuning_tiny_sd_same_gradients),
      cmocka_unit_test(full_fine_tuning_tiny_sdxl_same_gradients),
      cmocka_unit_test(lora_same_adapter_gradients),
      cmocka_unit_test(frozen_reference_keeps_no_gradient_buffer),
  };
  return CMOCKA_MAIN("checkpointing", tests, NULL, NULL);
}
