#include "launcher.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_log.h"
#include "dpod_paths.h"

extern char **environ;

struct launcher_proc {
  uv_process_t process; /* first member: the handle's address is the proc's */
  launcher_exit_cb cb;
  void *arg;
  int pid;
  int exited;
};

static void launcher_free_cb(uv_handle_t *h) { free(h); }

/* Sends `sig` to every process of session `sid` and returns how many there were. Open MPI puts each rank
 * in a process group of its own, so mpirun's group does not hold them, but the session that
 * UV_PROCESS_DETACHED (setsid) created does: ranks never leave it. */
/* Whether one of pid's command-line arguments is exactly `arg`. */
static int launcher_has_arg_(long pid, const char *arg) {
  char path[64], buf[8192];
  snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t len = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[len] = '\0';
  for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
    if (strcmp(buf + i, arg) == 0) return 1;
  return 0;
}

/* Signals every process of session `sid` but the caller and `spare` (0: none), or only those with the
 * argument `arg` when it is not NULL; returns how many were signalled. */
static int launcher_signal_(int sid, const char *arg, int sig, int spare) {
  DIR *d = opendir("/proc");
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || pid == (long)getpid() || pid == spare) continue;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    /* "pid (comm) state ppid pgrp session ...": comm may hold spaces or parentheses, so parse after the
     * last ')'. */
    char *rp = strrchr(buf, ')');
    char state;
    int ppid, pgrp, session;
    if (!rp || sscanf(rp + 1, " %c %d %d %d", &state, &ppid, &pgrp, &session) != 4) continue;
    if (session != sid || state == 'Z') continue;
    if (arg && !launcher_has_arg_(pid, arg)) continue;
    if (kill((pid_t)pid, sig) == 0) n++;
  }
  closedir(d);
  return n;
}

int launcher_signal_session_(int sid, int sig) { return launcher_signal_(sid, NULL, sig, 0); }

int launcher_stop_orphans(int sid, const char *run_dir) {
  if (sid <= 0 || !run_dir || !*run_dir) return 0;
  return launcher_signal_(sid, run_dir, SIGKILL, 0);
}

static void launcher_on_exit(uv_process_t *h, int64_t exit_status, int term_signal) {
  launcher_proc *p = (launcher_proc *)h;
  p->exited = 1;
  /* mpirun is gone; anything left in its session (a rank stuck in a collective, a helper) goes too. The
   * session id cannot have been reused: a pid stays allocated while it names a live session. */
  int left = launcher_signal_session_(p->pid, SIGKILL);
  if (left > 0) log_warn("killed %d leftover processes of job session %d", left, p->pid);
  p->cb(p, exit_status, term_signal, p->arg);
  uv_close((uv_handle_t *)h, launcher_free_cb);
}

int launcher_pid(const launcher_proc *p) { return p->pid; }

int launcher_kill(launcher_proc *p, int sig) {
  if (p->exited) return DPOD_ESTATE;
  launcher_signal_session_(p->pid, sig);
  return 0;
}

int launcher_preempt(launcher_proc *p) {
  if (p->exited) return 0;
  return launcher_signal_(p->pid, NULL, SIGTERM, p->pid);
}

int launcher_make_secret(char out[JOB_SECRET_HEX_LEN + 1]) {
  unsigned char raw[JOB_SECRET_HEX_LEN / 2];
  size_t got = 0;
  while (got < sizeof raw) {
    ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return DPOD_EIO;
    }
    got += (size_t)n;
  }
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < sizeof raw; i++) {
    out[2 * i] = hex[raw[i] >> 4];
    out[2 * i + 1] = hex[raw[i] & 15];
  }
  out[JOB_SECRET_HEX_LEN] = '\0';
  return 0;
}

void launcher_last_error_line(const char *run_dir, char *buf, size_t len) {
  char path[PATH_MAX];
  buf[0] = '\0';
  snprintf(path, sizeof path, "%s/job.log", run_dir);
  FILE *f = fopen(path, "r");
  if (!f) return;
  /* Only the tail matters; a long training log need not be read whole. */
  static char tail[65536 + 1];
  if (fseek(f, 0, SEEK_END) == 0) {
    long size = ftell(f);
    if (size > 65536) fseek(f, size - 65536, SEEK_SET);
    else rewind(f);
  }
  size_t n = fread(tail, 1, sizeof tail - 1, f);
  fclose(f);
  tail[n] = '\0';
  /* The worker's own error lines ("... dpo-worker ERROR rank 0: ...") say what went wrong; Open MPI's
   * lines that merely contain ERROR (ORTE_ERROR_LOG after an abort) are the fallback. */
  const char *best = NULL, *worker = NULL;
  size_t best_len = 0, worker_len = 0;
  for (char *line = tail; line < tail + n;) {
    char *end = memchr(line, '\n', (size_t)(tail + n - line));
    size_t l = end ? (size_t)(end - line) : (size_t)(tail + n - line);
    line[l] = '\0';
    char *tag = strstr(line, "dpo-worker ERROR ");
    if (tag && !worker) {
      worker = tag + strlen("dpo-worker ERROR ");
      worker_len = l - (size_t)(worker - line);
    } else if (tag) {
      /* later ranks reporting the same */
    } else if (strstr(line, "ERROR")) {
      best = line;
      best_len = l;
    }
    line += l + 1;
  }
  if (worker) {
    /* The first worker error is the cause. */
    best = worker;
    best_len = worker_len;
  }
  if (!best) return;
  while (best_len && (best[best_len - 1] == '\r' || best[best_len - 1] == ' ')) best_len--;
  while (best_len && (*best == ' ' || *best == '\t')) best++, best_len--;
  if (best_len >= len) best_len = len - 1;
  memcpy(buf, best, best_len);
  buf[best_len] = '\0';
}

char *launcher_default_worker(char *buf, size_t len) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    snprintf(buf, len, "dpo-worker");
    return buf;
  }
  self[n] = '\0';
  char *slash = strrchr(self, '/');
  if (slash) *slash = '\0';
  snprintf(buf, len, "%s/dpo-worker", self);
  return buf;
}

/* Writes the spec next to the job atomically and durably, so a worker never reads half a file and a
 * restarted dpod finds what it launched. */
static int launcher_write_spec(const launcher_job *job, char *err, size_t errlen) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/spec.pb", job->run_dir);
  return dpod_write_file_atomic(path, job->spec_pb, job->spec_len, DPOD_WRITE_PRIVATE, err, errlen);
}

/* The daemon's environment minus the variables the launch sets, plus those. Entries of `extra` are
 * borrowed; the array itself is malloc'd. */
static char **launcher_build_env(char *const extra[], size_t n_extra) {
  size_t n = 0;
  for (char **e = environ; e && *e; e++) n++;
  char **env = malloc((n + n_extra + 1) * sizeof *env);
  if (!env) return NULL;
  size_t k = 0;
  for (char **e = environ; e && *e; e++) {
    int overridden = 0;
    for (size_t i = 0; i < n_extra && !overridden; i++) {
      size_t name_len = strcspn(extra[i], "=") + 1; /* "NAME=" */
      overridden = strncmp(*e, extra[i], name_len) == 0;
    }
    if (!overridden) env[k++] = *e;
  }
  for (size_t i = 0; i < n_extra; i++) env[k++] = extra[i];
  env[k] = NULL;
  return env;
}

int launcher_start(uv_loop_t *loop, const launcher_params *params, const launcher_job *job,
                   launcher_exit_cb cb, void *arg, launcher_proc **out, char *err, size_t errlen) {
  int status = DPOD_EIO, log_fd = -1;
  char **env = NULL;
  launcher_proc *p = NULL;
  char tmpdir[PATH_MAX], log_path[PATH_MAX], spec_path[PATH_MAX];
  *out = NULL;

  snprintf(tmpdir, sizeof tmpdir, "%s/tmp", job->run_dir);
  snprintf(log_path, sizeof log_path, "%s/job.log", job->run_dir);
  snprintf(spec_path, sizeof spec_path, "%s/spec.pb", job->run_dir);
  if ((status = dpod_mkdirs(tmpdir, 0700, 0, err, errlen)) != 0) goto fail;
  if ((status = launcher_write_spec(job, err, errlen)) != 0) goto fail;
  status = DPOD_EIO;
  if ((log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0) {
    snprintf(err, errlen, "opening %s: %s", log_path, strerror(errno));
    goto fail;
  }

  char np[16], id[32], secret_env[JOB_SECRET_HEX_LEN + 32], tmpdir_env[PATH_MAX + 16], omp_env[48],
      blas_env[48], wait_env[] = "OMP_WAIT_POLICY=PASSIVE";
  snprintf(np, sizeof np, "%u", job->ranks);
  snprintf(id, sizeof id, "%llu", (unsigned long long)job->job_id);
  snprintf(secret_env, sizeof secret_env, "%s=%s", DPOD_ENV_JOB_SECRET, job->secret);
  snprintf(tmpdir_env, sizeof tmpdir_env, "TMPDIR=%s", tmpdir);
  snprintf(omp_env, sizeof omp_env, "OMP_NUM_THREADS=%u", job->threads_per_rank ? job->threads_per_rank : 1);
  /* OpenBLAS (which libtorch's matrix products use) starts its own thread pool when it is loaded, before
   * the worker can say how many threads it wants: without this, N ranks on N cores run N x cores threads. */
  snprintf(blas_env, sizeof blas_env, "OPENBLAS_NUM_THREADS=%u", job->threads_per_rank ? job->threads_per_rank : 1);
  /* Spinning OpenMP threads steal the core a neighbouring rank needs; ranks share the machine. */
  char *extra[] = {secret_env, tmpdir_env, omp_env, blas_env, wait_env};
  if (!(env = launcher_build_env(extra, 5))) {
    status = DPOD_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }

  const char *args[32];
  int a = 0;
  args[a++] = params->mpirun;
  args[a++] = "-np";
  args[a++] = np;
  args[a++] = "--oversubscribe";
  args[a++] = "--bind-to";
  args[a++] = "none";
  /* Open MPI refuses root unless told; containers commonly run as root. */
  if (geteuid() == 0) args[a++] = "--allow-run-as-root";
  args[a++] = "-x";
  args[a++] = DPOD_ENV_JOB_SECRET;
  args[a++] = "-x";
  args[a++] = "TMPDIR";
  args[a++] = "-x";
  args[a++] = "OMP_NUM_THREADS";
  args[a++] = "-x";
  args[a++] = "OPENBLAS_NUM_THREADS";
  args[a++] = "-x";
  args[a++] = "OMP_WAIT_POLICY";
  args[a++] = params->worker;
  args[a++] = "--spec";
  args[a++] = spec_path;
  args[a++] = "--run-dir";
  args[a++] = job->run_dir;
  args[a++] = "--job-id";
  args[a++] = id;
  args[a++] = "--report-addr";
  args[a++] = params->report_addr;
  args[a] = NULL;

  if (!(p = calloc(1, sizeof *p))) {
    status = DPOD_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  p->cb = cb;
  p->arg = arg;

  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = log_fd;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = log_fd;
  uv_process_options_t opts;
  memset(&opts, 0, sizeof opts);
  opts.exit_cb = launcher_on_exit;
  opts.file = params->mpirun;
  opts.args = (char **)args;
  opts.env = env;
  opts.cwd = job->run_dir;
  opts.flags = UV_PROCESS_DETACHED;
  opts.stdio_count = 3;
  opts.stdio = stdio;
  int rc = uv_spawn(loop, &p->process, &opts);
  if (rc != 0) {
    snprintf(err, errlen, "spawning %s: %s", params->mpirun, uv_strerror(rc));
    /* libuv requires the handle to be closed even when the spawn failed. */
    uv_close((uv_handle_t *)&p->process, launcher_free_cb);
    p = NULL;
    goto fail;
  }
  p->pid = p->process.pid;
  close(log_fd);
  free(env);
  log_info("job %llu: launched %s (pid %d, %u ranks), log %s", (unsigned long long)job->job_id,
           params->mpirun, p->pid, job->ranks, log_path);
  *out = p;
  return 0;

fail:
  if (log_fd >= 0) close(log_fd);
  free(env);
  free(p);
  return status;
}
