/* The libtorch shim: UNet2DConditionModel as plain ATen ops behind a C API.
 *
 * The model is not a tree of torch::nn modules but a list of parameters in diffusers' state-dict order
 * plus small structs that hold indices into it. That keeps the names exact by construction, lets every
 * parameter be a view into one flat buffer (and every gradient a view into another, for in-place
 * all-reduce), and keeps this file on <ATen/ATen.h> rather than the much slower <torch/torch.h>.
 *
 * Numerics follow diffusers 0.31 with AttnProcessor (scale folded into the score GEMM, exact GELU in
 * GEGLU, GroupNorm eps 1e-6 inside Transformer2DModel, the timestep embedding in float32), so the outputs
 * match the reference fixtures to float32 rounding. Where diffusers' op sequence is slow on a CPU the
 * arithmetic is the same but the ops are not: q/k/v come from one matmul, the attention core is direct
 * sgemm calls per head (attn_core_fn), 1x1 proj_in/proj_out run as Linear, and AdamW is one fused loop. */
#include "unet_shim.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <memory>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "adamw_kernel.h"
#include "safetensors.h"
#include "unet_config.h"
extern "C" {
#include "dpod_error.h"
/* The Fortran BLAS libtorch itself calls (OpenBLAS on Debian when installed). */
void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k, const float *alpha,
            const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c,
            const int *ldc);
}

namespace {

enum init_kind { INIT_FAN_IN, INIT_ONES, INIT_ZEROS };

struct param_ {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
  init_kind init = INIT_FAN_IN;
  int64_t fan_in = 1;
  at::Tensor t;  /* view into the flat parameter buffer */
};

struct lin_ {
  int w = -1, b = -1;
};
struct conv_ {
  int w = -1, b = -1;
  int64_t stride = 1, pad = 0;
  bool pad_right = false; /* downsample_padding 0: pad (0, 1, 0, 1) before the strided conv */
};
struct norm_ {
  int w = -1, b = -1;
  int64_t groups = 0; /* 0: LayerNorm over the last dimension */
  double eps = 1e-5;
};
struct resnet_ {
  norm_ n1, n2;
  conv_ c1, c2, shortcut;
  lin_ temb;
  bool has_shortcut = false;
  double scale = 1.0;
};
struct attn_ {
  lin_ q, k, v, out;
  int qkv = -1; /* self-attention: index of the fused [3 dim, dim] to_q/to_k/to_v leaf in unet::fused */
  int kv = -1;  /* cross-attention: the fused [2 dim, ctx_dim] to_k/to_v leaf */
  int64_t heads = 1, dim_head = 1;
  double scale = 1.0;
};
struct tblock_ {
  norm_ n1, n2, n3;
  attn_ a1, a2;
  lin_ ff1, ff2;
};
struct transformer_ {
  norm_ norm;
  bool linear = false;
  conv_ pin_c, pout_c; /* use_linear_projection false */
  int pin_2d = -1, pout_2d = -1; /* their 1x1 kernels as [out, in] leaves in unet::fused */
  lin_ pin_l, pout_l;  /* use_linear_projection true */
  std::vector<tblock_> blocks;
};
/* Consecutive weights used as one matrix: `count` parameters from `first`, each [rows, cols]. */
struct span_ {
  int first = 0, count = 0;
  int64_t rows = 0, cols = 0;
};
struct block_ {
  std::vector<transformer_> attns;
  std::vector<resnet_> resnets;
  bool has_sampler = false;
  conv_ sampler;
};

}  // namespace

struct unet {
  unet_config_ cfg;
  std::string cfg_json;
  std::vector<param_> params;
  /* Leaves over runs of consecutive parameters (q/k/v weights) so one matmul computes all three; like
   * the parameters they are views of the flat buffer, and their .grad views of the gradient buffer. */
  std::vector<span_> spans;
  std::vector<at::Tensor> fused;
  at::Tensor flat, flat_grad;          /* [num_params] float32 */
  at::Tensor adam_m, adam_v;           /* allocated on the first step */
  int64_t adam_step = 0;
  bool frozen = false;
  std::string err;

  conv_ conv_in, conv_out;
  lin_ t1, t2;
  std::vector<block_> downs, ups;
  block_ mid;
  norm_ norm_out;

  at::Tensor mse;  /* [n] with its graph, between unet_forward_mse and unet_backward_mse */
  int mse_n = 0;
};

namespace {

/* ---- building: names and shapes in diffusers' registration order ---- */

struct builder_ {
  std::vector<param_> &ps;
  std::vector<span_> &spans;

  int add(const std::string &name, std::vector<int64_t> shape, init_kind init, int64_t fan_in) {
    param_ p;
    p.name = name;
    p.shape = std::move(shape);
    p.numel = 1;
    for (int64_t s : p.shape) p.numel *= s;
    p.init = init;
    p.fan_in = fan_in;
    ps.push_back(std::move(p));
    return (int)ps.size() - 1;
  }
  lin_ linear(const std::string &pre, int64_t in, int64_t out, bool bias) {
    lin_ l;
    l.w = add(pre + ".weight", {out, in}, INIT_FAN_IN, in);
    if (bias) l.b = add(pre + ".bias", {out}, INIT_FAN_IN, in);
    return l;
  }
  conv_ conv(const std::string &pre, int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad) {
    conv_ c;
    c.w = add(pre + ".weight", {out, in, k, k}, INIT_FAN_IN, in * k * k);
    c.b = add(pre + ".bias", {out}, INIT_FAN_IN, in * k * k);
    c.stride = stride;
    c.pad = pad;
    return c;
  }
  norm_ norm(const std::string &pre, int64_t ch, int64_t groups, double eps) {
    norm_ n;
    n.w = add(pre + ".weight", {ch}, INIT_ONES, 1);
    n.b = add(pre + ".bias", {ch}, INIT_ZEROS, 1);
    n.groups = groups;
    n.eps = eps;
    return n;
  }
  resnet_ resnet(const std::string &pre, int64_t in, int64_t out, int64_t temb, const unet_config_ &c, double scale) {
    resnet_ r;
    r.n1 = norm(pre + "norm1", in, c.norm_num_groups, c.norm_eps);
    r.c1 = conv(pre + "conv1", in, out, 3, 1, 1);
    r.temb = linear(pre + "time_emb_proj", temb, out, true);
    r.n2 = norm(pre + "norm2", out, c.norm_num_groups, c.norm_eps);
    r.c2 = conv(pre + "conv2", out, out, 3, 1, 1);
    if (in != out) {
      r.has_shortcut = true;
      r.shortcut = conv(pre + "conv_shortcut", in, out, 1, 1, 0);
    }
    r.scale = scale;
    return r;
  }
  /* A parameter seen as one [rows, cols] matrix (a 1x1 kernel used as a Linear weight). */
  int matrix(int param, int64_t rows, int64_t cols) {
    span_ sp;
    sp.first = param;
    sp.count = 1;
    sp.rows = rows;
    sp.cols = cols;
    spans.push_back(sp);
    return (int)spans.size() - 1;
  }
  attn_ attention(const std::string &pre, int64_t dim, int64_t ctx_dim, int64_t heads, bool self) {
    attn_ a;
    a.heads = heads;
    a.dim_head = dim / heads;
    a.scale = std::pow((double)a.dim_head, -0.5);
    a.q = linear(pre + "to_q", dim, dim, false);
    a.k = linear(pre + "to_k", ctx_dim, dim, false);
    a.v = linear(pre + "to_v", ctx_dim, dim, false);
    a.out = linear(pre + "to_out.0", dim, dim, true);
    /* to_q, to_k, to_v have no bias, so their weights are adjacent in the state dict. */
    span_ sp;
    sp.first = self ? a.q.w : a.k.w;
    sp.count = self ? 3 : 2;
    sp.rows = dim;
    sp.cols = ctx_dim;
    (self ? a.qkv : a.kv) = (int)spans.size();
    spans.push_back(sp);
    return a;
  }
  transformer_ transformer(const std::string &pre, int64_t ch, int64_t heads, int64_t layers, int64_t ctx_dim,
                           const unet_config_ &c) {
    transformer_ t;
    t.linear = c.use_linear_projection;
    t.norm = norm(pre + "norm", ch, c.norm_num_groups, 1e-6);
    if (t.linear) t.pin_l = linear(pre + "proj_in", ch, ch, true);
    else t.pin_c = conv(pre + "proj_in", ch, ch, 1, 1, 0), t.pin_2d = matrix(t.pin_c.w, ch, ch);
    for (int64_t l = 0; l < layers; l++) {
      std::string b = pre + "transformer_blocks." + std::to_string(l) + ".";
      tblock_ tb;
      tb.n1 = norm(b + "norm1", ch, 0, 1e-5);
      tb.a1 = attention(b + "attn1.", ch, ch, heads, true);
      tb.n2 = norm(b + "norm2", ch, 0, 1e-5);
      tb.a2 = attention(b + "attn2.", ch, ctx_dim, heads, false);
      tb.n3 = norm(b + "norm3", ch, 0, 1e-5);
      tb.ff1 = linear(b + "ff.net.0.proj", ch, ch * 4 * 2, true);
      tb.ff2 = linear(b + "ff.net.2", ch * 4, ch, true);
      t.blocks.push_back(tb);
    }
    if (t.linear) t.pout_l = linear(pre + "proj_out", ch, ch, true);
    else t.pout_c = conv(pre + "proj_out", ch, ch, 1, 1, 0), t.pout_2d = matrix(t.pout_c.w, ch, ch);
    return t;
  }
};

void build(unet &m) {
  const unet_config_ &c = m.cfg;
  builder_ B{m.params, m.spans};
  const size_t nb = c.block_out_channels.size();
  const int64_t ted = c.time_embed_dim();
  const auto &bo = c.block_out_channels;

  m.conv_in = B.conv("conv_in", c.in_channels, bo[0], c.conv_in_kernel, 1, (c.conv_in_kernel - 1) / 2);
  m.t1 = B.linear("time_embedding.linear_1", bo[0], ted, true);
  m.t2 = B.linear("time_embedding.linear_2", ted, ted, true);

  /* Down blocks: attentions are registered before resnets (ModuleList assignment order). */
  int64_t out = bo[0];
  for (size_t i = 0; i < nb; i++) {
    int64_t in = out;
    out = bo[i];
    std::string p = "down_blocks." + std::to_string(i) + ".";
    block_ blk;
    if (c.down_cross[i])
      for (int l = 0; l < c.layers_per_block[i]; l++)
        blk.attns.push_back(B.transformer(p + "attentions." + std::to_string(l) + ".", out, c.heads[i],
                                          c.transformer_layers_per_block[i], c.cross_attention_dim[i], c));
    for (int l = 0; l < c.layers_per_block[i]; l++)
      blk.resnets.push_back(B.resnet(p + "resnets." + std::to_string(l) + ".", l == 0 ? in : out, out, ted, c, 1.0));
    if (i + 1 < nb) {
      blk.has_sampler = true;
      blk.sampler = B.conv(p + "downsamplers.0.conv", out, out, 3, 2, c.downsample_padding);
      if (c.downsample_padding == 0) blk.sampler.pad_right = true;
    }
    m.downs.push_back(std::move(blk));
  }

  /* Up blocks use the per-block lists reversed. */
  out = bo[nb - 1];
  for (size_t i = 0; i < nb; i++) {
    size_t r = nb - 1 - i;
    int64_t prev = out;
    out = bo[r];
    int64_t in = bo[i + 1 < nb ? nb - 2 - i : 0];
    int nl = c.layers_per_block[r] + 1;
    std::string p = "up_blocks." + std::to_string(i) + ".";
    block_ blk;
    if (c.up_cross[i])
      for (int l = 0; l < nl; l++)
        blk.attns.push_back(B.transformer(p + "attentions." + std::to_string(l) + ".", out, c.heads[r],
                                          c.transformer_layers_per_block[r], c.cross_attention_dim[r], c));
    for (int l = 0; l < nl; l++) {
      int64_t skip = (l == nl - 1) ? in : out;
      int64_t rin = (l == 0) ? prev : out;
      blk.resnets.push_back(B.resnet(p + "resnets." + std::to_string(l) + ".", rin + skip, out, ted, c, 1.0));
    }
    if (i + 1 < nb) {
      blk.has_sampler = true;
      blk.sampler = B.conv(p + "upsamplers.0.conv", out, out, 3, 1, 1);
    }
    m.ups.push_back(std::move(blk));
  }

  /* The mid block is assigned after the up_blocks ModuleList, so it follows it in the state dict. */
  int64_t ch = bo[nb - 1];
  m.mid.attns.push_back(B.transformer("mid_block.attentions.0.", ch, c.heads[nb - 1],
                                      c.transformer_layers_per_block[nb - 1], c.cross_attention_dim[nb - 1], c));
  for (int l = 0; l < 2; l++)
    m.mid.resnets.push_back(
        B.resnet("mid_block.resnets." + std::to_string(l) + ".", ch, ch, ted, c, c.mid_block_scale_factor));

  m.norm_out = B.norm("conv_norm_out", bo[0], c.norm_num_groups, c.norm_eps);
  m.conv_out = B.conv("conv_out", bo[0], c.out_channels, c.conv_out_kernel, 1, (c.conv_out_kernel - 1) / 2);
}

/* One flat buffer for parameters and one for gradients; every parameter is a view into the first and its
 * .grad a view into the second, so backward accumulates straight into the buffer the worker all-reduces. */
void allocate(unet &m, uint64_t seed) {
  int64_t total = 0;
  for (auto &p : m.params) {
    p.offset = total;
    total += p.numel;
  }
  at::NoGradGuard ng;
  m.flat = at::empty({total}, at::kFloat);
  m.flat_grad = at::zeros({total}, at::kFloat);
  float *base = m.flat.data_ptr<float>();
  for (auto &p : m.params) {
    at::Tensor v = m.flat.narrow(0, p.offset, p.numel).view(p.shape);
    switch (p.init) {
      case INIT_ONES: v.fill_(1.0); break;
      case INIT_ZEROS: v.zero_(); break;
      default: {
        /* kaiming_uniform_(a=sqrt(5)) for weights and the matching bias init both give U(-1/sqrt(fan_in), +).
         * Drawn from a counter-based hash of (seed, element) rather than torch's serial generator: the same
         * distribution, deterministic, and parallel (an SD-sized model initialises in a second, not 20). */
        const float bound = (float)(1.0 / std::sqrt((double)p.fan_in));
        float *dst = base + p.offset;
        const uint64_t first = (uint64_t)p.offset + 1;
        at::parallel_for(0, p.numel, 1 << 16, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; i++) {
            /* splitmix64 output number (element index + 1) of the stream that starts at `seed` */
            uint64_t z = seed + (first + (uint64_t)i) * 0x9E3779B97F4A7C15ull;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            z ^= z >> 31;
            float u = (float)(z >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
            dst[i] = (2.0f * u - 1.0f) * bound;
          }
        });
      }
    }
    p.t = v.detach();
    p.t.requires_grad_(true);
    p.t.mutable_grad() = m.flat_grad.narrow(0, p.offset, p.numel).view(p.shape);
  }
  for (const span_ &sp : m.spans) {
    const param_ &p0 = m.params[(size_t)sp.first];
    for (int i = 1; i < sp.count; i++)
      if (m.params[(size_t)sp.first + i].offset != p0.offset + i * sp.rows * sp.cols)
        throw std::logic_error("fused weights are not adjacent: " + p0.name);
    int64_t len = sp.count * sp.rows * sp.cols;
    at::Tensor t = m.flat.narrow(0, p0.offset, len).view({sp.count * sp.rows, sp.cols}).detach();
    t.requires_grad_(true);
    t.mutable_grad() = m.flat_grad.narrow(0, p0.offset, len).view({sp.count * sp.rows, sp.cols});
    m.fused.push_back(t);
  }
}

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
  /* Row-major C = alpha op(A) op(B) is column-major C^T = alpha op(B)^T op(A)^T. */
  const char a = tb ? 'T' : 'N', b = ta ? 'T' : 'N';
  const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
  const float beta = 0.0f;
  sgemm_(&a, &b, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
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

/* ---- forward ---- */

struct fwd_ {
  const unet &m;
  /* Without autograd recording, fresh intermediates may be overwritten in place (less memory traffic).
   * With it, keep every op out of place so nothing a backward formula needs is clobbered. */
  bool inplace = !at::GradMode::is_enabled();

  at::Tensor silu(at::Tensor x) const { return inplace ? at::silu_(x) : at::silu(x); }
  /* a + b where a is a fresh intermediate nobody else holds. */
  at::Tensor add(at::Tensor a, const at::Tensor &b) const { return inplace ? a.add_(b) : a + b; }
  const at::Tensor &P(int i) const { return m.params[(size_t)i].t; }
  at::Tensor opt(int i) const { return i >= 0 ? m.params[(size_t)i].t : at::Tensor(); }

  at::Tensor conv(const conv_ &c, const at::Tensor &x) const {
    if (c.pad_right) {
      at::Tensor xp = at::constant_pad_nd(x, {0, 1, 0, 1}, 0);
      const int64_t st[2] = {c.stride, c.stride}, pd[2] = {0, 0};
      return at::conv2d(xp, P(c.w), P(c.b), at::IntArrayRef(st), at::IntArrayRef(pd));
    }
    const int64_t st[2] = {c.stride, c.stride}, pd[2] = {c.pad, c.pad};
    return at::conv2d(x, P(c.w), P(c.b), at::IntArrayRef(st), at::IntArrayRef(pd));
  }
  at::Tensor linear(const lin_ &l, const at::Tensor &x) const { return at::linear(x, P(l.w), opt(l.b)); }
  at::Tensor norm(const norm_ &n, const at::Tensor &x) const {
    if (n.groups > 0) return at::group_norm(x, n.groups, P(n.w), P(n.b), n.eps);
    return at::layer_norm(x, {x.size(-1)}, P(n.w), P(n.b), n.eps);
  }

  /* temb_act: silu(time embedding) [n, time_embed_dim], shared by every resnet. */
  at::Tensor resnet(const resnet_ &r, const at::Tensor &x, const at::Tensor &temb_act) const {
    at::Tensor h = conv(r.c1, silu(norm(r.n1, x)));
    h = add(h, linear(r.temb, temb_act).unsqueeze(-1).unsqueeze(-1));
    h = conv(r.c2, silu(norm(r.n2, h)));
    at::Tensor o = r.has_shortcut ? add(conv(r.shortcut, x), h) : x + h;
    if (r.scale != 1.0) o = inplace ? o.div_(r.scale) : o / r.scale;
    return o;
  }

  /* x [b, n, dim]; ctx [b, m, ctx_dim] or undefined for self-attention. The projections run as one
   * matmul against the fused weights, and the attention core reads every head straight out of them. */
  at::Tensor attention(const attn_ &a, const at::Tensor &x, const at::Tensor &ctx) const {
    at::Tensor q, kv;
    if (!ctx.defined()) {
      q = at::linear(x, m.fused[(size_t)a.qkv]); /* [b, n, 3 dim] */
      kv = at::empty({0}, x.options());
    } else {
      q = linear(a.q, x);                         /* [b, n, dim] */
      kv = at::linear(ctx, m.fused[(size_t)a.kv]); /* [b, m, 2 dim] */
    }
    at::Tensor o;
    if (at::GradMode::is_enabled()) {
      o = attn_core_fn::apply(q, kv, a.heads, a.scale);
    } else {
      attn_layout_ L(q, kv, a.heads);
      const float *pq = q.data_ptr<float>();
      at::Tensor p;
      o = attn_core_fwd(L, pq, L.self ? pq + L.dim() : kv.data_ptr<float>(), a.scale, p, q.options());
    }
    return linear(a.out, o);
  }

  /* The 1x1 proj_in/proj_out convolutions run as Linear layers on the [b * h * w, c] rows the blocks use
   * anyway: one layout copy in, none out (the residual add reads the NHWC view directly). */
  at::Tensor transformer(const transformer_ &t, const at::Tensor &x, const at::Tensor &ehs) const {
    int64_t b = x.size(0), c = x.size(1), hh = x.size(2), ww = x.size(3);
    at::Tensor h = norm(t.norm, x).permute({0, 2, 3, 1}).reshape({b * hh * ww, c});
    h = t.linear ? linear(t.pin_l, h) : at::linear(h, m.fused[(size_t)t.pin_2d], P(t.pin_c.b));
    int64_t inner = h.size(1);
    h = h.view({b, hh * ww, inner});
    for (const tblock_ &tb : t.blocks) {
      h = add(attention(tb.a1, norm(tb.n1, h), at::Tensor()), h);
      h = add(attention(tb.a2, norm(tb.n2, h), ehs), h);
      std::vector<at::Tensor> hg = linear(tb.ff1, norm(tb.n3, h)).chunk(2, -1);
      h = add(linear(tb.ff2, hg[0] * at::gelu(hg[1])), h);
    }
    h = t.linear ? linear(t.pout_l, h) : at::linear(h, m.fused[(size_t)t.pout_2d], P(t.pout_c.b));
    return at::add(x, h.view({b, hh, ww, c}).permute({0, 3, 1, 2}));
  }

  /* diffusers' get_timestep_embedding, in float32 exactly as it computes it. */
  at::Tensor timestep_embedding(const at::Tensor &t) const {
    const unet_config_ &c = m.cfg;
    int64_t dim = c.block_out_channels[0], half = dim / 2;
    at::Tensor exponent = at::arange(0, half, at::kFloat) * (-std::log(10000.0));
    exponent = exponent / ((double)half - c.freq_shift);
    at::Tensor e = t.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
    e = at::cat({at::sin(e), at::cos(e)}, -1);
    if (c.flip_sin_to_cos) e = at::cat({e.narrow(1, half, half), e.narrow(1, 0, half)}, -1);
    if (dim % 2) e = at::constant_pad_nd(e, {0, 1, 0, 0}, 0);
    return e;
  }

  /* x [n, C, H, W], t [n] float, ehs [n, L, D] -> [n, out_channels, H, W]. */
  at::Tensor run(at::Tensor x, const at::Tensor &t, const at::Tensor &ehs) const {
    const unet_config_ &c = m.cfg;
    if (c.center_input_sample) x = 2 * x - 1.0;
    at::Tensor emb = linear(m.t2, at::silu(linear(m.t1, timestep_embedding(t))));
    at::Tensor temb_act = at::silu(emb);

    at::Tensor h = conv(m.conv_in, x);
    std::vector<at::Tensor> skips{h};
    for (const block_ &blk : m.downs) {
      for (size_t l = 0; l < blk.resnets.size(); l++) {
        h = resnet(blk.resnets[l], h, temb_act);
        if (!blk.attns.empty()) h = transformer(blk.attns[l], h, ehs);
        skips.push_back(h);
      }
      if (blk.has_sampler) {
        h = conv(blk.sampler, h);
        skips.push_back(h);
      }
    }
    h = resnet(m.mid.resnets[0], h, temb_act);
    h = transformer(m.mid.attns[0], h, ehs);
    h = resnet(m.mid.resnets[1], h, temb_act);

    for (const block_ &blk : m.ups) {
      for (size_t l = 0; l < blk.resnets.size(); l++) {
        at::Tensor s = std::move(skips.back());
        skips.pop_back();
        h = resnet(blk.resnets[l], at::cat({h, s}, 1), temb_act);
        if (!blk.attns.empty()) h = transformer(blk.attns[l], h, ehs);
      }
      if (blk.has_sampler) {
        /* Nearest 2x, or to the size of the next skip connection when the input was not a multiple. */
        const at::Tensor &next = skips.back();
        h = at::upsample_nearest2d(h, {next.size(2), next.size(3)});
        h = conv(blk.sampler, h);
      }
    }
    return conv(m.conv_out, silu(norm(m.norm_out, h)));
  }
};

/* ---- analytic FLOPs: the forward's walk, counting only the matmul-shaped work ---- */

struct flops_ {
  const unet &m;
  double n;         /* images */
  int64_t L;        /* text tokens */
  double f = 0;     /* forward FLOPs so far */

  const std::vector<int64_t> &S(int i) const { return m.params[(size_t)i].shape; }
  void conv(const conv_ &c, int64_t &h, int64_t &w) {
    const auto &s = S(c.w); /* [out, in, k, k] */
    int64_t k = s[2];
    int64_t ph = c.pad_right ? 1 : 2 * c.pad;
    int64_t ho = (h + ph - k) / c.stride + 1, wo = (w + ph - k) / c.stride + 1;
    f += n * 2.0 * (double)s[1] * (double)s[0] * (double)(k * k) * (double)(ho * wo);
    h = ho;
    w = wo;
  }
  void linear(const lin_ &l, double rows) {
    const auto &s = S(l.w); /* [out, in] */
    f += rows * 2.0 * (double)s[1] * (double)s[0];
  }
  void resnet(const resnet_ &r, int64_t &h, int64_t &w) {
    int64_t h0 = h, w0 = w;
    conv(r.c1, h, w);
    linear(r.temb, n);
    conv(r.c2, h, w);
    if (r.has_shortcut) conv(r.shortcut, h0, w0);
  }
  void attention(const attn_ &a, double lq, double lk) {
    linear(a.q, n * lq);
    linear(a.k, n * lk);
    linear(a.v, n * lk);
    f += n * 2.0 * 2.0 * (double)a.heads * lq * lk * (double)a.dim_head;
    linear(a.out, n * lq);
  }
  void transformer(const transformer_ &t, int64_t h, int64_t w) {
    double hw = (double)(h * w);
    if (t.linear) linear(t.pin_l, n * hw);
    else conv(t.pin_c, h, w);
    for (const tblock_ &tb : t.blocks) {
      attention(tb.a1, hw, hw);
      attention(tb.a2, hw, (double)L);
      linear(tb.ff1, n * hw);
      linear(tb.ff2, n * hw);
    }
    if (t.linear) linear(t.pout_l, n * hw);
    else conv(t.pout_c, h, w);
  }
  double forward(int64_t h, int64_t w) {
    linear(m.t1, n);
    linear(m.t2, n);
    conv(m.conv_in, h, w);
    std::vector<std::pair<int64_t, int64_t>> skips{{h, w}};
    for (const block_ &blk : m.downs) {
      for (size_t l = 0; l < blk.resnets.size(); l++) {
        resnet(blk.resnets[l], h, w);
        if (!blk.attns.empty()) transformer(blk.attns[l], h, w);
        skips.push_back({h, w});
      }
      if (blk.has_sampler) {
        conv(blk.sampler, h, w);
        skips.push_back({h, w});
      }
    }
    resnet(m.mid.resnets[0], h, w);
    transformer(m.mid.attns[0], h, w);
    resnet(m.mid.resnets[1], h, w);
    for (const block_ &blk : m.ups) {
      for (size_t l = 0; l < blk.resnets.size(); l++) {
        skips.pop_back();
        resnet(blk.resnets[l], h, w);
        if (!blk.attns.empty()) transformer(blk.attns[l], h, w);
      }
      if (blk.has_sampler) {
        h = skips.back().first;
        w = skips.back().second;
        conv(blk.sampler, h, w);
      }
    }
    conv(m.conv_out, h, w);
    return f;
  }
};

/* ---- errors at the boundary ---- */

int set_err(unet *m, int status, const std::string &msg) {
  if (m) m->err = msg;
  return status;
}

template <class F>
int guarded(unet *m, F &&f) {
  if (!m) return DPOD_EINVAL;
  m->err.clear();
  try {
    return f();
  } catch (const c10::Error &e) {
    return set_err(m, DPOD_ETORCH, std::string("libtorch: ") + e.what_without_backtrace());
  } catch (const std::bad_alloc &) {
    return set_err(m, DPOD_ENOMEM, "out of memory");
  } catch (const std::exception &e) {
    return set_err(m, DPOD_ETORCH, e.what());
  } catch (...) {
    return set_err(m, DPOD_ETORCH, "unknown C++ exception");
  }
}

/* at::set_num_threads governs libtorch's OpenMP pool, not OpenBLAS's own pthreads pool, which otherwise
 * starts one thread per core in every process: with several ranks on one machine that oversubscribes
 * the cores. Found at run time, so any other BLAS simply keeps its own setting. */
void set_blas_threads(int n) {
  using setter = void (*)(int);
  if (auto f = reinterpret_cast<setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

void copy_err(char *err, size_t errlen, const std::string &msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg.c_str());
}

int check_dims(unet *m, int n, int height, int width, int text_len) {
  if (n <= 0 || height <= 0 || width <= 0 || text_len <= 0)
    return set_err(m, DPOD_EINVAL,
                   "bad input dims: n " + std::to_string(n) + ", height " + std::to_string(height) + ", width " +
                       std::to_string(width) + ", text_len " + std::to_string(text_len));
  return 0;
}

int mkdir_p(const std::string &dir) {
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    cur = dir.substr(0, pos);
    if (cur.empty()) continue;
    if (mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) return -1;
  }
  return 0;
}

int write_file_atomic(const std::string &path, const std::string &text, std::string *err) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    *err = tmp + ": cannot create: " + strerror(errno);
    return DPOD_EIO;
  }
  const char *p = text.data();
  size_t left = text.size();
  while (left) {
    ssize_t k = write(fd, p, left);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      *err = tmp + ": write failed: " + strerror(errno);
      close(fd);
      unlink(tmp.c_str());
      return DPOD_EIO;
    }
    p += k;
    left -= (size_t)k;
  }
  if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    *err = path + ": cannot write: " + strerror(errno);
    unlink(tmp.c_str());
    return DPOD_EIO;
  }
  return 0;
}

std::string shape_str(const int64_t *s, int nd) {
  std::string o = "[";
  for (int i = 0; i < nd; i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

}  // namespace

/* ---- the C API ---- */

extern "C" {

unet_params unet_default_params(void) {
  unet_params p;
  p.threads = 0;
  p.seed = 0;
  p.device = "cpu";
  return p;
}

unet_adamw_params unet_adamw_default_params(void) {
  unet_adamw_params p;
  p.lr = 1e-5;
  p.beta1 = 0.9;
  p.beta2 = 0.999;
  p.eps = 1e-8;
  p.weight_decay = 1e-2;
  p.max_grad_norm = 1.0;
  return p;
}

int unet_create(const char *config_json, const unet_params *p, unet_t *out, char *err, size_t errlen) {
  if (!out) return DPOD_EINVAL;
  *out = nullptr;
  unet_params dp = unet_default_params();
  if (!p) p = &dp;
  if (p->device && std::strcmp(p->device, "cpu") != 0) {
    copy_err(err, errlen, std::string("device '") + p->device + "' is not supported: this libtorch is CPU-only");
    return DPOD_EUNSUPPORTED;
  }
  unet *m = nullptr;
  try {
    m = new unet();
    std::string e;
    int rc = unet_config_parse_(config_json ? config_json : unet_tiny_config_json_, &m->cfg, &e);
    if (rc != 0) {
      copy_err(err, errlen, e);
      delete m;
      return rc;
    }
    m->cfg_json = unet_config_to_json_(m->cfg);
    at::globalContext().setFlushDenormal(true);
    if (p->threads > 0) {
      at::set_num_threads(p->threads);
      set_blas_threads(p->threads);
    }
    build(*m);
    allocate(*m, p->seed);
  } catch (const c10::Error &e) {
    copy_err(err, errlen, std::string("libtorch: ") + e.what_without_backtrace());
    delete m;
    return DPOD_ETORCH;
  } catch (const std::bad_alloc &) {
    copy_err(err, errlen, "out of memory building the UNet");
    delete m;
    return DPOD_ENOMEM;
  } catch (const std::exception &e) {
    copy_err(err, errlen, e.what());
    delete m;
    return DPOD_ETORCH;
  }
  *out = m;
  return 0;
}

void unet_free(unet_t m) {
  try {
    delete m;
  } catch (...) {
  }
}

const char *unet_last_error(unet_t m) { return m ? m->err.c_str() : "no model"; }

void unet_get_info(unet_t m, unet_info *info) {
  if (!m || !info) return;
  info->in_channels = m->cfg.in_channels;
  info->out_channels = m->cfg.out_channels;
  info->sample_size = m->cfg.sample_size;
  info->cross_attention_dim = m->cfg.cross_attention_dim.back();
  info->num_params = (size_t)m->flat.numel();
  info->num_tensors = m->params.size();
}

const char *unet_config_json(unet_t m) { return m ? m->cfg_json.c_str() : nullptr; }

int unet_load_weights(unet_t m, const char *path) {
  return guarded(m, [&]() -> int {
    if (!path) return set_err(m, DPOD_EINVAL, "unet_load_weights: no path");
    char e[1024];
    st_file *f = nullptr;
    int rc = st_open(path, &f, e, sizeof e);
    if (rc != 0) return set_err(m, rc, e);
    std::unique_ptr<st_file, void (*)(st_file *)> guard(f, st_close);

    /* Check everything before touching a single weight. */
    std::vector<const st_tensor *> src(m->params.size());
    std::string missing, shape, dtype, unexpected;
    size_t n_missing = 0, n_shape = 0, n_dtype = 0, n_unexpected = 0;
    auto note = [](std::string &list, size_t &count, const std::string &item) {
      if (count++ < 4) list += (list.empty() ? "" : ", ") + item;
    };
    for (size_t i = 0; i < m->params.size(); i++) {
      const param_ &p = m->params[i];
      const st_tensor *t = st_find(f, p.name.c_str());
      if (!t) {
        note(missing, n_missing, "'" + p.name + "'");
        continue;
      }
      if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        note(dtype, n_dtype, "'" + p.name + "' is " + st_dtype_name(t->dtype));
        continue;
      }
      if (t->ndim != (int)p.shape.size() || !std::equal(p.shape.begin(), p.shape.end(), t->shape)) {
        note(shape, n_shape, "'" + p.name + "' is " + shape_str(t->shape, t->ndim) + ", expected " +
                                 shape_str(p.shape.data(), (int)p.shape.size()));
        continue;
      }
      src[i] = t;
    }
    /* Unexpected: names the model does not have (a linear scan per name would be quadratic). */
    std::vector<std::string> names;
    for (auto &p : m->params) names.push_back(p.name);
    std::sort(names.begin(), names.end());
    for (size_t i = 0; i < st_count(f); i++) {
      const char *nm = st_at(f, i)->name;
      if (!std::binary_search(names.begin(), names.end(), std::string(nm))) note(unexpected, n_unexpected, std::string("'") + nm + "'");
    }
    if (n_missing || n_shape || n_dtype || n_unexpected) {
      std::string msg = std::string(path) + ": weights do not fit this UNet:";
      auto add = [&](const char *what, const std::string &list, size_t n) {
        if (!n) return;
        msg += std::string(" ") + std::to_string(n) + " " + what + " (" + list + (n > 4 ? ", ..." : "") + ");";
      };
      add("missing", missing, n_missing);
      add("unexpected", unexpected, n_unexpected);
      add("mis-shaped", shape, n_shape);
      add("of an unsupported dtype", dtype, n_dtype);
      msg.pop_back();
      return set_err(m, n_shape || n_dtype ? DPOD_ESHAPE : n_missing ? DPOD_ENOENT : DPOD_EFORMAT, msg);
    }
    m->mse = at::Tensor();
    float *base = m->flat.data_ptr<float>();
    for (size_t i = 0; i < m->params.size(); i++) st_to_f32(src[i], base + m->params[i].offset);
    return 0;
  });
}

int unet_copy_weights(unet_t dst, unet_t src) {
  return guarded(dst, [&]() -> int {
    if (!src) return set_err(dst, DPOD_EINVAL, "unet_copy_weights: no source model");
    bool same = src->params.size() == dst->params.size();
    for (size_t i = 0; same && i < src->params.size(); i++)
      same = src->params[i].name == dst->params[i].name && src->params[i].shape == dst->params[i].shape;
    if (!same) return set_err(dst, DPOD_ESHAPE, "unet_copy_weights: the two models have different configs");
    at::NoGradGuard ng;
    dst->mse = at::Tensor();
    dst->flat.copy_(src->flat);
    return 0;
  });
}

void unet_freeze(unet_t m) {
  if (!m) return;
  try {
    m->frozen = true;
    m->mse = at::Tensor();
    for (auto &p : m->params) p.t.requires_grad_(false);
    for (auto &t : m->fused) t.requires_grad_(false);
  } catch (...) {
  }
}

int unet_save(unet_t m, const char *dir, uint64_t *bytes_out) {
  return guarded(m, [&]() -> int {
    if (!dir) return set_err(m, DPOD_EINVAL, "unet_save: no directory");
    std::string d(dir);
    if (mkdir_p(d) != 0) return set_err(m, DPOD_EIO, d + ": cannot create directory: " + strerror(errno));
    st_writer *w = st_writer_new();
    if (!w) return set_err(m, DPOD_ENOMEM, "out of memory");
    std::unique_ptr<st_writer, void (*)(st_writer *)> guard(w, st_writer_free);
    const float *base = m->flat.data_ptr<float>();
    for (auto &p : m->params) {
      int rc = st_writer_add(w, p.name.c_str(), ST_F32, (int)p.shape.size(), p.shape.data(), base + p.offset);
      if (rc != 0) return set_err(m, rc, "unet_save: cannot add tensor '" + p.name + "'");
    }
    st_writer_set_metadata(w, "format", "pt");
    char e[1024];
    std::string wpath = d + "/diffusion_pytorch_model.safetensors";
    int rc = st_writer_write(w, wpath.c_str(), bytes_out, e, sizeof e);
    if (rc != 0) return set_err(m, rc, e);
    std::string es;
    rc = write_file_atomic(d + "/config.json", m->cfg_json, &es);
    if (rc != 0) return set_err(m, rc, es);
    return 0;
  });
}

int unet_forward(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                 const float *ehs, float *out) {
  return guarded(m, [&]() -> int {
    int rc = check_dims(m, n, height, width, text_len);
    if (rc) return rc;
    if (!x || !t || !ehs || !out) return set_err(m, DPOD_EINVAL, "unet_forward: NULL array");
    c10::InferenceMode im;
    const unet_config_ &c = m->cfg;
    at::Tensor xt = at::from_blob((void *)x, {n, c.in_channels, height, width}, at::kFloat);
    at::Tensor tt = at::from_blob((void *)t, {n}, at::kFloat);
    at::Tensor et = at::from_blob((void *)ehs, {n, text_len, (int64_t)c.cross_attention_dim.back()}, at::kFloat);
    at::Tensor y = fwd_{*m}.run(xt, tt, et).contiguous();
    std::memcpy(out, y.data_ptr<float>(), (size_t)y.numel() * sizeof(float));
    return 0;
  });
}

int unet_forward_mse(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                     const float *ehs, const float *target, float *mse, float *pred) {
  return guarded(m, [&]() -> int {
    int rc = check_dims(m, n, height, width, text_len);
    if (rc) return rc;
    if (!x || !t || !ehs || !target || !mse) return set_err(m, DPOD_EINVAL, "unet_forward_mse: NULL array");
    m->mse = at::Tensor();
    m->mse_n = 0;
    const unet_config_ &c = m->cfg;
    auto run = [&](bool keep) {
      at::Tensor xt = at::from_blob((void *)x, {n, c.in_channels, height, width}, at::kFloat);
      at::Tensor tt = at::from_blob((void *)t, {n}, at::kFloat);
      at::Tensor et = at::from_blob((void *)ehs, {n, text_len, (int64_t)c.cross_attention_dim.back()}, at::kFloat);
      at::Tensor gt = at::from_blob((void *)target, {n, c.out_channels, height, width}, at::kFloat);
      /* The graph saves its inputs; copy them so the caller may reuse its buffers before backward. */
      if (keep) {
        xt = xt.clone();
        et = et.clone();
        gt = gt.clone();
      }
      at::Tensor y = fwd_{*m}.run(xt, tt, et);
      at::Tensor l = (y - gt).pow(2).mean({1, 2, 3});
      at::Tensor lc = l.detach().contiguous();
      std::memcpy(mse, lc.data_ptr<float>(), (size_t)n * sizeof(float));
      if (pred) {
        at::Tensor yc = y.detach().contiguous();
        std::memcpy(pred, yc.data_ptr<float>(), (size_t)yc.numel() * sizeof(float));
      }
      if (keep) {
        m->mse = l;
        m->mse_n = n;
      }
    };
    if (m->frozen) {
      c10::InferenceMode im;
      run(false);
    } else {
      at::AutoGradMode gm(true);
      run(true);
    }
    return 0;
  });
}

int unet_backward_mse(unet_t m, const float *grad_mse) {
  return guarded(m, [&]() -> int {
    if (m->frozen) return set_err(m, DPOD_ESTATE, "unet_backward_mse: the model is frozen");
    if (!m->mse.defined()) return set_err(m, DPOD_ESTATE, "unet_backward_mse: no forward graph to back-propagate");
    if (!grad_mse) return set_err(m, DPOD_EINVAL, "unet_backward_mse: NULL grad_mse");
    at::Tensor g = at::from_blob((void *)grad_mse, {m->mse_n}, at::kFloat).clone();
    at::Tensor l = std::move(m->mse);
    m->mse = at::Tensor();
    l.backward(g);
    return 0;
  });
}

float *unet_grad_buffer(unet_t m, size_t *n) {
  if (!m) return nullptr;
  if (n) *n = (size_t)m->flat_grad.numel();
  return m->flat_grad.data_ptr<float>();
}

float *unet_param_buffer(unet_t m, size_t *n) {
  if (!m) return nullptr;
  if (n) *n = (size_t)m->flat.numel();
  return m->flat.data_ptr<float>();
}

void unet_zero_grad(unet_t m) {
  if (!m) return;
  try {
    at::NoGradGuard ng;
    m->flat_grad.zero_();
  } catch (...) {
  }
}

int unet_param_at(unet_t m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]) {
  if (!m) return DPOD_EINVAL;
  if (i >= m->params.size()) return set_err(m, DPOD_EINVAL, "unet_param_at: index out of range");
  const param_ &p = m->params[i];
  if (name) *name = p.name.c_str();
  if (offset) *offset = (size_t)p.offset;
  if (ndim) *ndim = (int)p.shape.size();
  if (shape)
    for (size_t k = 0; k < p.shape.size() && k < 8; k++) shape[k] = p.shape[k];
  return 0;
}

int unet_adamw_step(unet_t m, const unet_adamw_params *p, double *grad_norm) {
  return guarded(m, [&]() -> int {
    if (!p) return set_err(m, DPOD_EINVAL, "unet_adamw_step: no params");
    if (m->frozen) return set_err(m, DPOD_ESTATE, "unet_adamw_step: the model is frozen");
    const int64_t n = m->flat.numel();
    float *w = m->flat.data_ptr<float>(), *g = m->flat_grad.data_ptr<float>();
    /* The global norm in double, from partial sums over fixed chunks added in order: the same number
     * whatever the thread count, and closer to exact than clip_grad_norm_'s float32 norm of norms. */
    const int64_t chunk = 1 << 16, nchunks = (n + chunk - 1) / chunk;
    std::vector<double> part((size_t)nchunks);
    at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; c++) part[(size_t)c] = unet_sumsq_(g + c * chunk, std::min(chunk, n - c * chunk));
    });
    double sq = 0;
    for (double x : part) sq += x;
    double norm = std::sqrt(sq);
    if (grad_norm) *grad_norm = norm;
    if (!std::isfinite(norm))
      return set_err(m, DPOD_ENUMERIC, "unet_adamw_step: gradient norm is " + std::to_string(norm) + "; step skipped");
    if (!m->adam_m.defined()) {
      m->adam_m = at::zeros_like(m->flat);
      m->adam_v = at::zeros_like(m->flat);
    }
    /* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when below 1; then
     * torch.optim.AdamW, fused into one pass (adamw_kernel.cpp). */
    m->adam_step++;
    unet_adamw_coef_ c;
    double coef = p->max_grad_norm > 0 ? p->max_grad_norm / (norm + 1e-6) : 1.0;
    c.do_clip = coef < 1.0;
    c.clip = (float)coef;
    c.decay = (float)(1.0 - p->lr * p->weight_decay);
    c.beta1 = (float)p->beta1;
    c.one_minus_beta1 = (float)(1.0 - p->beta1);
    c.beta2 = (float)p->beta2;
    c.one_minus_beta2 = (float)(1.0 - p->beta2);
    c.sqrt_bc2 = (float)std::sqrt(1.0 - std::pow(p->beta2, (double)m->adam_step));
    c.eps = (float)p->eps;
    c.step_size = (float)(p->lr / (1.0 - std::pow(p->beta1, (double)m->adam_step)));
    float *am = m->adam_m.data_ptr<float>(), *av = m->adam_v.data_ptr<float>();
    at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
      int64_t lo = b * chunk, hi = std::min(e * chunk, n);
      unet_adamw_kernel_(w + lo, g + lo, am + lo, av + lo, hi - lo, &c);
    });
    return 0;
  });
}

int unet_adamw_state(unet_t m, float **exp_avg, float **exp_avg_sq, size_t *n, uint64_t *step) {
  return guarded(m, [&]() -> int {
    if (!m->flat.is_cpu()) return set_err(m, DPOD_EUNSUPPORTED, "unet_adamw_state: the model is not on the CPU");
    if (!m->adam_m.defined()) {
      m->adam_m = at::zeros_like(m->flat);
      m->adam_v = at::zeros_like(m->flat);
    }
    if (exp_avg) *exp_avg = m->adam_m.data_ptr<float>();
    if (exp_avg_sq) *exp_avg_sq = m->adam_v.data_ptr<float>();
    if (n) *n = (size_t)m->adam_m.numel();
    if (step) *step = (uint64_t)m->adam_step;
    return 0;
  });
}

int unet_adamw_set_step(unet_t m, uint64_t step) {
  if (!m) return DPOD_EINVAL;
  if (step > (uint64_t)INT64_MAX) return set_err(m, DPOD_EINVAL, "unet_adamw_set_step: step out of range");
  m->adam_step = (int64_t)step;
  return 0;
}

double unet_train_flops(unet_t m, int n, int height, int width, int text_len) {
  if (!m || n <= 0 || height <= 0 || width <= 0 || text_len <= 0) return 0;
  flops_ fl{*m, (double)n, text_len};
  return 4.0 * fl.forward(height, width);
}

static torch::autograd::profiler::RecordProfile *profile_;

int unet_profile_start(const char *json_path, char *err, size_t errlen) {
  if (profile_) {
    snprintf(err, errlen, "a profile is already being recorded");
    return DPOD_EINVAL;
  }
  try {
    profile_ = new torch::autograd::profiler::RecordProfile(std::string(json_path));
    return 0;
  } catch (const std::exception &e) {
    snprintf(err, errlen, "cannot record a profile to %s: %s", json_path, e.what());
    return DPOD_EIO;
  }
}

void unet_profile_stop(void) {
  delete profile_; /* the destructor writes the trace */
  profile_ = nullptr;
}

}  // extern "C"
