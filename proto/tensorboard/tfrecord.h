/* TFRecord framing, the container of TensorBoard's event files: each record is
 *   uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes | length bytes of data |
 *   uint32 masked CRC-32C of the data.
 * A file is records back to back; a writer that died mid-record leaves a torn last record, which
 * tfrecord_next() reports as such so that the next writer can cut it off. */
#ifndef DPOD_TFRECORD_H
#define DPOD_TFRECORD_H

#include <stddef.h>
#include <stdint.h>

#define TFRECORD_OVERHEAD 16 /* bytes of framing around each record's data */

/* Writes the framed record of `len` bytes of `data` into `out`, which holds len + TFRECORD_OVERHEAD
 * bytes. Returns the bytes written (len + TFRECORD_OVERHEAD). */
size_t tfrecord_frame(const void *data, size_t len, unsigned char *out);

typedef enum {
  TFRECORD_OK = 0,     /* a whole record whose CRCs match */
  TFRECORD_END = 1,    /* no bytes left */
  TFRECORD_TORN = 2,   /* the bytes left end inside a record (its header or its data) */
  TFRECORD_CORRUPT = 3 /* a CRC does not match, or the length exceeds max_len */
} tfrecord_status;

const char *tfrecord_status_name(tfrecord_status s);

/* Reads the record at buf[*off] (buf holds `len` bytes). On TFRECORD_OK, *data and *data_len point at its
 * data inside buf and *off moves past it; otherwise *off stays where the bad record starts. A length above
 * max_len is TFRECORD_CORRUPT without looking further (a garbled length must not claim the file). */
tfrecord_status tfrecord_next(const unsigned char *buf, size_t len, size_t *off, size_t max_len,
                              const unsigned char **data, size_t *data_len);

#endif
