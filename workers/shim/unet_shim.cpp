/* The extern "C" boundary of the shim: every function of unet_shim.h, and nothing else. Each one runs its
 * C++ body (unet_ops.cpp) inside guarded(), which turns every exception into a status and a message, so
 * no C++ exception can reach a C caller: that is checkable on this one screen. */
#include "unet_shim.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "unet_device.h"
#include "unet_lora.h"
#include "unet_ops.h"

extern "C" {
#include "dpod_error.h"
}

namespace {

int set_err(unet *m, int status, const std::string &msg) {
  try {
    if (m) m->err = msg;
  } catch (...) { /* no memory for the message: the status still says what happened */
  }
  return status;
}

/* Runs f, returning its status or the status of the exception it threw; the message goes to `msg`. */
template <class F>
int run_caught(F &&f, std::string *msg) {
  try {
    f();
    return 0;
  } catch (const shim::error &e) {
    *msg = e.what();
    return e.status;
  } catch (const c10::Error &e) {
    *msg = std::string("libtorch: ") + e.what_without_backtrace();
    return DPOD_ETORCH;
  } catch (const std::bad_alloc &) {
    *msg = "out of memory";
    return DPOD_ENOMEM;
  } catch (const std::exception &e) {
    *msg = e.what();
    return DPOD_ETORCH;
  } catch (...) {
    *msg = "unknown C++ exception";
    return DPOD_ETORCH;
  }
}

/* For calls on a model: clears the last error, applies what the caller wrote into host mirrors of a
 * device model's buffers (unet_device.h), runs f, keeps the message in the handle. */
template <class F>
int guarded(unet *m, F &&f) {
  if (!m) return DPOD_EINVAL;
  std::string msg;
  int status = run_caught([&] {
    m->err.clear();
    shim::host_sync_(*m);
    f();
  }, &msg);
  return status ? set_err(m, status, msg) : 0;
}

}  // namespace

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
  std::string msg;
  unet_params dp = unet_default_params();
  int status = run_caught([&] { *out = shim::create(config_json, p ? *p : dp).release(); }, &msg);
  if (status && err && errlen) snprintf(err, errlen, "%s", msg.c_str());
  return status;
}

int unet_config_num_params(const char *config_json, size_t *num_params, size_t *num_tensors, char *err,
                           size_t errlen) {
  std::string msg;
  int status = run_caught([&] { shim::config_num_params(config_json, num_params, num_tensors); }, &msg);
  if (status && err && errlen) snprintf(err, errlen, "%s", msg.c_str());
  return status;
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
  info->text_embeds_dim = m->cfg.text_embeds_dim();
  info->num_time_ids = m->cfg.text_time() ? unet_num_time_ids_ : 0;
}

const char *unet_config_json(unet_t m) { return m ? m->cfg_json.c_str() : nullptr; }

int unet_load_weights(unet_t m, const char *path) { return guarded(m, [&] { shim::load_weights(*m, path); }); }

int unet_copy_weights(unet_t dst, unet_t src) {
  return guarded(dst, [&] {
    if (!src) throw shim::error(DPOD_EINVAL, "unet_copy_weights: no source model");
    shim::host_sync_(*src); /* a call on src too: its snapshots' writes first */
    shim::copy_weights(*dst, *src);
  });
}

int unet_freeze(unet_t m) { return guarded(m, [&] { shim::freeze(*m); }); }

int unet_save(unet_t m, const char *dir, uint64_t *bytes_out) {
  return guarded(m, [&] {
    uint64_t bytes = shim::save(*m, dir);
    if (bytes_out) *bytes_out = bytes;
  });
}

int unet_forward(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                 const float *ehs, float *out) {
  return unet_forward_added(m, n, height, width, text_len, x, t, ehs, nullptr, out);
}

int unet_forward_added(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                       const float *ehs, const unet_added_cond *added, float *out) {
  return guarded(m, [&] { shim::infer(*m, n, height, width, text_len, x, t, ehs, added, out); });
}

int unet_forward_mse(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                     const float *ehs, const float *target, float *mse, float *pred) {
  return unet_forward_mse_added(m, n, height, width, text_len, x, t, ehs, nullptr, target, mse, pred);
}

int unet_forward_mse_added(unet_t m, int n, int height, int width, int text_len, const float *x, const float *t,
                           const float *ehs, const unet_added_cond *added, const float *target, float *mse,
                           float *pred) {
  return guarded(m, [&] { shim::forward_mse(*m, n, height, width, text_len, x, t, ehs, added, target, mse, pred); });
}

int unet_backward_mse(unet_t m, const float *grad_mse) {
  return guarded(m, [&] { shim::backward_mse(*m, grad_mse); });
}

float *unet_grad_buffer(unet_t m, size_t *n) {
  float *p = nullptr;
  int status = guarded(m, [&] {
    if (!m->flat_grad.defined())
      throw shim::error(DPOD_ESTATE, "unet_grad_buffer: the model is frozen (a reference, or a LoRA base): it keeps no "
                                     "gradients");
    if (!m->flat_grad.is_cpu())
      throw shim::error(DPOD_EUNSUPPORTED, "unet_grad_buffer: the model is on " + m->device_name + ": use unet_grad_stage");
    shim::require_fp32_storage(*m, "unet_grad_buffer");
    if (n) *n = (size_t)m->flat_grad.numel();
    p = m->flat_grad.data_ptr<float>();
  });
  return status ? nullptr : p;
}

float *unet_param_buffer(unet_t m, size_t *n) {
  float *p = nullptr;
  int status = guarded(m, [&] {
    shim::require_fp32_storage(*m, "unet_param_buffer");
    if (n) *n = (size_t)m->flat.numel();
    p = m->host_copies ? shim::host_mirror_(*m, m->flat) : m->flat.data_ptr<float>();
  });
  return status ? nullptr : p;
}

float *unet_grad_stage(unet_t m, size_t *n) {
  float *p = nullptr;
  int status = guarded(m, [&] { p = shim::grad_stage_(*m, n); });
  return status ? nullptr : p;
}

int unet_grad_unstage(unet_t m) { return guarded(m, [&] { shim::grad_unstage_(*m); }); }

int unet_cuda_device_count(void) {
  std::string msg;
  int count = 0;
  return run_caught([&] { count = shim::cuda_device_count_(); }, &msg) ? 0 : count;
}

const char *unet_device(unet_t m) { return m ? m->device_name.c_str() : "none"; }

int unet_host_copies(unet_t m) { return m && m->host_copies ? 1 : 0; }

int unet_zero_grad(unet_t m) { return guarded(m, [&] { shim::zero_grad(*m); }); }

int unet_param_at(unet_t m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]) {
  return guarded(m, [&] { shim::param_at(*m, i, name, offset, ndim, shape); });
}

int unet_adamw_step(unet_t m, const unet_adamw_params *p, double *grad_norm) {
  return guarded(m, [&] {
    if (!p) throw shim::error(DPOD_EINVAL, "unet_adamw_step: no params");
    shim::adamw_step(*m, *p, grad_norm);
  });
}

int unet_adamw_state(unet_t m, float **exp_avg, float **exp_avg_sq, size_t *n, uint64_t *step) {
  return guarded(m, [&] { shim::adamw_state(*m, exp_avg, exp_avg_sq, n, step); });
}

int unet_adamw_set_step(unet_t m, uint64_t step) { return guarded(m, [&] { shim::adamw_set_step(*m, step); }); }

unet_lora_params unet_lora_default_params(void) {
  unet_lora_params p;
  p.rank = 4;
  p.alpha = 0;
  p.targets = nullptr;
  p.num_targets = 0;
  p.init = UNET_LORA_INIT_GAUSSIAN;
  p.seed = 0;
  return p;
}

int unet_lora_enable(unet_t m, const unet_lora_params *p) {
  return guarded(m, [&] {
    if (!p) throw shim::error(DPOD_EINVAL, "unet_lora_enable: no params");
    shim::lora_enable(*m, *p);
  });
}

int unet_set_gradient_checkpointing(unet_t m, int on) { return guarded(m, [&] { m->grad_ckpt = on != 0; }); }

void unet_checkpoint_counts(unet_t m, uint64_t *forwards, uint64_t *recomputes) {
  if (forwards) *forwards = m ? m->ckpt_forwards : 0;
  if (recomputes) *recomputes = m ? m->ckpt_recomputes : 0;
}

int unet_lora_set_active(unet_t m, int active) { return guarded(m, [&] { shim::lora_set_active(*m, active != 0); }); }

void unet_lora_get_info(unet_t m, unet_lora_info *info) {
  if (!m || !info) return;
  info->num_modules = m->lora.size();
  info->num_params = m->lora.empty() ? 0 : (size_t)m->lora_flat.numel();
  info->num_tensors = 2 * m->lora.size();
  info->rank = (int)m->lora_rank;
  info->alpha = m->lora_alpha;
}

float *unet_lora_param_buffer(unet_t m, size_t *n) {
  float *p = nullptr;
  int status = guarded(m, [&] {
    if (m->lora.empty()) throw shim::error(DPOD_ESTATE, "unet_lora_param_buffer: LoRA is not enabled on this model");
    if (n) *n = (size_t)m->lora_flat.numel();
    p = m->host_copies ? shim::host_mirror_(*m, m->lora_flat) : m->lora_flat.data_ptr<float>();
  });
  return status ? nullptr : p;
}

float *unet_lora_grad_buffer(unet_t m, size_t *n) {
  float *p = nullptr;
  int status = guarded(m, [&] {
    if (m->lora.empty()) throw shim::error(DPOD_ESTATE, "unet_lora_grad_buffer: LoRA is not enabled on this model");
    if (!m->lora_grad.is_cpu())
      throw shim::error(DPOD_EUNSUPPORTED, "unet_lora_grad_buffer: the model is on " + m->device_name + ": use unet_grad_stage");
    if (n) *n = (size_t)m->lora_grad.numel();
    p = m->lora_grad.data_ptr<float>();
  });
  return status ? nullptr : p;
}

int unet_lora_param_at(unet_t m, size_t i, const char **name, size_t *offset, int *ndim, int64_t shape[8]) {
  return guarded(m, [&] { shim::lora_param_at(*m, i, name, offset, ndim, shape); });
}

int unet_lora_load(unet_t m, const char *path) { return guarded(m, [&] { shim::lora_load(*m, path); }); }

int unet_lora_save(unet_t m, const char *path, int fold, uint64_t *bytes_out) {
  return guarded(m, [&] {
    uint64_t bytes = shim::lora_save(*m, path, fold != 0);
    if (bytes_out) *bytes_out = bytes;
  });
}

int unet_lora_merge(unet_t m) { return guarded(m, [&] { shim::lora_merge(*m); }); }

int unet_set_precision(unet_t m, unet_precision p) { return guarded(m, [&] { shim::set_precision(*m, (int)p); }); }

unet_precision unet_get_precision(unet_t m) { return m ? (unet_precision)m->precision : UNET_PRECISION_FP32; }

const char *unet_precision_name(unet_precision p) {
  switch (p) {
    case UNET_PRECISION_FP32: return "fp32";
    case UNET_PRECISION_BF16: return "bf16";
    case UNET_PRECISION_FP16: return "fp16";
  }
  return "?";
}

int unet_precision_parse(const char *name, unet_precision *out) {
  static const unet_precision all[] = {UNET_PRECISION_FP32, UNET_PRECISION_BF16, UNET_PRECISION_FP16};
  for (unet_precision p : all)
    if (name && strcmp(name, unet_precision_name(p)) == 0) {
      if (out) *out = p;
      return 0;
    }
  return DPOD_EINVAL;
}

double unet_matmul_gflops(int n, unet_precision p, int threads, int reps, char *err, size_t errlen) {
  double r = 0;
  std::string msg;
  int status = run_caught([&] { r = shim::matmul_gflops(n, (int)p, threads, reps); }, &msg);
  if (status && err && errlen) snprintf(err, errlen, "%s", msg.c_str());
  return status ? 0 : r;
}

double unet_train_flops(unet_t m, int n, int height, int width, int text_len) {
  if (!m || n <= 0 || height <= 0 || width <= 0 || text_len <= 0) return 0;
  double flops = 0;
  int status = guarded(m, [&] { flops = 4.0 * shim::forward_flops(*m, (double)n, text_len, height, width); });
  return status ? 0 : flops;
}

const char *unet_attention_gemm(void) { return shim::attention_uses_sgemm() ? "sgemm" : "aten"; }

int unet_profile_start(const char *json_path, char *err, size_t errlen) {
  std::string msg;
  int status = run_caught([&] { shim::profile_start(json_path); }, &msg);
  if (status && err && errlen) snprintf(err, errlen, "%s", msg.c_str());
  return status;
}

void unet_profile_stop(void) {
  std::string msg;
  if (run_caught([] { shim::profile_stop(); }, &msg) != 0) fprintf(stderr, "unet_profile_stop: %s\n", msg.c_str());
}

}  // extern "C"
