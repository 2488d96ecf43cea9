/* The job store: rows and events survive, seqs are gap-free, appends are atomic, retries dedupe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include <sqlite3.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpod_error.h"
#include "job_spec.h"
#include "job_store.h"
#include "store_fixture.h"

typedef store_fixture fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f || store_fixture_open(f, "dpod-store") != 0) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  int rc = store_fixture_close(f);
  free(f);
  return rc;
}

static uint64_t create_job(fixture *f, const char *name, unsigned ranks) {
  Dpod__V1__JobSpec *spec = job_spec_new();
  assert_non_null(spec);
  free(spec->name); /* job_spec_new() fills in a copy of the default */
  spec->name = strdup(name);
  spec->has_ranks = 1;
  spec->ranks = ranks;
  uint64_t id = 0;
  assert_int_equal(job_store_create(f->s, spec, "/state/jobs", 1000, &id), 0);
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  return id;
}

static uint64_t append_metrics(fixture *f, uint64_t id, unsigned step) {
  Dpod__V1__StepMetrics m = DPOD__V1__STEP_METRICS__INIT;
  m.has_step = 1;
  m.step = step;
  m.has_loss = 1;
  m.loss = 0.5 / step;
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_METRICS;
  ev.metrics = &m;
  uint64_t seq = 99;
  assert_int_equal(job_store_append(f->s, id, &ev, 2000 + step, &seq), 0);
  return seq;
}

/* A spec stored the way dpod stored them before specs were normalized (only what its client set) reads
 * back with every default filled in and marked set, in GetJob's Job and in ListJobs'. */
static void a_spec_stored_without_its_defaults_reads_back_with_them(void **state) {
  fixture *f = *state;
  Dpod__V1__JobSpec bare = DPOD__V1__JOB_SPEC__INIT;
  bare.name = "old";
  uint64_t id = 0;
  assert_int_equal(job_store_create(f->s, &bare, "/state/jobs", 1000, &id), 0);
  Dpod__V1__Job *job = NULL;
  assert_int_equal(job_store_get(f->s, id, &job), 0);
  const Dpod__V1__JobSpec *spec = job->spec;
  assert_string_equal(spec->name, "old");
  assert_non_null(spec->train);
  assert_true(spec->train->has_beta && spec->train->beta == 5000);
  assert_true(spec->has_ranks && spec->ranks == 1);
  assert_non_null(spec->data);
  assert_string_equal(spec->data->dataset, "builtin:synthetic");
  assert_true(spec->data->dataset != spec->data->base.descriptor->fields[0].default_value);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  assert_int_equal(job_store_list(f->s, NULL, 0, 0, false, &jobs, &n), 0);
  assert_int_equal(n, 1);
  assert_true(jobs[0]->spec->train->has_steps);
  assert_int_equal(jobs[0]->spec->train->steps, 20);
  job_store_free_jobs(jobs, n);
}

static void created_job_reads_back_with_its_first_event(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "alpha", 2);
  assert_int_equal(id, 1);
  Dpod__V1__Job *job = NULL;
  assert_int_equal(job_store_get(f->s, id, &job), 0);
  assert_string_equal(job->name, "alpha");
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  assert_non_null(job->spec);
  assert_int_equal(job->spec->ranks, 2);
  assert_non_null(job->spec->train);
  assert_string_equal(job->run_dir, "/state/jobs/1");
  assert_int_equal(job->last_seq, 1);
  assert_int_equal(job->created_unix_ms, 1000);
  assert_null(job->last_metrics);
  protobuf_c_message_free_unpacked(&job->base, NULL);

  Dpod__V1__JobEvent *ev = NULL;
  assert_int_equal(job_store_get_event(f->s, id, 1, &ev), 0);
  assert_int_equal(ev->seq, 1);
  assert_int_equal(ev->job_id, id);
  assert_int_equal(ev->event_case, DPOD__V1__JOB_EVENT__EVENT_STATE);
  assert_int_equal(ev->state->state, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  assert_int_equal(job_store_get_event(f->s, id, 2, &ev), DPOD_ENOENT);
  assert_int_equal(job_store_get(f->s, 42, &job), DPOD_ENOENT);
}

static void events_append_gap_free_and_read_back_in_order(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "beta", 1);
  uint64_t other = create_job(f, "other", 1);
  uint64_t seq = 0;
  assert_int_equal(job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, NULL, 0, 1500, &seq), 0);
  assert_int_equal(seq, 2);
  /* Another job's events have their own sequence. */
  assert_int_equal(job_store_append_state(f->s, other, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED, "x", 0, 1500, &seq), 0);
  assert_int_equal(seq, 2);
  assert_int_equal(job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, NULL, 0, 1600, &seq), 0);
  assert_int_equal(seq, 3);
  assert_int_equal(append_metrics(f, id, 1), 4);
  assert_int_equal(append_metrics(f, id, 2), 5);
  assert_int_equal(job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "dpo-worker exited with status 1", 1,
                                          3000, &seq),
                   0);
  assert_int_equal(seq, 6);

  static const int kinds[] = {DPOD__V1__JOB_EVENT__EVENT_STATE, DPOD__V1__JOB_EVENT__EVENT_STATE,
                              DPOD__V1__JOB_EVENT__EVENT_STATE, DPOD__V1__JOB_EVENT__EVENT_METRICS,
                              DPOD__V1__JOB_EVENT__EVENT_METRICS, DPOD__V1__JOB_EVENT__EVENT_STATE};
  for (uint64_t s = 1; s <= 6; s++) {
    Dpod__V1__JobEvent *ev = NULL;
    assert_int_equal(job_store_get_event(f->s, id, s, &ev), 0);
    assert_int_equal(ev->seq, s);
    assert_int_equal(ev->event_case, kinds[s - 1]);
    protobuf_c_message_free_unpacked(&ev->base, NULL);
  }
  Dpod__V1__Job *job = NULL;
  assert_int_equal(job_store_get(f->s, id, &job), 0);
  assert_int_equal(job->state, DPOD__V1__JOB_STATE__JOB_STATE_FAILED);
  assert_string_equal(job->reason, "dpo-worker exited with status 1");
  assert_int_equal(job->exit_code, 1);
  assert_int_equal(job->started_unix_ms, 1500);
  assert_int_equal(job->finished_unix_ms, 3000);
  assert_int_equal(job->last_seq, 6);
  assert_non_null(job->last_metrics);
  assert_int_equal(job->last_metrics->step, 2);
  protobuf_c_message_free_unpacked(&job->base, NULL);
}

static void retried_metrics_and_checkpoints_are_stored_once(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "gamma", 1);
  assert_int_equal(append_metrics(f, id, 1), 2);
  assert_int_equal(append_metrics(f, id, 2), 3);
  assert_int_equal(append_metrics(f, id, 2), 0); /* retry */
  assert_int_equal(append_metrics(f, id, 1), 0); /* older */
  assert_int_equal(append_metrics(f, id, 3), 4);

  Dpod__V1__CheckpointInfo ck = DPOD__V1__CHECKPOINT_INFO__INIT;
  ck.has_step = 1;
  ck.step = 3;
  ck.path = "/ckpt/3";
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
  ev.checkpoint = &ck;
  uint64_t seq = 0;
  assert_int_equal(job_store_append(f->s, id, &ev, 5000, &seq), 0);
  assert_int_equal(seq, 5);
  assert_int_equal(job_store_append(f->s, id, &ev, 5001, &seq), 0);
  assert_int_equal(seq, 0);

  job_info info;
  assert_int_equal(job_store_get_info(f->s, id, &info), 0);
  assert_int_equal(info.last_seq, 5);
  Dpod__V1__Job *job = NULL;
  assert_int_equal(job_store_get(f->s, id, &job), 0);
  assert_int_equal(job->last_metrics->step, 3);
  assert_string_equal(job->last_checkpoint->path, "/ckpt/3");
  protobuf_c_message_free_unpacked(&job->base, NULL);
}

static void append_to_unknown_job_stores_nothing(void **state) {
  fixture *f = *state;
  uint64_t seq = 7;
  assert_int_equal(job_store_append_state(f->s, 77, DPOD__V1__JOB_STATE__JOB_STATE_RUNNING, NULL, 0, 1, &seq), DPOD_ENOENT);
  assert_int_equal(seq, 0);
  Dpod__V1__JobEvent *ev = NULL;
  assert_int_equal(job_store_get_event(f->s, 77, 1, &ev), DPOD_ENOENT);
}

/* A failure after the event row is written must take the row back with it: last_seq and the events
 * never disagree. A trigger makes the last_seq update fail. */
static void failed_append_rolls_back_event_and_last_seq(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "delta", 1);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db,
                                "CREATE TRIGGER no_seq BEFORE UPDATE OF last_seq ON jobs "
                                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  uint64_t seq = 5;
  assert_int_equal(job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, NULL, 0, 1, &seq), DPOD_EDB);
  assert_int_equal(seq, 0);
  Dpod__V1__JobEvent *ev = NULL;
  assert_int_equal(job_store_get_event(f->s, id, 2, &ev), DPOD_ENOENT);
  job_info info;
  assert_int_equal(job_store_get_info(f->s, id, &info), 0);
  assert_int_equal(info.last_seq, 1);
  assert_int_equal(info.state, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);

  assert_int_equal(sqlite3_exec(db, "DROP TRIGGER no_seq", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  assert_int_equal(job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, NULL, 0, 1, &seq), 0);
  assert_int_equal(seq, 2);
}

static void reopened_store_finds_its_data(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "epsilon", 1);
  assert_int_equal(append_metrics(f, id, 1), 2);
  assert_int_equal(job_store_set_secret(f->s, id, "abc"), 0);
  assert_int_equal(job_store_set_cancel_requested(f->s, id), 0);
  assert_int_equal(job_store_set_launch_handle(f->s, id, "mpirun:sid=4242,attempt=1"), 0);
  job_store_close(f->s);
  f->s = NULL;

  char err[256];
  assert_int_equal(job_store_open(f->db, &f->s, err, sizeof err), 0);
  job_info info;
  assert_int_equal(job_store_get_info(f->s, id, &info), 0);
  assert_int_equal(info.last_seq, 2);
  assert_string_equal(info.secret, "abc");
  assert_true(info.cancel_requested);
  assert_string_equal(info.launch_handle, "mpirun:sid=4242,attempt=1");
  Dpod__V1__JobEvent *ev = NULL;
  assert_int_equal(job_store_get_event(f->s, id, 2, &ev), 0);
  assert_int_equal(ev->metrics->step, 1);
  protobuf_c_message_free_unpacked(&ev->base, NULL);
  /* Ids keep counting; dedupe state survived too. */
  assert_int_equal(create_job(f, "zeta", 1), id + 1);
  assert_int_equal(append_metrics(f, id, 1), 0);
}

static void list_filters_by_state_newest_first(void **state) {
  fixture *f = *state;
  uint64_t a = create_job(f, "a", 1), b = create_job(f, "b", 1), c = create_job(f, "c", 1);
  job_store_append_state(f->s, b, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED, "cancelled by user", 0, 1, NULL);
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  assert_int_equal(job_store_list(f->s, NULL, 0, 0, false, &jobs, &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(jobs[0]->id, c);
  assert_int_equal(jobs[2]->id, a);
  job_store_free_jobs(jobs, n);

  Dpod__V1__JobState queued = DPOD__V1__JOB_STATE__JOB_STATE_QUEUED;
  assert_int_equal(job_store_list(f->s, &queued, 1, 0, true, &jobs, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(jobs[0]->id, a);
  assert_int_equal(jobs[1]->id, c);
  job_store_free_jobs(jobs, n);

  assert_int_equal(job_store_list(f->s, NULL, 0, 1, false, &jobs, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(jobs[0]->id, c);
  job_store_free_jobs(jobs, n);
}

/* However many filters a request names, none is dropped: the one that matches can come last, and a
 * state number no job has matches nothing. */
static void list_takes_any_number_of_state_filters(void **state) {
  fixture *f = *state;
  uint64_t a = create_job(f, "a", 1);
  job_store_append_state(f->s, a, DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED, "cancelled by user", 0, 1, NULL);
  Dpod__V1__JobState filters[100];
  for (int i = 0; i < 99; i++) filters[i] = (i % 2) ? DPOD__V1__JOB_STATE__JOB_STATE_RUNNING : (Dpod__V1__JobState)1000;
  filters[99] = DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED;
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  assert_int_equal(job_store_list(f->s, filters, 100, 0, false, &jobs, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(jobs[0]->id, a);
  job_store_free_jobs(jobs, n);
  assert_int_equal(job_store_list(f->s, filters, 99, 0, false, &jobs, &n), 0);
  assert_int_equal(n, 0);
  job_store_free_jobs(jobs, n);
}

/* A restart (back to QUEUED) clears the finish time and a pending cancel; other states keep them. */
static void requeued_job_loses_its_finish_time_and_cancel(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "r", 1);
  job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_STARTING, NULL, 0, 5, NULL);
  assert_int_equal(job_store_set_cancel_requested(f->s, id), 0);
  job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_FAILED, "x", 1, 9, NULL);
  Dpod__V1__Job *job = NULL;
  job_info info;
  assert_int_equal(job_store_get(f->s, id, &job), 0);
  assert_int_equal(job->finished_unix_ms, 9);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  assert_int_equal(job_store_get_info(f->s, id, &info), 0);
  assert_true(info.cancel_requested);
  job_store_append_state(f->s, id, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED, "restarted by user", 0, 12, NULL);
  assert_int_equal(job_store_get(f->s, id, &job), 0);
  assert_int_equal(job->finished_unix_ms, 0);
  assert_int_equal(job->started_unix_ms, 5);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  assert_int_equal(job_store_get_info(f->s, id, &info), 0);
  assert_false(info.cancel_requested);
}

static void newer_schema_is_refused(void **state) {
  fixture *f = *state;
  sqlite3 *db;
  assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
  int version = 0;
  sqlite3_stmt *st;
  sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  version = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  assert_int_equal(version, JOB_STORE_SCHEMA_VERSION);
  assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  job_store *s2 = NULL;
  char err[256];
  assert_int_equal(job_store_open(f->db, &s2, err, sizeof err), DPOD_EUNSUPPORTED);
  assert_null(s2);
  assert_non_null(strstr(err, "99"));
}

/* Takes a database of this version back to schema 4, so that older databases can be made from it. */
#define UNDO_V5                                                                                         \
  "DROP TABLE attempts; DROP TABLE checkpoints; DROP TABLE settings; ALTER TABLE jobs DROP COLUMN restarts;" \
  " ALTER TABLE jobs DROP COLUMN not_before_ms;"

/* A database of schema 4 (before attempts and listed checkpoints) gains them: its last checkpoint is
 * listed, and it has no attempts. */
static void version_4_database_lists_its_last_checkpoint(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "four", 1);
  Dpod__V1__CheckpointInfo ck = DPOD__V1__CHECKPOINT_INFO__INIT;
  ck.has_step = 1;
  ck.step = 7;
  ck.path = "/runs/four/checkpoints/step-000007";
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT;
  ev.checkpoint = &ck;
  assert_int_equal(job_store_append(f->s, id, &ev, 1, NULL), 0);
  job_store_close(f->s);
  f->s = NULL;
  sqlite3 *db;
  assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, UNDO_V5 "PRAGMA user_version = 4;", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  char err[256];
  assert_int_equal(job_store_open(f->db, &f->s, err, sizeof err), 0);
  Dpod__V1__Job *job = NULL;
  assert_int_equal(job_store_get(f->s, id, &job), 0);
  assert_int_equal(job->n_checkpoints, 1);
  assert_int_equal(job->checkpoints[0]->step, 7);
  assert_int_equal(job->n_attempts, 0);
  protobuf_c_message_free_unpacked(&job->base, NULL);
}

/* A database written by the dpod before sessions were stored (schema 2) opens, keeps its jobs, and
 * gains the launch handle column. */
static void version_2_database_is_migrated(void **state) {
  fixture *f = *state;
  uint64_t id = create_job(f, "old", 1);
  job_store_close(f->s);
  f->s = NULL;
  sqlite3 *db;
  assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, UNDO_V5 "ALTER TABLE jobs DROP COLUMN launch_handle; PRAGMA user_version = 2;", NULL,
                                NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);

  char err[256];
  assert_int_equal(job_store_open(f->db, &f->s, err, sizeof err), 0);
  job_info info;
  assert_int_equal(job_store_get_info(f->s, id, &info), 0);
  assert_string_equal(info.launch_handle, "");
  assert_int_equal(job_store_set_launch_handle(f->s, id, "mpirun:sid=7,attempt=1"), 0);
  assert_int_equal(job_store_get_info(f->s, id, &info), 0);
  assert_string_equal(info.launch_handle, "mpirun:sid=7,attempt=1");
}

/* Schema 3 stored mpirun's session id as an integer: it becomes that session's handle, attempt 1, and a
 * job never launched keeps no handle. */
static void version_3_session_becomes_a_launch_handle(void **state) {
  fixture *f = *state;
  uint64_t launched = create_job(f, "launched", 1), queued = create_job(f, "queued", 1);
  job_store_close(f->s);
  f->s = NULL;
  sqlite3 *db;
  char sql[1024];
  snprintf(sql, sizeof sql,
           UNDO_V5 "ALTER TABLE jobs DROP COLUMN launch_handle; ALTER TABLE jobs ADD COLUMN session_id INTEGER NOT NULL "
           "DEFAULT 0; UPDATE jobs SET session_id = 4242 WHERE id = %llu; PRAGMA user_version = 3;",
           (unsigned long long)launched);
  assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);

  char err[256];
  assert_int_equal(job_store_open(f->db, &f->s, err, sizeof err), 0);
  job_info info;
  assert_int_equal(job_store_get_info(f->s, launched, &info), 0);
  assert_string_equal(info.launch_handle, "mpirun:sid=4242,attempt=1");
  assert_int_equal(job_store_get_info(f->s, queued, &info), 0);
  assert_string_equal(info.launch_handle, "");
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(created_job_reads_back_with_its_first_event, setup, teardown),
      cmocka_unit_test_setup_teardown(a_spec_stored_without_its_defaults_reads_back_with_them, setup, teardown),
      cmocka_unit_test_setup_teardown(events_append_gap_free_and_read_back_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(retried_metrics_and_checkpoints_are_stored_once, setup, teardown),
      cmocka_unit_test_setup_teardown(append_to_unknown_job_stores_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(failed_append_rolls_back_event_and_last_seq, setup, teardown),
      cmocka_unit_test_setup_teardown(reopened_store_finds_its_data, setup, teardown),
      cmocka_unit_test_setup_teardown(list_filters_by_state_newest_first, setup, teardown),
      cmocka_unit_test_setup_teardown(list_takes_any_number_of_state_filters, setup, teardown),
      cmocka_unit_test_setup_teardown(requeued_job_loses_its_finish_time_and_cancel, setup, teardown),
      cmocka_unit_test_setup_teardown(newer_schema_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(version_2_database_is_migrated, setup, teardown),
      cmocka_unit_test_setup_teardown(version_3_session_becomes_a_launch_handle, setup, teardown),
      cmocka_unit_test_setup_teardown(version_4_database_lists_its_last_checkpoint, setup, teardown),
  };
  return CMOCKA_MAIN("job_store", tests, NULL, NULL);
}
