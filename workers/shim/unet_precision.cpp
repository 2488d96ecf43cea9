/* Mixed precision (unet_set_precision): the model's precision, the bf16 storage of a frozen model's
 * weights, and the attention core on ATen ops for bf16. The casts of weights and activations themselves
 * are in the forward (unet_model.cpp), one line per op kind. */
#include <ATen/core/grad_mode.h>

#include <ATen/Parallel.h>

#include <chrono>
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "unet_model.h"
#include "unet_shim.h"

extern "C" {
#include "dpod_error.h"
}

namespace shim {

static_assert(UNET_PRECISION_FP16 == 2, "lowp_dtype (unet_model.h) spells fp16 as 2");

static const char *lowp_name(int p) { return p == UNET_PRECISION_FP16 ? "fp16" : "bf16"; }

void require_fp32_storage(const unet &m, const char *fn) {
  if (m.bf16_stored)
    throw error(DPOD_ESTATE, std::string(fn) + ": this frozen " + lowp_name(m.precision) + " model stores its weights in " +
                                 lowp_name(m.precision) +
                                 " (no float32 copy); set its weights before unet_freeze/unet_set_precision");
}

/* One bf16 (fp16) buffer in the layout of the float32 one; every weight of two or more dimensions and every fused
 * leaf becomes a view of it, so the forward's cast to bf16 is a no-op, and the float32 copy and the
 * (unused) gradient buffer go. */
void store_frozen_bf16(unet &m) {
  if (m.bf16_stored || !m.frozen || m.precision == UNET_PRECISION_FP32 || !m.lora.empty()) return;
  at::NoGradGuard ng;
  at::Tensor b = m.flat.to(lowp_dtype(m.precision));
  /* Biases and norm scales (1-D, a few thousandths of the weights) stay float32: the norms read theirs
   * in float32 and the others are cast where they are used, exactly as in the unfrozen model. */
  for (auto &p : m.params)
    p.t = p.shape.size() == 1 ? m.flat.narrow(0, p.offset, p.numel).clone() : b.narrow(0, p.offset, p.numel).view(p.shape);
  for (size_t i = 0; i < m.spans.size(); i++) {
    const span_ &sp = m.spans[i];
    const param_ &p0 = m.params[(size_t)sp.first];
    m.fused[i] = b.narrow(0, p0.offset, sp.count * sp.rows * sp.cols).view({sp.count * sp.rows, sp.cols});
  }
  m.flat = b;
  m.flat_grad = at::Tensor();
  m.bf16_stored = true;
}

void set_precision(unet &m, int p) {
  if (p != UNET_PRECISION_FP32 && p != UNET_PRECISION_BF16 && p != UNET_PRECISION_FP16)
    throw error(DPOD_EINVAL, "unet_set_precision: unknown precision " + std::to_string(p));
  /* fp16 runs only on CUDA: a CPU libtorch (Debian's 1.13) has no fp16 convolution, addmm, bmm, group_norm,
   * softmax or silu kernels at all ("not implemented for 'Half'"). On CUDA it takes bf16's cast points;
   * dpo-worker scales its loss (workers/dpo/loss_scale.h). */
  /* DPOD_TEST_FP16_ON_CPU=1 (tests only) lets a CPU model take fp16 anyway, so that the cast points and the
   * fp16 storage can be checked where there is no GPU: its forward then fails at the first fp16 kernel. */
  const char *test_cpu = std::getenv("DPOD_TEST_FP16_ON_CPU");
  const bool allow_cpu = test_cpu && std::strcmp(test_cpu, "1") == 0;
  if (p == UNET_PRECISION_FP16 && !allow_cpu && (!m.flat.defined() || m.flat.is_cpu()))
    throw error(DPOD_EUNSUPPORTED, "precision fp16 is not supported on the CPU (this libtorch has no fp16 "
                                   "convolution or matmul kernels for it); use bf16, or fp16 on a CUDA device");
  if (m.bf16_stored && p != m.precision)
    throw error(DPOD_ESTATE, std::string("unet_set_precision: this frozen model's weights are stored in ") +
                                 lowp_name(m.precision) + "; it cannot change to " +
                                 (p == UNET_PRECISION_FP32 ? "fp32" : lowp_name(p)));
  m.precision = p;
  m.mse = at::Tensor();
  store_frozen_bf16(m);
}

/* softmax(scale q k^T) v as diffusers' AttnProcessor computes it, on batched ATen matmuls in q's dtype
 * (oneDNN's bf16 GEMM, float32 accumulation inside) instead of the direct sgemm_ path, which is float32
 * only. The scale is applied by the GEMM (baddbmm's alpha) to its float32 accumulator before the one
 * rounding to bf16. The softmax runs on the bf16 scores: torch 1.13's CPU kernel for bf16 converts each
 * row to float32, takes the max, exponentials and sum in float32 and rounds only the output, so it
 * returns what softmax(float32(s)).to(bf16) does (bit for bit on 256-long rows, within a bf16 rounding
 * on others) without the two float32 copies of the [b, heads, n, m] scores each way, which cost more
 * than the GEMMs here. */
at::Tensor attention_core_lowp(const at::Tensor &q, const at::Tensor &kv, int64_t heads, double scale) {
  const int64_t b = q.size(0), n = q.size(1);
  at::Tensor Q, K, V;
  int64_t dim;
  if (kv.numel() == 0) {
    dim = q.size(2) / 3;
    at::Tensor qkv = q.view({b, n, 3, heads, dim / heads}).permute({2, 0, 3, 1, 4}); /* [3, b, h, n, d] */
    Q = qkv[0], K = qkv[1], V = qkv[2];
  } else {
    dim = q.size(2);
    const int64_t mlen = kv.size(1);
    Q = q.view({b, n, heads, dim / heads}).transpose(1, 2);                           /* [b, h, n, d] */
    at::Tensor kvs = kv.view({b, mlen, 2, heads, dim / heads}).permute({2, 0, 3, 1, 4}); /* [2, b, h, m, d] */
    K = kvs[0], V = kvs[1];
  }
  const int64_t d = dim / heads, m = K.size(2);
  at::Tensor Q3 = Q.reshape({b * heads, n, d}), K3 = K.reshape({b * heads, m, d});
  at::Tensor s = at::baddbmm(at::empty({b * heads, n, m}, q.options()), Q3, K3.transpose(1, 2), 0.0, scale);
  at::Tensor p = at::softmax(s, -1).view({b, heads, n, m});          /* bf16, float32 inside */
  at::Tensor o = at::matmul(p, V);                                   /* [b, h, n, d] */
  return o.transpose(1, 2).reshape({b, n, dim});
}

double matmul_gflops(int n, int p, int threads, int reps) {
  if (n < 1 || n > 16384 || reps < 1 || (p != UNET_PRECISION_FP32 && p != UNET_PRECISION_BF16))
    throw error(DPOD_EINVAL, "unet_matmul_gflops: n 1..16384, reps >= 1, precision fp32 or bf16");
  if (threads > 0) {
    at::set_num_threads(threads);
    set_blas_threads(threads);
  }
  at::NoGradGuard ng;
  const auto dt = p == UNET_PRECISION_BF16 ? at::kBFloat16 : at::kFloat;
  at::Tensor a = at::randn({n, n}).to(dt), b = at::randn({n, n}).to(dt), c = at::mm(a, b);
  double best = 1e300;
  for (int r = 0; r < reps; r++) {
    auto t0 = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * (double)n * n * n / best * 1e-9;
}

}  // namespace shim
