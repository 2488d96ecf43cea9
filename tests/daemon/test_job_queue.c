/* The scheduler's policy: strict FIFO over a fixed number of slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "dpod_error.h"
#include "job_queue.h"

static void fifo_launches_in_submission_order(void **state) {
  (void)state;
  job_queue s;
  job_queue_init(&s, 4);
  assert_int_equal(job_queue_enqueue(&s, 1, 1), 0);
  assert_int_equal(job_queue_enqueue(&s, 2, 1), 0);
  assert_int_equal(job_queue_enqueue(&s, 3, 2), 0);
  unsigned ranks = 0;
  assert_int_equal(job_queue_next(&s, &ranks), 1);
  assert_int_equal(ranks, 1);
  assert_int_equal(job_queue_next(&s, &ranks), 2);
  assert_int_equal(job_queue_next(&s, &ranks), 3);
  assert_int_equal(ranks, 2);
  assert_int_equal(s.free_slots, 0);
  assert_int_equal(job_queue_next(&s, &ranks), 0);
  job_queue_free(&s);
}

static void head_that_does_not_fit_blocks_later_jobs(void **state) {
  (void)state;
  job_queue s;
  job_queue_init(&s, 2);
  assert_int_equal(job_queue_enqueue(&s, 1, 1), 0);
  assert_int_equal(job_queue_enqueue(&s, 2, 2), 0); /* needs both slots */
  assert_int_equal(job_queue_enqueue(&s, 3, 1), 0); /* would fit, but must wait behind job 2 */
  assert_int_equal(job_queue_next(&s, NULL), 1);
  assert_int_equal(job_queue_next(&s, NULL), 0);
  assert_int_equal(s.free_slots, 1);
  assert_int_equal(s.queued, 2);
  job_queue_free(&s);
}

static void released_slots_unblock_the_head(void **state) {
  (void)state;
  job_queue s;
  job_queue_init(&s, 2);
  job_queue_enqueue(&s, 1, 1);
  job_queue_enqueue(&s, 2, 2);
  job_queue_enqueue(&s, 3, 1);
  assert_int_equal(job_queue_next(&s, NULL), 1);
  assert_int_equal(job_queue_next(&s, NULL), 0);
  job_queue_release(&s, 1);
  assert_int_equal(s.free_slots, 2);
  assert_int_equal(job_queue_next(&s, NULL), 2);
  assert_int_equal(job_queue_next(&s, NULL), 0);
  job_queue_release(&s, 2);
  assert_int_equal(job_queue_next(&s, NULL), 3);
  assert_int_equal(s.queued, 0);
  job_queue_release(&s, 1);
  assert_int_equal(s.free_slots, 2);
  job_queue_free(&s);
}

static void removing_the_blocking_head_lets_the_next_run(void **state) {
  (void)state;
  job_queue s;
  job_queue_init(&s, 2);
  job_queue_enqueue(&s, 1, 2);
  job_queue_enqueue(&s, 2, 2);
  job_queue_enqueue(&s, 3, 1);
  assert_int_equal(job_queue_next(&s, NULL), 1);
  assert_int_equal(job_queue_remove(&s, 2), 0);
  assert_int_equal(job_queue_remove(&s, 2), DPOD_ENOENT);
  job_queue_release(&s, 2);
  assert_int_equal(job_queue_next(&s, NULL), 3);
  /* The tail was removed and re-added correctly. */
  assert_int_equal(job_queue_enqueue(&s, 4, 1), 0);
  assert_int_equal(job_queue_remove(&s, 4), 0);
  assert_int_equal(job_queue_enqueue(&s, 5, 1), 0);
  assert_int_equal(job_queue_next(&s, NULL), 5);
  assert_int_equal(s.queued, 0);
  job_queue_free(&s);
}

static void jobs_larger_than_the_pool_are_refused(void **state) {
  (void)state;
  job_queue s;
  job_queue_init(&s, 2);
  assert_int_equal(job_queue_enqueue(&s, 1, 3), DPOD_EINVAL);
  assert_int_equal(job_queue_enqueue(&s, 1, 0), DPOD_EINVAL);
  assert_int_equal(s.queued, 0);
  job_queue_free(&s);
}

static void over_release_is_clamped(void **state) {
  (void)state;
  job_queue s;
  job_queue_init(&s, 2);
  job_queue_release(&s, 5);
  assert_int_equal(s.free_slots, 2);
  job_queue_free(&s);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fifo_launches_in_submission_order),
      cmocka_unit_test(head_that_does_not_fit_blocks_later_jobs),
      cmocka_unit_test(released_slots_unblock_the_head),
      cmocka_unit_test(removing_the_blocking_head_lets_the_next_run),
      cmocka_unit_test(jobs_larger_than_the_pool_are_refused),
      cmocka_unit_test(over_release_is_clamped),
  };
  return CMOCKA_MAIN("job_queue", tests, NULL, NULL);
}
