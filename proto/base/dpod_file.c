#include "dpod_file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "dpod_error.h"

static int file_status_(int errnum) {
  if (errnum == ENOENT || errnum == ENOTDIR) return DPOD_ENOENT;
  if (errnum == EACCES || errnum == EPERM) return DPOD_EACCESS;
  if (errnum == ENOMEM) return DPOD_ENOMEM;
  return DPOD_EIO;
}

int dpod_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char *err, size_t errlen) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return dpod_errf(err, errlen, file_status_(errno), "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  char *buf = NULL;
  int status;
  if (fstat(fd, &st) != 0) {
    status = dpod_errf(err, errlen, DPOD_EIO, "%s: cannot stat: %s", path, strerror(errno));
    goto fail;
  }
  /* A FIFO or a device would block or never end: only regular files are read. */
  if (!S_ISREG(st.st_mode)) {
    status = dpod_errf(err, errlen, DPOD_EINVAL, "%s: not a regular file", path);
    goto fail;
  }
  if (max_bytes && (uint64_t)st.st_size > max_bytes) {
    status = dpod_errf(err, errlen, DPOD_EINVAL, "%s: %lld bytes, more than the %zu allowed", path,
                       (long long)st.st_size, max_bytes);
    goto fail;
  }
  size_t cap = (size_t)st.st_size + 1, n = 0;
  if (!(buf = malloc(cap))) {
    status = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  for (;;) {
    if (n + 1 == cap) { /* the file grew while we read it */
      if (max_bytes && n >= max_bytes) {
        status = dpod_errf(err, errlen, DPOD_EINVAL, "%s: more than the %zu bytes allowed", path, max_bytes);
        goto fail;
      }
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        status = dpod_errf(err, errlen, DPOD_ENOMEM, "%s: out of memory", path);
        goto fail;
      }
      buf = nb;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + n, cap - 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      status = dpod_errf(err, errlen, DPOD_EIO, "%s: read failed: %s", path, strerror(errno));
      goto fail;
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  close(fd);
  buf[n] = '\0';
  *out = buf;
  if (len) *len = n;
  return 0;
fail:
  free(buf);
  close(fd);
  return status;
}

static int write_all_(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

int dpod_fsync_dir(const char *dir, char *err, size_t errlen) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return dpod_errf(err, errlen, file_status_(errno), "%s: cannot open: %s", dir, strerror(errno));
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  if (rc != 0) return dpod_errf(err, errlen, DPOD_EIO, "%s: fsync failed: %s", dir, strerror(e));
  return 0;
}


/* The directory part of `path` into buf: "." for a bare name, "/" for a file in the root. */
static void parent_dir_(const char *path, char *buf, size_t len) {
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(buf, len, ".");
  else if (slash == path) snprintf(buf, len, "/");
  else snprintf(buf, len, "%.*s", (int)(slash - path), path);
}

int dpod_atomic_open(dpod_atomic_file *f, const char *path, int flags, char *err, size_t errlen) {
  f->fd = -1;
  f->flags = flags;
  size_t n = strlen(path);
  if (n + sizeof ".tmp" > sizeof f->tmp) return dpod_errf(err, errlen, DPOD_EINVAL, "%.64s...: path too long", path);
  memcpy(f->path, path, n + 1);
  memcpy(f->tmp, path, n);
  memcpy(f->tmp + n, ".tmp", sizeof ".tmp");
  mode_t mode = (flags & DPOD_WRITE_PRIVATE) ? 0600 : 0644;
  f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
  if (f->fd < 0) return dpod_errf(err, errlen, file_status_(errno), "%s: cannot create: %s", f->tmp, strerror(errno));
  return 0;
}

int dpod_atomic_write(dpod_atomic_file *f, const void *data, size_t len, char *err, size_t errlen) {
  if (f->fd < 0) return dpod_errf(err, errlen, DPOD_ESTATE, "%s: not open", f->tmp);
  if (write_all_(f->fd, data, len) != 0)
    return dpod_errf(err, errlen, DPOD_EIO, "%s: write failed: %s", f->tmp, strerror(errno));
  return 0;
}

int dpod_atomic_commit(dpod_atomic_file *f, char *err, size_t errlen) {
  if (f->fd < 0) return dpod_errf(err, errlen, DPOD_ESTATE, "%s: not open", f->tmp);
  int fd = f->fd;
  f->fd = -1;
  if (fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(f->tmp);
    return dpod_errf(err, errlen, DPOD_EIO, "%s: fsync failed: %s", f->tmp, strerror(e));
  }
  if (close(fd) != 0 || rename(f->tmp, f->path) != 0) {
    int e = errno;
    unlink(f->tmp);
    return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot write: %s", f->path, strerror(e));
  }
  if (f->flags & DPOD_WRITE_NO_DIR_SYNC) return 0;
  char dir[PATH_MAX];
  parent_dir_(f->path, dir, sizeof dir);
  return dpod_fsync_dir(dir, err, errlen);
}

void dpod_atomic_abort(dpod_atomic_file *f) {
  if (f->fd < 0) return;
  close(f->fd);
  f->fd = -1;
  unlink(f->tmp);
}

int dpod_write_file_atomic(const char *path, const void *data, size_t len, int flags, char *err, size_t errlen) {
  dpod_atomic_file f;
  int status = dpod_atomic_open(&f, path, flags, err, errlen);
  if (status == 0) status = dpod_atomic_write(&f, data, len, err, errlen);
  if (status == 0) return dpod_atomic_commit(&f, err, errlen);
  dpod_atomic_abort(&f);
  return status;
}

/* The last component of a private directory: ours, and nobody else may write into it. */
static int check_private_(const char *path, char *err, size_t errlen) {
  struct stat st;
  if (lstat(path, &st) != 0) return dpod_errf(err, errlen, file_status_(errno), "%s: %s", path, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return dpod_errf(err, errlen, DPOD_EACCESS, "%s: not a directory", path);
  if (st.st_uid != geteuid())
    return dpod_errf(err, errlen, DPOD_EACCESS, "%s: owned by uid %u, not by this user (uid %u)", path,
                     (unsigned)st.st_uid, (unsigned)geteuid());
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return dpod_errf(err, errlen, DPOD_EACCESS, "%s: writable by %s (mode %04o)", path,
                     (st.st_mode & S_IWOTH) ? "others" : "its group", (unsigned)(st.st_mode & 07777));
  return 0;
}

int dpod_mkdirs(const char *path, mode_t mode, int flags, char *err, size_t errlen) {
  char tmp[PATH_MAX];
  size_t n = strlen(path);
  if (n == 0) return dpod_errf(err, errlen, DPOD_EINVAL, "empty directory path");
  if (n >= sizeof tmp) return dpod_errf(err, errlen, DPOD_EINVAL, "%.64s...: path too long", path);
  memcpy(tmp, path, n + 1);
  while (n > 1 && tmp[n - 1] == '/') tmp[--n] = '\0';
  int created_last = 0;
  for (char *p = tmp + 1;; p++) {
    int last = *p == '\0';
    if (!last && *p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, mode) == 0) {
      created_last = last;
    } else if (errno != EEXIST) {
      return dpod_errf(err, errlen, file_status_(errno), "%s: cannot create: %s", tmp, strerror(errno));
    }
    if (last) break;
    *p = '/';
  }
  if (!(flags & DPOD_MKDIRS_PRIVATE)) return 0;
  /* mkdir applied the umask; a private directory gets exactly `mode`. */
  if (created_last && chmod(tmp, mode) != 0)
    return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot set its mode: %s", tmp, strerror(errno));
  return check_private_(tmp, err, errlen);
}

int dpod_path_inside(const char *path, const char *dir) {
  char rp[PATH_MAX], rd[PATH_MAX];
  if (!realpath(path, rp) || !realpath(dir, rd)) return file_status_(errno);
  size_t n = strlen(rd);
  if (n == 1) return 1; /* everything is inside "/" */
  return strncmp(rp, rd, n) == 0 && (rp[n] == '\0' || rp[n] == '/');
}

int dpod_open_regular_nofollow(const char *path, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ELOOP) return dpod_errf(err, errlen, DPOD_EACCESS, "%s: is a symbolic link", path);
    return dpod_errf(err, errlen, file_status_(errno), "%s: cannot open: %s", path, strerror(errno));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return dpod_errf(err, errlen, DPOD_EINVAL, "%s: not a regular file", path);
  }
  /* Reads of a regular file never block; clear O_NONBLOCK for whoever reads it next. */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

const char *dpod_network_fs_name(unsigned long f_type) {
  static const struct {
    unsigned long magic;
    const char *name;
  } fs[] = {
      {0x6969, "nfs"},           {0x517b, "smb"},          {0xff534d42, "cifs"},   {0xfe534d42, "smb2"},
      {0x0bd00bd0, "lustre"},    {0x47504653, "gpfs"},     {0x00c36400, "ceph"},   {0x19830326, "beegfs"},
      {0x5346414f, "afs"},       {0x01021997, "9p"},       {0x65735546, "fuse"},   {0x20030528, "orangefs"},
      {0x013111a8, "ibrix"},     {0x73757245, "coda"},     {0x564c, "ncp"},        {0xaad7aaea, "panfs"},
  };
  for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
    if (fs[i].magic == (f_type & 0xffffffffUL)) return fs[i].name;
  return NULL;
}

const char *dpod_path_network_fs(const char *path) {
  struct statfs st;
  if (statfs(path, &st) != 0) return NULL;
  return dpod_network_fs_name((unsigned long)st.f_type);
}
