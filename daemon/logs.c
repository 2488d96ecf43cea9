#include "logs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpod_error.h"
#include "dpod_log.h"
#include "job_names.h"

#define LOGS_CHUNK 65536u     /* bytes read at a time; larger than LOGS_LINE_MAX */
#define LOGS_POLL_MS 250      /* how often a following stream looks for more output */
#define LOGS_POS_MASK ((UINT64_C(1) << LOGS_OFFSET_BITS) - 1)

typedef struct {
  rpc_call *call;         /* NULL once its done callback has run */
  uv_loop_t *loop;
  job_store *store;
  const launch_backend *backend;
  uint64_t job_id;
  char *run_dir;
  int rank;               /* -1: every line */
  uint32_t only_attempt;  /* 0: every attempt */
  bool follow;

  /* Where the stream starts (the tail's two passes both start here). */
  uint32_t start_attempt;
  uint64_t start_pos;
  /* A tail reads everything once counting the lines it would send, then again skipping all but the last. */
  bool counting;
  uint32_t tail;
  uint64_t counted, skip;

  uint32_t attempt;       /* the log being read */
  uv_file fd;             /* -1: not open */
  bool missing;           /* the attempt's log does not exist (yet) */
  bool end_seen;          /* the attempt was over when its log was last read to its end: read once more */
  bool final;             /* ...and read: what is left in buf is its last line, without a newline */
  bool live;              /* followed to the end once: lines from now on are stamped with the time */
  uint64_t file_pos;      /* the log's offset of buf[0] */
  size_t len, pos;        /* buf holds len bytes; entries before pos are done */
  bool cont;              /* the last entry was cut at LOGS_LINE_MAX: the next piece is its rank's too */
  int cont_rank;
  launch_log_stream cont_stream;

  bool sending, fs_busy, waiting, finished, freed;
  uv_fs_t req;
  uv_timer_t timer;
  char buf[LOGS_CHUNK];
  char text[LOGS_LINE_MAX + 1];
} logs_stream;

static void logs_pump(logs_stream *s);

static size_t logs_alive_; /* loop thread only */

size_t logs_count(void) { return logs_alive_; }

void logs_fix_utf8(char *s, size_t len) {
  unsigned char *p = (unsigned char *)s;
  for (size_t i = 0; i < len;) {
    unsigned c = p[i];
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    bool ok = n > 0 && i + n <= len && c != 0;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (size_t k = 1; ok && k < n; k++) {
      if ((p[i + k] & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    /* Overlong forms, surrogates and code points past U+10FFFF are not UTF-8 either. */
    if (ok && ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
               (cp >= 0xD800 && cp <= 0xDFFF)))
      ok = false;
    if (!ok) {
      p[i++] = '?';
      continue;
    }
    i += n;
  }
}

static int64_t logs_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logs_timer_closed(uv_handle_t *h) {
  logs_stream *s = h->data;
  free(s->run_dir);
  free(s);
  logs_alive_--;
}

static void logs_close_fd(logs_stream *s) {
  if (s->fd < 0) return;
  uv_fs_t r;
  uv_fs_close(s->loop, &r, s->fd, NULL); /* read-only: closing does not wait on the disk */
  uv_fs_req_cleanup(&r);
  s->fd = -1;
}

/* Frees the stream once its call is over and nothing of it is in flight. */
static void logs_release(logs_stream *s) {
  if (s->call || s->fs_busy || s->freed) return;
  s->freed = true;
  logs_close_fd(s);
  uv_close((uv_handle_t *)&s->timer, logs_timer_closed);
}

static void logs_finish(logs_stream *s, grpc_status_code code, const char *details) {
  if (s->finished) return;
  s->finished = true;
  if (s->call) rpc_call_finish(s->call, code, details);
}

/* Reads the log from its start again (the tail's second pass, a new attempt). */
static void logs_seek(logs_stream *s, uint32_t attempt, uint64_t pos) {
  if (attempt != s->attempt) logs_close_fd(s);
  s->attempt = attempt;
  s->file_pos = pos;
  s->len = s->pos = 0;
  s->missing = s->end_seen = s->final = s->cont = false;
}

static void logs_fs_done(uv_fs_t *req) {
  logs_stream *s = req->data;
  ssize_t result = req->result;
  bool was_open = req->fs_type == UV_FS_OPEN;
  uv_fs_req_cleanup(req);
  s->fs_busy = false;
  if (!s->call) {
    if (was_open && result >= 0) s->fd = (uv_file)result;
    logs_release(s);
    return;
  }
  if (was_open) {
    if (result >= 0) {
      s->fd = (uv_file)result;
    } else if (result == UV_ENOENT) {
      s->missing = true; /* not started yet, or the launcher never wrote to it */
    } else {
      char why[256];
      snprintf(why, sizeof why, "cannot open the log of attempt %" PRIu32 ": %s", s->attempt, uv_strerror((int)result));
      logs_finish(s, GRPC_STATUS_INTERNAL, why);
      return;
    }
  } else if (result < 0) {
    char why[256];
    snprintf(why, sizeof why, "cannot read the log of attempt %" PRIu32 ": %s", s->attempt, uv_strerror((int)result));
    logs_finish(s, GRPC_STATUS_INTERNAL, why);
    return;
  } else if (result == 0) {
    s->missing = true; /* at its end for now; the pump decides what follows */
  } else {
    s->len += (size_t)result;
  }
  logs_pump(s);
}

/* Starts reading more of the current log (opening it first). */
static void logs_read_more(logs_stream *s) {
  int rc;
  s->req.data = s;
  if (s->fd < 0) {
    char path[PATH_MAX];
    launch_log_path(s->backend, s->run_dir, s->attempt, path, sizeof path);
    rc = uv_fs_open(s->loop, &s->req, path, O_RDONLY | O_CLOEXEC, 0, logs_fs_done);
  } else {
    if (s->pos > 0) { /* what is done goes; the partial line moves to the front */
      memmove(s->buf, s->buf + s->pos, s->len - s->pos);
      s->file_pos += s->pos;
      s->len -= s->pos;
      s->pos = 0;
    }
    uv_buf_t b = uv_buf_init(s->buf + s->len, (unsigned)(sizeof s->buf - s->len));
    rc = uv_fs_read(s->loop, &s->req, s->fd, &b, 1, (int64_t)(s->file_pos + s->len), logs_fs_done);
  }
  if (rc != 0) {
    logs_finish(s, GRPC_STATUS_INTERNAL, "cannot read the job's log");
    return;
  }
  s->fs_busy = true;
}

static void logs_on_timer(uv_timer_t *t) {
  logs_stream *s = t->data;
  s->waiting = false;
  s->missing = false;
  logs_pump(s);
}

/* The tail's counting pass has reached the end of what exists: now send, skipping all but the last. */
static void logs_begin_sending(logs_stream *s) {
  s->counting = false;
  s->skip = s->counted > s->tail ? s->counted - s->tail : 0;
  logs_seek(s, s->start_attempt, s->start_pos);
}

/* The current log has been read to its end: on to the next attempt, wait for more, or end. */
static void logs_at_end(logs_stream *s) {
  job_info info;
  int status = job_store_get_info(s->store, s->job_id, &info);
  if (status != 0) {
    logs_finish(s, status == DPOD_ENOENT ? GRPC_STATUS_NOT_FOUND : GRPC_STATUS_INTERNAL, "cannot look up the job");
    return;
  }
  uint32_t newest = launch_handle_attempt(info.launch_handle);
  uint32_t last = s->only_attempt ? s->only_attempt : newest ? newest : 1;
  /* Over: nothing more will be written to this log. It was read before that was known, so it is read
   * once more before its end is taken for the end. */
  bool over = s->attempt < newest || job_state_is_terminal(info.state);
  if (over && !s->end_seen) {
    s->end_seen = true;
    s->missing = false;
    return;
  }
  if (over && s->pos < s->len && !s->final) {
    s->final = true; /* its last line ended without a newline */
    return;
  }
  if (over && s->attempt < last) {
    logs_seek(s, s->attempt + 1, 0);
    return;
  }
  if (s->counting) {
    logs_begin_sending(s);
    return;
  }
  if (over || !s->follow) {
    logs_finish(s, GRPC_STATUS_OK, NULL);
    return;
  }
  s->live = true;
  s->waiting = true;
  uv_timer_start(&s->timer, logs_on_timer, LOGS_POLL_MS, 0);
}

/* The next entry in buf, if a whole one is there. Fills *e and returns the bytes it takes in the log. */
static size_t logs_next_entry(logs_stream *s, launch_log_entry *e) {
  const char *p = s->buf + s->pos;
  size_t avail = s->len - s->pos, line_len;
  const char *nl = memchr(p, '\n', avail);
  bool has_nl = nl && (size_t)(nl - p) <= LOGS_LINE_MAX;
  if (has_nl) line_len = (size_t)(nl - p);
  else if (avail >= LOGS_LINE_MAX) line_len = LOGS_LINE_MAX;
  else if (s->final && avail > 0) line_len = avail;
  else return 0;
  launch_log_parse(s->backend, p, line_len, e);
  if (s->cont && e->text_off == 0 && e->rank < 0) { /* the rest of a long line: no prefix of its own */
    e->rank = s->cont_rank;
    e->stream = s->cont_stream;
  }
  s->cont = !has_nl && e->consumed == line_len && line_len == LOGS_LINE_MAX;
  s->cont_rank = e->rank;
  s->cont_stream = e->stream;
  return e->consumed + (has_nl && e->consumed == line_len ? 1 : 0);
}

static void logs_sent(rpc_call *call, int ok, void *data) {
  (void)call;
  logs_stream *s = data;
  s->sending = false;
  if (!ok) {
    logs_finish(s, GRPC_STATUS_CANCELLED, NULL);
    return;
  }
  logs_pump(s);
}

static void logs_done(rpc_call *call, void *data) {
  (void)call;
  logs_stream *s = data;
  s->call = NULL;
  s->finished = true;
  if (s->waiting) uv_timer_stop(&s->timer);
  log_debug("logs of job %" PRIu64 " closed", s->job_id);
  logs_release(s);
}

/* Sends the next matching entry, or starts what brings one nearer (a read, a wait). At most one chunk
 * is parsed per call, so the loop is never held long. */
static void logs_pump(logs_stream *s) {
  for (;;) {
    if (s->finished || s->sending || s->fs_busy || s->waiting) return;
    if (rpc_call_is_over(s->call)) {
      logs_finish(s, GRPC_STATUS_CANCELLED, NULL);
      return;
    }
    launch_log_entry e;
    size_t took;
    while ((took = logs_next_entry(s, &e)) > 0) {
      size_t at = s->pos;
      s->pos += took;
      if (s->rank >= 0 && e.rank != s->rank) continue;
      if (s->counting) {
        s->counted++;
        continue;
      }
      if (s->skip) {
        s->skip--;
        continue;
      }
      memcpy(s->text, s->buf + at + e.text_off, e.text_len);
      s->text[e.text_len] = '\0';
      logs_fix_utf8(s->text, e.text_len);
      Dpod__V1__LogLine line = DPOD__V1__LOG_LINE__INIT;
      line.has_attempt = line.has_rank = line.has_offset = 1;
      line.attempt = s->attempt;
      line.rank = e.rank;
      line.stream = (char *)launch_log_stream_name(e.stream);
      line.text = s->text;
      line.offset = ((uint64_t)s->attempt << LOGS_OFFSET_BITS) | ((s->file_pos + s->pos) & LOGS_POS_MASK);
      if (s->live) {
        line.has_time_unix_ms = 1;
        line.time_unix_ms = logs_now_ms();
      }
      if (rpc_call_send(s->call, &line.base) != 0) {
        logs_finish(s, GRPC_STATUS_CANCELLED, NULL);
        return;
      }
      s->sending = true;
      return;
    }
    if (s->final) s->final = s->pos < s->len; /* the last line is sent: the end is next */
    if (!s->missing) {
      logs_read_more(s);
      return;
    }
    logs_at_end(s);
  }
}

int logs_start(uv_loop_t *loop, job_store *store, const launch_backend *backend, rpc_call *call,
               const Dpod__V1__LogsRequest *req, char *err, size_t errlen) {
  if (logs_alive_ >= LOGS_STREAMS_MAX)
    return dpod_errf(err, errlen, DPOD_ENOMEM, "%u Logs streams are open already; try again later", LOGS_STREAMS_MAX);
  Dpod__V1__Job *job = NULL;
  int status = job_store_get(store, req->job_id, &job);
  if (status == DPOD_ENOENT) return dpod_errf(err, errlen, status, "job %" PRIu64 " not found", req->job_id);
  if (status != 0) return dpod_errf(err, errlen, status, "job store: %s", job_store_last_error(store));
  job_info info;
  if ((status = job_store_get_info(store, req->job_id, &info)) != 0) {
    protobuf_c_message_free_unpacked(&job->base, NULL);
    return dpod_errf(err, errlen, status, "job store: %s", job_store_last_error(store));
  }
  uint32_t ranks = job->spec && job->spec->has_ranks ? job->spec->ranks : 1;
  uint32_t newest = launch_handle_attempt(info.launch_handle), known = newest ? newest : 1;
  int rank = req->has_rank ? req->rank : -1;
  uint32_t off_attempt = (uint32_t)(req->after_offset >> LOGS_OFFSET_BITS);
  uint64_t off_pos = req->after_offset & LOGS_POS_MASK;
  if (rank < -1 || rank >= (int)ranks)
    status = dpod_errf(err, errlen, DPOD_EINVAL, "rank %d: job %" PRIu64 " has ranks 0..%" PRIu32 " (-1: all)", rank,
                       req->job_id, ranks - 1);
  else if (req->attempt > known)
    status = dpod_errf(err, errlen, DPOD_EINVAL, "attempt %" PRIu32 ": job %" PRIu64 " has %s%" PRIu32 " so far",
                       req->attempt, req->job_id, newest ? "attempts 1.." : "no attempt, ", newest);
  else if (req->tail > LOGS_TAIL_MAX)
    status = dpod_errf(err, errlen, DPOD_EINVAL, "tail %" PRIu32 ": at most %u lines", req->tail, LOGS_TAIL_MAX);
  else if (req->after_offset && (off_attempt == 0 || off_attempt > known))
    status = dpod_errf(err, errlen, DPOD_EINVAL,
                       "offset %" PRIu64 " is no line of job %" PRIu64 " (it names attempt %" PRIu32 ")",
                       req->after_offset, req->job_id, off_attempt);
  if (status != 0) {
    protobuf_c_message_free_unpacked(&job->base, NULL);
    return status;
  }
  logs_stream *s = calloc(1, sizeof *s);
  if (!s || !(s->run_dir = strdup(job->run_dir ? job->run_dir : ""))) {
    free(s);
    protobuf_c_message_free_unpacked(&job->base, NULL);
    return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  }
  protobuf_c_message_free_unpacked(&job->base, NULL);
  logs_alive_++;
  s->call = call;
  s->loop = loop;
  s->store = store;
  s->backend = backend;
  s->job_id = req->job_id;
  s->rank = rank;
  s->only_attempt = req->attempt;
  s->follow = req->follow;
  s->tail = req->tail;
  s->counting = req->tail > 0;
  s->fd = -1;
  if (!req->after_offset) off_attempt = req->attempt ? req->attempt : 1, off_pos = 0;
  if (req->attempt && off_attempt < req->attempt) off_attempt = req->attempt, off_pos = 0;
  s->start_attempt = off_attempt;
  s->start_pos = off_pos;
  s->attempt = off_attempt;
  s->file_pos = off_pos;
  uv_timer_init(loop, &s->timer);
  s->timer.data = s;
  rpc_call_set_stream(call, logs_sent, logs_done, s);
  log_debug("logs of job %" PRIu64 " from attempt %" PRIu32 " byte %" PRIu64 "%s", s->job_id, s->attempt, off_pos,
            s->follow ? ", following" : "");
  if (req->attempt && off_attempt > req->attempt) logs_finish(s, GRPC_STATUS_OK, NULL); /* past what it asked */
  else logs_pump(s);
  return 0;
}
