/* Which device a rank trains on, from train.device (workers/dpo/device_pick.c): the rule in one place, with
 * no torch and no MPI, so it is unit-tested on a machine without a GPU. */
#ifndef DPOD_DEVICE_PICK_H
#define DPOD_DEVICE_PICK_H

#include <stddef.h>
#include <stdint.h>

/* spec_device: train.device ("auto", "cpu", "cuda"; NULL or "": auto). gpus_per_rank: resources.gpus_per_rank.
 * cuda_devices: the CUDA devices this process's libtorch sees (unet_cuda_device_count). local_rank: this
 * rank's index among the ranks of its node (the launcher's OMPI_COMM_WORLD_LOCAL_RANK or SLURM_LOCALID).
 * Writes "cpu" or "cuda:N" into out [outlen] and returns 0; or returns DPOD_EUNSUPPORTED (CUDA asked for
 * and not there) or DPOD_EINVAL with err naming the problem. */
int dpo_device_pick(const char *spec_device, uint32_t gpus_per_rank, int cuda_devices, int local_rank, char *out,
                    size_t outlen, char *err, size_t errlen);

/* The local rank from the launcher's environment: OMPI_COMM_WORLD_LOCAL_RANK, else SLURM_LOCALID; -1 when
 * neither is set; DPOD_EINVAL (err naming the variable) when one is not a number from 0 to 65535. */
int dpo_local_rank_from_env(int *local_rank, char *err, size_t errlen);

#endif
