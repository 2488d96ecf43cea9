/* train.device to a rank's device (workers/dpo/device_pick.c), for every kind of machine, none of which
 * needs to be this one: the CUDA device count is an argument. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cmocka_main.h"
#include "device_pick.h"
#include "dpod_error.h"

static void expect_device(const char *spec, uint32_t gpus, int visible, int local_rank, const char *want) {
  char out[32] = "", err[512] = "";
  int rc = dpo_device_pick(spec, gpus, visible, local_rank, out, sizeof out, err, sizeof err);
  if (rc != 0) fail_msg("%s, gpus_per_rank %u, %d visible, local rank %d: %s", spec, gpus, visible, local_rank, err);
  assert_string_equal(out, want);
}

static void expect_refused(const char *spec, uint32_t gpus, int visible, int local_rank, int status, const char *part) {
  char out[32] = "", err[512] = "";
  assert_int_equal(dpo_device_pick(spec, gpus, visible, local_rank, out, sizeof out, err, sizeof err), status);
  if (strncmp(err, "train.device:", 13) != 0 || !strstr(err, part)) fail_msg("message: %s", err);
}

static void auto_is_cpu_without_a_gpu_and_cuda_with_one(void **state) {
  (void)state;
  expect_device(NULL, 0, 0, 0, "cpu");
  expect_device("", 0, 0, 3, "cpu");
  expect_device("auto", 0, 0, 1, "cpu");
  expect_device("auto", 0, 4, 2, "cuda:2");
  expect_device("cpu", 0, 8, 1, "cpu");
  expect_device("cuda", 0, 2, -1, "cuda:0"); /* no launcher variable: one rank */
}

static void cuda_without_a_gpu_is_refused(void **state) {
  (void)state;
  expect_refused("cuda", 0, 0, 0, DPOD_EUNSUPPORTED, "no CUDA device");
  /* gpus_per_rank > 0 makes auto mean cuda, so a worker that sees none must not fall back quietly. */
  expect_refused("auto", 1, 0, 0, DPOD_EUNSUPPORTED, "gpus_per_rank");
  expect_refused("tpu", 0, 1, 0, DPOD_EINVAL, "tpu");
}

static void each_local_rank_takes_its_own_gpu(void **state) {
  (void)state;
  expect_device("cuda", 0, 4, 3, "cuda:3");
  expect_refused("cuda", 0, 4, 4, DPOD_EUNSUPPORTED, "local rank 4");
  /* Slurm's --gpus-per-task binds each rank its own GPUs: rank 5 sees one, as cuda:0; or two, from 0. */
  expect_device("auto", 1, 1, 5, "cuda:0");
  expect_device("cuda", 2, 2, 5, "cuda:0");
  expect_refused("cuda", 1, 2, 5, DPOD_EUNSUPPORTED, "local rank 5");
}

static void local_rank_read_from_the_launcher(void **state) {
  (void)state;
  char err[256];
  int r = 7;
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  unsetenv("SLURM_LOCALID");
  assert_int_equal(dpo_local_rank_from_env(&r, err, sizeof err), 0);
  assert_int_equal(r, -1);
  setenv("SLURM_LOCALID", "3", 1);
  assert_int_equal(dpo_local_rank_from_env(&r, err, sizeof err), 0);
  assert_int_equal(r, 3);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1); /* mpirun's, first */
  assert_int_equal(dpo_local_rank_from_env(&r, err, sizeof err), 0);
  assert_int_equal(r, 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1x", 1);
  assert_int_equal(dpo_local_rank_from_env(&r, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "OMPI_COMM_WORLD_LOCAL_RANK"));
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  unsetenv("SLURM_LOCALID");
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(auto_is_cpu_without_a_gpu_and_cuda_with_one),
      cmocka_unit_test(cuda_without_a_gpu_is_refused),
      cmocka_unit_test(each_local_rank_takes_its_own_gpu),
      cmocka_unit_test(local_rank_read_from_the_launcher),
  };
  return CMOCKA_MAIN("dpo.device_pick", tests, NULL, NULL);
}
