/* The launch interface: dispatch to the backend, handles, exit records, and the helpers every backend
 * shares. */
#include "launch_backend.h"

extern char **environ;

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"

void launch_backend_free(launch_backend *b) {
  if (b) b->ops->free(b);
}

const char *launch_backend_name(const launch_backend *b) { return b->ops->name; }

unsigned launch_capacity(const launch_backend *b) { return b->ops->capacity(b); }
unsigned launch_max_threads(const launch_backend *b) { return b->ops->max_threads(b); }

int launch_start(launch_backend *b, const launch_request *req, launch_exit_cb cb, void *arg, launch_run **out,
                 char *handle, char *err, size_t errlen) {
  *out = NULL;
  if (req->attempt == 0) return dpod_errf(err, errlen, DPOD_EINVAL, "attempts are numbered from 1");
  launch_run *r = NULL;
  int status = b->ops->start(b, req, &r, handle, err, errlen);
  if (status != 0) return status;
  r->backend = b;
  r->cb = cb;
  r->arg = arg;
  r->attempt = req->attempt;
  snprintf(r->handle, sizeof r->handle, "%s", handle);
  *out = r;
  return 0;
}

int launch_stop(launch_run *r, launch_stop_mode how, int *signalled) {
  if (signalled) *signalled = 0;
  if (r->ended) return DPOD_ESTATE;
  return r->backend->ops->stop(r, how, signalled);
}

void launch_detach(launch_run *r) {
  if (!r->ended) r->backend->ops->detach(r);
}

const char *launch_run_handle(const launch_run *r) { return r->handle; }
uint32_t launch_run_attempt(const launch_run *r) { return r->attempt; }

int launch_recover(launch_backend *b, const char *handle, const char *run_dir, launch_exit_cb cb, void *arg,
                   launch_run **out, launch_exit *exit, int *stopped, char *err, size_t errlen) {
  *out = NULL;
  if (stopped) *stopped = 0;
  memset(exit, 0, sizeof *exit);
  if (!launch_handle_is(handle, b->ops->name))
    return dpod_errf(err, errlen, DPOD_EINVAL, "handle '%s' is not one of the %s launcher's", handle, b->ops->name);
  launch_run *r = NULL;
  int found = b->ops->recover(b, handle, run_dir, &r, exit, stopped, err, errlen);
  if (found < 0) return found;
  if (found == LAUNCH_RECOVERED_RUNNING) {
    r->backend = b;
    r->cb = cb;
    r->arg = arg;
    r->attempt = launch_handle_attempt(handle);
    snprintf(r->handle, sizeof r->handle, "%s", handle);
    *out = r;
  }
  return found;
}

int launch_backend_requeues(const launch_backend *b) { return b->ops->requeues; }
int launch_backend_takes_resources(const launch_backend *b) { return b->ops->resources; }
int launch_backend_exit0_unproven(const launch_backend *b) { return b->ops->exit0_unproven; }

void launch_set_scheduler_cbs(launch_backend *b, launch_status_cb status, launch_requeue_cb requeue) {
  b->status_cb = status;
  b->requeue_cb = requeue;
}

void launch_poll(launch_backend *b) {
  if (b->ops->poll) b->ops->poll(b);
}

void launch_log_path(const launch_backend *b, const char *run_dir, uint32_t attempt, char *buf, size_t len) {
  b->ops->log_path(b, run_dir, attempt, buf, len);
}

void launch_run_ended_(launch_run *r, const launch_exit *exit) {
  r->ended = 1;
  r->cb(r, exit, r->arg);
}

/* ---- handles ---- */

int launch_handle_format_(char *handle, const char *name, uint32_t attempt, const char *fields) {
  int n = snprintf(handle, LAUNCH_HANDLE_MAX, "%s:%s%sattempt=%" PRIu32, name, fields, *fields ? "," : "", attempt);
  return n > 0 && n < LAUNCH_HANDLE_MAX ? 0 : DPOD_EINVAL;
}

int launch_handle_is(const char *handle, const char *name) {
  size_t n = strlen(name);
  return handle && strncmp(handle, name, n) == 0 && handle[n] == ':';
}

int launch_handle_get(const char *handle, const char *key, char *buf, size_t len) {
  const char *p = handle ? strchr(handle, ':') : NULL;
  size_t klen = strlen(key);
  while (p) {
    p++;
    const char *end = strchr(p, ',');
    size_t flen = end ? (size_t)(end - p) : strlen(p);
    if (flen > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
      snprintf(buf, len, "%.*s", (int)(flen - klen - 1), p + klen + 1);
      return 0;
    }
    p = end;
  }
  return DPOD_ENOENT;
}

uint32_t launch_handle_attempt(const char *handle) {
  char v[16];
  if (launch_handle_get(handle, "attempt", v, sizeof v) != 0) return 0;
  uint64_t a;
  return dpod_parse_u64(v, UINT32_MAX, &a) == 0 ? (uint32_t)a : 0;
}

/* ---- exit records ---- */

void launch_exit_record_path(const char *run_dir, uint32_t attempt, char *buf, size_t len) {
  snprintf(buf, len, "%s/attempt-%" PRIu32 ".exit", run_dir, attempt);
}

int launch_exit_record_write(const char *run_dir, const launch_exit *exit, char *err, size_t errlen) {
  char path[PATH_MAX], text[256];
  launch_exit_record_path(run_dir, exit->attempt, path, sizeof path);
  int n = snprintf(text, sizeof text, "attempt %" PRIu32 "\nexit_status %d\nterm_signal %d\nfinished_unix_ms %" PRId64 "\n",
                   exit->attempt, exit->exit_status, exit->term_signal, exit->finished_unix_ms);
  return dpod_write_file_atomic(path, text, (size_t)n, 0, err, errlen);
}

int launch_exit_record_read(const char *run_dir, uint32_t attempt, launch_exit *exit, char *err, size_t errlen) {
  char path[PATH_MAX];
  launch_exit_record_path(run_dir, attempt, path, sizeof path);
  char *text = NULL;
  int status = dpod_read_file(path, 4096, &text, NULL, err, errlen);
  if (status != 0) return status;
  memset(exit, 0, sizeof *exit);
  int seen = 0; /* one bit per required key */
  status = 0;
  for (char *line = strtok(text, "\n"); line && status == 0; line = strtok(NULL, "\n")) {
    char key[32];
    long long v;
    int fields = sscanf(line, "%31s %lld", key, &v);
    int known = fields >= 1 && (strcmp(key, "attempt") == 0 || strcmp(key, "exit_status") == 0 ||
                                strcmp(key, "term_signal") == 0 || strcmp(key, "finished_unix_ms") == 0);
    if (fields < 1 || !known) {
      continue; /* a blank line, or a key a newer writer adds */
    } else if (fields != 2) {
      status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: %s has no number", path, key);
    } else if (strcmp(key, "attempt") == 0 && v >= 0 && v <= UINT32_MAX) {
      exit->attempt = (uint32_t)v;
      seen |= 1;
    } else if (strcmp(key, "exit_status") == 0 && v >= 0 && v <= 255) {
      exit->exit_status = (int)v;
      seen |= 2;
    } else if (strcmp(key, "term_signal") == 0 && v >= 0 && v < 128) {
      exit->term_signal = (int)v;
      seen |= 4;
    } else if (strcmp(key, "finished_unix_ms") == 0 && v >= 0) {
      exit->finished_unix_ms = (int64_t)v;
    } else {
      status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: %s %lld is out of range", path, key, v);
    }
  }
  free(text);
  if (status == 0 && seen != 7)
    status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: needs attempt, exit_status and term_signal", path);
  if (status == 0 && exit->attempt != attempt)
    status = dpod_errf(err, errlen, DPOD_EFORMAT, "%s: records attempt %" PRIu32, path, exit->attempt);
  exit->recorded = status == 0;
  return status;
}

/* ---- helpers ---- */

int launch_make_secret(char out[JOB_SECRET_HEX_LEN + 1]) {
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

void launch_last_error_line(const char *log_path, char *buf, size_t len) {
  buf[0] = '\0';
  FILE *f = fopen(log_path, "r");
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
  } else if (best) {
    /* Without the launcher's rank prefix ("[1,0]<stderr>:", "0: "): the reason quotes the rank's words. */
    launch_log_entry e;
    launch_log_parse_mpi_tags_(best, best_len, &e);
    if (e.rank < 0) launch_log_parse_srun_label_(best, best_len, &e);
    best += e.text_off;
    best_len = e.text_len;
  }
  if (!best) return;
  while (best_len && (best[best_len - 1] == '\r' || best[best_len - 1] == ' ')) best_len--;
  while (best_len && (*best == ' ' || *best == '\t')) best++, best_len--;
  if (best_len >= len) best_len = len - 1;
  memcpy(buf, best, best_len);
  buf[best_len] = '\0';
}

/* `name` in the directory of this executable. */
static char *launch_beside_self_(const char *name, char *buf, size_t len) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    snprintf(buf, len, "%s", name);
    return buf;
  }
  self[n] = '\0';
  char *slash = strrchr(self, '/');
  if (slash) *slash = '\0';
  snprintf(buf, len, "%s/%s", self, name);
  return buf;
}

char *launch_default_worker(char *buf, size_t len) { return launch_beside_self_("dpo-worker", buf, len); }
char *launch_default_supervisor(char *buf, size_t len) { return launch_beside_self_("dpod-supervisor", buf, len); }

/* The daemon's environment minus the variables the launch sets, plus those. Entries of `extra` are
 * borrowed; the array itself is malloc'd. */
char **launch_build_env_(char *const extra[], size_t n_extra) {
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

int64_t launch_now_ms_(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int launch_exit_or_killed_(const char *run_dir, uint32_t attempt, launch_exit *ex) {
  if (launch_exit_record_read(run_dir, attempt, ex, NULL, 0) == 0) return 1;
  memset(ex, 0, sizeof *ex);
  ex->attempt = attempt;
  ex->term_signal = SIGKILL;
  ex->finished_unix_ms = launch_now_ms_();
  return 0;
}
