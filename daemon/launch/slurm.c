/* The Slurm backend: each attempt of a job is one Slurm batch job.
 *
 * start writes RUN_DIR/spec.pb, RUN_DIR/job.secret (0600) and RUN_DIR/slurm-batch.sh, and runs
 *
 *   sbatch --parsable --requeue --signal=B:USR1@GRACE --job-name=dpod-ID --ntasks=RANKS
 *          --cpus-per-task=THREADS --chdir=RUN_DIR --output=RUN_DIR/slurm-%j.out RUN_DIR/slurm-batch.sh
 *
 * from an argv array. The script is the same for every job and holds no user-supplied text: what
 * differs reaches it through the environment sbatch passes on (DPOD_RUN_DIR, DPOD_WORKER, DPOD_JOB_ID,
 * DPOD_REPORT_ADDR, DPOD_ATTEMPT_BASE, DPOD_TLS_CA) and the run directory (the spec, the secret). Its
 * step is `srun --mpi=pmix --label dpo-worker ...` (Debian's Open MPI direct-launches only with PMIx;
 * --label prefixes each line with its rank, "R: ", into RUN_DIR/attempt-N.log, for the Logs RPC); it
 * writes the attempt's exit record itself, so a dpod that was down when the job ended still learns how.
 * On SIGUSR1 (Slurm's warning before a time limit or preemption, or `dpoctl drain`) it forwards the
 * signal to the ranks, which checkpoint and exit "preempted".
 *
 * Handles are "slurm:job=<Slurm job id>,attempt=<n>". The backend learns of states by running one
 * `squeue` for all its jobs every poll interval, asynchronously; a job that is over (or has left
 * squeue) ends its attempt with the exit record and Slurm's final state, which wins (a job cancelled
 * with scancel is CANCELLED whatever its ranks exited with). sbatch itself is run synchronously with a
 * bound: it answers in milliseconds, and the handle must be durable before start returns. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_log.h"
#include "dpod_parse.h"
#include "launch_backend.h"

#define SLURM_SBATCH_TIMEOUT_MS 15000
#define SLURM_SQUEUE_MAX (1 << 20) /* bytes of squeue output read */

typedef struct slurm_run slurm_run;

typedef struct {
  launch_backend base;
  char *sbatch, *squeue, *scancel, *sacct, *worker, *report_addr, *tls_ca;
  unsigned grace_s, poll_ms, capacity, max_threads;
  uint64_t last_poll_ms;
  slurm_run *runs;       /* every attempt this backend watches */
  /* the query in flight (squeue, or sacct for jobs squeue has forgotten), if any */
  uv_process_t squeue_proc;
  uv_pipe_t squeue_out;
  bool squeue_running;
  bool query_is_sacct;
  int squeue_closing;    /* handles still to close */
  int64_t squeue_status;
  char *squeue_buf;
  size_t squeue_len;
} slurm_backend;

struct slurm_run {
  launch_run base; /* first member */
  slurm_backend *b;
  char *run_dir;
  uint64_t job;    /* the Slurm job id */
  uint32_t base_attempt; /* the attempt it was submitted as; Slurm's restart count adds to it */
  bool seen;       /* in the squeue output being parsed */
  bool asked_sacct; /* gone from squeue without an exit record: sacct is asked for its final state */
  bool running;    /* Slurm said RUNNING last time */
  char reason[64]; /* Slurm's pending reason, last time */
  slurm_run *next;
};

static const char slurm_batch_script[] =
    "#!/bin/bash\n"
    "# Written by dpod; the same for every job. What differs comes from the environment and the run\n"
    "# directory, never from this text.\n"
    "set -u\n"
    "attempt=$((DPOD_ATTEMPT_BASE + ${SLURM_RESTART_COUNT:-0}))\n"
    "exec >>\"$DPOD_RUN_DIR/attempt-$attempt.log\" 2>&1\n"
    "DPOD_JOB_SECRET=$(cat \"$DPOD_RUN_DIR/" LAUNCH_SECRET_FILE "\") || exit 2\n"
    "export DPOD_JOB_SECRET DPOD_ATTEMPT=$attempt TMPDIR=\"$DPOD_RUN_DIR/tmp\"\n"
    "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n"
    "export OMP_WAIT_POLICY=PASSIVE\n"
    "mkdir -p \"$TMPDIR\"\n"
    "# USR1: Slurm's warning before a time limit or a preemption: checkpoint, then requeue this job.\n"
    "# USR2: dpod drains: checkpoint and stop.\n"
    "requeue=0\n"
    "trap 'requeue=1; kill -USR1 \"$step\" 2>/dev/null' USR1\n"
    "trap 'kill -USR1 \"$step\" 2>/dev/null' USR2\n"
    "srun --mpi=pmix --kill-on-bad-exit=1 --label \"$DPOD_WORKER\" --spec \"$DPOD_RUN_DIR/spec.pb\" \\\n"
    "  --run-dir \"$DPOD_RUN_DIR\" --job-id \"$DPOD_JOB_ID\" --report-addr \"$DPOD_REPORT_ADDR\" &\n"
    "step=$!\n"
    "wait \"$step\"; rc=$?\n"
    "# A trapped signal ends `wait` early: wait again until the step is really over.\n"
    "while kill -0 \"$step\" 2>/dev/null; do wait \"$step\"; rc=$?; done\n"
    "record=\"$DPOD_RUN_DIR/attempt-$attempt.exit\"\n"
    "printf 'attempt %s\\nexit_status %s\\nterm_signal 0\\nfinished_unix_ms %s\\n' \"$attempt\" \"$rc\" \\\n"
    "  \"$(date +%s%3N)\" >\"$record.tmp\" && sync \"$record.tmp\" && mv \"$record.tmp\" \"$record\"\n"
    "# Checkpointed after the warning: run again from the checkpoint, as the same Slurm job.\n"
    "if [ \"$requeue\" = 1 ] && [ \"$rc\" = 4 ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi\n"
    "exit \"$rc\"\n";

launch_slurm_params launch_slurm_default_params(void) {
  launch_slurm_params p;
  memset(&p, 0, sizeof p);
  p.sbatch = "sbatch";
  p.squeue = "squeue";
  p.scancel = "scancel";
  p.sacct = "sacct";
  p.worker = "dpo-worker";
  p.preempt_grace_s = 120;
  p.poll_ms = 15000;
  p.capacity = 2;
  return p;
}

static void slurm_unlist_(slurm_run *r) {
  for (slurm_run **p = &r->b->runs; *p; p = &(*p)->next)
    if (*p == r) {
      *p = r->next;
      return;
    }
}

static void slurm_run_free_(slurm_run *r) {
  free(r->run_dir);
  free(r);
}

/* "slurm:job=<id>,base=<the attempt it was submitted as>,attempt=<n>" */
static void slurm_format_handle_(const slurm_run *r, uint32_t attempt, char *handle) {
  char fields[64];
  snprintf(fields, sizeof fields, "job=%" PRIu64 ",base=%" PRIu32, r->job, r->base_attempt);
  launch_handle_format_(handle, "slurm", attempt, fields);
}

static void slurm_log_path_(const launch_backend *b, const char *run_dir, uint32_t attempt, char *buf, size_t len) {
  (void)b;
  snprintf(buf, len, "%s/attempt-%" PRIu32 ".log", run_dir, attempt);
}

/* Runs a Slurm command without a shell and waits for it, at most SLURM_SBATCH_TIMEOUT_MS, keeping what it
 * prints (stdout and stderr together, cut to outlen). Returns its exit status, or -1 (err set). */
static int slurm_run_sync_(const char *const argv[], char *const envp[], char *out, size_t outlen, char *err,
                           size_t errlen) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    dpod_errf(err, errlen, DPOD_EIO, "pipe: %s", strerror(errno));
    return -1;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    dpod_errf(err, errlen, DPOD_EIO, "cannot run %s: %s", argv[0], strerror(rc));
    return -1;
  }
  size_t n = 0;
  int64_t deadline = launch_now_ms_() + SLURM_SBATCH_TIMEOUT_MS;
  for (;;) {
    int64_t left = deadline - launch_now_ms_();
    struct pollfd pf = {.fd = fds[0], .events = POLLIN};
    if (left <= 0 || poll(&pf, 1, (int)left) <= 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      close(fds[0]);
      dpod_errf(err, errlen, DPOD_ETIMEDOUT, "%s did not answer within %d s", argv[0], SLURM_SBATCH_TIMEOUT_MS / 1000);
      return -1;
    }
    char buf[512];
    ssize_t k = read(fds[0], buf, sizeof buf);
    if (k <= 0) break;
    size_t take = (size_t)k < outlen - 1 - n ? (size_t)k : outlen - 1 - n;
    memcpy(out + n, buf, take);
    n += take;
  }
  out[n] = '\0';
  close(fds[0]);
  int ws;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + (WIFSIGNALED(ws) ? WTERMSIG(ws) : 0);
}

/* Spawns args[0] with no shell, stdin and stderr ignored, stdout into `out` (a pipe to read) or ignored
 * when NULL. Returns uv_spawn's status; on failure the caller still closes `p`, as libuv asks. */
static int slurm_spawn_(slurm_backend *b, uv_process_t *p, const char *const args[], uv_pipe_t *out,
                        uv_exit_cb on_exit) {
  uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE}, {.flags = UV_IGNORE}, {.flags = UV_IGNORE}};
  if (out) {
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)out;
  }
  uv_process_options_t opts;
  memset(&opts, 0, sizeof opts);
  opts.file = args[0];
  opts.args = (char **)args;
  opts.exit_cb = on_exit;
  opts.stdio_count = 3;
  opts.stdio = stdio;
  int rc = uv_spawn(b->base.loop, p, &opts);
  if (rc != 0) log_warn("cannot run %s: %s", args[0], uv_strerror(rc));
  return rc;
}

static void slurm_fired_closed_(uv_handle_t *h) { free(h); }

static void slurm_fired_exit_(uv_process_t *p, int64_t status, int sig) {
  if (status || sig) log_warn("%s exited with status %" PRId64 " (signal %d)", (const char *)p->data, status, sig);
  uv_close((uv_handle_t *)p, slurm_fired_closed_);
}

/* Runs a Slurm command in the background, for a signal or a cancel that needs no answer (libuv reaps
 * it; a failure is logged). */
static void slurm_fire_(slurm_backend *b, const char *const argv[]) {
  uv_process_t *p = calloc(1, sizeof *p);
  if (!p) return;
  p->data = (void *)argv[0]; /* static or the backend's: outlives the process */
  if (slurm_spawn_(b, p, argv, NULL, slurm_fired_exit_) != 0) {
    uv_close((uv_handle_t *)p, slurm_fired_closed_);
  }
}

static int slurm_start_(launch_backend *base, const launch_request *req, launch_run **out, char *handle, char *err,
                        size_t errlen) {
  slurm_backend *b = (slurm_backend *)base;
  char tmpdir[PATH_MAX], path[PATH_MAX], script[PATH_MAX], output[PATH_MAX];
  int status;
  snprintf(tmpdir, sizeof tmpdir, "%s/tmp", req->run_dir);
  if ((status = dpod_mkdirs(tmpdir, 0700, 0, err, errlen)) != 0) return status;
  snprintf(path, sizeof path, "%s/spec.pb", req->run_dir);
  if ((status = dpod_write_file_atomic(path, req->spec_pb, req->spec_len, DPOD_WRITE_PRIVATE, err, errlen)) != 0)
    return status;
  /* The secret in a 0600 file of the run directory, which every attempt of the job reads: never on a
   * command line (sbatch's, the script's or srun's), where ps or scontrol would show it. */
  snprintf(path, sizeof path, "%s/" LAUNCH_SECRET_FILE, req->run_dir);
  if ((status = dpod_write_file_atomic(path, req->secret, strlen(req->secret), DPOD_WRITE_PRIVATE, err, errlen)) != 0)
    return status;
  snprintf(script, sizeof script, "%s/slurm-batch.sh", req->run_dir);
  if ((status = dpod_write_file_atomic(script, slurm_batch_script, sizeof slurm_batch_script - 1, DPOD_WRITE_PRIVATE,
                                       err, errlen)) != 0)
    return status;

  char ntasks[32], cpus[32], signal_opt[48], name[48], id[32], attempt[16], chdir_opt[PATH_MAX + 16];
  char env_run[PATH_MAX + 32], env_worker[PATH_MAX + 32], env_id[64], env_addr[PATH_MAX + 32], env_attempt[48],
      env_ca[PATH_MAX + 32];
  snprintf(ntasks, sizeof ntasks, "--ntasks=%u", req->ranks);
  snprintf(cpus, sizeof cpus, "--cpus-per-task=%u", req->threads_per_rank ? req->threads_per_rank : 1);
  snprintf(signal_opt, sizeof signal_opt, "--signal=B:USR1@%u", b->grace_s);
  snprintf(name, sizeof name, "--job-name=dpod-%" PRIu64, req->job_id);
  snprintf(chdir_opt, sizeof chdir_opt, "--chdir=%s", req->run_dir);
  snprintf(output, sizeof output, "--output=%s/slurm-%%j.out", req->run_dir);
  snprintf(id, sizeof id, "%" PRIu64, req->job_id);
  snprintf(attempt, sizeof attempt, "%" PRIu32, req->attempt);
  snprintf(env_run, sizeof env_run, "DPOD_RUN_DIR=%s", req->run_dir);
  snprintf(env_worker, sizeof env_worker, "DPOD_WORKER=%s", b->worker);
  snprintf(env_id, sizeof env_id, "DPOD_JOB_ID=%s", id);
  snprintf(env_addr, sizeof env_addr, "DPOD_REPORT_ADDR=%s", b->report_addr);
  snprintf(env_attempt, sizeof env_attempt, "DPOD_ATTEMPT_BASE=%s", attempt);
  snprintf(env_ca, sizeof env_ca, "%s=%s", DPOD_ENV_TLS_CA, b->tls_ca);
  char *extra[] = {env_run, env_worker, env_id, env_addr, env_attempt, env_ca};
  char **env = launch_build_env_(extra, sizeof extra / sizeof extra[0]);
  if (!env) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  const char *argv[64];
  char res_opts[10][160], sbatch_extra[1024];
  int a = 0, o = 0;
  const launch_resources *res = &req->resources;
  argv[a++] = b->sbatch;
  argv[a++] = "--parsable";
  argv[a++] = "--requeue";
  argv[a++] = signal_opt;
  argv[a++] = name;
  argv[a++] = ntasks;
  argv[a++] = cpus;
  argv[a++] = chdir_opt;
  argv[a++] = output;
#define SLURM_OPT(cond, ...)                                          \
  do {                                                                \
    if (cond) {                                                       \
      snprintf(res_opts[o], sizeof res_opts[o], __VA_ARGS__);         \
      argv[a++] = res_opts[o++];                                      \
    }                                                                 \
  } while (0)
  SLURM_OPT(res->ranks_per_node, "--ntasks-per-node=%u", res->ranks_per_node);
  SLURM_OPT(res->ranks_per_node, "--nodes=%u", (req->ranks + res->ranks_per_node - 1) / res->ranks_per_node);
  SLURM_OPT(res->gpus_per_rank, "--gpus-per-task=%u", res->gpus_per_rank);
  SLURM_OPT(res->memory_mb, "--mem=%uM", res->memory_mb);
  SLURM_OPT(res->time_limit_minutes, "--time=%u", res->time_limit_minutes);
  SLURM_OPT(res->partition && *res->partition, "--partition=%s", res->partition);
  SLURM_OPT(res->account && *res->account, "--account=%s", res->account);
  SLURM_OPT(res->qos && *res->qos, "--qos=%s", res->qos);
#undef SLURM_OPT
  if (res->constraint && *res->constraint) {
    snprintf(res_opts[o], sizeof res_opts[o], "--constraint=%s", res->constraint);
    argv[a++] = res_opts[o++];
  }
  /* Checked at submission: --NAME[=VALUE] words from an allow-list, each its own argv entry. */
  snprintf(sbatch_extra, sizeof sbatch_extra, "%s", res->sbatch_options ? res->sbatch_options : "");
  char *save = NULL;
  for (char *w = strtok_r(sbatch_extra, " ", &save); w && a < 62; w = strtok_r(NULL, " ", &save)) argv[a++] = w;
  argv[a++] = script;
  argv[a] = NULL;
  char answer[1024];
  int rc = slurm_run_sync_(argv, env, answer, sizeof answer, err, errlen);
  free(env);
  if (rc < 0) return DPOD_EIO;
  answer[strcspn(answer, "\n")] = '\0';
  uint64_t job = 0;
  char *semi = strchr(answer, ';'); /* "id;cluster" on a federation */
  if (semi) *semi = '\0';
  if (rc != 0 || dpod_parse_u64(answer, UINT64_MAX, &job) != 0 || job == 0)
    return dpod_errf(err, errlen, DPOD_EIO, "sbatch refused the job (exit status %d): %s", rc, answer);

  slurm_run *r = calloc(1, sizeof *r);
  if (!r || !(r->run_dir = strdup(req->run_dir))) {
    free(r);
    /* The batch job exists: cancel it rather than leave it unsupervised. */
    const char *cancel[] = {b->scancel, answer, NULL};
    slurm_fire_(b, cancel);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  }
  r->b = b;
  r->job = job;
  r->base_attempt = req->attempt;
  r->next = b->runs;
  b->runs = r;
  slurm_format_handle_(r, req->attempt, handle);
  log_info("job %" PRIu64 ": submitted Slurm job %" PRIu64 " (%u ranks, attempt %" PRIu32 ")", req->job_id, job,
           req->ranks, req->attempt);
  *out = &r->base;
  return 0;
}

/* The attempt is over: its exit record says how it ended, Slurm's final state (if any) overrides. */
static void slurm_finish_(slurm_run *r, const char *slurm_state) {
  launch_exit ex;
  if (!launch_exit_or_killed_(r->run_dir, r->base.attempt, &ex))
    log_warn("%s ended (%s) without an exit record", r->base.handle, slurm_state && *slurm_state ? slurm_state : "gone");
  if (slurm_state && strcmp(slurm_state, "COMPLETED") != 0 && strcmp(slurm_state, "FAILED") != 0)
    snprintf(ex.scheduler_state, sizeof ex.scheduler_state, "%s", slurm_state);
  slurm_unlist_(r);
  launch_run_ended_(&r->base, &ex);
  slurm_run_free_(r);
}

/* Slurm runs the job again (its restart count went up): the previous attempt is over, as its exit
 * record says (the batch script wrote it before the requeue; without one, it was killed), and the run
 * goes on as attempt `attempt`. */
static void slurm_requeued_(slurm_run *r, uint32_t attempt) {
  launch_exit ex;
  launch_exit_or_killed_(r->run_dir, r->base.attempt, &ex);
  snprintf(ex.scheduler_state, sizeof ex.scheduler_state, "REQUEUED");
  slurm_format_handle_(r, attempt, r->base.handle);
  log_info("%s: Slurm requeued the job; attempt %" PRIu32 " follows attempt %" PRIu32, r->base.handle, attempt,
           r->base.attempt);
  r->base.attempt = attempt;
  r->running = false;
  r->reason[0] = '\0';
  if (r->b->base.requeue_cb) r->b->base.requeue_cb(&r->base, &ex, r->base.arg);
}

static bool slurm_state_is_over_(const char *s) {
  static const char *const over[] = {"COMPLETED", "FAILED",   "CANCELLED", "TIMEOUT",   "NODE_FAIL",
                                     "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED",
                                     "SPECIAL_EXIT"};
  for (size_t i = 0; i < sizeof over / sizeof over[0]; i++)
    if (strcmp(s, over[i]) == 0) return true;
  return false;
}

/* One line of `squeue -O JobID:|,State:|,RestartCnt:|,Reason:`: "5678|RUNNING|0|None". */
static void slurm_take_line_(slurm_backend *b, char *line) {
  char *fields[4] = {0};
  for (int i = 0; i < 4 && line; i++) {
    fields[i] = line;
    line = strchr(line, '|');
    if (line) *line++ = '\0';
  }
  if (!fields[1]) return;
  for (int i = 0; i < 4 && fields[i]; i++) { /* squeue pads its columns */
    char *e = fields[i] + strlen(fields[i]);
    while (e > fields[i] && e[-1] == ' ') *--e = '\0';
    while (*fields[i] == ' ') fields[i]++;
  }
  uint64_t job;
  if (dpod_parse_u64(fields[0], UINT64_MAX, &job) != 0) return;
  for (slurm_run *r = b->runs, *next; r; r = next) {
    next = r->next;
    if (r->job != job) continue;
    r->seen = true;
    uint64_t restarts = 0;
    if (fields[2] && dpod_parse_u64(fields[2], 1u << 20, &restarts) == 0 &&
        r->base_attempt + restarts > r->base.attempt)
      slurm_requeued_(r, r->base_attempt + (uint32_t)restarts);
    if (slurm_state_is_over_(fields[1])) {
      slurm_finish_(r, fields[1]);
      continue;
    }
    bool running = strcmp(fields[1], "RUNNING") == 0 || strcmp(fields[1], "COMPLETING") == 0;
    const char *reason = fields[3] && *fields[3] && strcmp(fields[3], "None") != 0 ? fields[3] : fields[1];
    if (running != r->running || (!running && strncmp(r->reason, reason, sizeof r->reason - 1) != 0)) {
      r->running = running;
      snprintf(r->reason, sizeof r->reason, "%s", reason);
      if (b->base.status_cb) b->base.status_cb(&r->base, running, reason, r->base.arg);
    }
  }
}

static void slurm_query_start_(slurm_backend *b, const char *const args[]);

/* sacct's answer for jobs squeue has forgotten without an exit record: "5678|NODE_FAIL" lines (a state
 * may go on: "CANCELLED by 1000"). Those it does not know (no accounting on this cluster) end as lost. */
static void slurm_take_sacct_(slurm_backend *b, char *text, bool ok) {
  char *save = NULL;
  for (char *line = ok && text ? strtok_r(text, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
    char *bar = strchr(line, '|');
    uint64_t job;
    if (!bar) continue;
    *bar = '\0';
    char *state = bar + 1;
    state[strcspn(state, " |")] = '\0';
    if (dpod_parse_u64(line, UINT64_MAX, &job) != 0) continue; /* "5678.batch" and other steps */
    for (slurm_run *r = b->runs, *next; r; r = next) {
      next = r->next;
      if (r->asked_sacct && r->job == job) slurm_finish_(r, state);
    }
  }
  for (slurm_run *r = b->runs, *next; r; r = next) {
    next = r->next;
    if (r->asked_sacct) slurm_finish_(r, NULL);
  }
}

static void slurm_squeue_closed_(uv_handle_t *h) {
  slurm_backend *b = h->data;
  if (--b->squeue_closing > 0) return;
  b->squeue_running = false;
  if (b->query_is_sacct) {
    slurm_take_sacct_(b, b->squeue_buf, b->squeue_status == 0);
  } else if (b->squeue_status == 0) {
    for (slurm_run *r = b->runs; r; r = r->next) r->seen = false;
    char *save = NULL;
    for (char *line = strtok_r(b->squeue_buf ? b->squeue_buf : (char[1]){0}, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save))
      slurm_take_line_(b, line);
    /* Not in squeue any more (it forgets jobs MinJobAge after they end): over, as its exit record says;
     * without one, sacct may know how it ended (where the cluster keeps accounting). */
    char ids[1024] = "";
    size_t n = 0;
    launch_exit ex;
    for (slurm_run *r = b->runs, *next; r; r = next) {
      next = r->next;
      if (r->seen) continue;
      if (!*b->sacct || launch_exit_record_read(r->run_dir, r->base.attempt, &ex, NULL, 0) == 0 ||
          n + 24 >= sizeof ids) {
        slurm_finish_(r, NULL);
        continue;
      }
      r->asked_sacct = true;
      n += (size_t)snprintf(ids + n, sizeof ids - n, "%s%" PRIu64, n ? "," : "", r->job);
    }
    if (n) {
      free(b->squeue_buf);
      b->squeue_buf = NULL;
      b->squeue_len = 0;
      const char *args[] = {b->sacct, "--noheader", "--allocations", "--parsable2", "--format=JobID,State", "--jobs",
                            ids, NULL};
      slurm_query_start_(b, args);
      return;
    }
  } else {
    log_warn("squeue failed (status %" PRId64 "); trying again at the next poll", b->squeue_status);
  }
  free(b->squeue_buf);
  b->squeue_buf = NULL;
  b->squeue_len = 0;
}

static void slurm_squeue_alloc_(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void slurm_squeue_read_(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  slurm_backend *b = s->data;
  if (n > 0 && b->squeue_len + (size_t)n < SLURM_SQUEUE_MAX) {
    char *grown = realloc(b->squeue_buf, b->squeue_len + (size_t)n + 1);
    if (grown) {
      memcpy(grown + b->squeue_len, buf->base, (size_t)n);
      b->squeue_len += (size_t)n;
      grown[b->squeue_len] = '\0';
      b->squeue_buf = grown;
    }
  }
  free(buf->base);
  if (n < 0) uv_close((uv_handle_t *)s, slurm_squeue_closed_);
}

static void slurm_squeue_exit_(uv_process_t *p, int64_t status, int sig) {
  slurm_backend *b = p->data;
  b->squeue_status = sig ? 128 + sig : status;
  uv_close((uv_handle_t *)p, slurm_squeue_closed_);
}

/* Runs a query (squeue or sacct) without blocking; slurm_squeue_closed_ takes its output. */
static void slurm_query_start_(slurm_backend *b, const char *const args[]) {
  b->query_is_sacct = args[0] == b->sacct;
  uv_pipe_init(b->base.loop, &b->squeue_out, 0);
  b->squeue_out.data = b;
  b->squeue_proc.data = b;
  b->squeue_running = true;
  b->squeue_closing = 2;
  if (slurm_spawn_(b, &b->squeue_proc, args, &b->squeue_out, slurm_squeue_exit_) != 0) {
    b->squeue_status = -1;
    uv_close((uv_handle_t *)&b->squeue_proc, slurm_squeue_closed_);
    uv_close((uv_handle_t *)&b->squeue_out, slurm_squeue_closed_);
    return;
  }
  uv_read_start((uv_stream_t *)&b->squeue_out, slurm_squeue_alloc_, slurm_squeue_read_);
}

/* Every poll interval, one squeue for every job this dpod watches, read without blocking. */
static void slurm_poll_(launch_backend *base) {
  slurm_backend *b = (slurm_backend *)base;
  uint64_t now = (uint64_t)launch_now_ms_();
  if (!b->runs || b->squeue_running || now - b->last_poll_ms < b->poll_ms) return;
  b->last_poll_ms = now;
  const char *args[] = {b->squeue, "--noheader", "--states=all", "--me", "--Format=JobID:|,State:|,RestartCnt:|,Reason:",
                        NULL};
  slurm_query_start_(b, args);
}

static int slurm_stop_(launch_run *base, launch_stop_mode how, int *signalled) {
  slurm_run *r = (slurm_run *)base;
  char job[32];
  snprintf(job, sizeof job, "%" PRIu64, r->job);
  if (how == LAUNCH_STOP_PREEMPT) {
    /* To the batch script, which forwards it to the ranks: they checkpoint and exit "preempted". A job
     * still pending has no ranks to tell (signalled stays 0): the caller then terminates it. */
    if (!r->running) return 0;
    const char *argv[] = {r->b->scancel, "--batch", "--signal=USR2", job, NULL};
    slurm_fire_(r->b, argv);
    if (signalled) *signalled = 1;
    return 0;
  }
  if (how == LAUNCH_STOP_KILL) {
    const char *kill_argv[] = {r->b->scancel, "--signal=KILL", "--full", job, NULL};
    slurm_fire_(r->b, kill_argv);
  }
  /* A cancel: Slurm sends SIGTERM to every step, then SIGKILL after its KillWait. */
  const char *cancel[] = {r->b->scancel, job, NULL};
  slurm_fire_(r->b, cancel);
  return 0;
}

static void slurm_detach_(launch_run *base) {
  slurm_run *r = (slurm_run *)base;
  r->base.ended = 1; /* as far as this dpod is concerned */
  slurm_unlist_(r);
  slurm_run_free_(r);
}

static int slurm_recover_(launch_backend *base, const char *handle, const char *run_dir, launch_run **out,
                          launch_exit *exit, int *stopped, char *err, size_t errlen) {
  slurm_backend *b = (slurm_backend *)base;
  (void)stopped;
  *out = NULL;
  uint32_t attempt = launch_handle_attempt(handle);
  if (attempt > 0 && launch_exit_record_read(run_dir, attempt, exit, NULL, 0) == 0) return LAUNCH_RECOVERED_ENDED;
  char v[32];
  uint64_t job = 0;
  if (launch_handle_get(handle, "job", v, sizeof v) != 0 || dpod_parse_u64(v, UINT64_MAX, &job) != 0 || job == 0)
    return dpod_errf(err, errlen, DPOD_EINVAL, "handle '%s' names no Slurm job", handle);
  /* Slurm knows whether it still runs: the next squeue says, and ends it if not. */
  slurm_run *r = calloc(1, sizeof *r);
  if (!r || !(r->run_dir = strdup(run_dir))) {
    free(r);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  }
  r->b = b;
  r->job = job;
  uint64_t base_attempt = attempt;
  if (launch_handle_get(handle, "base", v, sizeof v) == 0) dpod_parse_u64(v, UINT32_MAX, &base_attempt);
  r->base_attempt = (uint32_t)base_attempt;
  r->next = b->runs;
  b->runs = r;
  b->last_poll_ms = 0; /* ask at once */
  *out = &r->base;
  return LAUNCH_RECOVERED_RUNNING;
}

static unsigned slurm_capacity_(const launch_backend *base) { return ((const slurm_backend *)base)->capacity; }
static unsigned slurm_max_threads_(const launch_backend *base) { return ((const slurm_backend *)base)->max_threads; }

static void slurm_free_(launch_backend *base) {
  slurm_backend *b = (slurm_backend *)base;
  while (b->runs) {
    slurm_run *r = b->runs;
    b->runs = r->next;
    slurm_run_free_(r);
  }
  free(b->squeue_buf);
  free(b->sbatch);
  free(b->squeue);
  free(b->scancel);
  free(b->sacct);
  free(b->worker);
  free(b->report_addr);
  free(b->tls_ca);
  free(b);
}

static const launch_backend_ops slurm_ops = {
    .name = "slurm",
    .requeues = 1,
    .resources = 1,
    .exit0_unproven = 1,
    .start = slurm_start_,
    .stop = slurm_stop_,
    .detach = slurm_detach_,
    .recover = slurm_recover_,
    .poll = slurm_poll_,
    .capacity = slurm_capacity_,
    .max_threads = slurm_max_threads_,
    .log_path = slurm_log_path_,
    .parse_log_line = launch_log_parse_srun_label_,
    .free = slurm_free_,
};

/* What the cluster offers, asked once at start-up: its CPUs in all (the ranks that may run at once) and
 * the most on one node (the threads a rank may have). */
static void slurm_ask_size_(slurm_backend *b, const char *sinfo) {
  const char *argv[] = {sinfo, "--noheader", "--format=%C %c", NULL};
  char out[4096], err[256];
  if (slurm_run_sync_(argv, NULL, out, sizeof out, err, sizeof err) != 0) {
    log_warn("sinfo failed; assuming %u CPUs in all: %s", b->capacity, err);
    return;
  }
  unsigned total = 0, most = 0;
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    unsigned a, i, o, t, per_node;
    if (sscanf(line, "%u/%u/%u/%u %u", &a, &i, &o, &t, &per_node) != 5) continue;
    total += t;
    if (per_node > most) most = per_node;
  }
  if (total) b->capacity = total;
  if (most) b->max_threads = most;
}

int launch_slurm_create(uv_loop_t *loop, const launch_slurm_params *p, launch_backend **out, char *err,
                        size_t errlen) {
  *out = NULL;
  slurm_backend *b = calloc(1, sizeof *b);
  if (!b || !(b->sbatch = strdup(p->sbatch)) || !(b->squeue = strdup(p->squeue)) ||
      !(b->scancel = strdup(p->scancel)) || !(b->sacct = strdup(p->sacct ? p->sacct : "")) ||
      !(b->worker = strdup(p->worker)) ||
      !(b->report_addr = strdup(p->report_addr ? p->report_addr : "")) ||
      !(b->tls_ca = strdup(p->tls_ca ? p->tls_ca : ""))) {
    if (b) slurm_free_(&b->base);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  }
  b->base.ops = &slurm_ops;
  b->base.loop = loop;
  b->grace_s = p->preempt_grace_s;
  b->poll_ms = p->poll_ms ? p->poll_ms : 1000;
  b->capacity = p->capacity ? p->capacity : 1;
  b->max_threads = 1;
  slurm_ask_size_(b, p->sinfo ? p->sinfo : "sinfo");
  *out = &b->base;
  return 0;
}
