/* Job specs: defaults, validation and the mapping from YAML job files and `key=value` overrides onto
 * dpod.v1.JobSpec, shared by dpoctl (which refuses a bad file before submitting) and dpod (which refuses
 * a bad SubmitJob, whatever client sent it).
 *
 * Keys are dotted field paths of the JobSpec message: "name", "ranks", "train.beta", "model.config".
 * The mapping walks the protobuf-c descriptors, so a field added to dpod.proto is a YAML key at once. */
#ifndef DPOD_JOB_SPEC_H
#define DPOD_JOB_SPEC_H

#include <stddef.h>
#include <stdio.h>

#include "dpod.pb-c.h"
#include "job_names.h"

/* Fills in every default: every sub-message exists and every optional field that was not set holds its
 * .proto default and is marked set (strings are copies of their defaults), so that the packed spec, a
 * stored one and GetJob's all say what each field is. Idempotent. Allocates with malloc; the spec must be one that protobuf_c_message_free_unpacked() can free
 * (i.e. from job_spec_new() or protobuf unpack). Returns 0 or DPOD_ENOMEM. */
int job_spec_normalize(Dpod__V1__JobSpec *spec);

/* A new, normalized spec holding only defaults. Free with protobuf_c_message_free_unpacked(spec, NULL).
 * Its strings are malloc'd copies of their defaults: free one before pointing the field elsewhere (or
 * set it with job_spec_set(), which does). */
Dpod__V1__JobSpec *job_spec_new(void);

/* Checks every value for sense: beta > 0, ranks >= 1, steps >= 1, 0 <= warmup_fraction < 1, learning
 * rate finite and > 0, ... On failure returns DPOD_EINVAL and writes "train.beta: must be > 0 (got 0)"
 * into err. `max_ranks` > 0 also refuses ranks above it (the daemon passes its slot count). */
int job_spec_validate(const Dpod__V1__JobSpec *spec, unsigned max_ranks, char *err, size_t errlen);
/* job_spec_validate's checks of train.lora (job_spec_lora.c). */
int job_spec_validate_lora_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen);
/* job_spec_validate's checks of train.loss, train.lr_scheduler and train.optimizer (job_spec_optim.c). */
int job_spec_validate_optim_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen);
/* The index of a valid train.loss ("sigmoid" 0, "hinge" 1, "ipo" 2: dpo_loss_kind), train.lr_scheduler
 * ("constant_with_warmup" 0, "cosine" 1, "linear" 2: dpo_lr_kind) or train.optimizer ("adamw" 0,
 * "adafactor" 1); -1 for any other string or NULL. */
int job_spec_loss_index(const char *name);
int job_spec_lr_scheduler_index(const char *name);
int job_spec_optimizer_index(const char *name);
/* job_spec_validate's checks of train.device (job_spec_device.c). */
int job_spec_validate_device_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen);
/* job_spec_validate's checks of train.loss_scale (job_spec_loss_scale.c). */
int job_spec_validate_loss_scale_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen);

/* Makes every relative path the spec names (model.config, model.weights, model.reference_weights,
 * model.scheduler_config, data.dataset) absolute against `base` (an absolute directory, e.g. the
 * client's working directory): dpod runs elsewhere and refuses relative paths. "./" prefixes are
 * dropped; built-in datasets and empty fields are left alone. Returns 0 or a status with err set. */
int job_spec_absolute_paths(Dpod__V1__JobSpec *spec, const char *base, char *err, size_t errlen);

/* Chained jobs. model.weights and model.reference_weights may name another job's checkpoint:
 * "job:ID" (its newest complete one) or "job:ID@step-N". */
#define JOB_SPEC_REF_PREFIX "job:"
#define JOB_SPEC_AFTER_MAX 32 /* entries of JobSpec.after */

/* Parses a checkpoint reference. Returns 1 with *job and *step (0: the newest) set, 0 when `s` is not
 * a reference (no "job:" prefix: a path), -1 when it is one but malformed. */
int job_spec_parse_ref(const char *s, uint64_t *job, uint32_t *step);

/* The jobs a spec waits for: its `after` list and the jobs its weight references name, each once, in
 * that order, at most `max` of them into ids. Returns how many there are (may exceed `max`). */
size_t job_spec_deps(const Dpod__V1__JobSpec *spec, uint64_t *ids, size_t max);

/* train.keep_best: 1 when lower is better ("eval/loss", "eval/mode_distance"), 0 when higher is
 * ("eval/implicit_acc", "eval/reward_margin", "eval/preferred_mode_rate"), -1 for any other name. On
 * success *field (may be NULL) receives the EvalMetrics field's name ("loss"). */
int job_spec_keep_best_lower(const char *metric, const char **field);

/* Whether the spec sets any field of `resources` (what only a batch scheduler takes); *field names the
 * first one. */
int job_spec_uses_resources(const Dpod__V1__JobSpec *spec, const char **field);
/* Checks resources.sbatch_options: space-separated --NAME[=VALUE] words, NAME from the allow-list. */
int job_spec_check_sbatch_options(const char *options, char *err, size_t errlen);

/* Sets one field from text: job_spec_set(spec, "train.beta", "2000"). Unknown keys, values of the wrong
 * type ("train.steps=abc", "ranks=-1", a map where a scalar belongs) and out-of-range integers are
 * refused with DPOD_EINVAL and a message naming the key. Enums accept their short lower-case name
 * ("dpo", "sft") or the full proto name. */
int job_spec_set(Dpod__V1__JobSpec *spec, const char *key, const char *value, char *err, size_t errlen);

/* Reads a YAML job file (a mapping whose keys are the spec's fields, nested mappings for
 * sub-messages) into `spec` on top of what it already holds. Errors name the file, line and key. */
int job_spec_load_yaml(Dpod__V1__JobSpec *spec, const char *path, char *err, size_t errlen);

/* The same from a string already in memory (`name` is used in error messages). */
int job_spec_parse_yaml(Dpod__V1__JobSpec *spec, const char *text, size_t len, const char *name, char *err,
                        size_t errlen);

/* Writes the whole spec as a YAML job file (every field, defaults included; enums by short name), each
 * line indented by `indent` spaces. Reading it back with job_spec_parse_yaml() gives the same spec.
 * Returns 0 or DPOD_EIO. */
int job_spec_write_yaml(const Dpod__V1__JobSpec *spec, FILE *out, int indent);

/* Formats one scalar field of `msg` as text, as a job file would write it (strings unquoted). Returns 0,
 * or DPOD_EUNSUPPORTED for fields that are not scalars. */
int job_spec_format_value(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, char *buf, size_t len);

#endif
