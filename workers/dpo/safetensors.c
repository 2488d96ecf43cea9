/* safetensors: a validating, memory-mapped reader and an atomic writer.
 *
 * The reader trusts nothing in the file: every offset, shape and dtype is checked before a tensor is
 * handed out, and every message names the file and the tensor or field at fault. The writer lays the
 * data out the way the reference Python implementation does (largest element size first, then by name)
 * so every tensor is aligned to its element size, and pads the header with spaces so the data area
 * starts on an 8-byte boundary. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_half.h"
#include "json_num.h"

#define ST_MAX_HEADER (100u * 1000u * 1000u)

struct st_file {
  char *path;
  void *map;
  size_t map_len;
  st_tensor *tensors;  /* sorted by data offset */
  size_t count;
  char **meta_keys;
  char **meta_values;
  size_t meta_count;
};

static const struct {
  const char *name;
  size_t size;
} st_dtypes_[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2},  [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};
#define ST_NDTYPES (sizeof st_dtypes_ / sizeof st_dtypes_[0])

const char *st_dtype_name(st_dtype d) {
  return (unsigned)d < ST_NDTYPES ? st_dtypes_[d].name : "?";
}

size_t st_dtype_size(st_dtype d) {
  return (unsigned)d < ST_NDTYPES ? st_dtypes_[d].size : 0;
}

static int st_dtype_parse_(const char *s, st_dtype *out) {
  for (size_t i = 0; i < ST_NDTYPES; i++) {
    if (strcmp(s, st_dtypes_[i].name) == 0) {
      *out = (st_dtype)i;
      return 0;
    }
  }
  return -1;
}


/* A JSON number that is a non-negative integer representable exactly (< 2^53). */
/* A tensor's byte range and its place in the header; sorted by range, with no context outside it. */
typedef struct {
  uint64_t begin, end;
  size_t index;
} st_span_;

static int st_cmp_span_(const void *a, const void *b) {
  const st_span_ *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return x->index < y->index ? -1 : (x->index > y->index);
}

static int st_cmp_str_(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

void st_close(st_file *f) {
  if (!f) return;
  if (f->map && f->map_len) munmap(f->map, f->map_len);
  for (size_t i = 0; i < f->count; i++) free((char *)f->tensors[i].name);
  free(f->tensors);
  for (size_t i = 0; i < f->meta_count; i++) {
    free(f->meta_keys[i]);
    free(f->meta_values[i]);
  }
  free(f->meta_keys);
  free(f->meta_values);
  free(f->path);
  free(f);
}

int st_open(const char *path, st_file **out, char *err, size_t errlen) {
  int rc = DPOD_EFORMAT;
  int fd = -1;
  cJSON *root = NULL;
  st_span_ *spans = NULL;
  st_span_ *order = NULL; /* the spans in data order */
  st_tensor *tmp = NULL;
  size_t ntmp = 0;
  char **names = NULL;
  st_file *f = NULL;

  *out = NULL;
  if (!path) return dpod_errf(err, errlen, DPOD_EINVAL, "st_open: no path");
  f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below as not a regular file. */
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    rc = dpod_errf(err, errlen, errno == ENOENT ? DPOD_ENOENT : DPOD_EIO, "%s: cannot open: %s", path,
                  strerror(errno));
    goto fail;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    rc = dpod_errf(err, errlen, DPOD_EIO, "%s: cannot stat: %s", path, strerror(errno));
    goto fail;
  }
  if (!S_ISREG(sb.st_mode)) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: not a regular file", path);
    goto fail;
  }
  uint64_t fsize = (uint64_t)sb.st_size;
  if (fsize < 8) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                  "%s: file is %llu bytes, too short for the 8-byte header length (truncated?)", path,
                  (unsigned long long)fsize);
    goto fail;
  }
  f->map = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
  if (f->map == MAP_FAILED) {
    f->map = NULL;
    rc = dpod_errf(err, errlen, DPOD_EIO, "%s: cannot map: %s", path, strerror(errno));
    goto fail;
  }
  f->map_len = (size_t)fsize;
  close(fd);
  fd = -1;

  const unsigned char *base = f->map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | base[i];
  if (hlen > ST_MAX_HEADER) {
    /* The length is the file's first 8 bytes: say what is wrong, not what they are. */
    rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                  "%s: not a safetensors file (its header length exceeds the %u-byte limit)", path, ST_MAX_HEADER);
    goto fail;
  }
  if (hlen > fsize - 8) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                  "%s: its header length goes beyond the end of the file (%llu bytes; truncated, or not a "
                  "safetensors file)", path, (unsigned long long)fsize);
    goto fail;
  }
  const char *parse_end = NULL;
  root = cJSON_ParseWithLengthOpts((const char *)base + 8, (size_t)hlen, &parse_end, 0);
  if (!root) {
    size_t at = parse_end ? (size_t)(parse_end - ((const char *)base + 8)) : 0;
    rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: header is not valid JSON (near byte %zu of %llu)", path,
                  at, (unsigned long long)hlen);
    goto fail;
  }
  if (!cJSON_IsObject(root)) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: header JSON is not an object", path);
    goto fail;
  }
  /* Trailing bytes after the JSON may only be the spaces writers pad with. */
  for (const char *p = parse_end; p && p < (const char *)base + 8 + hlen; p++) {
    if (*p != ' ' && *p != '\n' && *p != '\t' && *p != '\r' && *p != '\0') {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: header has trailing bytes after the JSON object", path);
      goto fail;
    }
  }

  uint64_t data_len = fsize - 8 - hlen;
  const unsigned char *data = base + 8 + hlen;
  size_t n = 0;
  for (cJSON *e = root->child; e; e = e->next) n++;
  tmp = calloc(n ? n : 1, sizeof *tmp);
  spans = calloc(n ? n : 1, sizeof *spans);
  if (!tmp || !spans) {
    rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    goto fail;
  }

  for (cJSON *e = root->child; e; e = e->next) {
    const char *name = e->string ? e->string : "";
    if (strcmp(name, "__metadata__") == 0) {
      if (!cJSON_IsObject(e)) {
        rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: __metadata__ is not an object", path);
        goto fail;
      }
      size_t m = 0;
      for (cJSON *kv = e->child; kv; kv = kv->next) m++;
      free(f->meta_keys);
      free(f->meta_values);
      f->meta_keys = calloc(m ? m : 1, sizeof(char *));
      f->meta_values = calloc(m ? m : 1, sizeof(char *));
      if (!f->meta_keys || !f->meta_values) {
        rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
        goto fail;
      }
      for (cJSON *kv = e->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv)) {
          rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: __metadata__ value '%s' is not a string", path,
                        kv->string ? kv->string : "");
          goto fail;
        }
        f->meta_keys[f->meta_count] = strdup(kv->string ? kv->string : "");
        f->meta_values[f->meta_count] = strdup(kv->valuestring);
        f->meta_count++;
        if (!f->meta_keys[f->meta_count - 1] || !f->meta_values[f->meta_count - 1]) {
          rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
          goto fail;
        }
      }
      continue;
    }
    if (!cJSON_IsObject(e)) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': entry is not an object", path, name);
      goto fail;
    }
    const cJSON *jd = NULL, *js = NULL, *jo = NULL;
    for (cJSON *fld = e->child; fld; fld = fld->next) {
      const char *k = fld->string ? fld->string : "";
      if (strcmp(k, "dtype") == 0 && !jd) jd = fld;
      else if (strcmp(k, "shape") == 0 && !js) js = fld;
      else if (strcmp(k, "data_offsets") == 0 && !jo) jo = fld;
      else {
        rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': unexpected field '%s'", path, name, k);
        goto fail;
      }
    }
    if (!jd || !js || !jo) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': missing field '%s'", path, name,
                    !jd ? "dtype" : !js ? "shape" : "data_offsets");
      goto fail;
    }
    st_tensor *t = &tmp[ntmp];
    if (!cJSON_IsString(jd) || st_dtype_parse_(jd->valuestring, &t->dtype) != 0) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': unknown dtype %s%s%s", path, name,
                    cJSON_IsString(jd) ? "'" : "", cJSON_IsString(jd) ? jd->valuestring : "(not a string)",
                    cJSON_IsString(jd) ? "'" : "");
      goto fail;
    }
    if (!cJSON_IsArray(js)) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': shape is not an array", path, name);
      goto fail;
    }
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': %d dimensions, at most %d supported", path,
                    name, nd, ST_MAX_DIMS);
      goto fail;
    }
    t->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0;
    int di = 0;
    for (cJSON *d = js->child; d; d = d->next, di++) {
      uint64_t v;
      if (dpo_json_uint(d, UINT64_MAX, &v) != 0) {
        rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                      "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, di);
        goto fail;
      }
      t->shape[di] = (int64_t)v;
      if (v != 0 && numel > (uint64_t)INT64_MAX / v) overflow = 1;
      else numel *= v;
    }
    size_t esz = st_dtype_size(t->dtype);
    if (overflow || numel > UINT64_MAX / esz) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': shape's element count overflows", path,
                    name);
      goto fail;
    }
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 ||
        dpo_json_uint(jo->child, UINT64_MAX, &spans[ntmp].begin) != 0 ||
        dpo_json_uint(jo->child->next, UINT64_MAX, &spans[ntmp].end) != 0) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                    "%s: tensor '%s': data_offsets is not a pair of non-negative integers", path, name);
      goto fail;
    }
    uint64_t b = spans[ntmp].begin, en = spans[ntmp].end;
    if (b > en) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu) end before they begin",
                    path, name, (unsigned long long)b, (unsigned long long)en);
      goto fail;
    }
    if (en > data_len) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                    "%s: tensor '%s': data_offsets [%llu, %llu) out of range: the data area holds %llu bytes",
                    path, name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_len);
      goto fail;
    }
    if (en - b != numel * esz) {
      char shp[160];
      size_t o = 0;
      o += (size_t)snprintf(shp + o, sizeof shp - o, "[");
      for (int k = 0; k < nd && o < sizeof shp; k++)
        o += (size_t)snprintf(shp + o, sizeof shp - o, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
      if (o < sizeof shp) snprintf(shp + o, sizeof shp - o, "]");
      rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                    "%s: tensor '%s': data_offsets [%llu, %llu) hold %llu bytes, %s %s needs %llu", path,
                    name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b),
                    st_dtype_name(t->dtype), shp, (unsigned long long)(numel * esz));
      goto fail;
    }
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(en - b);
    t->data = data + b;
    t->name = strdup(name);
    if (!t->name) {
      rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    ntmp++;
  }

  /* Duplicate names: JSON allows them, safetensors does not. */
  names = malloc((ntmp ? ntmp : 1) * sizeof *names);
  order = malloc((ntmp ? ntmp : 1) * sizeof *order);
  if (!names || !order) {
    rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  for (size_t i = 0; i < ntmp; i++) names[i] = (char *)tmp[i].name;
  qsort(names, ntmp, sizeof *names, st_cmp_str_);
  for (size_t i = 1; i < ntmp; i++) {
    if (strcmp(names[i - 1], names[i]) == 0) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: tensor '%s' appears twice in the header", path, names[i]);
      goto fail;
    }
  }

  /* In data order, tensors must tile the data area: no overlap, no gap, nothing after the last. */
  for (size_t i = 0; i < ntmp; i++) {
    order[i] = spans[i];
    order[i].index = i;
  }
  qsort(order, ntmp, sizeof *order, st_cmp_span_);
  uint64_t pos = 0;
  const char *prev = NULL;
  for (size_t k = 0; k < ntmp; k++) {
    size_t i = order[k].index;
    if (spans[i].begin < pos) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                    "%s: tensor '%s': data_offsets [%llu, %llu) overlap tensor '%s' (which ends at %llu)", path,
                    tmp[i].name, (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end,
                    prev ? prev : "?", (unsigned long long)pos);
      goto fail;
    }
    if (spans[i].begin > pos) {
      rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                    "%s: tensor '%s': data_offsets begin at %llu, leaving a gap after byte %llu", path,
                    tmp[i].name, (unsigned long long)spans[i].begin, (unsigned long long)pos);
      goto fail;
    }
    pos = spans[i].end;
    prev = tmp[i].name;
  }
  if (pos != data_len) {
    rc = dpod_errf(err, errlen, DPOD_EFORMAT,
                  "%s: the data area holds %llu bytes but the tensors cover %llu (trailing bytes)", path,
                  (unsigned long long)data_len, (unsigned long long)pos);
    goto fail;
  }

  f->tensors = calloc(ntmp ? ntmp : 1, sizeof *f->tensors);
  if (!f->tensors) {
    rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  for (size_t k = 0; k < ntmp; k++) f->tensors[k] = tmp[order[k].index];
  f->count = ntmp;
  ntmp = 0; /* names now owned by f */

  free(tmp);
  free(spans);
  free(order);
  free(names);
  cJSON_Delete(root);
  *out = f;
  return 0;

fail:
  if (fd >= 0) close(fd);
  for (size_t i = 0; i < ntmp; i++) free((char *)tmp[i].name);
  free(tmp);
  free(spans);
  free(order);
  free(names);
  cJSON_Delete(root);
  st_close(f);
  return rc;
}

size_t st_count(const st_file *f) { return f ? f->count : 0; }

const st_tensor *st_at(const st_file *f, size_t i) {
  return f && i < f->count ? &f->tensors[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name) {
  if (!f || !name) return NULL;
  for (size_t i = 0; i < f->count; i++)
    if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
  return NULL;
}

const char *st_metadata(const st_file *f, const char *key) {
  if (!f || !key) return NULL;
  for (size_t i = 0; i < f->meta_count; i++)
    if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
  return NULL;
}

size_t st_metadata_count(const st_file *f) { return f ? f->meta_count : 0; }

void st_metadata_at(const st_file *f, size_t i, const char **key, const char **value) {
  if (!f || i >= f->meta_count) {
    if (key) *key = NULL;
    if (value) *value = NULL;
    return;
  }
  if (key) *key = f->meta_keys[i];
  if (value) *value = f->meta_values[i];
}

int st_to_f32(const st_tensor *t, float *out) {
  if (!t || !out) return DPOD_EINVAL;
  const unsigned char *p = t->data;
  int64_t n = t->numel;
  switch (t->dtype) {
    case ST_F32: memcpy(out, p, (size_t)n * 4); break;
    case ST_F16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        out[i] = dpod_f16_to_f32(h);
      }
      break;
    case ST_BF16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        out[i] = dpod_bf16_to_f32(h);
      }
      break;
    case ST_F64:
      for (int64_t i = 0; i < n; i++) {
        double d;
        memcpy(&d, p + 8 * i, 8);
        out[i] = (float)d;
      }
      break;
    case ST_I64:
      for (int64_t i = 0; i < n; i++) {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        out[i] = (float)v;
      }
      break;
    case ST_I32:
      for (int64_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        out[i] = (float)v;
      }
      break;
    case ST_I16:
      for (int64_t i = 0; i < n; i++) {
        int16_t v;
        memcpy(&v, p + 2 * i, 2);
        out[i] = (float)v;
      }
      break;
    case ST_I8:
      for (int64_t i = 0; i < n; i++) out[i] = (float)(int8_t)p[i];
      break;
    case ST_U8:
    case ST_BOOL:
      for (int64_t i = 0; i < n; i++) out[i] = (float)p[i];
      break;
    default: return DPOD_EINVAL;
  }
  return 0;
}

/* ---- writer ---- */

typedef struct {
  char *name;
  st_dtype dtype;
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  size_t nbytes;
  const void *data;
} st_wentry_;

struct st_writer {
  st_wentry_ *e;
  size_t n, cap;
  char **mkeys, **mvals;
  size_t mn, mcap;
  int failed; /* an add failed: refuse to write a partial file */
};

st_writer *st_writer_new(void) { return calloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
  free(w->e);
  for (size_t i = 0; i < w->mn; i++) {
    free(w->mkeys[i]);
    free(w->mvals[i]);
  }
  free(w->mkeys);
  free(w->mvals);
  free(w);
}

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  const void *data) {
  if (!w || !name || (unsigned)dtype >= ST_NDTYPES || ndim < 0 || ndim > ST_MAX_DIMS ||
      (ndim && !shape) || strcmp(name, "__metadata__") == 0) {
    if (w) w->failed = 1;
    return DPOD_EINVAL;
  }
  for (size_t i = 0; i < w->n; i++) {
    if (strcmp(w->e[i].name, name) == 0) {
      w->failed = 1;
      return DPOD_EINVAL;
    }
  }
  uint64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] && numel > (uint64_t)INT64_MAX / (uint64_t)shape[i])) {
      w->failed = 1;
      return DPOD_EINVAL;
    }
    numel *= (uint64_t)shape[i];
  }
  if (numel && !data) {
    w->failed = 1;
    return DPOD_EINVAL;
  }
  if (w->n == w->cap) {
    size_t cap = w->cap ? 2 * w->cap : 64;
    st_wentry_ *e = realloc(w->e, cap * sizeof *e);
    if (!e) {
      w->failed = 1;
      return DPOD_ENOMEM;
    }
    w->e = e;
    w->cap = cap;
  }
  st_wentry_ *e = &w->e[w->n];
  memset(e, 0, sizeof *e);
  e->name = strdup(name);
  if (!e->name) {
    w->failed = 1;
    return DPOD_ENOMEM;
  }
  e->dtype = dtype;
  e->ndim = ndim;
  for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
  e->nbytes = (size_t)numel * st_dtype_size(dtype);
  e->data = data;
  w->n++;
  return 0;
}

int st_writer_set_metadata(st_writer *w, const char *key, const char *value) {
  if (!w || !key || !value) return DPOD_EINVAL;
  for (size_t i = 0; i < w->mn; i++) {
    if (strcmp(w->mkeys[i], key) == 0) {
      char *v = strdup(value);
      if (!v) return DPOD_ENOMEM;
      free(w->mvals[i]);
      w->mvals[i] = v;
      return 0;
    }
  }
  if (w->mn == w->mcap) {
    size_t cap = w->mcap ? 2 * w->mcap : 8;
    char **k = realloc(w->mkeys, cap * sizeof *k);
    if (!k) return DPOD_ENOMEM;
    w->mkeys = k;
    char **v = realloc(w->mvals, cap * sizeof *v);
    if (!v) return DPOD_ENOMEM;
    w->mvals = v;
    w->mcap = cap;
  }
  w->mkeys[w->mn] = strdup(key);
  w->mvals[w->mn] = strdup(value);
  if (!w->mkeys[w->mn] || !w->mvals[w->mn]) {
    free(w->mkeys[w->mn]);
    free(w->mvals[w->mn]);
    return DPOD_ENOMEM;
  }
  w->mn++;
  return 0;
}

/* Largest element size first, then by name: the order the reference implementation uses, which keeps
 * every tensor aligned to its element size without padding between tensors. */
static int st_cmp_wentry_(const void *a, const void *b) {
  const st_wentry_ *x = *(st_wentry_ *const *)a, *y = *(st_wentry_ *const *)b;
  size_t sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
  if (sx != sy) return sx > sy ? -1 : 1;
  return strcmp(x->name, y->name);
}

int st_writer_write(st_writer *w, const char *path, uint64_t *bytes_out, char *err, size_t errlen) {
  int rc = DPOD_EIO;
  cJSON *root = NULL;
  char *json = NULL;
  st_wentry_ **sorted = NULL;
  dpod_atomic_file f;
  f.fd = -1;

  if (!w || !path) return dpod_errf(err, errlen, DPOD_EINVAL, "st_writer_write: no writer or path");
  if (w->failed)
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: an earlier st_writer_add failed; not writing", path);
  sorted = malloc((w->n ? w->n : 1) * sizeof *sorted);
  root = cJSON_CreateObject();
  if (!sorted || !root) {
    rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  for (size_t i = 0; i < w->n; i++) sorted[i] = &w->e[i];
  qsort(sorted, w->n, sizeof *sorted, st_cmp_wentry_);
  if (w->mn) {
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    for (size_t i = 0; m && i < w->mn; i++)
      if (!cJSON_AddStringToObject(m, w->mkeys[i], w->mvals[i])) m = NULL;
    if (!m) {
      rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
      goto fail;
    }
  }
  uint64_t off = 0;
  for (size_t i = 0; i < w->n; i++) {
    st_wentry_ *e = sorted[i];
    cJSON *t = cJSON_CreateObject();
    if (!t || !cJSON_AddItemToObject(root, e->name, t)) {
      cJSON_Delete(t);
      rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    cJSON *shape = cJSON_AddArrayToObject(t, "shape");
    cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
    if (!cJSON_AddStringToObject(t, "dtype", st_dtype_name(e->dtype)) || !shape || !offs) {
      rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    for (int k = 0; k < e->ndim; k++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[k]));
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + e->nbytes)));
    off += e->nbytes;
  }
  json = cJSON_PrintUnformatted(root);
  if (!json) {
    rc = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  size_t jlen = strlen(json);
  size_t hlen = (jlen + 7) & ~(size_t)7;

  if ((rc = dpod_atomic_open(&f, path, 0, err, errlen)) != 0) goto fail;
  unsigned char lenbuf[8];
  for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  static const char spaces[8] = "        ";
  if ((rc = dpod_atomic_write(&f, lenbuf, 8, err, errlen)) != 0 ||
      (rc = dpod_atomic_write(&f, json, jlen, err, errlen)) != 0 ||
      (rc = dpod_atomic_write(&f, spaces, hlen - jlen, err, errlen)) != 0)
    goto fail;
  for (size_t i = 0; i < w->n; i++)
    if (sorted[i]->nbytes && (rc = dpod_atomic_write(&f, sorted[i]->data, sorted[i]->nbytes, err, errlen)) != 0)
      goto fail;
  if ((rc = dpod_atomic_commit(&f, err, errlen)) != 0) goto fail;
  if (bytes_out) *bytes_out = 8 + hlen + off;
  free(json);
  free(sorted);
  cJSON_Delete(root);
  return 0;

fail:
  dpod_atomic_abort(&f);
  free(json);
  free(sorted);
  cJSON_Delete(root);
  return rc;
}
