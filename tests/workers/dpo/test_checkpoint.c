/* The checkpoint protocol's guarantees: a checkpoint is used only when its marker is there and every
 * file matches the sizes and checksums it records; keep_last bounds what stays on disk. Run one case
 * with `test_checkpoint NAME`. */
#include <math.h>
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
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "dpod_file.h"

static char run_dir[256];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(run_dir, sizeof run_dir, "dpod-ckpt");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(run_dir);
}

static void write_file(const char *dir, const char *name, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* A complete 2-rank checkpoint at `step`, as the worker writes one (the weights are stand-in bytes). */
static void make_checkpoint(uint32_t step) {
  char partial[1024], err[512];
  assert_int_equal(ckpt_begin(run_dir, step, err, sizeof err), 0);
  ckpt_dir(run_dir, step, 1, partial, sizeof partial);
  write_file(partial, CKPT_WEIGHTS, "weights of a step");
  write_file(partial, CKPT_OPTIMIZER, "adam moments");
  for (uint32_t r = 0; r < 2; r++) {
    ckpt_rank_state st = {.world_size = 2, .rank = r, .step = step, .data_position = step * 8ull, .seed = 42};
    assert_int_equal(ckpt_write_rank_state(partial, &st, err, sizeof err), 0);
  }
  uint64_t bytes = 0;
  if (ckpt_commit(run_dir, step, 2, &bytes, err, sizeof err) != 0) fail_msg("%s", err);
  assert_true(bytes > 0);
}

static void complete_checkpoint_verifies_and_is_found(void **state) {
  (void)state;
  make_checkpoint(10);
  char dir[1024], err[512];
  uint32_t step = 0;
  ckpt_dir(run_dir, 10, 0, dir, sizeof dir);
  assert_int_equal(ckpt_verify(dir, &step, err, sizeof err), 0);
  assert_int_equal(step, 10);
  char found[1024];
  assert_int_equal(ckpt_find_latest(run_dir, &step, found, sizeof found), 1);
  assert_string_equal(found, dir);
  ckpt_rank_state st;
  assert_int_equal(ckpt_read_rank_state(dir, 1, &st, err, sizeof err), 0);
  assert_int_equal(st.rank, 1);
  assert_int_equal(st.world_size, 2);
  assert_true(st.data_position == 80 && st.seed == 42);
}

static void corrupt_file_is_never_used(void **state) {
  (void)state;
  make_checkpoint(10);
  make_checkpoint(20);
  char dir[1024], path[1100], err[512];
  ckpt_dir(run_dir, 20, 0, dir, sizeof dir);
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_WEIGHTS);
  write_file(dir, CKPT_WEIGHTS, "weights of a stop"); /* same size, one byte differs */
  assert_int_not_equal(ckpt_verify(dir, NULL, err, sizeof err), 0);
  assert_non_null(strstr(err, "checksum"));
  uint32_t step = 0;
  char found[1024];
  assert_int_equal(ckpt_find_latest(run_dir, &step, found, sizeof found), 1);
  assert_int_equal(step, 10);
}

static void checkpoint_without_marker_is_never_used(void **state) {
  (void)state;
  make_checkpoint(10);
  make_checkpoint(20);
  char dir[1024], path[1100], err[512];
  ckpt_dir(run_dir, 20, 0, dir, sizeof dir);
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_MARKER);
  assert_int_equal(unlink(path), 0);
  assert_int_not_equal(ckpt_verify(dir, NULL, err, sizeof err), 0);
  /* A crash before commit leaves only a partial directory: not a checkpoint either. */
  assert_int_equal(ckpt_begin(run_dir, 30, err, sizeof err), 0);
  ckpt_dir(run_dir, 30, 1, dir, sizeof dir);
  write_file(dir, CKPT_WEIGHTS, "half written");
  uint32_t step = 0;
  char found[1024];
  assert_int_equal(ckpt_find_latest(run_dir, &step, found, sizeof found), 1);
  assert_int_equal(step, 10);
}

static void missing_file_or_rank_is_refused(void **state) {
  (void)state;
  make_checkpoint(10);
  char dir[1024], path[1100], err[512];
  ckpt_dir(run_dir, 10, 0, dir, sizeof dir);
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_OPTIMIZER);
  assert_int_equal(unlink(path), 0);
  assert_int_not_equal(ckpt_verify(dir, NULL, err, sizeof err), 0);
  uint32_t step;
  char found[1024];
  assert_int_equal(ckpt_find_latest(run_dir, &step, found, sizeof found), 0);
  /* Commit refuses while a rank has not written its state. */
  assert_int_equal(ckpt_begin(run_dir, 20, err, sizeof err), 0);
  ckpt_dir(run_dir, 20, 1, dir, sizeof dir);
  write_file(dir, CKPT_WEIGHTS, "w");
  ckpt_rank_state st = {.world_size = 2, .rank = 0, .step = 20, .data_position = 160, .seed = 42};
  assert_int_equal(ckpt_write_rank_state(dir, &st, err, sizeof err), 0);
  assert_int_not_equal(ckpt_commit(run_dir, 20, 2, NULL, err, sizeof err), 0);
  assert_non_null(strstr(err, "rank 1"));
}

/* Numbers in a rank record or a marker are whole and in range, or the file is refused: a negative, huge
 * or fractional step must not wrap into some other step. */
static void records_with_impossible_numbers_are_refused(void **state) {
  (void)state;
  make_checkpoint(10);
  char dir[1024], err[512];
  ckpt_dir(run_dir, 10, 0, dir, sizeof dir);
  static const char *const bad[] = {
      "\"world_size\": 2, \"rank\": 1, \"step\": -1, \"data_position\": 0, \"seed\": \"42\"",
      "\"world_size\": 2, \"rank\": 1, \"step\": 1e300, \"data_position\": 0, \"seed\": \"42\"",
      "\"world_size\": 2, \"rank\": 1, \"step\": 2.5, \"data_position\": 0, \"seed\": \"42\"",
      "\"world_size\": 2, \"rank\": 1, \"step\": 4294967296, \"data_position\": 0, \"seed\": \"42\"",
      "\"world_size\": 2, \"rank\": 1, \"step\": 10, \"data_position\": 0, \"seed\": \"-42\"",
      "\"world_size\": 2, \"rank\": 1, \"step\": 10, \"data_position\": 0, \"seed\": \"42x\"",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[512];
    snprintf(text, sizeof text, "{\"magic\": \"dpod-rank-state\", \"version\": 1, %s}", bad[i]);
    write_file(dir, "rank-00001.json", text);
    ckpt_rank_state st;
    assert_int_equal(ckpt_read_rank_state(dir, 1, &st, err, sizeof err), DPOD_EFORMAT);
    assert_non_null(strstr(err, "malformed rank state"));
  }
  /* And a marker whose step is not a step. */
  char path[1100], *marker = NULL;
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_MARKER);
  assert_int_equal(dpod_read_file(path, 0, &marker, NULL, err, sizeof err), 0);
  char *at = strstr(marker, "\"step\":");
  assert_non_null(at);
  char *fixed = malloc(strlen(marker) + 16);
  snprintf(fixed, strlen(marker) + 16, "%.*s\"step\": -10, \"x\":%s", (int)(at - marker), marker, at + 7);
  write_file(dir, CKPT_MARKER, fixed);
  assert_int_equal(ckpt_verify(dir, NULL, err, sizeof err), DPOD_EFORMAT);
  free(marker);
  free(fixed);
}

/* What prune reports: the complete checkpoints it removed (not the stale partial ones). */
static void note_removed(uint32_t step, const char *dir, void *arg) {
  uint32_t *seen = arg;
  assert_non_null(strstr(dir, "checkpoints/step-"));
  seen[seen[0]++ + 1] = step;
}

static void prune_keeps_the_newest(void **state) {
  (void)state;
  uint32_t seen[8] = {0};
  make_checkpoint(10);
  make_checkpoint(20);
  make_checkpoint(30);
  char err[512], dir[1024];
  assert_int_equal(ckpt_begin(run_dir, 5, err, sizeof err), 0); /* stale partial from an old crash */
  assert_int_equal(ckpt_prune(run_dir, 2, note_removed, seen), 2);
  assert_int_equal(seen[0], 1);
  assert_int_equal(seen[1], 10);
  struct stat st;
  ckpt_dir(run_dir, 10, 0, dir, sizeof dir);
  assert_int_not_equal(stat(dir, &st), 0);
  ckpt_dir(run_dir, 5, 1, dir, sizeof dir);
  assert_int_not_equal(stat(dir, &st), 0);
  ckpt_dir(run_dir, 20, 0, dir, sizeof dir);
  assert_int_equal(stat(dir, &st), 0);
  ckpt_dir(run_dir, 30, 0, dir, sizeof dir);
  assert_int_equal(stat(dir, &st), 0);
}

/* A checkpoint whose provenance file records an evaluation of `acc` (NAN: none at that step). */
static void make_evaluated_checkpoint(uint32_t step, double acc) {
  char partial[1024], err[512], text[256];
  assert_int_equal(ckpt_begin(run_dir, step, err, sizeof err), 0);
  ckpt_dir(run_dir, step, 1, partial, sizeof partial);
  write_file(partial, CKPT_WEIGHTS, "weights of a step");
  if (isnan(acc)) snprintf(text, sizeof text, "{\"format\": \"dpod-provenance\", \"step\": %u}", step);
  else snprintf(text, sizeof text, "{\"step\": %u, \"eval\": {\"step\": %u, \"implicit_acc\": %.17g}}", step, step, acc);
  write_file(partial, CKPT_PROVENANCE, text);
  ckpt_rank_state st = {.world_size = 1, .rank = 0, .step = step, .data_position = step * 8ull, .seed = 42};
  assert_int_equal(ckpt_write_rank_state(partial, &st, err, sizeof err), 0);
  if (ckpt_commit(run_dir, step, 1, NULL, err, sizeof err) != 0) fail_msg("%s", err);
}

static int checkpoint_exists(uint32_t step) {
  char dir[1024];
  struct stat st;
  ckpt_dir(run_dir, step, 0, dir, sizeof dir);
  return stat(dir, &st) == 0;
}

/* keep_best keeps the best evaluated checkpoint besides the newest, finds it again from the files (as a
 * resumed run does), keeps the oldest of equals, and ignores checkpoints without the metric. */
static void prune_keeps_the_best_by_its_evaluation_besides_the_newest(void **state) {
  (void)state;
  uint32_t seen[8] = {0};
  make_evaluated_checkpoint(10, 0.50);
  make_evaluated_checkpoint(20, 0.90);
  make_evaluated_checkpoint(30, 0.90);
  make_evaluated_checkpoint(40, 0.60);
  make_evaluated_checkpoint(50, NAN);
  double v = 0;
  char dir[1024];
  ckpt_dir(run_dir, 20, 0, dir, sizeof dir);
  assert_int_equal(ckpt_eval_metric(dir, "implicit_acc", &v), 0);
  assert_true(v == 0.90);
  assert_int_equal(ckpt_eval_metric(dir, "loss", &v), DPOD_ENOENT);
  assert_int_equal(ckpt_prune_keep_best(run_dir, 1, "implicit_acc", 0, note_removed, seen), 3);
  assert_int_equal(seen[0], 3);
  assert_false(checkpoint_exists(10));
  assert_true(checkpoint_exists(20)); /* best; 30 ties and is newer */
  assert_false(checkpoint_exists(30));
  assert_false(checkpoint_exists(40));
  assert_true(checkpoint_exists(50)); /* newest */
  /* A later, better one takes over; lower-is-better turns the order round. */
  make_evaluated_checkpoint(60, 0.95);
  make_evaluated_checkpoint(70, 0.10);
  assert_int_equal(ckpt_prune_keep_best(run_dir, 1, "implicit_acc", 0, NULL, NULL), 2);
  assert_true(checkpoint_exists(60));
  assert_true(checkpoint_exists(70));
  assert_false(checkpoint_exists(20));
  make_evaluated_checkpoint(80, 0.99);
  assert_int_equal(ckpt_prune_keep_best(run_dir, 1, "implicit_acc", 1, NULL, NULL), 1);
  assert_true(checkpoint_exists(70)); /* lowest */
  assert_false(checkpoint_exists(60));
  assert_true(checkpoint_exists(80));
  /* Without keep_best only the newest stay. */
  assert_int_equal(ckpt_prune(run_dir, 1, NULL, NULL), 1);
  assert_false(checkpoint_exists(70));
}

/* A LoRA checkpoint holds the adapters in place of the full weights; one with neither is refused. */
static void lora_checkpoint_verifies_and_one_without_weights_does_not(void **state) {
  (void)state;
  char partial[1024], dir[1024], err[512];
  for (uint32_t step = 1; step <= 2; step++) {
    assert_int_equal(ckpt_begin(run_dir, step, err, sizeof err), 0);
    ckpt_dir(run_dir, step, 1, partial, sizeof partial);
    if (step == 1) {
      write_file(partial, CKPT_LORA_WEIGHTS, "adapters, folded");
      write_file(partial, CKPT_LORA_STATE, "adapters as trained");
    }
    write_file(partial, CKPT_OPTIMIZER, "adam moments");
    ckpt_rank_state st = {.world_size = 1, .rank = 0, .step = step, .data_position = step * 8ull, .seed = 42};
    assert_int_equal(ckpt_write_rank_state(partial, &st, err, sizeof err), 0);
    assert_int_equal(ckpt_commit(run_dir, step, 1, NULL, err, sizeof err), 0);
  }
  uint32_t step = 0;
  ckpt_dir(run_dir, 1, 0, dir, sizeof dir);
  if (ckpt_verify(dir, &step, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(step, 1);
  ckpt_dir(run_dir, 2, 0, dir, sizeof dir);
  assert_int_equal(ckpt_verify(dir, &step, err, sizeof err), DPOD_EFORMAT);
  assert_non_null(strstr(err, CKPT_LORA_WEIGHTS));
  char found[1024];
  assert_int_equal(ckpt_find_latest(run_dir, &step, found, sizeof found), 1);
  assert_int_equal(step, 1);
}

#define CASE(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      CASE(complete_checkpoint_verifies_and_is_found), CASE(corrupt_file_is_never_used), CASE(records_with_impossible_numbers_are_refused),
      CASE(checkpoint_without_marker_is_never_used),   CASE(missing_file_or_rank_is_refused),
      CASE(prune_keeps_the_newest),
      CASE(prune_keeps_the_best_by_its_evaluation_besides_the_newest),
      CASE(lora_checkpoint_verifies_and_one_without_weights_does_not),
  };
  return CMOCKA_MAIN("checkpoint", all, NULL, NULL);
}
