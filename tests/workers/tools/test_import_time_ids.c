/* dpo-tool import with SDXL time ids on the pairs' JSONL lines: "time_ids" per pair, "image_0_time_ids"
 * and "image_1_time_ids" per image. The imported dataset is read back and the values must reach the
 * batch the trainer builds (dataset_fill_batch); bad values and ambiguous inputs are refused naming the
 * line and the key. Each case works in a fresh temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "tool_case.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "safetensors.h"
#include "tool_data.h"

enum { C = 4, H = 2, W = 2, IMG = C * H * W, L = 3, D = 8 };

/* Latents img_a .. img_d, every element of img_X equal to ('X' - 'a' + 1); embeddings "a cat" = 1 and
 * "a dog" = 2; pooled [5] per caption for --pooled (SDXL datasets carry both). */
static void write_inputs(void) {
  static float lat[4][IMG], ecat[L * D], edog[L * D], pcat[5], pdog[5];
  char name[4][8], err[512];
  st_writer *w = st_writer_new();
  int64_t s3[3] = {C, H, W}, s2[2] = {L, D}, s1[1] = {5};
  for (int i = 0; i < 4; i++) {
    snprintf(name[i], sizeof name[i], "img_%c", 'a' + i);
    for (int j = 0; j < IMG; j++) lat[i][j] = (float)(i + 1);
    assert_int_equal(st_writer_add(w, name[i], ST_F32, 3, s3, lat[i]), 0);
  }
  assert_int_equal(st_writer_write(w, in_tmp("latents.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);
  for (int k = 0; k < L * D; k++) ecat[k] = 1, edog[k] = 2;
  for (int k = 0; k < 5; k++) pcat[k] = 10, pdog[k] = 20;
  w = st_writer_new();
  assert_int_equal(st_writer_add(w, "a cat", ST_F32, 2, s2, ecat), 0);
  assert_int_equal(st_writer_add(w, "a dog", ST_F32, 2, s2, edog), 0);
  assert_int_equal(st_writer_write(w, in_tmp("embeddings.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);
  w = st_writer_new();
  assert_int_equal(st_writer_add(w, "a cat", ST_F32, 1, s1, pcat), 0);
  assert_int_equal(st_writer_add(w, "a dog", ST_F32, 1, s1, pdog), 0);
  assert_int_equal(st_writer_write(w, in_tmp("pooled.safetensors"), NULL, err, sizeof err), 0);
  st_writer_free(w);
}

/* Runs `dpo-tool import` on pairs file `jsonl` (extra arguments appended), with stderr captured: returns
 * its status; the message goes into msg[4096]. */
static int run_import(const char *jsonl, const char *out, const char *extra1, const char *extra2, char *msg) {
  char *argv[16] = {"import", "--latents", (char *)in_tmp("latents.safetensors"), "--embeddings",
                    (char *)in_tmp("embeddings.safetensors"), "--pooled", (char *)in_tmp("pooled.safetensors"),
                    "--pairs", (char *)jsonl, "--out", (char *)out, "--dtype", "f32"};
  int argc = 13;
  if (extra1) argv[argc++] = (char *)extra1;
  if (extra2) argv[argc++] = (char *)extra2;
  argv[argc] = NULL;
  int rc = tc_run_captured(tool_import_main, argc, argv, msg, 4096);
  return rc;
}

static void expect_refused(const char *lines, const char *extra1, const char *extra2, const char *w1, const char *w2) {
  const char *jsonl = in_tmp("bad.jsonl");
  write_text(jsonl, lines);
  char msg[4096];
  int rc = run_import(jsonl, in_tmp("never"), extra1, extra2, msg);
  if (rc == 0 || !strstr(msg, w1) || (w2 && !strstr(msg, w2)))
    fail_msg("import returned %d; want a refusal naming '%s' and '%s', got: %s", rc, w1, w2 ? w2 : "", msg);
  char manifest[600];
  snprintf(manifest, sizeof manifest, "%s/manifest.json", in_tmp("never"));
  assert_int_not_equal(access(manifest, F_OK), 0); /* nothing half-written passes for a dataset */
}

/* The time ids rows of the batch [winners; losers] of pairs 0 and 1 of the dataset in `dir`. */
static void batch_time_ids(const char *dir, int want_form, float tids[4][6]) {
  dataset_open_params op = dataset_open_default_params();
  op.pooled_dim = 5;
  dpo_dataset ds;
  char err[1024];
  if (dataset_open(dir, &op, &ds, err, sizeof err) != 0) fail_msg("%s", err);
  assert_int_equal(ds.num_pairs, 2);
  assert_int_equal(ds.time_ids, want_form);
  const size_t pairs[2] = {0, 1};
  float x0[4 * IMG], ehs[4 * L * D], pooled[4 * 5];
  assert_int_equal(dataset_fill_batch(&ds, pairs, 2, x0, ehs, pooled, &tids[0][0]), 0);
  /* The pair's images came along in the order label_0 says: pair 1 is stored swapped. */
  assert_true(x0[0] == 1 && x0[IMG] == 4 && x0[2 * IMG] == 2 && x0[3 * IMG] == 3);
  dataset_free(&ds);
}

static void import_takes_per_pair_time_ids_from_the_pairs_lines(void **state) {
  (void)state;
  write_inputs();
  const char *jsonl = in_tmp("pairs.jsonl"), *out = in_tmp("xl-pair");
  write_text(jsonl,
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 1, "
             "\"time_ids\": [1024, 768, 12, 34, 1024, 1024.5]}\n"
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 0.5}\n"
             "{\"caption\": \"a dog\", \"image_0_uid\": \"img_c\", \"image_1_uid\": \"img_d\", \"label_0\": 0, "
             "\"time_ids\": [512, 512, 0, 0, 2048, 4096]}\n");
  char msg[4096];
  if (run_import(jsonl, out, NULL, NULL, msg) != 0) fail_msg("%s", msg);
  float t[4][6];
  batch_time_ids(out, DATASET_TIME_IDS_PAIR, t);
  const float p0[6] = {1024, 768, 12, 34, 1024, 1024.5f}, p1[6] = {512, 512, 0, 0, 2048, 4096};
  /* Rows: winner 0, winner 1, loser 0, loser 1; a pair's row serves both its images. */
  assert_memory_equal(t[0], p0, sizeof p0);
  assert_memory_equal(t[2], p0, sizeof p0);
  assert_memory_equal(t[1], p1, sizeof p1);
  assert_memory_equal(t[3], p1, sizeof p1);
}

static void import_takes_per_image_time_ids_swapped_with_their_images(void **state) {
  (void)state;
  write_inputs();
  const char *jsonl = in_tmp("pairs.jsonl"), *out = in_tmp("xl-image");
  write_text(jsonl,
             "{\"caption\": \"a cat\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 1, "
             "\"image_0_time_ids\": [1, 2, 3, 4, 5, 6], \"image_1_time_ids\": [7, 8, 9, 10, 11, 12]}\n"
             "{\"caption\": \"a dog\", \"image_0_uid\": \"img_c\", \"image_1_uid\": \"img_d\", \"label_0\": 0, "
             "\"image_0_time_ids\": [13, 14, 15, 16, 17, 18], \"image_1_time_ids\": [19, 20, 21, 22, 23, 24]}\n");
  char msg[4096];
  if (run_import(jsonl, out, NULL, NULL, msg) != 0) fail_msg("%s", msg);
  float t[4][6];
  batch_time_ids(out, DATASET_TIME_IDS_IMAGE, t);
  /* Pair 1 has label_0 = 0: img_d wins, and image_1's time ids go with it. */
  const float w0[6] = {1, 2, 3, 4, 5, 6}, l0[6] = {7, 8, 9, 10, 11, 12};
  const float w1[6] = {19, 20, 21, 22, 23, 24}, l1[6] = {13, 14, 15, 16, 17, 18};
  assert_memory_equal(t[0], w0, sizeof w0);
  assert_memory_equal(t[1], w1, sizeof w1);
  assert_memory_equal(t[2], l0, sizeof l0);
  assert_memory_equal(t[3], l1, sizeof l1);
}

#define LINE(caption, extra) \
  "{\"caption\": \"" caption "\", \"image_0_uid\": \"img_a\", \"image_1_uid\": \"img_b\", \"label_0\": 1" extra "}\n"

static void import_refuses_bad_time_ids_naming_line_and_key(void **state) {
  (void)state;
  write_inputs();
  expect_refused(LINE("a cat", ", \"time_ids\": [1024, 1024, 0, 0, 1024]"), NULL, NULL, "bad.jsonl:1:",
                 "'time_ids' must be an array of 6 numbers");
  expect_refused(LINE("a cat", ", \"time_ids\": 1024"), NULL, NULL, "bad.jsonl:1:", "'time_ids' must be an array");
  expect_refused(LINE("a cat", ", \"time_ids\": [1, 2, 3, 4, 5, 6]")
                     LINE("a dog", ", \"time_ids\": [1024, 1024, 0, \"0\", 1024, 1024]"), NULL, NULL,
                 "bad.jsonl:2:", "'time_ids' element 3 is not a finite number");
  expect_refused(LINE("a cat", ", \"time_ids\": [1e999, 1024, 0, 0, 1024, 1024]"), NULL, NULL, "bad.jsonl:1:",
                 "'time_ids' element 0 is not a finite number");
  expect_refused(LINE("a cat", ", \"time_ids\": [1e39, 1024, 0, 0, 1024, 1024]"), NULL, NULL, "bad.jsonl:1:",
                 "'time_ids' element 0 is not a finite number");
  expect_refused(LINE("a cat", ", \"image_0_time_ids\": [1, 2, 3, 4, 5, 6, 7], \"image_1_time_ids\": [1, 2, 3, 4, 5, 6]"),
                 NULL, NULL, "bad.jsonl:1:", "'image_0_time_ids' must be an array of 6");
  expect_refused(LINE("a cat", ", \"image_0_time_ids\": [1, 2, 3, 4, 5, 6]"), NULL, NULL, "bad.jsonl:1:",
                 "carries 'image_0_time_ids' but no 'image_1_time_ids'");
  expect_refused(LINE("a cat", ", \"time_ids\": [1, 2, 3, 4, 5, 6], \"image_1_time_ids\": [1, 2, 3, 4, 5, 6]"), NULL,
                 NULL, "bad.jsonl:1:", "both 'time_ids' (per pair) and 'image_1_time_ids' (per image)");
  /* One form per import: a line without time ids after one with them, and the other way round. */
  expect_refused(LINE("a cat", ", \"time_ids\": [1, 2, 3, 4, 5, 6]") LINE("a dog", ""), NULL, NULL, "bad.jsonl:2:",
                 "carries no time ids but");
  expect_refused(LINE("a cat", "") LINE("a dog", ", \"time_ids\": [1, 2, 3, 4, 5, 6]"), NULL, NULL, "bad.jsonl:2:",
                 "bad.jsonl:1, the first labelled line, carries no time ids");
  /* Lines and --time-ids files together: which would win is not obvious, so neither does. */
  expect_refused(LINE("a cat", ", \"time_ids\": [1, 2, 3, 4, 5, 6]"), "--time-ids", in_tmp("latents.safetensors"),
                 "bad.jsonl:1:", "carries 'time_ids' and --time-ids files were given");
}

int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      TC_CASE(import_takes_per_pair_time_ids_from_the_pairs_lines),
      TC_CASE(import_takes_per_image_time_ids_swapped_with_their_images),
      TC_CASE(import_refuses_bad_time_ids_naming_line_and_key),
  };
  return CMOCKA_MAIN("import", all, NULL, NULL);
}
