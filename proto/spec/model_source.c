#include "model_source.h"
#include "job_spec.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "diffusers_names.h"
#include "dpod_file.h"

#define INDEX_SUFFIX ".index.json"
#define MODEL_INDEX_TENSORS_MAX ((size_t)1 << 20)

static int is_regular(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int join(char *out, const char *dir, const char *name, const char *key, char *err, size_t errlen) {
  if (snprintf(out, MODEL_PATH_MAX, "%s/%s", dir, name) >= MODEL_PATH_MAX)
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: path too long", key, dir);
  return 0;
}

/* The folder the files of a model folder must resolve into, symbolic links followed: the folder itself,
 * or, inside a Hugging Face cache (.../models--ORG--NAME/snapshots/REV/...), the model's cache folder,
 * whose snapshots link every file into its blobs/. Whoever made a folder cannot make a job read some
 * other file of its user's through a link. */
static void trust_root(const char *dir, char *root, size_t len) {
  const char *snap = strstr(dir, "/snapshots/");
  if (snap && snap > dir) snprintf(root, len, "%.*s", (int)(snap - dir), dir);
  else snprintf(root, len, "%s", dir);
}

static int inside(const char *key, const char *file, const char *root, char *err, size_t errlen) {
  int r = dpod_path_inside(file, root);
  if (r == 1) return 0;
  if (r == 0)
    return dpod_errf(err, errlen, DPOD_EACCESS, "%s: %s: a symbolic link leading outside the model folder %s", key,
                     file, root);
  return dpod_errf(err, errlen, r, "%s: %s: cannot resolve", key, file);
}

static int readable(const char *key, const char *path, char *err, size_t errlen) {
  if (access(path, R_OK) != 0) return dpod_errf(err, errlen, DPOD_EACCESS, "%s: %s: %s", key, path, strerror(errno));
  return 0;
}

int model_source_resolve(const char *key, const char *path, const char *variant, model_source *out, char *err,
                         size_t errlen) {
  memset(out, 0, sizeof *out);
  if (!variant) variant = "";
  if (!path || !*path) return dpod_errf(err, errlen, DPOD_EINVAL, "%s: no path", key);
  if (strlen(path) >= MODEL_PATH_MAX - 64) return dpod_errf(err, errlen, DPOD_EINVAL, "%s: path too long", key);
  struct stat st;
  if (stat(path, &st) != 0)
    return dpod_errf(err, errlen, errno == EACCES ? DPOD_EACCESS : errno == ENOENT ? DPOD_ENOENT : DPOD_EINVAL,
                     "%s: %s: %s", key, path, strerror(errno));
  if (S_ISREG(st.st_mode)) {
    /* A file is taken as it is; a variant names a file inside a folder and so says nothing here. */
    snprintf(out->weights, sizeof out->weights, "%s", path);
    out->sharded = ends_with(path, INDEX_SUFFIX);
    return readable(key, path, err, errlen);
  }
  if (!S_ISDIR(st.st_mode))
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: neither a regular file nor a model folder", key, path);

  char probe[MODEL_PATH_MAX];
  int status;
  if ((status = join(probe, path, "config.json", key, err, errlen)) != 0) return status;
  if (is_regular(probe)) {
    snprintf(out->unet_dir, sizeof out->unet_dir, "%s", path);
  } else {
    if ((status = join(probe, path, "unet", key, err, errlen)) != 0) return status;
    if (!is_dir(probe))
      return dpod_errf(err, errlen, DPOD_EINVAL,
                       "%s: %s: not a model folder (no config.json in it, and no unet/ subfolder)", key, path);
    snprintf(out->unet_dir, sizeof out->unet_dir, "%s", probe);
    if ((status = join(probe, out->unet_dir, "config.json", key, err, errlen)) != 0) return status;
    if (!is_regular(probe))
      return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: a pipeline folder whose unet/ holds no config.json", key,
                       path);
  }
  const char *dir = out->unet_dir;
  snprintf(out->config, sizeof out->config, "%s", probe);

  char name[512];
  if (snprintf(name, sizeof name, MODEL_WEIGHTS_STEM "%s%s.safetensors", *variant ? "." : "", variant) >= (int)sizeof name)
    return dpod_errf(err, errlen, DPOD_EINVAL, "model.variant: too long");
  if ((status = join(out->weights, dir, name, key, err, errlen)) != 0) return status;
  if (!is_regular(out->weights)) {
    if (snprintf(probe, sizeof probe, "%s" INDEX_SUFFIX, out->weights) >= (int)sizeof probe)
      return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: path too long", key, dir);
    if (!is_regular(probe))
      return dpod_errf(err, errlen, DPOD_ENOENT, "%s: %s holds neither %s nor %s" INDEX_SUFFIX "%s%s%s", key, dir, name,
                       name, *variant ? " (model.variant is \"" : "", variant, *variant ? "\")" : "");
    snprintf(out->weights, sizeof out->weights, "%s", probe);
    out->sharded = 1;
  }
  if ((status = readable(key, out->config, err, errlen)) != 0 || (status = readable(key, out->weights, err, errlen)) != 0)
    return status;
  char root[MODEL_PATH_MAX];
  trust_root(path, root, sizeof root);
  if ((status = inside(key, out->config, root, err, errlen)) != 0 ||
      (status = inside(key, out->weights, root, err, errlen)) != 0)
    return status;

  /* The schedule the weights were trained with: a dpod checkpoint carries it inside the UNet folder, a
   * pipeline beside it. */
  if ((status = join(probe, dir, "scheduler_config.json", key, err, errlen)) != 0) return status;
  if (is_regular(probe)) {
    snprintf(out->scheduler, sizeof out->scheduler, "%s", probe);
  } else if (snprintf(probe, sizeof probe, "%s/../scheduler/scheduler_config.json", dir) < (int)sizeof probe &&
             is_regular(probe)) {
    /* Say it without the "..": UNET_DIR's parent, textually when UNET_DIR has one. */
    const char *slash = strrchr(dir, '/');
    if (slash && slash != dir && slash[1])
      snprintf(out->scheduler, sizeof out->scheduler, "%.*s/scheduler/scheduler_config.json", (int)(slash - dir), dir);
    else
      snprintf(out->scheduler, sizeof out->scheduler, "%s", probe);
    if (!is_regular(out->scheduler)) snprintf(out->scheduler, sizeof out->scheduler, "%s", probe);
    /* Beside the UNet folder: inside the pipeline folder (or cache) it belongs to. */
    char parent[MODEL_PATH_MAX + 8];
    snprintf(parent, sizeof parent, "%s/..", dir);
    trust_root(parent, root, sizeof root);
  }
  if (*out->scheduler && (status = inside(key, out->scheduler, root, err, errlen)) != 0) return status;
  return 0;
}

void model_index_free(model_index *idx) {
  if (!idx) return;
  for (size_t i = 0; i < idx->count; i++) free(idx->names[i]);
  for (size_t i = 0; i < idx->num_shards; i++) free(idx->shards[i]);
  free(idx->names);
  free(idx->shard_of);
  free(idx->shards);
  memset(idx, 0, sizeof *idx);
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int model_index_load(const char *index_path, model_index *idx, char *err, size_t errlen) {
  memset(idx, 0, sizeof *idx);
  char *text = NULL;
  int status = dpod_read_file(index_path, MODEL_INDEX_MAX, &text, NULL, err, errlen);
  if (status != 0) return status;
  cJSON *root = cJSON_Parse(text);
  free(text);
  char **sorted = NULL;
  if (!root) {
    status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: not valid JSON", index_path);
    goto fail;
  }
  const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(map)) {
    status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: no \"weight_map\" object (tensor name -> shard file)", index_path);
    goto fail;
  }
  size_t n = (size_t)cJSON_GetArraySize(map);
  if (n == 0 || n > MODEL_INDEX_TENSORS_MAX) {
    status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: weight_map names %zu tensors (1 to %zu allowed)", index_path, n,
                       MODEL_INDEX_TENSORS_MAX);
    goto fail;
  }
  idx->names = calloc(n, sizeof *idx->names);
  idx->shard_of = calloc(n, sizeof *idx->shard_of);
  idx->shards = calloc(MODEL_SHARDS_MAX, sizeof *idx->shards);
  if (!idx->names || !idx->shard_of || !idx->shards) goto oom;
  /* The folder the shards live in: the index's own. */
  const char *slash = strrchr(index_path, '/');
  int dir_len = slash ? (int)(slash - index_path) : 1;
  const char *dir = slash ? index_path : ".";
  char index_dir[MODEL_PATH_MAX], trusted[MODEL_PATH_MAX];
  snprintf(index_dir, sizeof index_dir, "%.*s", dir_len, dir);
  trust_root(index_dir, trusted, sizeof trusted);
  const cJSON *e;
  cJSON_ArrayForEach(e, map) {
    const char *file = cJSON_IsString(e) ? e->valuestring : NULL;
    if (!file || !*file || strchr(file, '/') || strcmp(file, ".") == 0 || strcmp(file, "..") == 0) {
      status = dpod_errf(err, errlen, DPOD_EFORMAT,
                         "%s: tensor '%s': the shard must be a plain file name in the index's folder", index_path,
                         e->string);
      goto fail;
    }
    size_t s = 0;
    while (s < idx->num_shards && strcmp(strrchr(idx->shards[s], '/') + 1, file) != 0) s++;
    if (s == idx->num_shards) {
      if (s == MODEL_SHARDS_MAX) {
        status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: more than %d shards", index_path, MODEL_SHARDS_MAX);
        goto fail;
      }
      size_t len = (size_t)dir_len + strlen(file) + 2;
      if (len > MODEL_PATH_MAX || !(idx->shards[s] = malloc(len))) {
        if (len > MODEL_PATH_MAX) {
          status = dpod_errf(err, errlen, DPOD_EINVAL, "%s: shard path too long", index_path);
          goto fail;
        }
        goto oom;
      }
      snprintf(idx->shards[s], len, "%.*s/%s", dir_len, dir, file);
      idx->num_shards++;
      if (!is_regular(idx->shards[s])) {
        status = dpod_errf(err, errlen, DPOD_ENOENT, "%s: shard %s (of tensor '%s') is missing or not a regular file",
                           index_path, file, e->string);
        goto fail;
      }
      if ((status = inside(index_path, idx->shards[s], trusted, err, errlen)) != 0) goto fail;
    }
    if (!(idx->names[idx->count] = strdup(e->string))) goto oom;
    idx->shard_of[idx->count++] = s;
  }
  /* A name given twice would make which shard wins a matter of parsing order. */
  if (!(sorted = malloc(n * sizeof *sorted))) goto oom;
  memcpy(sorted, idx->names, n * sizeof *sorted);
  qsort(sorted, n, sizeof *sorted, cmp_str_ptr);
  for (size_t i = 1; i < n; i++)
    if (strcmp(sorted[i - 1], sorted[i]) == 0) {
      status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s' is mapped twice", index_path, sorted[i]);
      goto fail;
    }
  free(sorted);
  cJSON_Delete(root);
  return 0;
oom:
  status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
fail:
  free(sorted);
  cJSON_Delete(root);
  model_index_free(idx);
  return status;
}

int model_config_agree(const char *a_text, const char *a_name, const char *b_text, const char *b_name, char *err,
                       size_t errlen) {
  cJSON *a = cJSON_Parse(a_text), *b = cJSON_Parse(b_text);
  int status = 0;
  if (!cJSON_IsObject(a) || !cJSON_IsObject(b)) {
    status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: not a JSON object", cJSON_IsObject(a) ? b_name : a_name);
    goto done;
  }
  for (int pass = 0; pass < 2 && status == 0; pass++) {
    const cJSON *from = pass == 0 ? a : b, *to = pass == 0 ? b : a;
    const cJSON *e;
    cJSON_ArrayForEach(e, from) {
      if (e->string[0] == '_') continue;
      const cJSON *other = cJSON_GetObjectItemCaseSensitive(to, e->string);
      if (!other) {
        status = dpod_errf(err, errlen, DPOD_EINVAL, "%s and %s disagree: '%s' is set only in %s", a_name, b_name,
                           e->string, pass == 0 ? a_name : b_name);
        break;
      }
      if (pass == 0 && !cJSON_Compare(e, other, 1)) {
        status = dpod_errf(err, errlen, DPOD_EINVAL, "%s and %s disagree on '%s'", a_name, b_name, e->string);
        break;
      }
    }
  }
done:
  cJSON_Delete(a);
  cJSON_Delete(b);
  return status;
}

int model_spec_config(const Dpod__V1__ModelSpec *m, const model_source *policy, const model_source *ref,
                      char **text_out, const char **name_out, char *err, size_t errlen) {
  *text_out = NULL;
  if (name_out) *name_out = "(built-in)";
  const char *paths[3], *keys[3];
  size_t n = 0;
  if (m->config && *m->config) paths[n] = m->config, keys[n++] = "model.config";
  if (policy && *policy->config) paths[n] = policy->config, keys[n++] = "model.weights";
  if (ref && *ref->config) paths[n] = ref->config, keys[n++] = "model.reference_weights";
  char *texts[3] = {0};
  int status = 0;
  for (size_t i = 0; i < n && status == 0; i++) {
    status = dpod_read_file(paths[i], MODEL_CONFIG_MAX, &texts[i], NULL, err, errlen);
    if (status != 0) {
      char inner[512];
      snprintf(inner, sizeof inner, "%s", err ? err : "");
      dpod_errf(err, errlen, status, "%s: %s", keys[i], inner);
    }
  }
  /* Each later config must agree with the first, which is what is built. */
  for (size_t i = 1; i < n && status == 0; i++) {
    char a[MODEL_PATH_MAX + 32], b[MODEL_PATH_MAX + 32];
    snprintf(a, sizeof a, "%s (%s)", keys[0], paths[0]);
    snprintf(b, sizeof b, "%s (%s)", keys[i], paths[i]);
    status = model_config_agree(texts[0], a, texts[i], b, err, errlen);
  }
  for (size_t i = 1; i < n; i++) free(texts[i]);
  if (status != 0) {
    free(texts[0]);
    return status;
  }
  if (n > 0) {
    *text_out = texts[0];
    if (name_out) *name_out = paths[0];
  }
  return 0;
}

static int check_one(const char *key, const char *path, const char *variant, model_source *src, char *err,
                     size_t errlen) {
  if (path[0] != '/')
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: must be an absolute path (got \"%s\")", key, path);
  int status = model_source_resolve(key, path, variant, src, err, errlen);
  if (status != 0 || !src->sharded) return status;
  model_index idx;
  char inner[1024];
  status = model_index_load(src->weights, &idx, inner, sizeof inner);
  model_index_free(&idx);
  if (status != 0) return dpod_errf(err, errlen, status, "%s: %s", key, inner);
  return 0;
}

int model_spec_check(const Dpod__V1__ModelSpec *m, char *err, size_t errlen) {
  const char *variant = m->variant ? m->variant : "";
  /* A job:ID reference is another job's checkpoint, checked when the job starts (daemon/job_chain.c). */
  int has_p = m->weights && *m->weights && strncmp(m->weights, JOB_SPEC_REF_PREFIX, strlen(JOB_SPEC_REF_PREFIX)) != 0;
  int has_r = m->reference_weights && *m->reference_weights &&
              strncmp(m->reference_weights, JOB_SPEC_REF_PREFIX, strlen(JOB_SPEC_REF_PREFIX)) != 0;
  model_source *src = calloc(2, sizeof *src);
  if (!src) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  int status = 0;
  if (has_p) status = check_one("model.weights", m->weights, variant, &src[0], err, errlen);
  if (status == 0 && has_r) status = check_one("model.reference_weights", m->reference_weights, variant, &src[1], err, errlen);
  if (status == 0 && *variant && !*src[0].unet_dir && !*src[1].unet_dir)
    status = dpod_errf(err, errlen, DPOD_EINVAL,
                       "model.variant: \"%s\" names a weights file inside a model folder, but neither model.weights "
                       "nor model.reference_weights is a folder",
                       variant);
  if (status == 0) {
    char *text = NULL;
    status = model_spec_config(m, has_p ? &src[0] : NULL, has_r ? &src[1] : NULL, &text, NULL, err, errlen);
    free(text);
  }
  free(src);
  return status;
}
