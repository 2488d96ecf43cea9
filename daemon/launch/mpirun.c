/* The mpirun backend: one attempt is
 *
 *   dpod-supervisor --run-dir RUN_DIR --attempt N -- mpirun -np RANKS --oversubscribe --bind-to none
 *          --tag-output [--allow-run-as-root] -x DPOD_JOB_SECRET -x DPOD_ATTEMPT -x TMPDIR -x OMP_NUM_THREADS
 *          -x OPENBLAS_NUM_THREADS -x OMP_WAIT_POLICY <dpo-worker> --spec RUN_DIR/spec.pb --run-dir RUN_DIR
 *          --job-id ID --report-addr ADDR
 *
 * spawned from an argv array (never through a shell) with UV_PROCESS_DETACHED: the supervisor
 * (supervisor.c) leads a new session, and mpirun and every rank stay in it. mpirun is the supervisor's
 * child, not dpod's, so the attempt outlives a dpod that dies or stops; the supervisor writes the exit
 * record. The secret travels in the environment, never on a command line where ps would show it.
 * Each attempt's output goes to RUN_DIR/attempt-N.log; --tag-output prefixes each line a rank writes
 * with "[JOB,RANK]<stdout>:" or "<stderr>:", so that the Logs RPC can say whose it is.
 *
 * With a hostfile (`dpod --hostfile`), mpirun places the ranks on its hosts and starts them there
 * itself (over ssh, or whatever Open MPI's plm_rsh_agent names); everything else is the same.
 *
 * Handles are "mpirun:sid=<the supervisor's pid>,attempt=<n>". An attempt this dpod started ends when
 * libuv reports the supervisor's exit; one adopted after a restart is checked every poll: it has ended
 * once its exit record exists, or once its supervisor is gone without one (then it is lost, and what is
 * left of its session is killed). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"
#include "dpod_log.h"
#include "launch_backend.h"
#include "proc_scan.h"

typedef struct mpirun_run mpirun_run;

typedef struct {
  launch_backend base;
  char *mpirun, *supervisor, *worker, *report_addr, *tls_ca, *hostfile;
  unsigned slots;
  mpirun_run *adopted;   /* runs found again after a restart, checked by poll */
} mpirun_backend;

struct mpirun_run {
  launch_run base;       /* first member */
  mpirun_backend *b;
  uv_process_t process;  /* the supervisor, when this dpod started it */
  int child;             /* 1: started here (libuv reports the exit); 0: adopted (poll finds it) */
  char *run_dir;
  int sid;               /* the supervisor's pid, which is also the attempt's session id */
  mpirun_run *next;      /* in b->adopted */
};

launch_mpirun_params launch_mpirun_default_params(void) {
  launch_mpirun_params p;
  memset(&p, 0, sizeof p);
  p.mpirun = "mpirun";
  p.supervisor = "dpod-supervisor";
  p.worker = "dpo-worker";
  p.slots = 2;
  return p;
}

static void mpirun_run_free_(mpirun_run *r) {
  free(r->run_dir);
  free(r);
}

static void mpirun_process_closed_(uv_handle_t *h) { mpirun_run_free_(h->data); }

static void mpirun_unlist_(mpirun_run *r) {
  for (mpirun_run **p = &r->b->adopted; *p; p = &(*p)->next)
    if (*p == r) {
      *p = r->next;
      return;
    }
}

/* The attempt is over: how it ended comes from its exit record; without one, whatever was left of its
 * session is killed and the end is reported unknown. Then the run goes away. */
static void mpirun_finish_(mpirun_run *r) {
  launch_exit ex;
  if (!launch_exit_or_killed_(r->run_dir, r->base.attempt, &ex)) {
    int left = proc_signal_session(r->sid, r->run_dir, SIGKILL, 0);
    log_warn("%s ended without an exit record; killed %d leftover processes", r->base.handle, left);
  }
  launch_run_ended_(&r->base, &ex);
  if (r->child) {
    uv_close((uv_handle_t *)&r->process, mpirun_process_closed_);
  } else {
    mpirun_unlist_(r);
    mpirun_run_free_(r);
  }
}

static void mpirun_on_exit_(uv_process_t *h, int64_t exit_status, int term_signal) {
  (void)exit_status;
  (void)term_signal; /* the supervisor's; the attempt's own is in its exit record */
  mpirun_finish_(h->data);
}

static void mpirun_log_path_(const launch_backend *b, const char *run_dir, uint32_t attempt, char *buf, size_t len) {
  (void)b;
  snprintf(buf, len, "%s/attempt-%" PRIu32 ".log", run_dir, attempt);
}

static int mpirun_start_(launch_backend *base, const launch_request *req, launch_run **out, char *handle, char *err,
                         size_t errlen) {
  mpirun_backend *b = (mpirun_backend *)base;
  int status, log_fd = -1;
  char **env = NULL;
  mpirun_run *r = NULL;
  char tmpdir[PATH_MAX], log_path[PATH_MAX], spec_path[PATH_MAX];

  snprintf(tmpdir, sizeof tmpdir, "%s/tmp", req->run_dir);
  mpirun_log_path_(base, req->run_dir, req->attempt, log_path, sizeof log_path);
  snprintf(spec_path, sizeof spec_path, "%s/spec.pb", req->run_dir);
  if ((status = dpod_mkdirs(tmpdir, 0700, 0, err, errlen)) != 0) goto fail;
  /* Atomic and durable, so a worker never reads half a file and a restarted dpod finds what it launched. */
  if ((status = dpod_write_file_atomic(spec_path, req->spec_pb, req->spec_len, DPOD_WRITE_PRIVATE, err, errlen)) != 0)
    goto fail;
  if ((log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0) {
    status = dpod_errf(err, errlen, DPOD_EIO, "opening %s: %s", log_path, strerror(errno));
    goto fail;
  }

  char np[16], id[32], attempt[16], secret_env[JOB_SECRET_HEX_LEN + 32], tmpdir_env[PATH_MAX + 16], omp_env[48],
      blas_env[48], attempt_env[48], wait_env[] = "OMP_WAIT_POLICY=PASSIVE", tls_env[PATH_MAX + 16];
  unsigned threads = req->threads_per_rank ? req->threads_per_rank : 1;
  snprintf(np, sizeof np, "%u", req->ranks);
  snprintf(id, sizeof id, "%" PRIu64, req->job_id);
  snprintf(attempt, sizeof attempt, "%" PRIu32, req->attempt);
  snprintf(attempt_env, sizeof attempt_env, "%s=%" PRIu32, DPOD_ENV_ATTEMPT, req->attempt);
  snprintf(secret_env, sizeof secret_env, "%s=%s", DPOD_ENV_JOB_SECRET, req->secret);
  snprintf(tmpdir_env, sizeof tmpdir_env, "TMPDIR=%s", tmpdir);
  snprintf(omp_env, sizeof omp_env, "OMP_NUM_THREADS=%u", threads);
  /* OpenBLAS (which libtorch's matrix products use) starts its own thread pool when it is loaded, before
   * the worker can say how many threads it wants: without this, N ranks on N cores run N x cores threads. */
  snprintf(blas_env, sizeof blas_env, "OPENBLAS_NUM_THREADS=%u", threads);
  /* Spinning OpenMP threads steal the core a neighbouring rank needs; ranks share the machine. */
  /* Empty when the ranks report over a plain channel: the worker then dials without TLS. */
  snprintf(tls_env, sizeof tls_env, "%s=%s", DPOD_ENV_TLS_CA, b->tls_ca);
  char *extra[] = {secret_env, attempt_env, tmpdir_env, omp_env, blas_env, wait_env, tls_env};
  if (!(env = launch_build_env_(extra, sizeof extra / sizeof extra[0]))) {
    status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
    goto fail;
  }

  const char *args[48];
  int a = 0;
  args[a++] = b->supervisor;
  args[a++] = "--run-dir";
  args[a++] = req->run_dir;
  args[a++] = "--attempt";
  args[a++] = attempt;
  args[a++] = "--";
  args[a++] = b->mpirun;
  args[a++] = "-np";
  args[a++] = np;
  args[a++] = "--oversubscribe";
  args[a++] = "--bind-to";
  args[a++] = "none";
  args[a++] = "--tag-output";
  /* Open MPI refuses root unless told; containers commonly run as root. */
  if (geteuid() == 0) args[a++] = "--allow-run-as-root";
  if (b->hostfile[0]) {
    args[a++] = "--hostfile";
    args[a++] = b->hostfile;
  }
  static const char *const exported[] = {DPOD_ENV_JOB_SECRET,    DPOD_ENV_ATTEMPT, "TMPDIR",        "OMP_NUM_THREADS",
                                         "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", DPOD_ENV_TLS_CA};
  for (size_t i = 0; i < sizeof exported / sizeof exported[0]; i++) {
    args[a++] = "-x";
    args[a++] = exported[i];
  }
  args[a++] = b->worker;
  args[a++] = "--spec";
  args[a++] = spec_path;
  args[a++] = "--run-dir";
  args[a++] = req->run_dir;
  args[a++] = "--job-id";
  args[a++] = id;
  args[a++] = "--report-addr";
  args[a++] = b->report_addr;
  args[a] = NULL;

  if (!(r = calloc(1, sizeof *r)) || !(r->run_dir = strdup(req->run_dir))) {
    status = dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
    goto fail;
  }
  r->process.data = r;
  r->b = b;
  r->child = 1;

  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = log_fd;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = log_fd;
  uv_process_options_t opts;
  memset(&opts, 0, sizeof opts);
  opts.exit_cb = mpirun_on_exit_;
  opts.file = b->supervisor;
  opts.args = (char **)args;
  opts.env = env;
  opts.cwd = req->run_dir;
  opts.flags = UV_PROCESS_DETACHED;
  opts.stdio_count = 3;
  opts.stdio = stdio;
  int rc = uv_spawn(base->loop, &r->process, &opts);
  if (rc != 0) {
    status = dpod_errf(err, errlen, DPOD_EIO, "spawning %s: %s", b->supervisor, uv_strerror(rc));
    /* libuv requires the handle to be closed even when the spawn failed. */
    uv_close((uv_handle_t *)&r->process, mpirun_process_closed_);
    r = NULL;
    goto fail;
  }
  r->sid = r->process.pid;
  close(log_fd);
  free(env);
  char fields[32];
  snprintf(fields, sizeof fields, "sid=%d", r->sid);
  launch_handle_format_(handle, "mpirun", req->attempt, fields); /* fits: bounded above */
  log_info("job %" PRIu64 ": launched %s under %s (session %d, %u ranks, attempt %" PRIu32 "), log %s", req->job_id,
           b->mpirun, b->supervisor, r->sid, req->ranks, req->attempt, log_path);
  *out = &r->base;
  return 0;

fail:
  if (log_fd >= 0) close(log_fd);
  free(env);
  if (r) free(r->run_dir);
  free(r);
  return status;
}

/* Open MPI's mpirun must not get a SIGTERM once a rank has ended: it is then tearing the job down
 * (for about two seconds after a non-zero exit, odls_base_sigkill_timeout twice), and a SIGTERM in that
 * window makes it crash in PMIx_Finalize ("abort is already in progress", a backtrace in the job's log,
 * exit 139). A cancelled worker exits 3 at its next step and opens exactly that window, which dpod's
 * SIGTERM after its grace used to hit every time. So a stop signals the ranks only, and mpirun ends
 * by itself once they have exited, as it does for any rank that exits. mpirun itself gets a SIGTERM only
 * when it has no ranks and has never reaped one: it is still starting them and no teardown can be
 * under way. A mpirun that does not end is left to the SIGKILL that follows the grace period. */
static int mpirun_stop_(launch_run *base, launch_stop_mode how, int *signalled) {
  mpirun_run *r = (mpirun_run *)base;
  /* Never the supervisor: it must outlive everything else to write the exit record. */
  proc_filter f = {.sid = r->sid, .spare = r->sid};
  int n;
  if (how == LAUNCH_STOP_PREEMPT || how == LAUNCH_STOP_TERMINATE) {
    /* The ranks, but not mpirun (the supervisor's child), as Slurm signals tasks: on preemption each
     * rank checkpoints at its next step boundary and exits WORKER_EXIT_PREEMPTED, and so does mpirun. */
    f.spare_children_of = r->sid;
    n = proc_signal(&f, SIGTERM);
    int mpirun = n == 0 && how == LAUNCH_STOP_TERMINATE ? proc_first_child(r->sid) : 0;
    if (mpirun > 0 && proc_reaped_children_ticks(mpirun) == 0 && kill(mpirun, SIGTERM) == 0) n = 1;
  } else {
    n = proc_signal(&f, SIGKILL);
  }
  if (signalled) *signalled = n;
  return 0;
}

static void mpirun_detach_(launch_run *base) {
  mpirun_run *r = (mpirun_run *)base;
  r->base.ended = 1; /* as far as this dpod is concerned */
  if (r->child) {
    uv_close((uv_handle_t *)&r->process, mpirun_process_closed_);
  } else {
    mpirun_unlist_(r);
    mpirun_run_free_(r);
  }
}

static int mpirun_recover_(launch_backend *base, const char *handle, const char *run_dir, launch_run **out,
                           launch_exit *exit, int *stopped, char *err, size_t errlen) {
  mpirun_backend *b = (mpirun_backend *)base;
  *out = NULL;
  uint32_t attempt = launch_handle_attempt(handle);
  if (attempt > 0 && launch_exit_record_read(run_dir, attempt, exit, NULL, 0) == 0) return LAUNCH_RECOVERED_ENDED;
  char v[16];
  uint64_t sid = 0;
  if (launch_handle_get(handle, "sid", v, sizeof v) != 0 || dpod_parse_u64(v, INT_MAX, &sid) != 0 || sid == 0)
    return dpod_errf(err, errlen, DPOD_EINVAL, "handle '%s' names no session", handle);
  /* A pid is reused only once its session is gone: a live session leader naming this run directory is
   * the attempt's supervisor (or, for a handle from before supervisors, its mpirun). */
  if (attempt > 0 && proc_is_session_leader_with_arg((int)sid, run_dir)) {
    mpirun_run *r = calloc(1, sizeof *r);
    if (!r || !(r->run_dir = strdup(run_dir))) {
      free(r);
      return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
    }
    r->b = b;
    r->sid = (int)sid;
    r->next = b->adopted;
    b->adopted = r;
    *out = &r->base;
    return LAUNCH_RECOVERED_RUNNING;
  }
  int n = proc_signal_session((int)sid, run_dir, SIGKILL, 0);
  if (stopped) *stopped = n;
  return LAUNCH_RECOVERED_LOST;
}

/* Adopted attempts have no child process to report their end: look for it. */
static void mpirun_poll_(launch_backend *base) {
  mpirun_backend *b = (mpirun_backend *)base;
  char path[PATH_MAX];
  for (mpirun_run *r = b->adopted, *next; r; r = next) {
    next = r->next;
    launch_exit_record_path(r->run_dir, r->base.attempt, path, sizeof path);
    if (access(path, F_OK) == 0 || !proc_is_session_leader_with_arg(r->sid, r->run_dir)) mpirun_finish_(r);
  }
}

static unsigned mpirun_capacity_(const launch_backend *base) { return ((const mpirun_backend *)base)->slots; }

/* Every rank runs on this host: a rank cannot use more threads than it has CPUs. */
static unsigned mpirun_max_threads_(const launch_backend *base) {
  (void)base;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned)n : 1;
}

static void mpirun_free_(launch_backend *base) {
  mpirun_backend *b = (mpirun_backend *)base;
  free(b->mpirun);
  free(b->supervisor);
  free(b->worker);
  free(b->report_addr);
  free(b->tls_ca);
  free(b->hostfile);
  free(b);
}

static const launch_backend_ops mpirun_ops = {
    .name = "mpirun",
    .start = mpirun_start_,
    .stop = mpirun_stop_,
    .detach = mpirun_detach_,
    .recover = mpirun_recover_,
    .poll = mpirun_poll_,
    .capacity = mpirun_capacity_,
    .max_threads = mpirun_max_threads_,
    .log_path = mpirun_log_path_,
    .parse_log_line = launch_log_parse_mpi_tags_,
    .free = mpirun_free_,
};

int launch_mpirun_create(uv_loop_t *loop, const launch_mpirun_params *p, launch_backend **out, char *err,
                         size_t errlen) {
  *out = NULL;
  if (p->slots == 0) return dpod_errf(err, errlen, DPOD_EINVAL, "the mpirun launcher needs at least one slot");
  mpirun_backend *b = calloc(1, sizeof *b);
  if (!b || !(b->mpirun = strdup(p->mpirun)) || !(b->supervisor = strdup(p->supervisor)) ||
      !(b->worker = strdup(p->worker)) ||
      !(b->report_addr = strdup(p->report_addr ? p->report_addr : "")) ||
      !(b->tls_ca = strdup(p->tls_ca ? p->tls_ca : "")) || !(b->hostfile = strdup(p->hostfile ? p->hostfile : ""))) {
    if (b) mpirun_free_(&b->base);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  }
  b->base.ops = &mpirun_ops;
  b->base.loop = loop;
  b->slots = p->slots;
  *out = &b->base;
  return 0;
}
