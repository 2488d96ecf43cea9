/* Internal to the shim: the AdamW and gradient-norm loops over raw float arrays (adamw_kernel.cpp). */
#ifndef DPOD_ADAMW_KERNEL_H
#define DPOD_ADAMW_KERNEL_H

#include <cstdint>

struct unet_adamw_coef_ {
  bool do_clip;         /* scale the gradient by `clip` (in place) first */
  float clip;           /* max_norm / (norm + 1e-6) */
  float decay;          /* 1 - lr * weight_decay */
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float sqrt_bc2;       /* sqrt(1 - beta2^step) */
  float eps;
  float step_size;      /* lr / (1 - beta1^step) */
};

/* Sum of squares of x [n], accumulated in double; the same result on every instruction set. */
double unet_sumsq_(const float *x, int64_t n);

/* One AdamW step on w, m, v [n] with gradient g [n] (clipped in place if c->do_clip). */
void unet_adamw_kernel_(float *w, float *g, float *m, float *v, int64_t n, const unet_adamw_coef_ *c);

#endif
