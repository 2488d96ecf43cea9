/* Event files as dpod writes them: the first record, and reading back a file written before (by this
 * dpod or one that died) to find where to go on. */
#ifndef DPOD_TB_FILE_H
#define DPOD_TB_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "tb_event.pb-c.h"
#include "tfrecord.h"

#define TB_FILE_VERSION "brain.Event:2"
#define TB_RECORD_MAX (1u << 20)     /* the longest record dpod writes or accepts when reading back */
#define TB_FILE_MAX ((size_t)1 << 30) /* the largest event file read back */

/* What a file written before holds. */
typedef struct {
  size_t good_len;       /* bytes of whole records, CRCs checked, from the start */
  size_t file_len;
  uint64_t records;      /* whole records, the file_version one included */
  uint64_t max_seq;      /* the largest Event.dpod_seq; 0: none */
  int64_t max_step;      /* the largest Event.step of a summary; 0: none */
  tfrecord_status tail;  /* TFRECORD_END when good_len == file_len, else what lies at good_len */
} tb_file_info;

/* Reads the event file `path` and fills *out. A torn or corrupt record, or one that is not an Event,
 * ends the good part (out->tail says which); that is not an error. Errors: the file cannot be read, or
 * is larger than TB_FILE_MAX (err names the file). */
int tb_file_scan(const char *path, tb_file_info *out, char *err, size_t errlen);

/* Packs `ev` framed as a record into buf (cap bytes). Returns the bytes written, or 0 if it does not fit
 * (or is longer than TB_RECORD_MAX). */
size_t tb_file_frame_event(const Dpod__Tb__Event *ev, unsigned char *buf, size_t cap);

#endif
