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

long dpod_utf8_invalid_at(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  for (long i = 0; p[i];) {
    unsigned c = p[i];
    int n;
    unsigned min, cp;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xc2 && c <= 0xdf) { n = 1; min = 0x80; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { n = 2; min = 0x800; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 3; min = 0x10000; cp = c & 0x07; }
    else return i;
    for (int k = 1; k <= n; k++) {
      if ((p[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return -1;
}
