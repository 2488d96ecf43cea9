#include "run_dir.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"

static int run_dir_errno_; /* the first failure nftw's callback met; nftw gives the callback no context */
static char run_dir_failed_[PATH_MAX];

static int run_dir_unlink_(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  int rc = type == FTW_DP ? rmdir(path) : unlink(path);
  if (rc != 0 && errno != ENOENT && !run_dir_errno_) {
    run_dir_errno_ = errno;
    snprintf(run_dir_failed_, sizeof run_dir_failed_, "%s", path);
  }
  return 0; /* go on: remove what can be removed */
}

/* Resolves run_dir into dir (PATH_MAX) and checks it. 1: it does not exist (nothing to remove). */
static int run_dir_resolve_(const char *jobs_dir, const char *run_dir, char *dir, char *err, size_t errlen) {
  char jobs[PATH_MAX];
  if (!run_dir || !*run_dir) return 1;
  if (!realpath(run_dir, dir)) {
    if (errno == ENOENT) return 1;
    return dpod_errf(err, errlen, DPOD_EIO, "%s: %s", run_dir, strerror(errno));
  }
  int inside = dpod_path_inside(dir, jobs_dir);
  if (inside < 0) return dpod_errf(err, errlen, DPOD_EIO, "%s: cannot resolve dpod's jobs directory", jobs_dir);
  if (!inside || !realpath(jobs_dir, jobs) || strcmp(dir, jobs) == 0)
    return dpod_errf(err, errlen, DPOD_EACCESS, "run directory %s is not inside dpod's jobs directory %s; refused",
                     dir, jobs_dir);
  return 0;
}

int run_dir_check(const char *jobs_dir, const char *run_dir, char *err, size_t errlen) {
  char dir[PATH_MAX];
  int rc = run_dir_resolve_(jobs_dir, run_dir, dir, err, errlen);
  return rc > 0 ? 0 : rc;
}

int run_dir_remove(const char *jobs_dir, const char *run_dir, char *err, size_t errlen) {
  char dir[PATH_MAX];
  int rc = run_dir_resolve_(jobs_dir, run_dir, dir, err, errlen);
  if (rc) return rc > 0 ? 0 : rc;
  run_dir_errno_ = 0;
  /* FTW_PHYS: a link inside is removed, never followed; FTW_MOUNT: no other file system is entered. */
  if (nftw(dir, run_dir_unlink_, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0 && !run_dir_errno_) {
    run_dir_errno_ = errno;
    snprintf(run_dir_failed_, sizeof run_dir_failed_, "%s", dir);
  }
  if (run_dir_errno_)
    return dpod_errf(err, errlen, DPOD_EIO, "cannot remove %s: %s", run_dir_failed_, strerror(run_dir_errno_));
  return 0;
}
