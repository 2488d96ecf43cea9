#include "tb_file.h"

#include <stdlib.h>

#include "dpod_error.h"
#include "dpod_file.h"

int tb_file_scan(const char *path, tb_file_info *out, char *err, size_t errlen) {
  *out = (tb_file_info){.tail = TFRECORD_END};
  char *buf = NULL;
  size_t len = 0;
  int status = dpod_read_file(path, TB_FILE_MAX, &buf, &len, err, errlen);
  if (status != 0) return status;
  const unsigned char *p = (const unsigned char *)buf;
  size_t off = 0;
  out->file_len = len;
  for (;;) {
    const unsigned char *data;
    size_t n;
    tfrecord_status st = tfrecord_next(p, len, &off, TB_RECORD_MAX, &data, &n);
    if (st != TFRECORD_OK) {
      out->tail = st;
      break;
    }
    Dpod__Tb__Event *ev = dpod__tb__event__unpack(NULL, n, data);
    if (!ev) {
      off -= n + TFRECORD_OVERHEAD;
      out->tail = TFRECORD_CORRUPT;
      break;
    }
    out->records++;
    if (ev->has_dpod_seq && ev->dpod_seq > out->max_seq) out->max_seq = ev->dpod_seq;
    if (ev->what_case == DPOD__TB__EVENT__WHAT_SUMMARY && ev->has_step && ev->step > out->max_step)
      out->max_step = ev->step;
    dpod__tb__event__free_unpacked(ev, NULL);
  }
  out->good_len = off;
  free(buf);
  return 0;
}

size_t tb_file_frame_event(const Dpod__Tb__Event *ev, unsigned char *buf, size_t cap) {
  size_t n = dpod__tb__event__get_packed_size(ev);
  if (n > TB_RECORD_MAX || n + TFRECORD_OVERHEAD > cap) return 0;
  dpod__tb__event__pack(ev, buf + 12);
  /* Framed in place: tfrecord_frame copies data that is already where it belongs. */
  return tfrecord_frame(buf + 12, n, buf);
}
