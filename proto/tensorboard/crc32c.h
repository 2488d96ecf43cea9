/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of TFRecord framing, and
 * TensorFlow's "masked" form of it (a CRC stored next to data that itself holds CRCs). */
#ifndef DPOD_CRC32C_H
#define DPOD_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues `crc` (0 to start) over `len` bytes: crc32c(crc32c(0, a), b) == crc32c of a then b.
 * crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t crc32c_update(uint32_t crc, const void *data, size_t len);
static inline uint32_t crc32c(const void *data, size_t len) { return crc32c_update(0, data, len); }

/* ((crc >> 15) | (crc << 17)) + 0xa282ead8, as TensorFlow's crc32c::Mask. */
static inline uint32_t crc32c_mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

#endif
