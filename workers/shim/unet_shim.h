/* The libtorch shim: a C API over a diffusers-compatible UNet2DConditionModel.
 *
 * This header is plain C; unet_shim.cpp is the only C++ in the tree and the only file that includes
 * torch. Every C++ exception is caught at the extern "C" boundary and turned into a negative
 * dpod_status plus a message kept in the handle (unet_last_error) or written to `err`.
 *
 * Tensors cross the boundary as contiguous float32 host arrays in row-major order; the shape of each is
 * written next to its argument. The model handle owns its parameters, gradients and optimizer state. */
#ifndef DPOD_UNET_SHIM_H
#define DPOD_UNET_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct unet *unet_t;

typedef struct {
  int threads;         /* intra-op threads; 0 keeps libtorch's default */
  uint64_t seed;       /* seed of the random initialisation (used when no weights are loaded) */
  const char *device;  /* "cpu" (default), "cuda" or "cuda:N": where the parameters, gradients and optimizer
                          state live and the forward and the step run; see "Devices" below */
} unet_params;

unet_params unet_default_params(void);

/* Builds a UNet2DConditionModel from the text of a diffusers config.json (NULL: the built-in tiny
 * config, the shape of ../shared/fixtures/tiny-sd). Keys with values we do not support are refused by
 * name (DPOD_EUNSUPPORTED). Parameters are randomly initialised from p->seed the way diffusers'
 * defaults would (PyTorch's default Linear/Conv init; zero-init is not used). Flush-denormal is turned on.
 * On success *out is owned by the caller: free with unet_free(). On failure err holds the reason. */
int unet_create(const char *config_json, const unet_params *p, unet_t *out, char *err, size_t errlen);
void unet_free(unet_t m);

/* The parameter (element) and tensor counts unet_create would build from config_json (NULL: the built-in
 * config), without allocating them: for sizing a model too large to build here. Either output may be
 * NULL. On failure err holds the reason, as for unet_create. */
int unet_config_num_params(const char *config_json, size_t *num_params, size_t *num_tensors, char *err,
                           size_t errlen);

/* The message of the last failed call on this handle; "" if none. Valid until the next call. */
const char *unet_last_error(unet_t m);

typedef struct {
  int in_channels;          /* latent channels (4 for SD) */
  int out_channels;
  int sample_size;          /* latent height = width from the config */
  int cross_attention_dim;  /* width of encoder_hidden_states */
  size_t num_params;        /* trainable parameters (elements) */
  size_t num_tensors;       /* parameter tensors, as in the state dict */
  int text_embeds_dim;      /* width of the pooled text embedding the added conditioning takes (SDXL's
                               addition_embed_type "text_time"); 0: the config has none */
  int num_time_ids;         /* time ids per sample with text_time (6), else 0 */
} unet_info;

void unet_get_info(unet_t m, unet_info *info);

/* The config as diffusers JSON text, every key filled in; owned by the handle, valid while it lives. */
const char *unet_config_json(unet_t m);

/* Loads weights with diffusers names from a safetensors file (F32, F16 or BF16; memory-mapped).
 * Missing, unexpected or mis-shaped tensors are refused by name and nothing is changed. */
int unet_load_weights(unet_t m, const char *safetensors_path);

/* Copies every parameter of `src` into `dst` (same config). */
int unet_copy_weights(unet_t dst, unet_t src);

/* Makes the model a frozen reference: no gradients, inference mode for every later forward. Its gradient
 * buffer is released (unet_grad_buffer then returns NULL; unet_zero_grad does nothing). */
int unet_freeze(unet_t m);

/* Writes `dir`/diffusion_pytorch_model.safetensors (F32, diffusers names, written to a temporary name,
 * fsynced and renamed) and `dir`/config.json, so UNet2DConditionModel.from_pretrained(dir) loads it.
 * Creates `dir` if needed. *bytes_out (may be NULL) receives the size of the weights file. */
int unet_save(unet_t m, const char *dir, uint64_t *bytes_out);

/* SDXL's added conditioning (addition_embed_type "text_time"), what diffusers takes as added_cond_kwargs.
 * Required by the configs whose unet_info has text_embeds_dim > 0 and refused by the others. The arrays
 * are the caller's and are read only during the call. */
typedef struct {
  const float *text_embeds;  /* [n, text_embeds_dim]: the pooled text embedding */
  const float *time_ids;     /* [n, 6]: original size (h, w), crop top-left (y, x), target size (h, w), pixels */
} unet_added_cond;

/* Inference: x [n, C, H, W], t [n] (timesteps as floats), ehs [n, text_len, cross_attention_dim];
 * out [n, C, H, W]. For a config without added conditioning. */
int unet_forward(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                 const float *ehs, float *out);
/* unet_forward with the added conditioning (NULL: none). */
int unet_forward_added(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                       const float *ehs, const unet_added_cond *added, float *out);

/* Training forward: predicts on x (shapes as in unet_forward) and writes the per-sample loss
 * mse[i] = mean over C,H,W of (pred_i - target_i)^2 into mse [n]; pred [n, C, H, W] may be NULL.
 * If the model is not frozen, the graph is kept for unet_backward_mse; a second forward discards it.
 * For a config without added conditioning. */
int unet_forward_mse(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                     const float *ehs, const float *target, float *mse, float *pred);
/* unet_forward_mse with the added conditioning (NULL: none); the arrays may be reused before backward. */
int unet_forward_mse_added(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                           const float *ehs, const unet_added_cond *added, const float *target, float *mse,
                           float *pred);

/* Back-propagates d(objective)/d(mse[i]) = grad_mse[i] (length n of the last forward) through the graph
 * kept by unet_forward_mse and adds the result into the gradient buffer. Releases the graph. */
int unet_backward_mse(unet_t m, const float *grad_mse);

/* All trainable parameters live in one contiguous float32 buffer and their gradients in another, in
 * state-dict order, so gradients can be all-reduced in a few large calls. The parameter pointer stays
 * valid for the handle's lifetime; the gradient pointer until unet_freeze or unet_lora_enable release
 * the buffer (a frozen base keeps none: NULL then, until unet_lora_merge makes it trainable again).
 * *n receives the element count. With host copies (unet_host_copies) the parameter buffer is a host
 * snapshot instead, valid until the next call on the handle, which first writes it back;
 * unet_grad_buffer is then NULL off the CPU (unet_last_error says why): use unet_grad_stage. */
float *unet_grad_buffer(unet_t m, size_t *n);
float *unet_param_buffer(unet_t m, size_t *n);
/* Zeroes the gradient buffer. A failure here must stop training: the next backward would add to stale
 * gradients. */
int unet_zero_grad(unet_t m);

/* ---- Devices ----
 * A model on a device other than the CPU keeps its flat buffers (parameters, gradients, optimizer state,
 * adapters) there; the host sees them through copies ("host copies"): unet_param_buffer,
 * unet_adamw_state and unet_lora_param_buffer hand out host snapshots whose writes the next call on the
 * handle applies, and the gradients travel through a staging buffer (pinned with CUDA). On a CPU model
 * the staging buffer is the gradient buffer (no copy) unless DPOD_GRAD_STAGING=copy was set when it was
 * created, which gives it the host copies of a device model: what tests the path where there is no GPU. */

/* CUDA devices this libtorch sees: 0 for a CPU-only build or a machine without a GPU. */
int unet_cuda_device_count(void);
/* The device the model lives on, as libtorch names it ("cpu", "cuda:0"). Owned by the handle. */
const char *unet_device(unet_t m);
/* 1 if the host sees the model's buffers through copies (a device model, or DPOD_GRAD_STAGING=copy). */
int unet_host_copies(unet_t m);
/* The trainable gradient (the adapters' with LoRA) on the host, for the all-reduce: the gradient buffer
 * itself without host copies, else copied into the staging buffer (owned by the handle, valid until the
 * next unet_grad_stage or unet_free). *n receives the element count. NULL on failure. */
float *unet_grad_stage(unet_t m, size_t *n);
/* Copies the staging buffer (as the caller left it) back into the gradient; nothing without host copies. */
int unet_grad_unstage(unet_t m);

/* Parameter tensor i (0 <= i < num_tensors) in state-dict order: its diffusers name, element offset in
 * the flat buffers, and shape. Strings owned by the handle. */
int unet_param_at(unet_t m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]);

typedef struct {
  double lr;             /* learning rate of this step */
  double beta1, beta2;   /* Adam moments (0.9, 0.999) */
  double eps;            /* 1e-8 */
  double weight_decay;   /* decoupled, 1e-2 */
  double max_grad_norm;  /* clip the global norm to this; <= 0 disables */
} unet_adamw_params;

unet_adamw_params unet_adamw_default_params(void);

/* Clips the gradient buffer by global norm, then takes one AdamW step (PyTorch's torch.optim.AdamW
 * arithmetic, bias-corrected). The optimizer state lives in the handle. *grad_norm (may be NULL)
 * receives the norm before clipping. */
int unet_adamw_step(unet_t m, const unet_adamw_params *p, double *grad_norm);

/* The AdamW state, for checkpoints: *exp_avg and *exp_avg_sq receive the flat first and second moments
 * [*n] (the layout of unet_param_buffer, or of unet_lora_param_buffer with LoRA; allocated and zero-filled here if no step was taken yet), *step
 * the number of steps taken (the bias correction's count). The buffers are owned by the handle and stay
 * valid for its lifetime; the caller may read or overwrite them between steps. With host copies they are
 * snapshots, as unet_param_buffer's are. Any output pointer may be NULL. */
int unet_adamw_state(unet_t m, float **exp_avg, float **exp_avg_sq, size_t *n, uint64_t *step);

/* Sets the step count a resumed run continues from (the next unet_adamw_step takes step + 1). */
int unet_adamw_set_step(unet_t m, uint64_t step);

/* ---- Adafactor ----
 * transformers' Adafactor as the reference script uses it for SDXL (lr given, scale_parameter,
 * relative_step and warmup_init off, no first moment), after the same global-norm clip as
 * unet_adamw_step (adafactor.cpp). It works per parameter tensor, since its second moments are factored:
 * a tensor of >= 2 dimensions [..., R, C] keeps a row mean [..., R] and a column mean [..., C], a 1-D one a
 * full second moment. The optimizer is a handle of its own over a layout of tensors in a flat buffer;
 * unet_adafactor_new takes the model's layout (its LoRA adapters' once LoRA is enabled). */

typedef struct unet_adafactor *unet_adafactor_t;

typedef struct {
  double lr;              /* learning rate of this step (no parameter scaling, no relative step) */
  double weight_decay;    /* p -= lr * weight_decay * p, before the update is subtracted */
  double max_grad_norm;   /* clip the global gradient norm to this first; <= 0 disables */
  double clip_threshold;  /* the update's RMS is clipped to this (1.0) */
  double decay_rate;      /* beta2 at step t is 1 - t^decay_rate (-0.8) */
  double eps1;            /* added to the squared gradient (1e-30) */
} unet_adafactor_params;

unet_adafactor_params unet_adafactor_default_params(void);

/* One parameter tensor of a flat float32 buffer: element offset and shape. */
typedef struct {
  size_t offset;
  int ndim;          /* 1..8 */
  int64_t shape[8];
} unet_tensor_layout;

/* An optimizer over `num_tensors` tensors of a flat buffer of `num_elements` floats; the tensors must
 * not overlap and must lie inside it (refused with err set otherwise). The layout is copied. On success
 * *out is the caller's: free with unet_adafactor_free(). */
int unet_adafactor_create(const unet_tensor_layout *tensors, size_t num_tensors, size_t num_elements,
                          unet_adafactor_t *out, char *err, size_t errlen);
/* unet_adafactor_create over what `m` trains: its LoRA adapters (unet_lora_param_at) if LoRA is enabled,
 * else every parameter (unet_param_at). Enable LoRA first. */
int unet_adafactor_new(unet_t m, unet_adafactor_t *out, char *err, size_t errlen);
void unet_adafactor_free(unet_adafactor_t a);
/* The message of the last failed call on this handle; "" if none. Valid until the next call. */
const char *unet_adafactor_last_error(unet_adafactor_t a);

/* One step on w [n] with gradient g [n] (n the layout's num_elements): the global norm of g (written to
 * *grad_norm, may be NULL) in double, g scaled in place by max_grad_norm / (norm + 1e-6) when that is
 * below 1, then Adafactor. A non-finite norm changes nothing and returns DPOD_ENUMERIC. */
int unet_adafactor_update(unet_adafactor_t a, const unet_adafactor_params *p, float *w, float *g, size_t n,
                          double *grad_norm);
/* unet_adafactor_update on the model's trainable buffers (unet_param_buffer/unet_grad_buffer, or the
 * adapters'); errors are the optimizer's (unet_adafactor_last_error). CPU only. */
int unet_adafactor_step(unet_t m, unet_adafactor_t a, const unet_adafactor_params *p, double *grad_norm);

/* The state, for checkpoints: *state [*n] holds, tensor after tensor in layout order, the row then the
 * column means of a factored tensor or the second moment of a 1-D one; *step the steps taken. The buffer
 * is the handle's (zero before the first step) and may be overwritten between steps; any output may be
 * NULL. */
int unet_adafactor_state(unet_adafactor_t a, float **state, size_t *n, uint64_t *step);
/* Sets the step count a resumed run continues from (the next update takes step + 1). */
int unet_adafactor_set_step(unet_adafactor_t a, uint64_t step);

/* ---- Gradient checkpointing ----
 * With it on, a forward that keeps a graph (unet_forward_mse on a trainable model) runs every resnet and
 * transformer of the UNet without keeping its activations, and unet_backward_mse runs each again to
 * back-propagate through it (diffusers' enable_gradient_checkpointing): less memory, one more forward of
 * those blocks' time. The gradients are those without it up to float32 summation order. It applies to the
 * adapters' gradients with LoRA alike; a reference or inference forward keeps no graph and is unchanged.
 * Off by default; may be switched between steps (not between a forward and its backward). */
int unet_set_gradient_checkpointing(unet_t m, int on);
/* Since unet_create: how many blocks ran without keeping activations, and how many were recomputed in a
 * backward (the two grow alike over full steps). Either output may be NULL. */
void unet_checkpoint_counts(unet_t m, uint64_t *forwards, uint64_t *recomputes);

/* ---- LoRA ----
 * Low-rank adapters on Linear layers, as peft adds them for diffusers: an adapted layer computes
 * W x + b + (alpha / rank) * up(down(x)), down [rank, in], up [out, rank]. Once enabled, the adapters are
 * the model's trainable parameters: the base is frozen (its gradient buffer released, so unet_grad_buffer
 * returns NULL), unet_backward_mse fills the adapters' gradients only, and unet_zero_grad, unet_adamw_step
 * and unet_adamw_state act on the adapters' flat buffers (unet_lora_param_buffer's layout).
 * unet_param_buffer and unet_param_at keep meaning the base's. With the adapters switched off (unet_lora_set_active 0) the model is the base UNet: the
 * reference of a LoRA DPO run, in the same memory; such a forward records no graph and leaves the one
 * kept by the last forward with the adapters on, so policy and reference can alternate within a step. */

#define UNET_LORA_MAX_RANK 1024

typedef enum {
  UNET_LORA_INIT_GAUSSIAN = 0, /* down ~ N(0, 1/rank), up = 0: peft's "gaussian", what diffusers' DPO script uses */
  UNET_LORA_INIT_KAIMING = 1   /* down ~ U(-1/sqrt(in), 1/sqrt(in)), up = 0: peft's default */
} unet_lora_init;

typedef struct {
  int rank;                    /* 1..UNET_LORA_MAX_RANK */
  double alpha;                /* the adapters' output is scaled by alpha / rank; 0 means alpha = rank */
  const char *const *targets;  /* module names: a Linear layer is adapted if its diffusers name is a target or
                                  ends in "." + a target (peft's rule); read during the call only */
  size_t num_targets;          /* 0: diffusers' to_q, to_k, to_v, to_out.0 */
  unet_lora_init init;
  uint64_t seed;               /* of the initialisation */
} unet_lora_params;

unet_lora_params unet_lora_default_params(void);

/* Adds adapters to every Linear layer a target names (a target naming none is refused, by name) and
 * freezes the base; resets the optimizer state. Once per model. */
int unet_lora_enable(unet_t m, const unet_lora_params *p);

/* Whether the adapters take part in the forward (1 after unet_lora_enable). */
int unet_lora_set_active(unet_t m, int active);

typedef struct {
  size_t num_modules;  /* adapted Linear layers; 0 when LoRA is not enabled */
  size_t num_params;   /* adapter elements: sum of rank * (in + out) */
  size_t num_tensors;  /* 2 * num_modules: down then up of each module, in the base's state-dict order */
  int rank;
  double alpha;
} unet_lora_info;

void unet_lora_get_info(unet_t m, unet_lora_info *info);

/* The adapters' parameters and gradients as flat float32 buffers (as unet_param_buffer is for the base);
 * valid until unet_lora_merge or unet_free. NULL, with unet_last_error saying why, without LoRA. */
float *unet_lora_param_buffer(unet_t m, size_t *n);
float *unet_lora_grad_buffer(unet_t m, size_t *n);

/* Adapter tensor i (0 <= i < num_tensors): its name in diffusers' LoRA file ("unet.<module>.lora.down.weight",
 * "unet.<module>.lora.up.weight"), element offset in the flat buffers, and shape. Strings owned by the handle. */
int unet_lora_param_at(unet_t m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]);

/* Reads every adapter from a safetensors file of those names (F32, F16 or BF16), as it is: the file's up
 * weights are taken to be at this model's alpha (a diffusers file means alpha = rank). A missing,
 * mis-shaped or unexpected tensor is refused by name and nothing is changed. */
int unet_lora_load(unet_t m, const char *path);

/* Writes the adapters to `path` (F32, temporary name, fsync, rename). With fold, the up weights are
 * multiplied by alpha / rank, so the file is what diffusers' save_lora_weights writes and
 * pipe.load_lora_weights reads (implied alpha = rank); without, they are written as they are, with
 * lora_rank and lora_alpha in the metadata (exact resume). *bytes_out (may be NULL) gets the size. */
int unet_lora_save(unet_t m, const char *path, int fold, uint64_t *bytes_out);

/* Folds the adapters into the base weights (W += alpha / rank * up @ down) and removes them: the model is
 * a plain UNet again, whose weights unet_save and unet_param_buffer give. */
int unet_lora_merge(unet_t m);

/* ---- Mixed precision ----
 * UNET_PRECISION_BF16: convolutions, Linear layers and attention compute in bfloat16 on bf16 activations
 * (through oneDNN on a CPU with AVX-512 BF16); the weights are cast to bf16 at each forward, so autograd
 * through the cast delivers the gradients in float32 into the flat gradient buffer, and the fp32 master
 * weights and AdamW state are untouched. Group and layer norms, the timestep embedding, the softmax of
 * attention, the MSE loss and every reduction stay float32 (a norm casts its input up and its output
 * back). A frozen model (unet_freeze) at bf16 STORES its weights in bf16, converted once, and frees the
 * fp32 copy and the gradient buffer: half the reference's memory. Such a model refuses
 * unet_param_buffer, unet_grad_buffer, unet_load_weights, unet_copy_weights (into it), unet_save and a
 * return to fp32 (DPOD_ESTATE); set the weights before freezing. UNET_PRECISION_FP16 is the same in half
 * precision (a frozen model stores fp16) on a CUDA model only; on the CPU it is refused (DPOD_EUNSUPPORTED:
 * this libtorch has no fp16 kernels there). It needs loss scaling, which is the caller's: scale grad_mse
 * before unet_backward_mse, unscale the gradient after (workers/dpo/loss_scale.h). Never run on a GPU yet.
 * FP32 (the default) is the float32 path, bit for bit as without this call. */
typedef enum { UNET_PRECISION_FP32 = 0, UNET_PRECISION_BF16 = 1, UNET_PRECISION_FP16 = 2 } unet_precision;

int unet_set_precision(unet_t m, unet_precision p);
unet_precision unet_get_precision(unet_t m);
/* "fp32", "bf16", "fp16"; "?" otherwise. Static storage. */
const char *unet_precision_name(unet_precision p);
/* The precision named `name` (as train.precision spells it): 0, or DPOD_EINVAL for an unknown name. */
int unet_precision_parse(const char *name, unet_precision *out);

/* The machine's matmul rate through this libtorch: GFLOP/s of an n x n by n x n at::mm in precision p
 * (fp32 or bf16; random operands), the best of `reps` after one warm-up, on `threads` intra-op threads
 * (0: libtorch's current setting). For dpo-bench, next to the step's own rate. 0 on bad input or
 * failure, with err (may be NULL) saying why. */
double unet_matmul_gflops(int n, unet_precision p, int threads, int reps, char *err, size_t errlen);

/* Analytic FLOPs of one Diffusion-DPO training step over n images of height x width latents with
 * text_len text tokens: 4x the forward (policy forward, backward ~2x forward, reference forward).
 * Counts Conv2d (2 Cin Cout k k Hout Wout / groups per image), Linear (2 in out per row) and the two
 * attention matmuls (2 * 2 heads Lq Lk head_dim); elementwise ops and norms are ignored. 0 on bad input. */
double unet_train_flops(unet_t m, int n, int height, int width, int text_len);

/* "sgemm" when the attention core calls the BLAS directly (fast on small heads), "aten" when it uses
 * ATen's matmul: in a build without a Fortran BLAS, or with DPOD_ATTENTION_GEMM=aten in the environment.
 * Static storage. */
const char *unet_attention_gemm(void);

/* Records every ATen op this process runs from now until unet_profile_stop(), which writes them to
 * json_path as a Chrome trace (chrome://tracing, Perfetto). One recording at a time. For dpo-bench. */
int unet_profile_start(const char *json_path, char *err, size_t errlen);
void unet_profile_stop(void);

#ifdef __cplusplus
}
#endif

#endif
