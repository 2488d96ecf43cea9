/* Loading a UNet's weights from what a ModelSpec names (proto/spec/model_source.h): the glue between
 * the torch-free readers of workers/dpo/model_dir.h and the shim, shared by dpo-worker and dpo-tool. */
#ifndef DPOD_MODEL_UNET_H
#define DPOD_MODEL_UNET_H

#include <stddef.h>

#include "model_source.h"
#include "unet_shim.h"

/* Loads the weights `src` names into m (a safetensors file through unet_load_weights, a sharded
 * checkpoint shard by shard through model_weights_read); nothing is changed on failure. Returns 0, or the
 * status with err saying why: DPOD_ENOMEM and DPOD_ETORCH are this run's trouble, the rest the input's. */
int model_unet_load(unet_t m, const model_source *src, char *err, size_t errlen);

#endif
