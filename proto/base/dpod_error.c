#include "dpod_error.h"

#include <stdarg.h>
#include <stdio.h>

const char *dpod_strerror(int status) {
  switch (status) {
    case DPOD_OK: return "success";
#define DPOD_STRERROR_CASE_(name, code, msg) case DPOD_##name: return msg;
    DPOD_ERRNO_MAP(DPOD_STRERROR_CASE_)
#undef DPOD_STRERROR_CASE_
  }
  return "unknown error";
}

const char *dpod_err_name(int status) {
  switch (status) {
    case DPOD_OK: return "DPOD_OK";
#define DPOD_ERR_NAME_CASE_(name, code, msg) case DPOD_##name: return "DPOD_" #name;
    DPOD_ERRNO_MAP(DPOD_ERR_NAME_CASE_)
#undef DPOD_ERR_NAME_CASE_
  }
  return "DPOD_EUNKNOWN";
}

int dpod_errf(char *err, size_t errlen, int status, const char *fmt, ...) {
  if (err && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return status;
}
