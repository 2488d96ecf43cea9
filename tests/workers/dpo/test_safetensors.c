/* The safetensors reader and writer: a round trip, the fixture files, and one purpose-built bad file per
 * validation rule, each refused with a message that names the file and the problem. */
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "tensor_test_util.h"
#include "cmocka_main.h"

static char tmpdir[256];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(tmpdir, sizeof tmpdir, "dpod-st");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(tmpdir);
}

/* Writes 8-byte LE `hlen` (or strlen(header) if hlen < 0), the header and `ndata` data bytes. */
static const char *write_raw(const char *name, const char *header, long long hlen, size_t ndata) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  uint64_t n = hlen < 0 ? strlen(header) : (uint64_t)hlen;
  unsigned char le[8];
  for (int i = 0; i < 8; i++) le[i] = (unsigned char)(n >> (8 * i));
  assert_int_equal(fwrite(le, 1, 8, f), 8);
  assert_int_equal(fwrite(header, 1, strlen(header), f), strlen(header));
  for (size_t i = 0; i < ndata; i++) fputc((int)i, f);
  fclose(f);
  return path;
}

/* The message of the last refusal expect_refused() saw. */
static char last_err[512];

/* Opens `path`, expects failure with `status`, and that the message contains each of the words. */
static void expect_refused(const char *path, int status, const char *word1, const char *word2) {
  char *err = last_err;
  err[0] = '\0';
  st_file *f = NULL;
  int rc = st_open(path, &f, err, sizeof last_err);
  if (rc == 0) {
    st_close(f);
    fail_msg("%s was accepted", path);
  }
  assert_null(f);
  if (rc != status) fail_msg("status %d (%s), want %d; message: %s", rc, dpod_err_name(rc), status, err);
  if (!strstr(err, path)) fail_msg("message does not name the file: %s", err);
  if (word1 && !strstr(err, word1)) fail_msg("message lacks '%s': %s", word1, err);
  if (word2 && !strstr(err, word2)) fail_msg("message lacks '%s': %s", word2, err);
}

static void safetensors_round_trip(void **state) {
  (void)state;
  float a[6] = {1, -2, 3.5f, 4, 5, 6e-30f};
  int64_t b[3] = {10, -500, 1LL << 40};
  uint16_t c[2] = {0x3c00, 0xc000}; /* F16 1.0, -2.0 */
  int64_t sa[2] = {2, 3}, sb[1] = {3}, sc[1] = {2};
  st_writer *w = st_writer_new();
  assert_non_null(w);
  assert_int_equal(st_writer_add(w, "layer.a", ST_F32, 2, sa, a), 0);
  assert_int_equal(st_writer_add(w, "b", ST_I64, 1, sb, b), 0);
  assert_int_equal(st_writer_add(w, "c", ST_F16, 1, sc, c), 0);
  assert_int_equal(st_writer_add(w, "empty", ST_F32, 1, (int64_t[]){0}, NULL), 0);
  assert_int_equal(st_writer_add(w, "b", ST_F32, 1, sb, a), DPOD_EINVAL); /* duplicate name */
  st_writer_free(w);

  w = st_writer_new();
  assert_int_equal(st_writer_add(w, "layer.a", ST_F32, 2, sa, a), 0);
  assert_int_equal(st_writer_add(w, "b", ST_I64, 1, sb, b), 0);
  assert_int_equal(st_writer_add(w, "c", ST_F16, 1, sc, c), 0);
  assert_int_equal(st_writer_add(w, "empty", ST_F32, 1, (int64_t[]){0}, NULL), 0);
  assert_int_equal(st_writer_set_metadata(w, "format", "pt"), 0);
  char path[512], err[512];
  snprintf(path, sizeof path, "%s/rt.safetensors", tmpdir);
  uint64_t bytes = 0;
  assert_int_equal(st_writer_write(w, path, &bytes, err, sizeof err), 0);
  st_writer_free(w);
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  assert_int_not_equal(access(tmp, F_OK), 0); /* renamed away */

  /* The header is padded so the data starts on an 8-byte boundary. */
  FILE *fp = fopen(path, "rb");
  unsigned char le[8];
  assert_int_equal(fread(le, 1, 8, fp), 8);
  fseek(fp, 0, SEEK_END);
  assert_int_equal((uint64_t)ftell(fp), bytes);
  fclose(fp);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | le[i];
  assert_int_equal((8 + hlen) % 8, 0);

  st_file *f = NULL;
  if (st_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(st_count(f), 4);
  const st_tensor *ta = st_find(f, "layer.a");
  assert_non_null(ta);
  assert_int_equal(ta->dtype, ST_F32);
  assert_int_equal(ta->ndim, 2);
  assert_int_equal(ta->shape[0], 2);
  assert_int_equal(ta->shape[1], 3);
  assert_memory_equal(ta->data, a, sizeof a);
  const st_tensor *tb = st_find(f, "b");
  assert_int_equal(tb->dtype, ST_I64);
  assert_memory_equal(tb->data, b, sizeof b);
  float cf[2];
  assert_int_equal(st_to_f32(st_find(f, "c"), cf), 0);
  assert_true(cf[0] == 1.0f && cf[1] == -2.0f);
  assert_int_equal(st_find(f, "empty")->numel, 0);
  assert_null(st_find(f, "nope"));
  assert_string_equal(st_metadata(f, "format"), "pt");
  assert_int_equal(st_metadata_count(f), 1);
  /* Tensors come back in data order, each aligned to its element size. */
  for (size_t i = 0; i < st_count(f); i++) {
    const st_tensor *t = st_at(f, i);
    assert_int_equal((uintptr_t)t->data % st_dtype_size(t->dtype), 0);
  }
  st_close(f);
}

static void safetensors_reads_fixture(void **state) {
  (void)state;
  char err[512];
  st_file *f = NULL;
  if (st_open(tu_path("unet.safetensors"), &f, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(st_count(f), 208);
  int64_t total = 0;
  for (size_t i = 0; i < st_count(f); i++) total += st_at(f, i)->numel;
  assert_int_equal(total, 792964);
  const st_tensor *t = st_find(f, "conv_in.weight");
  assert_non_null(t);
  assert_int_equal(t->ndim, 4);
  assert_int_equal(t->shape[0], 32);
  assert_int_equal(t->shape[3], 3);
  st_close(f);
}

static void safetensors_rejects_truncated_file(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/short.safetensors", tmpdir);
  FILE *f = fopen(path, "wb");
  fputs("\x10\x00\x00", f);
  fclose(f);
  expect_refused(path, DPOD_EFORMAT, "too short", NULL);
  /* A complete header whose data area was cut off. */
  const char *p = write_raw("cut.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", -1, 8);
  expect_refused(p, DPOD_EFORMAT, "'a'", "out of range");
}

/* A FIFO or a directory given as a weights file is refused at once: opening must not wait for a writer. */
static void safetensors_rejects_fifos_and_directories(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/weights.safetensors", tmpdir);
  assert_int_equal(mkfifo(path, 0600), 0);
  expect_refused(path, DPOD_EFORMAT, "not a regular file", NULL);
  snprintf(path, sizeof path, "%s/dir.safetensors", tmpdir);
  assert_int_equal(mkdir(path, 0700), 0);
  expect_refused(path, DPOD_EFORMAT, "not a regular file", NULL);
}

static void safetensors_rejects_header_beyond_file(void **state) {
  (void)state;
  const char *p = write_raw("hlen.safetensors", "{}", 4096, 0);
  expect_refused(p, DPOD_EFORMAT, "header length goes beyond", "10 bytes");
  /* The length is the file's first 8 bytes: the message must not show them. */
  assert_null(strstr(last_err, "4096"));
  p = write_raw("huge.safetensors", "{}", 1LL << 40, 0);
  expect_refused(p, DPOD_EFORMAT, "not a safetensors file", "limit");
  assert_null(strstr(last_err, "1099511627776"));
}

static void safetensors_rejects_invalid_json(void **state) {
  (void)state;
  const char *p = write_raw("json.safetensors", "{\"a\":{\"dtype\":\"F32\",", -1, 0);
  expect_refused(p, DPOD_EFORMAT, "not valid JSON", NULL);
  p = write_raw("notobj.safetensors", "[1, 2]  ", -1, 0);
  expect_refused(p, DPOD_EFORMAT, "not an object", NULL);
}

static void safetensors_rejects_offsets_out_of_range(void **state) {
  (void)state;
  const char *p = write_raw("range.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", -1, 8);
  expect_refused(p, DPOD_EFORMAT, "'w'", "out of range");
  p = write_raw("backwards.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", -1, 8);
  expect_refused(p, DPOD_EFORMAT, "'w'", "end before");
}

static void safetensors_rejects_overlapping_offsets(void **state) {
  (void)state;
  const char *p = write_raw("overlap.safetensors",
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                            -1, 12);
  expect_refused(p, DPOD_EFORMAT, "'y'", "overlap");
}

static void safetensors_rejects_byte_count_mismatch(void **state) {
  (void)state;
  const char *p = write_raw("count.safetensors", "{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", -1, 12);
  expect_refused(p, DPOD_EFORMAT, "'a.weight'", "hold 12 bytes, F32 [2, 2] needs 16");
  p = write_raw("ovf.safetensors",
                "{\"z\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,0]}}", -1, 0);
  expect_refused(p, DPOD_EFORMAT, "'z'", "overflow");
  p = write_raw("neg.safetensors", "{\"n\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", -1, 0);
  expect_refused(p, DPOD_EFORMAT, "'n'", "shape[0]");
}

static void safetensors_rejects_unknown_dtype(void **state) {
  (void)state;
  const char *p = write_raw("dtype.safetensors", "{\"q\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4);
  expect_refused(p, DPOD_EFORMAT, "'q'", "unknown dtype 'F17'");
}

static void safetensors_converts_f16_and_bf16(void **state) {
  (void)state;
  /* F16: 1.0, -0.5, smallest subnormal 2^-24, 65504; BF16: 1.0, -3.0 */
  uint16_t h[4] = {0x3c00, 0xb800, 0x0001, 0x7bff};
  uint16_t bf[2] = {0x3f80, 0xc040};
  st_tensor t = {.name = "h", .dtype = ST_F16, .ndim = 1, .shape = {4}, .numel = 4, .nbytes = 8, .data = h};
  float out[4];
  assert_int_equal(st_to_f32(&t, out), 0);
  assert_true(out[0] == 1.0f && out[1] == -0.5f && out[2] == ldexpf(1.0f, -24) && out[3] == 65504.0f);
  t.dtype = ST_BF16;
  t.numel = 2;
  t.data = bf;
  assert_int_equal(st_to_f32(&t, out), 0);
  assert_true(out[0] == 1.0f && out[1] == -3.0f);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(safetensors_round_trip),
      cmocka_unit_test(safetensors_reads_fixture),
      cmocka_unit_test(safetensors_rejects_truncated_file),
      cmocka_unit_test(safetensors_rejects_fifos_and_directories),
      cmocka_unit_test(safetensors_rejects_header_beyond_file),
      cmocka_unit_test(safetensors_rejects_invalid_json),
      cmocka_unit_test(safetensors_rejects_offsets_out_of_range),
      cmocka_unit_test(safetensors_rejects_overlapping_offsets),
      cmocka_unit_test(safetensors_rejects_byte_count_mismatch),
      cmocka_unit_test(safetensors_rejects_unknown_dtype),
      cmocka_unit_test(safetensors_converts_f16_and_bf16),
  };
  return CMOCKA_MAIN("safetensors", tests, setup, teardown);
}
