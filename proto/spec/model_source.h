/* What a ModelSpec's weights path names: a safetensors file, a sharded checkpoint's .index.json, or a
 * diffusers model folder (a UNet folder holding config.json and diffusion_pytorch_model[.VARIANT]
 * .safetensors[.index.json], or a pipeline folder whose unet/ subfolder does), and the config and
 * scheduler config that come with a folder.
 *
 * Torch-free and safetensors-free, so that dpod checks a submitted job with the same rules the worker
 * loads it by (the worker then reads the tensors: workers/dpo/model_dir.h). Every function returns 0 or a
 * negative dpod_status and on failure writes a message naming the field, the path and the problem, never
 * a file's contents. */
#ifndef DPOD_MODEL_SOURCE_H
#define DPOD_MODEL_SOURCE_H

#include <stddef.h>

#include "dpod.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bounds on what a folder holds: config files, an index, the number of shards an index names. */
#define MODEL_CONFIG_MAX ((size_t)1 << 20)
#define MODEL_INDEX_MAX ((size_t)16 << 20)
#define MODEL_SHARDS_MAX 4096
#define MODEL_PATH_MAX 4096
/* diffusers' weights file stem: STEM[.VARIANT].safetensors[.index.json]. */
#define MODEL_WEIGHTS_STEM "diffusion_pytorch_model"

typedef struct {
  char weights[MODEL_PATH_MAX];    /* the safetensors file, or the .safetensors.index.json when sharded */
  int sharded;                     /* weights is an index */
  char config[MODEL_PATH_MAX];     /* the folder's config.json; "" when the path named a file */
  char scheduler[MODEL_PATH_MAX];  /* the scheduler config found with the folder; "" when none */
  char unet_dir[MODEL_PATH_MAX];   /* the UNet folder; "" when the path named a file */
} model_source;

/* Resolves `path` (the value of field `key`) with `variant` ("" for none). A file must be a regular file
 * and then takes no variant. A folder resolves to its UNet folder, the weights file of the variant in it
 * (the .index.json when there is no single file), its config.json and the scheduler config, which is
 * the first of UNET_DIR/scheduler_config.json (a dpod checkpoint) and UNET_DIR/../scheduler/
 * scheduler_config.json (a pipeline) that exists. Nothing is read but directory entries. */
int model_source_resolve(const char *key, const char *path, const char *variant, model_source *out, char *err,
                         size_t errlen);

/* A sharded checkpoint's index: the weight_map of `index_path` as parallel arrays, and its distinct
 * shard files (full paths, in first-seen order). Shard names must be plain file names in the index's
 * folder. Free with model_index_free (also after a failure). */
typedef struct {
  size_t count;          /* tensors */
  char **names;          /* [count] tensor names */
  size_t *shard_of;      /* [count] index into shards */
  size_t num_shards;
  char **shards;         /* [num_shards] paths */
} model_index;

int model_index_load(const char *index_path, model_index *idx, char *err, size_t errlen);
void model_index_free(model_index *idx);

/* Whether two diffusers config.json texts describe the same model: every key not starting with '_'
 * (diffusers' _class_name, _diffusers_version, _name_or_path are provenance) present in both with the
 * same value. On a difference the message names the first key that differs, with a_name and b_name
 * saying which file is which. DPOD_EINVAL when they differ, DPOD_EFORMAT when either is not JSON. */
int model_config_agree(const char *a_text, const char *a_name, const char *b_text, const char *b_name, char *err,
                       size_t errlen);

/* What dpod checks of a submitted job's model: model.weights and model.reference_weights resolve
 * (absolute paths, readable), a variant has something to name, every shard an index names is there,
 * and the configs of the folders and model.config agree with one another. */
int model_spec_check(const Dpod__V1__ModelSpec *m, char *err, size_t errlen);

/* The model config text a job trains: model.config if given, else the policy folder's config.json, else
 * NULL (*text_out NULL: the built-in tiny config). Checks that every config given agrees (model.config,
 * the policy's folder and the reference's folder). *text_out is malloc'd, owned by the caller; *name_out
 * (may be NULL) receives a static or `policy`/`ref`-owned description of where it came from. */
int model_spec_config(const Dpod__V1__ModelSpec *m, const model_source *policy, const model_source *ref,
                      char **text_out, const char **name_out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
