#include "fuzz_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpod_log.h"

static char scratch[4096];

static int remove_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb;
  (void)type;
  if (ftw->level > 0) remove(path);
  return 0;
}

void fuzz_clear_dir(const char *dir) {
  /* FTW_DEPTH: children before their directory; the top (level 0) is kept. */
  nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void remove_scratch(void) {
  fuzz_clear_dir(scratch);
  rmdir(scratch);
}

const char *fuzz_scratch_dir(void) {
  if (scratch[0]) return scratch;
  const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
  if (!tmp || !*tmp) tmp = "/tmp";
  snprintf(scratch, sizeof scratch, "%s/dpod-fuzz-XXXXXX", tmp);
  if (!mkdtemp(scratch)) {
    perror("fuzz: mkdtemp");
    abort();
  }
  atexit(remove_scratch);
  return scratch;
}

void fuzz_write_file(const char *dir, const char *name, const uint8_t *data, size_t len) {
  char path[8192];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    perror(path);
    abort();
  }
  while (len > 0) {
    ssize_t k = write(fd, data, len);
    if (k <= 0) {
      perror(path);
      abort();
    }
    data += k;
    len -= (size_t)k;
  }
  close(fd);
}

size_t fuzz_write_parts(const char *dir, const uint8_t *data, size_t size, const char *const *names, size_t n) {
  const size_t seplen = sizeof FUZZ_SEP - 1;
  size_t i = 0;
  while (i < n) {
    const uint8_t *end = memmem(data, size, FUZZ_SEP, seplen);
    size_t len = end ? (size_t)(end - data) : size;
    fuzz_write_file(dir, names[i++], data, len);
    if (!end) break;
    data = end + seplen;
    size -= len + seplen;
  }
  return i;
}

void fuzz_quiet_logs(void) { dpod_log_init("fuzz", DPOD_LOG_ERROR); }

int fuzz_note(const char *what, int rc, const char *err) {
  static int verbose = -1;
  if (verbose < 0) verbose = getenv("DPOD_FUZZ_VERBOSE") != NULL;
  if (verbose) fprintf(stderr, "%s: %s\n", what, rc == 0 ? "accepted" : err);
  return rc;
}
