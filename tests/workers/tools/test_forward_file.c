/* Compares tensor `sample` of two safetensors files within an absolute tolerance:
 *   test_forward_file GOT.safetensors WANT.safetensors [ATOL]
 * Used by the dpo-tool forward test; exits non-zero, saying where, when they differ. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

static float *load(const char *path, int64_t *numel, int64_t shape[ST_MAX_DIMS], int *ndim) {
  char err[512];
  st_file *f = NULL;
  if (st_open(path, &f, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return NULL;
  }
  const st_tensor *t = st_find(f, "sample");
  if (!t) {
    fprintf(stderr, "%s: no tensor 'sample'\n", path);
    st_close(f);
    return NULL;
  }
  float *v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
  if (v) st_to_f32(t, v);
  *numel = t->numel;
  *ndim = t->ndim;
  memcpy(shape, t->shape, sizeof t->shape);
  st_close(f);
  return v;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_forward_file GOT WANT [ATOL]\n");
    return 2;
  }
  double atol = argc > 3 ? atof(argv[3]) : 1e-5;
  int64_t na, nb, sa[ST_MAX_DIMS], sb[ST_MAX_DIMS];
  int da, db;
  float *a = load(argv[1], &na, sa, &da), *b = load(argv[2], &nb, sb, &db);
  if (!a || !b) return 1;
  if (da != db || memcmp(sa, sb, (size_t)da * sizeof(int64_t)) != 0 || na == 0) {
    fprintf(stderr, "shapes differ (or are empty)\n");
    return 1;
  }
  double worst = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < na; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  printf("max |diff| %.3g at [%lld] over %lld values (atol %.3g)\n", worst, (long long)at, (long long)na, atol);
  free(a);
  free(b);
  return worst <= atol ? 0 : 1;
}
