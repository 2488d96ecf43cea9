#include "dpod_parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>

int dpod_parse_u64(const char *text, uint64_t max, uint64_t *out) {
  const char *p = text;
  if (!isdigit((unsigned char)*p)) return -1;  /* no sign, no blanks, no empty string */
  errno = 0;
  char *end;
  unsigned long long v = strtoull(p, &end, 10);
  if (*end) return -1;
  if (errno == ERANGE || v > max) return -2;
  *out = v;
  return 0;
}

int dpod_parse_i64(const char *text, int64_t min, int64_t max, int64_t *out) {
  const char *p = text;
  if (*p == '-' || *p == '+') p++;
  if (!isdigit((unsigned char)*p)) return -1;
  errno = 0;
  char *end;
  long long v = strtoll(text, &end, 10);
  if (*end) return -1;
  if (errno == ERANGE || v < min || v > max) return -2;
  *out = v;
  return 0;
}
