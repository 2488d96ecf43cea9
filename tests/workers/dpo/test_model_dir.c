/* diffusers-native weights in and out, without torch: what a weights path resolves to (file, index,
 * UNet folder, pipeline folder, variant, scheduler config), sharded reading checked shard by shard, the
 * config agreement rule, and `dpo-tool export` read back by the same reader. The weights are the tiny-sd
 * fixture's (diffusers names). Run one case with `test_model_dir NAME`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_util.h"

#include "cmocka_main.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_half.h"
#include "model_dir.h"
#include "model_source.h"
#include "safetensors.h"
#include "schedule.h"

static char dir[256];
static char err[4096];

static int setup(void **state) {
  (void)state;
  err[0] = '\0';
  return test_mkdtemp(dir, sizeof dir, "dpod-model");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(dir);
}

#define assert_err_has(frag)                                                      \
  do {                                                                            \
    if (!strstr(err, (frag))) fail_msg("error \"%s\" lacks \"%s\"", err, (frag)); \
  } while (0)

static void fixture(char *buf, size_t len, const char *rel) { snprintf(buf, len, "%s/%s", test_fixtures_dir(), rel); }

static void mkdir_in(const char *rel) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  assert_int_equal(dpod_mkdirs(path, 0755, 0, err, sizeof err), 0);
}

static void copy_in(const char *from, const char *rel) {
  char *text = NULL, path[1024];
  size_t len = 0;
  if (dpod_read_file(from, 0, &text, &len, err, sizeof err) != 0) fail_msg("%s", err);
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  if (dpod_write_file_atomic(path, text, len, 0, err, sizeof err) != 0) fail_msg("%s", err);
  free(text);
}

static void write_in(const char *rel, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  if (dpod_write_file_atomic(path, text, strlen(text), 0, err, sizeof err) != 0) fail_msg("%s", err);
}

static char *in(const char *rel) {
  static char path[8][1024];
  static int k;
  k = (k + 1) % 8;
  snprintf(path[k], sizeof path[k], "%s%s%s", dir, *rel ? "/" : "", rel);
  return path[k];
}

/* A UNet folder from the tiny-sd fixture: REL/config.json and REL/diffusion_pytorch_model.safetensors. */
static void make_unet_folder(const char *rel) {
  char src[1024], dst[1024];
  mkdir_in(rel);
  fixture(src, sizeof src, "tiny-sd/config.json");
  snprintf(dst, sizeof dst, "%s/config.json", rel);
  copy_in(src, dst);
  fixture(src, sizeof src, "tiny-sd/unet.safetensors");
  snprintf(dst, sizeof dst, "%s/diffusion_pytorch_model.safetensors", rel);
  copy_in(src, dst);
}

/* The model side of a read: the fixture's tensors in file order, packed one after another. */
typedef struct {
  st_file *f;
  model_param *params;
  size_t n, numel;
  float *expect;  /* the fixture's values */
} param_table;

static void table_open(param_table *t) {
  char path[1024];
  fixture(path, sizeof path, "tiny-sd/unet.safetensors");
  if (st_open(path, &t->f, err, sizeof err) != 0) fail_msg("%s", err);
  t->n = st_count(t->f);
  t->params = calloc(t->n, sizeof *t->params);
  assert_non_null(t->params);
  t->numel = 0;
  for (size_t i = 0; i < t->n; i++) {
    const st_tensor *x = st_at(t->f, i);
    t->params[i].name = x->name;
    t->params[i].offset = t->numel;
    t->params[i].ndim = x->ndim;
    memcpy(t->params[i].shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    t->numel += (size_t)x->numel;
  }
  t->expect = malloc(t->numel * sizeof(float));
  assert_non_null(t->expect);
  for (size_t i = 0; i < t->n; i++) st_to_f32(st_at(t->f, i), t->expect + t->params[i].offset);
}

static void table_close(param_table *t) {
  free(t->params);
  free(t->expect);
  st_close(t->f);
}

/* Writes the fixture's tensors [lo, hi) (file order) into REL, as F32 or F16. */
static void write_tensors(const param_table *t, size_t lo, size_t hi, const char *rel, st_dtype dtype) {
  st_writer *w = st_writer_new();
  assert_non_null(w);
  uint16_t *half = malloc(t->numel * sizeof *half);
  assert_non_null(half);
  for (size_t i = lo; i < hi; i++) {
    const model_param *p = &t->params[i];
    const void *data = t->expect + p->offset;
    if (dtype == ST_F16) {
      size_t count = (size_t)st_at(t->f, i)->numel;
      for (size_t e = 0; e < count; e++) half[p->offset + e] = dpod_f32_to_f16(t->expect[p->offset + e]);
      data = half + p->offset;
    }
    assert_int_equal(st_writer_add(w, p->name, dtype, p->ndim, p->shape, data), 0);
  }
  if (st_writer_write(w, in(rel), NULL, err, sizeof err) != 0) fail_msg("%s", err);
  st_writer_free(w);
  free(half);
}

/* An index mapping tensors [0, split) to shard A and the rest to shard B, with `extra` appended inside
 * the weight_map (a JSON fragment, or ""). */
static void write_index(const param_table *t, size_t split, const char *rel, const char *a, const char *b,
                        const char *extra) {
  size_t cap = 64 * 1024, len = 0;
  char *text = malloc(cap);
  assert_non_null(text);
  len += (size_t)snprintf(text + len, cap - len, "{\"metadata\": {\"total_size\": %zu}, \"weight_map\": {",
                          t->numel * 4);
  for (size_t i = 0; i < t->n; i++)
    len += (size_t)snprintf(text + len, cap - len, "%s\"%s\": \"%s\"", i ? ", " : "", t->params[i].name,
                            i < split ? a : b);
  snprintf(text + len, cap - len, "%s}}", extra);
  write_in(rel, text);
  free(text);
}

/* ----------------------------------------------------------------------------------------------- */

static void pipeline_and_unet_folders_resolve_with_their_scheduler(void **state) {
  (void)state;
  make_unet_folder("pipe/unet");
  mkdir_in("pipe/scheduler");
  write_in("pipe/scheduler/scheduler_config.json", model_default_scheduler_json);
  model_source s;
  if (model_source_resolve("model.weights", in("pipe"), "", &s, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(s.unet_dir, in("pipe/unet"));
  assert_string_equal(s.config, in("pipe/unet/config.json"));
  assert_string_equal(s.weights, in("pipe/unet/diffusion_pytorch_model.safetensors"));
  assert_int_equal(s.sharded, 0);
  assert_string_equal(s.scheduler, in("pipe/scheduler/scheduler_config.json"));
  /* The unet/ folder itself finds the same scheduler beside it. */
  if (model_source_resolve("model.weights", in("pipe/unet"), "", &s, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(s.unet_dir, in("pipe/unet"));
  assert_string_equal(s.scheduler, in("pipe/scheduler/scheduler_config.json"));
  /* One inside the UNet folder (a dpod checkpoint) comes first. */
  write_in("pipe/unet/scheduler_config.json", "{}");
  if (model_source_resolve("model.weights", in("pipe"), "", &s, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(s.scheduler, in("pipe/unet/scheduler_config.json"));
  /* A folder with none has none. */
  make_unet_folder("bare");
  if (model_source_resolve("model.weights", in("bare"), "", &s, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(s.scheduler, "");
  /* A file is a file: no folder, no config. */
  if (model_source_resolve("model.weights", in("bare/diffusion_pytorch_model.safetensors"), "fp16", &s, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_string_equal(s.config, "");
  assert_string_equal(s.unet_dir, "");
  assert_string_equal(s.weights, in("bare/diffusion_pytorch_model.safetensors"));
}

static void variant_names_its_file_and_a_missing_one_is_named(void **state) {
  (void)state;
  make_unet_folder("m");
  char src[1024];
  fixture(src, sizeof src, "tiny-sd/unet.safetensors");
  copy_in(src, "m/diffusion_pytorch_model.fp16.safetensors");
  model_source s;
  if (model_source_resolve("model.weights", in("m"), "fp16", &s, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(s.weights, in("m/diffusion_pytorch_model.fp16.safetensors"));
  assert_int_equal(model_source_resolve("model.reference_weights", in("m"), "bf16", &s, err, sizeof err), DPOD_ENOENT);
  assert_err_has("model.reference_weights:");
  assert_err_has("diffusion_pytorch_model.bf16.safetensors");
  assert_err_has("model.variant is \"bf16\"");
}

static void what_is_not_a_model_folder_is_refused_by_name(void **state) {
  (void)state;
  mkdir_in("empty");
  model_source s;
  assert_int_equal(model_source_resolve("model.weights", in("empty"), "", &s, err, sizeof err), DPOD_EINVAL);
  assert_err_has("model.weights:");
  assert_err_has("not a model folder");
  mkdir_in("noweights");
  char src[1024];
  fixture(src, sizeof src, "tiny-sd/config.json");
  copy_in(src, "noweights/config.json");
  assert_int_equal(model_source_resolve("model.weights", in("noweights"), "", &s, err, sizeof err), DPOD_ENOENT);
  assert_err_has("neither diffusion_pytorch_model.safetensors nor diffusion_pytorch_model.safetensors.index.json");
  assert_int_equal(model_source_resolve("model.weights", in("nothing-here"), "", &s, err, sizeof err), DPOD_ENOENT);
  assert_err_has("nothing-here");
}

/* A link inside a model folder must stay inside it, except that a Hugging Face cache's snapshots link into
 * the same model's blobs/. */
static void links_leaving_the_model_folder_are_refused_but_the_hf_cache_works(void **state) {
  (void)state;
  char src[1024];
  fixture(src, sizeof src, "tiny-sd/unet.safetensors");
  mkdir_in("elsewhere");
  copy_in(src, "elsewhere/weights.safetensors");
  mkdir_in("m");
  fixture(src, sizeof src, "tiny-sd/config.json");
  copy_in(src, "m/config.json");
  assert_int_equal(symlink(in("elsewhere/weights.safetensors"), in("m/diffusion_pytorch_model.safetensors")), 0);
  model_source s;
  assert_int_equal(model_source_resolve("model.weights", in("m"), "", &s, err, sizeof err), DPOD_EACCESS);
  assert_err_has("a symbolic link leading outside the model folder");
  /* The same link in a cache layout: models--o--n/snapshots/REV/ -> models--o--n/blobs/. */
  const char *cache = "hub/models--o--n";
  char rel[256];
  snprintf(rel, sizeof rel, "%s/blobs", cache);
  mkdir_in(rel);
  snprintf(rel, sizeof rel, "%s/blobs/0123abcd", cache);
  fixture(src, sizeof src, "tiny-sd/unet.safetensors");
  copy_in(src, rel);
  snprintf(rel, sizeof rel, "%s/blobs/4567cdef", cache);
  fixture(src, sizeof src, "tiny-sd/config.json");
  copy_in(src, rel);
  snprintf(rel, sizeof rel, "%s/snapshots/rev1/unet", cache);
  mkdir_in(rel);
  assert_int_equal(symlink("../../../blobs/0123abcd", in("hub/models--o--n/snapshots/rev1/unet/diffusion_pytorch_model.safetensors")), 0);
  assert_int_equal(symlink("../../../blobs/4567cdef", in("hub/models--o--n/snapshots/rev1/unet/config.json")), 0);
  if (model_source_resolve("model.weights", in("hub/models--o--n/snapshots/rev1"), "", &s, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_string_equal(s.unet_dir, in("hub/models--o--n/snapshots/rev1/unet"));
  /* A shard linked out of its index's folder is refused too. */
  param_table t;
  table_open(&t);
  mkdir_in("sh");
  write_tensors(&t, 0, 10, "sh/a.safetensors", ST_F32);
  write_tensors(&t, 10, t.n, "elsewhere/b.safetensors", ST_F32);
  assert_int_equal(symlink(in("elsewhere/b.safetensors"), in("sh/b.safetensors")), 0);
  write_index(&t, 10, "sh/x.index.json", "a.safetensors", "b.safetensors", "");
  model_index idx;
  assert_int_equal(model_index_load(in("sh/x.index.json"), &idx, err, sizeof err), DPOD_EACCESS);
  assert_err_has("b.safetensors: a symbolic link leading outside");
  model_index_free(&idx);
  table_close(&t);
}

static void sharded_weights_read_as_the_single_file_does(void **state) {
  (void)state;
  param_table t;
  table_open(&t);
  mkdir_in("sh");
  size_t split = t.n / 3;
  write_tensors(&t, 0, split, "sh/diffusion_pytorch_model-00001-of-00002.safetensors", ST_F32);
  write_tensors(&t, split, t.n, "sh/diffusion_pytorch_model-00002-of-00002.safetensors", ST_F32);
  write_index(&t, split, "sh/diffusion_pytorch_model.safetensors.index.json",
              "diffusion_pytorch_model-00001-of-00002.safetensors",
              "diffusion_pytorch_model-00002-of-00002.safetensors", "");
  char src[1024];
  fixture(src, sizeof src, "tiny-sd/config.json");
  copy_in(src, "sh/config.json");
  model_source s;
  if (model_source_resolve("model.weights", in("sh"), "", &s, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(s.sharded, 1);
  assert_string_equal(s.weights, in("sh/diffusion_pytorch_model.safetensors.index.json"));
  float *got = calloc(t.numel, sizeof *got);
  assert_non_null(got);
  if (model_weights_read(s.weights, s.sharded, t.params, t.n, got, t.numel, err, sizeof err) != 0) fail_msg("%s", err);
  assert_memory_equal(got, t.expect, t.numel * sizeof(float));
  free(got);
  table_close(&t);
}

static void an_index_that_disagrees_with_its_shards_is_refused_by_tensor(void **state) {
  (void)state;
  param_table t;
  table_open(&t);
  mkdir_in("sh");
  size_t split = t.n / 2;
  write_tensors(&t, 0, split, "sh/a.safetensors", ST_F32);
  write_tensors(&t, split, t.n, "sh/b.safetensors", ST_F32);
  float *got = calloc(t.numel, sizeof *got);
  assert_non_null(got);
  /* The index puts one tensor more in a than a holds: a shard is missing a mapped tensor, and b holds one
   * the index does not map to it. */
  write_index(&t, split + 1, "sh/x.index.json", "a.safetensors", "b.safetensors", "");
  assert_int_equal(model_weights_read(in("sh/x.index.json"), 1, t.params, t.n, got, t.numel, err, sizeof err),
                   DPOD_EFORMAT);
  assert_err_has("the index and its shards disagree");
  assert_err_has(t.params[split].name);
  assert_err_has("mapped but not in their shard");
  assert_err_has("in a shard but not mapped to it");
  /* A shard that is not there. */
  write_index(&t, split, "sh/y.index.json", "a.safetensors", "gone.safetensors", "");
  assert_int_equal(model_weights_read(in("sh/y.index.json"), 1, t.params, t.n, got, t.numel, err, sizeof err),
                   DPOD_ENOENT);
  assert_err_has("gone.safetensors");
  /* A shard outside the index's folder. */
  write_index(&t, split, "sh/z.index.json", "a.safetensors", "../b.safetensors", "");
  assert_int_equal(model_weights_read(in("sh/z.index.json"), 1, t.params, t.n, got, t.numel, err, sizeof err),
                   DPOD_EFORMAT);
  assert_err_has("plain file name");
  /* An index without a weight_map. */
  write_in("sh/w.index.json", "{\"metadata\": {}}");
  assert_int_equal(model_weights_read(in("sh/w.index.json"), 1, t.params, t.n, got, t.numel, err, sizeof err),
                   DPOD_EFORMAT);
  assert_err_has("weight_map");
  /* Nothing was written by any of them. */
  for (size_t i = 0; i < t.numel; i++) assert_true(got[i] == 0.0f);
  free(got);
  table_close(&t);
}

static void missing_unexpected_and_misshaped_tensors_are_named_and_nothing_changes(void **state) {
  (void)state;
  param_table t;
  table_open(&t);
  float *got = calloc(t.numel, sizeof *got);
  assert_non_null(got);
  char path[1024];
  fixture(path, sizeof path, "tiny-sd/unet.safetensors");
  /* The model lacks the file's first tensor and wants one the file lacks. */
  const char *first = t.params[0].name;
  t.params[0].name = "not.in.the.file";
  assert_int_equal(model_weights_read(path, 0, t.params, t.n, got, t.numel, err, sizeof err), DPOD_ENOENT);
  assert_err_has("1 missing ('not.in.the.file')");
  assert_err_has(first);
  assert_err_has("1 unexpected");
  t.params[0].name = first;
  t.params[1].shape[0] += 1;
  assert_int_equal(model_weights_read(path, 0, t.params, t.n, got, t.numel, err, sizeof err), DPOD_ESHAPE);
  assert_err_has("mis-shaped");
  assert_err_has(t.params[1].name);
  for (size_t i = 0; i < t.numel; i++) assert_true(got[i] == 0.0f);
  free(got);
  table_close(&t);
}

static void configs_agree_up_to_provenance_keys(void **state) {
  (void)state;
  const char *a = "{\"_class_name\": \"UNet2DConditionModel\", \"sample_size\": 8, \"cross_attention_dim\": 32}";
  const char *b = "{\"_name_or_path\": \"x\", \"cross_attention_dim\": 32, \"sample_size\": 8}";
  assert_int_equal(model_config_agree(a, "A", b, "B", err, sizeof err), 0);
  const char *c = "{\"sample_size\": 8, \"cross_attention_dim\": 64}";
  assert_int_equal(model_config_agree(a, "A", c, "C", err, sizeof err), DPOD_EINVAL);
  assert_err_has("A and C disagree on 'cross_attention_dim'");
  const char *d = "{\"sample_size\": 8, \"cross_attention_dim\": 32, \"in_channels\": 4}";
  assert_int_equal(model_config_agree(a, "A", d, "D", err, sizeof err), DPOD_EINVAL);
  assert_err_has("'in_channels' is set only in D");
  assert_int_equal(model_config_agree(a, "A", "[1]", "E", err, sizeof err), DPOD_EFORMAT);
  assert_err_has("E: not a JSON object");
}

static void a_spec_naming_folders_is_checked_as_dpod_does_at_submit(void **state) {
  (void)state;
  make_unet_folder("policy");
  make_unet_folder("ref");
  Dpod__V1__ModelSpec m = DPOD__V1__MODEL_SPEC__INIT;
  m.config = "";
  m.weights = in("policy");
  m.reference_weights = in("ref");
  m.scheduler_config = "";
  m.variant = "";
  if (model_spec_check(&m, err, sizeof err) != 0) fail_msg("%s", err);
  /* The config text a job builds: the policy folder's. */
  model_source p, r;
  assert_int_equal(model_source_resolve("model.weights", m.weights, "", &p, err, sizeof err), 0);
  assert_int_equal(model_source_resolve("model.reference_weights", m.reference_weights, "", &r, err, sizeof err), 0);
  char *text = NULL;
  const char *name = NULL;
  assert_int_equal(model_spec_config(&m, &p, &r, &text, &name, err, sizeof err), 0);
  assert_non_null(text);
  assert_string_equal(name, p.config);
  free(text);
  /* A reference whose config differs is refused naming both fields and the key. */
  write_in("ref/config.json", "{\"sample_size\": 16}");
  assert_int_equal(model_spec_check(&m, err, sizeof err), DPOD_EINVAL);
  assert_err_has("model.weights (");
  assert_err_has("model.reference_weights (");
  /* model.config given with a folder must agree with it. */
  m.reference_weights = "";
  write_in("other.json", "{\"sample_size\": 16}");
  m.config = in("other.json");
  assert_int_equal(model_spec_check(&m, err, sizeof err), DPOD_EINVAL);
  assert_err_has("model.config (");
  m.config = "";
  /* Paths are absolute; a variant needs a folder to apply to. */
  m.weights = "policy";
  assert_int_equal(model_spec_check(&m, err, sizeof err), DPOD_EINVAL);
  assert_err_has("model.weights: must be an absolute path");
  m.weights = in("policy/diffusion_pytorch_model.safetensors");
  m.variant = "fp16";
  assert_int_equal(model_spec_check(&m, err, sizeof err), DPOD_EINVAL);
  assert_err_has("model.variant:");
  /* An index whose shard is missing is refused at submission. */
  m.variant = "";
  write_in("policy/w.safetensors.index.json", "{\"weight_map\": {\"conv_in.weight\": \"shard-1.safetensors\"}}");
  m.weights = in("policy/w.safetensors.index.json");
  assert_int_equal(model_spec_check(&m, err, sizeof err), DPOD_ENOENT);
  assert_err_has("model.weights:");
  assert_err_has("shard-1.safetensors");
}

/* Reads the weights of folder REL back through the loader, into a fresh buffer (caller frees). */
static float *read_back(const param_table *t, const char *rel, const char *variant) {
  model_source s;
  if (model_source_resolve("model.weights", in(rel), variant, &s, err, sizeof err) != 0) fail_msg("%s", err);
  float *got = calloc(t->numel, sizeof *got);
  assert_non_null(got);
  if (model_weights_read(s.weights, s.sharded, t->params, t->n, got, t->numel, err, sizeof err) != 0) fail_msg("%s", err);
  return got;
}

/* The export's tensors: the fixture's names and shapes, in the fixture's order, of `dtype`. */
static void assert_same_tensors(const param_table *t, const char *path, st_dtype dtype) {
  st_file *f = NULL;
  if (st_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(st_count(f), t->n);
  for (size_t i = 0; i < t->n; i++) {
    const st_tensor *x = st_at(f, i);
    assert_string_equal(x->name, t->params[i].name);
    assert_int_equal(x->ndim, t->params[i].ndim);
    assert_memory_equal(x->shape, t->params[i].shape, sizeof(int64_t) * (size_t)x->ndim);
    assert_int_equal(x->dtype, dtype);
  }
  st_close(f);
}

static void export_writes_a_diffusers_folder_that_reads_back_bit_identical(void **state) {
  (void)state;
  param_table t;
  table_open(&t);
  make_unet_folder("ckpt");
  write_in("ckpt/scheduler_config.json", "{\"num_train_timesteps\": 1000, \"beta_start\": 0.0001, \"beta_end\": 0.02}");
  model_export_params p = model_export_default_params();
  char unet_dir[MODEL_PATH_MAX];
  if (model_export(in("ckpt"), in("out"), &p, unet_dir, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(unet_dir, in("out"));
  /* config.json is the model's config, byte for byte. */
  char *a = NULL, *b = NULL;
  assert_int_equal(dpod_read_file(in("ckpt/config.json"), 0, &a, NULL, err, sizeof err), 0);
  assert_int_equal(dpod_read_file(in("out/config.json"), 0, &b, NULL, err, sizeof err), 0);
  assert_string_equal(a, b);
  free(a);
  free(b);
  assert_same_tensors(&t, in("out/diffusion_pytorch_model.safetensors"), ST_F32);
  float *got = read_back(&t, "out", "");
  assert_memory_equal(got, t.expect, t.numel * sizeof(float));
  free(got);
  table_close(&t);
}

static void export_fp16_holds_the_f16_rounding(void **state) {
  (void)state;
  param_table t;
  table_open(&t);
  make_unet_folder("ckpt");
  model_export_params p = model_export_default_params();
  p.variant = "fp16";
  if (model_export(in("ckpt"), in("out"), &p, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  assert_same_tensors(&t, in("out/diffusion_pytorch_model.fp16.safetensors"), ST_F16);
  assert_int_equal(access(in("out/diffusion_pytorch_model.safetensors"), F_OK), -1);
  float *got = read_back(&t, "out", "fp16");
  size_t differ = 0;
  for (size_t i = 0; i < t.numel; i++) {
    float want = dpod_f16_to_f32(dpod_f32_to_f16(t.expect[i]));
    if (memcmp(&got[i], &want, sizeof want) != 0) fail_msg("element %zu: %g, expected %g", i, got[i], want);
    differ += got[i] != t.expect[i];
  }
  assert_true(differ > t.numel / 2); /* it did round */
  free(got);
  table_close(&t);
}

static void export_pipeline_puts_the_scheduler_beside_the_unet(void **state) {
  (void)state;
  make_unet_folder("ckpt");
  const char *sched = "{\"num_train_timesteps\": 1000, \"beta_start\": 0.0001, \"beta_end\": 0.02}";
  write_in("ckpt/scheduler_config.json", sched);
  model_export_params p = model_export_default_params();
  p.pipeline = 1;
  char unet_dir[MODEL_PATH_MAX];
  if (model_export(in("ckpt"), in("pipe"), &p, unet_dir, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(unet_dir, in("pipe/unet"));
  char *text = NULL;
  assert_int_equal(dpod_read_file(in("pipe/scheduler/scheduler_config.json"), 0, &text, NULL, err, sizeof err), 0);
  assert_string_equal(text, sched);
  free(text);
  /* The pipeline folder is a model folder with that schedule. */
  model_source s;
  if (model_source_resolve("model.weights", in("pipe"), "", &s, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(s.scheduler, in("pipe/scheduler/scheduler_config.json"));
  /* A source without a schedule exports SD 1.5's. */
  make_unet_folder("bare");
  if (model_export(in("bare"), in("pipe2"), &p, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(dpod_read_file(in("pipe2/scheduler/scheduler_config.json"), 0, &text, NULL, err, sizeof err), 0);
  assert_string_equal(text, model_default_scheduler_json);
  free(text);
}

static void export_refuses_a_damaged_checkpoint(void **state) {
  (void)state;
  char partial[1024];
  assert_int_equal(ckpt_begin(dir, 3, err, sizeof err), 0);
  ckpt_dir(dir, 3, 1, partial, sizeof partial);
  const char *rel = partial + strlen(dir) + 1;
  make_unet_folder(rel);
  ckpt_rank_state st = {.world_size = 1, .rank = 0, .step = 3, .data_position = 6, .seed = 1};
  assert_int_equal(ckpt_write_rank_state(partial, &st, err, sizeof err), 0);
  assert_int_equal(ckpt_write_text(partial, "scheduler_config.json", model_default_scheduler_json, err, sizeof err), 0);
  if (ckpt_commit(dir, 3, 1, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  char ck[1024];
  ckpt_dir(dir, 3, 0, ck, sizeof ck);
  if (ckpt_verify(ck, NULL, err, sizeof err) != 0) fail_msg("the scheduler config is part of the checkpoint: %s", err);
  model_export_params p = model_export_default_params();
  if (model_export(ck, in("ok"), &p, NULL, err, sizeof err) != 0) fail_msg("%s", err);
  /* Change the scheduler config after the commit: the checkpoint no longer verifies, nor exports. */
  char path[1100];
  snprintf(path, sizeof path, "%s/scheduler_config.json", ck);
  assert_int_equal(dpod_write_file_atomic(path, "{}", 2, 0, err, sizeof err), 0);
  assert_int_not_equal(model_export(ck, in("bad"), &p, NULL, err, sizeof err), 0);
  assert_err_has("scheduler_config.json");
}

static void the_default_scheduler_json_is_the_default_schedule(void **state) {
  (void)state;
  dpo_schedule a, b;
  assert_int_equal(dpo_schedule_default(&a), 0);
  if (dpo_schedule_from_json(&b, model_default_scheduler_json, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(a.num_train_timesteps, b.num_train_timesteps);
  assert_int_equal(a.prediction_type, b.prediction_type);
  assert_memory_equal(a.alphas_cumprod, b.alphas_cumprod, sizeof(double) * (size_t)a.num_train_timesteps);
  dpo_schedule_free(&a);
  dpo_schedule_free(&b);
}

int main(int argc, char **argv) {
#define CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest all[] = {
      CASE(pipeline_and_unet_folders_resolve_with_their_scheduler),
      CASE(variant_names_its_file_and_a_missing_one_is_named),
      CASE(what_is_not_a_model_folder_is_refused_by_name),
      CASE(sharded_weights_read_as_the_single_file_does),
      CASE(links_leaving_the_model_folder_are_refused_but_the_hf_cache_works),
      CASE(an_index_that_disagrees_with_its_shards_is_refused_by_tensor),
      CASE(missing_unexpected_and_misshaped_tensors_are_named_and_nothing_changes),
      CASE(configs_agree_up_to_provenance_keys),
      CASE(a_spec_naming_folders_is_checked_as_dpod_does_at_submit),
      CASE(export_writes_a_diffusers_folder_that_reads_back_bit_identical),
      CASE(export_fp16_holds_the_f16_rounding),
      CASE(export_pipeline_puts_the_scheduler_beside_the_unet),
      CASE(export_refuses_a_damaged_checkpoint),
      CASE(the_default_scheduler_json_is_the_default_schedule),
  };
  return CMOCKA_MAIN("model_dir", all, NULL, NULL);
}
