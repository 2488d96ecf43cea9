/* When a rank's OpenMP threads spin before sleeping (thread_wait.h): bf16 ranks with room on their node,
 * never fp32, never a single thread, never an oversubscribed node, never against the user's own
 * setting. And when OpenBLAS's idle threads sleep at once: every rank of two or more threads. `test_thread_wait NAME` runs one. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "thread_wait.h"

static void bf16_with_room_spins(void **state) {
  (void)state;
  assert_string_equal(thread_wait_spincount(1, NULL, NULL, 2, 1, 2), THREAD_WAIT_SPINCOUNT);
  assert_string_equal(thread_wait_spincount(1, "PASSIVE", NULL, 2, 1, 2), THREAD_WAIT_SPINCOUNT); /* the launchers' */
  assert_string_equal(thread_wait_spincount(1, "passive", "", 4, 4, 16), THREAD_WAIT_SPINCOUNT);  /* exactly full */
  assert_string_equal(thread_wait_spincount(1, NULL, NULL, 2, 0, 4), THREAD_WAIT_SPINCOUNT);      /* 0 ranks: 1 */
}

static void fp32_never_spins(void **state) {
  (void)state;
  assert_null(thread_wait_spincount(0, "PASSIVE", NULL, 2, 1, 2));
  assert_null(thread_wait_spincount(0, NULL, NULL, 8, 1, 64));
}

static void one_thread_or_a_full_node_does_not_spin(void **state) {
  (void)state;
  assert_null(thread_wait_spincount(1, "PASSIVE", NULL, 1, 1, 2));
  assert_null(thread_wait_spincount(1, "PASSIVE", NULL, 0, 1, 2));
  assert_null(thread_wait_spincount(1, "PASSIVE", NULL, 2, 2, 2)); /* 2 ranks x 2 threads on 2 CPUs */
  assert_null(thread_wait_spincount(1, "PASSIVE", NULL, 3, 1, 2));
  assert_null(thread_wait_spincount(1, "PASSIVE", NULL, 2, 1, 0)); /* CPUs unknown */
  assert_null(thread_wait_spincount(1, NULL, NULL, 65536, 65536, 4)); /* no overflow in the product */
}

static void the_users_choice_wins(void **state) {
  (void)state;
  assert_null(thread_wait_spincount(1, "PASSIVE", "0", 2, 1, 2));
  assert_null(thread_wait_spincount(1, NULL, "300000", 2, 1, 2));
  assert_null(thread_wait_spincount(1, "ACTIVE", NULL, 2, 1, 2));
  assert_null(thread_wait_spincount(1, "active", NULL, 2, 1, 2));
}

static void blas_threads_sleep_at_once_unless_set(void **state) {
  (void)state;
  assert_string_equal(thread_wait_blas_timeout(NULL, 2), THREAD_WAIT_BLAS_TIMEOUT);
  assert_string_equal(thread_wait_blas_timeout("", 16), THREAD_WAIT_BLAS_TIMEOUT);
  assert_null(thread_wait_blas_timeout(NULL, 1)); /* one thread: OpenBLAS has no pool */
  assert_null(thread_wait_blas_timeout(NULL, 0));
  assert_null(thread_wait_blas_timeout("28", 2)); /* the user's */
}

#define T(f) cmocka_unit_test(f)
int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      T(bf16_with_room_spins),
      T(fp32_never_spins),
      T(one_thread_or_a_full_node_does_not_spin),
      T(the_users_choice_wins),
      T(blas_threads_sleep_at_once_unless_set),
  };
  return CMOCKA_MAIN("thread_wait", tests, NULL, NULL);
}
