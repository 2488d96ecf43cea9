/* Weights from what a job names, into the shim's model (workers/model_unet.h): a sharded checkpoint
 * (index + shards) and a `dpo-tool export` folder must give the model bit-identical parameters to the
 * single fixture file, and the diffusers outputs. tiny-sdxl: every SDXL part is in it. */
#include "dpod_error.h"
#include "tensor_test_util.h"
#include "cmocka_main.h"

#include <string.h>
#include <unistd.h>

#include "dpod_file.h"
#include "dpod_half.h"
#include "model_dir.h"
#include "model_unet.h"
#include "safetensors.h"
#include "unet_shim.h"

static char dir[256];
static char err[4096];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(dir, sizeof dir, "dpod-model-load");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(dir);
}

static unet_t fixture_model(void) {
  unet_t m = NULL;
  unet_params p = unet_default_params();
  p.threads = 2;
  char *cfg = tu_read_text(tu_fixture("tiny-sdxl", "config.json"));
  int rc = unet_create(cfg, &p, &m, err, sizeof err);
  free(cfg);
  if (rc != 0) fail_msg("unet_create: %s", err);
  return m;
}

static void assert_same_params(unet_t a, unet_t b) {
  size_t na = 0, nb = 0;
  const float *pa = unet_param_buffer(a, &na), *pb = unet_param_buffer(b, &nb);
  assert_non_null(pa);
  assert_non_null(pb);
  assert_int_equal(na, nb);
  assert_memory_equal(pa, pb, na * sizeof(float));
}

/* The fixture's weights as three shards and their index in dir/sharded/, with its config.json. */
static void write_shards(void) {
  st_file *f = NULL;
  if (st_open(tu_fixture("tiny-sdxl", "unet.safetensors"), &f, err, sizeof err) != 0) fail_msg("%s", err);
  char sub[512], path[1024];
  snprintf(sub, sizeof sub, "%s/sharded", dir);
  assert_int_equal(dpod_mkdirs(sub, 0755, 0, err, sizeof err), 0);
  size_t n = st_count(f), cap = 1 << 20, len = 0;
  char *index = malloc(cap);
  assert_non_null(index);
  len += (size_t)snprintf(index, cap, "{\"metadata\": {}, \"weight_map\": {");
  int first = 1;
  for (int s = 0; s < 3; s++) {
    st_writer *w = st_writer_new();
    for (size_t i = (size_t)s; i < n; i += 3) {
      const st_tensor *t = st_at(f, i);
      assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
      len += (size_t)snprintf(index + len, cap - len, "%s\"%s\": \"diffusion_pytorch_model-0000%d-of-00003.safetensors\"",
                              first ? "" : ", ", t->name, s + 1);
      first = 0;
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model-0000%d-of-00003.safetensors", sub, s + 1);
    if (st_writer_write(w, path, NULL, err, sizeof err) != 0) fail_msg("%s", err);
    st_writer_free(w);
  }
  snprintf(index + len, cap - len, "}}");
  snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors.index.json", sub);
  assert_int_equal(dpod_write_file_atomic(path, index, strlen(index), 0, err, sizeof err), 0);
  free(index);
  char *cfg = tu_read_text(tu_fixture("tiny-sdxl", "config.json"));
  snprintf(path, sizeof path, "%s/config.json", sub);
  assert_int_equal(dpod_write_file_atomic(path, cfg, strlen(cfg), 0, err, sizeof err), 0);
  free(cfg);
  st_close(f);
}

static void load_source(unet_t m, const char *path, const char *variant) {
  model_source src;
  if (model_source_resolve("model.weights", path, variant, &src, err, sizeof err) != 0) fail_msg("%s", err);
  if (model_unet_load(m, &src, err, sizeof err) != 0) fail_msg("%s", err);
}

static void sharded_weights_load_as_the_single_file_and_match_diffusers(void **state) {
  (void)state;
  write_shards();
  unet_t a = fixture_model(), b = fixture_model();
  char path[512];
  snprintf(path, sizeof path, "%s/sharded", dir);
  load_source(a, path, "");
  if (unet_load_weights(b, tu_fixture("tiny-sdxl", "unet.safetensors")) != 0) fail_msg("%s", unet_last_error(b));
  assert_same_params(a, b);

  /* And it is the model diffusers ran. */
  const char *inputs = tu_fixture("tiny-sdxl", "inputs.safetensors");
  size_t nx, nt, ne, n1, n2, ny;
  float *x = tu_load(inputs, "sample", &nx), *t = tu_load(inputs, "timestep_f32", &nt);
  float *e = tu_load(inputs, "encoder_hidden_states", &ne);
  float *te = tu_load(inputs, "text_embeds", &n1), *ti = tu_load(inputs, "time_ids", &n2);
  float *want = tu_load(tu_fixture("tiny-sdxl", "outputs.safetensors"), "sample", &ny);
  float *got = calloc(ny, sizeof *got);
  unet_info info;
  unet_get_info(a, &info);
  unet_added_cond added = {te, ti};
  if (unet_forward_added(a, 2, 8, 8, (int)(ne / (2 * (size_t)info.cross_attention_dim)), x, t, e, &added, got) != 0)
    fail_msg("%s", unet_last_error(a));
  tu_assert_close("sharded tiny-sdxl vs diffusers", got, want, ny, 1e-5);
  free(x), free(t), free(e), free(te), free(ti), free(want), free(got);
  unet_free(a);
  unet_free(b);
}

static void a_shard_that_lost_a_tensor_is_refused_and_the_model_kept(void **state) {
  (void)state;
  write_shards();
  /* Rewrite shard 2 without its first tensor. */
  char path[1024];
  snprintf(path, sizeof path, "%s/sharded/diffusion_pytorch_model-00002-of-00003.safetensors", dir);
  st_file *f = NULL;
  if (st_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
  st_writer *w = st_writer_new();
  for (size_t i = 1; i < st_count(f); i++) {
    const st_tensor *t = st_at(f, i);
    assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
  }
  char lost[512];
  snprintf(lost, sizeof lost, "'%s'", st_at(f, 0)->name);
  char tmp[1100];
  snprintf(tmp, sizeof tmp, "%s.new", path);
  if (st_writer_write(w, tmp, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  st_writer_free(w);
  st_close(f);
  assert_int_equal(rename(tmp, path), 0);

  unet_t a = fixture_model(), b = fixture_model();
  model_source src;
  snprintf(path, sizeof path, "%s/sharded", dir);
  assert_int_equal(model_source_resolve("model.weights", path, "", &src, err, sizeof err), 0);
  assert_int_equal(model_unet_load(a, &src, err, sizeof err), DPOD_EFORMAT);
  if (!strstr(err, lost) || !strstr(err, "mapped but not in their shard")) fail_msg("error \"%s\" lacks %s", err, lost);
  assert_same_params(a, b); /* same seed, nothing loaded */
  unet_free(a);
  unet_free(b);
}

static void an_export_loads_back_bit_identical_and_fp16_rounded(void **state) {
  (void)state;
  write_shards();
  char src[512], out[512], out16[512];
  snprintf(src, sizeof src, "%s/sharded", dir);
  snprintf(out, sizeof out, "%s/pipe", dir);
  snprintf(out16, sizeof out16, "%s/pipe16", dir);
  model_export_params p = model_export_default_params();
  p.pipeline = 1;
  if (model_export(src, out, &p, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  p.variant = "fp16";
  if (model_export(src, out16, &p, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  unet_t a = fixture_model(), b = fixture_model(), c = fixture_model();
  load_source(a, out, "");
  if (unet_load_weights(b, tu_fixture("tiny-sdxl", "unet.safetensors")) != 0) fail_msg("%s", unet_last_error(b));
  assert_same_params(a, b);
  load_source(c, out16, "fp16");
  size_t n = 0;
  const float *pb = unet_param_buffer(b, &n), *pc = unet_param_buffer(c, &n);
  for (size_t i = 0; i < n; i++) {
    float want = dpod_f16_to_f32(dpod_f32_to_f16(pb[i]));
    if (memcmp(&pc[i], &want, sizeof want) != 0) fail_msg("parameter element %zu: %g, expected %g", i, pc[i], want);
  }
  unet_free(a);
  unet_free(b);
  unet_free(c);
}

int main(int argc, char **argv) {
#define CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest all[] = {
      CASE(sharded_weights_load_as_the_single_file_and_match_diffusers),
      CASE(a_shard_that_lost_a_tensor_is_refused_and_the_model_kept),
      CASE(an_export_loads_back_bit_identical_and_fp16_rounded),
  };
  return CMOCKA_MAIN("model_load", all, NULL, NULL);
}
