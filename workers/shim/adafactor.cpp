/* transformers' Adafactor (optimization.py, the arithmetic of Adafactor.step) with the options the
 * Diffusion-DPO reference script passes for SDXL: lr given, scale_parameter=False, relative_step=False,
 * warmup_init=False, beta1=None, clip_threshold 1.0, eps (1e-30, 1e-3) (eps[1] only matters with
 * scale_parameter, so it is not used), decay_rate -0.8. For each parameter tensor, at step t:
 *   beta2t = 1 - t^decay_rate;  u2 = g^2 + eps1
 *   >= 2-D [..., R, C]: row = beta2t row + (1 - beta2t) mean_C(u2); col = beta2t col + (1 - beta2t) mean_R(u2)
 *                       u = rsqrt(row / mean_R(row)) [..., R, 1] * rsqrt(col) [..., 1, C] * g
 *   1-D:                v = beta2t v + (1 - beta2t) u2;  u = rsqrt(v) * g
 *   u /= max(RMS(u) / clip_threshold, 1);  u *= lr
 *   p += (-weight_decay lr) p;  p -= u
 * Like ATen on float32 tensors, the state and every elementwise result are float and every scalar is
 * rounded to float; the means and norms are accumulated in double (ATen's float reductions are cascaded
 * and land within float rounding of these). The update is computed twice (once for its RMS, once to
 * apply it) instead of being stored: no temporary the size of the tensor.
 *
 * No torch header: plain loops over the flat buffers, compiled like adamw_kernel.cpp without FMA
 * contraction, one thread, so every rank and every CPU computes the same bits. */
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "adamw_kernel.h"
#include "unet_shim.h"

extern "C" {
#include "dpod_error.h"
}

namespace {

struct af_tensor_ {
  size_t offset, numel;
  int64_t batch, rows, cols; /* factored: [batch, rows, cols]; 1-D: rows = cols = 1, batch = numel */
  bool factored;
  size_t state_offset; /* row [batch * rows] then col [batch * cols], or v [numel] */
};

}  // namespace

struct unet_adafactor {
  std::vector<af_tensor_> tensors;
  size_t num_elements = 0;
  std::vector<float> state;
  std::vector<float> rfac, cfac; /* per-tensor scratch: rsqrt of the normalised row and of the column */
  std::vector<double> colsum;
  uint64_t step = 0;
  std::string err;
};

namespace {

int fail(unet_adafactor *a, char *err, size_t errlen, int status, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (a) a->err = buf;
  if (err && errlen) snprintf(err, errlen, "%s", buf);
  return status;
}

/* _approx_sq_grad's two factors of one [R, C] slice: rfac = rsqrt(row / mean(row)), cfac = rsqrt(col). */
void af_factors(unet_adafactor &a, const float *row, const float *col, int64_t R, int64_t C) {
  double rm = 0;
  for (int64_t r = 0; r < R; r++) rm += row[r];
  const float row_mean = (float)(rm / (double)R);
  for (int64_t r = 0; r < R; r++) a.rfac[(size_t)r] = 1.0f / std::sqrt(row[r] / row_mean);
  for (int64_t c = 0; c < C; c++) a.cfac[(size_t)c] = 1.0f / std::sqrt(col[c]);
}

/* One tensor's step; g already clipped. */
void af_tensor_step(unet_adafactor &a, const af_tensor_ &t, const unet_adafactor_params &p, float b2, float omb2,
                    float *w, const float *g) {
  const float eps1 = (float)p.eps1, lr = (float)p.lr, decay = (float)(-p.weight_decay * p.lr);
  float *st = a.state.data() + t.state_offset;
  double sq = 0;
  if (t.factored) {
    const int64_t R = t.rows, C = t.cols;
    a.rfac.resize((size_t)R);
    a.cfac.resize((size_t)C);
    a.colsum.resize((size_t)C);
    for (int64_t b = 0; b < t.batch; b++) {
      const float *gb = g + (size_t)(b * R * C);
      float *row = st + (size_t)(b * R), *col = st + (size_t)(t.batch * R) + (size_t)(b * C);
      /* row: the mean over the last dimension; col: over the one before it. */
      std::vector<double> &colsum = a.colsum;
      std::fill(colsum.begin(), colsum.end(), 0.0);
      for (int64_t r = 0; r < R; r++) {
        double rs = 0;
        for (int64_t c = 0; c < C; c++) {
          float u2 = gb[r * C + c] * gb[r * C + c] + eps1;
          rs += u2;
          colsum[(size_t)c] += u2;
        }
        row[r] = row[r] * b2 + omb2 * (float)(rs / (double)C);
      }
      for (int64_t c = 0; c < C; c++) col[c] = col[c] * b2 + omb2 * (float)(colsum[(size_t)c] / (double)R);
      af_factors(a, row, col, R, C);
      for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) {
          float u = (a.rfac[(size_t)r] * a.cfac[(size_t)c]) * gb[r * C + c];
          sq += (double)u * (double)u;
        }
    }
  } else {
    for (size_t i = 0; i < t.numel; i++) {
      float u2 = g[i] * g[i] + eps1;
      st[i] = st[i] * b2 + omb2 * u2;
      float u = (1.0f / std::sqrt(st[i])) * g[i];
      sq += (double)u * (double)u;
    }
  }
  /* _rms(update) = norm / sqrt(numel), then update /= max(rms / clip_threshold, 1). */
  const float rms = (float)std::sqrt(sq) / (float)std::sqrt((double)t.numel);
  const float div = std::fmax(rms / (float)p.clip_threshold, 1.0f);
  const bool wd = p.weight_decay != 0;
  if (t.factored) {
    const int64_t R = t.rows, C = t.cols;
    for (int64_t b = 0; b < t.batch; b++) {
      const float *gb = g + (size_t)(b * R * C);
      float *wb = w + (size_t)(b * R * C);
      const float *row = st + (size_t)(b * R), *col = st + (size_t)(t.batch * R) + (size_t)(b * C);
      af_factors(a, row, col, R, C);
      for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) {
          float u = ((a.rfac[(size_t)r] * a.cfac[(size_t)c]) * gb[r * C + c]) / div * lr;
          float x = wb[r * C + c];
          if (wd) x = x + decay * x;
          wb[r * C + c] = x - u;
        }
    }
  } else {
    for (size_t i = 0; i < t.numel; i++) {
      float u = ((1.0f / std::sqrt(st[i])) * g[i]) / div * lr;
      float x = w[i];
      if (wd) x = x + decay * x;
      w[i] = x - u;
    }
  }
}

}  // namespace

extern "C" {

unet_adafactor_params unet_adafactor_default_params(void) {
  unet_adafactor_params p;
  p.lr = 1e-5;
  p.weight_decay = 1e-2;
  p.max_grad_norm = 1.0;
  p.clip_threshold = 1.0;
  p.decay_rate = -0.8;
  p.eps1 = 1e-30;
  return p;
}

int unet_adafactor_create(const unet_tensor_layout *tensors, size_t num_tensors, size_t num_elements,
                          unet_adafactor_t *out, char *err, size_t errlen) {
  if (!out || (!tensors && num_tensors)) return fail(nullptr, err, errlen, DPOD_EINVAL, "unet_adafactor_create: NULL argument");
  *out = nullptr;
  unet_adafactor *a = new (std::nothrow) unet_adafactor();
  if (!a) return fail(nullptr, err, errlen, DPOD_ENOMEM, "unet_adafactor_create: out of memory");
  try {
    a->num_elements = num_elements;
    std::vector<std::pair<size_t, size_t>> spans; /* [offset, end) of each tensor, for the overlap check */
    size_t state = 0;
    for (size_t i = 0; i < num_tensors; i++) {
      const unet_tensor_layout &l = tensors[i];
      if (l.ndim < 1 || l.ndim > 8) {
        int rc = fail(a, err, errlen, DPOD_EINVAL, "unet_adafactor_create: tensor %zu has %d dimensions (1 to 8)", i, l.ndim);
        delete a;
        return rc;
      }
      af_tensor_ t{};
      t.offset = l.offset;
      t.numel = 1;
      for (int d = 0; d < l.ndim; d++) {
        if (l.shape[d] < 1 || (uint64_t)l.shape[d] > (uint64_t)num_elements) {
          int rc = fail(a, err, errlen, DPOD_EINVAL, "unet_adafactor_create: tensor %zu has dimension %d of size %lld", i, d,
                        (long long)l.shape[d]);
          delete a;
          return rc;
        }
        t.numel *= (size_t)l.shape[d];
        if (t.numel > num_elements) break;
      }
      if (t.numel > num_elements || l.offset > num_elements - t.numel) {
        int rc = fail(a, err, errlen, DPOD_EINVAL, "unet_adafactor_create: tensor %zu does not fit in the %zu-element buffer", i,
                      num_elements);
        delete a;
        return rc;
      }
      spans.emplace_back(l.offset, l.offset + t.numel);
      t.factored = l.ndim >= 2;
      t.state_offset = state;
      if (t.factored) {
        t.rows = l.shape[l.ndim - 2];
        t.cols = l.shape[l.ndim - 1];
        t.batch = (int64_t)(t.numel / (size_t)(t.rows * t.cols));
        state += (size_t)(t.batch * (t.rows + t.cols));
      } else {
        t.rows = t.cols = 1;
        t.batch = (int64_t)t.numel;
        state += t.numel;
      }
      a->tensors.push_back(t);
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); i++)
      if (spans[i].first < spans[i - 1].second) {
        int rc = fail(a, err, errlen, DPOD_EINVAL, "unet_adafactor_create: two tensors overlap at element %zu",
                      spans[i].first);
        delete a;
        return rc;
      }
    a->state.assign(state, 0.0f);
  } catch (const std::bad_alloc &) {
    delete a;
    return fail(nullptr, err, errlen, DPOD_ENOMEM, "unet_adafactor_create: out of memory");
  }
  *out = a;
  return 0;
}

int unet_adafactor_new(unet_t m, unet_adafactor_t *out, char *err, size_t errlen) {
  if (!m || !out) return fail(nullptr, err, errlen, DPOD_EINVAL, "unet_adafactor_new: NULL argument");
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  const bool lora = li.num_modules > 0;
  size_t count = 0, n = 0;
  if (lora) {
    count = li.num_tensors;
    if (!unet_lora_param_buffer(m, &n)) return fail(nullptr, err, errlen, DPOD_ESTATE, "%s", unet_last_error(m));
  } else {
    unet_info info;
    unet_get_info(m, &info);
    count = info.num_tensors;
    if (!unet_param_buffer(m, &n)) return fail(nullptr, err, errlen, DPOD_ESTATE, "%s", unet_last_error(m));
  }
  std::vector<unet_tensor_layout> layout;
  try {
    layout.resize(count);
  } catch (const std::bad_alloc &) {
    return fail(nullptr, err, errlen, DPOD_ENOMEM, "unet_adafactor_new: out of memory");
  }
  for (size_t i = 0; i < count; i++) {
    unet_tensor_layout &l = layout[i];
    int rc = lora ? unet_lora_param_at(m, i, nullptr, &l.offset, &l.ndim, l.shape)
                  : unet_param_at(m, i, nullptr, &l.offset, &l.ndim, l.shape);
    if (rc != 0) return fail(nullptr, err, errlen, rc, "%s", unet_last_error(m));
  }
  return unet_adafactor_create(layout.data(), count, n, out, err, errlen);
}

void unet_adafactor_free(unet_adafactor_t a) { delete a; }

const char *unet_adafactor_last_error(unet_adafactor_t a) { return a ? a->err.c_str() : "no optimizer"; }

int unet_adafactor_update(unet_adafactor_t a, const unet_adafactor_params *p, float *w, float *g, size_t n,
                          double *grad_norm) {
  if (!a) return DPOD_EINVAL;
  a->err.clear();
  if (!p || (!w && n) || (!g && n)) return fail(a, nullptr, 0, DPOD_EINVAL, "unet_adafactor_update: NULL argument");
  if (n != a->num_elements)
    return fail(a, nullptr, 0, DPOD_ESHAPE, "unet_adafactor_update: %zu elements given, the layout has %zu", n,
                a->num_elements);
  if (!(p->clip_threshold > 0) || !std::isfinite(p->lr) || !(p->decay_rate < 0))
    return fail(a, nullptr, 0, DPOD_EINVAL,
                "unet_adafactor_update: clip_threshold must be > 0, lr finite and decay_rate < 0 (got %g, %g, %g)",
                p->clip_threshold, p->lr, p->decay_rate);
  /* The global norm exactly as unet_adamw_step computes it: fixed chunks, added in order. */
  const int64_t chunk = 1 << 16;
  double sq = 0;
  for (int64_t lo = 0; lo < (int64_t)n; lo += chunk) sq += unet_sumsq_(g + lo, std::min<int64_t>(chunk, (int64_t)n - lo));
  const double norm = std::sqrt(sq);
  if (grad_norm) *grad_norm = norm;
  if (!std::isfinite(norm))
    return fail(a, nullptr, 0, DPOD_ENUMERIC, "unet_adafactor_update: gradient norm is %g; step skipped", norm);
  const double coef = p->max_grad_norm > 0 ? p->max_grad_norm / (norm + 1e-6) : 1.0;
  if (coef < 1.0) {
    const float c = (float)coef;
    for (size_t i = 0; i < n; i++) g[i] = g[i] * c;
  }
  a->step++;
  const double beta2t = 1.0 - std::pow((double)a->step, p->decay_rate);
  const float b2 = (float)beta2t, omb2 = (float)(1.0 - beta2t);
  try {
    for (const af_tensor_ &t : a->tensors) af_tensor_step(*a, t, *p, b2, omb2, w + t.offset, g + t.offset);
  } catch (const std::bad_alloc &) {
    return fail(a, nullptr, 0, DPOD_ENOMEM, "unet_adafactor_update: out of memory (the step is incomplete)");
  }
  return 0;
}

int unet_adafactor_step(unet_t m, unet_adafactor_t a, const unet_adafactor_params *p, double *grad_norm) {
  if (!a) return DPOD_EINVAL;
  if (!m) return fail(a, nullptr, 0, DPOD_EINVAL, "unet_adafactor_step: no model");
  unet_lora_info li;
  unet_lora_get_info(m, &li);
  size_t nw = 0, ng = 0;
  float *w = li.num_modules ? unet_lora_param_buffer(m, &nw) : unet_param_buffer(m, &nw);
  float *g = li.num_modules ? unet_lora_grad_buffer(m, &ng) : unet_grad_buffer(m, &ng);
  if (!w || !g) return fail(a, nullptr, 0, DPOD_ESTATE, "unet_adafactor_step: %s", unet_last_error(m));
  if (nw != ng) return fail(a, nullptr, 0, DPOD_ESHAPE, "unet_adafactor_step: parameter and gradient sizes differ");
  return unet_adafactor_update(a, p, w, g, nw, grad_norm);
}

int unet_adafactor_state(unet_adafactor_t a, float **state, size_t *n, uint64_t *step) {
  if (!a) return DPOD_EINVAL;
  if (state) *state = a->state.data();
  if (n) *n = a->state.size();
  if (step) *step = a->step;
  return 0;
}

int unet_adafactor_set_step(unet_adafactor_t a, uint64_t step) {
  if (!a) return DPOD_EINVAL;
  a->step = step;
  return 0;
}

}  // extern "C"
