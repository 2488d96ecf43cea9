/* What the C API does, in C++: each function here is one call of unet_shim.h without its boundary. They
 * throw shim::error for a caller's mistake and let libtorch's own exceptions through; unet_shim.cpp
 * catches both. */
#include "unet_ops.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>

#include "adamw_kernel.h"
#include "diffusers_names.h"
#include "dpod_file.h"
#include "safetensors.h"
#include "unet_device.h"

extern "C" {
#include "dpod_error.h"
}

namespace shim {
namespace {

std::string shape_str(const int64_t *s, int nd) {
  std::string o = "[";
  for (int i = 0; i < nd; i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

void check_dims(int n, int height, int width, int text_len) {
  if (n <= 0 || height <= 0 || width <= 0 || text_len <= 0)
    throw error(DPOD_EINVAL, "bad input dims: n " + std::to_string(n) + ", height " + std::to_string(height) +
                                 ", width " + std::to_string(width) + ", text_len " + std::to_string(text_len));
}

/* The added conditioning is required exactly when the config has text_time: without it an SDXL UNet
 * would compute something diffusers never does, and with it an SD UNet would silently ignore it. */
void check_added(const unet &m, const unet_added_cond *a, const char *fn) {
  const unet_config_ &c = m.cfg;
  if (!c.text_time()) {
    if (a && (a->text_embeds || a->time_ids))
      throw error(DPOD_EINVAL, std::string(fn) + ": text_embeds and time_ids were given, but this config has no "
                                                 "added conditioning (addition_embed_type null)");
    return;
  }
  const char *missing = !a || !a->text_embeds ? "text_embeds" : !a->time_ids ? "time_ids" : nullptr;
  if (missing)
    throw error(DPOD_EINVAL, std::string(fn) + ": this config (addition_embed_type \"text_time\") needs '" + missing +
                                 "': text_embeds [n, " + std::to_string(c.text_embeds_dim()) + "] and time_ids [n, " +
                                 std::to_string(unet_num_time_ids_) + "]");
}

/* Views of caller-owned host arrays in the model's shapes. */
struct inputs_ {
  at::Tensor x, t, ehs;
  added_ added;
  inputs_(const unet &m, int n, int height, int width, int text_len, const float *x_, const float *t_,
          const float *ehs_, const unet_added_cond *a) {
    const unet_config_ &c = m.cfg;
    x = at::from_blob((void *)x_, {n, c.in_channels, height, width}, at::kFloat);
    t = at::from_blob((void *)t_, {n}, at::kFloat);
    ehs = at::from_blob((void *)ehs_, {n, text_len, (int64_t)c.cross_attention_dim.back()}, at::kFloat);
    if (c.text_time()) {
      added.text_embeds = at::from_blob((void *)a->text_embeds, {n, c.text_embeds_dim()}, at::kFloat);
      added.time_ids = at::from_blob((void *)a->time_ids, {n, unet_num_time_ids_}, at::kFloat);
      added.text_embeds = on_model_(m, added.text_embeds);
      added.time_ids = on_model_(m, added.time_ids);
    }
    x = on_model_(m, x);
    t = on_model_(m, t);
    ehs = on_model_(m, ehs);
  }
};

/* What the optimizer trains: the adapters when LoRA is enabled (the base is frozen then), else the base. */
at::Tensor &trainable(unet &m) { return m.lora.empty() ? m.flat : m.lora_flat; }
at::Tensor &trainable_grad(unet &m) { return m.lora.empty() ? m.flat_grad : m.lora_grad; }

void ensure_adam_state(unet &m) {
  if (!m.adam_m.defined()) {
    m.adam_m = at::zeros_like(trainable(m));
    m.adam_v = at::zeros_like(trainable(m));
  }
}

/* A model with its config parsed and its parameter list built, but no parameter allocated. */
std::unique_ptr<unet> parse_and_build(const char *config_json) {
  auto m = std::make_unique<unet>();
  std::string e;
  int rc = unet_config_parse_(config_json ? config_json : unet_tiny_config_json_, &m->cfg, &e);
  if (rc != 0) throw error(rc, e);
  m->cfg_json = unet_config_to_json_(m->cfg);
  build(*m);
  return m;
}

}  // namespace

std::unique_ptr<unet> create(const char *config_json, const unet_params &p) {
  c10::Device dev = parse_device_(p.device);
  auto m = parse_and_build(config_json);
  at::globalContext().setFlushDenormal(true);
  if (p.threads > 0) {
    at::set_num_threads(p.threads);
    set_blas_threads(p.threads);
  }
  allocate(*m, p.seed);
  to_device_(*m, dev);
  return m;
}

void config_num_params(const char *config_json, size_t *num_params, size_t *num_tensors) {
  auto m = parse_and_build(config_json);
  size_t total = 0;
  for (const param_ &p : m->params) total += (size_t)p.numel;
  if (num_params) *num_params = total;
  if (num_tensors) *num_tensors = m->params.size();
}

void load_weights(unet &m, const char *path) {
  if (!path) throw error(DPOD_EINVAL, "unet_load_weights: no path");
  require_fp32_storage(m, "unet_load_weights");
  char e[1024];
  st_file *f = nullptr;
  int rc = st_open(path, &f, e, sizeof e);
  if (rc != 0) throw error(rc, e);
  std::unique_ptr<st_file, void (*)(st_file *)> guard(f, st_close);

  /* Check everything before touching a single weight. */
  std::vector<const st_tensor *> src(m.params.size());
  std::string missing, shape, dtype, unexpected;
  size_t n_missing = 0, n_shape = 0, n_dtype = 0, n_unexpected = 0;
  auto note = [](std::string &list, size_t &count, const std::string &item) {
    if (count++ < 4) list += (list.empty() ? "" : ", ") + item;
  };
  for (size_t i = 0; i < m.params.size(); i++) {
    const param_ &p = m.params[i];
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
      note(shape, n_shape,
           "'" + p.name + "' is " + shape_str(t->shape, t->ndim) + ", expected " +
               shape_str(p.shape.data(), (int)p.shape.size()));
      continue;
    }
    src[i] = t;
  }
  /* Unexpected: names the model does not have (a linear scan per name would be quadratic). */
  std::vector<std::string> names;
  for (auto &p : m.params) names.push_back(p.name);
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i < st_count(f); i++) {
    const char *nm = st_at(f, i)->name;
    if (!std::binary_search(names.begin(), names.end(), std::string(nm)))
      note(unexpected, n_unexpected, std::string("'") + nm + "'");
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
    throw error(n_shape || n_dtype ? DPOD_ESHAPE : n_missing ? DPOD_ENOENT : DPOD_EFORMAT, msg);
  }
  m.mse = at::Tensor();
  /* Off the CPU, through a host copy. */
  at::Tensor host = m.flat.is_cpu() ? m.flat : at::empty(m.flat.sizes(), at::TensorOptions().dtype(at::kFloat));
  float *base = host.data_ptr<float>();
  for (size_t i = 0; i < m.params.size(); i++) st_to_f32(src[i], base + m.params[i].offset);
  if (!m.flat.is_cpu()) {
    at::NoGradGuard ng;
    m.flat.copy_(host);
  }
}

void copy_weights(unet &dst, const unet &src) {
  bool same = src.params.size() == dst.params.size();
  for (size_t i = 0; same && i < src.params.size(); i++)
    same = src.params[i].name == dst.params[i].name && src.params[i].shape == dst.params[i].shape;
  if (!same) throw error(DPOD_ESHAPE, "unet_copy_weights: the two models have different configs");
  require_fp32_storage(dst, "unet_copy_weights");
  at::NoGradGuard ng;
  dst.mse = at::Tensor();
  dst.flat.copy_(src.flat);
}

void freeze(unet &m) {
  m.frozen = true;
  m.mse = at::Tensor();
  for (auto &p : m.params) p.t.requires_grad_(false);
  for (auto &t : m.fused) t.requires_grad_(false);
  /* A reference never trains: its gradient buffer (the size of its weights) and optimizer state go. */
  for (auto &p : m.params) p.t.mutable_grad() = at::Tensor();
  for (auto &t : m.fused) t.mutable_grad() = at::Tensor();
  m.flat_grad = at::Tensor();
  m.adam_m = m.adam_v = at::Tensor();
  store_frozen_bf16(m);
}

uint64_t save(const unet &m, const char *dir) {
  if (!dir) throw error(DPOD_EINVAL, "unet_save: no directory");
  require_fp32_storage(m, "unet_save");
  std::string d(dir);
  char e[1024];
  if (dpod_mkdirs(dir, 0755, 0, e, sizeof e) != 0) throw error(DPOD_EIO, e);
  st_writer *w = st_writer_new();
  if (!w) throw std::bad_alloc();
  std::unique_ptr<st_writer, void (*)(st_writer *)> guard(w, st_writer_free);
  at::Tensor host = m.flat.cpu(); /* the buffer itself on the CPU */
  const float *base = host.data_ptr<float>();
  for (auto &p : m.params) {
    int rc = st_writer_add(w, p.name.c_str(), ST_F32, (int)p.shape.size(), p.shape.data(), base + p.offset);
    if (rc != 0) throw error(rc, "unet_save: cannot add tensor '" + p.name + "'");
  }
  st_writer_set_metadata(w, "format", "pt");
  uint64_t bytes = 0;
  std::string wpath = d + "/" + DIFFUSERS_WEIGHTS_NAME;
  int rc = st_writer_write(w, wpath.c_str(), &bytes, e, sizeof e);
  if (rc != 0) throw error(rc, e);
  std::string cpath = d + "/" + DIFFUSERS_CONFIG_NAME;
  rc = dpod_write_file_atomic(cpath.c_str(), m.cfg_json.data(), m.cfg_json.size(), 0, e, sizeof e);
  if (rc != 0) throw error(rc, e);
  return bytes;
}

void infer(unet &m, int n, int height, int width, int text_len, const float *x, const float *t, const float *ehs,
           const unet_added_cond *added, float *out) {
  check_dims(n, height, width, text_len);
  if (!x || !t || !ehs || !out) throw error(DPOD_EINVAL, "unet_forward: NULL array");
  check_added(m, added, "unet_forward");
  c10::InferenceMode im;
  inputs_ in(m, n, height, width, text_len, x, t, ehs, added);
  at::Tensor y = forward(m, in.x, in.t, in.ehs, in.added).cpu().contiguous();
  std::memcpy(out, y.data_ptr<float>(), (size_t)y.numel() * sizeof(float));
}

void forward_mse(unet &m, int n, int height, int width, int text_len, const float *x, const float *t,
                 const float *ehs, const unet_added_cond *added, const float *target, float *mse, float *pred) {
  check_dims(n, height, width, text_len);
  if (!x || !t || !ehs || !target || !mse) throw error(DPOD_EINVAL, "unet_forward_mse: NULL array");
  check_added(m, added, "unet_forward_mse");
  /* A LoRA model with its adapters off is the frozen reference: nothing to differentiate, and the graph
   * of the policy's forward stays for the backward that follows. */
  bool reference = m.frozen || (!m.lora.empty() && !m.lora_active);
  if (!reference) {
    m.mse = at::Tensor();
    m.mse_n = 0;
  }
  const unet_config_ &c = m.cfg;
  auto run = [&](bool keep) {
    inputs_ in(m, n, height, width, text_len, x, t, ehs, added);
    at::Tensor gt = on_model_(m, at::from_blob((void *)target, {n, c.out_channels, height, width}, at::kFloat));
    /* The graph saves its inputs; copy them so the caller may reuse its buffers before backward (on_model_
     * has copied them already off the CPU). */
    if (keep && m.flat.is_cpu()) {
      in.x = in.x.clone();
      in.ehs = in.ehs.clone();
      gt = gt.clone();
      if (in.added.text_embeds.defined()) {
        in.added.text_embeds = in.added.text_embeds.clone();
        in.added.time_ids = in.added.time_ids.clone();
      }
    }
    at::Tensor y = forward(m, in.x, in.t, in.ehs, in.added);
    at::Tensor l = (y - gt).pow(2).mean({1, 2, 3});
    at::Tensor lc = l.detach().cpu().contiguous();
    std::memcpy(mse, lc.data_ptr<float>(), (size_t)n * sizeof(float));
    if (pred) {
      at::Tensor yc = y.detach().cpu().contiguous();
      std::memcpy(pred, yc.data_ptr<float>(), (size_t)yc.numel() * sizeof(float));
    }
    if (keep) {
      m.mse = l;
      m.mse_n = n;
    }
  };
  if (reference) {
    c10::InferenceMode im;
    run(false);
  } else {
    at::AutoGradMode gm(true);
    run(true);
  }
}

void backward_mse(unet &m, const float *grad_mse) {
  if (m.frozen) throw error(DPOD_ESTATE, "unet_backward_mse: the model is frozen");
  if (!m.mse.defined()) throw error(DPOD_ESTATE, "unet_backward_mse: no forward graph to back-propagate");
  if (!grad_mse) throw error(DPOD_EINVAL, "unet_backward_mse: NULL grad_mse");
  at::Tensor g = at::from_blob((void *)grad_mse, {m.mse_n}, at::kFloat);
  g = m.flat.is_cpu() ? g.clone() : on_model_(m, g);
  at::Tensor l = std::move(m.mse);
  m.mse = at::Tensor();
  l.backward(g);
}

void zero_grad(unet &m) {
  require_fp32_storage(m, "unet_zero_grad");
  at::NoGradGuard ng;
  if (m.frozen && m.lora.empty()) return; /* no gradients to zero */
  trainable_grad(m).zero_();
}

void param_at(const unet &m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]) {
  if (i >= m.params.size()) throw error(DPOD_EINVAL, "unet_param_at: index out of range");
  const param_ &p = m.params[i];
  if (name) *name = p.name.c_str();
  if (offset) *offset = (size_t)p.offset;
  if (ndim) *ndim = (int)p.shape.size();
  if (shape)
    for (size_t k = 0; k < p.shape.size() && k < 8; k++) shape[k] = p.shape[k];
}

void adamw_step(unet &m, const unet_adamw_params &p, double *grad_norm) {
  if (m.frozen) throw error(DPOD_ESTATE, "unet_adamw_step: the model is frozen");
  const int64_t n = trainable(m).numel();
  const bool cpu = trainable(m).is_cpu();
  /* Raw pointers only on the CPU; a device model runs the ATen path below. */
  float *w = cpu ? trainable(m).data_ptr<float>() : nullptr, *g = cpu ? trainable_grad(m).data_ptr<float>() : nullptr;
  /* The global norm in double, from partial sums over fixed chunks added in order: the same number
   * whatever the thread count, and closer to exact than clip_grad_norm_'s float32 norm of norms. */
  const int64_t chunk = 1 << 16, nchunks = (n + chunk - 1) / chunk;
  double sq = 0;
  if (cpu) {
    std::vector<double> part((size_t)nchunks);
    at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; c++) part[(size_t)c] = unet_sumsq_(g + c * chunk, std::min(chunk, n - c * chunk));
    });
    for (double x : part) sq += x;
  } else {
    sq = sumsq_device_(trainable_grad(m));
  }
  double norm = std::sqrt(sq);
  if (grad_norm) *grad_norm = norm;
  if (!std::isfinite(norm))
    throw error(DPOD_ENUMERIC, "unet_adamw_step: gradient norm is " + std::to_string(norm) + "; step skipped");
  ensure_adam_state(m);
  /* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when below 1; then
   * torch.optim.AdamW, fused into one pass (adamw_kernel.cpp). */
  m.adam_step++;
  unet_adamw_coef_ c;
  double coef = p.max_grad_norm > 0 ? p.max_grad_norm / (norm + 1e-6) : 1.0;
  c.do_clip = coef < 1.0;
  c.clip = (float)coef;
  c.decay = (float)(1.0 - p.lr * p.weight_decay);
  c.beta1 = (float)p.beta1;
  c.one_minus_beta1 = (float)(1.0 - p.beta1);
  c.beta2 = (float)p.beta2;
  c.one_minus_beta2 = (float)(1.0 - p.beta2);
  c.sqrt_bc2 = (float)std::sqrt(1.0 - std::pow(p.beta2, (double)m.adam_step));
  c.eps = (float)p.eps;
  c.step_size = (float)(p.lr / (1.0 - std::pow(p.beta1, (double)m.adam_step)));
  if (adamw_uses_aten_(trainable(m))) {
    adamw_aten_(trainable(m), trainable_grad(m), m.adam_m, m.adam_v, c);
    return;
  }
  float *am = m.adam_m.data_ptr<float>(), *av = m.adam_v.data_ptr<float>();
  at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
    int64_t lo = b * chunk, hi = std::min(e * chunk, n);
    unet_adamw_kernel_(w + lo, g + lo, am + lo, av + lo, hi - lo, &c);
  });
}

void adamw_state(unet &m, float **exp_avg, float **exp_avg_sq, size_t *n, uint64_t *step) {
  require_fp32_storage(m, "unet_adamw_state");
  ensure_adam_state(m);
  /* With host copies, snapshots written back at the next call (unet_device.h). */
  if (exp_avg) *exp_avg = m.host_copies ? host_mirror_(m, m.adam_m) : m.adam_m.data_ptr<float>();
  if (exp_avg_sq) *exp_avg_sq = m.host_copies ? host_mirror_(m, m.adam_v) : m.adam_v.data_ptr<float>();
  if (n) *n = (size_t)m.adam_m.numel();
  if (step) *step = (uint64_t)m.adam_step;
}

void adamw_set_step(unet &m, uint64_t step) {
  if (step > (uint64_t)INT64_MAX) throw error(DPOD_EINVAL, "unet_adamw_set_step: step out of range");
  m.adam_step = (int64_t)step;
}

}  // namespace shim
