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
#include "launch_backend.h" /* the log formats' parsers, tested on their own */

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
  assert_non_null(strstr(args, "--tag-output\n")); /* every line of the log says its rank */
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

static void check_entry(const launch_log_entry *e, const char *line, int rank, launch_log_stream stream,
                        const char *text, size_t consumed) {
  assert_int_equal(e->rank, rank);
  assert_int_equal(e->stream, stream);
  assert_int_equal(e->text_len, strlen(text));
  assert_memory_equal(line + e->text_off, text, e->text_len);
  assert_int_equal(e->consumed, consumed);
}

/* Each attempt has a log of its own, and each line says which rank and stream it comes from: mpirun
 * --tag-output's "[J,R]<stdout>:" (a tag inside a line starts the next rank's output), srun --label's
 * "R: "; anything else is the launcher's own line. */
static void log_lines_name_their_rank_and_stream(void **state) {
  fixture *f = *state;
  char path[PATH_MAX * 2];
  launch_log_path(f->b, f->run_dir, 3, path, sizeof path);
  assert_non_null(strstr(path, "/run/attempt-3.log"));
  launch_log_entry e;
  static const char *const mpi[] = {"[1,0]<stdout>:hello", "[1,12]<stderr>:x y", "[1,1]<stddiag>:d",
                                    "partial[1,1]<stdout>:out", "[1,0]<stdout>:a[1,1]<stdout>:b",
                                    "mpirun noticed that process rank 0 exited", "[1,x]<stdout>:no", "", "[3,0]<stdin>:"};
  launch_log_parse(f->b, mpi[0], strlen(mpi[0]), &e);
  check_entry(&e, mpi[0], 0, LAUNCH_LOG_STDOUT, "hello", strlen(mpi[0]));
  launch_log_parse(f->b, mpi[1], strlen(mpi[1]), &e);
  check_entry(&e, mpi[1], 12, LAUNCH_LOG_STDERR, "x y", strlen(mpi[1]));
  launch_log_parse(f->b, mpi[2], strlen(mpi[2]), &e);
  check_entry(&e, mpi[2], 1, LAUNCH_LOG_STDERR, "d", strlen(mpi[2]));
  launch_log_parse(f->b, mpi[3], strlen(mpi[3]), &e);
  check_entry(&e, mpi[3], -1, LAUNCH_LOG_LAUNCHER, "partial", 7);
  launch_log_parse(f->b, mpi[4], strlen(mpi[4]), &e);
  check_entry(&e, mpi[4], 0, LAUNCH_LOG_STDOUT, "a", 15);
  for (int i = 5; i < 9; i++) {
    launch_log_parse(f->b, mpi[i], strlen(mpi[i]), &e);
    check_entry(&e, mpi[i], -1, LAUNCH_LOG_LAUNCHER, mpi[i], strlen(mpi[i]));
  }
  assert_string_equal(launch_log_stream_name(LAUNCH_LOG_STDERR), "stderr");
  assert_string_equal(launch_log_stream_name(LAUNCH_LOG_LAUNCHER), "dpod");

  static const char *const srun[] = {"0: hi", " 3: x", "12: y: z", "0:", "srun: error: node1: task 1: Exited", "7 ranks"};
  launch_log_parse_srun_label_(srun[0], strlen(srun[0]), &e);
  check_entry(&e, srun[0], 0, LAUNCH_LOG_STDOUT, "hi", 5);
  launch_log_parse_srun_label_(srun[1], strlen(srun[1]), &e);
  check_entry(&e, srun[1], 3, LAUNCH_LOG_STDOUT, "x", 5);
  launch_log_parse_srun_label_(srun[2], strlen(srun[2]), &e);
  check_entry(&e, srun[2], 12, LAUNCH_LOG_STDOUT, "y: z", 8);
  launch_log_parse_srun_label_(srun[3], strlen(srun[3]), &e);
  check_entry(&e, srun[3], 0, LAUNCH_LOG_STDOUT, "", 2);
  for (int i = 4; i < 6; i++) {
    launch_log_parse_srun_label_(srun[i], strlen(srun[i]), &e);
    check_entry(&e, srun[i], -1, LAUNCH_LOG_LAUNCHER, srun[i], strlen(srun[i]));
  }

  /* A failure's reason quotes the rank's words, without the prefix. */
  char line[256], err[256];
  assert_int_equal(dpod_mkdirs(f->run_dir, 0700, 0, err, sizeof err), 0);
  FILE *log = fopen(path, "w");
  assert_non_null(log);
  fputs("[1,0]<stdout>:step 1\n[1,1]<stderr>:rank 1 ERROR the disk is full\n", log);
  fclose(log);
  launch_last_error_line(path, line, sizeof line);
  assert_string_equal(line, "rank 1 ERROR the disk is full");
  log = fopen(path, "w");
  assert_non_null(log);
  fputs("0: step 1\n1: rank 1 ERROR out of memory\n", log);
  fclose(log);
  launch_last_error_line(path, line, sizeof line);
  assert_string_equal(line, "rank 1 ERROR out of memory");
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
      cmocka_unit_test_setup_teardown(log_lines_name_their_rank_and_stream, setup, teardown),
  };
  return CMOCKA_MAIN("launch", tests, NULL, NULL);
}
