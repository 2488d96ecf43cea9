#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"

/* Makes a new token file: 0, 1 if one exists already (another dpod made it first), or a status. */
static int auth_token_create(const char *path, char *token, char *err, size_t errlen) {
  unsigned char raw[AUTH_TOKEN_HEX_LEN / 2];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
    return dpod_errf(err, errlen, DPOD_EIO, "cannot make a token: %s", strerror(errno));
  for (size_t i = 0; i < sizeof raw; i++) snprintf(token + 2 * i, 3, "%02x", raw[i]);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) return 1;
  if (fd < 0) return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot create: %s", path, strerror(errno));
  size_t n = strlen(token);
  int ok = write(fd, token, n) == (ssize_t)n && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
  int saved = errno;
  close(fd);
  if (!ok) {
    unlink(path);
    return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot write: %s", path, strerror(saved));
  }
  return 0;
}

int auth_token_load(const char *path, char *token, int *created, char *err, size_t errlen) {
  *created = 0;
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0 && errno == ENOENT) {
    int rc = auth_token_create(path, token, err, errlen);
    if (rc == 0) {
      *created = 1;
      return 0;
    }
    if (rc < 0) return rc;
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  }
  if (fd < 0) {
    if (errno == ELOOP) return dpod_errf(err, errlen, DPOD_EACCESS, "%s: is a symbolic link", path);
    return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot open: %s", path, strerror(errno));
  }
  struct stat st;
  int rc = 0;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = dpod_errf(err, errlen, DPOD_EINVAL, "%s: not a regular file", path);
  } else if (st.st_uid != geteuid()) {
    rc = dpod_errf(err, errlen, DPOD_EACCESS, "%s: owned by uid %u, not by this user", path, (unsigned)st.st_uid);
  } else if (st.st_mode & 077) {
    rc = dpod_errf(err, errlen, DPOD_EACCESS, "%s: readable by others (mode %04o; chmod 600 it)", path,
                   (unsigned)(st.st_mode & 07777));
  } else {
    ssize_t n = read(fd, token, AUTH_TOKEN_MAX + 1);
    if (n < 0) n = 0;
    while (n > 0 && (token[n - 1] == '\n' || token[n - 1] == '\r')) n--;
    token[n] = '\0';
    if (n > AUTH_TOKEN_MAX || n < AUTH_TOKEN_MIN) {
      rc = dpod_errf(err, errlen, DPOD_EINVAL, "%s: a token must be %d to %d characters on one line", path,
                     AUTH_TOKEN_MIN, AUTH_TOKEN_MAX);
    } else {
      for (ssize_t i = 0; i < n && rc == 0; i++)
        if (token[i] <= ' ' || token[i] == 0x7f)
          rc = dpod_errf(err, errlen, DPOD_EINVAL, "%s: a token must be printable, without blanks", path);
    }
    if (rc) memset(token, 0, AUTH_TOKEN_MAX + 1);
  }
  close(fd);
  return rc;
}

int auth_addr_is_loopback(const char *addr) {
  if (strncmp(addr, "ipv4:", 5) == 0 || strncmp(addr, "ipv6:", 5) == 0 || strncmp(addr, "dns:", 4) == 0)
    addr = strchr(addr, ':') + 1;
  char host[256];
  const char *end;
  if (addr[0] == '[') {
    addr++;
    end = strchr(addr, ']');
  } else {
    end = strrchr(addr, ':');
  }
  if (!end || end == addr || (size_t)(end - addr) >= sizeof host) return 0;
  memcpy(host, addr, (size_t)(end - addr));
  host[end - addr] = '\0';
  if (strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0) return 1;
  unsigned a, b, c, d;
  char extra;
  return sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &extra) == 4 && a == 127 && b < 256 && c < 256 && d < 256;
}
