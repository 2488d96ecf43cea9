/* safetensors files: a validating, memory-mapped reader and an atomic writer, in C.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets},
 * "__metadata__": {str: str}}, then the raw little-endian data. The reader checks everything before
 * handing out a tensor: header size bounds, valid JSON, known dtypes, offsets inside the data area and in
 * order with no overlap, and that dtype x shape agrees with the byte count. */
#ifndef DPOD_SAFETENSORS_H
#define DPOD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
  const char *name;              /* owned by the file */
  st_dtype dtype;
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  int64_t numel;
  size_t nbytes;
  const void *data;              /* points into the mapping; valid until st_close */
} st_tensor;

typedef struct st_file st_file;

/* Maps and validates `path`. On failure returns a negative dpod_status and writes a message naming the
 * file and the problem ("x.safetensors: tensor 'a.weight': data_offsets [0, 12) hold 12 bytes, F32
 * [2, 2] needs 16"). On success *out is owned by the caller: st_close() it. */
int st_open(const char *path, st_file **out, char *err, size_t errlen);
void st_close(st_file *f);

size_t st_count(const st_file *f);
/* Tensors in file order (sorted by data offset). */
const st_tensor *st_at(const st_file *f, size_t i);
/* NULL if absent. */
const st_tensor *st_find(const st_file *f, const char *name);
/* A __metadata__ value, or NULL. */
const char *st_metadata(const st_file *f, const char *key);
size_t st_metadata_count(const st_file *f);
void st_metadata_at(const st_file *f, size_t i, const char **key, const char **value);

const char *st_dtype_name(st_dtype d);   /* "F32" */
size_t st_dtype_size(st_dtype d);         /* bytes per element */

/* Converts a floating tensor (F32, F16, BF16, F64) or an integer tensor to float32 into out[numel]. */
int st_to_f32(const st_tensor *t, float *out);

/* Writer: collects tensors (data borrowed until st_writer_write returns), then writes the file to
 * `path`.tmp, fsyncs it and renames it over `path`, so a reader sees the old file or the new one. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  const void *data);
int st_writer_set_metadata(st_writer *w, const char *key, const char *value);
/* *bytes_out (may be NULL) receives the file size. */
int st_writer_write(st_writer *w, const char *path, uint64_t *bytes_out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
