/* Where a model lives (unet_device.h): device selection, the move to the device, the host's copies of the
 * device buffers, and the ATen-op versions of the two pieces that are raw CPU loops elsewhere (the AdamW
 * step and the attention core).
 *
 * Only calls present in both Debian's libtorch 1.13 and PyTorch 2.x's are used, and no CUDA header: the
 * CUDA path is chosen at run time, so the same source builds against a CPU-only libtorch. */
#include "unet_device.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "unet_model.h"

extern "C" {
#include "dpod_error.h"
}

namespace shim {

int cuda_device_count_() {
  if (!at::globalContext().hasCUDA()) return 0;
  return (int)at::detail::getCUDAHooks().getNumGPUs();
}

c10::Device parse_device_(const char *name) {
  std::string s = name && *name ? name : "cpu";
  if (s == "cpu") return c10::Device(c10::DeviceType::CPU);
  bool ok = s.compare(0, 4, "cuda") == 0 && s.size() <= 9;
  long idx = 0;
  if (ok && s.size() > 4) {
    ok = s[4] == ':' && s.size() > 5;
    for (size_t i = 5; ok && i < s.size(); i++) ok = s[i] >= '0' && s[i] <= '9';
    if (ok) idx = std::strtol(s.c_str() + 5, nullptr, 10);
  }
  std::string shown = s.substr(0, 32);
  if (!ok) throw error(DPOD_EINVAL, "device '" + shown + "' is not one of cpu, cuda, cuda:N");
  int count = cuda_device_count_();
  if (count == 0)
    throw error(DPOD_EUNSUPPORTED, "device '" + s + "' is not available: this libtorch sees no CUDA device (a "
                                   "CPU-only build, or no GPU visible to this process)");
  if (idx >= count)
    throw error(DPOD_EUNSUPPORTED, "device '" + s + "' is not available: this process sees " +
                                       std::to_string(count) + " CUDA device" + (count == 1 ? "" : "s"));
  return c10::Device(c10::DeviceType::CUDA, (c10::DeviceIndex)idx);
}

namespace {

/* DPOD_GRAD_STAGING=copy: host copies on a CPU model too. Anything else set there is a mistake. */
bool staging_forced() {
  const char *e = std::getenv("DPOD_GRAD_STAGING");
  if (!e || !*e) return false;
  if (std::strcmp(e, "copy") == 0) return true;
  throw error(DPOD_EINVAL, "DPOD_GRAD_STAGING: the only value is 'copy' (unset: no copies on the CPU)");
}

/* leaf = flat[off : off + numel(shape)] viewed as shape, a leaf whose .grad is the same range of grad. */
void bind_leaf(at::Tensor &leaf, const at::Tensor &flat, const at::Tensor &grad, int64_t off, at::IntArrayRef shape) {
  int64_t len = 1;
  for (int64_t s : shape) len *= s;
  leaf = flat.narrow(0, off, len).view(shape).detach();
  leaf.requires_grad_(true);
  leaf.mutable_grad() = grad.narrow(0, off, len).view(shape);
}

at::Tensor &trainable_grad(unet &m) { return m.lora.empty() ? m.flat_grad : m.lora_grad; }

}  // namespace

void to_device_(unet &m, const c10::Device &d) {
  m.host_copies = !d.is_cpu() || staging_forced();
  m.device_name = d.str();
  if (d.is_cpu()) return;
  at::NoGradGuard ng;
  m.flat = m.flat.to(d);
  m.flat_grad = at::zeros_like(m.flat);
  for (param_ &p : m.params) bind_leaf(p.t, m.flat, m.flat_grad, p.offset, p.shape);
  for (size_t k = 0; k < m.spans.size(); k++) {
    const span_ &sp = m.spans[k];
    bind_leaf(m.fused[k], m.flat, m.flat_grad, m.params[(size_t)sp.first].offset, {sp.count * sp.rows, sp.cols});
  }
}

at::Tensor on_model_(const unet &m, const at::Tensor &t) {
  return t.device() == m.flat.device() ? t : t.to(m.flat.device());
}

float *host_mirror_(unet &m, const at::Tensor &src) {
  at::Tensor host = at::empty(src.sizes(), at::TensorOptions().dtype(at::kFloat));
  host.copy_(src);
  m.mirrors.emplace_back(src, host);
  return host.data_ptr<float>();
}

void host_sync_(unet &m) {
  if (m.mirrors.empty()) return;
  at::NoGradGuard ng;
  /* Dropped first: a failed copy must not be retried over later writes. */
  auto pending = std::move(m.mirrors);
  m.mirrors.clear();
  for (auto &bh : pending) bh.first.copy_(bh.second);
}

float *grad_stage_(unet &m, size_t *n) {
  at::Tensor &g = trainable_grad(m);
  if (n) *n = (size_t)g.numel();
  if (!m.host_copies) return g.data_ptr<float>();
  if (!m.grad_host.defined() || m.grad_host.numel() != g.numel())
    m.grad_host = at::empty({g.numel()}, at::TensorOptions().dtype(at::kFloat).pinned_memory(g.is_cuda()));
  m.grad_host.copy_(g);
  return m.grad_host.data_ptr<float>();
}

void grad_unstage_(unet &m) {
  if (!m.host_copies) return;
  at::Tensor &g = trainable_grad(m);
  if (!m.grad_host.defined() || m.grad_host.numel() != g.numel())
    throw error(DPOD_ESTATE, "unet_grad_unstage: no gradient was staged (call unet_grad_stage first)");
  at::NoGradGuard ng;
  g.copy_(m.grad_host);
}

double sumsq_device_(const at::Tensor &g) {
  at::NoGradGuard ng;
  /* In chunks, so the double copy never needs more than 128 MiB. */
  const int64_t chunk = 1 << 24, n = g.numel();
  at::Tensor acc = at::zeros({}, g.options().dtype(at::kDouble));
  for (int64_t off = 0; off < n; off += chunk)
    acc.add_(g.narrow(0, off, std::min(chunk, n - off)).to(at::kDouble).pow(2).sum());
  return acc.item<double>();
}

bool adamw_uses_aten_(const at::Tensor &w) {
  if (!w.is_cpu()) return true;
  /* Read at every step (once a step costs nothing), so a test can compare both paths in one process. */
  const char *e = std::getenv("DPOD_ADAMW");
  return e && std::strcmp(e, "aten") == 0;
}

/* Each op rounds once to float, in the order unet_adamw_kernel_ does; no op takes an alpha other than 1
 * (ATen computes a + alpha * b with a fused multiply-add), and the division by sqrt(1 - beta2^step) is by
 * a tensor on w's device, since CUDA divides by a host scalar through its reciprocal. One temporary [n]. */
void adamw_aten_(at::Tensor &w, at::Tensor &g, at::Tensor &m, at::Tensor &v, const unet_adamw_coef_ &c) {
  at::NoGradGuard ng;
  if (c.do_clip) g.mul_(c.clip);
  at::Tensor tmp = at::mul(g, c.one_minus_beta1);
  m.mul_(c.beta1).add_(tmp);
  at::mul_out(tmp, g, g);
  tmp.mul_(c.one_minus_beta2);
  v.mul_(c.beta2).add_(tmp);
  at::sqrt_out(tmp, v);
  tmp.div_(at::scalar_tensor(c.sqrt_bc2, w.options())).add_(c.eps);
  at::div_out(tmp, m, tmp);
  tmp.mul_(c.step_size);
  w.mul_(c.decay).sub_(tmp);
}

bool attention_uses_ops_(const at::Tensor &q) {
  if (!q.is_cpu()) return true;
  const char *e = std::getenv("DPOD_ATTENTION_GEMM"); /* per call, as DPOD_ADAMW */
  return e && std::strcmp(e, "ops") == 0;
}

at::Tensor attention_core_ops_(const at::Tensor &q, const at::Tensor &kv, int64_t heads, double scale) {
  const bool self = kv.numel() == 0;
  std::vector<at::Tensor> qkv = self ? q.chunk(3, -1) : std::vector<at::Tensor>{q};
  if (!self) {
    std::vector<at::Tensor> p = kv.chunk(2, -1);
    qkv.push_back(p[0]);
    qkv.push_back(p[1]);
  }
  const int64_t b = q.size(0), n = q.size(1), m = qkv[1].size(1), dim = qkv[0].size(2), d = dim / heads;
  /* [b, len, heads * d] -> [b, heads, len, d], diffusers' head split */
  auto split = [&](const at::Tensor &t, int64_t len) { return t.reshape({b, len, heads, d}).transpose(1, 2); };
  at::Tensor s = at::matmul(split(qkv[0], n), split(qkv[1], m).transpose(-1, -2)).mul(scale);
  at::Tensor o = at::matmul(at::softmax(s, -1), split(qkv[2], m));
  return o.transpose(1, 2).reshape({b, n, dim});
}

}  // namespace shim
