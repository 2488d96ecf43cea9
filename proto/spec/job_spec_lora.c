/* The bounds of train.lora (dpod.v1.LoraSpec), part of job_spec_validate: in a file of their own so that
 * the LoRA rules read in one place. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dpod_error.h"
#include "job_spec.h"

#define LORA_RANK_MAX 1024   /* the shim's UNET_LORA_MAX_RANK */
#define LORA_TARGETS_MAX 32
#define LORA_TARGET_LEN_MAX 128

/* A module name or suffix as diffusers spells them: "to_q", "to_out.0", "attn2.to_k", "ff.net.2". */
static int lora_target_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > LORA_TARGET_LEN_MAX || s[0] == '.' || s[n - 1] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
    if (!ok || (c == '.' && s[i + 1] == '.')) return 0;
  }
  return 1;
}

int job_spec_validate_lora_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen) {
  const Dpod__V1__TrainSpec *t = spec->train;
  const Dpod__V1__LoraSpec *l = t ? t->lora : NULL;
  if (!l) return 0;
  const char *init = l->init ? l->init : "gaussian";
  if (l->rank == 0) {
    /* Off: anything else set here would be silently ignored, which is a mistake worth naming. */
    if (l->alpha != 0 || l->n_target_modules > 0 || strcmp(init, "gaussian") != 0)
      return dpod_errf(err, errlen, DPOD_EINVAL,
                       "train.lora: alpha, target_modules or init is set but train.lora.rank is 0 (LoRA off); "
                       "set a rank from 1 to %d",
                       LORA_RANK_MAX);
    return 0;
  }
  if (l->rank > LORA_RANK_MAX)
    return dpod_errf(err, errlen, DPOD_EINVAL, "train.lora.rank: must be from 0 (off) to %d (got %u)", LORA_RANK_MAX,
                     l->rank);
  if (!isfinite(l->alpha) || l->alpha < 0 || l->alpha > 1e6)
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "train.lora.alpha: must be > 0 and at most 1e6, or 0 for alpha = rank (got %g)", l->alpha);
  if (l->n_target_modules > LORA_TARGETS_MAX)
    return dpod_errf(err, errlen, DPOD_EINVAL, "train.lora.target_modules: at most %d entries (got %zu)",
                     LORA_TARGETS_MAX, l->n_target_modules);
  for (size_t i = 0; i < l->n_target_modules; i++) {
    const char *s = l->target_modules[i] ? l->target_modules[i] : "";
    if (!lora_target_ok(s))
      return dpod_errf(err, errlen, DPOD_EINVAL,
                       "train.lora.target_modules[%zu]: '%.*s%s' is not a module name (letters, digits, '_' and "
                       "'.' between parts, at most %d characters, e.g. to_q or to_out.0)",
                       i, 64, s, strlen(s) > 64 ? "..." : "", LORA_TARGET_LEN_MAX);
    for (size_t j = 0; j < i; j++)
      if (strcmp(s, l->target_modules[j]) == 0)
        return dpod_errf(err, errlen, DPOD_EINVAL, "train.lora.target_modules[%zu]: '%s' is listed twice", i, s);
  }
  if (strcmp(init, "gaussian") != 0 && strcmp(init, "kaiming") != 0)
    return dpod_errf(err, errlen, DPOD_EINVAL, "train.lora.init: must be \"gaussian\" or \"kaiming\" (got '%.64s')",
                     init);
  const char *ref = spec->model && spec->model->reference_weights ? spec->model->reference_weights : "";
  if (*ref)
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "model.reference_weights: cannot be used with train.lora: the reference is the base UNet "
                     "(model.weights) with its adapters switched off");
  return 0;
}
