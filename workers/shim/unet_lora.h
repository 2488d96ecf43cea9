/* LoRA adapters inside the shim (C++, internal; unet_lora.cpp). The calls of unet_shim.h's unet_lora_*
 * without their boundary: they throw shim::error for a caller's mistake. */
#ifndef DPOD_UNET_LORA_H
#define DPOD_UNET_LORA_H

#include <string>

#include "unet_model.h"
#include "unet_shim.h"

namespace shim {

void lora_enable(unet &m, const unet_lora_params &p);
void lora_set_active(unet &m, bool active);
void lora_param_at(const unet &m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]);
void lora_load(unet &m, const char *path);
/* Returns the file's size. */
uint64_t lora_save(const unet &m, const char *path, bool fold);
void lora_merge(unet &m);
/* "unet.<module>.lora.down.weight" or ".lora.up.weight": the names save_lora_weights writes. */
const std::string &lora_tensor_name(const lora_ &l, bool up);

}  // namespace shim

#endif
