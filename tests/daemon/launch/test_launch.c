/* The launch interface with the mpirun backend: handles, exit records, an attempt's life from start to
 * exit callback under the real dpod-supervisor, stopping, and adoption from a handle after a restart. A
 * shell script stands in for mpirun, so these run without MPI. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "test_util.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "launch.h"

typedef struct {
  char dir[PATH_MAX];
  char run_dir[PATH_MAX + 8];
  char fake_mpirun[PATH_MAX + 16];
  uv_loop_t loop;
  launch_backend *b;
  int exits;
  launch_exit last;
} fixture;

/* A stand-in for mpirun: records its arguments and environment, then exits with $FAKE_EXIT, or acts
 * out one of the states a stop can find mpirun in (each writes $FAKE_DIR/ready once there):
 *   wait      one rank (its arguments mpirun's, as a real rank's name the run directory) runs until a
 *             SIGTERM makes it exit 4 (it is ready once it handles the signal); mpirun then exits as its
 *             rank did;
 *   starting  no rank yet: only a SIGTERM to mpirun ends it (exit 4);
 *   winddown  its rank did some work and exited 3; mpirun tears the job down for a second, then exits
 *             3. A SIGTERM then is what crashes the real one: the fake exits 139.
 * Every SIGTERM mpirun itself gets is written to $FAKE_DIR/mpirun-signals. */
static const char fake_mpirun_text[] =
    "#!/bin/bash\n"
    "printf '%s\\n' \"$@\" > \"$FAKE_DIR/args\"\n"
    "env > \"$FAKE_DIR/env\"\n"
    "echo 'dpo-worker ERROR rank 0: the reason it failed'\n"
    "term() { echo TERM >> \"$FAKE_DIR/mpirun-signals\"; exit $1; }\n"
    "ready() { mkfifo \"$FAKE_DIR/fifo\"; exec 3<>\"$FAKE_DIR/fifo\"; : > \"$FAKE_DIR/ready\"; }\n"
    "pause() { read -t $1 -u 3; } # a wait that starts no process (a child would look like a rank)\n"
    "case $FAKE_EXIT in\n"
    "  wait) trap 'term 4' TERM\n"
    "    bash -c 'trap \"exit 4\" TERM; : > \"$FAKE_DIR/ready\"; while :; do sleep 0.05; done' rank \"$@\" &\n"
    "    wait $!; exit $? ;;\n"
    "  starting) trap 'term 4' TERM; ready; while :; do pause 0.05; done ;;\n"
    "  winddown) trap 'term 139' TERM\n"
    "    bash -c 'i=0; while [ $i -lt 100000 ]; do i=$((i + 1)); done; exit 3'; rc=$?\n"
    "    ready; pause 1; exit $rc ;;\n"
    "esac\n"
    "exit \"$FAKE_EXIT\"\n";

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f || test_mkdtemp(f->dir, sizeof f->dir, "dpod-launch") != 0) return -1;
  snprintf(f->run_dir, sizeof f->run_dir, "%s/run", f->dir);
  snprintf(f->fake_mpirun, sizeof f->fake_mpirun, "%s/fake-mpirun", f->dir);
  if (dpod_write_file_atomic(f->fake_mpirun, fake_mpirun_text, strlen(fake_mpirun_text), 0, NULL, 0) != 0 ||
      chmod(f->fake_mpirun, 0755) != 0 || uv_loop_init(&f->loop) != 0)
    return -1;
  setenv("FAKE_DIR", f->dir, 1);
  launch_mpirun_params p = launch_mpirun_default_params();
  p.mpirun = f->fake_mpirun;
  p.supervisor = SUPERVISOR;
  p.worker = "/nonexistent/dpo-worker";
  p.report_addr = "unix:/nowhere.sock";
  p.slots = 3;
  char err[256];
  if (launch_mpirun_create(&f->loop, &p, &f->b, err, sizeof err) != 0) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  launch_backend_free(f->b);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  uv_loop_close(&f->loop);
  /* Attempts outlive their backend: kill what a failed case left running before removing its files. */
  char cmd[PATH_MAX * 2 + 64];
  /* "[/]tmp/..." matches the processes' "/tmp/..." but not this shell's own command line. */
  snprintf(cmd, sizeof cmd, "pkill -KILL -f -- '[%c]%s/' ; rm -rf '%s'", f->dir[0], f->dir + 1, f->dir);
  if (system(cmd) != 0) return -1;
  free(f);
  return 0;
}

static void on_exit_cb(launch_run *r, const launch_exit *ex, void *arg) {
  (void)r;
  fixture *f = arg;
  f->exits++;
  f->last = *ex;
}

static launch_run *start(fixture *f, uint32_t attempt, const char *fake_exit, char *handle) {
  setenv("FAKE_EXIT", fake_exit, 1);
  static const uint8_t spec[] = {0x10, 0x02}; /* ranks: 2 */
  launch_request req = {.job_id = 7,
                        .attempt = attempt,
                        .ranks = 2,
                        .threads_per_rank = 3,
                        .run_dir = f->run_dir,
                        .secret = "s3cret",
                        .spec_pb = spec,
                        .spec_len = sizeof spec};
  launch_run *r = NULL;
  char err[512];
  if (launch_start(f->b, &req, on_exit_cb, f, &r, handle, err, sizeof err) != 0) fail_msg("launch_start: %s", err);
  return r;
}

static void run_until_exit(fixture *f, int exits) {
  for (int i = 0; i < 1000 && f->exits < exits; i++) uv_run(&f->loop, UV_RUN_ONCE);
  assert_int_equal(f->exits, exits);
}

/* An adopted attempt has no child to wait for: poll, as the daemon's cron does, until it has ended. */
static void poll_until_exit(fixture *f, int exits) {
  for (int i = 0; i < 500 && f->exits < exits; i++) {
    launch_poll(f->b);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    usleep(10000);
  }
  assert_int_equal(f->exits, exits);
}

/* Processes of session `sid` that are not zombies (this process is the killed supervisor's parent, so it
 * lingers as one). */
static int live_in_session(int sid) {
  char cmd[96];
  snprintf(cmd, sizeof cmd, "ps -s %d -o stat= | grep -vc '^Z'", sid);
  FILE *p = popen(cmd, "r");
  int n = -1;
  if (p && fscanf(p, "%d", &n) != 1) n = -1;
  if (p) pclose(p);
  return n;
}

/* Waits until the fake mpirun is in the state its mode acts out. */
static void wait_started(fixture *f) {
  char path[PATH_MAX * 2];
  snprintf(path, sizeof path, "%s/ready", f->dir);
  for (int i = 0; i < 500 && access(path, F_OK) != 0; i++) uv_run(&f->loop, UV_RUN_NOWAIT), usleep(10000);
  assert_int_equal(access(path, F_OK), 0);
}

static int mpirun_was_signalled(const fixture *f) {
  char path[PATH_MAX * 2];
  snprintf(path, sizeof path, "%s/mpirun-signals", f->dir);
  return access(path, F_OK) == 0;
}

static void handles_carry_backend_fields_and_attempt(void **state) {
  (void)state;
  char v[32];
  const char *h = "mpirun:sid=1234,attempt=2";
  assert_true(launch_handle_is(h, "mpirun"));
  assert_false(launch_handle_is(h, "slurm"));
  assert_false(launch_handle_is("mpiru:sid=1", "mpirun"));
  assert_int_equal(launch_handle_attempt(h), 2);
  assert_int_equal(launch_handle_get(h, "sid", v, sizeof v), 0);
  assert_string_equal(v, "1234");
  assert_int_equal(launch_handle_get(h, "job", v, sizeof v), DPOD_ENOENT);
  assert_int_equal(launch_handle_get(h, "att", v, sizeof v), DPOD_ENOENT);
  assert_int_equal(launch_handle_attempt(""), 0);
  assert_int_equal(launch_handle_attempt("mpirun:sid=1"), 0);
  assert_int_equal(launch_handle_attempt("mpirun:attempt=x"), 0);
  assert_int_equal(launch_handle_attempt("mpirun:attempt=99999999999"), 0);
}

static void exit_records_round_trip_and_refuse_nonsense(void **state) {
  fixture *f = *state;
  char err[512], path[PATH_MAX * 2];
  assert_int_equal(dpod_mkdirs(f->run_dir, 0700, 0, err, sizeof err), 0);
  launch_exit in = {.attempt = 3, .exit_status = 4, .term_signal = 0, .finished_unix_ms = 1733130000123}, out;
  assert_int_equal(launch_exit_record_write(f->run_dir, &in, err, sizeof err), 0);
  assert_int_equal(launch_exit_record_read(f->run_dir, 3, &out, err, sizeof err), 0);
  assert_int_equal(out.attempt, 3);
  assert_int_equal(out.exit_status, 4);
  assert_int_equal(out.term_signal, 0);
  assert_true(out.finished_unix_ms == 1733130000123);
  assert_int_equal(launch_exit_record_read(f->run_dir, 2, &out, err, sizeof err), DPOD_ENOENT);

  /* What a batch script's printf writes reads back the same; keys in any order, unknown ones skipped. */
  launch_exit_record_path(f->run_dir, 5, path, sizeof path);
  const char *shell = "term_signal 9\nexit_status 0\nhost node7\nattempt 5\n";
  assert_int_equal(dpod_write_file_atomic(path, shell, strlen(shell), 0, NULL, 0), 0);
  assert_int_equal(launch_exit_record_read(f->run_dir, 5, &out, err, sizeof err), 0);
  assert_int_equal(out.term_signal, 9);

  const char *bad[] = {"attempt 6\nexit_status 0\n", "attempt 6\nexit_status 300\nterm_signal 0\n",
                       "attempt 7\nexit_status 0\nterm_signal 0\n", "attempt six\n"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    launch_exit_record_path(f->run_dir, 6, path, sizeof path);
    assert_int_equal(dpod_write_file_atomic(path, bad[i], strlen(bad[i]), 0, NULL, 0), 0);
    assert_int_equal(launch_exit_record_read(f->run_dir, 6, &out, err, sizeof err), DPOD_EFORMAT);
    assert_non_null(strstr(err, "attempt-6.exit"));
  }
}

/* An attempt runs mpirun with the worker's command line, the secret only in the environment, and ends
 * with one exit callback and an exit record that says the same. */
static void attempt_runs_and_its_exit_is_recorded(void **state) {
  fixture *f = *state;
  char handle[LAUNCH_HANDLE_MAX], path[PATH_MAX * 2], err[512];
  launch_run *r = start(f, 2, "3", handle);
  assert_true(launch_handle_is(handle, "mpirun"));
  assert_int_equal(launch_handle_attempt(handle), 2);
  assert_string_equal(launch_run_handle(r), handle);
  assert_int_equal(launch_run_attempt(r), 2);
  run_until_exit(f, 1);
  assert_int_equal(f->last.attempt, 2);
  assert_int_equal(f->last.exit_status, 3);
  assert_int_equal(f->last.term_signal, 0);

  launch_exit rec;
  assert_int_equal(launch_exit_record_read(f->run_dir, 2, &rec, err, sizeof err), 0);
  assert_int_equal(rec.exit_status, 3);

  char *args = NULL, *env = NULL;
  snprintf(path, sizeof path, "%s/args", f->dir);
  assert_int_equal(dpod_read_file(path, 0, &args, NULL, err, sizeof err), 0);
  snprintf(path, sizeof path, "%s/env", f->dir);
  assert_int_equal(dpod_read_file(path, 0, &env, NULL, err, sizeof err), 0);
  assert_non_null(strstr(args, "-np\n2\n"));
  assert_non_null(strstr(args, "/nonexistent/dpo-worker\n--spec\n"));
  assert_non_null(strstr(args, "--job-id\n7\n"));
  assert_null(strstr(args, "s3cret"));
  assert_non_null(strstr(env, "DPOD_JOB_SECRET=s3cret"));
  assert_non_null(strstr(env, "OMP_NUM_THREADS=3"));
  free(args);
  free(env);

  char log[PATH_MAX * 2], line[256];
  launch_log_path(f->b, f->run_dir, 2, log, sizeof log);
  launch_last_error_line(log, line, sizeof line);
  assert_string_equal(line, "rank 0: the reason it failed");
  snprintf(path, sizeof path, "%s/spec.pb", f->run_dir);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
}

static void stopped_attempt_reports_its_signal(void **state) {
  fixture *f = *state;
  char handle[LAUNCH_HANDLE_MAX];
  launch_run *r = start(f, 1, "wait", handle);
  wait_started(f);
  assert_int_equal(launch_stop(r, LAUNCH_STOP_KILL, NULL), 0);
  run_until_exit(f, 1);
  assert_int_equal(f->last.term_signal, SIGKILL);
  assert_true(f->last.recorded);
}

/* A dpod that goes away leaves the attempt running under its supervisor; the next one adopts it from
 * the handle and learns how it ended from its exit record. Stopping never touches the supervisor. */
static void detached_attempt_is_adopted_and_its_end_recorded(void **state) {
  fixture *f = *state;
  char handle[LAUNCH_HANDLE_MAX], err[512];
  launch_run *r = start(f, 3, "wait", handle);
  wait_started(f);
  launch_detach(r);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  char v[16];
  assert_int_equal(launch_handle_get(handle, "sid", v, sizeof v), 0);
  int sid = atoi(v);
  assert_int_equal(kill(sid, 0), 0); /* still there */

  launch_exit ex;
  launch_run *adopted = NULL;
  assert_int_equal(launch_recover(f->b, handle, f->run_dir, on_exit_cb, f, &adopted, &ex, NULL, err, sizeof err),
                   LAUNCH_RECOVERED_RUNNING);
  assert_non_null(adopted);
  assert_int_equal(launch_run_attempt(adopted), 3);
  int asked = -1;
  assert_int_equal(launch_stop(adopted, LAUNCH_STOP_TERMINATE, &asked), 0);
  assert_true(asked >= 1);
  assert_int_equal(kill(sid, 0), 0); /* the supervisor is never signalled */
  poll_until_exit(f, 1);
  assert_int_equal(f->last.attempt, 3);
  assert_int_equal(f->last.exit_status, 4); /* its rank exits 4 on SIGTERM, and so does the fake mpirun */
  assert_true(f->last.recorded);
  assert_false(mpirun_was_signalled(f)); /* the rank was; mpirun ended by itself */
}

/* Starts a fake mpirun in `mode`, stops it with LAUNCH_STOP_TERMINATE once it is there, and waits for
 * its end. Returns how many processes the stop signalled. */
static int terminate_in(fixture *f, const char *mode) {
  char handle[LAUNCH_HANDLE_MAX];
  launch_run *r = start(f, 1, mode, handle);
  wait_started(f);
  int asked = -1;
  assert_int_equal(launch_stop(r, LAUNCH_STOP_TERMINATE, &asked), 0);
  run_until_exit(f, 1);
  return asked;
}

/* A stop that finds the ranks gone leaves mpirun alone: it is tearing the job down, and a SIGTERM then
 * makes Open MPI's crash in PMIx_Finalize (issue 16, a cancelled 1-rank job every time). */
static void terminate_spares_a_mpirun_whose_ranks_have_ended(void **state) {
  fixture *f = *state;
  assert_int_equal(terminate_in(f, "winddown"), 0);
  assert_int_equal(f->last.term_signal, 0);
  assert_int_equal(f->last.exit_status, 3); /* the rank's status, not the crash's 139 */
  assert_false(mpirun_was_signalled(f));
}

/* A mpirun that has not started a rank yet can only be stopped by signalling it, and that is safe. */
static void terminate_signals_a_mpirun_that_is_still_starting(void **state) {
  fixture *f = *state;
  assert_int_equal(terminate_in(f, "starting"), 1);
  assert_int_equal(f->last.exit_status, 4);
  assert_true(mpirun_was_signalled(f));
}

/* An adopted attempt whose supervisor is killed has no exit record: it ends "unknown", and nothing of
 * its session is left running. */
static void attempt_without_a_supervisor_ends_unrecorded(void **state) {
  fixture *f = *state;
  char handle[LAUNCH_HANDLE_MAX], err[512];
  launch_run *r = start(f, 1, "wait", handle);
  wait_started(f);
  launch_detach(r);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  launch_exit ex;
  launch_run *adopted = NULL;
  assert_int_equal(launch_recover(f->b, handle, f->run_dir, on_exit_cb, f, &adopted, &ex, NULL, err, sizeof err),
                   LAUNCH_RECOVERED_RUNNING);
  char v[16];
  assert_int_equal(launch_handle_get(handle, "sid", v, sizeof v), 0);
  int sid = atoi(v);
  assert_int_equal(kill(sid, SIGKILL), 0);
  poll_until_exit(f, 1);
  assert_false(f->last.recorded);
  /* The fake mpirun (in the supervisor's session, naming the run directory) went with it. */
  for (int i = 0; i < 100 && live_in_session(sid) > 0; i++) usleep(20000);
  assert_int_equal(live_in_session(sid), 0);
}

/* After a restart: an attempt with an exit record ended as it says; one without is lost, and only
 * processes of its session that name its run directory are stopped. */
static void recover_reads_the_exit_record_or_reports_lost(void **state) {
  fixture *f = *state;
  char err[512];
  assert_int_equal(dpod_mkdirs(f->run_dir, 0700, 0, err, sizeof err), 0);
  launch_exit rec = {.attempt = 4, .exit_status = 0}, ex;
  assert_int_equal(launch_exit_record_write(f->run_dir, &rec, err, sizeof err), 0);
  launch_run *r = NULL;
  int stopped = -1;
  assert_int_equal(launch_recover(f->b, "mpirun:sid=2147483000,attempt=4", f->run_dir, on_exit_cb, f, &r, &ex,
                                  &stopped, err, sizeof err),
                   LAUNCH_RECOVERED_ENDED);
  assert_null(r);
  assert_int_equal(ex.attempt, 4);
  assert_int_equal(ex.exit_status, 0);
  assert_int_equal(launch_recover(f->b, "mpirun:sid=2147483000,attempt=5", f->run_dir, on_exit_cb, f, &r, &ex,
                                  &stopped, err, sizeof err),
                   LAUNCH_RECOVERED_LOST);
  assert_int_equal(stopped, 0);
  assert_true(launch_recover(f->b, "slurm:job=5,attempt=1", f->run_dir, on_exit_cb, f, &r, &ex, &stopped, err,
                             sizeof err) < 0);
  assert_true(launch_recover(f->b, "mpirun:attempt=1", f->run_dir, on_exit_cb, f, &r, &ex, &stopped, err,
                             sizeof err) < 0);
  assert_int_equal(f->exits, 0);
}

static void capacity_is_the_backends(void **state) {
  fixture *f = *state;
  assert_int_equal(launch_capacity(f->b), 3);
  assert_string_equal(launch_backend_name(f->b), "mpirun");
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(handles_carry_backend_fields_and_attempt),
      cmocka_unit_test_setup_teardown(exit_records_round_trip_and_refuse_nonsense, setup, teardown),
      cmocka_unit_test_setup_teardown(attempt_runs_and_its_exit_is_recorded, setup, teardown),
      cmocka_unit_test_setup_teardown(stopped_attempt_reports_its_signal, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_reads_the_exit_record_or_reports_lost, setup, teardown),
      cmocka_unit_test_setup_teardown(detached_attempt_is_adopted_and_its_end_recorded, setup, teardown),
      cmocka_unit_test_setup_teardown(terminate_spares_a_mpirun_whose_ranks_have_ended, setup, teardown),
      cmocka_unit_test_setup_teardown(terminate_signals_a_mpirun_that_is_still_starting, setup, teardown),
      cmocka_unit_test_setup_teardown(attempt_without_a_supervisor_ends_unrecorded, setup, teardown),
      cmocka_unit_test_setup_teardown(capacity_is_the_backends, setup, teardown),
  };
  return CMOCKA_MAIN("launch", tests, NULL, NULL);
}
