#include "report_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpod_error.h"

void report_journal_path(const char *run_dir, uint32_t attempt, char *buf, size_t len) {
  snprintf(buf, len, "%s/attempt-%" PRIu32 ".reports", run_dir, attempt);
}

static int write_all_(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

int report_journal_append(const char *path, uint8_t *const *data, const size_t *lens, size_t n, int durable, char *err,
                          size_t errlen) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot open: %s", path, strerror(errno));
  int status = 0;
  for (size_t i = 0; i < n && status == 0; i++) {
    uint8_t hdr[4] = {(uint8_t)lens[i], (uint8_t)(lens[i] >> 8), (uint8_t)(lens[i] >> 16), (uint8_t)(lens[i] >> 24)};
    if (lens[i] > REPORT_JOURNAL_RECORD_MAX || write_all_(fd, hdr, 4) != 0 || write_all_(fd, data[i], lens[i]) != 0)
      status = dpod_errf(err, errlen, DPOD_EIO, "%s: write failed: %s", path, strerror(errno));
  }
  if (status == 0 && durable && fsync(fd) != 0)
    status = dpod_errf(err, errlen, DPOD_EIO, "%s: fsync failed: %s", path, strerror(errno));
  close(fd);
  return status;
}

void report_journal_free_records(uint8_t **data, size_t *lens, size_t n) {
  for (size_t i = 0; data && i < n; i++) free(data[i]);
  free(data);
  free(lens);
}

int report_journal_read(const char *path, uint64_t offset, size_t max_records, uint8_t ***data_out, size_t **lens_out,
                        size_t *n_out, uint64_t *next_offset, char *err, size_t errlen) {
  *data_out = NULL;
  *lens_out = NULL;
  *n_out = 0;
  *next_offset = offset;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot open: %s", path, strerror(errno));
  }
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    close(fd);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
  }
  int status = 0;
  uint8_t **data = NULL;
  size_t *lens = NULL, n = 0, cap = 0;
  if (fseeko(f, (off_t)offset, SEEK_SET) != 0) {
    status = dpod_errf(err, errlen, DPOD_EIO, "%s: cannot seek: %s", path, strerror(errno));
    goto done;
  }
  while (n < max_records) {
    uint8_t hdr[4];
    if (fread(hdr, 1, 4, f) != 4) break; /* the end, or a torn length */
    size_t len = (size_t)hdr[0] | (size_t)hdr[1] << 8 | (size_t)hdr[2] << 16 | (size_t)hdr[3] << 24;
    if (len > REPORT_JOURNAL_RECORD_MAX) {
      status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: a record of %zu bytes at offset %" PRIu64 " (corrupt)", path,
                         len, *next_offset);
      break;
    }
    uint8_t *rec = malloc(len ? len : 1);
    if (!rec) {
      status = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
      break;
    }
    if (fread(rec, 1, len, f) != len) { /* torn by a crash: what came before stands */
      free(rec);
      break;
    }
    if (n == cap) {
      size_t nc = cap ? 2 * cap : 64;
      uint8_t **nd = realloc(data, nc * sizeof *nd);
      size_t *nl = nd ? realloc(lens, nc * sizeof *nl) : NULL;
      if (nd) data = nd;
      if (!nd || !nl) {
        free(rec);
        status = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
        break;
      }
      lens = nl;
      cap = nc;
    }
    data[n] = rec;
    lens[n++] = len;
    *next_offset += 4 + len;
  }
done:
  fclose(f);
  if (status != 0) {
    report_journal_free_records(data, lens, n);
    *next_offset = offset;
    return status;
  }
  *data_out = data;
  *lens_out = lens;
  *n_out = n;
  return 0;
}
