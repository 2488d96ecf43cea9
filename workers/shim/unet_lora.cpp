/* LoRA on the UNet's Linear layers, as peft adds it for diffusers' train_diffusion_dpo.py: an adapted
 * layer computes W x + b + (alpha / rank) * up(down(x)), down [rank, in], up [out, rank]. The adapters
 * live in one flat buffer (and their gradients in another) like the base parameters, so a worker
 * all-reduces and checkpoints only them; the base is frozen while they are enabled, and switching them
 * off gives back the base UNet: the reference of a LoRA DPO run without a second copy of the weights.
 *
 * Names on disk are those diffusers' save_lora_weights writes (convert_state_dict_to_diffusers of peft's
 * state dict): "unet.<module>.lora.down.weight" and "unet.<module>.lora.up.weight". */
#include "unet_lora.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "safetensors.h"

extern "C" {
#include "dpod_error.h"
}

namespace shim {

namespace {

const char *const default_targets[] = {"to_q", "to_k", "to_v", "to_out.0"};

/* peft's rule for a list of target modules: the module's full name is the target, or ends in "." + it. */
bool matches(const std::string &module, const std::string &target) {
  if (module == target) return true;
  return module.size() > target.size() && module.compare(module.size() - target.size(), target.size(), target) == 0 &&
         module[module.size() - target.size() - 1] == '.';
}

/* splitmix64 output number `i` of the stream that starts at `seed`, as a float in [0, 1). */
inline float unit_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

/* The Linear layers of the model: 2-D weights (convolutions are 4-D, norms and biases 1-D). */
bool is_linear_weight(const param_ &p) {
  return p.shape.size() == 2 && p.name.size() > 7 && p.name.compare(p.name.size() - 7, 7, ".weight") == 0;
}

std::string module_of(const param_ &p) { return p.name.substr(0, p.name.size() - 7); }

}  // namespace

const std::string &lora_tensor_name(const lora_ &l, bool up) { return up ? l.up_name : l.down_name; }

void lora_enable(unet &m, const unet_lora_params &p) {
  if (!m.lora.empty()) throw error(DPOD_ESTATE, "unet_lora_enable: LoRA is already enabled on this model");
  if (m.frozen) throw error(DPOD_ESTATE, "unet_lora_enable: the model is frozen");
  if (p.rank < 1 || p.rank > UNET_LORA_MAX_RANK)
    throw error(DPOD_EINVAL, "unet_lora_enable: rank " + std::to_string(p.rank) + " is outside 1.." +
                                 std::to_string(UNET_LORA_MAX_RANK));
  double alpha = p.alpha == 0 ? (double)p.rank : p.alpha;
  if (!std::isfinite(alpha) || alpha <= 0)
    throw error(DPOD_EINVAL, "unet_lora_enable: alpha must be finite and > 0, got " + std::to_string(p.alpha));
  if (p.init != UNET_LORA_INIT_GAUSSIAN && p.init != UNET_LORA_INIT_KAIMING)
    throw error(DPOD_EINVAL, "unet_lora_enable: unknown init " + std::to_string(p.init));
  std::vector<std::string> targets;
  if (p.num_targets == 0) targets.assign(std::begin(default_targets), std::end(default_targets));
  if (p.num_targets > 0 && !p.targets) throw error(DPOD_EINVAL, "unet_lora_enable: NULL targets");
  for (size_t i = 0; i < p.num_targets; i++) {
    if (!p.targets[i] || !*p.targets[i]) throw error(DPOD_EINVAL, "unet_lora_enable: an empty target module name");
    targets.push_back(p.targets[i]);
  }

  /* Which Linear layers each target adapts; a target that adapts none is a mistake worth naming. */
  std::vector<lora_> adapters;
  std::vector<bool> used(targets.size(), false);
  for (size_t i = 0; i < m.params.size(); i++) {
    const param_ &w = m.params[i];
    if (!is_linear_weight(w)) continue;
    std::string mod = module_of(w);
    bool hit = false;
    for (size_t k = 0; k < targets.size(); k++)
      if (matches(mod, targets[k])) hit = used[k] = true;
    if (!hit) continue;
    lora_ l;
    l.module = mod;
    l.down_name = "unet." + mod + ".lora.down.weight";
    l.up_name = "unet." + mod + ".lora.up.weight";
    l.weight = (int)i;
    l.out = w.shape[0];
    l.in = w.shape[1];
    adapters.push_back(std::move(l));
  }
  for (size_t k = 0; k < targets.size(); k++)
    if (!used[k])
      throw error(DPOD_EINVAL, "unet_lora_enable: target module '" + targets[k] +
                                   "' names no Linear layer of this UNet (LoRA adapts Linear layers, e.g. to_q, "
                                   "to_k, to_v, to_out.0, ff.net.2)");

  int64_t total = 0;
  for (lora_ &l : adapters) {
    l.off_down = total;
    total += p.rank * l.in;
    l.off_up = total;
    total += l.out * p.rank;
  }
  at::NoGradGuard ng;
  at::Tensor flat = at::zeros({total}, at::kFloat), grad = at::zeros({total}, at::kFloat);
  /* peft's initialisations: down ~ N(0, 1/rank) ("gaussian", what train_diffusion_dpo.py asks for) or
   * U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with a = sqrt(5), peft's default); up = 0, so the adapted
   * UNet starts as the base. Counter-keyed like the base's init: the same numbers for any thread count. */
  float *base = flat.data_ptr<float>();
  for (const lora_ &l : adapters) {
    const int64_t n = p.rank * l.in;
    float *dst = base + l.off_down;
    const uint64_t first = (uint64_t)l.off_down;
    if (p.init == UNET_LORA_INIT_GAUSSIAN) {
      const float sd = 1.0f / (float)p.rank;
      for (int64_t i = 0; i < n; i++) {
        float u1 = unit_uniform(p.seed, 2 * (first + (uint64_t)i)), u2 = unit_uniform(p.seed, 2 * (first + (uint64_t)i) + 1);
        dst[i] = sd * (float)(std::sqrt(-2.0 * std::log(1.0 - (double)u1)) * std::cos(2.0 * M_PI * (double)u2));
      }
    } else {
      const float bound = (float)(1.0 / std::sqrt((double)l.in));
      for (int64_t i = 0; i < n; i++) dst[i] = (2.0f * unit_uniform(p.seed, first + (uint64_t)i) - 1.0f) * bound;
    }
  }
  /* Initialised on the host; the adapters live where the model does. */
  if (!m.flat.is_cpu()) {
    flat = flat.to(m.flat.device());
    grad = grad.to(m.flat.device());
  }
  for (lora_ &l : adapters) {
    l.down = flat.narrow(0, l.off_down, p.rank * l.in).view({p.rank, l.in}).detach();
    l.down.requires_grad_(true);
    l.down.mutable_grad() = grad.narrow(0, l.off_down, p.rank * l.in).view({p.rank, l.in});
    l.up = flat.narrow(0, l.off_up, l.out * p.rank).view({l.out, p.rank}).detach();
    l.up.requires_grad_(true);
    l.up.mutable_grad() = grad.narrow(0, l.off_up, l.out * p.rank).view({l.out, p.rank});
  }

  /* The base is frozen from here on: backward computes the adapters' gradients only, and the base's
   * gradient buffer (the size of its weights) is released until a merge makes it trainable again. */
  for (auto &q : m.params) q.t.requires_grad_(false), q.t.mutable_grad() = at::Tensor();
  for (auto &t : m.fused) t.requires_grad_(false), t.mutable_grad() = at::Tensor();
  m.flat_grad = at::Tensor();
  m.lora_of.assign(m.params.size(), -1);
  for (size_t k = 0; k < adapters.size(); k++) m.lora_of[(size_t)adapters[k].weight] = (int)k;
  m.lora = std::move(adapters);
  m.lora_flat = flat;
  m.lora_grad = grad;
  m.lora_rank = p.rank;
  m.lora_alpha = alpha;
  m.lora_scale = alpha / (double)p.rank;
  m.lora_active = true;
  /* The optimizer state belonged to the base parameters. */
  m.adam_m = at::Tensor();
  m.adam_v = at::Tensor();
  m.adam_step = 0;
  m.mse = at::Tensor();
}

at::Tensor lora_delta(const unet &m, int weight, const at::Tensor &x) {
  if (!lora_on(m) || weight < 0) return at::Tensor();
  int k = m.lora_of[(size_t)weight];
  if (k < 0) return at::Tensor();
  const lora_ &l = m.lora[(size_t)k];
  return at::linear(at::linear(x, l.down), l.up) * m.lora_scale;
}

void lora_set_active(unet &m, bool active) {
  if (m.lora.empty()) throw error(DPOD_ESTATE, "unet_lora_set_active: LoRA is not enabled on this model");
  m.lora_active = active;
}

void lora_param_at(const unet &m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]) {
  if (i >= 2 * m.lora.size()) throw error(DPOD_EINVAL, "unet_lora_param_at: index out of range");
  const lora_ &l = m.lora[i / 2];
  bool up = i % 2 == 1;
  if (name) *name = (up ? l.up_name : l.down_name).c_str();
  if (offset) *offset = (size_t)(up ? l.off_up : l.off_down);
  if (ndim) *ndim = 2;
  if (shape) {
    shape[0] = up ? l.out : m.lora_rank;
    shape[1] = up ? m.lora_rank : l.in;
  }
}

void lora_load(unet &m, const char *path) {
  if (m.lora.empty()) throw error(DPOD_ESTATE, "unet_lora_load: LoRA is not enabled on this model");
  if (!path) throw error(DPOD_EINVAL, "unet_lora_load: no path");
  char e[1024];
  st_file *f = nullptr;
  int rc = st_open(path, &f, e, sizeof e);
  if (rc != 0) throw error(rc, e);
  std::unique_ptr<st_file, void (*)(st_file *)> guard(f, st_close);
  /* Everything is checked before one number changes, as for the base weights. */
  std::vector<const st_tensor *> src(2 * m.lora.size());
  std::vector<std::string> names;
  for (size_t i = 0; i < src.size(); i++) {
    const lora_ &l = m.lora[i / 2];
    bool up = i % 2 == 1;
    const std::string &nm = lora_tensor_name(l, up);
    const st_tensor *t = st_find(f, nm.c_str());
    if (!t) throw error(DPOD_ENOENT, std::string(path) + ": no adapter tensor '" + nm + "' (rank " +
                                         std::to_string(m.lora_rank) + ", " + std::to_string(m.lora.size()) +
                                         " adapted modules)");
    int64_t r0 = up ? l.out : m.lora_rank, r1 = up ? m.lora_rank : l.in;
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
      throw error(DPOD_ESHAPE, std::string(path) + ": '" + nm + "' is " + st_dtype_name(t->dtype) + ", not a float");
    if (t->ndim != 2 || t->shape[0] != r0 || t->shape[1] != r1)
      throw error(DPOD_ESHAPE, std::string(path) + ": '" + nm + "' has shape [" +
                                   (t->ndim > 0 ? std::to_string(t->shape[0]) : "") +
                                   (t->ndim > 1 ? ", " + std::to_string(t->shape[1]) : "") + "], expected [" +
                                   std::to_string(r0) + ", " + std::to_string(r1) + "]");
    src[i] = t;
    names.push_back(nm);
  }
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i < st_count(f); i++) {
    const char *nm = st_at(f, i)->name;
    if (!std::binary_search(names.begin(), names.end(), std::string(nm)))
      throw error(DPOD_EFORMAT, std::string(path) + ": tensor '" + nm + "' is not an adapter of this model's LoRA (" +
                                    std::to_string(m.lora.size()) + " adapted modules)");
  }
  m.mse = at::Tensor();
  const bool cpu = m.lora_flat.is_cpu(); /* else through a host copy */
  at::Tensor host = cpu ? m.lora_flat : at::empty(m.lora_flat.sizes(), at::TensorOptions().dtype(at::kFloat));
  float *base = host.data_ptr<float>();
  for (size_t i = 0; i < src.size(); i++) {
    const lora_ &l = m.lora[i / 2];
    st_to_f32(src[i], base + (i % 2 ? l.off_up : l.off_down));
  }
  if (!cpu) {
    at::NoGradGuard ng;
    m.lora_flat.copy_(host);
  }
}

uint64_t lora_save(const unet &m, const char *path, bool fold) {
  if (m.lora.empty()) throw error(DPOD_ESTATE, "unet_lora_save: LoRA is not enabled on this model");
  if (!path) throw error(DPOD_EINVAL, "unet_lora_save: no path");
  /* Folded, the up weights carry alpha / rank, so the file means the same at diffusers' implied alpha = rank. */
  at::Tensor data = m.lora_flat;
  if (fold && m.lora_scale != 1.0) {
    at::NoGradGuard ng;
    data = m.lora_flat.clone();
    for (const lora_ &l : m.lora) data.narrow(0, l.off_up, l.out * m.lora_rank).mul_(m.lora_scale);
  }
  st_writer *w = st_writer_new();
  if (!w) throw std::bad_alloc();
  std::unique_ptr<st_writer, void (*)(st_writer *)> guard(w, st_writer_free);
  data = data.cpu(); /* itself on the CPU */
  const float *base = data.data_ptr<float>();
  std::vector<std::string> names;
  names.reserve(2 * m.lora.size());
  for (const lora_ &l : m.lora) {
    names.push_back(lora_tensor_name(l, false));
    int64_t sd[2] = {m.lora_rank, l.in};
    int rc = st_writer_add(w, names.back().c_str(), ST_F32, 2, sd, base + l.off_down);
    names.push_back(lora_tensor_name(l, true));
    int64_t su[2] = {l.out, m.lora_rank};
    if (rc == 0) rc = st_writer_add(w, names.back().c_str(), ST_F32, 2, su, base + l.off_up);
    if (rc != 0) throw error(rc, "unet_lora_save: cannot add the adapter of '" + l.module + "'");
  }
  st_writer_set_metadata(w, "format", "pt");
  if (!fold) {
    /* Unfolded adapters mean something only with their alpha: say it, for whoever reads the file. */
    char buf[64];
    snprintf(buf, sizeof buf, "%.17g", m.lora_alpha);
    st_writer_set_metadata(w, "lora_alpha", buf);
    st_writer_set_metadata(w, "lora_rank", std::to_string(m.lora_rank).c_str());
  }
  char e[1024];
  uint64_t bytes = 0;
  int rc = st_writer_write(w, path, &bytes, e, sizeof e);
  if (rc != 0) throw error(rc, e);
  return bytes;
}

void lora_merge(unet &m) {
  if (m.lora.empty()) throw error(DPOD_ESTATE, "unet_lora_merge: LoRA is not enabled on this model");
  at::NoGradGuard ng;
  for (const lora_ &l : m.lora) {
    at::Tensor w = m.flat.narrow(0, m.params[(size_t)l.weight].offset, l.out * l.in).view({l.out, l.in});
    w.add_(at::matmul(l.up, l.down), m.lora_scale);
  }
  /* The adapters are in the weights now; the model is a plain UNet again, trainable as before. */
  m.lora.clear();
  m.lora_of.clear();
  m.lora_flat = m.lora_grad = at::Tensor();
  m.lora_rank = 0;
  m.lora_alpha = m.lora_scale = 0;
  m.lora_active = false;
  m.mse = at::Tensor();
  m.adam_m = at::Tensor();
  m.adam_v = at::Tensor();
  m.adam_step = 0;
  /* A fresh gradient buffer, the parameters' and fused leaves' .grad views of it as allocate() lays them. */
  m.flat_grad = at::zeros({m.flat.numel()}, m.flat.options());
  for (auto &q : m.params) {
    q.t.requires_grad_(true);
    q.t.mutable_grad() = m.flat_grad.narrow(0, q.offset, q.numel).view(q.shape);
  }
  for (size_t i = 0; i < m.fused.size(); i++) {
    const span_ &sp = m.spans[i];
    const int64_t off = m.params[(size_t)sp.first].offset, len = sp.count * sp.rows * sp.cols;
    m.fused[i].requires_grad_(true);
    m.fused[i].mutable_grad() = m.flat_grad.narrow(0, off, len).view({sp.count * sp.rows, sp.cols});
  }
}

}  // namespace shim
