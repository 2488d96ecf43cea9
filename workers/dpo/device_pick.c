#include "device_pick.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpod_error.h"

int dpo_device_pick(const char *spec_device, uint32_t gpus_per_rank, int cuda_devices, int local_rank, char *out,
                    size_t outlen, char *err, size_t errlen) {
  const char *d = spec_device && *spec_device ? spec_device : "auto";
  int is_auto = strcmp(d, "auto") == 0;
  if (!is_auto && strcmp(d, "cpu") != 0 && strcmp(d, "cuda") != 0)
    return dpod_errf(err, errlen, DPOD_EINVAL, "train.device: must be \"auto\", \"cpu\" or \"cuda\" (got '%.32s')", d);
  if (local_rank < 0) local_rank = 0;
  int want_cuda = strcmp(d, "cuda") == 0 || (is_auto && (gpus_per_rank > 0 || cuda_devices > 0));
  if (!want_cuda) {
    snprintf(out, outlen, "cpu");
    return 0;
  }
  if (cuda_devices <= 0)
    return dpod_errf(err, errlen, DPOD_EUNSUPPORTED,
                     "train.device: %s, but this worker's libtorch sees no CUDA device (a CPU-only build, such as "
                     "Debian's, or no GPU visible to this process)",
                     is_auto ? "\"auto\" means cuda with resources.gpus_per_rank > 0" : "\"cuda\" is asked for");
  int index = local_rank;
  if (index >= cuda_devices) {
    /* A launcher that binds each rank its own GPUs (Slurm's --gpus-per-task) leaves it seeing only those. */
    if (gpus_per_rank > 0 && (uint32_t)cuda_devices <= gpus_per_rank)
      index = 0;
    else
      return dpod_errf(err, errlen, DPOD_EUNSUPPORTED,
                       "train.device: local rank %d has no GPU of its own: this process sees %d CUDA device%s; "
                       "run at most %d rank%s per node",
                       local_rank, cuda_devices, cuda_devices == 1 ? "" : "s", cuda_devices, cuda_devices == 1 ? "" : "s");
  }
  snprintf(out, outlen, "cuda:%d", index);
  return 0;
}

int dpo_local_rank_from_env(int *local_rank, char *err, size_t errlen) {
  static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"};
  *local_rank = -1;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const char *v = getenv(names[i]);
    if (!v || !*v) continue;
    char *end = NULL;
    long r = strtol(v, &end, 10);
    if (*end || r < 0 || r > 65535)
      return dpod_errf(err, errlen, DPOD_EINVAL, "%s: not a local rank from 0 to 65535", names[i]);
    *local_rank = (int)r;
    return 0;
  }
  return 0;
}
