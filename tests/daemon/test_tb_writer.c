/* The TensorBoard writer on a real job store: every step, evaluation, checkpoint and attempt lands in
 * RUN_DIR/tensorboard once, under its tag, across writers that stop, and after a torn last record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "job_spec.h"
#include "job_store.h"
#include "store_fixture.h"
#include "tb_file.h"
#include "tb_seen.h"
#include "tb_writer.h"

typedef struct {
  store_fixture st;
  char jobs[PATH_MAX + 16];
  char tb[PATH_MAX + 32]; /* job 1's tensorboard directory */
  char *db;               /* st.db */
  job_store *s;           /* st.s */
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f || store_fixture_open(&f->st, "dpod-tbw") != 0) return -1;
  snprintf(f->jobs, sizeof f->jobs, "%s/jobs", f->st.dir);
  snprintf(f->tb, sizeof f->tb, "%s/1/tensorboard", f->jobs);
  f->db = f->st.db;
  f->s = f->st.s;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  int rc = store_fixture_close(&f->st);
  free(f);
  return rc;
}

static uint64_t create_job(fixture *f) {
  Dpod__V1__JobSpec *spec = job_spec_new();
  assert_non_null(spec);
  uint64_t id = 0;
  assert_int_equal(job_store_create(f->s, spec, f->jobs, 1000, &id), 0);
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  return id;
}

static void append(fixture *f, uint64_t id, Dpod__V1__JobEvent *ev) {
  uint64_t seq = 0;
  assert_int_equal(job_store_append(f->s, id, ev, 5000, &seq), 0);
  assert_true(seq > 0);
}

static void append_metrics(fixture *f, uint64_t id, unsigned step) {
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.has_step = m.has_loss = m.has_implicit_acc = m.has_learning_rate = 1;
  m.step = step;
  m.loss = 1.0 / step;
  m.implicit_acc = 0.5;
  m.learning_rate = 1e-3;
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_METRICS;
  ev.metrics = &m;
  append(f, id, &ev);
}

static void append_attempt(fixture *f, uint64_t id, unsigned attempt, int64_t ended_ms) {
  Dpod__V1__AttemptInfo a = DPOD__V1__ATTEMPT_INFO__INIT;
  a.has_attempt = a.has_started_unix_ms = 1;
  a.attempt = attempt;
  a.started_unix_ms = 4000;
  a.has_ended_unix_ms = ended_ms > 0;
  a.ended_unix_ms = ended_ms;
  a.has_exit_code = ended_ms > 0;
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_ATTEMPT;
  ev.attempt = &a;
  append(f, id, &ev);
}

static tb_writer *start_writer(fixture *f) {
  tb_writer *w = NULL;
  char err[256];
  assert_int_equal(tb_writer_start(f->db, "test host/1", &w, err, sizeof err), 0);
  return w;
}

static void every_kind_of_event_is_written_under_its_tag(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f);
  append_attempt(f, id, 1, 0);
  for (unsigned s = 1; s <= 3; s++) append_metrics(f, id, s);
  Dpod__V1__EvalMetrics e = DPOD__V1__EVAL_METRICS__INIT;
  e.has_step = e.has_implicit_acc = e.has_loss = 1;
  e.step = 3;
  e.implicit_acc = 0.75;
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_EVAL;
  ev.eval = &e;
  append(f, id, &ev);
  Dpod__V1__CheckpointInfo c = DPOD__V1__CHECKPOINT_INFO__INIT;
  c.has_step = c.has_size_bytes = 1;
  c.step = 3;
  c.size_bytes = 2500000;
  c.path = "ckpt";
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
  ev.checkpoint = &c;
  append(f, id, &ev);
  append_attempt(f, id, 1, 6000);
  assert_int_equal(job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED, "ok", 0, 7000, NULL), 0);

  /* Written by the start-up catch-up alone: no notify. */
  tb_writer *w = start_writer(f);
  tb_writer_flush(w);
  tb_writer_stop(w);
  tb_seen seen;
  tb_seen_read(f->tb, &seen);
  assert_int_equal(seen.files, 1);
  assert_int_equal(seen.versions, 1);
  tb_seen_assert_steps_once(&seen, 3);
  assert_int_equal(seen.evals, 1);
  assert_int_equal(seen.checkpoints, 1);
  assert_int_equal(seen.attempts, 1);
  assert_int_equal(seen.exits, 1);
  assert_int_equal(seen.summaries, 7); /* attempt, 3 steps, eval, checkpoint, attempt end; no state */
  /* The file is the owner's alone, named as TensorBoard names them, the host made a file name. */
  DIR *d = opendir(f->tb);
  struct dirent *de;
  while ((de = readdir(d)))
    if (de->d_name[0] != '.') {
      assert_non_null(strstr(de->d_name, ".test_host_1."));
      char path[PATH_MAX + 300];
      snprintf(path, sizeof path, "%s/%s", f->tb, de->d_name);
      struct stat st;
      assert_int_equal(stat(path, &st), 0);
      assert_int_equal(st.st_mode & 0777, 0600);
    }
  closedir(d);

  /* A record's value: the checkpoint's size in MB, at its step. */
  unsigned char buf[1024];
  int64_t step = 0;
  ev.seq = 9;
  ev.time_unix_ms = 1500;
  size_t n = tb_writer_record_(&ev, &step, buf, sizeof buf);
  assert_true(n > TFRECORD_OVERHEAD);
  assert_int_equal(step, 3);
  Dpod__Tb__Event *out = dpod__tb__event__unpack(NULL, n - TFRECORD_OVERHEAD, buf + 12);
  assert_non_null(out);
  assert_int_equal(out->dpod_seq, 9);
  assert_float_equal(out->wall_time, 1.5, 1e-9);
  assert_int_equal(out->summary->n_value, 1);
  assert_float_equal(out->summary->value[0]->simple_value, 2.5, 1e-6);
  dpod__tb__event__free_unpacked(out, NULL);
  /* State changes have no record; a record that does not fit is not written. */
  Dpod__V1__StateChange sc = DPOD__V1__STATE_CHANGE__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_STATE;
  ev.state = &sc;
  assert_int_equal(tb_writer_record_(&ev, &step, buf, sizeof buf), 0);
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
  ev.checkpoint = &c; /* the oneof's pointer was the state's */
  assert_int_equal(tb_writer_record_(&ev, &step, buf, 20), 0);
}

/* Loss scaling's metrics become scalars of their own: train/loss_scale, and train/skipped as 1 or 0; a
 * step without scaling has neither. */
static void loss_scale_and_skip_are_scalars(void **state) {
  (void)state;
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.has_step = m.has_loss = 1;
  m.step = 5;
  m.loss = 0.25;
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_METRICS;
  ev.metrics = &m;
  unsigned char buf[1024];
  for (int scaled = 0; scaled < 2; scaled++) {
    m.has_loss_scale = m.has_skipped = scaled;
    m.loss_scale = 32768;
    m.skipped = 1;
    int64_t step = 0;
    size_t n = tb_writer_record_(&ev, &step, buf, sizeof buf);
    assert_true(n > TFRECORD_OVERHEAD);
    assert_int_equal(step, 5);
    Dpod__Tb__Event *out = dpod__tb__event__unpack(NULL, n - TFRECORD_OVERHEAD, buf + 12);
    assert_non_null(out);
    assert_int_equal(out->summary->n_value, scaled ? 3 : 1);
    assert_string_equal(out->summary->value[0]->tag, "train/loss");
    if (scaled) {
      assert_string_equal(out->summary->value[1]->tag, "train/loss_scale");
      assert_float_equal(out->summary->value[1]->simple_value, 32768, 0);
      assert_string_equal(out->summary->value[2]->tag, "train/skipped");
      assert_float_equal(out->summary->value[2]->simple_value, 1, 0);
    }
    dpod__tb__event__free_unpacked(out, NULL);
  }
}

static void a_restarted_writer_goes_on_after_its_last_record(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f);
  tb_writer *w = start_writer(f);
  for (unsigned s = 1; s <= 5; s++) {
    append_metrics(f, id, s);
    tb_writer_notify(w, id);
  }
  tb_writer_flush(w);
  tb_writer_stop(w);
  tb_seen seen;
  tb_seen_read(f->tb, &seen);
  tb_seen_assert_steps_once(&seen, 5);
  /* Events stored while no writer ran, then a new writer: a second file, nothing twice. */
  for (unsigned s = 6; s <= 8; s++) append_metrics(f, id, s);
  w = start_writer(f);
  tb_writer_flush(w);
  append_metrics(f, id, 9);
  tb_writer_notify(w, id);
  tb_writer_flush(w);
  tb_writer_stop(w);
  tb_seen_read(f->tb, &seen);
  assert_int_equal(seen.files, 2);
  assert_int_equal(seen.versions, 2);
  tb_seen_assert_steps_once(&seen, 9);
  for (unsigned s = 1; s <= 9; s++) assert_float_equal(seen.loss_value[s], 1.0 / s, 1e-6);
  /* A writer with nothing new writes no file at all. */
  w = start_writer(f);
  tb_writer_flush(w);
  tb_writer_stop(w);
  tb_seen_read(f->tb, &seen);
  assert_int_equal(seen.files, 2);
}

static void a_torn_last_record_is_cut_off_and_written_again(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f);
  for (unsigned s = 1; s <= 4; s++) append_metrics(f, id, s);
  tb_writer *w = start_writer(f);
  tb_writer_flush(w);
  tb_writer_stop(w);
  DIR *d = opendir(f->tb);
  struct dirent *de;
  char path[PATH_MAX + 300] = "";
  while ((de = readdir(d)))
    if (de->d_name[0] != '.') snprintf(path, sizeof path, "%s/%s", f->tb, de->d_name);
  closedir(d);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  /* As a kill -9 in the middle of a write leaves it: step 4's record cut in its data. */
  assert_int_equal(truncate(path, st.st_size - 9), 0);
  tb_file_info info;
  char err[256];
  assert_int_equal(tb_file_scan(path, &info, err, sizeof err), 0);
  assert_int_equal(info.tail, TFRECORD_TORN);
  w = start_writer(f);
  tb_writer_flush(w);
  tb_writer_stop(w);
  /* The old file ends with its last whole record, and step 4 is in the new one, once. */
  assert_int_equal(tb_file_scan(path, &info, err, sizeof err), 0);
  assert_int_equal(info.tail, TFRECORD_END);
  assert_int_equal(info.good_len, info.file_len);
  tb_seen seen;
  tb_seen_read(f->tb, &seen);
  assert_int_equal(seen.files, 2);
  tb_seen_assert_steps_once(&seen, 4);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(every_kind_of_event_is_written_under_its_tag, setup, teardown),
      cmocka_unit_test(loss_scale_and_skip_are_scalars),
      cmocka_unit_test_setup_teardown(a_restarted_writer_goes_on_after_its_last_record, setup, teardown),
      cmocka_unit_test_setup_teardown(a_torn_last_record_is_cut_off_and_written_again, setup, teardown),
  };
  return CMOCKA_MAIN("daemon.tb_writer", tests, NULL, NULL);
}
