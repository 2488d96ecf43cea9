/* The UNet forward pass against diffusers: tiny-sd weights and inputs must reproduce outputs.safetensors
 * to float32 rounding (atol 1e-5), with integer and float timesteps alike. */
#include "tensor_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

static void run_forward(const char *timestep_name) {
  char err[512];
  unet_t m = NULL;
  unet_params p = unet_default_params();
  p.threads = 2;
  char *cfg = tu_read_text(tu_path("config.json"));
  int rc = unet_create(cfg, &p, &m, err, sizeof err);
  free(cfg);
  if (rc != 0) fail_msg("unet_create: %s", err);
  if (unet_load_weights(m, tu_path("unet.safetensors")) != 0) fail_msg("%s", unet_last_error(m));

  size_t nx, nt, ne, ny;
  float *x = tu_load(tu_path("inputs.safetensors"), "sample", &nx);
  float *t = tu_load(tu_path("inputs.safetensors"), timestep_name, &nt);
  float *e = tu_load(tu_path("inputs.safetensors"), "encoder_hidden_states", &ne);
  float *want = tu_load(tu_path("outputs.safetensors"), "sample", &ny);
  assert_int_equal(nx, 2 * 4 * 8 * 8);
  assert_int_equal(nt, 2);
  float *got = calloc(ny, sizeof(float));
  if (unet_forward(m, 2, 8, 8, 4, x, t, e, got) != 0) fail_msg("%s", unet_last_error(m));
  tu_assert_close("unet output vs diffusers", got, want, ny, 1e-5);

  free(x);
  free(t);
  free(e);
  free(want);
  free(got);
  unet_free(m);
}

static void forward_matches_diffusers(void **state) {
  (void)state;
  run_forward("timestep");
}

/* Where no Fortran BLAS is linked (PyTorch's own libtorch), attention runs on ATen's matmul: the same
 * numbers. DPOD_ATTENTION_GEMM=aten selects that path in this build too. */
static void forward_matches_diffusers_on_aten_matmul(void **state) {
  (void)state;
  setenv("DPOD_ATTENTION_GEMM", "aten", 1);
  assert_string_equal(unet_attention_gemm(), "aten");
  run_forward("timestep");
}

static void forward_matches_diffusers_f32_timestep(void **state) {
  (void)state;
  run_forward("timestep_f32");
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

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(forward_matches_diffusers),
      cmocka_unit_test(forward_matches_diffusers_f32_timestep),
      cmocka_unit_test(forward_matches_diffusers_on_aten_matmul),
      cmocka_unit_test(builtin_config_matches_tiny_sd),
      cmocka_unit_test(train_flops_match_hand_count),
  };
  return CMOCKA_MAIN("forward", tests, NULL, NULL);
}
