/* Files and directories, the way every dpod program handles them: whole-file reads with a size bound,
 * one atomic write with one durability rule, mkdir -p that can insist on a private directory, and the
 * checks that keep a path where it belongs.
 *
 * Every function returns 0 or a negative dpod_status, and on failure writes into err (may be NULL) a
 * message that names the file and the problem: never the file's contents. */
#ifndef DPOD_FILE_H
#define DPOD_FILE_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Reads the regular file `path` whole into a malloc'd, NUL-terminated buffer (*out, owned by the caller;
 * *len, may be NULL, receives its length without the NUL). A file larger than max_bytes (0: no limit),
 * a directory, a FIFO or a device is refused without being read. DPOD_ENOENT if it does not exist. */
int dpod_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char *err, size_t errlen);

enum {
  /* The caller fsyncs the directory itself once it has written all its files (a checkpoint does). */
  DPOD_WRITE_NO_DIR_SYNC = 1 << 0,
  /* Mode 0600 instead of 0644 (before the umask): the file holds something only its owner may read. */
  DPOD_WRITE_PRIVATE = 1 << 1,
};

/* Replaces `path` by `len` bytes of `data` so that a reader, or a crash at any point, sees the old file
 * or the new one and nothing in between: write PATH.tmp, fsync it, rename it over PATH, fsync the
 * directory (unless DPOD_WRITE_NO_DIR_SYNC). */
int dpod_write_file_atomic(const char *path, const void *data, size_t len, int flags, char *err, size_t errlen);

/* The same, for a file written in pieces (a weights file):
 *   dpod_atomic_file f; dpod_atomic_open(&f, path, flags, ...); dpod_atomic_write(&f, ...)...;
 *   dpod_atomic_commit(&f, ...);
 * On any failure, or to give up, dpod_atomic_abort(&f) removes the temporary file (it does nothing after
 * a commit, or after an open that failed). */
typedef struct {
  int fd;
  int flags;
  char path[4096], tmp[4096];
} dpod_atomic_file;

int dpod_atomic_open(dpod_atomic_file *f, const char *path, int flags, char *err, size_t errlen);
int dpod_atomic_write(dpod_atomic_file *f, const void *data, size_t len, char *err, size_t errlen);
int dpod_atomic_commit(dpod_atomic_file *f, char *err, size_t errlen);
void dpod_atomic_abort(dpod_atomic_file *f);

/* fsyncs a directory, so that the renames and creations in it are durable. */
int dpod_fsync_dir(const char *dir, char *err, size_t errlen);

enum {
  /* The directory (the last component) must be owned by this user and not writable by group or others,
   * whether dpod created it or found it; its mode is made exactly `mode` when dpod creates it, whatever
   * the umask. DPOD_EACCESS otherwise. */
  DPOD_MKDIRS_PRIVATE = 1 << 0,
};

/* mkdir -p: creates each missing component of `path` with `mode` (subject to the umask, except as
 * DPOD_MKDIRS_PRIVATE says). */
int dpod_mkdirs(const char *path, mode_t mode, int flags, char *err, size_t errlen);

/* Whether `path` lies inside directory `dir` once both are resolved (symbolic links followed, `..`
 * removed): 1 inside (or `dir` itself), 0 outside, or a negative status when either cannot be resolved. */
int dpod_path_inside(const char *path, const char *dir);

/* Opens `path` read-only without following a symbolic link in its last component, and checks that it
 * is a regular file. Returns the descriptor (>= 0, close-on-exec) or a negative status. */
int dpod_open_regular_nofollow(const char *path, char *err, size_t errlen);

/* The name of the network or cluster file system with statfs magic `f_type` ("nfs", "lustre", ...), or
 * NULL for a local one. SQLite's locking is not to be trusted on those. */
const char *dpod_network_fs_name(unsigned long f_type);
/* The same for the file system `path` is on: NULL when it is local (or cannot be asked). */
const char *dpod_path_network_fs(const char *path);

#ifdef __cplusplus
}
#endif

#endif
