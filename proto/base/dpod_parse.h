/* Text checked before it is trusted. Whole numbers from text: no sign where none belongs, no blanks, no trailing characters, no
 * silent wrap-around (strtoull accepts all four). */
#ifndef DPOD_PARSE_H
#define DPOD_PARSE_H

#include <stdint.h>

/* Decimal digits only, at most `max`. Returns 0, -1 when `text` is not a whole number >= 0, -2 when it
 * is above `max`. */
int dpod_parse_u64(const char *text, uint64_t max, uint64_t *out);
/* An optional sign and decimal digits, in [min, max]. Returns 0, -1 (not a whole number) or -2 (range). */
int dpod_parse_i64(const char *text, int64_t min, int64_t max, int64_t *out);

/* Checks that `s` (NUL-terminated) is well-formed UTF-8: no overlong forms, no surrogates, nothing above
 * U+10FFFF. Returns -1 if it is, else the offset of the first byte that is not. */
long dpod_utf8_invalid_at(const char *s);

#endif
