/* The bounds of train.device, part of job_spec_validate. Whether a CUDA device is really there only the
 * worker can tell (its libtorch, its node): it refuses the job then (workers/dpo/device_pick.c). */
#include <string.h>

#include "dpod_error.h"
#include "job_spec.h"

int job_spec_validate_device_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen) {
  const Dpod__V1__TrainSpec *t = spec->train;
  const char *d = t && t->device && *t->device ? t->device : "auto";
  if (strcmp(d, "auto") != 0 && strcmp(d, "cpu") != 0 && strcmp(d, "cuda") != 0)
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "train.device: must be \"auto\", \"cpu\" or \"cuda\" (got '%.32s%s'); each rank takes the GPU "
                     "of its local rank, so there is no cuda:N here",
                     d, strlen(d) > 32 ? "..." : "");
  unsigned gpus = spec->resources ? spec->resources->gpus_per_rank : 0;
  if (strcmp(d, "cpu") == 0 && gpus > 0)
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "train.device: \"cpu\" with resources.gpus_per_rank %u would hold GPUs the job never uses; "
                     "set gpus_per_rank 0 or device \"auto\"/\"cuda\"",
                     gpus);
  return 0;
}
