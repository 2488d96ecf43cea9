/* optimizer.safetensors (checkpoint.h): the optimizer's state in a checkpoint, for either optimizer.
 * A file of its own beside checkpoint.c, which keeps the protocol; this is one of the files it carries. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "dpod_parse.h"
#include "safetensors.h"

int ckpt_write_optimizer(const char *dir, const ckpt_optimizer *o, char *err, size_t errlen) {
  if (!o || !o->format || o->num_tensors < 1 || o->num_tensors > CKPT_OPTIM_MAX_TENSORS)
    return dpod_errf(err, errlen, DPOD_EINVAL, "ckpt_write_optimizer: no state to write");
  char path[4200], step_text[32], version[16];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_OPTIMIZER);
  snprintf(step_text, sizeof step_text, "%" PRIu64, o->step);
  snprintf(version, sizeof version, "%d", CKPT_OPTIM_VERSION);
  st_writer *w = st_writer_new();
  int ok = w && st_writer_set_metadata(w, "format", o->format) == 0 &&
           st_writer_set_metadata(w, "format_version", version) == 0 && st_writer_set_metadata(w, "step", step_text) == 0;
  for (size_t i = 0; ok && i < o->num_tensors; i++) {
    int64_t shape[1] = {(int64_t)o->numel[i]};
    ok = st_writer_add(w, o->names[i], ST_F32, 1, shape, o->data[i]) == 0;
  }
  if (!ok) {
    st_writer_free(w);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
  }
  int rc = st_writer_write(w, path, NULL, err, errlen);
  st_writer_free(w);
  return rc;
}

int ckpt_read_optimizer(const char *dir, ckpt_optimizer *o, char *err, size_t errlen) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_OPTIMIZER);
  if (!o || !o->format || o->num_tensors < 1 || o->num_tensors > CKPT_OPTIM_MAX_TENSORS)
    return dpod_errf(err, errlen, DPOD_EINVAL, "ckpt_read_optimizer: no state to read");
  st_file *f = NULL;
  int rc = st_open(path, &f, err, errlen);
  if (rc != 0) return rc;
  const char *format = st_metadata(f, "format"), *version = st_metadata(f, "format_version"),
             *step_text = st_metadata(f, "step");
  uint64_t v = 1, step = 0;
  rc = DPOD_EFORMAT;
  if (!format || strcmp(format, o->format) != 0) {
    dpod_errf(err, errlen, rc, "%s holds %.32s optimizer state, this job's optimizer keeps %s: resume with the "
              "train.optimizer the run started with", path, format ? format : "unnamed", o->format);
    goto fail;
  }
  if (version && dpod_parse_u64(version, UINT32_MAX, &v) != 0) {
    dpod_errf(err, errlen, rc, "%s: its format_version is not a number", path);
    goto fail;
  }
  if (v > CKPT_OPTIM_VERSION) {
    dpod_errf(err, errlen, DPOD_EUNSUPPORTED, "%s: format_version %" PRIu64 " is newer than this dpo-worker reads (%d)",
              path, v, CKPT_OPTIM_VERSION);
    rc = DPOD_EUNSUPPORTED;
    goto fail;
  }
  if (!step_text || dpod_parse_u64(step_text, UINT32_MAX, &step) != 0) {
    dpod_errf(err, errlen, rc, "%s: its step metadata is not a step count", path);
    goto fail;
  }
  const st_tensor *t[CKPT_OPTIM_MAX_TENSORS];
  for (size_t i = 0; i < o->num_tensors; i++) {
    t[i] = st_find(f, o->names[i]);
    if (!t[i] || t[i]->dtype != ST_F32 || t[i]->numel != (int64_t)o->numel[i]) {
      dpod_errf(err, errlen, DPOD_ESHAPE, "%s does not hold %s as F32 of %zu elements", path, o->names[i], o->numel[i]);
      rc = DPOD_ESHAPE;
      goto fail;
    }
  }
  for (size_t i = 0; i < o->num_tensors; i++) memcpy(o->data[i], t[i]->data, o->numel[i] * sizeof(float));
  o->step = step;
  st_close(f);
  return 0;
fail:
  st_close(f);
  return rc;
}
