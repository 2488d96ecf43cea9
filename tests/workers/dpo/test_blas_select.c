/* Which OpenBLAS kernels blas_select asks for: only when OpenBLAS fell back to a pre-AVX2 core on a CPU
 * that can do better, never against a core OpenBLAS chose knowingly. `test_blas_select NAME` runs one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cmocka_main.h"

#include "blas_select.h"

static void unknown_cpu_with_avx512_gets_skylakex(void **state) {
  (void)state;
  assert_string_equal(blas_select_coretype("Prescott", 1, 1), "SkylakeX");
  assert_string_equal(blas_select_coretype("prescott", 1, 1), "SkylakeX");
  assert_string_equal(blas_select_coretype("Core2", 1, 1), "SkylakeX");
}

static void unknown_cpu_with_avx2_only_gets_haswell(void **state) {
  (void)state;
  assert_string_equal(blas_select_coretype("Prescott", 1, 0), "Haswell");
  assert_string_equal(blas_select_coretype("Sandybridge", 1, 0), "Haswell");
}

static void known_cores_are_left_alone(void **state) {
  (void)state;
  static const char *const known[] = {"Haswell", "SkylakeX", "Cooperlake", "SapphireRapids", "Zen"};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) assert_null(blas_select_coretype(known[i], 1, 1));
}

static void old_cpu_or_other_blas_is_left_alone(void **state) {
  (void)state;
  assert_null(blas_select_coretype("Prescott", 0, 0)); /* a real Prescott-class CPU */
  assert_null(blas_select_coretype(NULL, 1, 1));       /* the BLAS is not OpenBLAS */
}

#define T(f) cmocka_unit_test(f)
int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      T(unknown_cpu_with_avx512_gets_skylakex),
      T(unknown_cpu_with_avx2_only_gets_haswell),
      T(known_cores_are_left_alone),
      T(old_cpu_or_other_blas_is_left_alone),
  };
  return CMOCKA_MAIN("blas_select", tests, NULL, NULL);
}
