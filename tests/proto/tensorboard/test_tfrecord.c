/* TensorBoard event files: CRC-32C and its mask, TFRecord framing, and reading a file back with a torn
 * or corrupt tail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crc32c.h"
#include "dpod_error.h"
#include "tb_file.h"
#include "tfrecord.h"

static void crc32c_matches_the_standard_check_value(void **state) {
  (void)state;
  assert_int_equal(crc32c("123456789", 9), 0xE3069283u);
  assert_int_equal(crc32c("", 0), 0);
  /* RFC 3720 B.4: 32 bytes of zeros, and of 0xff. */
  unsigned char zeros[32] = {0}, ones[32];
  memset(ones, 0xff, sizeof ones);
  assert_int_equal(crc32c(zeros, sizeof zeros), 0x8A9136AAu);
  assert_int_equal(crc32c(ones, sizeof ones), 0x62A8AB43u);
  /* Continuing over pieces is the CRC of the whole. */
  assert_int_equal(crc32c_update(crc32c("1234", 4), "56789", 5), 0xE3069283u);
}

static void crc32c_mask_is_tensorflows(void **state) {
  (void)state;
  /* Mask(c) = rotate right by 15, plus 0xa282ead8. */
  assert_int_equal(crc32c_mask(0), 0xa282ead8u);
  assert_int_equal(crc32c_mask(0xE3069283u), ((0xE3069283u >> 15) | (0xE3069283u << 17)) + 0xa282ead8u);
  assert_int_not_equal(crc32c_mask(1), crc32c_mask(2));
}

static void a_framed_record_reads_back(void **state) {
  (void)state;
  unsigned char buf[64];
  size_t n = tfrecord_frame("hello", 5, buf);
  assert_int_equal(n, 5 + TFRECORD_OVERHEAD);
  /* The length, little-endian, then its masked CRC, the data, the data's masked CRC. */
  assert_int_equal(buf[0], 5);
  for (int i = 1; i < 8; i++) assert_int_equal(buf[i], 0);
  uint32_t len_crc = (uint32_t)buf[8] | (uint32_t)buf[9] << 8 | (uint32_t)buf[10] << 16 | (uint32_t)buf[11] << 24;
  assert_int_equal(len_crc, crc32c_mask(crc32c(buf, 8)));
  assert_memory_equal(buf + 12, "hello", 5);
  uint32_t data_crc = (uint32_t)buf[17] | (uint32_t)buf[18] << 8 | (uint32_t)buf[19] << 16 | (uint32_t)buf[20] << 24;
  assert_int_equal(data_crc, crc32c_mask(crc32c("hello", 5)));
  n += tfrecord_frame("", 0, buf + n);
  size_t off = 0, dl = 99;
  const unsigned char *d = NULL;
  assert_int_equal(tfrecord_next(buf, n, &off, 1024, &d, &dl), TFRECORD_OK);
  assert_int_equal(dl, 5);
  assert_memory_equal(d, "hello", 5);
  assert_int_equal(tfrecord_next(buf, n, &off, 1024, &d, &dl), TFRECORD_OK);
  assert_int_equal(dl, 0);
  assert_int_equal(off, n);
  assert_int_equal(tfrecord_next(buf, n, &off, 1024, &d, &dl), TFRECORD_END);
}

static void a_torn_or_corrupt_record_is_told_apart(void **state) {
  (void)state;
  unsigned char buf[64];
  size_t n = tfrecord_frame("hello", 5, buf);
  const unsigned char *d;
  size_t dl;
  /* Every cut inside the record is torn, and leaves the offset at its start. */
  for (size_t cut = 1; cut < n; cut++) {
    size_t off = 0;
    assert_int_equal(tfrecord_next(buf, cut, &off, 1024, &d, &dl), TFRECORD_TORN);
    assert_int_equal(off, 0);
  }
  size_t off = 0;
  buf[13] ^= 1; /* the data */
  assert_int_equal(tfrecord_next(buf, n, &off, 1024, &d, &dl), TFRECORD_CORRUPT);
  buf[13] ^= 1;
  buf[2] ^= 1; /* the length */
  assert_int_equal(tfrecord_next(buf, n, &off, 1024, &d, &dl), TFRECORD_CORRUPT);
  buf[2] ^= 1;
  assert_int_equal(tfrecord_next(buf, n, &off, 4, &d, &dl), TFRECORD_CORRUPT); /* longer than allowed */
  assert_int_equal(off, 0);
  assert_int_equal(tfrecord_next(buf, n, &off, 1024, &d, &dl), TFRECORD_OK);
}

/* A file of a version record and `n` summaries (seq 10.., step 100..). */
static size_t write_events(const char *path, int n, unsigned char *all, size_t cap) {
  size_t len = 0;
  Dpod__Tb__Event first = DPOD__TB__EVENT__INIT;
  first.what_case = DPOD__TB__EVENT__WHAT_FILE_VERSION;
  first.file_version = TB_FILE_VERSION;
  len += tb_file_frame_event(&first, all + len, cap - len);
  for (int i = 0; i < n; i++) {
    Dpod__Tb__Summary__Value v = DPOD__TB__SUMMARY__VALUE__INIT, *vp = &v;
    v.tag = "train/loss";
    v.has_simple_value = 1;
    v.simple_value = 0.5f;
    Dpod__Tb__Summary s = DPOD__TB__SUMMARY__INIT;
    s.n_value = 1;
    s.value = &vp;
    Dpod__Tb__Event e = DPOD__TB__EVENT__INIT;
    e.has_step = 1;
    e.step = 100 + i;
    e.what_case = DPOD__TB__EVENT__WHAT_SUMMARY;
    e.summary = &s;
    e.has_dpod_seq = 1;
    e.dpod_seq = 10 + (uint64_t)i;
    size_t k = tb_file_frame_event(&e, all + len, cap - len);
    assert_true(k > 0);
    len += k;
  }
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(all, 1, len, f), len);
  fclose(f);
  return len;
}

/* A private directory holding such a file of 3 summaries; returns the file's length. */
static size_t make_events_file(char *dir, size_t dirlen, char *path, size_t pathlen, unsigned char *all, size_t cap) {
  assert_int_equal(test_mkdtemp(dir, dirlen, "dpod-tb"), 0);
  snprintf(path, pathlen, "%s/events.out.tfevents.1.h", dir);
  return write_events(path, 3, all, cap);
}

static void scan_finds_the_last_seq_and_step(void **state) {
  (void)state;
  char dir[PATH_MAX], path[PATH_MAX + 32], err[256];
  unsigned char all[4096];
  size_t len = make_events_file(dir, sizeof dir, path, sizeof path, all, sizeof all);
  tb_file_info info;
  assert_int_equal(tb_file_scan(path, &info, err, sizeof err), 0);
  assert_int_equal(info.tail, TFRECORD_END);
  assert_int_equal(info.records, 4);
  assert_int_equal(info.good_len, len);
  assert_int_equal(info.max_seq, 12);
  assert_int_equal(info.max_step, 102);
  unlink(path);
  rmdir(dir);
}

static void scan_stops_before_a_torn_tail(void **state) {
  (void)state;
  char dir[PATH_MAX], path[PATH_MAX + 32], err[256];
  unsigned char all[4096];
  size_t len = make_events_file(dir, sizeof dir, path, sizeof path, all, sizeof all);
  /* Cut the last record in the middle of its data. */
  assert_int_equal(truncate(path, (off_t)(len - 7)), 0);
  tb_file_info info;
  assert_int_equal(tb_file_scan(path, &info, err, sizeof err), 0);
  assert_int_equal(info.tail, TFRECORD_TORN);
  assert_int_equal(info.records, 3);
  assert_int_equal(info.max_seq, 11);
  assert_int_equal(info.max_step, 101);
  assert_int_equal(info.file_len, len - 7);
  assert_true(info.good_len < info.file_len);
  /* A flipped byte inside the second summary: everything from it on is left out. */
  write_events(path, 3, all, sizeof all);
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  assert_int_equal(fseek(f, (long)info.good_len - 3, SEEK_SET), 0);
  fputc('x', f);
  fclose(f);
  assert_int_equal(tb_file_scan(path, &info, err, sizeof err), 0);
  assert_int_equal(info.tail, TFRECORD_CORRUPT);
  assert_int_equal(info.max_seq, 10);
  /* A missing file is an error that names it. */
  unlink(path);
  assert_int_equal(tb_file_scan(path, &info, err, sizeof err), DPOD_ENOENT);
  assert_non_null(strstr(err, "events.out.tfevents.1.h"));
  rmdir(dir);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(crc32c_matches_the_standard_check_value),
      cmocka_unit_test(crc32c_mask_is_tensorflows),
      cmocka_unit_test(a_framed_record_reads_back),
      cmocka_unit_test(a_torn_or_corrupt_record_is_told_apart),
      cmocka_unit_test(scan_finds_the_last_seq_and_step),
      cmocka_unit_test(scan_stops_before_a_torn_tail),
  };
  return CMOCKA_MAIN("tensorboard.tfrecord", tests, NULL, NULL);
}
