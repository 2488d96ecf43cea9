/* dpo-tool's LoRA pieces: attaching a LoRA file to a UNet (forward --lora, sample --lora) and merge-lora. */
#ifndef DPOD_TOOL_LORA_H
#define DPOD_TOOL_LORA_H

#include "unet_shim.h"

/* Reads the adapters of a LoRA file with diffusers' names ("unet.<module>.lora.down.weight" [rank, in],
 * ".lora.up.weight" [out, rank]) into `m`: the adapted modules and the rank come from the file; alpha is
 * its lora_alpha metadata where dpod wrote it unfolded (a checkpoint's lora_adapters.safetensors), else
 * rank (diffusers' meaning: pytorch_lora_weights.safetensors). Prints why to stderr, prefixed with `who`,
 * and returns nonzero on failure. */
int tool_lora_attach(unet_t m, const char *path, const char *who);

#define TOOL_MERGE_LORA_ARGS "BASE.safetensors LORA.safetensors OUT.safetensors [--config C] [--threads N]"
#define TOOL_MERGE_LORA_SUMMARY \
  "fold a LoRA file into full weights (W += alpha/rank up @ down): a plain UNet file with diffusers names"
int tool_merge_lora_main(int argc, char **argv);

#endif
