/* The op-level profiler behind unet_profile_start/stop (dpo-bench --profile): every ATen op as a Chrome
 * trace. It uses libtorch 1.x's legacy profiler (RecordProfile), which 2.x no longer promises; against a
 * libtorch 2.x profiling is refused with a message rather than built on an API this tree cannot test. */
#include <torch/version.h>

#include <memory>
#include <string>

#include "unet_ops.h"

extern "C" {
#include "dpod_error.h"
}

#if TORCH_VERSION_MAJOR < 2
#include <torch/csrc/autograd/profiler_legacy.h>

namespace shim {
namespace {
std::unique_ptr<torch::autograd::profiler::RecordProfile> profile_;
}

void profile_start(const char *json_path) {
  if (!json_path) throw error(DPOD_EINVAL, "unet_profile_start: no path");
  if (profile_) throw error(DPOD_ESTATE, "a profile is already being recorded");
  profile_ = std::make_unique<torch::autograd::profiler::RecordProfile>(std::string(json_path));
}

void profile_stop() { profile_.reset(); /* the destructor writes the trace */ }

}  // namespace shim
#else
namespace shim {

void profile_start(const char *) {
  throw error(DPOD_EUNSUPPORTED, "op profiling needs libtorch 1.x's legacy profiler; this is libtorch " TORCH_VERSION);
}

void profile_stop() {}

}  // namespace shim
#endif
