/* Job specs: defaults, the YAML and --set mapping, validation, and the wire round trip.
 * Every refusal must name the key the user got wrong; that is most of what these tests check.
 * `test_job_spec NAME` runs one test (ctest registers each on its own). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cmocka_main.h"

#include "dpod_error.h"
#include "job_spec.h"

#ifndef EXAMPLE_JOB
#error "EXAMPLE_JOB must name deploy/examples/tiny-dpo.yaml"
#endif

static Dpod__V1__JobSpec *spec;
static char err[1024];

static int setup(void **state) {
  (void)state;
  spec = job_spec_new();
  err[0] = '\0';
  return spec ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  spec = NULL;
  return 0;
}

static int parse(const char *yaml) { return job_spec_parse_yaml(spec, yaml, strlen(yaml), "job.yaml", err, sizeof err); }

/* The message must mention every given fragment. */
#define assert_err_has(frag)                                                        \
  do {                                                                              \
    if (!strstr(err, (frag))) fail_msg("error \"%s\" lacks \"%s\"", err, (frag));  \
  } while (0)

static void refused_yaml(const char *yaml, const char *key) {
  err[0] = '\0';
  assert_int_equal(parse(yaml), DPOD_EINVAL);
  assert_err_has(key);
  assert_err_has("job.yaml:");
}

static void refused_validate(unsigned max_ranks, const char *key_prefix) {
  err[0] = '\0';
  assert_int_equal(job_spec_validate(spec, max_ranks, err, sizeof err), DPOD_EINVAL);
  if (strncmp(err, key_prefix, strlen(key_prefix)) != 0) fail_msg("error \"%s\" does not start with \"%s\"", err, key_prefix);
}

static void set_ok(const char *key, const char *value) {
  if (job_spec_set(spec, key, value, err, sizeof err) != 0) fail_msg("set %s=%s: %s", key, value, err);
}

/* ----------------------------------------------------------------------------------------------- */

/* Fails unless every optional field of msg (and of its sub-messages) is set. */
static void assert_every_field_set(const ProtobufCMessage *msg) {
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->label != PROTOBUF_C_LABEL_OPTIONAL || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) continue;
    const void *member = (const char *)msg + f->offset;
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      const ProtobufCMessage *sub = *(ProtobufCMessage *const *)member;
      if (!sub) fail_msg("%s.%s: no sub-message", d->name, f->name);
      assert_every_field_set(sub);
    } else if (f->type == PROTOBUF_C_TYPE_STRING) {
      const char *str = *(char *const *)member;
      /* protobuf-c packs a string only when it is not the default's own pointer. */
      if (!str || str == f->default_value) fail_msg("%s.%s: not set", d->name, f->name);
    } else if (!*(const protobuf_c_boolean *)((const char *)msg + f->quantifier_offset)) {
      fail_msg("%s.%s: not set", d->name, f->name);
    }
  }
}

/* The contract says "normalized: every default filled in": a spec that set only its name comes back
 * from the wire with every field there, each holding its default, and normalizing again changes
 * nothing. */
static void normalize_fills_every_default_and_it_survives_the_wire(void **state) {
  (void)state;
  Dpod__V1__JobSpec bare = DPOD__V1__JOB_SPEC__INIT;
  bare.name = "bare";
  uint8_t buf[4096];
  size_t n = dpod__v1__job_spec__pack(&bare, buf);
  Dpod__V1__JobSpec *old = dpod__v1__job_spec__unpack(NULL, n, buf);
  assert_non_null(old);
  assert_null(old->train); /* what an older dpod stored */
  assert_int_equal(job_spec_normalize(old), 0);
  assert_every_field_set(&old->base);
  assert_true(old->train->beta == 5000);
  assert_string_equal(old->data->dataset, "builtin:synthetic");
  assert_string_equal(old->name, "bare");
  assert_true(dpod__v1__job_spec__get_packed_size(old) < sizeof buf);
  size_t n1 = dpod__v1__job_spec__pack(old, buf);
  assert_int_equal(job_spec_normalize(old), 0);
  uint8_t buf2[4096];
  assert_int_equal(dpod__v1__job_spec__pack(old, buf2), n1);
  assert_memory_equal(buf, buf2, n1);
  Dpod__V1__JobSpec *back = dpod__v1__job_spec__unpack(NULL, n1, buf);
  assert_non_null(back);
  assert_every_field_set(&back->base); /* every field was on the wire */
  assert_true(back->train->has_beta);
  assert_int_equal(back->data->pairs, 64);
  protobuf_c_message_free_unpacked(&back->base, NULL);
  protobuf_c_message_free_unpacked(&old->base, NULL);
}

static void defaults_present_after_new(void **state) {
  (void)state;
  assert_non_null(spec->model);
  assert_non_null(spec->data);
  assert_non_null(spec->train);
  assert_string_equal(spec->name, "");
  assert_int_equal(spec->ranks, 1);
  assert_int_equal(spec->threads_per_rank, 1);
  assert_string_equal(spec->model->config, "");
  assert_string_equal(spec->data->dataset, "builtin:synthetic");
  assert_int_equal(spec->data->pairs, 64);
  assert_int_equal(spec->data->prompts, 8);
  assert_int_equal(spec->data->seed, 1234);
  assert_int_equal(spec->train->objective, DPOD__V1__OBJECTIVE__OBJECTIVE_DPO);
  assert_int_equal(spec->train->steps, 20);
  assert_true(spec->train->beta == 5000);
  assert_true(spec->train->learning_rate == 1e-5);
  assert_true(spec->train->adam_beta2 == 0.999);
  assert_int_equal(spec->train->keep_last, 2);
  assert_true(spec->train->has_beta);  /* every default is filled in, marked set: on the wire too */
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
}

static void loads_example_job_file(void **state) {
  (void)state;
  if (job_spec_load_yaml(spec, EXAMPLE_JOB, err, sizeof err) != 0) fail_msg("%s", err);
  assert_string_equal(spec->name, "tiny-dpo");
  assert_int_equal(spec->ranks, 2);
  assert_string_equal(spec->data->dataset, "builtin:synthetic");
  assert_true(spec->train->has_steps);
  assert_int_equal(spec->train->objective, DPOD__V1__OBJECTIVE__OBJECTIVE_DPO);
  if (job_spec_validate(spec, 2, err, sizeof err) != 0) fail_msg("%s", err);
}

static void loads_every_type(void **state) {
  (void)state;
  int rc = parse("name: \"my job\"\n"
                 "ranks: 3\n"
                 "model: {config: /tmp/unet.json}\n"
                 "data:\n  pairs: 48\n  seed: 18446744073709551615\n"
                 "train:\n  objective: sft\n  beta: 2.5e3\n  scale_lr: yes\n  warmup_fraction: 0.25\n"
                 "train.keep_last: 5\n");
  if (rc) fail_msg("%s", err);
  assert_string_equal(spec->name, "my job");
  assert_int_equal(spec->ranks, 3);
  assert_string_equal(spec->model->config, "/tmp/unet.json");
  assert_int_equal(spec->data->pairs, 48);
  assert_true(spec->data->seed == UINT64_MAX);
  assert_int_equal(spec->train->objective, DPOD__V1__OBJECTIVE__OBJECTIVE_SFT);
  assert_true(spec->train->beta == 2500);
  assert_true(spec->train->scale_lr);
  assert_true(spec->train->warmup_fraction == 0.25);
  assert_int_equal(spec->train->keep_last, 5);
  assert_int_equal(spec->train->steps, 20);  /* untouched keys keep their defaults */
}

static void empty_file_and_empty_section_change_nothing(void **state) {
  (void)state;
  assert_int_equal(parse(""), 0);
  assert_int_equal(parse("# only a comment\n"), 0);
  assert_int_equal(parse("train:\n  # beta: 1\nranks: 2\n"), 0);
  assert_int_equal(spec->ranks, 2);
  assert_true(spec->train->beta == 5000);
}

static void refuses_unknown_key_top_level(void **state) {
  (void)state;
  refused_yaml("ranks: 1\nbetta: 2\n", "'betta'");
  assert_err_has("job.yaml:2:");
  assert_err_has("unknown key");
}

static void refuses_unknown_key_nested(void **state) {
  (void)state;
  refused_yaml("train:\n  steps: 3\n  betta: 2000\n", "'train.betta'");
  assert_err_has("job.yaml:3:");
  assert_err_has("did you mean 'train.beta'");
}

static void suggests_section_for_misplaced_key(void **state) {
  (void)state;
  refused_yaml("beta: 2000\n", "'beta'");
  assert_err_has("train.beta");
}

static void refuses_string_for_int(void **state) {
  (void)state;
  refused_yaml("train:\n  steps: abc\n", "train.steps");
  refused_yaml("data: {pairs: 1.5}\n", "data.pairs");
  refused_yaml("train: {beta: lots}\n", "train.beta");
  refused_yaml("train: {scale_lr: maybe}\n", "train.scale_lr");
}

static void refuses_negative_and_overflowing_ints(void **state) {
  (void)state;
  refused_yaml("ranks: -1\n", "ranks");
  assert_err_has("negative");
  refused_yaml("train: {steps: 4294967296}\n", "train.steps");
  assert_err_has("out of range");
  refused_yaml("data: {seed: 18446744073709551616}\n", "data.seed");
}

static void refuses_non_finite_doubles(void **state) {
  (void)state;
  refused_yaml("train: {beta: .inf}\n", "train.beta");
  refused_yaml("train: {learning_rate: nan}\n", "train.learning_rate");
  refused_yaml("train: {beta: 1e999}\n", "train.beta");
}

static void refuses_scalar_vs_mapping(void **state) {
  (void)state;
  refused_yaml("train: 5\n", "'train'");
  assert_err_has("mapping");
  refused_yaml("ranks:\n  count: 2\n", "'ranks'");
  refused_yaml("train:\n  beta: [1, 2]\n", "'train.beta'");
  refused_yaml("ranks.count: 2\n", "ranks.count");
  refused_yaml("- ranks: 2\n", "mapping");
}

static void refuses_missing_value(void **state) {
  (void)state;
  refused_yaml("ranks:\n", "'ranks'");
  assert_err_has("missing value");
}

static void refuses_duplicate_keys(void **state) {
  (void)state;
  refused_yaml("ranks: 1\nranks: 2\n", "'ranks'");
  assert_err_has("duplicate");
  assert_err_has("line 1");
  refused_yaml("train: {beta: 1}\ntrain: {steps: 2}\n", "'train'");
  assert_err_has("duplicate");
  refused_yaml("train.beta: 1\ntrain:\n  beta: 2\n", "'train.beta'");
  assert_err_has("duplicate");
}

static void refuses_bad_enum(void **state) {
  (void)state;
  refused_yaml("train: {objective: ppo}\n", "train.objective");
  assert_err_has("dpo, sft");
}

static void accepts_enum_spellings(void **state) {
  (void)state;
  const char *ok[] = {"sft", "SFT", "OBJECTIVE_SFT", "objective_sft"};
  for (size_t i = 0; i < 4; i++) {
    set_ok("train.objective", "dpo");
    set_ok("train.objective", ok[i]);
    assert_int_equal(spec->train->objective, DPOD__V1__OBJECTIVE__OBJECTIVE_SFT);
  }
  assert_true(spec->train->has_objective);
}

static void refuses_invalid_yaml_with_line(void **state) {
  (void)state;
  refused_yaml("train:\n  beta: [1\n", "invalid YAML");
}

static void refuses_second_document(void **state) {
  (void)state;
  refused_yaml("ranks: 1\n---\nranks: 2\n", "one YAML document");
}

static void load_names_missing_file(void **state) {
  (void)state;
  assert_int_equal(job_spec_load_yaml(spec, "/nonexistent/job.yaml", err, sizeof err), DPOD_ENOENT);
  assert_err_has("/nonexistent/job.yaml");
}

/* ----------------------------------------------------------------------------------------------- */

static void set_overrides_values(void **state) {
  (void)state;
  set_ok("train.beta", "2000");
  set_ok("name", "override");
  set_ok("ranks", "4");
  set_ok("train.scale_lr", "true");
  set_ok("data.dataset", "/data/pairs");
  set_ok("model.weights", "/w/unet.safetensors");
  set_ok("model.weights", "/w/other.safetensors");  /* replacing a set string frees the old one */
  assert_true(spec->train->beta == 2000);
  assert_true(spec->train->has_beta);
  assert_string_equal(spec->name, "override");
  assert_int_equal(spec->ranks, 4);
  assert_true(spec->has_ranks);
  assert_true(spec->train->scale_lr);
  assert_string_equal(spec->data->dataset, "/data/pairs");
  assert_string_equal(spec->model->weights, "/w/other.safetensors");
}

static void set_after_yaml_wins(void **state) {
  (void)state;
  assert_int_equal(parse("train: {beta: 100}\n"), 0);
  set_ok("train.beta", "300");
  assert_true(spec->train->beta == 300);
}

static void refused_set(const char *key, const char *value, const char *frag) {
  err[0] = '\0';
  assert_int_equal(job_spec_set(spec, key, value, err, sizeof err), DPOD_EINVAL);
  assert_err_has(key);
  if (frag) assert_err_has(frag);
}

static void set_refuses_bad_input(void **state) {
  (void)state;
  refused_set("train.betta", "1", "did you mean 'train.beta'");
  refused_set("nosuch", "1", "unknown key");
  refused_set("train.steps", "abc", NULL);
  refused_set("train.steps", "", NULL);
  refused_set("train.steps", " 3", NULL);
  refused_set("ranks", "-1", "negative");
  refused_set("ranks", "4294967296", "out of range");
  refused_set("data.seed", "18446744073709551616", "out of range");
  refused_set("train", "1", "section");
  refused_set("ranks.x", "1", "not a section");
  refused_set("train.", "1", NULL);
  refused_set("train.beta", "inf", "finite");
  refused_set("train.beta", "1.5x", NULL);
  refused_set("train.scale_lr", "maybe", NULL);
  refused_set("train.objective", "ppo", "dpo, sft");
  /* Nothing was changed by the refusals. */
  assert_int_equal(spec->ranks, 1);
  assert_int_equal(spec->train->steps, 20);
}

/* ----------------------------------------------------------------------------------------------- */

static void validate_refuses_nonpositive_beta(void **state) {
  (void)state;
  set_ok("train.beta", "0");
  refused_validate(0, "train.beta:");
  set_ok("train.beta", "-5");
  refused_validate(0, "train.beta:");
}

static void validate_refuses_zero_ranks(void **state) {
  (void)state;
  set_ok("ranks", "0");
  refused_validate(0, "ranks:");
}

static void validate_refuses_ranks_above_slots(void **state) {
  (void)state;
  set_ok("ranks", "4");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  assert_int_equal(job_spec_validate(spec, 4, err, sizeof err), 0);
  refused_validate(2, "ranks:");
  assert_err_has("2 worker slots");
}

static void validate_refuses_warmup_fraction_one(void **state) {
  (void)state;
  set_ok("train.warmup_fraction", "1.0");
  refused_validate(0, "train.warmup_fraction:");
  set_ok("train.warmup_fraction", "-0.1");
  refused_validate(0, "train.warmup_fraction:");
  set_ok("train.warmup_fraction", "0.99");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
}

static void validate_refuses_each_bad_value(void **state) {
  (void)state;
  static const struct {
    const char *key, *value, *prefix;
  } cases[] = {
      {"threads_per_rank", "0", "threads_per_rank:"},
      {"train.steps", "0", "train.steps:"},
      {"train.batch_size", "0", "train.batch_size:"},
      {"train.grad_accum", "0", "train.grad_accum:"},
      {"train.learning_rate", "0", "train.learning_rate:"},
      {"train.warmup_steps", "21", "train.warmup_steps:"},
      {"train.adam_beta1", "1", "train.adam_beta1:"},
      {"train.adam_beta2", "-0.5", "train.adam_beta2:"},
      {"train.adam_eps", "0", "train.adam_eps:"},
      {"train.weight_decay", "-1", "train.weight_decay:"},
      {"train.max_grad_norm", "-1", "train.max_grad_norm:"},
      {"train.offset_noise", "-0.1", "train.offset_noise:"},
      {"train.keep_last", "0", "train.keep_last:"},
      {"data.pairs", "0", "data.pairs:"},
      {"data.prompts", "0", "data.prompts:"},
      {"data.text_len", "0", "data.text_len:"},
      {"data.dataset", "", "data.dataset:"},
      {"data.dataset", "builtin:imagenet", "data.dataset:"},
      {"name", "tab\there", "name:"},
      {"name", "c1\xc2\x85" "control", "name:"}, /* U+0085, a C1 control */
      {"ranks", "4097", "ranks:"},
      {"threads_per_rank", "4294967295", "threads_per_rank:"},
      {"max_restarts", "101", "max_restarts:"},
      {"data.pairs", "16777217", "data.pairs:"},
      {"data.prompts", "16777217", "data.prompts:"},
      {"data.text_len", "1025", "data.text_len:"},
      {"data.split", "", "data.split:"},
      {"data.split", "../train", "data.split:"},
      {"data.validation_split", ".hidden", "data.validation_split:"},
      {"data.caption_dropout", "-3", "data.caption_dropout:"},
      {"data.caption_dropout", "7", "data.caption_dropout:"},
      {"train.steps", "100000001", "train.steps:"},
      {"train.batch_size", "65537", "train.batch_size:"},
      {"train.grad_accum", "65537", "train.grad_accum:"},
      {"train.learning_rate", "2", "train.learning_rate:"},
      {"train.adam_eps", "2", "train.adam_eps:"},
      {"train.weight_decay", "1e7", "train.weight_decay:"},
      {"train.offset_noise", "101", "train.offset_noise:"},
      {"train.checkpoint_every", "100000001", "train.checkpoint_every:"},
      {"train.keep_last", "10001", "train.keep_last:"},
      {"train.eval_every", "100000001", "train.eval_every:"},
      {"train.eval_pairs", "16777217", "train.eval_pairs:"},
      {"train.eval_samples", "65537", "train.eval_samples:"},
      {"train.eval_sample_steps", "0", "train.eval_sample_steps:"},
      {"train.eval_sample_steps", "1001", "train.eval_sample_steps:"},
      {"train.eval_guidance", "-1", "train.eval_guidance:"},
      {"train.eval_guidance", "1001", "train.eval_guidance:"},
      {"train.heartbeat_timeout", "-1", "train.heartbeat_timeout:"},
      {"train.heartbeat_timeout", "604801", "train.heartbeat_timeout:"},
      {"resources.ranks_per_node", "4097", "resources.ranks_per_node:"},
      {"resources.gpus_per_rank", "65", "resources.gpus_per_rank:"},
      {"resources.memory_mb", "67108865", "resources.memory_mb:"},
      {"resources.time_limit_minutes", "527041", "resources.time_limit_minutes:"},
      {"resources.partition", "gpu debug", "resources.partition:"},
      {"resources.account", "lab;rm", "resources.account:"},
      {"resources.qos", "high\nx", "resources.qos:"},
      {"resources.constraint", "a100 $x", "resources.constraint:"},
      {"resources.sbatch_options", "--account=other", "resources.sbatch_options:"},
      {"resources.sbatch_options", "exclusive", "resources.sbatch_options:"},
      {"resources.sbatch_options", "--export=ALL,SECRET=x", "resources.sbatch_options:"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    Dpod__V1__JobSpec *saved = spec;
    spec = job_spec_new();
    set_ok(cases[i].key, cases[i].value);
    refused_validate(0, cases[i].prefix);
    protobuf_c_message_free_unpacked(&spec->base, NULL);
    spec = saved;
  }
  /* Sane values of the same keys pass. */
  set_ok("train.warmup_steps", "20");
  set_ok("train.max_grad_norm", "0");
  set_ok("data.dataset", "/data/pairs");
  set_ok("data.pairs", "0");  /* not checked for a dataset on disk */
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
}

/* What the wire can carry but --set cannot spell: NaN and infinities, which every comparison must
 * catch; and products of fields that are each in range. */
static void validate_refuses_non_finite_numbers_and_overflowing_products(void **state) {
  (void)state;
  static const char *const keys[] = {"data.caption_dropout", "train.beta",         "train.learning_rate",
                                     "train.warmup_fraction", "train.adam_beta1",  "train.adam_beta2",
                                     "train.adam_eps",        "train.weight_decay", "train.max_grad_norm",
                                     "train.offset_noise",    "train.eval_guidance", "train.heartbeat_timeout"};
  double *fields[] = {&spec->data->caption_dropout, &spec->train->beta,          &spec->train->learning_rate,
                      &spec->train->warmup_fraction, &spec->train->adam_beta1,   &spec->train->adam_beta2,
                      &spec->train->adam_eps,        &spec->train->weight_decay, &spec->train->max_grad_norm,
                      &spec->train->offset_noise,    &spec->train->eval_guidance, &spec->train->heartbeat_timeout};
  const double bad[] = {NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    double saved = *fields[i];
    for (size_t k = 0; k < 3; k++) {
      *fields[i] = bad[k];
      char prefix[64];
      snprintf(prefix, sizeof prefix, "%s:", keys[i]);
      refused_validate(0, prefix);
    }
    *fields[i] = saved;
  }
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  /* Each within its own bound, the three together too many pairs a step. */
  set_ok("ranks", "4096");
  set_ok("train.batch_size", "65536");
  set_ok("train.grad_accum", "65536");
  set_ok("data.dataset", "/data/pairs");
  refused_validate(0, "train.batch_size:");
  assert_err_has("pairs a step");
  /* The largest sane values of the new bounds pass. */
  set_ok("ranks", "16");
  set_ok("train.batch_size", "1024");
  set_ok("train.grad_accum", "1024");
  set_ok("data.caption_dropout", "1");
  set_ok("train.eval_guidance", "7.5");
  set_ok("name", "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80");
  set_ok("resources.ranks_per_node", "8");
  set_ok("resources.gpus_per_rank", "1");
  set_ok("resources.partition", "gpu,debug");
  set_ok("resources.constraint", "a100&ib");
  set_ok("resources.sbatch_options", " --exclusive  --reservation=r1 --mail-type=END ");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  const char *field;
  assert_true(job_spec_uses_resources(spec, &field));
  assert_string_equal(field, "resources.ranks_per_node");
}

/* Strings that are not UTF-8 never get past --set, but a client speaking protobuf can send them. */
static void validate_refuses_strings_that_are_not_utf8(void **state) {
  (void)state;
  const struct {
    char **field;
    const char *value, *prefix;
  } cases[] = {
      {&spec->name, "bad\xff", "name:"},
      {&spec->name, "\xed\xa0\x80", "name:"}, /* a surrogate */
      {&spec->model->config, "/x/\xc3", "model.config:"},
      {&spec->model->weights, "/x/\xff", "model.weights:"},
      {&spec->model->reference_weights, "/\xfe", "model.reference_weights:"},
      {&spec->model->scheduler_config, "/\xc0\xaf", "model.scheduler_config:"}, /* an overlong '/' */
      {&spec->data->dataset, "/d/\xff", "data.dataset:"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *saved = *cases[i].field;
    *cases[i].field = (char *)cases[i].value;
    refused_validate(0, cases[i].prefix);
    *cases[i].field = saved;
  }
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
}

/* Paths made absolute for a client talking to a dpod that runs elsewhere. */
static void absolute_paths_join_relative_ones_onto_the_base(void **state) {
  (void)state;
  set_ok("model.config", "./cfg/config.json");
  set_ok("model.weights", "/abs/w.safetensors");
  set_ok("model.reference_weights", "ref.safetensors");
  set_ok("data.dataset", "builtin:synthetic");
  assert_int_equal(job_spec_absolute_paths(spec, "/home/u/run", err, sizeof err), 0);
  assert_string_equal(spec->model->config, "/home/u/run/cfg/config.json");
  assert_string_equal(spec->model->weights, "/abs/w.safetensors");
  assert_string_equal(spec->model->reference_weights, "/home/u/run/ref.safetensors");
  assert_string_equal(spec->model->scheduler_config, "");
  assert_string_equal(spec->data->dataset, "builtin:synthetic");
  set_ok("data.dataset", "data/pairs");
  assert_int_equal(job_spec_absolute_paths(spec, "/w", err, sizeof err), 0);
  assert_string_equal(spec->data->dataset, "/w/data/pairs");
}

/* model.variant is part of a file name: a bounded word, and only with weights to apply it to. */
static void validate_bounds_model_variant(void **state) {
  (void)state;
  set_ok("model.variant", "fp16");
  refused_validate(0, "model.variant:"); /* no weights named */
  set_ok("model.weights", "/models/sdxl");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  set_ok("model.weights", "");
  set_ok("model.reference_weights", "/models/sdxl");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  set_ok("model.variant", "non_ema-2");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  static const char *bad[] = {"../x", "fp16/..", "a.b", "fp 16", "123456789012345678901234567890123"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    set_ok("model.variant", bad[i]);
    refused_validate(0, "model.variant:");
  }
  set_ok("model.variant", "12345678901234567890123456789012"); /* 32: the most */
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
}

static void validate_refuses_long_name(void **state) {
  (void)state;
  char name[130];
  memset(name, 'x', 129);
  name[129] = '\0';
  set_ok("name", name);
  refused_validate(0, "name:");
  name[128] = '\0';
  set_ok("name", name);
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
}

static void validate_says_why_pairs_too_few(void **state) {
  (void)state;
  set_ok("ranks", "4");
  set_ok("train.batch_size", "4");
  set_ok("data.pairs", "15");
  refused_validate(0, "data.pairs:");
  assert_err_has("no data");
  set_ok("data.pairs", "16");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
}

static void validate_accepts_unnormalized_spec(void **state) {
  (void)state;
  Dpod__V1__JobSpec bare = DPOD__V1__JOB_SPEC__INIT;
  assert_int_equal(job_spec_validate(&bare, 0, err, sizeof err), 0);
}

/* ----------------------------------------------------------------------------------------------- */

static void pack_unpack_round_trip_preserves_values(void **state) {
  (void)state;
  set_ok("name", "round-trip");
  set_ok("ranks", "2");
  set_ok("train.beta", "1234.5");
  set_ok("train.objective", "sft");
  set_ok("train.seed", "18446744073709551615");
  set_ok("data.dataset", "/data/x");
  set_ok("train.scale_lr", "true");
  size_t n = protobuf_c_message_get_packed_size(&spec->base);
  uint8_t *buf = malloc(n);
  assert_non_null(buf);
  protobuf_c_message_pack(&spec->base, buf);
  Dpod__V1__JobSpec *back = dpod__v1__job_spec__unpack(NULL, n, buf);
  free(buf);
  assert_non_null(back);
  assert_int_equal(job_spec_normalize(back), 0);
  assert_string_equal(back->name, "round-trip");
  assert_int_equal(back->ranks, 2);
  assert_true(back->train->beta == 1234.5);
  assert_int_equal(back->train->objective, DPOD__V1__OBJECTIVE__OBJECTIVE_SFT);
  assert_true(back->train->seed == UINT64_MAX);
  assert_true(back->train->scale_lr);
  assert_string_equal(back->data->dataset, "/data/x");
  /* Defaults come back as defaults. */
  assert_int_equal(back->train->steps, 20);
  assert_true(back->train->learning_rate == 1e-5);
  assert_string_equal(back->model->config, "");
  assert_int_equal(job_spec_validate(back, 0, err, sizeof err), 0);
  /* A normalized unpacked spec accepts edits and frees cleanly. */
  if (job_spec_set(back, "model.config", "/c.json", err, sizeof err) != 0) fail_msg("%s", err);
  protobuf_c_message_free_unpacked(&back->base, NULL);
}

/* `spec` written as a job file and read into a new spec; the caller frees it. */
static Dpod__V1__JobSpec *written_and_read_back(void) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_non_null(f);
  assert_int_equal(job_spec_write_yaml(spec, f, 0), 0);
  fclose(f);
  Dpod__V1__JobSpec *back = job_spec_new();
  if (job_spec_parse_yaml(back, text, len, "written", err, sizeof err) != 0) fail_msg("%s\n%s", err, text);
  free(text);
  return back;
}

static void written_yaml_reads_back_the_same(void **state) {
  (void)state;
  set_ok("name", "quote \" and \\ here");
  set_ok("train.beta", "0.1");
  set_ok("train.learning_rate", "3e-7");
  set_ok("train.objective", "sft");
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_string_equal(back->name, spec->name);
  assert_true(back->train->beta == 0.1);
  assert_true(back->train->learning_rate == 3e-7);
  assert_int_equal(back->train->objective, DPOD__V1__OBJECTIVE__OBJECTIVE_SFT);
  assert_int_equal(back->data->pairs, spec->data->pairs);
  protobuf_c_message_free_unpacked(&back->base, NULL);
}

/* Found by tests/fuzz/fuzz_job_spec: a --set string that is not UTF-8 was taken, and the spec then
 * written could not be read back (nor sent to a client that checks strings, as protobuf requires). */
static void set_refuses_invalid_utf8(void **state) {
  (void)state;
  refused_set("model.weights", "/tmp/\x98x", "UTF-8");
  refused_set("name", "\xc3", "UTF-8");            /* truncated */
  refused_set("name", "\xc0\xaf", "UTF-8");        /* overlong '/' */
  refused_set("name", "\xed\xa0\x80", "UTF-8");    /* a surrogate */
  set_ok("name", "caf\xc3\xa9 \xf0\x9f\x8e\xa8");
}

/* Characters a YAML reader would fold or refuse if written as they are: C1 controls, the Unicode line
 * and paragraph separators, NEL, the byte order mark. The written file escapes them. */
static void written_yaml_escapes_what_yaml_cannot_hold(void **state) {
  (void)state;
  const char *name = "a\xc2\x85" "b\xe2\x80\xa8" "c\xe2\x80\xa9" "d\xef\xbb\xbf\xc2\x9f\x7f\x01" "e";
  set_ok("name", name);
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_string_equal(back->name, name);
  protobuf_c_message_free_unpacked(&back->base, NULL);
}

/* Chained jobs: `after` is a list in YAML and --set, written back as one; each entry once, not 0, at
 * most JOB_SPEC_AFTER_MAX; job:ID weight references are well formed and count as jobs waited for. */
static void chain_after_and_references_are_parsed_bounded_and_written_back(void **state) {
  (void)state;
  assert_int_equal(parse("after: [3, 1]\nmodel:\n  weights: job:2@step-200\n  reference_weights: job:3\n"), 0);
  assert_int_equal(spec->n_after, 2);
  assert_int_equal(spec->after[0], 3);
  assert_int_equal(spec->after[1], 1);
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  uint64_t deps[8];
  assert_int_equal(job_spec_deps(spec, deps, 8), 3); /* 3, 1, then 2 from weights; 3 once */
  assert_int_equal(deps[0], 3);
  assert_int_equal(deps[1], 1);
  assert_int_equal(deps[2], 2);
  uint64_t job;
  uint32_t step;
  assert_int_equal(job_spec_parse_ref("job:2@step-200", &job, &step), 1);
  assert_int_equal(job, 2);
  assert_int_equal(step, 200);
  assert_int_equal(job_spec_parse_ref("/a/job:2", &job, &step), 0);
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_int_equal(back->n_after, 2);
  assert_int_equal(back->after[1], 1);
  assert_string_equal(back->model->weights, "job:2@step-200");
  protobuf_c_message_free_unpacked(&back->base, NULL);
  assert_int_equal(job_spec_absolute_paths(spec, "/base", err, sizeof err), 0);
  assert_string_equal(spec->model->reference_weights, "job:3");

  set_ok("after", "7,8");
  assert_int_equal(spec->n_after, 2);
  assert_int_equal(spec->after[0], 7);
  set_ok("after", "");
  assert_int_equal(spec->n_after, 0);
  refused_set("after", "1,x", "after");
  refused_set("after", "-1", "after");
  refused_yaml("after: [1, [2]]\n", "after");
  refused_yaml("after: {a: 1}\n", "after");

  set_ok("after", "4,4");
  refused_validate(0, "after:");
  assert_err_has("twice");
  set_ok("after", "0");
  refused_validate(0, "after:");
  char many[400] = "";
  for (int i = 1; i <= JOB_SPEC_AFTER_MAX + 1; i++) snprintf(many + strlen(many), sizeof many - strlen(many), "%s%d", i > 1 ? "," : "", i);
  set_ok("after", many);
  refused_validate(0, "after:");
  set_ok("after", "");
  static const char *const bad[] = {"job:", "job:x", "job:0", "job:1@", "job:1@step-", "job:1@step-0", "job:1@200",
                                    "job:1@step-2x", "job:99999999999999999999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    set_ok("model.weights", bad[i]);
    refused_validate(0, "model.weights:");
  }
  set_ok("model.weights", "");
  set_ok("model.reference_weights", "job:1@x");
  refused_validate(0, "model.reference_weights:");
}

static void keep_best_needs_a_known_metric_and_an_evaluation_at_every_checkpoint(void **state) {
  (void)state;
  set_ok("train.keep_best", "eval/implicit_acc");
  refused_validate(0, "train.keep_best:"); /* eval_every 0 */
  set_ok("train.eval_every", "3");
  set_ok("train.checkpoint_every", "10");
  refused_validate(0, "train.keep_best:");
  assert_err_has("divide");
  set_ok("train.checkpoint_every", "9");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  set_ok("train.keep_best", "eval/accuracy");
  refused_validate(0, "train.keep_best:");
  assert_err_has("eval/mode_distance");
  const char *field;
  assert_int_equal(job_spec_keep_best_lower("eval/loss", &field), 1);
  assert_string_equal(field, "loss");
  assert_int_equal(job_spec_keep_best_lower("eval/preferred_mode_rate", &field), 0);
  assert_string_equal(field, "preferred_mode_rate");
  assert_int_equal(job_spec_keep_best_lower("eval/mode_distance", NULL), 1);
  assert_int_equal(job_spec_keep_best_lower("train/loss", NULL), -1);
}

/* train.lora: each bound refused by name, and the reference weights refused together with LoRA. */
static void validate_refuses_each_bad_lora_value(void **state) {
  (void)state;
  static const struct {
    const char *key, *value, *key2, *value2, *prefix;
  } cases[] = {
      {"train.lora.rank", "1025", NULL, NULL, "train.lora.rank:"},
      {"train.lora.alpha", "-1", "train.lora.rank", "4", "train.lora.alpha:"},
      {"train.lora.alpha", "1e7", "train.lora.rank", "4", "train.lora.alpha:"},
      {"train.lora.alpha", "8", NULL, NULL, "train.lora:"}, /* set while LoRA is off */
      {"train.lora.target_modules", "to_q", NULL, NULL, "train.lora:"},
      {"train.lora.init", "zeros", "train.lora.rank", "4", "train.lora.init:"},
      {"train.lora.target_modules", "to_q,../x", "train.lora.rank", "4", "train.lora.target_modules[1]:"},
      {"train.lora.target_modules", ".to_q", "train.lora.rank", "4", "train.lora.target_modules[0]:"},
      {"train.lora.target_modules", "to_q,to_q", "train.lora.rank", "4", "train.lora.target_modules[1]:"},
      {"train.lora.target_modules", "to..q", "train.lora.rank", "4", "train.lora.target_modules[0]:"},
      {"model.reference_weights", "/w/ref.safetensors", "train.lora.rank", "4", "model.reference_weights:"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    Dpod__V1__JobSpec *saved = spec;
    spec = job_spec_new();
    set_ok(cases[i].key, cases[i].value);
    if (cases[i].key2) set_ok(cases[i].key2, cases[i].value2);
    refused_validate(0, cases[i].prefix);
    protobuf_c_message_free_unpacked(&spec->base, NULL);
    spec = saved;
  }
  /* Thirty-three targets are too many; thirty-two pass. */
  char list[33 * 8] = "";
  for (int i = 0; i < 33; i++) snprintf(list + strlen(list), sizeof list - strlen(list), "%sm%d", i ? "," : "", i);
  set_ok("train.lora.rank", "1024");
  set_ok("train.lora.target_modules", list);
  refused_validate(0, "train.lora.target_modules:");
  *strrchr(list, ',') = '\0';
  set_ok("train.lora.target_modules", list);
  set_ok("train.lora.alpha", "0.5");
  set_ok("train.lora.init", "kaiming");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  assert_int_equal(spec->train->lora->n_target_modules, 32);
  /* Non-finite alpha, which only the wire can carry. */
  spec->train->lora->alpha = NAN;
  refused_validate(0, "train.lora.alpha:");
}

/* train.loss, train.lr_scheduler and train.optimizer: defaults, each name accepted, anything else refused by
 * key (a long value quoted only in part), a preference loss refused with sft, Adam settings refused with
 * adafactor, and the values written back. */
static void validate_bounds_loss_lr_scheduler_and_optimizer(void **state) {
  (void)state;
  assert_string_equal(spec->train->loss, "sigmoid");
  assert_string_equal(spec->train->lr_scheduler, "constant_with_warmup");
  assert_string_equal(spec->train->optimizer, "adamw");
  static const struct {
    const char *key, *value, *key2, *value2, *prefix;
  } bad[] = {
      {"train.loss", "dpo", NULL, NULL, "train.loss:"},
      {"train.loss", "Sigmoid", NULL, NULL, "train.loss:"},
      {"train.loss", "", NULL, NULL, "train.loss:"},
      {"train.loss", "hinge", "train.objective", "sft", "train.loss:"},
      {"train.lr_scheduler", "constant", NULL, NULL, "train.lr_scheduler:"},
      {"train.lr_scheduler", "cosine_with_restarts", NULL, NULL, "train.lr_scheduler:"},
      {"train.optimizer", "adam", NULL, NULL, "train.optimizer:"},
      {"train.optimizer", "adafactor", "train.adam_beta1", "0.8", "train.adam_beta1:"},
      {"train.optimizer", "adafactor", "train.adam_beta2", "0.99", "train.adam_beta2:"},
      {"train.optimizer", "adafactor", "train.adam_eps", "1e-6", "train.adam_eps:"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    Dpod__V1__JobSpec *saved = spec;
    spec = job_spec_new();
    set_ok(bad[i].key, bad[i].value);
    if (bad[i].key2) set_ok(bad[i].key2, bad[i].value2);
    refused_validate(0, bad[i].prefix);
    protobuf_c_message_free_unpacked(&spec->base, NULL);
    spec = saved;
  }
  char longname[200];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  set_ok("train.optimizer", longname);
  refused_validate(0, "train.optimizer:");
  assert_true(strstr(err, "xxx...") != NULL && strlen(err) < 150);
  const char *losses[] = {"sigmoid", "hinge", "ipo"}, *lrs[] = {"constant_with_warmup", "cosine", "linear"};
  for (int i = 0; i < 3; i++) {
    set_ok("train.loss", losses[i]);
    set_ok("train.lr_scheduler", lrs[i]);
    set_ok("train.optimizer", i == 2 ? "adafactor" : "adamw");
    if (job_spec_validate(spec, 0, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(job_spec_loss_index(spec->train->loss), i);
    assert_int_equal(job_spec_lr_scheduler_index(spec->train->lr_scheduler), i);
  }
  assert_int_equal(job_spec_optimizer_index("adafactor"), 1);
  assert_int_equal(job_spec_optimizer_index(NULL), -1);
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_string_equal(back->train->loss, "ipo");
  assert_string_equal(back->train->lr_scheduler, "linear");
  assert_string_equal(back->train->optimizer, "adafactor");
  protobuf_c_message_free_unpacked(&back->base, NULL);
}

/* train.device: auto by default, the three names accepted, anything else refused by name, and cpu refused
 * where the job reserves GPUs it would not use. */
static void validate_bounds_train_device(void **state) {
  (void)state;
  assert_string_equal(spec->train->device, "auto");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  static const char *const ok[] = {"auto", "cpu", "cuda"};
  for (size_t i = 0; i < 3; i++) {
    set_ok("train.device", ok[i]);
    assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  }
  static const char *const bad[] = {"cuda:0", "gpu", "CUDA", "mps", "cuda "};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    set_ok("train.device", bad[i]);
    refused_validate(0, "train.device:");
  }
  set_ok("train.device", "cpu");
  set_ok("resources.gpus_per_rank", "1");
  refused_validate(0, "train.device:");
  set_ok("train.device", "cuda");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_string_equal(back->train->device, "cuda");
  protobuf_c_message_free_unpacked(&back->base, NULL);
}

/* train.precision: fp32 by default; fp32, bf16 and fp16 pass (the worker refuses fp16 on a CPU); any other
 * word, or a case variant, is refused by name. */
static void validate_bounds_train_precision(void **state) {
  (void)state;
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  assert_string_equal(spec->train->precision, "fp32");
  const char *good[] = {"fp32", "bf16", "fp16"};
  for (size_t i = 0; i < 3; i++) {
    set_ok("train.precision", good[i]);
    assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  }
  const char *bad[] = {"BF16", "float32", "", "bf8"};
  for (size_t i = 0; i < 4; i++) {
    set_ok("train.precision", bad[i]);
    refused_validate(0, "train.precision:");
  }
}

/* train.loss_scale: GradScaler's defaults; init_scale a power of two from 1 to 2^32 and growth_interval from
 * 1 to 1e8, each refused by name; changed settings refused unless the precision is fp16; YAML read and
 * written back. */
static void validate_bounds_train_loss_scale(void **state) {
  (void)state;
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  assert_non_null(spec->train->loss_scale);
  assert_true(spec->train->loss_scale->init_scale == 65536);
  assert_int_equal(spec->train->loss_scale->growth_interval, 2000);
  static const struct {
    const char *key, *value, *prefix;
  } bad[] = {
      {"train.loss_scale.init_scale", "3", "train.loss_scale.init_scale:"},
      {"train.loss_scale.init_scale", "0.5", "train.loss_scale.init_scale:"},
      {"train.loss_scale.init_scale", "0", "train.loss_scale.init_scale:"},
      {"train.loss_scale.init_scale", "-65536", "train.loss_scale.init_scale:"},
      {"train.loss_scale.init_scale", "8589934592", "train.loss_scale.init_scale:"},
      {"train.loss_scale.growth_interval", "0", "train.loss_scale.growth_interval:"},
      {"train.loss_scale.growth_interval", "100000001", "train.loss_scale.growth_interval:"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    Dpod__V1__JobSpec *saved = spec;
    spec = job_spec_new();
    set_ok("train.precision", "fp16");
    set_ok(bad[i].key, bad[i].value);
    refused_validate(0, bad[i].prefix);
    protobuf_c_message_free_unpacked(&spec->base, NULL);
    spec = saved;
  }
  /* The bounds themselves pass with fp16. */
  set_ok("train.precision", "fp16");
  set_ok("train.loss_scale.init_scale", "4294967296");
  set_ok("train.loss_scale.growth_interval", "100000000");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  set_ok("train.loss_scale.init_scale", "1");
  set_ok("train.loss_scale.growth_interval", "1");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  /* Non-finite, which only the wire can carry. */
  spec->train->loss_scale->init_scale = INFINITY;
  refused_validate(0, "train.loss_scale.init_scale:");
  spec->train->loss_scale->init_scale = NAN;
  refused_validate(0, "train.loss_scale.init_scale:");
  spec->train->loss_scale->init_scale = 1024;
  /* Another precision with a changed setting: refused, naming the precision; at the defaults it passes. */
  const char *others[] = {"fp32", "bf16"};
  for (size_t i = 0; i < 2; i++) {
    set_ok("train.precision", others[i]);
    refused_validate(0, "train.loss_scale:");
    assert_err_has(others[i]);
  }
  set_ok("train.loss_scale.init_scale", "65536");
  set_ok("train.loss_scale.growth_interval", "2000");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  /* YAML, and back. */
  Dpod__V1__JobSpec *saved = spec;
  spec = job_spec_new();
  assert_int_equal(parse("train:\n  precision: fp16\n  loss_scale:\n    init_scale: 1024\n    growth_interval: 50\n"), 0);
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_true(back->train->loss_scale->init_scale == 1024);
  assert_int_equal(back->train->loss_scale->growth_interval, 50);
  protobuf_c_message_free_unpacked(&back->base, NULL);
  refused_yaml("train:\n  loss_scale:\n    init_scal: 1024\n", "train.loss_scale.init_scal");
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  spec = saved;
}

/* target_modules is a list: YAML flow or block sequences, a comma list in --set, written back as a list. */
static void lora_target_modules_read_as_lists_and_write_back(void **state) {
  (void)state;
  assert_int_equal(parse("train:\n  lora:\n    rank: 8\n    alpha: 16\n    target_modules:\n      - to_q\n"
                         "      - to_out.0\n"),
                   0);
  assert_int_equal(spec->train->lora->n_target_modules, 2);
  assert_string_equal(spec->train->lora->target_modules[1], "to_out.0");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_int_equal(back->train->lora->rank, 8);
  assert_true(back->train->lora->alpha == 16);
  assert_int_equal(back->train->lora->n_target_modules, 2);
  assert_string_equal(back->train->lora->target_modules[0], "to_q");
  assert_string_equal(back->train->lora->target_modules[1], "to_out.0");
  protobuf_c_message_free_unpacked(&back->base, NULL);
  /* --set replaces the list; spaces around entries are dropped; "" empties it. */
  set_ok("train.lora.target_modules", " to_k , to_v,ff.net.2");
  assert_int_equal(spec->train->lora->n_target_modules, 3);
  assert_string_equal(spec->train->lora->target_modules[0], "to_k");
  assert_string_equal(spec->train->lora->target_modules[2], "ff.net.2");
  set_ok("train.lora.target_modules", "");
  assert_int_equal(spec->train->lora->n_target_modules, 0);
  refused_set("train.lora.target_modules", "to_q,,to_v", "train.lora.target_modules");
  refused_yaml("train:\n  lora:\n    target_modules: [to_q, [x]]\n", "train.lora.target_modules");
  refused_yaml("train:\n  lora:\n    target_modules: {a: b}\n", "train.lora.target_modules");
}

static void names_of_states_and_objectives(void **state) {
  (void)state;
  assert_string_equal(job_state_name(DPOD__V1__JOB_STATE__JOB_STATE_RUNNING), "running");
  assert_string_equal(job_state_name(DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED), "succeeded");
  assert_string_equal(job_state_name(DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED), "preempted");
  assert_string_equal(objective_name(DPOD__V1__OBJECTIVE__OBJECTIVE_DPO), "dpo");
  assert_string_equal(objective_name(DPOD__V1__OBJECTIVE__OBJECTIVE_SFT), "sft");
  Dpod__V1__JobState s;
  assert_int_equal(job_state_parse("cancelled", &s), 0);
  assert_int_equal(s, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED);
  assert_int_equal(job_state_parse("JOB_STATE_QUEUED", &s), 0);
  assert_int_equal(s, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  assert_int_equal(job_state_parse("nope", &s), DPOD_EINVAL);
}

/* data.latents and data.random_flip (posterior datasets): spelled as enums and booleans, refused where
 * there is nothing to draw from or drawing is switched off, each by name. */
static void validate_bounds_latents_and_random_flip(void **state) {
  (void)state;
  assert_true(!spec->data->random_flip);
  assert_int_equal(spec->data->latents, DPOD__V1__LATENT_SOURCE__LATENT_SOURCE_AUTO);
  refused_yaml("data: {latents: vae}\n", "data.latents");
  refused_yaml("data: {random_flip: 2}\n", "data.random_flip");
  set_ok("data.latents", "sample");
  refused_validate(0, "data.latents:"); /* builtin:synthetic has no posteriors */
  set_ok("data.latents", "auto");
  set_ok("data.random_flip", "true");
  refused_validate(0, "data.random_flip:");
  set_ok("data.dataset", "/data/pairs");
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  set_ok("data.latents", "frozen");
  refused_validate(0, "data.random_flip:");
  assert_err_has("frozen");
  set_ok("data.latents", "LATENT_SOURCE_SAMPLE");
  assert_int_equal(spec->data->latents, DPOD__V1__LATENT_SOURCE__LATENT_SOURCE_SAMPLE);
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  /* What the wire can carry but a job file cannot spell. */
  spec->data->latents = (Dpod__V1__LatentSource)7;
  refused_validate(0, "data.latents:");
}

/* train.gradient_checkpointing: off by default, a YAML or --set boolean, kept by a written job file,
 * anything but a boolean refused by name with nothing changed. */
static void gradient_checkpointing_is_a_bounded_bool(void **state) {
  (void)state;
  assert_false(spec->train->gradient_checkpointing);
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  assert_int_equal(parse("train:\n  gradient_checkpointing: yes\n"), 0);
  assert_true(spec->train->gradient_checkpointing);
  assert_int_equal(job_spec_validate(spec, 0, err, sizeof err), 0);
  Dpod__V1__JobSpec *back = written_and_read_back();
  assert_true(back->train->gradient_checkpointing);
  protobuf_c_message_free_unpacked(&back->base, NULL);
  set_ok("train.gradient_checkpointing", "false");
  assert_false(spec->train->gradient_checkpointing);
  refused_set("train.gradient_checkpointing", "maybe", NULL);
  refused_set("train.gradient_checkpointing", "2", NULL);
  refused_set("train.gradient_checkpointing", "", NULL);
  assert_false(spec->train->gradient_checkpointing);
  refused_yaml("train: {gradient_checkpointing: sometimes}\n", "train.gradient_checkpointing");
  refused_yaml("train: {gradient_checkpointing: [true]}\n", "train.gradient_checkpointing");
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      T(defaults_present_after_new),
      T(normalize_fills_every_default_and_it_survives_the_wire),
      T(loads_example_job_file),
      T(loads_every_type),
      T(empty_file_and_empty_section_change_nothing),
      T(refuses_unknown_key_top_level),
      T(refuses_unknown_key_nested),
      T(suggests_section_for_misplaced_key),
      T(refuses_string_for_int),
      T(gradient_checkpointing_is_a_bounded_bool),
      T(refuses_negative_and_overflowing_ints),
      T(refuses_non_finite_doubles),
      T(refuses_scalar_vs_mapping),
      T(refuses_missing_value),
      T(refuses_duplicate_keys),
      T(refuses_bad_enum),
      T(accepts_enum_spellings),
      T(refuses_invalid_yaml_with_line),
      T(refuses_second_document),
      T(load_names_missing_file),
      T(set_overrides_values),
      T(set_after_yaml_wins),
      T(set_refuses_bad_input),
      T(validate_refuses_nonpositive_beta),
      T(validate_refuses_zero_ranks),
      T(validate_refuses_ranks_above_slots),
      T(validate_refuses_warmup_fraction_one),
      T(validate_refuses_each_bad_value),
      T(validate_refuses_long_name),
      T(validate_bounds_model_variant),
      T(validate_bounds_latents_and_random_flip),
      T(validate_refuses_non_finite_numbers_and_overflowing_products),
      T(absolute_paths_join_relative_ones_onto_the_base),
      T(validate_refuses_strings_that_are_not_utf8),
      T(validate_says_why_pairs_too_few),
      T(validate_accepts_unnormalized_spec),
      T(pack_unpack_round_trip_preserves_values),
      T(written_yaml_reads_back_the_same),
      T(set_refuses_invalid_utf8),
      T(written_yaml_escapes_what_yaml_cannot_hold),
      T(names_of_states_and_objectives),
      T(chain_after_and_references_are_parsed_bounded_and_written_back),
      T(keep_best_needs_a_known_metric_and_an_evaluation_at_every_checkpoint),
      T(validate_refuses_each_bad_lora_value),
      T(validate_bounds_train_device),
      T(validate_bounds_train_precision),
      T(validate_bounds_train_loss_scale),
      T(lora_target_modules_read_as_lists_and_write_back),
      T(validate_bounds_loss_lr_scheduler_and_optimizer),
  };
  return CMOCKA_MAIN("job_spec", tests, NULL, NULL);
}
