/* The calls of the C API (unet_shim.h) as C++ functions, without the boundary: they throw shim::error
 * (a status and a message) or libtorch's own exceptions, and unet_shim.cpp turns both into a status.
 * Arguments mean what they mean on the matching unet_* call. */
#ifndef DPOD_UNET_OPS_H
#define DPOD_UNET_OPS_H

#include <memory>

#include "unet_model.h"
#include "unet_shim.h"

namespace shim {

std::unique_ptr<unet> create(const char *config_json, const unet_params &p);
void load_weights(unet &m, const char *path);
void copy_weights(unet &dst, const unet &src);
void freeze(unet &m);
/* Returns the size of the weights file. */
uint64_t save(const unet &m, const char *dir);
void infer(unet &m, int n, int height, int width, int text_len, const float *x, const float *t, const float *ehs,
           const unet_added_cond *added, float *out);
void forward_mse(unet &m, int n, int height, int width, int text_len, const float *x, const float *t,
                 const float *ehs, const unet_added_cond *added, const float *target, float *mse, float *pred);
/* The parameter count and tensor count the config builds, without allocating the parameters. */
void config_num_params(const char *config_json, size_t *num_params, size_t *num_tensors);
void backward_mse(unet &m, const float *grad_mse);
void zero_grad(unet &m);
void param_at(const unet &m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]);
/* *grad_norm is written before a non-finite norm is refused. */
void adamw_step(unet &m, const unet_adamw_params &p, double *grad_norm);
void adamw_state(unet &m, float **exp_avg, float **exp_avg_sq, size_t *n, uint64_t *step);
void adamw_set_step(unet &m, uint64_t step);

/* The op-level profiler behind unet_profile_start/stop. */
void profile_start(const char *json_path);
void profile_stop();

}  // namespace shim

#endif
