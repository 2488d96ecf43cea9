#include "tb_writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_log.h"
#include "job_store.h"
#include "tb_file.h"

#define TB_DIR "tensorboard"
#define TB_PREFIX "events.out.tfevents."
#define TB_BUF_CAP (64 * 1024) /* records gathered before one write */
#define TB_VALUES_MAX 16

/* What the thread knows of one job. */
typedef struct {
  uint64_t id;
  bool ready;        /* its files were read back */
  bool broken;       /* they cannot be: skipped for the rest of this lifetime (logged once) */
  bool warned;       /* a write failed and was logged; cleared by the next one that works */
  uint64_t last_seq; /* every event up to this one is in the files (or has no record) */
  int64_t last_step;
  char *dir;         /* RUN_DIR/tensorboard */
  char *file;        /* this lifetime's file; NULL until its first record */
} tb_job;

struct tb_writer {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work, idle;
  /* Under mu: */
  uint64_t *pending;
  size_t n_pending, cap_pending;
  bool sweep;        /* catch up every job (at start, or after a notify found no memory) */
  bool busy;
  bool stop;
  /* The thread's own: */
  job_store *store;
  tb_job *jobs;
  size_t n_jobs, cap_jobs;
  char host[256];
  int64_t started_s; /* the <unix> of this lifetime's file names */
  unsigned char buf[TB_BUF_CAP];
};

/* ---------------------------------------------------------------------------------------------------
 * Records. */

typedef struct {
  Dpod__Tb__Summary__Value v[TB_VALUES_MAX];
  Dpod__Tb__Summary__Value *p[TB_VALUES_MAX];
  size_t n;
} tb_values;

static void tb_add(tb_values *vs, protobuf_c_boolean has, const char *tag, double value) {
  if (!has || vs->n == TB_VALUES_MAX) return;
  Dpod__Tb__Summary__Value *v = &vs->v[vs->n];
  dpod__tb__summary__value__init(v);
  v->tag = (char *)tag;
  v->has_simple_value = true;
  v->simple_value = (float)value;
  vs->p[vs->n++] = v;
}

size_t tb_writer_record_(const Dpod__V1__JobEvent *ev, int64_t *step, unsigned char *buf, size_t cap) {
  tb_values vs = {.n = 0};
  int64_t at = *step;
  switch (ev->event_case) {
  case DPOD__V1__JOB_EVENT__EVENT_METRICS: {
    const Dpod__V1__StepMetrics *m = ev->metrics;
    at = m->step;
    tb_add(&vs, m->has_loss, "train/loss", m->loss);
    tb_add(&vs, m->has_implicit_acc, "train/implicit_acc", m->implicit_acc);
    tb_add(&vs, m->has_policy_mse, "train/policy_mse", m->policy_mse);
    tb_add(&vs, m->has_ref_mse, "train/ref_mse", m->ref_mse);
    tb_add(&vs, m->has_reward_margin, "train/reward_margin", m->reward_margin);
    tb_add(&vs, m->has_grad_norm, "train/grad_norm", m->grad_norm);
    tb_add(&vs, m->has_learning_rate, "train/lr", m->learning_rate);
    tb_add(&vs, m->has_samples_per_sec, "train/samples_per_sec", m->samples_per_sec);
    /* Loss scaling (fp16): the step's scale, and 1 for a step skipped on inf/nan gradients. */
    tb_add(&vs, m->has_loss_scale, "train/loss_scale", m->loss_scale);
    tb_add(&vs, m->has_skipped, "train/skipped", m->skipped ? 1.0 : 0.0);
    break;
  }
  case DPOD__V1__JOB_EVENT__EVENT_EVAL: {
    const Dpod__V1__EvalMetrics *e = ev->eval;
    at = e->step;
    tb_add(&vs, e->has_loss, "eval/loss", e->loss);
    tb_add(&vs, e->has_implicit_acc, "eval/implicit_acc", e->implicit_acc);
    tb_add(&vs, e->has_reward_margin, "eval/reward_margin", e->reward_margin);
    /* Sampling scores exist on the synthetic task only: samples > 0. */
    bool sampled = e->has_samples && e->samples > 0;
    tb_add(&vs, sampled && e->has_preferred_mode_rate, "eval/preferred_mode_rate", e->preferred_mode_rate);
    tb_add(&vs, sampled && e->has_mode_distance, "eval/mode_distance", e->mode_distance);
    break;
  }
  case DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT:
    at = ev->checkpoint->step;
    tb_add(&vs, true, "checkpoint/size_mb", (double)ev->checkpoint->size_bytes / 1e6);
    break;
  case DPOD__V1__JOB_EVENT__EVENT_ATTEMPT: {
    const Dpod__V1__AttemptInfo *a = ev->attempt;
    if (a->has_ended_unix_ms && a->ended_unix_ms > 0)
      tb_add(&vs, true, "attempt/exit_code", a->exit_code);
    else
      tb_add(&vs, true, "attempt/number", a->attempt);
    break;
  }
  default:
    return 0;
  }
  if (vs.n == 0) return 0;
  Dpod__Tb__Summary summary = DPOD__TB__SUMMARY__INIT;
  summary.n_value = vs.n;
  summary.value = vs.p;
  Dpod__Tb__Event out = DPOD__TB__EVENT__INIT;
  out.has_wall_time = true;
  out.wall_time = (double)ev->time_unix_ms / 1000.0;
  out.has_step = true;
  out.step = at;
  out.what_case = DPOD__TB__EVENT__WHAT_SUMMARY;
  out.summary = &summary;
  out.has_dpod_seq = true;
  out.dpod_seq = ev->seq;
  size_t n = tb_file_frame_event(&out, buf, cap);
  if (n && at > *step) *step = at;
  return n;
}

/* ---------------------------------------------------------------------------------------------------
 * One job's files. */

static tb_job *tbw_job(tb_writer *w, uint64_t id) {
  for (size_t i = 0; i < w->n_jobs; i++)
    if (w->jobs[i].id == id) return &w->jobs[i];
  if (w->n_jobs == w->cap_jobs) {
    size_t cap = w->cap_jobs ? 2 * w->cap_jobs : 64;
    tb_job *jobs = realloc(w->jobs, cap * sizeof *jobs);
    if (!jobs) return NULL;
    w->jobs = jobs;
    w->cap_jobs = cap;
  }
  tb_job *j = &w->jobs[w->n_jobs++];
  *j = (tb_job){.id = id};
  return j;
}

/* Cuts a file back to its whole records. */
static int tbw_truncate(const char *path, size_t len) {
  int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return -1;
  int rc = ftruncate(fd, (off_t)len);
  close(fd);
  return rc;
}

/* Reads back what earlier lifetimes wrote for job j: last_seq and last_step, torn tails cut off. */
static int tbw_read_back(tb_writer *w, tb_job *j) {
  Dpod__V1__Job *job = NULL;
  if (job_store_get(w->store, j->id, &job) != 0) {
    log_warn("tensorboard: job %" PRIu64 ": %s", j->id, job_store_last_error(w->store));
    return -1;
  }
  size_t len = strlen(job->run_dir) + sizeof "/" TB_DIR;
  j->dir = malloc(len);
  if (j->dir) snprintf(j->dir, len, "%s/" TB_DIR, job->run_dir);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  if (!j->dir) return -1;
  DIR *d = opendir(j->dir);
  if (!d) {
    if (errno == ENOENT) return 0;
    log_warn("tensorboard: %s: %s", j->dir, strerror(errno));
    return -1;
  }
  int rc = 0;
  struct dirent *de;
  while (rc == 0 && (de = readdir(d))) {
    if (strncmp(de->d_name, TB_PREFIX, strlen(TB_PREFIX)) != 0) continue;
    char path[4352], err[512];
    snprintf(path, sizeof path, "%s/%s", j->dir, de->d_name);
    tb_file_info info;
    if (tb_file_scan(path, &info, err, sizeof err) != 0) {
      log_warn("tensorboard: %s", err);
      rc = -1;
      break;
    }
    if (info.tail != TFRECORD_END) {
      log_warn("tensorboard: %s: dropping a %s of %zu bytes at offset %zu", path, tfrecord_status_name(info.tail),
               info.file_len - info.good_len, info.good_len);
      if (tbw_truncate(path, info.good_len) != 0) {
        log_warn("tensorboard: %s: cannot cut it back: %s", path, strerror(errno));
        rc = -1;
      }
    }
    if (info.max_seq > j->last_seq) j->last_seq = info.max_seq;
    if (info.max_step > j->last_step) j->last_step = info.max_step;
  }
  closedir(d);
  return rc;
}

/* Creates this lifetime's file of job j, its first record the file version. */
static int tbw_create_file(tb_writer *w, tb_job *j, char *err, size_t errlen) {
  int status = dpod_mkdirs(j->dir, 0700, 0, err, errlen);
  if (status != 0) return status;
  char path[4352];
  int fd = -1;
  for (unsigned k = 0; k < 100 && fd < 0; k++) {
    if (k == 0)
      snprintf(path, sizeof path, "%s/" TB_PREFIX "%" PRId64 ".%s.%ld", j->dir, w->started_s, w->host, (long)getpid());
    else
      snprintf(path, sizeof path, "%s/" TB_PREFIX "%" PRId64 ".%s.%ld.%u", j->dir, w->started_s, w->host,
               (long)getpid(), k);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) return dpod_errf(err, errlen, DPOD_EIO, "%s: %s", path, strerror(errno));
  Dpod__Tb__Event first = DPOD__TB__EVENT__INIT;
  first.has_wall_time = true;
  first.wall_time = (double)time(NULL);
  first.what_case = DPOD__TB__EVENT__WHAT_FILE_VERSION;
  first.file_version = TB_FILE_VERSION;
  unsigned char rec[128];
  size_t n = tb_file_frame_event(&first, rec, sizeof rec);
  if (fchmod(fd, 0600) != 0 || write(fd, rec, n) != (ssize_t)n) {
    status = dpod_errf(err, errlen, DPOD_EIO, "%s: %s", path, strerror(errno));
    close(fd);
    unlink(path);
    return status;
  }
  close(fd);
  if (!(j->file = strdup(path))) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  return 0;
}

/* Appends n bytes of records to job j's file: all of them, or none (the file is cut back). */
static int tbw_append(tb_writer *w, tb_job *j, size_t n, char *err, size_t errlen) {
  int status;
  if (!j->file && (status = tbw_create_file(w, j, err, errlen)) != 0) return status;
  int fd = open(j->file, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    status = dpod_errf(err, errlen, DPOD_EIO, "%s: %s", j->file, strerror(errno));
    if (fd >= 0) close(fd);
    return status;
  }
  size_t done = 0;
  while (done < n) {
    ssize_t k = write(fd, w->buf + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      status = dpod_errf(err, errlen, DPOD_EIO, "%s: %s", j->file, k < 0 ? strerror(errno) : "short write");
      if (ftruncate(fd, st.st_size) != 0) log_warn("tensorboard: %s: cannot cut it back: %s", j->file, strerror(errno));
      close(fd);
      return status;
    }
    done += (size_t)k;
  }
  close(fd);
  return 0;
}

/* Writes job `id`'s events after the last one written. */
static void tbw_catch_up(tb_writer *w, uint64_t id) {
  tb_job *j = tbw_job(w, id);
  if (!j || j->broken) return;
  if (!j->ready) {
    if (tbw_read_back(w, j) != 0) {
      log_warn("tensorboard: job %" PRIu64 ": its event files are not written in this run of dpod", id);
      j->broken = true;
      return;
    }
    j->ready = true;
  }
  for (bool more = true; more;) {
    size_t n = 0;
    uint64_t seq = j->last_seq;
    int64_t step = j->last_step;
    more = false;
    while (n + TB_RECORD_MAX / 64 < TB_BUF_CAP) {
      Dpod__V1__JobEvent *ev = NULL;
      int rc = job_store_get_event(w->store, id, seq + 1, &ev);
      if (rc == DPOD_ENOENT) break;
      if (rc != 0) {
        log_warn("tensorboard: job %" PRIu64 ": %s", id, job_store_last_error(w->store));
        break;
      }
      n += tb_writer_record_(ev, &step, w->buf + n, TB_BUF_CAP - n);
      protobuf_c_message_free_unpacked(&ev->base, NULL);
      seq++;
      more = true;
    }
    char err[512];
    if (n && tbw_append(w, j, n, err, sizeof err) != 0) {
      if (!j->warned) log_warn("tensorboard: job %" PRIu64 ": %s (retried with its next event)", id, err);
      j->warned = true;
      return;
    }
    j->warned = false;
    j->last_seq = seq;
    j->last_step = step;
  }
}

static void tbw_sweep(tb_writer *w) {
  Dpod__V1__Job **jobs = NULL;
  size_t n = 0;
  if (job_store_list(w->store, NULL, 0, 0, true, &jobs, &n) != 0) {
    log_warn("tensorboard: listing jobs: %s", job_store_last_error(w->store));
    return;
  }
  for (size_t i = 0; i < n; i++) tbw_catch_up(w, jobs[i]->id);
  job_store_free_jobs(jobs, n);
}

/* ---------------------------------------------------------------------------------------------------
 * The thread. */

static void *tbw_main(void *arg) {
  tb_writer *w = arg;
  uint64_t *ids = NULL;
  size_t cap = 0;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->n_pending && !w->sweep && !w->stop) {
      w->busy = false;
      pthread_cond_broadcast(&w->idle);
      pthread_cond_wait(&w->work, &w->mu);
    }
    if (!w->n_pending && !w->sweep) break; /* stopping, nothing left */
    w->busy = true;
    bool sweep = w->sweep;
    w->sweep = false;
    /* Swap the pending list for the thread's empty one: notifies go on filling a list meanwhile. */
    uint64_t *take = w->pending;
    size_t n = w->n_pending, take_cap = w->cap_pending;
    w->pending = ids;
    w->cap_pending = cap;
    w->n_pending = 0;
    pthread_mutex_unlock(&w->mu);
    if (sweep) tbw_sweep(w);
    else
      for (size_t i = 0; i < n; i++) tbw_catch_up(w, take[i]);
    ids = take;
    cap = take_cap;
    pthread_mutex_lock(&w->mu);
  }
  w->busy = false;
  pthread_cond_broadcast(&w->idle);
  pthread_mutex_unlock(&w->mu);
  free(ids);
  return NULL;
}

static void tbw_free(tb_writer *w) {
  for (size_t i = 0; i < w->n_jobs; i++) {
    free(w->jobs[i].dir);
    free(w->jobs[i].file);
  }
  free(w->jobs);
  free(w->pending);
  job_store_close(w->store);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->work);
  pthread_cond_destroy(&w->idle);
  free(w);
}

int tb_writer_start(const char *db_path, const char *host, tb_writer **out, char *err, size_t errlen) {
  *out = NULL;
  tb_writer *w = calloc(1, sizeof *w);
  if (!w) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->work, NULL);
  pthread_cond_init(&w->idle, NULL);
  char store_err[512];
  int status = job_store_open(db_path, &w->store, store_err, sizeof store_err);
  if (status != 0) {
    tbw_free(w);
    return dpod_errf(err, errlen, status, "tensorboard writer: %s", store_err);
  }
  if (!host && gethostname(w->host, sizeof w->host - 1) != 0) snprintf(w->host, sizeof w->host, "localhost");
  if (host) snprintf(w->host, sizeof w->host, "%s", host);
  /* The name is a file name: anything but [A-Za-z0-9._-] becomes '_'. */
  for (char *c = w->host; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
          *c == '-' || *c == '_'))
      *c = '_';
  w->started_s = (int64_t)time(NULL);
  w->sweep = true;
  w->busy = true;
  if ((status = pthread_create(&w->thread, NULL, tbw_main, w)) != 0) {
    tbw_free(w);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "tensorboard writer: cannot start its thread: %s", strerror(status));
  }
  *out = w;
  return 0;
}

void tb_writer_notify(void *arg, uint64_t job_id) {
  tb_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  bool queued = w->sweep;
  for (size_t i = 0; !queued && i < w->n_pending; i++) queued = w->pending[i] == job_id;
  if (!queued) {
    if (w->n_pending == w->cap_pending) {
      size_t cap = w->cap_pending ? 2 * w->cap_pending : 16;
      uint64_t *p = realloc(w->pending, cap * sizeof *p);
      if (p) {
        w->pending = p;
        w->cap_pending = cap;
      }
    }
    if (w->n_pending < w->cap_pending)
      w->pending[w->n_pending++] = job_id;
    else
      w->sweep = true; /* no memory for the id: the next pass looks at every job */
  }
  pthread_cond_signal(&w->work);
  pthread_mutex_unlock(&w->mu);
}

void tb_writer_flush(tb_writer *w) {
  pthread_mutex_lock(&w->mu);
  while (w->busy || w->n_pending || w->sweep) pthread_cond_wait(&w->idle, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

void tb_writer_stop(tb_writer *w) {
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_signal(&w->work);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  tbw_free(w);
}
