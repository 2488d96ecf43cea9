/* diffusers-native weights in and out, without torch: reading a UNet's tensors from a file, a sharded
 * checkpoint (its .index.json and every shard) or a model folder (proto/spec/model_source.h resolves
 * which) into the flat float32 parameter buffer, and writing a folder that diffusers'
 * UNet2DConditionModel.from_pretrained loads (`dpo-tool export`).
 *
 * The model's side is a table of its parameters (name, offset into the flat buffer, shape), so that
 * this code needs neither the shim nor a model: the worker builds the table from unet_param_at. */
#ifndef DPOD_MODEL_DIR_H
#define DPOD_MODEL_DIR_H

#include <stddef.h>
#include <stdint.h>

#include "model_source.h"

/* Stable Diffusion 1.5's scheduler_config.json (what dpo_schedule_default computes), for folders that must
 * carry a scheduler config when the job named none. */
extern const char model_default_scheduler_json[];

typedef struct {
  const char *name;   /* diffusers state-dict name; borrowed */
  size_t offset;      /* element offset in the flat buffer */
  int ndim;
  int64_t shape[8];
} model_param;

/* Reads `weights` (a safetensors file, or a .safetensors.index.json when `sharded`) into
 * flat[0, flat_len) as float32, tensor i of the table at params[i].offset. Everything is checked before
 * a single element is written, and refused by name: an index entry its shard does not hold, a shard
 * tensor the index does not map to that shard, parameters missing from the files, tensors the model does
 * not have, mis-shaped tensors and non-float dtypes (F32, F16 and BF16 are read; F16 and BF16 are
 * converted exactly). On failure flat is unchanged. */
int model_weights_read(const char *weights, int sharded, const model_param *params, size_t n, float *flat,
                       size_t flat_len, char *err, size_t errlen);

/* The text of the scheduler config a job trains with: model.scheduler_config, else the one that came with
 * the policy's model folder (policy->scheduler; policy may be NULL), else NULL (*json_out NULL: the
 * default schedule, dpo_schedule_default). *json_out is malloc'd, owned by the caller; *path_out (may be
 * NULL) receives which file it was. */
int model_scheduler_config(const char *scheduler_config, const model_source *policy, char **json_out,
                           const char **path_out, char *err, size_t errlen);

typedef struct {
  const char *variant;  /* "" (F32, diffusion_pytorch_model.safetensors) or "fp16" (F16, ...fp16.safetensors) */
  int pipeline;         /* write OUT/unet/ and OUT/scheduler/scheduler_config.json instead of OUT/ alone */
} model_export_params;

model_export_params model_export_default_params(void);

/* Writes the UNet of `src` (anything model_source_resolve takes: a checkpoint, a UNet or pipeline
 * folder; a checkpoint with a COMPLETE marker is verified first) as a diffusers UNet folder: config.json
 * (the source's, byte for byte) and the weights in one file, in the source's tensor names and order, F32
 * or (variant fp16) F16 rounded to nearest even. With p->pipeline the folder is OUT/unet/ and the
 * scheduler config goes to OUT/scheduler/scheduler_config.json (the source's, else Stable Diffusion
 * 1.5's). OUT is created if needed; existing files of those names are replaced atomically.
 * *unet_dir_out (may be NULL, MODEL_PATH_MAX bytes) receives the UNet folder written. */
int model_export(const char *src, const char *out, const model_export_params *p, char *unet_dir_out, char *err,
                 size_t errlen);

#endif
