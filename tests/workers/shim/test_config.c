/* Config and weight handling: unsupported config values and weights that do not fit are refused by name
 * (and leave the model untouched); save then load is bit-exact and writes a diffusers config.json. */
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "dpod_error.h"
#include "tensor_test_util.h"
#include "cmocka_main.h"
#include "unet_shim.h"

static char tmpdir[256];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(tmpdir, sizeof tmpdir, "dpod-cfg");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(tmpdir);
}

/* Fixture `dir`'s config with the first occurrence of `from` replaced by `to`. Caller frees. */
static char *fixture_config_with(const char *dir, const char *from, const char *to) {
  char *cfg = tu_read_text(tu_fixture(dir, "config.json"));
  char *at = strstr(cfg, from);
  if (!at) fail_msg("%s/config.json has no '%s'", dir, from);
  size_t n = strlen(cfg) - strlen(from) + strlen(to) + 1;
  char *out = malloc(n);
  snprintf(out, n, "%.*s%s%s", (int)(at - cfg), cfg, to, at + strlen(from));
  free(cfg);
  return out;
}

static char *config_with(const char *from, const char *to) { return fixture_config_with("tiny-sd", from, to); }

/* Fixture `dir`'s config with `from` replaced by `to` is refused with `status`, naming `key`; so is it when
 * only counted (unet_config_num_params). */
static void expect_refused_in(const char *dir, const char *from, const char *to, int status, const char *key) {
  char *cfg = fixture_config_with(dir, from, to);
  char err[512] = "", err2[512] = "";
  unet_t m = NULL;
  int rc = unet_create(cfg, NULL, &m, err, sizeof err);
  size_t count = 0;
  int rc2 = unet_config_num_params(cfg, &count, NULL, err2, sizeof err2);
  free(cfg);
  if (rc == 0) {
    unet_free(m);
    fail_msg("config with %s was accepted", to);
  }
  assert_null(m);
  if (rc != status) fail_msg("status %s, want %s: %s", dpod_err_name(rc), dpod_err_name(status), err);
  char quoted[128];
  snprintf(quoted, sizeof quoted, "'%s'", key);
  if (!strstr(err, quoted)) fail_msg("message does not name %s: %s", quoted, err);
  assert_int_equal(rc2, rc);
  assert_string_equal(err2, err);
}

static void expect_config_refused(const char *from, const char *to, const char *key) {
  expect_refused_in("tiny-sd", from, to, DPOD_EUNSUPPORTED, key);
}

static void config_refuses_unsupported_act_fn(void **state) {
  (void)state;
  expect_config_refused("\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\"", "act_fn");
}

static void config_refuses_unknown_up_block_type(void **state) {
  (void)state;
  expect_config_refused("\"UpBlock2D\",", "\"SomethingElse\",", "up_block_types");
}

/* Only SDXL's text_time added conditioning is understood; its widths are required, bounded and fit six
 * time ids plus a pooled embedding, and without text_time they must be null. */
static void config_refuses_addition_embed_type(void **state) {
  (void)state;
  expect_config_refused("\"addition_embed_type\": null", "\"addition_embed_type\": \"image\"", "addition_embed_type");
  expect_refused_in("tiny-sdxl", "\"text_time\"", "\"text\"", DPOD_EUNSUPPORTED, "addition_embed_type");
  expect_config_refused("\"addition_time_embed_dim\": null", "\"addition_time_embed_dim\": 8", "addition_time_embed_dim");
  expect_config_refused("\"projection_class_embeddings_input_dim\": null",
                        "\"projection_class_embeddings_input_dim\": 64", "projection_class_embeddings_input_dim");
}

static void config_bounds_text_time_widths(void **state) {
  (void)state;
  const char *dim = "\"addition_time_embed_dim\": 8", *proj = "\"projection_class_embeddings_input_dim\": 64";
  expect_refused_in("tiny-sdxl", dim, "\"addition_time_embed_dim\": null", DPOD_EINVAL, "addition_time_embed_dim");
  expect_refused_in("tiny-sdxl", dim, "\"addition_time_embed_dim\": 0", DPOD_EINVAL, "addition_time_embed_dim");
  expect_refused_in("tiny-sdxl", dim, "\"addition_time_embed_dim\": 65537", DPOD_EINVAL, "addition_time_embed_dim");
  expect_refused_in("tiny-sdxl", dim, "\"addition_time_embed_dim\": 2.5", DPOD_EINVAL, "addition_time_embed_dim");
  expect_refused_in("tiny-sdxl", proj, "\"projection_class_embeddings_input_dim\": 65537", DPOD_EINVAL,
                    "projection_class_embeddings_input_dim");
  /* 6 time ids x 8 = 48: no room left for the pooled text embedding. */
  expect_refused_in("tiny-sdxl", proj, "\"projection_class_embeddings_input_dim\": 48", DPOD_EINVAL,
                    "projection_class_embeddings_input_dim");
  expect_refused_in("tiny-sdxl", "\"upcast_attention\": null", "\"upcast_attention\": 1", DPOD_EINVAL,
                    "upcast_attention");

  /* The edges are accepted: 6 x 8 + 1, and the largest widths (counted, not built). */
  char *cfg = fixture_config_with("tiny-sdxl", proj, "\"projection_class_embeddings_input_dim\": 49");
  char err[512];
  unet_t m = NULL;
  if (unet_create(cfg, NULL, &m, err, sizeof err) != 0) fail_msg("%s", err);
  free(cfg);
  unet_info info;
  unet_get_info(m, &info);
  assert_int_equal(info.text_embeds_dim, 1);
  assert_int_equal(info.num_time_ids, 6);
  unet_free(m);
  cfg = fixture_config_with("tiny-sdxl", proj, "\"projection_class_embeddings_input_dim\": 65536");
  size_t big = 0, small = 0;
  if (unet_config_num_params(cfg, &big, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  free(cfg);
  cfg = tu_read_text(tu_fixture("tiny-sdxl", "config.json"));
  if (unet_config_num_params(cfg, &small, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  free(cfg);
  /* add_embedding.linear_1 is [time_embed_dim 128, projection width]. */
  assert_int_equal(big - small, (size_t)(65536 - 64) * 128);
}

/* SDXL base's own config.json: every key accepted, and the model it describes has the parameter count
 * diffusers builds (counted from the config; the weights would be 10 GB). SD 1.5 and tiny-sdxl too, the
 * last also against the model actually built. */
static void config_counts_real_model_params(void **state) {
  (void)state;
  static const struct {
    const char *dir;
    size_t params, tensors;
  } models[] = {
      {"configs/sdxl-base-unet", 2567463684u, 0},
      {"configs/sd15-unet", 859520964u, 0},
      {"tiny-sdxl", 1925316u, 428},
      {"tiny-sd", 792964u, 208},
  };
  for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
    char *cfg = tu_read_text(tu_fixture(models[i].dir, "config.json"));
    char err[512];
    size_t params = 0, tensors = 0;
    if (unet_config_num_params(cfg, &params, &tensors, err, sizeof err) != 0) fail_msg("%s: %s", models[i].dir, err);
    if (params != models[i].params) fail_msg("%s: %zu parameters, want %zu", models[i].dir, params, models[i].params);
    if (models[i].tensors) {
      assert_int_equal(tensors, models[i].tensors);
      unet_t m = NULL;
      if (unet_create(cfg, NULL, &m, err, sizeof err) != 0) fail_msg("%s: %s", models[i].dir, err);
      unet_info info;
      unet_get_info(m, &info);
      assert_int_equal(info.num_params, params);
      assert_int_equal(info.num_tensors, tensors);
      unet_free(m);
    }
    free(cfg);
  }
}

static void config_refuses_unknown_key(void **state) {
  (void)state;
  expect_config_refused("\"act_fn\"", "\"fancy_new_option\": 3, \"act_fn\"", "fancy_new_option");
  /* Unknown keys at null and metadata keys change nothing and are accepted. */
  char *cfg = config_with("\"act_fn\"", "\"fancy_new_option\": null, \"_name_or_path\": \"x\", \"act_fn\"");
  char err[512];
  unet_t m = NULL;
  int rc = unet_create(cfg, NULL, &m, err, sizeof err);
  free(cfg);
  if (rc != 0) fail_msg("%s", err);
  unet_free(m);
}

/* SD 2.x options: linear projections, per-block head counts, per-block transformer depth and
 * cross-attention width, upcast attention. Names and shapes follow, and the normalised config reloads. */
static void config_accepts_sd2_style_options(void **state) {
  (void)state;
  const char *cfg =
      "{\"_class_name\": \"UNet2DConditionModel\", \"sample_size\": 8, \"in_channels\": 4, \"out_channels\": 4,"
      " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
      " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"],"
      " \"block_out_channels\": [16, 32, 32], \"layers_per_block\": 1, \"norm_num_groups\": 8,"
      " \"attention_head_dim\": [2, 4, 4], \"transformer_layers_per_block\": [1, 2, 1],"
      " \"cross_attention_dim\": 24, \"use_linear_projection\": true, \"upcast_attention\": true,"
      " \"num_attention_heads\": null, \"dual_cross_attention\": false, \"only_cross_attention\": false,"
      " \"class_embed_type\": null, \"num_class_embeds\": null, \"resnet_time_scale_shift\": \"default\"}";
  char err[512];
  unet_t m = NULL;
  if (unet_create(cfg, NULL, &m, err, sizeof err) != 0) fail_msg("%s", err);
  unet_info info;
  unet_get_info(m, &info);
  int found_linear = 0, found_second_block = 0;
  for (size_t i = 0; i < info.num_tensors; i++) {
    const char *name;
    size_t off;
    int ndim;
    int64_t shape[8];
    assert_int_equal(unet_param_at(m, i, &name, &off, &ndim, shape), 0);
    if (strcmp(name, "down_blocks.1.attentions.0.proj_in.weight") == 0) {
      assert_int_equal(ndim, 2); /* Linear, not a 1x1 conv */
      found_linear = 1;
    }
    if (strcmp(name, "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight") == 0) {
      assert_int_equal(shape[0], 32);
      assert_int_equal(shape[1], 24);
      found_second_block = 1;
    }
  }
  assert_true(found_linear && found_second_block);
  assert_non_null(strstr(unet_config_json(m), "\"use_linear_projection\":\ttrue"));

  /* A forward pass runs on an odd-sized latent too (the up path follows the skip sizes). */
  float x[1 * 4 * 7 * 7], t[1] = {999}, e[1 * 3 * 24], out[1 * 4 * 7 * 7];
  for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = (float)((int)(i % 5) - 2) * 0.3f;
  for (size_t i = 0; i < sizeof e / sizeof e[0]; i++) e[i] = (float)((int)(i % 3) - 1);
  if (unet_forward(m, 1, 7, 7, 3, x, t, e, out) != 0) fail_msg("%s", unet_last_error(m));
  for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) assert_true(isfinite(out[i]));

  unet_t m2 = NULL;
  if (unet_create(unet_config_json(m), NULL, &m2, err, sizeof err) != 0) fail_msg("reloading the saved config: %s", err);
  assert_string_equal(unet_config_json(m), unet_config_json(m2));
  unet_free(m2);
  unet_free(m);
}

/* The normalised config of the model built from `cfg` (NULL: built-in) is fixture `dir`'s config.json
 * key for key. */
static void expect_normalised_config_is(const char *cfg, const char *dir) {
  char err[512];
  unet_t m = NULL;
  if (unet_create(cfg, NULL, &m, err, sizeof err) != 0) fail_msg("%s", err);
  char *want_text = tu_read_text(tu_fixture(dir, "config.json"));
  cJSON *want = cJSON_Parse(want_text), *got = cJSON_Parse(unet_config_json(m));
  assert_non_null(want);
  assert_non_null(got);
  for (cJSON *e = want->child; e; e = e->next) {
    cJSON *g = cJSON_GetObjectItemCaseSensitive(got, e->string);
    if (!g) fail_msg("normalised config lacks '%s'", e->string);
    if (!cJSON_Compare(e, g, 1)) fail_msg("normalised config differs at '%s'", e->string);
  }
  assert_int_equal(cJSON_GetArraySize(got), cJSON_GetArraySize(want));
  cJSON_Delete(want);
  cJSON_Delete(got);
  free(want_text);
  unet_free(m);
}

/* The built-in config, normalised, is the fixture's config.json key for key. */
static void config_json_matches_fixture(void **state) {
  (void)state;
  expect_normalised_config_is(NULL, "tiny-sd");
}

/* So is tiny-sdxl's: text_time and its widths, and upcast_attention null, are written as they were read. */
static void config_json_matches_sdxl_fixture(void **state) {
  (void)state;
  char *cfg = tu_read_text(tu_fixture("tiny-sdxl", "config.json"));
  expect_normalised_config_is(cfg, "tiny-sdxl");
  free(cfg);
}

/* Copies the fixture weights into `name` in tmpdir, leaving out `drop`, adding `extra`, and replacing
 * conv_out.bias by a [5] tensor if `reshape`. */
static const char *weights_variant(const char *name, const char *drop, const char *extra, int reshape) {
  static char path[512];
  char err[512];
  st_file *f = NULL;
  if (st_open(tu_path("unet.safetensors"), &f, err, sizeof err) != 0) fail_msg("%s", err);
  st_writer *w = st_writer_new();
  static const float five[5] = {1, 2, 3, 4, 5};
  for (size_t i = 0; i < st_count(f); i++) {
    const st_tensor *t = st_at(f, i);
    if (drop && strcmp(t->name, drop) == 0) continue;
    if (reshape && strcmp(t->name, "conv_out.bias") == 0) {
      int64_t s[1] = {5};
      assert_int_equal(st_writer_add(w, t->name, ST_F32, 1, s, five), 0);
      continue;
    }
    assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
  }
  if (extra) {
    int64_t s[1] = {5};
    assert_int_equal(st_writer_add(w, extra, ST_F32, 1, s, five), 0);
  }
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  if (st_writer_write(w, path, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  st_writer_free(w);
  st_close(f);
  return path;
}

static void expect_weights_refused(const char *path, int status, const char *tensor) {
  char err[512];
  unet_t m = NULL;
  if (unet_create(NULL, NULL, &m, err, sizeof err) != 0) fail_msg("%s", err);
  size_t n;
  const float *buf = unet_param_buffer(m, &n);
  float *before = malloc(n * sizeof(float));
  memcpy(before, buf, n * sizeof(float));
  int rc = unet_load_weights(m, path);
  if (rc == 0) fail_msg("%s was accepted", path);
  if (rc != status) fail_msg("status %s, want %s: %s", dpod_err_name(rc), dpod_err_name(status), unet_last_error(m));
  char quoted[256];
  snprintf(quoted, sizeof quoted, "'%s'", tensor);
  if (!strstr(unet_last_error(m), quoted)) fail_msg("message does not name %s: %s", quoted, unet_last_error(m));
  assert_memory_equal(before, buf, n * sizeof(float)); /* nothing changed */
  free(before);
  unet_free(m);
}

static void weights_refuse_missing_tensor(void **state) {
  (void)state;
  expect_weights_refused(weights_variant("missing.safetensors", "mid_block.resnets.1.conv2.weight", NULL, 0),
                         DPOD_ENOENT, "mid_block.resnets.1.conv2.weight");
}

static void weights_refuse_extra_tensor(void **state) {
  (void)state;
  expect_weights_refused(weights_variant("extra.safetensors", NULL, "mid_block.surprise.weight", 0), DPOD_EFORMAT,
                         "mid_block.surprise.weight");
}

static void weights_refuse_wrong_shape(void **state) {
  (void)state;
  expect_weights_refused(weights_variant("shape.safetensors", NULL, NULL, 1), DPOD_ESHAPE, "conv_out.bias");
}

static void save_load_round_trip_bit_exact(void **state) {
  (void)state;
  char err[512], dir[512], path[600];
  unet_t m = NULL;
  if (unet_create(NULL, NULL, &m, err, sizeof err) != 0) fail_msg("%s", err);
  if (unet_load_weights(m, tu_path("unet.safetensors")) != 0) fail_msg("%s", unet_last_error(m));
  snprintf(dir, sizeof dir, "%s/saved/unet", tmpdir);
  uint64_t bytes = 0;
  if (unet_save(m, dir, &bytes) != 0) fail_msg("%s", unet_last_error(m));
  snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal((uint64_t)sb.st_size, bytes);

  /* config.json is a full diffusers config that builds the same model. */
  char cpath[600];
  snprintf(cpath, sizeof cpath, "%s/config.json", dir);
  char *cfg = tu_read_text(cpath);
  cJSON *j = cJSON_Parse(cfg);
  assert_non_null(j);
  assert_string_equal(cJSON_GetObjectItem(j, "_class_name")->valuestring, "UNet2DConditionModel");
  assert_string_equal(cJSON_GetObjectItem(j, "_diffusers_version")->valuestring, "0.31.0");
  assert_int_equal(cJSON_GetArraySize(j), 50); /* every key of a 0.31 UNet2DConditionModel config.json */
  cJSON_Delete(j);

  unet_t m2 = NULL;
  unet_params p = unet_default_params();
  p.seed = 12345; /* different random init, so a no-op load would show */
  if (unet_create(cfg, &p, &m2, err, sizeof err) != 0) fail_msg("%s", err);
  free(cfg);
  size_t n1, n2;
  const float *a = unet_param_buffer(m, &n1), *b = unet_param_buffer(m2, &n2);
  assert_int_equal(n1, n2);
  assert_true(memcmp(a, b, n1 * sizeof(float)) != 0);
  if (unet_load_weights(m2, path) != 0) fail_msg("%s", unet_last_error(m2));
  assert_memory_equal(a, b, n1 * sizeof(float));

  /* And every saved tensor is the fixture's, byte for byte. */
  st_file *fa = NULL, *fb = NULL;
  assert_int_equal(st_open(tu_path("unet.safetensors"), &fa, err, sizeof err), 0);
  assert_int_equal(st_open(path, &fb, err, sizeof err), 0);
  assert_int_equal(st_count(fa), st_count(fb));
  for (size_t i = 0; i < st_count(fa); i++) {
    const st_tensor *ta = st_at(fa, i), *tb = st_find(fb, ta->name);
    assert_non_null(tb);
    assert_int_equal(tb->dtype, ST_F32);
    assert_int_equal(ta->nbytes, tb->nbytes);
    assert_memory_equal(ta->data, tb->data, ta->nbytes);
  }
  st_close(fa);
  st_close(fb);
  unet_free(m);
  unet_free(m2);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_refuses_unsupported_act_fn),
      cmocka_unit_test(config_refuses_unknown_up_block_type),
      cmocka_unit_test(config_refuses_addition_embed_type),
      cmocka_unit_test(config_refuses_unknown_key),
      cmocka_unit_test(config_accepts_sd2_style_options),
      cmocka_unit_test(config_json_matches_fixture),
      cmocka_unit_test(config_bounds_text_time_widths),
      cmocka_unit_test(config_counts_real_model_params),
      cmocka_unit_test(config_json_matches_sdxl_fixture),
      cmocka_unit_test(weights_refuse_missing_tensor),
      cmocka_unit_test(weights_refuse_extra_tensor),
      cmocka_unit_test(weights_refuse_wrong_shape),
      cmocka_unit_test(save_load_round_trip_bit_exact),
  };
  return CMOCKA_MAIN("config", tests, setup, teardown);
}
