/* Internal to the shim: where a model lives and how the host sees it (unet_device.cpp).
 *
 * A model is built and initialised on the host, then moved to its device. On a device other than the CPU
 * the flat parameter, gradient and optimizer buffers stay there, the forward and the optimizer run there
 * as plain ATen ops, and the host sees the buffers only through copies: the gradients through a staging
 * buffer (pinned with CUDA) that the worker all-reduces, everything else through snapshots ("mirrors")
 * whose writes are applied at the next call on the handle. DPOD_GRAD_STAGING=copy gives a CPU model the
 * same host copies, so the staging path is tested where there is no GPU. */
#ifndef DPOD_UNET_DEVICE_H
#define DPOD_UNET_DEVICE_H

#include "adamw_kernel.h"
#include "unet_model.h"

namespace shim {

/* "cpu", "cuda" or "cuda:N" (NULL or "": cpu) as a device of this process; a CUDA device this libtorch or
 * this machine does not have is refused by name (DPOD_EUNSUPPORTED), a malformed name too (DPOD_EINVAL). */
c10::Device parse_device_(const char *name);
/* CUDA devices visible to this libtorch: 0 for a CPU-only build or a machine without a GPU. */
int cuda_device_count_();

/* Moves a freshly allocated model (parameters initialised on the host) to d and rebinds every leaf and
 * gradient view; decides m.host_copies. */
void to_device_(unet &m, const c10::Device &d);

/* t on the model's device: t itself when it is already there (the CPU path copies nothing). */
at::Tensor on_model_(const unet &m, const at::Tensor &t);

/* A host snapshot of buffer `src` (a flat buffer of m) that stays valid until the next call on the handle,
 * which first writes it back (host_sync_). */
float *host_mirror_(unet &m, const at::Tensor &src);
/* Writes every mirror handed out since the last call back to its buffer and drops it. */
void host_sync_(unet &m);

/* The trainable gradient (the adapters' with LoRA) on the host: the gradient buffer itself on a CPU model
 * without host copies, else a copy in the staging buffer. unet_grad_unstage copies it back. */
float *grad_stage_(unet &m, size_t *n);
void grad_unstage_(unet &m);

/* Sum of squares of g in double, on g's device. */
double sumsq_device_(const at::Tensor &g);
/* Whether the AdamW step on w runs as ATen ops (w not on the CPU, or DPOD_ADAMW=aten) rather than the
 * hand-written CPU loop. */
bool adamw_uses_aten_(const at::Tensor &w);
/* unet_adamw_kernel_'s arithmetic, rounding for rounding, as ATen ops on w, g, m, v [n] of any device. */
void adamw_aten_(at::Tensor &w, at::Tensor &g, at::Tensor &m, at::Tensor &v, const unet_adamw_coef_ &c);

/* attention_core as differentiable ATen ops (matmul, softmax), for tensors off the CPU, or on the CPU
 * with DPOD_ATTENTION_GEMM=ops. */
bool attention_uses_ops_(const at::Tensor &q);
at::Tensor attention_core_ops_(const at::Tensor &q, const at::Tensor &kv, int64_t heads, double scale);

}  // namespace shim

#endif
