/* Helpers shared by the tests that compare tensors: reading a fixture tensor as float32, and
 * comparing arrays with a message that says where they differ. Header-only; each test is one binary.
 *
 * The fixtures directory comes from $DPOD_FIXTURES (ctest sets it); a missing one fails the test. */
#ifndef DPOD_TENSOR_TEST_UTIL_H
#define DPOD_TENSOR_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "safetensors.h"

#include "test_util.h"

#define tu_fixtures test_fixtures_dir()

/* "<fixtures>/<dir>/<rel>" in a static buffer, of which there are four: a call's result is valid for
 * the next three calls. */
static inline const char *tu_fixture(const char *dir, const char *rel) {
  static char buf[4][1024];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s/%s", tu_fixtures, dir, rel);
  return buf[k];
}

/* "<fixtures>/tiny-sd/<rel>" (tu_fixture's buffers). */
static inline const char *tu_path(const char *rel) { return tu_fixture("tiny-sd", rel); }

/* Reads tensor `name` of safetensors file `path` as float32; *numel receives its size. Fails the test
 * if absent. Caller frees. */
static inline float *tu_load(const char *path, const char *name, size_t *numel) {
  char err[512];
  st_file *f = NULL;
  int rc = st_open(path, &f, err, sizeof err);
  if (rc != 0) fail_msg("%s", err);
  const st_tensor *t = st_find(f, name);
  if (!t) {
    st_close(f);
    fail_msg("%s: no tensor '%s'", path, name);
  }
  float *out = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
  assert_non_null(out);
  assert_int_equal(st_to_f32(t, out), 0);
  if (numel) *numel = (size_t)t->numel;
  st_close(f);
  return out;
}

/* max |a - b| over n elements; *at receives the index of the worst one. */
static inline double tu_max_abs_diff(const float *a, const float *b, size_t n, size_t *at) {
  double worst = 0;
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (d > worst || d != d) {
      worst = d != d ? INFINITY : d;
      w = i;
    }
  }
  if (at) *at = w;
  return worst;
}

static inline void tu_assert_close(const char *what, const float *got, const float *want, size_t n, double atol) {
  size_t at = 0;
  double d = tu_max_abs_diff(got, want, n, &at);
  if (!(d <= atol))
    fail_msg("%s: max |diff| %.3g at [%zu] (got %.9g, want %.9g) exceeds %.3g", what, d, at, got[at], want[at], atol);
}

static inline char *tu_read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  assert_non_null(s);
  assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
  s[n] = 0;
  fclose(f);
  return s;
}

#endif
