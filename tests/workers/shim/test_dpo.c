/* Diffusion-DPO parity with the reference training script: the policy and reference predictions, the
 * per-sample losses, the inside term, the loss and implicit accuracy, and then every parameter gradient
 * after back-propagating dpo_loss()'s d loss / d mse through unet_backward_mse. On tiny-sd, and on
 * tiny-sdxl as the script's SDXL branch runs it (pooled embeddings and time ids repeated for the
 * winner/loser batch like the text), also with the batch built the way dpo-worker builds it: from a
 * preference dataset holding the pairs, their prompts' embeddings and pooled embeddings and the per-pair
 * time ids, through dataset_fill_batch and the schedule's forward noising. */
#include <cjson/cJSON.h>

#include "dataset.h"
#include "pref_format.h"
#include "schedule.h"
#include "loss.h"
#include "shim_test_util.h"
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

static unet_t load_model(const char *dir, const char *weights) { return stu_fixture_model(dir, weights); }

/* Compares `got` with tensor `name` of `outputs` (atol 1e-5) and returns the largest difference. */
static double check_output(const char *outputs, const char *name, const float *got, size_t n) {
  size_t nw;
  float *want = tu_load(outputs, name, &nw);
  assert_int_equal(nw, n);
  tu_assert_close(name, got, want, n, 1e-5);
  double d = tu_max_abs_diff(got, want, n, NULL);
  free(want);
  return d;
}

/* The fixture's batch as dpo-worker builds it: the two pairs (winner, loser, prompt embedding, pooled
 * embedding, time ids) written as a preference dataset, opened with the model's shapes, the
 * [winners; losers] batch filled by dataset_fill_batch, checked against the script's `_cat` tensors,
 * and noised by the schedule of `sched_path` with the fixture's noise and timesteps. Returns x_t
 * [NSAMP, PER] and the batch's ehs, pooled embeddings and time ids (caller frees). */
static float *batch_from_dataset(const char *inputs, const char *sched_path, const unet_info *info, float **ehs_out,
                                 float **pooled_out, float **time_ids_out) {
  char tmp[256], err[1024];
  if (test_mkdtemp(tmp, sizeof tmp, "dpod-dpo-data") != 0) fail_msg("mkdtemp");
  size_t n;
  float *lw = tu_load(inputs, "latents_w", &n), *ll = tu_load(inputs, "latents_l", &n);
  float *e = tu_load(inputs, "encoder_hidden_states", &n);
  const int D = info->cross_attention_dim, L = (int)(n / (NPAIRS * (size_t)D)), P = info->text_embeds_dim;
  float *te = tu_load(inputs, "text_embeds", &n), *ti = tu_load(inputs, "time_ids", &n);
  pref_writer_params wp = pref_writer_default_params();
  wp.channels = 4, wp.height = 8, wp.width = 8, wp.text_len = L, wp.embed_dim = D;
  wp.latent_dtype = wp.embed_dtype = ST_F32;
  wp.pooled_dim = P;
  wp.time_ids = DATASET_TIME_IDS_PAIR;
  pref_writer *w = NULL;
  if (pref_writer_open(tmp, &wp, &w, err, sizeof err) != 0) fail_msg("%s", err);
  for (int i = 0; i < NPAIRS; i++) {
    if (pref_writer_add_prompt_pooled(w, e + (size_t)i * L * D, te + (size_t)i * P) != 0 ||
        pref_writer_add_pair_time_ids(w, "train", lw + (size_t)i * PER, ll + (size_t)i * PER, (uint32_t)i,
                                      ti + (size_t)i * 6, NULL) != 0)
      fail_msg("%s", pref_writer_last_error(w));
  }
  if (pref_writer_finish(w, err, sizeof err) != 0) fail_msg("%s", err);
  dataset_open_params op = dataset_open_default_params();
  op.channels = 4, op.height = op.width = 8, op.embed_dim = D, op.pooled_dim = P;
  dpo_dataset ds;
  if (dataset_open(tmp, &op, &ds, err, sizeof err) != 0) fail_msg("%s", err);

  const size_t pairs[NPAIRS] = {0, 1};
  float *x0 = calloc(NSAMP * PER, sizeof(float)), *ehs = calloc((size_t)NSAMP * L * D, sizeof(float));
  float *pooled = calloc((size_t)NSAMP * P, sizeof(float)), *tids = calloc(NSAMP * 6, sizeof(float));
  assert_int_equal(dataset_fill_batch(&ds, pairs, NPAIRS, x0, ehs, pooled, tids), 0);
  static const char *names[] = {"latents_cat", "encoder_hidden_states_cat", "text_embeds_cat", "time_ids_cat"};
  const float *got[] = {x0, ehs, pooled, tids};
  for (int k = 0; k < 4; k++) {
    float *want = tu_load(inputs, names[k], &n);
    if (memcmp(got[k], want, n * sizeof(float)) != 0) fail_msg("the dataset's batch differs from the script's %s", names[k]);
    free(want);
  }

  char *json = tu_read_text(sched_path);
  dpo_schedule s;
  if (dpo_schedule_from_json(&s, json, err, sizeof err) != 0) fail_msg("%s: %s", sched_path, err);
  free(json);
  float *noise = tu_load(inputs, "noise_cat", &n), *t = tu_load(inputs, "timesteps_cat", &n);
  int64_t t_int[NSAMP];
  for (int i = 0; i < NSAMP; i++) t_int[i] = (int64_t)t[i];
  float *x_t = calloc(NSAMP * PER, sizeof(float)), *target = calloc(NSAMP * PER, sizeof(float));
  dpo_add_noise(&s, NSAMP, PER, x0, noise, t_int, x_t, target);
  float *want = tu_load(inputs, "noisy_latents", &n);
  tu_assert_close("noisy latents from the dataset vs the script's", x_t, want, n, 1e-5);
  tu_assert_close("epsilon target vs the script's noise", target, noise, n, 0);
  printf("batch from a dataset: latents, text, pooled embeddings and time ids as the script's; noisy latents "
         "within %.3g\n", tu_max_abs_diff(x_t, want, n, NULL));
  free(want), free(noise), free(t), free(target), free(x0), free(lw), free(ll), free(e), free(te), free(ti);
  dpo_schedule_free(&s);
  dataset_free(&ds);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  assert_int_equal(system(cmd), 0);
  *ehs_out = ehs;
  *pooled_out = pooled;
  *time_ids_out = tids;
  return x_t;
}

/* One DPO step on fixture `dir`'s `folder`, whose UNet has `ntensors` parameter tensors. */
static void check_dpo_folder_(const char *dir, const char *folder, size_t ntensors, int from_dataset) {
  char rel[256];
#define F(name) (snprintf(rel, sizeof rel, "%s/%s", folder, name), tu_fixture(dir, rel))
  unet_t policy = load_model(dir, tu_fixture(dir, "unet.safetensors"));
  unet_t ref = load_model(dir, F("ref_unet.safetensors"));
  assert_int_equal(unet_freeze(ref), 0);
  unet_info info;
  unet_get_info(policy, &info);

  char inputs[1024];
  snprintf(inputs, sizeof inputs, "%s", F("dpo_inputs.safetensors"));
  size_t n;
  float *x = tu_load(inputs, "noisy_latents", &n);
  assert_int_equal(n, NSAMP * PER);
  float *t = tu_load(inputs, "timesteps_cat", &n);
  assert_int_equal(n, NSAMP);
  float *ehs = tu_load(inputs, "encoder_hidden_states_cat", &n);
  int text_len = (int)(n / (NSAMP * (size_t)info.cross_attention_dim));
  assert_int_equal(n, (size_t)NSAMP * (size_t)text_len * (size_t)info.cross_attention_dim);
  float *target = tu_load(inputs, "noise_cat", &n);
  /* SDXL: the pooled embeddings and time ids of the [winners; losers] batch. */
  unet_added_cond added = {NULL, NULL};
  float *text_embeds = NULL, *time_ids = NULL;
  if (from_dataset) {
    free(x);
    free(ehs);
    x = batch_from_dataset(inputs, F("scheduler/scheduler_config.json"), &info, &ehs, &text_embeds, &time_ids);
    added.text_embeds = text_embeds;
    added.time_ids = time_ids;
  } else if (info.text_embeds_dim > 0) {
    added.text_embeds = text_embeds = tu_load(inputs, "text_embeds_cat", &n);
    assert_int_equal(n, NSAMP * (size_t)info.text_embeds_dim);
    added.time_ids = time_ids = tu_load(inputs, "time_ids_cat", &n);
    assert_int_equal(n, NSAMP * (size_t)info.num_time_ids);
  }

  float model_mse[NSAMP], ref_mse[NSAMP];
  float *model_pred = calloc(NSAMP * PER, sizeof(float)), *ref_pred = calloc(NSAMP * PER, sizeof(float));
  if (unet_forward_mse_added(policy, NSAMP, 8, 8, text_len, x, t, ehs, &added, target, model_mse, model_pred) != 0)
    fail_msg("policy: %s", unet_last_error(policy));
  if (unet_forward_mse_added(ref, NSAMP, 8, 8, text_len, x, t, ehs, &added, target, ref_mse, ref_pred) != 0)
    fail_msg("ref: %s", unet_last_error(ref));

  char outputs[1024];
  snprintf(outputs, sizeof outputs, "%s", F("dpo_outputs.safetensors"));
  double d_pred = fmax(check_output(outputs, "model_pred", model_pred, NSAMP * PER),
                       check_output(outputs, "ref_pred", ref_pred, NSAMP * PER));
  double d_mse = fmax(check_output(outputs, "model_losses", model_mse, NSAMP),
                      check_output(outputs, "ref_losses", ref_mse, NSAMP));

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
  double d_inside = 0;
  for (int i = 0; i < NPAIRS; i++) {
    /* inside = -beta/2 * (difference of MSE differences) amplifies float32 rounding by 2500. */
    double w = cJSON_GetArrayItem(wi, i)->valuedouble;
    d_inside = fmax(d_inside, fabs(inside[i] - w));
    if (fabs(inside[i] - w) > 1e-3 * (fabs(w) > 1 ? fabs(w) : 1))
      fail_msg("%s: inside_term[%d] %.9g, want %.9g", folder, i, inside[i], w);
  }
  cJSON_Delete(exp);

  /* Back-propagate and compare every gradient, within 1e-3 of the largest gradient in the set. */
  assert_int_equal(unet_zero_grad(policy), 0);
  if (unet_backward_mse(policy, grad_mse) != 0) fail_msg("backward: %s", unet_last_error(policy));
  size_t ngrad = 0;
  const float *grad = unet_grad_buffer(policy, &ngrad);
  assert_int_equal(ngrad, info.num_params);
  assert_int_equal(info.num_tensors, ntensors);

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
  assert_int_equal(checked, ntensors);
  printf("%s/%s: predictions within %.3g, per-sample losses within %.3g, inside terms within %.3g, loss %.7f "
         "(want %.7f), %zu gradients within %.3g (worst %.3g = %.3g of the largest, in %s)\n",
         dir, folder, d_pred, d_mse, d_inside, loss, want_loss, checked, tol, worst, worst / gmax, worst_name);
  st_close(gf);

  free(x);
  free(t);
  free(ehs);
  free(target);
  free(text_embeds);
  free(time_ids);
  free(model_pred);
  free(ref_pred);
  unet_free(policy);
  unet_free(ref);
#undef F
}

static void check_dpo_folder(const char *dir, const char *folder, size_t ntensors) {
  check_dpo_folder_(dir, folder, ntensors, 0);
}

static void dpo_unsaturated_matches_reference(void **state) {
  (void)state;
  check_dpo_folder("tiny-sd", "dpo_unsaturated", 208);
}

/* SDXL's UNet, with the gradients of add_embedding flowing from the added conditioning. */
static void sdxl_dpo_unsaturated_matches_reference(void **state) {
  (void)state;
  check_dpo_folder("tiny-sdxl", "dpo_unsaturated", 428);
}

/* One training step on tiny-sdxl as dpo-worker takes it, from a preference dataset with pooled
 * embeddings and per-pair time ids: the same predictions, losses, loss and every gradient. */
static void sdxl_dpo_step_from_a_dataset_matches_reference(void **state) {
  (void)state;
  check_dpo_folder_("tiny-sdxl", "dpo_unsaturated", 428, 1);
}

/* The attention backward on ATen's matmul gives the same gradients (see shim.forward's aten case). */
static void dpo_unsaturated_matches_reference_on_aten_matmul(void **state) {
  (void)state;
  setenv("DPOD_ATTENTION_GEMM", "aten", 1);
  assert_string_equal(unet_attention_gemm(), "aten");
  check_dpo_folder("tiny-sd", "dpo_unsaturated", 208);
}

static void dpo_ref_equals_policy_matches_reference(void **state) {
  (void)state;
  check_dpo_folder("tiny-sd", "dpo_ref_equals_policy", 208);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(dpo_unsaturated_matches_reference),
      cmocka_unit_test(dpo_ref_equals_policy_matches_reference),
      cmocka_unit_test(sdxl_dpo_unsaturated_matches_reference),
      cmocka_unit_test(sdxl_dpo_step_from_a_dataset_matches_reference),
      /* last: it switches this process to ATen's matmul */
      cmocka_unit_test(dpo_unsaturated_matches_reference_on_aten_matmul),
  };
  return CMOCKA_MAIN("dpo", tests, NULL, NULL);
}
