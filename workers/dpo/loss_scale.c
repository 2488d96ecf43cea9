/* Dynamic loss scaling (loss_scale.h): GradScaler's state machine, and its state in a checkpoint. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "json_num.h"
#include "loss_scale.h"

#define LOSS_SCALE_MAGIC "dpod-loss-scale"
#define LOSS_SCALE_VERSION 1

dpo_loss_scale_params dpo_loss_scale_default_params(void) {
  dpo_loss_scale_params p = {.init_scale = DPO_LOSS_SCALE_INIT,
                             .growth_interval = DPO_LOSS_SCALE_INTERVAL,
                             .growth_factor = 2.0,
                             .backoff_factor = 0.5,
                             .min_scale = DPO_LOSS_SCALE_MIN,
                             .max_scale = DPO_LOSS_SCALE_MAX};
  return p;
}

/* A power of two (frexp's mantissa exactly 1/2) within [lo, hi]. */
static int pow2_in(double x, double lo, double hi) {
  int e;
  return isfinite(x) && x >= lo && x <= hi && frexp(x, &e) == 0.5;
}

int dpo_loss_scaler_init(dpo_loss_scaler *s, const dpo_loss_scale_params *p, char *err, size_t errlen) {
  dpo_loss_scale_params d = p ? *p : dpo_loss_scale_default_params();
  if (d.growth_factor != 2.0 || d.backoff_factor != 0.5)
    return dpod_errf(err, errlen, DPOD_EINVAL, "loss scaling: growth and backoff factors must be 2 and 0.5 (got %g, %g)",
                     d.growth_factor, d.backoff_factor);
  if (!pow2_in(d.min_scale, 0x1p-126, DPO_LOSS_SCALE_MAX) || !pow2_in(d.max_scale, d.min_scale, DPO_LOSS_SCALE_MAX))
    return dpod_errf(err, errlen, DPOD_EINVAL, "loss scaling: min and max scale must be powers of two, min <= max <= 2^32");
  if (!pow2_in(d.init_scale, d.min_scale, d.max_scale))
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "loss scaling: init_scale must be a power of two from %g to %g (got %g): a power of two "
                     "makes unscaling exact",
                     d.min_scale, d.max_scale, d.init_scale);
  if (d.growth_interval < 1 || d.growth_interval > DPO_LOSS_SCALE_INTERVAL_MAX)
    return dpod_errf(err, errlen, DPOD_EINVAL, "loss scaling: growth_interval must be from 1 to %u (got %u)",
                     DPO_LOSS_SCALE_INTERVAL_MAX, d.growth_interval);
  memset(s, 0, sizeof *s);
  s->p = d;
  s->scale = d.init_scale;
  return 0;
}

int dpo_loss_scale_unscale(double scale, float *g, size_t n) {
  /* 1/scale is a power of two, exact in float: each product is the exact quotient. An element is inf or
   * nan exactly when its exponent bits are all ones; OR-ing the masked exponents keeps the loop free of
   * branches, so that it vectorises. */
  const float inv = (float)(1.0 / scale);
  uint32_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t bits;
    memcpy(&bits, &g[i], sizeof bits);
    bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
    g[i] *= inv;
  }
  return bad ? 1 : 0;
}

dpo_loss_scale_event dpo_loss_scaler_update(dpo_loss_scaler *s, int found_nonfinite) {
  if (found_nonfinite) {
    s->skipped++;
    s->growth_tracker = 0;
    double next = s->scale * s->p.backoff_factor;
    s->scale = next < s->p.min_scale ? s->p.min_scale : next;
    return DPO_LOSS_SCALE_BACKOFF;
  }
  if (++s->growth_tracker < s->p.growth_interval) return DPO_LOSS_SCALE_KEPT;
  s->growth_tracker = 0;
  double next = s->scale * s->p.growth_factor;
  s->scale = next > s->p.max_scale ? s->p.max_scale : next;
  return DPO_LOSS_SCALE_GREW;
}

int dpo_loss_scaler_to_json(const dpo_loss_scaler *s, char *buf, size_t len) {
  /* Powers of two from 2^-126 to 2^32 print exactly with %.17g. */
  int n = snprintf(buf, len,
                   "{\"magic\": \"%s\", \"version\": %d, \"scale\": %.17g, \"growth_tracker\": %u, \"skipped\": %" PRIu64
                   ", \"init_scale\": %.17g, \"growth_interval\": %u}\n",
                   LOSS_SCALE_MAGIC, LOSS_SCALE_VERSION, s->scale, s->growth_tracker, s->skipped, s->p.init_scale,
                   s->p.growth_interval);
  return n < 0 || (size_t)n >= len ? -1 : n;
}

int dpo_loss_scaler_from_json(dpo_loss_scaler *s, const char *text, const char *what, char *err, size_t errlen) {
  int rc = DPOD_EFORMAT;
  cJSON *root = cJSON_Parse(text ? text : "");
  const cJSON *magic = cJSON_GetObjectItemCaseSensitive(root, "magic");
  const cJSON *version = cJSON_GetObjectItemCaseSensitive(root, "version");
  const cJSON *scale = cJSON_GetObjectItemCaseSensitive(root, "scale");
  const cJSON *init = cJSON_GetObjectItemCaseSensitive(root, "init_scale");
  uint64_t v, tracker, skipped, interval;
  if (!root || !cJSON_IsString(magic) || strcmp(magic->valuestring, LOSS_SCALE_MAGIC) != 0 ||
      dpo_json_uint(version, UINT32_MAX, &v) != 0 || !cJSON_IsNumber(scale) || !cJSON_IsNumber(init) ||
      dpo_json_uint(cJSON_GetObjectItemCaseSensitive(root, "growth_tracker"), UINT32_MAX, &tracker) != 0 ||
      dpo_json_uint(cJSON_GetObjectItemCaseSensitive(root, "skipped"), UINT64_MAX, &skipped) != 0 ||
      dpo_json_uint(cJSON_GetObjectItemCaseSensitive(root, "growth_interval"), UINT32_MAX, &interval) != 0) {
    dpod_errf(err, errlen, rc, "%s: not a loss scaler's state", what);
    goto done;
  }
  if (v != LOSS_SCALE_VERSION) {
    rc = DPOD_EUNSUPPORTED;
    dpod_errf(err, errlen, rc, "%s: version %" PRIu64 " (this dpo-worker reads %d)", what, v, LOSS_SCALE_VERSION);
    goto done;
  }
  if (init->valuedouble != s->p.init_scale || interval != s->p.growth_interval) {
    dpod_errf(err, errlen, rc, "%s: written with init_scale %g and growth_interval %" PRIu64 ", this job has %g and %u",
              what, init->valuedouble, interval, s->p.init_scale, s->p.growth_interval);
    goto done;
  }
  if (!pow2_in(scale->valuedouble, s->p.min_scale, s->p.max_scale) || tracker >= s->p.growth_interval) {
    dpod_errf(err, errlen, rc, "%s: the scale is not a power of two from %g to %g, or the growth count is not below %u",
              what, s->p.min_scale, s->p.max_scale, s->p.growth_interval);
    goto done;
  }
  s->scale = scale->valuedouble;
  s->growth_tracker = (uint32_t)tracker;
  s->skipped = skipped;
  rc = 0;
done:
  cJSON_Delete(root);
  return rc;
}

int dpo_loss_scaler_save(const dpo_loss_scaler *s, const char *partial_dir, char *err, size_t errlen) {
  char text[256];
  if (dpo_loss_scaler_to_json(s, text, sizeof text) < 0)
    return dpod_errf(err, errlen, DPOD_EINTERNAL, "%s: the loss scaler's state does not fit", CKPT_LOSS_SCALE);
  return ckpt_write_text(partial_dir, CKPT_LOSS_SCALE, text, err, errlen);
}

int dpo_loss_scaler_load(dpo_loss_scaler *s, const char *dir, char *err, size_t errlen) {
  char path[4200], *text = NULL;
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_LOSS_SCALE);
  int rc = dpod_read_file(path, 4096, &text, NULL, err, errlen);
  if (rc != 0) return rc;
  rc = dpo_loss_scaler_from_json(s, text, path, err, errlen);
  free(text);
  return rc;
}
