/* optimizer.safetensors (ckpt_write_optimizer / ckpt_read_optimizer): both optimizers' state round trips
 * bit for bit, a file written before format_version reads as version 1, and every mismatch is refused by
 * name with nothing written to the caller's buffers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_util.h"

#include "cmocka_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "safetensors.h"

static char dir[256];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(dir, sizeof dir, "dpod-ckpt-optim");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(dir);
}

static void optimizer_state_round_trips_for_adamw_and_adafactor(void **state) {
  (void)state;
  float m[5] = {1, -2, 3.5f, 1e-30f, 0}, v[5] = {0.25f, 4, 9, 1e-38f, 7}, s[3] = {1e-30f, 2, 3};
  char err[512];
  ckpt_optimizer w = {.format = "dpod-adamw", .step = 42, .num_tensors = 2, .names = {"exp_avg", "exp_avg_sq"},
                      .data = {m, v}, .numel = {5, 5}};
  if (ckpt_write_optimizer(dir, &w, err, sizeof err) != 0) fail_msg("%s", err);
  float m2[5], v2[5];
  ckpt_optimizer r = {.format = "dpod-adamw", .num_tensors = 2, .names = {"exp_avg", "exp_avg_sq"}, .data = {m2, v2},
                      .numel = {5, 5}};
  if (ckpt_read_optimizer(dir, &r, err, sizeof err) != 0) fail_msg("%s", err);
  assert_memory_equal(m, m2, sizeof m);
  assert_memory_equal(v, v2, sizeof v);
  assert_int_equal(r.step, 42);

  /* An adamw file is refused by an adafactor run, naming both. */
  float s2[3] = {-1, -1, -1};
  ckpt_optimizer ra = {.format = "dpod-adafactor", .num_tensors = 1, .names = {"state"}, .data = {s2}, .numel = {3}};
  assert_int_equal(ckpt_read_optimizer(dir, &ra, err, sizeof err), DPOD_EFORMAT);
  assert_non_null(strstr(err, "dpod-adamw"));
  assert_non_null(strstr(err, "train.optimizer"));
  assert_true(s2[0] == -1);

  ckpt_optimizer wa = {.format = "dpod-adafactor", .step = 7, .num_tensors = 1, .names = {"state"}, .data = {s},
                       .numel = {3}};
  if (ckpt_write_optimizer(dir, &wa, err, sizeof err) != 0) fail_msg("%s", err);
  if (ckpt_read_optimizer(dir, &ra, err, sizeof err) != 0) fail_msg("%s", err);
  assert_memory_equal(s, s2, sizeof s);
  assert_int_equal(ra.step, 7);
  /* The wrong size is refused and leaves the buffer alone. */
  float big[4] = {-1, -1, -1, -1};
  ckpt_optimizer rb = {.format = "dpod-adafactor", .num_tensors = 1, .names = {"state"}, .data = {big}, .numel = {4}};
  assert_int_equal(ckpt_read_optimizer(dir, &rb, err, sizeof err), DPOD_ESHAPE);
  assert_non_null(strstr(err, "state as F32 of 4 elements"));
  assert_true(big[0] == -1);
  rb.names[0] = "exp_avg";
  rb.numel[0] = 3;
  assert_int_equal(ckpt_read_optimizer(dir, &rb, err, sizeof err), DPOD_ESHAPE);
}

/* A file as dpo-worker wrote it before format_version existed, and one from a newer worker. */
static void optimizer_file_versions_old_read_newer_refused(void **state) {
  (void)state;
  char path[512], err[512];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_OPTIMIZER);
  float m[2] = {1, 2}, v[2] = {3, 4};
  int64_t shape[1] = {2};
  for (int newer = 0; newer < 2; newer++) {
    st_writer *w = st_writer_new();
    assert_non_null(w);
    assert_int_equal(st_writer_add(w, "exp_avg", ST_F32, 1, shape, m), 0);
    assert_int_equal(st_writer_add(w, "exp_avg_sq", ST_F32, 1, shape, v), 0);
    assert_int_equal(st_writer_set_metadata(w, "format", "dpod-adamw"), 0);
    assert_int_equal(st_writer_set_metadata(w, "step", "3"), 0);
    if (newer) assert_int_equal(st_writer_set_metadata(w, "format_version", "2"), 0);
    if (st_writer_write(w, path, NULL, err, sizeof err) != 0) fail_msg("%s", err);
    st_writer_free(w);
    float m2[2] = {0}, v2[2] = {0};
    ckpt_optimizer r = {.format = "dpod-adamw", .num_tensors = 2, .names = {"exp_avg", "exp_avg_sq"},
                        .data = {m2, v2}, .numel = {2, 2}};
    int rc = ckpt_read_optimizer(dir, &r, err, sizeof err);
    if (!newer) {
      if (rc != 0) fail_msg("%s", err);
      assert_true(m2[1] == 2 && v2[0] == 3 && r.step == 3);
    } else {
      assert_int_equal(rc, DPOD_EUNSUPPORTED);
      assert_non_null(strstr(err, "format_version 2"));
    }
  }
}

int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      cmocka_unit_test_setup_teardown(optimizer_state_round_trips_for_adamw_and_adafactor, setup, teardown),
      cmocka_unit_test_setup_teardown(optimizer_file_versions_old_read_newer_refused, setup, teardown),
  };
  return CMOCKA_MAIN("ckpt_optimizer", all, NULL, NULL);
}
