/* The UNet2DConditionModel as plain ATen ops: building its parameter list, the forward pass and the
 * analytic FLOP count (see unet_model.h for the design).
 *
 * Numerics follow diffusers 0.31 with AttnProcessor (scale folded into the score GEMM, exact GELU in
 * GEGLU, GroupNorm eps 1e-6 inside Transformer2DModel, the timestep embedding in float32), so the outputs
 * match the reference fixtures to float32 rounding. Where diffusers' op sequence is slow on a CPU the
 * arithmetic is the same but the ops are not: q/k/v come from one matmul, the attention core is direct
 * sgemm calls per head (unet_attention.cpp), and 1x1 proj_in/proj_out run as Linear. */
#include "unet_model.h"
#include "unet_shim.h" /* unet_precision */

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <initializer_list>
#include <utility>

namespace shim {

/* ---- building: names and shapes in diffusers' registration order ---- */

namespace {

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

}  // namespace

void build(unet &m) {
  const unet_config_ &c = m.cfg;
  builder_ B{m.params, m.spans};
  const size_t nb = c.block_out_channels.size();
  const int64_t ted = c.time_embed_dim();
  const auto &bo = c.block_out_channels;

  m.conv_in = B.conv("conv_in", c.in_channels, bo[0], c.conv_in_kernel, 1, (c.conv_in_kernel - 1) / 2);
  m.t1 = B.linear("time_embedding.linear_1", bo[0], ted, true);
  m.t2 = B.linear("time_embedding.linear_2", ted, ted, true);
  /* diffusers registers add_time_proj (no parameters) and add_embedding right after the time embedding. */
  if (c.text_time()) {
    m.add1 = B.linear("add_embedding.linear_1", c.projection_class_embeddings_input_dim, ted, true);
    m.add2 = B.linear("add_embedding.linear_2", ted, ted, true);
  }

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

/* Whether bf16 convolutions run channels-last: DPOD_CHANNELS_LAST=0 or 1 in the environment, else on
 * (measured with dpo-bench: docs/mixed-precision.md). Decided once per process. */
static bool channels_last_bf16() {
  static const bool on = [] {
    const char *e = std::getenv("DPOD_CHANNELS_LAST");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

namespace {

/* ---- forward ---- */

struct fwd_ {
  const unet &m;
  /* Without autograd recording, fresh intermediates may be overwritten in place (less memory traffic).
   * With it, keep every op out of place so nothing a backward formula needs is clobbered. */
  bool inplace = !at::GradMode::is_enabled();
  bool ckpt = checkpointing(m);
  /* bf16 (unet_set_precision): weights and activations cast to bf16 at the matmul-shaped ops (a no-op for
   * what already is), norms in float32, the output back to float32. Casts of a parameter are recorded by
   * autograd, so its float32 gradient lands in the flat gradient buffer. */
  bool lowp = m.precision != UNET_PRECISION_FP32;
  /* fp16 (CUDA only: set_precision refuses it on the CPU) takes exactly bf16's cast points. */
  at::ScalarType lowt = lowp_dtype(m.precision);
  at::Tensor C(const at::Tensor &t) const { return lowp && t.defined() ? t.to(lowt) : t; }
  at::Tensor F32(const at::Tensor &t) const { return lowp ? t.to(at::kFloat) : t; }
  /* bf16 convolutions on channels-last operands (oneDNN's native layout): see channels_last_bf16(). */
  bool cl = lowp && channels_last_bf16();
  at::Tensor CL(const at::Tensor &t) const {
    return cl && t.defined() ? C(t).contiguous(at::MemoryFormat::ChannelsLast) : C(t);
  }

  at::Tensor silu(at::Tensor x) const { return inplace ? at::silu_(x) : at::silu(x); }
  /* a + b where a is a fresh intermediate nobody else holds. */
  at::Tensor add(at::Tensor a, const at::Tensor &b) const { return inplace ? a.add_(b) : a + b; }
  const at::Tensor &P(int i) const { return m.params[(size_t)i].t; }
  at::Tensor opt(int i) const { return i >= 0 ? m.params[(size_t)i].t : at::Tensor(); }

  at::Tensor conv(const conv_ &c, const at::Tensor &x) const {
    if (c.pad_right) {
      at::Tensor xp = at::constant_pad_nd(x, {0, 1, 0, 1}, 0);
      const int64_t st[2] = {c.stride, c.stride}, pd[2] = {0, 0};
      return at::conv2d(CL(xp), CL(P(c.w)), C(P(c.b)), at::IntArrayRef(st), at::IntArrayRef(pd));
    }
    const int64_t st[2] = {c.stride, c.stride}, pd[2] = {c.pad, c.pad};
    return at::conv2d(CL(x), CL(P(c.w)), C(P(c.b)), at::IntArrayRef(st), at::IntArrayRef(pd));
  }
  at::Tensor linear(const lin_ &l, const at::Tensor &x) const {
    at::Tensor y = at::linear(C(x), C(P(l.w)), C(opt(l.b)));
    at::Tensor d = delta(l.w, x);
    return d.defined() ? y + d : y;
  }
  /* The adapter's term; in bf16 the adapters (float32, small) compute in float32 and the sum is bf16. */
  at::Tensor delta(int w, const at::Tensor &x) const {
    if (!lowp) return lora_delta(m, w, x);
    at::Tensor d = lora_delta(m, w, F32(x));
    return C(d);
  }
  at::Tensor fused(int j) const { return C(m.fused[(size_t)j]); }
  /* The fused projection's output plus the adapters of its parts (each [.., rows]), if any is adapted. */
  at::Tensor fused_lora(at::Tensor y, const at::Tensor &x, std::initializer_list<int> weights) const {
    if (!lora_on(m)) return y;
    std::vector<at::Tensor> parts;
    bool any = false;
    int64_t rows = y.size(-1) / (int64_t)weights.size();
    for (int w : weights) {
      at::Tensor d = delta(w, x);
      if (d.defined()) any = true;
      else {
        std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
        shape.back() = rows;
        d = at::zeros(shape, C(x).options());
      }
      parts.push_back(d);
    }
    return any ? y + at::cat(parts, -1) : y;
  }
  at::Tensor norm(const norm_ &n, const at::Tensor &x) const {
    /* The float32 copy of a channels-last activation is made NCHW in the same pass: torch 1.13's
     * channels-last GroupNorm is 5-30x slower than its NCHW one at these channel counts (64 channels at
     * 16x16: 2.2 against 0.07 ms). The bf16 output goes back to channels-last in its cast, so that
     * the SiLU after it and its backward see one layout (mixed layouts take TensorIterator's slow path). */
    if (lowp && n.groups > 0 && x.dim() == 4) {
      at::Tensor y = norm32(n, x.to(at::kFloat, false, false, at::MemoryFormat::Contiguous));
      return y.to(lowt, false, false, cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    }
    if (lowp) return C(norm32(n, F32(x)));
    return norm32(n, x);
  }
  /* Debian's torch 1.13 refuses a bf16 input with float32 weights: norms compute in float32. */
  at::Tensor norm32(const norm_ &n, const at::Tensor &x) const {
    if (n.groups > 0) return at::group_norm(x, n.groups, F32(P(n.w)), F32(P(n.b)), n.eps);
    return at::layer_norm(x, {x.size(-1)}, F32(P(n.w)), F32(P(n.b)), n.eps);
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

  /* GEGLU in bf16: the two halves of ff1 as two Linear layers on the rows of one bf16 weight, so that
   * gelu and its backward read contiguous tensors (torch 1.13's bf16 gelu on a strided chunk of the last
   * dimension is ~6x slower than on a contiguous one). x [b, n, dim] -> [b, n, ff_inner]. */
  at::Tensor geglu_lowp(const lin_ &l, const at::Tensor &x) const {
    at::Tensor w = C(P(l.w)), b = C(opt(l.b)), xc = C(x);
    const int64_t half = w.size(0) / 2;
    at::Tensor v = at::linear(xc, w.narrow(0, 0, half), b.defined() ? b.narrow(0, 0, half) : b);
    at::Tensor g = at::linear(xc, w.narrow(0, half, half), b.defined() ? b.narrow(0, half, half) : b);
    at::Tensor d = delta(l.w, x);
    if (d.defined()) {
      std::vector<at::Tensor> dd = d.chunk(2, -1);
      v = v + dd[0];
      g = g + dd[1];
    }
    return v * at::gelu(g);
  }

  /* x [b, n, dim]; ctx [b, m, ctx_dim] or undefined for self-attention. The projections run as one
   * matmul against the fused weights, and the attention core reads every head straight out of them. */
  at::Tensor attention(const attn_ &a, const at::Tensor &x, const at::Tensor &ctx) const {
    at::Tensor q, kv;
    if (!ctx.defined()) {
      q = fused_lora(at::linear(C(x), fused(a.qkv)), x, {a.q.w, a.k.w, a.v.w}); /* [b, n, 3 dim] */
      kv = at::empty({0}, q.options());
    } else {
      q = linear(a.q, x);                                                            /* [b, n, dim] */
      kv = fused_lora(at::linear(C(ctx), fused(a.kv)), ctx, {a.k.w, a.v.w}); /* [b, m, 2 dim] */
    }
    /* The direct sgemm_ core is float32 only: bf16 runs on ATen's batched matmuls. fp16 with the config's
     * upcast_attention (SD 2.x, whose scores overflow fp16) takes the core in float32, as diffusers does. */
    if (lowp && m.precision == UNET_PRECISION_FP16 && m.cfg.upcast_attention)
      return linear(a.out, C(attention_core_lowp(F32(q), F32(kv), a.heads, a.scale)));
    if (lowp) return linear(a.out, attention_core_lowp(q, kv, a.heads, a.scale));
    return linear(a.out, attention_core(q, kv, a.heads, a.scale));
  }

  /* The 1x1 proj_in/proj_out convolutions run as Linear layers on the [b * h * w, c] rows the blocks use
   * anyway: one layout copy in, none out (the residual add reads the NHWC view directly). */
  at::Tensor transformer(const transformer_ &t, const at::Tensor &x, const at::Tensor &ehs) const {
    int64_t b = x.size(0), c = x.size(1), hh = x.size(2), ww = x.size(3);
    at::Tensor h = norm(t.norm, x).permute({0, 2, 3, 1}).reshape({b * hh * ww, c});
    h = t.linear ? linear(t.pin_l, h) : at::linear(C(h), fused(t.pin_2d), C(P(t.pin_c.b)));
    int64_t inner = h.size(1);
    h = h.view({b, hh * ww, inner});
    for (const tblock_ &tb : t.blocks) {
      h = add(attention(tb.a1, norm(tb.n1, h), at::Tensor()), h);
      h = add(attention(tb.a2, norm(tb.n2, h), ehs), h);
      if (lowp) {
        h = add(linear(tb.ff2, geglu_lowp(tb.ff1, norm(tb.n3, h))), h);
        continue;
      }
      std::vector<at::Tensor> hg = linear(tb.ff1, norm(tb.n3, h)).chunk(2, -1);
      h = add(linear(tb.ff2, hg[0] * at::gelu(hg[1])), h);
    }
    h = t.linear ? linear(t.pout_l, h) : at::linear(C(h), fused(t.pout_2d), C(P(t.pout_c.b)));
    return at::add(x, h.view({b, hh, ww, c}).permute({0, 3, 1, 2}));
  }

  /* diffusers' get_timestep_embedding of t [k] into [k, dim], in float32 exactly as it computes it. */
  at::Tensor timestep_embedding(const at::Tensor &t, int64_t dim) const {
    const unet_config_ &c = m.cfg;
    int64_t half = dim / 2;
    at::Tensor exponent = at::arange(0, half, t.options().dtype(at::kFloat)) * (-std::log(10000.0));
    exponent = exponent / ((double)half - c.freq_shift);
    at::Tensor e = t.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
    e = at::cat({at::sin(e), at::cos(e)}, -1);
    if (c.flip_sin_to_cos) e = at::cat({e.narrow(1, half, half), e.narrow(1, 0, half)}, -1);
    if (dim % 2) e = at::constant_pad_nd(e, {0, 1, 0, 0}, 0);
    return e;
  }

  /* text_time: every time id through add_time_proj (the same sinusoid as the timestep's, at
   * addition_time_embed_dim), flattened per sample after the pooled text embedding, through add_embedding
   * (linear, SiLU, linear). [n, time_embed_dim]. */
  at::Tensor added_embedding(const added_ &a) const {
    const unet_config_ &c = m.cfg;
    int64_t n = a.text_embeds.size(0);
    at::Tensor te = timestep_embedding(a.time_ids.reshape({-1}), c.addition_time_embed_dim).reshape({n, -1});
    return linear(m.add2, at::silu(linear(m.add1, at::cat({a.text_embeds, te}, -1))));
  }

  /* The units gradient checkpointing may re-run: a resnet (of cat(x, skip) in an up block) and a
   * transformer. */
  at::Tensor res_unit(const resnet_ &r, const at::Tensor &x, const at::Tensor &skip, const at::Tensor &temb_act) const {
    if (ckpt) return checkpoint_resnet(m, r, x, skip, temb_act);
    return resnet(r, skip.defined() ? at::cat({x, skip}, 1) : x, temb_act);
  }
  at::Tensor tf_unit(const transformer_ &t, const at::Tensor &x, const at::Tensor &ehs) const {
    return ckpt ? checkpoint_transformer(m, t, x, ehs) : transformer(t, x, ehs);
  }

  /* x [n, C, H, W], t [n] float, ehs [n, L, D] -> [n, out_channels, H, W]. */
  at::Tensor run(at::Tensor x, const at::Tensor &t, const at::Tensor &ehs, const added_ &added) const {
    const unet_config_ &c = m.cfg;
    if (c.center_input_sample) x = 2 * x - 1.0;
    at::Tensor emb = linear(m.t2, at::silu(linear(m.t1, timestep_embedding(t, c.block_out_channels[0]))));
    if (c.text_time()) emb = emb + added_embedding(added);
    at::Tensor temb_act = at::silu(emb);

    at::Tensor h = conv(m.conv_in, x);
    std::vector<at::Tensor> skips{h};
    for (const block_ &blk : m.downs) {
      for (size_t l = 0; l < blk.resnets.size(); l++) {
        h = res_unit(blk.resnets[l], h, at::Tensor(), temb_act);
        if (!blk.attns.empty()) h = tf_unit(blk.attns[l], h, ehs);
        skips.push_back(h);
      }
      if (blk.has_sampler) {
        h = conv(blk.sampler, h);
        skips.push_back(h);
      }
    }
    h = res_unit(m.mid.resnets[0], h, at::Tensor(), temb_act);
    h = tf_unit(m.mid.attns[0], h, ehs);
    h = res_unit(m.mid.resnets[1], h, at::Tensor(), temb_act);

    for (const block_ &blk : m.ups) {
      for (size_t l = 0; l < blk.resnets.size(); l++) {
        at::Tensor s = std::move(skips.back());
        skips.pop_back();
        h = res_unit(blk.resnets[l], h, s, temb_act);
        if (!blk.attns.empty()) h = tf_unit(blk.attns[l], h, ehs);
      }
      if (blk.has_sampler) {
        /* Nearest 2x, or to the size of the next skip connection when the input was not a multiple. */
        const at::Tensor &next = skips.back();
        h = at::upsample_nearest2d(h, {next.size(2), next.size(3)});
        h = conv(blk.sampler, h);
      }
    }
    return F32(conv(m.conv_out, silu(norm(m.norm_out, h))));
  }
};

}  // namespace

namespace {

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
    if (m.cfg.text_time()) {
      linear(m.add1, n);
      linear(m.add2, n);
    }
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

}  // namespace

at::Tensor forward(const unet &m, at::Tensor x, const at::Tensor &t, const at::Tensor &ehs, const added_ &added) {
  return fwd_{m}.run(std::move(x), t, ehs, added);
}

at::Tensor resnet_unit(const unet &m, const resnet_ &r, const at::Tensor &x, const at::Tensor &temb_act) {
  return fwd_{m}.resnet(r, x, temb_act);
}

at::Tensor transformer_unit(const unet &m, const transformer_ &t, const at::Tensor &x, const at::Tensor &ehs) {
  return fwd_{m}.transformer(t, x, ehs);
}

double forward_flops(const unet &m, double n, int64_t L, int64_t h, int64_t w) {
  flops_ fl{m, n, L};
  return fl.forward(h, w);
}

/* at::set_num_threads governs libtorch's OpenMP pool, not OpenBLAS's own pthreads pool, which otherwise
 * starts one thread per core in every process: with several ranks on one machine that oversubscribes
 * the cores. Found at run time, so any other BLAS simply keeps its own setting. */
void set_blas_threads(int n) {
  using setter = void (*)(int);
  if (auto f = reinterpret_cast<setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

}  // namespace shim
