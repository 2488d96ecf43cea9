#include "tfrecord.h"

#include <string.h>

#include "crc32c.h"

static void put_le32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t tfrecord_frame(const void *data, size_t len, unsigned char *out) {
  uint64_t n = len;
  for (int i = 0; i < 8; i++) out[i] = (unsigned char)(n >> (8 * i));
  put_le32(out + 8, crc32c_mask(crc32c(out, 8)));
  if (len && out + 12 != (const unsigned char *)data) memmove(out + 12, data, len);
  put_le32(out + 12 + len, crc32c_mask(crc32c(out + 12, len)));
  return len + TFRECORD_OVERHEAD;
}

const char *tfrecord_status_name(tfrecord_status s) {
  switch (s) {
  case TFRECORD_OK: return "ok";
  case TFRECORD_END: return "end of file";
  case TFRECORD_TORN: return "torn record";
  case TFRECORD_CORRUPT: return "corrupt record";
  }
  return "?";
}

tfrecord_status tfrecord_next(const unsigned char *buf, size_t len, size_t *off, size_t max_len,
                              const unsigned char **data, size_t *data_len) {
  size_t at = *off;
  if (at >= len) return TFRECORD_END;
  size_t left = len - at;
  if (left < 12) return TFRECORD_TORN;
  const unsigned char *p = buf + at;
  if (crc32c_mask(crc32c(p, 8)) != get_le32(p + 8)) return TFRECORD_CORRUPT;
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= (uint64_t)p[i] << (8 * i);
  if (n > max_len) return TFRECORD_CORRUPT;
  if (left - 12 < n + 4) return TFRECORD_TORN;
  if (crc32c_mask(crc32c(p + 12, (size_t)n)) != get_le32(p + 12 + n)) return TFRECORD_CORRUPT;
  *data = p + 12;
  *data_len = (size_t)n;
  *off = at + 12 + (size_t)n + 4;
  return TFRECORD_OK;
}
