#include "model_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_half.h"
#include "safetensors.h"

/* Stable Diffusion 1.5's DDPM schedule as diffusers writes it: what dpo_schedule_default() computes,
 * written out where a folder must carry a scheduler config and the job named none. */
const char model_default_scheduler_json[] =
    "{\n"
    "  \"_class_name\": \"DDPMScheduler\",\n"
    "  \"_diffusers_version\": \"0.31.0\",\n"
    "  \"beta_end\": 0.012,\n"
    "  \"beta_schedule\": \"scaled_linear\",\n"
    "  \"beta_start\": 0.00085,\n"
    "  \"clip_sample\": false,\n"
    "  \"clip_sample_range\": 1.0,\n"
    "  \"dynamic_thresholding_ratio\": 0.995,\n"
    "  \"num_train_timesteps\": 1000,\n"
    "  \"prediction_type\": \"epsilon\",\n"
    "  \"rescale_betas_zero_snr\": false,\n"
    "  \"sample_max_value\": 1.0,\n"
    "  \"set_alpha_to_one\": false,\n"
    "  \"skip_prk_steps\": true,\n"
    "  \"steps_offset\": 1,\n"
    "  \"thresholding\": false,\n"
    "  \"timestep_spacing\": \"leading\",\n"
    "  \"trained_betas\": null,\n"
    "  \"variance_type\": \"fixed_small\"\n"
    "}\n";

/* Every tensor of a weights source, whichever file holds it, sorted by name. */
typedef struct {
  const st_tensor *t;
  size_t file;      /* index into files */
  int used;
} src_tensor;

typedef struct {
  st_file **files;
  size_t num_files;
  src_tensor *tensors;
  size_t count;
} weight_set;

static void weight_set_free(weight_set *w) {
  for (size_t i = 0; i < w->num_files; i++) st_close(w->files[i]);
  free(w->files);
  free(w->tensors);
  memset(w, 0, sizeof *w);
}

static int cmp_src(const void *a, const void *b) {
  return strcmp(((const src_tensor *)a)->t->name, ((const src_tensor *)b)->t->name);
}

static int cmp_key(const void *key, const void *elem) { return strcmp(key, ((const src_tensor *)elem)->t->name); }

static src_tensor *weight_set_find(weight_set *w, const char *name) {
  return bsearch(name, w->tensors, w->count, sizeof *w->tensors, cmp_key);
}

/* Up to four items of a list in a message, then "...". */
typedef struct {
  char text[768];
  size_t n;
} name_list;

/* Adds "'name'detail" to the list. */
static void note(name_list *l, const char *name, const char *detail) {
  if (l->n++ >= 4) return;
  size_t len = strlen(l->text);
  snprintf(l->text + len, sizeof l->text - len, "%s'%s'%s", len ? ", " : "", name, detail);
}

static void add_list(char *msg, size_t cap, const char *what, const name_list *l) {
  if (!l->n) return;
  size_t len = strlen(msg);
  snprintf(msg + len, cap - len, " %zu %s (%s%s);", l->n, what, l->text, l->n > 4 ? ", ..." : "");
}

/* Opens `weights` (one file, or an index and every shard it names) and checks that the index and the
 * shards agree exactly. */
static int weight_set_open(const char *weights, int sharded, weight_set *w, char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  model_index idx = {0};
  int status;
  size_t nfiles = 1;
  if (sharded) {
    if ((status = model_index_load(weights, &idx, err, errlen)) != 0) return status;
    nfiles = idx.num_shards;
  }
  w->files = calloc(nfiles, sizeof *w->files);
  if (!w->files) goto oom;
  size_t total = 0;
  for (size_t i = 0; i < nfiles; i++) {
    const char *path = sharded ? idx.shards[i] : weights;
    if ((status = st_open(path, &w->files[i], err, errlen)) != 0) goto fail;
    w->num_files++;
    total += st_count(w->files[i]);
  }
  w->tensors = calloc(total ? total : 1, sizeof *w->tensors);
  if (!w->tensors) goto oom;
  for (size_t i = 0; i < nfiles; i++)
    for (size_t k = 0; k < st_count(w->files[i]); k++) {
      w->tensors[w->count].t = st_at(w->files[i], k);
      w->tensors[w->count++].file = i;
    }
  qsort(w->tensors, w->count, sizeof *w->tensors, cmp_src);
  for (size_t i = 1; i < w->count; i++)
    if (strcmp(w->tensors[i - 1].t->name, w->tensors[i].t->name) == 0) {
      status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s' is in two shards", weights, w->tensors[i].t->name);
      goto fail;
    }
  if (sharded) {
    /* The index and the shards must say the same thing: each mapped tensor in its shard, and nothing in
     * a shard the index does not map there. */
    name_list absent = {0}, extra = {0};
    for (size_t i = 0; i < idx.count; i++) {
      src_tensor *s = weight_set_find(w, idx.names[i]);
      const char *shard = strrchr(idx.shards[idx.shard_of[i]], '/') + 1;
      char where[300];
      snprintf(where, sizeof where, " (in %s)", shard);
      if (!s || s->file != idx.shard_of[i]) note(&absent, idx.names[i], where);
      else s->used = 1;
    }
    for (size_t i = 0; i < w->count; i++) {
      if (w->tensors[i].used) {
        w->tensors[i].used = 0;
        continue;
      }
      char where[300];
      snprintf(where, sizeof where, " (in %s)", strrchr(idx.shards[w->tensors[i].file], '/') + 1);
      note(&extra, w->tensors[i].t->name, where);
    }
    if (absent.n || extra.n) {
      char msg[2048];
      snprintf(msg, sizeof msg, "%s: the index and its shards disagree:", weights);
      add_list(msg, sizeof msg, "mapped but not in their shard", &absent);
      add_list(msg, sizeof msg, "in a shard but not mapped to it", &extra);
      msg[strlen(msg) - 1] = '\0';
      status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s", msg);
      goto fail;
    }
  }
  model_index_free(&idx);
  return 0;
oom:
  status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
fail:
  model_index_free(&idx);
  weight_set_free(w);
  return status;
}

static void shape_text(char *buf, size_t len, int ndim, const int64_t *shape) {
  size_t n = (size_t)snprintf(buf, len, "[");
  for (int d = 0; d < ndim && n < len; d++) n += (size_t)snprintf(buf + n, len - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (n < len) snprintf(buf + n, len - n, "]");
}

int model_weights_read(const char *weights, int sharded, const model_param *params, size_t n, float *flat,
                       size_t flat_len, char *err, size_t errlen) {
  weight_set w;
  int status = weight_set_open(weights, sharded, &w, err, errlen);
  if (status != 0) return status;
  const st_tensor **src = calloc(n ? n : 1, sizeof *src);
  if (!src) {
    weight_set_free(&w);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  }
  name_list missing = {0}, unexpected = {0}, shape = {0}, dtype = {0};
  for (size_t i = 0; i < n; i++) {
    const model_param *p = &params[i];
    src_tensor *s = weight_set_find(&w, p->name);
    if (!s) {
      note(&missing, p->name, "");
      continue;
    }
    s->used = 1;
    const st_tensor *t = s->t;
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
      char what[32];
      snprintf(what, sizeof what, " is %s", st_dtype_name(t->dtype));
      note(&dtype, p->name, what);
      continue;
    }
    int same = t->ndim == p->ndim;
    for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
    int64_t numel = 1;
    for (int d = 0; d < p->ndim; d++) numel *= p->shape[d];
    if (!same || p->offset > flat_len || (size_t)numel > flat_len - p->offset) {
      char a[128], b[128], what[300];
      shape_text(a, sizeof a, t->ndim, t->shape);
      shape_text(b, sizeof b, p->ndim, p->shape);
      snprintf(what, sizeof what, " is %s, expected %s", a, b);
      note(&shape, p->name, what);
      continue;
    }
    src[i] = t;
  }
  for (size_t i = 0; i < w.count; i++)
    if (!w.tensors[i].used) note(&unexpected, w.tensors[i].t->name, "");
  if (missing.n || unexpected.n || shape.n || dtype.n) {
    char msg[4096];
    snprintf(msg, sizeof msg, "%s: weights do not fit this UNet:", weights);
    add_list(msg, sizeof msg, "missing", &missing);
    add_list(msg, sizeof msg, "unexpected", &unexpected);
    add_list(msg, sizeof msg, "mis-shaped", &shape);
    add_list(msg, sizeof msg, "of an unsupported dtype", &dtype);
    msg[strlen(msg) - 1] = '\0';
    status = dpod_errf(err, errlen, shape.n || dtype.n ? DPOD_ESHAPE : missing.n ? DPOD_ENOENT : DPOD_EFORMAT, "%s", msg);
  } else {
    for (size_t i = 0; i < n; i++) st_to_f32(src[i], flat + params[i].offset);
  }
  free(src);
  weight_set_free(&w);
  return status;
}

int model_scheduler_config(const char *scheduler_config, const model_source *policy, char **json_out,
                           const char **path_out, char *err, size_t errlen) {
  *json_out = NULL;
  if (path_out) *path_out = NULL;
  const char *path = scheduler_config && *scheduler_config ? scheduler_config
                     : policy && *policy->scheduler   ? policy->scheduler
                                                      : NULL;
  if (!path) return 0;
  int status = dpod_read_file(path, MODEL_CONFIG_MAX, json_out, NULL, err, errlen);
  if (status == 0 && path_out) *path_out = path;
  return status;
}

model_export_params model_export_default_params(void) {
  model_export_params p = {.variant = "", .pipeline = 0};
  return p;
}

static int write_text(const char *dir, const char *name, const char *text, char *err, size_t errlen) {
  char path[MODEL_PATH_MAX + 64];
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: path too long", dir);
  return dpod_write_file_atomic(path, text, strlen(text), 0, err, errlen);
}

int model_export(const char *src, const char *out, const model_export_params *p, char *unet_dir_out, char *err,
                 size_t errlen) {
  model_export_params defaults = model_export_default_params();
  if (!p) p = &defaults;
  const char *variant = p->variant ? p->variant : "";
  if (*variant && strcmp(variant, "fp16") != 0)
    return dpod_errf(err, errlen, DPOD_EINVAL, "--variant: \"%s\" is not one this writes (fp16)", variant);
  model_source *s = calloc(1, sizeof *s);
  if (!s) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  char marker[MODEL_PATH_MAX + 16], unet_dir[MODEL_PATH_MAX], path[MODEL_PATH_MAX + 64];
  char *config = NULL, *sched = NULL;
  uint16_t *half = NULL;
  weight_set w = {0};
  st_writer *wr = NULL;
  int status = model_source_resolve("checkpoint", src, "", s, err, errlen);
  if (status != 0) goto done;
  if (!*s->unet_dir) {
    status = dpod_errf(err, errlen, DPOD_EINVAL, "%s: a file; export takes a checkpoint or model folder", src);
    goto done;
  }
  /* A dpod checkpoint is exported only if it is whole. */
  snprintf(marker, sizeof marker, "%s/%s", s->unet_dir, CKPT_MARKER);
  if (access(marker, F_OK) == 0 && (status = ckpt_verify(s->unet_dir, NULL, err, errlen)) != 0) goto done;
  if ((status = dpod_read_file(s->config, MODEL_CONFIG_MAX, &config, NULL, err, errlen)) != 0) goto done;
  if (p->pipeline) {
    if (*s->scheduler && (status = dpod_read_file(s->scheduler, MODEL_CONFIG_MAX, &sched, NULL, err, errlen)) != 0)
      goto done;
  }
  if ((status = weight_set_open(s->weights, s->sharded, &w, err, errlen)) != 0) goto done;

  if (snprintf(unet_dir, sizeof unet_dir, p->pipeline ? "%s/unet" : "%s", out) >= (int)sizeof unet_dir) {
    status = dpod_errf(err, errlen, DPOD_EINVAL, "%s: path too long", out);
    goto done;
  }
  if ((status = dpod_mkdirs(unet_dir, 0755, 0, err, errlen)) != 0) goto done;
  if (!(wr = st_writer_new())) goto oom;
  /* In the order the source stores them (by offset within each file), so an F32 export of a single
   * file is the same file. */
  size_t total = 0;
  for (size_t f = 0; f < w.num_files; f++)
    for (size_t k = 0; k < st_count(w.files[f]); k++) total += (size_t)st_at(w.files[f], k)->numel;
  if (*variant && !(half = malloc((total ? total : 1) * sizeof *half))) goto oom;
  size_t off = 0;
  for (size_t f = 0; f < w.num_files; f++)
    for (size_t k = 0; k < st_count(w.files[f]); k++) {
      const st_tensor *t = st_at(w.files[f], k);
      if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        status = dpod_errf(err, errlen, DPOD_ESHAPE, "%s: tensor '%s' is %s, not a float dtype", s->weights, t->name,
                           st_dtype_name(t->dtype));
        goto done;
      }
      if (!*variant && t->dtype != ST_F32) {
        status = dpod_errf(err, errlen, DPOD_EUNSUPPORTED,
                           "%s: tensor '%s' is %s; export it with --variant fp16 (an F32 export of it would hold "
                           "nothing more)",
                           s->weights, t->name, st_dtype_name(t->dtype));
        goto done;
      }
      if (*variant) {
        uint16_t *h = half + off;
        if (t->dtype == ST_F16) {
          memcpy(h, t->data, t->nbytes);
        } else {
          float *tmp = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *tmp);
          if (!tmp) goto oom;
          st_to_f32(t, tmp);
          for (int64_t e = 0; e < t->numel; e++) h[e] = dpod_f32_to_f16(tmp[e]);
          free(tmp);
        }
        status = st_writer_add(wr, t->name, ST_F16, t->ndim, t->shape, h);
        off += (size_t)t->numel;
      } else {
        status = st_writer_add(wr, t->name, ST_F32, t->ndim, t->shape, t->data);
      }
      if (status != 0) {
        dpod_errf(err, errlen, status, "%s: cannot add tensor '%s'", out, t->name);
        goto done;
      }
    }
  st_writer_set_metadata(wr, "format", "pt");
  snprintf(path, sizeof path, "%s/" MODEL_WEIGHTS_STEM "%s%s.safetensors", unet_dir, *variant ? "." : "", variant);
  if ((status = st_writer_write(wr, path, NULL, err, errlen)) != 0) goto done;
  if ((status = write_text(unet_dir, "config.json", config, err, errlen)) != 0) goto done;
  if (p->pipeline) {
    snprintf(path, sizeof path, "%s/scheduler", out);
    if ((status = dpod_mkdirs(path, 0755, 0, err, errlen)) != 0) goto done;
    if ((status = write_text(path, "scheduler_config.json", sched ? sched : model_default_scheduler_json, err, errlen)) !=
        0)
      goto done;
  }
  if (unet_dir_out) snprintf(unet_dir_out, MODEL_PATH_MAX, "%s", unet_dir);
  goto done;
oom:
  status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
done:
  st_writer_free(wr);
  weight_set_free(&w);
  free(half);
  free(config);
  free(sched);
  free(s);
  return status;
}
