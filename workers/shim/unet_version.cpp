#include "unet_version.h"

#include <torch/version.h>

const char *unet_torch_version(void) { return TORCH_VERSION; }
