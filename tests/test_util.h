/* What every C test here needs besides cmocka: where the reference fixtures are, and a private temporary
 * directory. Header-only; include after <cmocka.h>.
 *
 * Fixtures come from $DPOD_FIXTURES, which ctest sets for every case; a test that needs them and finds
 * them missing fails (it is never skipped). Temporary directories go under $TMPDIR (or /tmp). */
#ifndef DPOD_TESTS_TEST_UTIL_H
#define DPOD_TESTS_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* The fixtures directory; fails the running test if $DPOD_FIXTURES is unset or not a directory. */
static inline const char *test_fixtures_dir(void) {
  const char *d = getenv("DPOD_FIXTURES");
  struct stat st;
  if (!d || !*d) fail_msg("DPOD_FIXTURES is not set: run the test through ctest");
  if (stat(d, &st) != 0 || !S_ISDIR(st.st_mode)) fail_msg("DPOD_FIXTURES=%s is not a directory", d);
  return d;
}

/* Creates "$TMPDIR/<prefix>-XXXXXX" into buf. Returns 0, or -1 if it cannot (buf too short, mkdtemp). */
static inline int test_mkdtemp(char *buf, size_t len, const char *prefix) {
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp) tmp = "/tmp";
  int n = snprintf(buf, len, "%s/%s-XXXXXX", tmp, prefix);
  if (n < 0 || (size_t)n >= len) return -1;
  return mkdtemp(buf) ? 0 : -1;
}

/* Removes dir and everything under it (a test's temporary directory). Returns 0, or -1 if rm failed. */
static inline int test_rmtree(const char *dir) {
  char cmd[4200];
  int n = snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (n < 0 || (size_t)n >= sizeof cmd) return -1;
  return system(cmd) == 0 ? 0 : -1;
}

#endif
