#include "dpod_paths.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"

char *dpod_default_addr(char *buf, size_t len) {
  const char *env = getenv("DPOD_ADDR");
  const char *rt = getenv("XDG_RUNTIME_DIR");
  if (env && *env)
    snprintf(buf, len, "%s", env);
  else if (rt && *rt)
    snprintf(buf, len, "unix:%s/dpod/dpod.sock", rt);
  else
    snprintf(buf, len, "unix:/tmp/dpod-%u/dpod.sock", (unsigned)getuid());
  return buf;
}

char *dpod_default_state_dir(char *buf, size_t len) {
  const char *xdg = getenv("XDG_STATE_HOME");
  const char *home = getenv("HOME");
  if (xdg && *xdg)
    snprintf(buf, len, "%s/dpod", xdg);
  else
    snprintf(buf, len, "%s/.local/state/dpod", home && *home ? home : "/tmp");
  return buf;
}
