/* Status codes shared by every dpod component.
 *
 * Functions return 0 on success or one of these negative codes; one X-macro table generates the enum,
 * dpod_strerror() and dpod_err_name(), in the manner of libuv. Long-lived handles additionally keep a
 * last-error string with the specifics (which key, which tensor, which byte offset). */
#ifndef DPOD_ERROR_H
#define DPOD_ERROR_H

#include <stddef.h>

#define DPOD_ERRNO_MAP(X)                                              \
  X(EINVAL, -1, "invalid argument")                                    \
  X(ENOMEM, -2, "out of memory")                                       \
  X(EIO, -3, "input/output error")                                     \
  X(ENOENT, -4, "no such file or object")                              \
  X(EFORMAT, -5, "malformed file or message")                          \
  X(ESHAPE, -6, "tensor shape or dtype mismatch")                      \
  X(EUNSUPPORTED, -7, "unsupported configuration")                     \
  X(ERPC, -8, "remote procedure call failed")                          \
  X(ETIMEDOUT, -9, "timed out")                                        \
  X(ESTATE, -10, "operation not allowed in the current state")         \
  X(EAUTH, -11, "authentication failed")                               \
  X(ETORCH, -12, "libtorch error")                                     \
  X(EMPI, -13, "MPI error")                                            \
  X(EDB, -14, "database error")                                        \
  X(ECANCELED, -15, "operation cancelled")                             \
  X(ENUMERIC, -16, "non-finite value")                                \
  X(EACCESS, -17, "permission denied")                                 \
  X(EUNAVAILABLE, -18, "service unavailable")                          \
  X(EINTERNAL, -19, "internal error")

typedef enum {
  DPOD_OK = 0,
#define DPOD_ERR_ENUM_(name, code, msg) DPOD_##name = (code),
  DPOD_ERRNO_MAP(DPOD_ERR_ENUM_)
#undef DPOD_ERR_ENUM_
} dpod_status;

/* Human-readable message for a status; never NULL, static storage. */
const char *dpod_strerror(int status);
/* The symbolic name ("DPOD_ESHAPE"); never NULL, static storage. */
const char *dpod_err_name(int status);

/* Formats a message into err (if err is not NULL and errlen > 0; a long message is cut to fit) and
 * returns `status`, so that failures read `return dpod_errf(err, errlen, DPOD_EIO, "%s: ...", path);`. */
int dpod_errf(char *err, size_t errlen, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
