/* The attention core of every transformer block, with its own backward. */
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "unet_device.h"
#include "unet_model.h"

#if DPOD_HAVE_SGEMM
extern "C" {
/* The Fortran BLAS libtorch itself calls (OpenBLAS on Debian when installed). */
void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k, const float *alpha,
            const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c,
            const int *ldc);
}
#endif

namespace shim {

/* Direct sgemm_ calls where the BLAS is linked, unless DPOD_ATTENTION_GEMM=aten asks for ATen's
 * matmul (which is what a build without a Fortran BLAS always uses). Decided once per process. */
bool attention_uses_sgemm() {
#if DPOD_HAVE_SGEMM
  static const bool use = [] {
    const char *e = std::getenv("DPOD_ATTENTION_GEMM");
    return !(e && std::strcmp(e, "aten") == 0);
  }();
  return use;
#else
  return false;
#endif
}

namespace {

/* ---- attention core: softmax(scale q k^T) v for every (image, head) ----
 *
 * at::bmm on a CPU without MKL loops over the batch calling select() three times and a GEMM per item,
 * serially: for [batch * heads] small matrices the dispatcher costs more than the arithmetic, and the
 * backward does it four times more. Here each (image, head) is one direct sgemm call that reads q, k, v
 * straight out of the projections' [b, len, heads * d] rows (the row stride is the GEMM's leading
 * dimension, so no head-splitting copies) and writes o in the [b, n, heads * d] rows to_out reads. Items
 * run in parallel when each is too small for BLAS to thread it. The softmax and its backward are single
 * ATen ops over the [b * heads, n, m] probabilities, except on short rows: ATen's softmax over the last
 * dimension costs ~50 ns an element when a row is as short as a cross-attention's text (4 tokens in
 * tiny-sd) against ~4 ns at 64, so rows up to kShortRow run through a plain loop (~7 ns an element,
 * glibc's expf) on each item inside the loop that just wrote its scores. */

void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
             const float *B, int64_t ldb, float *C, int64_t ldc) {
#if DPOD_HAVE_SGEMM
  if (attention_uses_sgemm()) {
    /* Row-major C = alpha op(A) op(B) is column-major C^T = alpha op(B)^T op(A)^T. */
    const char a = tb ? 'T' : 'N', b = ta ? 'T' : 'N';
    const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
    const float beta = 0.0f;
    sgemm_(&a, &b, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    return;
  }
#endif
  /* The same product on ATen, over views of the row-major blocks with their leading dimensions. */
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor a = ta ? at::from_blob((void *)A, {K, M}, {lda, 1}, f32).t() : at::from_blob((void *)A, {M, K}, {lda, 1}, f32);
  at::Tensor b = tb ? at::from_blob((void *)B, {N, K}, {ldb, 1}, f32).t() : at::from_blob((void *)B, {K, N}, {ldb, 1}, f32);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, f32);
  c.copy_(at::mm(a, b).mul_(alpha));
}

constexpr int64_t kShortRow = 16;

/* Softmax of each row of a [rows, cols] block, in place. */
void softmax_rows(float *x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    float *row = x + r * cols;
    float mx = row[0];
    for (int64_t j = 1; j < cols; j++) mx = std::max(mx, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < cols; j++) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < cols; j++) row[j] *= inv;
  }
}

/* The softmax backward on each row: dp (d loss / d probabilities) becomes d loss / d scores,
 * p * (dp - sum(dp * p)), in place. */
void softmax_backward_rows(const float *p, float *dp, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    const float *pr = p + r * cols;
    float *g = dp + r * cols;
    float dot = 0.0f;
    for (int64_t j = 0; j < cols; j++) dot += g[j] * pr[j];
    for (int64_t j = 0; j < cols; j++) g[j] = pr[j] * (g[j] - dot);
  }
}

template <class F>
void for_items(int64_t items, int64_t madds_per_item, const F &f) {
  /* OpenBLAS threads a GEMM itself above ~2^18 multiply-adds; below that, spread the items over threads. */
  if (madds_per_item < (1 << 17)) {
    at::parallel_for(0, items, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, madds_per_item)),
                     [&](int64_t b, int64_t e) {
                       for (int64_t i = b; i < e; i++) f(i);
                     });
  } else {
    for (int64_t i = 0; i < items; i++) f(i);
  }
}

/* Where each (image, head) matrix lives: q rows [n, d] at q + img * q_img + head * d with row stride ldq,
 * k and v likewise with m rows; o rows at o + img * n * dim + head * d with row stride dim. */
struct attn_layout_ {
  int64_t b, heads, n, m, d;
  int64_t q_img, ldq, kv_img, ldkv;
  bool self;
  attn_layout_(const at::Tensor &q, const at::Tensor &kv, int64_t h) {
    TORCH_CHECK(q.is_contiguous() && kv.is_contiguous() && q.scalar_type() == at::kFloat, "attention: bad q/kv");
    self = kv.numel() == 0;
    b = q.size(0);
    n = q.size(1);
    heads = h;
    int64_t dim = self ? q.size(2) / 3 : q.size(2);
    d = dim / h;
    m = self ? n : kv.size(1);
    q_img = n * q.size(2);
    ldq = q.size(2);
    kv_img = self ? q_img : m * kv.size(2);
    ldkv = self ? ldq : kv.size(2);
  }
  int64_t dim() const { return heads * d; }
};

/* q: [b, n, 3 dim] (self-attention: q, k, v side by side) or [b, n, dim] with kv [b, m, 2 dim]. Returns o
 * [b, n, dim] and writes the probabilities into p [b * heads, n, m]. */
at::Tensor attn_core_fwd(const attn_layout_ &L, const float *q, const float *k, double scale, at::Tensor &p,
                         const at::TensorOptions &opt) {
  const int64_t dim = L.dim(), d = L.d, n = L.n, m = L.m;
  const float *v = k + dim;
  p = at::empty({L.b * L.heads, n, m}, opt);
  at::Tensor o = at::empty({L.b, n, dim}, opt);
  float *pp = p.data_ptr<float>(), *po = o.data_ptr<float>();
  for_items(L.b * L.heads, n * m * d, [&](int64_t i) {
    int64_t img = i / L.heads, hd = (i % L.heads) * d;
    gemm_rm(false, true, n, m, d, (float)scale, q + img * L.q_img + hd, L.ldq, k + img * L.kv_img + hd, L.ldkv,
            pp + i * n * m, m);
    if (m <= kShortRow) softmax_rows(pp + i * n * m, n, m);
  });
  if (m > kShortRow) at::_softmax_out(p, p, -1, false);
  for_items(L.b * L.heads, n * m * d, [&](int64_t i) {
    int64_t img = i / L.heads, hd = (i % L.heads) * d;
    gemm_rm(false, false, n, d, m, 1.0f, pp + i * n * m, m, v + img * L.kv_img + hd, L.ldkv, po + img * n * dim + hd,
            dim);
  });
  return o;
}

/* Autograd wrapper: (q, kv) as attn_core_fwd takes them (kv empty for self-attention: custom functions
 * refuse undefined inputs); the gradients come back in the same layouts. */
struct attn_core_fn : public torch::autograd::Function<attn_core_fn> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &q, const at::Tensor &kv,
                            int64_t heads, double scale) {
    attn_layout_ L(q, kv, heads);
    const float *pq = q.data_ptr<float>();
    const float *pk = L.self ? pq + L.dim() : kv.data_ptr<float>();
    at::Tensor p;
    at::Tensor o = attn_core_fwd(L, pq, pk, scale, p, q.options());
    ctx->save_for_backward({q, kv, p});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["scale"] = scale;
    return o;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &kv = saved[1], &p = saved[2];
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const float scale = (float)ctx->saved_data["scale"].toDouble();
    attn_layout_ L(q, kv, heads);
    const int64_t dim = L.dim(), d = L.d, n = L.n, m = L.m;
    at::Tensor go = grad_out[0].contiguous();
    const float *pq = q.data_ptr<float>();
    const float *pk = L.self ? pq + dim : kv.data_ptr<float>();
    const float *pv = pk + dim;
    const float *pp = p.data_ptr<float>(), *dO = go.data_ptr<float>();
    at::Tensor dq = at::empty_like(q), dkv = L.self ? at::Tensor() : at::empty_like(kv);
    float *pdq = dq.data_ptr<float>();
    float *pdk = L.self ? pdq + dim : dkv.data_ptr<float>();
    float *pdv = pdk + dim;
    at::Tensor dp = at::empty_like(p);
    float *pdp = dp.data_ptr<float>();
    for_items(L.b * heads, n * m * d, [&](int64_t i) {
      int64_t img = i / heads, hd = (i % heads) * d;
      const float *Pi = pp + i * n * m, *dOi = dO + img * n * dim + hd;
      /* dV = P^T dO, dP = dO V^T */
      gemm_rm(true, false, m, d, n, 1.0f, Pi, m, dOi, dim, pdv + img * L.kv_img + hd, L.ldkv);
      gemm_rm(false, true, n, m, d, 1.0f, dOi, dim, pv + img * L.kv_img + hd, L.ldkv, pdp + i * n * m, m);
      if (m <= kShortRow) softmax_backward_rows(Pi, pdp + i * n * m, n, m); /* dP becomes dS */
    });
    at::Tensor ds = m <= kShortRow ? dp : at::_softmax_backward_data(dp, p, -1, at::kFloat);
    const float *pds = ds.data_ptr<float>();
    for_items(L.b * heads, n * m * d, [&](int64_t i) {
      int64_t img = i / heads, hd = (i % heads) * d;
      const float *dSi = pds + i * n * m;
      /* dQ = scale dS K, dK = scale dS^T Q */
      gemm_rm(false, false, n, d, m, scale, dSi, m, pk + img * L.kv_img + hd, L.ldkv, pdq + img * L.q_img + hd, L.ldq);
      gemm_rm(true, false, m, d, n, scale, dSi, m, pq + img * L.q_img + hd, L.ldq, pdk + img * L.kv_img + hd, L.ldkv);
    });
    return {dq, dkv, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor attention_core(const at::Tensor &q, const at::Tensor &kv, int64_t heads, double scale) {
  if (attention_uses_ops_(q)) return attention_core_ops_(q, kv, heads, scale); /* off the CPU: unet_device.cpp */
  if (at::GradMode::is_enabled()) return attn_core_fn::apply(q, kv, heads, scale);
  attn_layout_ L(q, kv, heads);
  const float *pq = q.data_ptr<float>();
  at::Tensor p;
  return attn_core_fwd(L, pq, L.self ? pq + L.dim() : kv.data_ptr<float>(), scale, p, q.options());
}

}  // namespace shim
