/* What the shim's tests share beyond tensor_test_util.h: a fixture's UNet built from its config.json with
 * the given weights, on two threads. Header-only; each test is one binary. */
#ifndef DPOD_SHIM_TEST_UTIL_H
#define DPOD_SHIM_TEST_UTIL_H

#include "tensor_test_util.h"
#include "unet_shim.h"

/* Fixture `dir`'s UNet (its config.json) with the weights at `weights` (a path; NULL: the random init).
 * Fails the test on any error. Caller frees with unet_free. */
static inline unet_t stu_fixture_model(const char *dir, const char *weights) {
  char err[512];
  unet_t m = NULL;
  unet_params p = unet_default_params();
  p.threads = 2;
  char *cfg = tu_read_text(tu_fixture(dir, "config.json"));
  int rc = unet_create(cfg, &p, &m, err, sizeof err);
  free(cfg);
  if (rc != 0) fail_msg("unet_create: %s", err);
  if (weights && unet_load_weights(m, weights) != 0) fail_msg("%s", unet_last_error(m));
  return m;
}

#endif
