/* The UNet forward pass against diffusers: the weights and inputs of tiny-sd and of tiny-sdxl (with its
 * added conditioning, text_embeds and time_ids) must reproduce outputs.safetensors to float32 rounding
 * (atol 1e-5), with integer and float timesteps alike. */
#include "dpod_error.h"
#include "shim_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

/* The fixture `dir`'s UNet with its weights. */
static unet_t load_fixture_model(const char *dir) { return stu_fixture_model(dir, tu_fixture(dir, "unet.safetensors")); }

static void run_forward(const char *dir, const char *timestep_name) {
  unet_t m = load_fixture_model(dir);
  unet_info info;
  unet_get_info(m, &info);
  const char *inputs = tu_fixture(dir, "inputs.safetensors");
  size_t nx, nt, ne, ny;
  float *x = tu_load(inputs, "sample", &nx);
  float *t = tu_load(inputs, timestep_name, &nt);
  float *e = tu_load(inputs, "encoder_hidden_states", &ne);
  float *want = tu_load(tu_fixture(dir, "outputs.safetensors"), "sample", &ny);
  assert_int_equal(nx, 2 * 4 * 8 * 8);
  assert_int_equal(nt, 2);
  int text_len = (int)(ne / (2 * (size_t)info.cross_attention_dim));
  unet_added_cond added = {NULL, NULL};
  float *text_embeds = NULL, *time_ids = NULL;
  if (info.text_embeds_dim > 0) {
    size_t n1, n2;
    added.text_embeds = text_embeds = tu_load(inputs, "text_embeds", &n1);
    added.time_ids = time_ids = tu_load(inputs, "time_ids", &n2);
    assert_int_equal(n1, 2 * (size_t)info.text_embeds_dim);
    assert_int_equal(n2, 2 * (size_t)info.num_time_ids);
  }
  float *got = calloc(ny, sizeof(float));
  if (unet_forward_added(m, 2, 8, 8, text_len, x, t, e, &added, got) != 0) fail_msg("%s", unet_last_error(m));
  tu_assert_close("unet output vs diffusers", got, want, ny, 1e-5);
  printf("%s (%s): max |diff| %.3g\n", dir, timestep_name, tu_max_abs_diff(got, want, ny, NULL));

  free(x);
  free(t);
  free(e);
  free(text_embeds);
  free(time_ids);
  free(want);
  free(got);
  unet_free(m);
}

static void forward_matches_diffusers(void **state) {
  (void)state;
  run_forward("tiny-sd", "timestep");
}

/* Where no Fortran BLAS is linked (PyTorch's own libtorch), attention runs on ATen's matmul: the same
 * numbers. DPOD_ATTENTION_GEMM=aten selects that path in this build too. */
static void forward_matches_diffusers_on_aten_matmul(void **state) {
  (void)state;
  setenv("DPOD_ATTENTION_GEMM", "aten", 1);
  assert_string_equal(unet_attention_gemm(), "aten");
  run_forward("tiny-sd", "timestep");
}

static void forward_matches_diffusers_f32_timestep(void **state) {
  (void)state;
  run_forward("tiny-sd", "timestep_f32");
}

/* SDXL's structure: DownBlock2D first, per-block transformer depth, linear projections and the text_time
 * added conditioning, which moves the output far more than the tolerance (checked below). */
static void forward_matches_diffusers_sdxl(void **state) {
  (void)state;
  run_forward("tiny-sdxl", "timestep");
  run_forward("tiny-sdxl", "timestep_f32");
}

/* The added conditioning matters: other time ids give another output. Without it an SDXL UNet refuses to
 * run, naming what is missing, and an SD UNet refuses to be given it. */
static void forward_added_cond_is_used_and_required(void **state) {
  (void)state;
  unet_t m = load_fixture_model("tiny-sdxl");
  const char *inputs = tu_fixture("tiny-sdxl", "inputs.safetensors");
  size_t ny;
  float *x = tu_load(inputs, "sample", NULL), *t = tu_load(inputs, "timestep_f32", NULL);
  float *e = tu_load(inputs, "encoder_hidden_states", NULL), *te = tu_load(inputs, "text_embeds", NULL);
  float *ids = tu_load(inputs, "time_ids", NULL);
  float *want = tu_load(tu_fixture("tiny-sdxl", "outputs.safetensors"), "sample", &ny);
  float *got = calloc(ny, sizeof(float));
  ids[0] += 128; /* another original height */
  unet_added_cond added = {te, ids};
  if (unet_forward_added(m, 2, 8, 8, 5, x, t, e, &added, got) != 0) fail_msg("%s", unet_last_error(m));
  size_t at;
  double d = tu_max_abs_diff(got, want, ny, &at);
  if (!(d > 1e-3)) fail_msg("changing a time id moved the output by only %.3g", d);

  int rc = unet_forward(m, 2, 8, 8, 5, x, t, e, got);
  assert_int_equal(rc, DPOD_EINVAL);
  if (!strstr(unet_last_error(m), "'text_embeds'")) fail_msg("message does not name text_embeds: %s", unet_last_error(m));
  added.text_embeds = NULL;
  float mse[2];
  rc = unet_forward_mse_added(m, 2, 8, 8, 5, x, t, e, &added, want, mse, NULL);
  assert_int_equal(rc, DPOD_EINVAL);
  if (!strstr(unet_last_error(m), "'text_embeds'")) fail_msg("message does not name text_embeds: %s", unet_last_error(m));
  added.text_embeds = te;
  added.time_ids = NULL;
  assert_int_equal(unet_forward_added(m, 2, 8, 8, 5, x, t, e, &added, got), DPOD_EINVAL);
  if (!strstr(unet_last_error(m), "'time_ids'")) fail_msg("message does not name time_ids: %s", unet_last_error(m));
  unet_free(m);

  unet_t sd = load_fixture_model("tiny-sd");
  added.time_ids = ids;
  assert_int_equal(unet_forward_added(sd, 2, 8, 8, 5, x, t, e, &added, got), DPOD_EINVAL);
  if (!strstr(unet_last_error(sd), "no added conditioning")) fail_msg("unexpected message: %s", unet_last_error(sd));
  unet_free(sd);
  free(x);
  free(t);
  free(e);
  free(te);
  free(ids);
  free(want);
  free(got);
}

/* The built-in config is the tiny-sd config: same parameter count, same names as the fixture file. */
static void builtin_config_matches_tiny_sd(void **state) {
  (void)state;
  char err[512];
  unet_t m = NULL;
  assert_int_equal(unet_create(NULL, NULL, &m, err, sizeof err), 0);
  unet_info info;
  unet_get_info(m, &info);
  assert_int_equal(info.num_params, 792964);
  assert_int_equal(info.num_tensors, 208);
  assert_int_equal(unet_load_weights(m, tu_path("unet.safetensors")), 0);
  unet_free(m);
}

/* The analytic FLOP count of a training step on the tiny config, against a count written out by hand
 * layer by layer (16 images of 8x8, 4 text tokens: 4 x forward). */
static void train_flops_match_hand_count(void **state) {
  (void)state;
  char err[512];
  unet_t m = NULL;
  assert_int_equal(unet_create(NULL, NULL, &m, err, sizeof err), 0);
  double f = unet_train_flops(m, 16, 8, 8, 4);
  if (f != 2723151872.0) fail_msg("unet_train_flops %.0f, want 2723151872", f);
  /* Linear in the batch. */
  assert_true(unet_train_flops(m, 32, 8, 8, 4) == 2.0 * f);
  assert_true(unet_train_flops(m, 0, 8, 8, 4) == 0.0);
  unet_free(m);
}

/* SDXL's add_embedding is counted: tiny-sdxl against the same config without text_time differs by its two
 * Linear layers, [64 -> 128] and [128 -> 128], once per image, times 4 for the training step. */
static void train_flops_count_add_embedding(void **state) {
  (void)state;
  char *xl = tu_read_text(tu_fixture("tiny-sdxl", "config.json"));
  char *plain = strdup(xl);
  const char *edits[][2] = {{"\"text_time\"", "null"},
                            {"\"addition_time_embed_dim\": 8", "\"addition_time_embed_dim\": null"},
                            {"\"projection_class_embeddings_input_dim\": 64",
                             "\"projection_class_embeddings_input_dim\": null"}};
  for (size_t i = 0; i < 3; i++) {
    char *at = strstr(plain, edits[i][0]);
    if (!at) fail_msg("tiny-sdxl config has no %s", edits[i][0]);
    size_t n = strlen(plain) - strlen(edits[i][0]) + strlen(edits[i][1]) + 1;
    char *next = malloc(n);
    snprintf(next, n, "%.*s%s%s", (int)(at - plain), plain, edits[i][1], at + strlen(edits[i][0]));
    free(plain);
    plain = next;
  }
  char err[512];
  unet_t a = NULL, b = NULL;
  if (unet_create(xl, NULL, &a, err, sizeof err) != 0) fail_msg("%s", err);
  if (unet_create(plain, NULL, &b, err, sizeof err) != 0) fail_msg("%s", err);
  double d = unet_train_flops(a, 16, 8, 8, 5) - unet_train_flops(b, 16, 8, 8, 5);
  if (d != 4.0 * 16 * 2 * (64 * 128 + 128 * 128)) fail_msg("add_embedding adds %.0f FLOPs", d);
  unet_free(a);
  unet_free(b);
  free(xl);
  free(plain);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(forward_matches_diffusers),
      cmocka_unit_test(forward_matches_diffusers_f32_timestep),
      cmocka_unit_test(forward_matches_diffusers_sdxl),
      cmocka_unit_test(forward_added_cond_is_used_and_required),
      /* last: it switches this process to ATen's matmul */
      cmocka_unit_test(forward_matches_diffusers_on_aten_matmul),
      cmocka_unit_test(builtin_config_matches_tiny_sd),
      cmocka_unit_test(train_flops_match_hand_count),
      cmocka_unit_test(train_flops_count_add_embedding),
  };
  return CMOCKA_MAIN("forward", tests, NULL, NULL);
}
