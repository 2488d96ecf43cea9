#include "crc32c.h"

#include <pthread.h>

/* One 256-entry table, built on first use; a byte at a time is plenty for event files (kilobytes). */
static uint32_t crc32c_table[256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc32c_table[i] = c;
  }
}

uint32_t crc32c_update(uint32_t crc, const void *data, size_t len) {
  pthread_once(&crc32c_once, crc32c_init);
  const unsigned char *p = data;
  crc = ~crc;
  while (len--) crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}
