#include "rpc_addr.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dpod_error.h"

const char *rpc_unix_path(const char *addr) {
  if (strncmp(addr, "unix://", 7) == 0) return addr + 7;
  if (strncmp(addr, "unix:", 5) == 0) return addr + 5;
  return NULL;
}

int rpc_addr_for_socket(const char *addr, char *out, size_t outlen, int *dir_fd, char *err, size_t errlen) {
  *dir_fd = -1;
  const char *path = rpc_unix_path(addr);
  if (!path || strlen(path) <= RPC_UNIX_PATH_MAX) {
    if (snprintf(out, outlen, "%s", addr) >= (int)outlen)
      return dpod_errf(err, errlen, DPOD_EINVAL, "address too long: %.64s...", addr);
    return 0;
  }
  const char *slash = strrchr(path, '/');
  if (!slash || strlen(slash + 1) == 0 || strlen(slash + 1) > RPC_UNIX_PATH_MAX - 32)
    return dpod_errf(err, errlen, DPOD_EINVAL, "unix socket path too long and not shortenable: %.64s...", path);
  char dir[PATH_MAX];
  if ((size_t)(slash - path) >= sizeof dir) return dpod_errf(err, errlen, DPOD_EINVAL, "path too long: %.64s...", path);
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  int fd = open(slash == path ? "/" : dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot open: %s", dir, strerror(errno));
  if (snprintf(out, outlen, "unix:/proc/self/fd/%d/%s", fd, slash + 1) >= (int)outlen) {
    close(fd);
    return dpod_errf(err, errlen, DPOD_EINVAL, "address too long");
  }
  *dir_fd = fd;
  return 0;
}
