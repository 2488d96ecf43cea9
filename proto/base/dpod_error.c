#include "dpod_error.h"

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
