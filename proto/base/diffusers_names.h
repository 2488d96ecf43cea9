/* The file names of the diffusers formats dpod reads and writes (diffusers' own constants: WEIGHTS_NAME,
 * CONFIG_NAME, ...), spelled once. */
#ifndef DPOD_DIFFUSERS_NAMES_H
#define DPOD_DIFFUSERS_NAMES_H

#define DIFFUSERS_WEIGHTS_NAME "diffusion_pytorch_model.safetensors" /* a model's weights */
#define DIFFUSERS_CONFIG_NAME "config.json"                          /* a model's config */
#define DIFFUSERS_SCHEDULER_CONFIG_NAME "scheduler_config.json"      /* a scheduler's config */

#endif
