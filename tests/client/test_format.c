/* dpoctl's rendering: what a user reads in `watch`, `get` and `--json`. Each field a message lacks must
 * be left out of the line, never printed as a zero, and the JSON must carry exactly the present fields.
 * `test_format NAME` runs one test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cmocka_main.h"

#include "format.h"
#include "pb_json.h"

static char buf[512];

static void metrics_line_has_every_present_field(void **state) {
  (void)state;
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.step = 3, m.total_steps = 20;
  m.has_loss = 1, m.loss = 0.69314718;
  m.has_implicit_acc = 1, m.implicit_acc = 0.5;
  m.has_policy_mse = 1, m.policy_mse = 1.04331;
  m.has_ref_mse = 1, m.ref_mse = 1.04362;
  m.has_reward_margin = 1, m.reward_margin = 0.0123;
  m.has_grad_norm = 1, m.grad_norm = 1.234;
  m.has_learning_rate = 1, m.learning_rate = 1e-5;
  m.has_samples_per_sec = 1, m.samples_per_sec = 12.34;
  assert_string_equal(fmt_metrics(&m, buf, sizeof buf),
                      "step 3/20 loss 0.6931 acc 0.50 mse 1.0433/1.0436 margin 0.0123 gnorm 1.23 lr 1.0e-05 "
                      "12.3 samples/s");
}

static void metrics_line_leaves_out_absent_fields(void **state) {
  (void)state;
  /* An sft step: no accuracy, no reference, no margin; and no total known. */
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.step = 7;
  m.has_loss = 1, m.loss = 0.125;
  m.has_policy_mse = 1, m.policy_mse = 0.125;
  assert_string_equal(fmt_metrics(&m, buf, sizeof buf), "step 7 loss 0.1250 mse 0.1250");
}

/* Loss scaling (fp16): the step's scale, and a skipped step named as one; neither without scaling (above). */
static void metrics_line_shows_the_loss_scale_and_a_skip(void **state) {
  (void)state;
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.step = 3, m.total_steps = 20;
  m.has_loss = 1, m.loss = 0.5;
  m.has_loss_scale = 1, m.loss_scale = 65536;
  m.has_skipped = 1, m.skipped = 0;
  assert_string_equal(fmt_metrics(&m, buf, sizeof buf), "step 3/20 loss 0.5000 scale 65536");
  m.skipped = 1;
  assert_string_equal(fmt_metrics(&m, buf, sizeof buf), "step 3/20 loss 0.5000 scale 65536 skipped (inf/nan gradients)");
}

static void metrics_line_never_overruns_a_small_buffer(void **state) {
  (void)state;
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.step = 123456, m.total_steps = 999999;
  m.has_loss = 1, m.loss = 1.0;
  m.has_learning_rate = 1, m.learning_rate = 1e-4;
  char small[16];
  memset(small, 'x', sizeof small);
  fmt_metrics(&m, small, 12);
  assert_int_equal(strlen(small), 11);
  assert_int_equal(small[12], 'x'); /* nothing written past len */
  assert_memory_equal(small, "step 123456", 11);
}

static void eval_line_with_pairs_and_samples(void **state) {
  (void)state;
  Dpod__V1__EvalMetrics e = DPOD__V1__EVAL_METRICS__INIT;
  e.step = 20;
  e.has_pairs = 1, e.pairs = 128;
  e.has_loss = 1, e.loss = 0.21;
  e.has_implicit_acc = 1, e.implicit_acc = 0.93;
  e.has_samples = 1, e.samples = 64;
  e.has_preferred_mode_rate = 1, e.preferred_mode_rate = 0.95;
  e.has_mode_distance = 1, e.mode_distance = 0.4321;
  assert_string_equal(fmt_eval(&e, buf, sizeof buf),
                      "eval step 20: held-out acc 0.930 loss 0.2100 (128 pairs); samples: preferred mode 95.0%, "
                      "distance to modes 0.432 (64 samples)");
}

static void eval_line_with_samples_only(void **state) {
  (void)state;
  /* An sft job on synthetic data has no held-out pairs, only samples. */
  Dpod__V1__EvalMetrics e = DPOD__V1__EVAL_METRICS__INIT;
  e.step = 0;
  e.has_samples = 1, e.samples = 64;
  e.has_preferred_mode_rate = 1, e.preferred_mode_rate = 0.5;
  e.has_mode_distance = 1, e.mode_distance = 11.45;
  assert_string_equal(fmt_eval(&e, buf, sizeof buf),
                      "eval step 0: samples: preferred mode 50.0%, distance to modes 11.450 (64 samples)");
}

static void eval_line_with_pairs_only(void **state) {
  (void)state;
  Dpod__V1__EvalMetrics e = DPOD__V1__EVAL_METRICS__INIT;
  e.step = 5;
  e.has_pairs = 1, e.pairs = 3;
  e.has_loss = 1, e.loss = 0.6931;
  e.has_implicit_acc = 1, e.implicit_acc = 0;
  assert_string_equal(fmt_eval(&e, buf, sizeof buf), "eval step 5: held-out acc 0.000 loss 0.6931 (3 pairs)");
}

static void event_lines_for_state_and_checkpoint(void **state) {
  (void)state;
  Dpod__V1__StateChange sc = DPOD__V1__STATE_CHANGE__INIT;
  sc.has_state = 1, sc.state = DPOD__V1__JOB_STATE__JOB_STATE_FAILED;
  sc.reason = "worker exited with status 3";
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_STATE, ev.state = &sc;
  assert_string_equal(fmt_event(&ev, buf, sizeof buf), "state failed: worker exited with status 3");

  Dpod__V1__CheckpointInfo c = DPOD__V1__CHECKPOINT_INFO__INIT;
  c.step = 10, c.path = "/run/ckpt/step-000010";
  c.has_size_bytes = 1, c.size_bytes = 3565158;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT, ev.checkpoint = &c;
  assert_string_equal(fmt_event(&ev, buf, sizeof buf), "checkpoint step 10: /run/ckpt/step-000010 (3.4 MiB)");
}

static void sizes_durations_and_bars(void **state) {
  (void)state;
  assert_string_equal(fmt_bytes(512, buf, sizeof buf), "512 B");
  assert_string_equal(fmt_bytes(1536, buf, sizeof buf), "1.5 KiB");
  assert_string_equal(fmt_bytes(5ull << 30, buf, sizeof buf), "5.0 GiB");
  assert_string_equal(fmt_duration(12.34, buf, sizeof buf), "12.3s");
  assert_string_equal(fmt_duration(245, buf, sizeof buf), "4m05s");
  assert_string_equal(fmt_duration(7380, buf, sizeof buf), "2h03m");
  assert_string_equal(fmt_duration(-1, buf, sizeof buf), "0.0s");
  assert_string_equal(fmt_age(90 * 1000, buf, sizeof buf), "90s");
  assert_string_equal(fmt_age(3 * 86400 * 1000ll, buf, sizeof buf), "3d");
  assert_string_equal(fmt_progress_bar(5, 10, 10, buf, sizeof buf), "[#####.....] ");
  assert_string_equal(fmt_progress_bar(12, 10, 4, buf, sizeof buf), "[####] ");
  assert_string_equal(fmt_progress_bar(5, 0, 10, buf, sizeof buf), "");
}

static void clocks_and_rates_as_tqdm_writes_them(void **state) {
  (void)state;
  assert_string_equal(fmt_clock(7.9, buf, sizeof buf), "00:07");
  assert_string_equal(fmt_clock(754, buf, sizeof buf), "12:34");
  assert_string_equal(fmt_clock(3723, buf, sizeof buf), "1:02:03");
  assert_string_equal(fmt_clock(-1, buf, sizeof buf), "?");
  assert_string_equal(fmt_rate(3.666, buf, sizeof buf), "3.67 step/s");
  assert_string_equal(fmt_rate(0.25, buf, sizeof buf), "4.00 s/step");
  assert_string_equal(fmt_rate(0, buf, sizeof buf), "? step/s");
}

static void rate_is_measured_between_event_times(void **state) {
  (void)state;
  fmt_rate_meter r = {0};
  assert_true(fmt_rate_meter_rate(&r) == 0);
  fmt_rate_meter_add(&r, 10, 100000);
  assert_true(fmt_rate_meter_rate(&r) == 0); /* one step: no speed yet */
  fmt_rate_meter_add(&r, 14, 102000);
  fmt_rate_meter_add(&r, 30, 108000);
  assert_float_equal(fmt_rate_meter_rate(&r), 20.0 / 8.0, 1e-12);
  /* A new attempt resumes from step 20: the measurement starts again there. */
  fmt_rate_meter_add(&r, 20, 200000);
  assert_true(fmt_rate_meter_rate(&r) == 0);
  fmt_rate_meter_add(&r, 21, 200500);
  assert_float_equal(fmt_rate_meter_rate(&r), 2.0, 1e-12);
}

static void progress_line_has_bar_rate_elapsed_eta_loss_and_acc(void **state) {
  (void)state;
  fmt_progress p = {.step = 45, .total = 100, .elapsed_s = 12.5, .steps_per_s = 3.666,
                    .has_loss = 1, .loss = 0.69314718, .has_acc = 1, .acc = 0.5};
  /* 55 left at 3.666 step/s: 15 s. The bar gets what is left of 79 columns, 15, and 6 marks of them. */
  assert_string_equal(fmt_progress_line(&p, 80, buf, sizeof buf),
                      "step 45/100 [######.........]  45% 00:12<00:15 3.67 step/s loss 0.6931 acc 0.50");
  assert_int_equal(strlen(buf), 79);
  /* A wide terminal: the bar stops at 30. */
  fmt_progress_line(&p, 200, buf, sizeof buf);
  assert_non_null(strstr(buf, "[#############.................]  45%"));
  /* Done: nothing left, 100%. */
  p.step = 100;
  assert_non_null(strstr(fmt_progress_line(&p, 200, buf, sizeof buf), "100% 00:12<00:00"));
}

static void progress_line_without_total_speed_or_metrics(void **state) {
  (void)state;
  fmt_progress p = {.step = 7, .elapsed_s = 3};
  assert_string_equal(fmt_progress_line(&p, 80, buf, sizeof buf), "step 7 00:03<? ? step/s");
  p.total = 10; /* no speed yet: no ETA */
  assert_string_equal(fmt_progress_line(&p, 60, buf, sizeof buf),
                      "step 7/10 [#################........]  70% 00:03<? ? step/s"); /* a bar of 25 */
}

static void progress_line_never_wraps_a_narrow_terminal(void **state) {
  (void)state;
  fmt_progress p = {.step = 45, .total = 100, .elapsed_s = 12, .steps_per_s = 2, .has_loss = 1, .loss = 0.5};
  /* Too narrow for a bar of 5: none, and the rest cut to 39 characters. */
  fmt_progress_line(&p, 40, buf, sizeof buf);
  assert_int_equal(strlen(buf), 39);
  assert_null(strchr(buf, '['));
  assert_memory_equal(buf, "step 45/100  45% 00:12<00:27 2.00 step/s", 39);
}

static void csv_has_a_column_per_field_and_leaves_absent_ones_empty(void **state) {
  (void)state;
  assert_string_equal(fmt_csv_header(&dpod__v1__step_metrics__descriptor, buf, sizeof buf),
                      "time_unix_ms,step,total_steps,loss,implicit_acc,policy_mse,ref_mse,reward_margin,grad_norm,"
                      "learning_rate,samples_per_sec,step_seconds,saturated_share,drift,loss_scale,skipped");
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.has_step = 1, m.step = 4;
  m.has_total_steps = 1, m.total_steps = 8;
  m.has_loss = 1, m.loss = 0.5;
  m.has_learning_rate = 1, m.learning_rate = 1e-4;
  m.grad_norm = 3; /* not marked present: an empty cell */
  assert_string_equal(fmt_csv_row(&m.base, 1700000000123, buf, sizeof buf), "1700000000123,4,8,0.5,,,,,,0.0001,,,,,,");
  m.has_loss_scale = 1, m.loss_scale = 32768;
  m.has_skipped = 1, m.skipped = 1;
  assert_string_equal(fmt_csv_row(&m.base, 1700000000123, buf, sizeof buf),
                      "1700000000123,4,8,0.5,,,,,,0.0001,,,,,32768,true");
}

static void json_carries_present_fields_by_proto_name(void **state) {
  (void)state;
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.has_step = 1, m.step = 4;
  m.has_total_steps = 1, m.total_steps = 8;
  m.has_loss = 1, m.loss = 0.5;
  m.learning_rate = 1e-4; /* not marked present: must not appear */
  Dpod__V1__CheckpointInfo c = DPOD__V1__CHECKPOINT_INFO__INIT;
  c.has_step = 1, c.step = 4;
  c.path = "/x";
  c.metrics = &m;
  char *text = pb_json_print(&c.base, 0);
  assert_non_null(text);
  assert_string_equal(text, "{\"step\":4,\"path\":\"/x\",\"metrics\":{\"step\":4,\"total_steps\":8,\"loss\":0.5}}");
  cJSON_free(text);
}

#define T(f) cmocka_unit_test(f)
int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      T(metrics_line_has_every_present_field),
      T(metrics_line_leaves_out_absent_fields),
      T(metrics_line_shows_the_loss_scale_and_a_skip),
      T(metrics_line_never_overruns_a_small_buffer),
      T(eval_line_with_pairs_and_samples),
      T(eval_line_with_samples_only),
      T(eval_line_with_pairs_only),
      T(event_lines_for_state_and_checkpoint),
      T(sizes_durations_and_bars),
      T(clocks_and_rates_as_tqdm_writes_them),
      T(rate_is_measured_between_event_times),
      T(progress_line_has_bar_rate_elapsed_eta_loss_and_acc),
      T(progress_line_without_total_speed_or_metrics),
      T(progress_line_never_wraps_a_narrow_terminal),
      T(csv_has_a_column_per_field_and_leaves_absent_ones_empty),
      T(json_carries_present_fields_by_proto_name),
  };
  return CMOCKA_MAIN("format", tests, NULL, NULL);
}
