/* The UNet inside the shim (C++, internal): its parameters, its structure and the functions over it.
 *
 * The model is not a tree of torch::nn modules but a list of parameters in diffusers' state-dict order
 * plus small structs that hold indices into it. That keeps the names exact by construction, lets every
 * parameter be a view into one flat buffer (and every gradient a view into another, for in-place
 * all-reduce), and keeps the shim on <ATen/ATen.h> rather than the much slower <torch/torch.h>.
 *
 *   unet_model.cpp      building the parameter list, the forward pass, the analytic FLOP count
 *   unet_attention.cpp  the attention core (direct sgemm per head, with its own backward)
 *   unet_ops.cpp        what the C API does: create, load, save, train step, optimizer
 *   unet_shim.cpp       the C API itself: the extern "C" boundary where every exception stops
 *
 * Functions here report failure by throwing: shim::error for what a caller did wrong (a status and a
 * message naming the problem), anything else for libtorch's own failures. */
#ifndef DPOD_UNET_MODEL_H
#define DPOD_UNET_MODEL_H

#include <ATen/ATen.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "unet_config.h"

namespace shim {

/* A failure with a dpod_status, thrown inside the shim and turned into a return value at the boundary. */
struct error : std::runtime_error {
  int status;
  error(int s, const std::string &msg) : std::runtime_error(msg), status(s) {}
};

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
/* A LoRA adapter on one Linear layer (unet_lora.cpp): y = W x + b + scale * up(down(x)). */
struct lora_ {
  std::string module;          /* the Linear layer's diffusers name, e.g. "...attn1.to_q" */
  std::string down_name, up_name; /* "unet.<module>.lora.down.weight", "unet.<module>.lora.up.weight" */
  int weight = -1;             /* index of its weight in unet::params */
  int64_t in = 0, out = 0;
  int64_t off_down = 0, off_up = 0; /* element offsets in unet::lora_flat */
  at::Tensor down, up;         /* [rank, in], [out, rank]: views of lora_flat, grads views of lora_grad */
};

}  // namespace shim

struct unet {
  unet_config_ cfg;
  std::string cfg_json;
  std::vector<shim::param_> params;
  /* Leaves over runs of consecutive parameters (q/k/v weights) so one matmul computes all three; like
   * the parameters they are views of the flat buffer, and their .grad views of the gradient buffer. */
  std::vector<shim::span_> spans;
  std::vector<at::Tensor> fused;
  at::Tensor flat, flat_grad;          /* [num_params] float32 */
  at::Tensor adam_m, adam_v;           /* allocated on the first step */
  int64_t adam_step = 0;
  bool frozen = false;
  std::string err;

  shim::conv_ conv_in, conv_out;
  shim::lin_ t1, t2;
  shim::lin_ add1, add2;               /* add_embedding.linear_1/linear_2 with text_time, else unset */
  std::vector<shim::block_> downs, ups;
  shim::block_ mid;
  shim::norm_ norm_out;

  at::Tensor mse;  /* [n] with its graph, between unet_forward_mse and unet_backward_mse */
  int mse_n = 0;

  /* LoRA (unet_lora.cpp). When enabled the adapters are the trainable parameters (the base is frozen,
   * zero_grad, adamw_step and adamw_state act on lora_flat), and with lora_active false the forward is the
   * base UNet's: the reference of a LoRA DPO run, in the same memory. */
  std::vector<shim::lora_> lora;
  std::vector<int> lora_of;            /* [params.size()]: index into lora of the adapter on that weight, or -1 */
  int64_t lora_rank = 0;
  double lora_alpha = 0, lora_scale = 0;
  bool lora_active = false;
  at::Tensor lora_flat, lora_grad;     /* [lora parameters] float32 */

  /* The device path (unet_device.h): with host_copies (a model off the CPU, or DPOD_GRAD_STAGING=copy) the
   * host sees the buffers through grad_host (the all-reduce's staging buffer, pinned with CUDA) and through
   * mirrors, (buffer, host snapshot) pairs written back at the next call. */
  bool host_copies = false;
  std::string device_name = "cpu";
  at::Tensor grad_host;
  std::vector<std::pair<at::Tensor, at::Tensor>> mirrors;

  /* Gradient checkpointing (unet_checkpointing.cpp): with grad mode on, every resnet and transformer runs
   * without keeping its activations and is run again during backward. The counters (units run that way,
   * units recomputed) are what tests and dpo-bench read to see it happen. */
  bool grad_ckpt = false;
  mutable uint64_t ckpt_forwards = 0, ckpt_recomputes = 0;

  /* Mixed precision (unet_precision.cpp): 0 fp32, 1 bf16, 2 fp16 (unet_precision values). With bf16_stored
   * (a frozen bf16 or fp16 model; the name is older than fp16) flat is bfloat16 (or half), the parameters
   * and fused leaves are views of it, and flat_grad is undefined. */
  int precision = 0;
  bool bf16_stored = false;
};

namespace shim {

/* Fills m.params and the block structs from m.cfg, in diffusers' registration order. */
void build(unet &m);
/* Lays the parameters out in one flat buffer (and their gradients in another) and initialises them
 * from `seed` the way PyTorch's default Linear/Conv init would (distribution, not stream). */
void allocate(unet &m, uint64_t seed);

/* SDXL's added conditioning: text_embeds [n, text_embeds_dim], time_ids [n, 6] float; both undefined
 * for a config without text_time. */
struct added_ {
  at::Tensor text_embeds, time_ids;
};

/* x [n, C, H, W], t [n] float, ehs [n, L, D] -> [n, out_channels, H, W]. Records autograd only when grad
 * mode is on. `added` must be defined exactly when the config has text_time (checked by the caller). */
at::Tensor forward(const unet &m, at::Tensor x, const at::Tensor &t, const at::Tensor &ehs, const added_ &added = {});

/* One resnet (x [n, C, H, W], temb_act [n, time_embed_dim]) or one Transformer2DModel (x [n, C, H, W],
 * ehs [n, L, D]) of the forward, as forward() runs it; for the checkpointing that re-runs them. */
at::Tensor resnet_unit(const unet &m, const resnet_ &r, const at::Tensor &x, const at::Tensor &temb_act);
at::Tensor transformer_unit(const unet &m, const transformer_ &t, const at::Tensor &x, const at::Tensor &ehs);

/* Whether forward() checkpoints its units now: enabled on the model and grad mode on (a reference or
 * inference forward keeps no graph, so there is nothing to save). */
bool checkpointing(const unet &m);
/* The resnet of an up block, whose input is cat(x, skip) (skip undefined for none), and a transformer, each
 * run without keeping activations and recomputed in backward (unet_checkpointing.cpp). */
at::Tensor checkpoint_resnet(const unet &m, const resnet_ &r, const at::Tensor &x, const at::Tensor &skip,
                             const at::Tensor &temb_act);
at::Tensor checkpoint_transformer(const unet &m, const transformer_ &t, const at::Tensor &x, const at::Tensor &ehs);

/* The adapter's term scale * up(down(x)) for the Linear layer whose weight is params[weight], or an
 * undefined tensor when it has none or the adapters are off. x [..., in] -> [..., out]. */
at::Tensor lora_delta(const unet &m, int weight, const at::Tensor &x);
/* Whether the adapters take part in the forward. */
inline bool lora_on(const unet &m) { return m.lora_active && !m.lora.empty(); }

/* Forward FLOPs (matmul-shaped work only) of n images of h x w latents with L text tokens. */
double forward_flops(const unet &m, double n, int64_t L, int64_t h, int64_t w);

/* softmax(scale q k^T) v for every (image, head). q [b, n, 3 dim] (self-attention: q, k, v side by
 * side, kv empty) or q [b, n, dim] with kv [b, m, 2 dim]; returns [b, n, dim]. Differentiable. */
at::Tensor attention_core(const at::Tensor &q, const at::Tensor &kv, int64_t heads, double scale);

/* attention_core on ATen ops in the dtype of q and kv (bf16 here): the two products as batched matmuls,
 * the softmax in float32 (unet_precision.cpp). Differentiable by autograd. */
at::Tensor attention_core_lowp(const at::Tensor &q, const at::Tensor &kv, int64_t heads, double scale);
/* unet_set_precision without its boundary (p is a unet_precision value). */
void set_precision(unet &m, int p);
/* unet_matmul_gflops without its boundary. */
double matmul_gflops(int n, int p, int threads, int reps);
/* The compute dtype of a low precision: at::kHalf for fp16, at::kBFloat16 otherwise (bf16; unused at fp32). */
inline at::ScalarType lowp_dtype(int p) { return p == 2 /* UNET_PRECISION_FP16 */ ? at::kHalf : at::kBFloat16; }
/* Converts a frozen bf16 (or fp16) model's stored weights to that dtype (once; see unet_set_precision). */
void store_frozen_bf16(unet &m);
/* Throws DPOD_ESTATE, naming `fn`, when the model's weights are stored in bf16. */
void require_fp32_storage(const unet &m, const char *fn);

/* Whether attention_core multiplies through direct sgemm_ calls (else ATen's matmul). */
bool attention_uses_sgemm();

/* Sets OpenBLAS's own thread pool, if the BLAS is OpenBLAS (at::set_num_threads does not reach it). */
void set_blas_threads(int n);

}  // namespace shim

#endif
