#include "job_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_log.h"
#include "job_spec.h"

/* Statements prepared once at open; indexes into job_store.stmt. */
enum {
  ST_BEGIN,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_INSERT_JOB,
  ST_SET_RUN_DIR,
  ST_GET_SEQ,
  ST_INSERT_EVENT,
  ST_SET_LAST_SEQ,
  ST_SET_STATE,
  ST_SET_METRICS,
  ST_SET_CHECKPOINT,
  ST_SET_EVAL,
  ST_GET_EVENT,
  ST_GET_JOB,
  ST_GET_INFO,
  ST_SET_SECRET,
  ST_SET_CANCEL,
  ST_SET_HANDLE,
  ST_ATTEMPT_START,
  ST_ATTEMPT_END,
  ST_ATTEMPTS,
  ST_CHECKPOINT_ADD,
  ST_CHECKPOINT_DEL,
  ST_CHECKPOINTS,
  ST_SET_RESTARTS,
  ST_SET_NOT_BEFORE,
  ST_SETTING_GET,
  ST_SETTING_SET,
  ST_SET_SPEC,
  ST_COUNT_
};

static const char *const store_sql[ST_COUNT_] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_INSERT_JOB] = "INSERT INTO jobs(name, state, spec, created_ms) VALUES(?1, ?2, ?3, ?4)",
    [ST_SET_RUN_DIR] = "UPDATE jobs SET run_dir = ?2 WHERE id = ?1",
    [ST_GET_SEQ] = "SELECT last_seq, last_metrics_step, last_checkpoint_step, last_eval_step FROM jobs WHERE id = ?1",
    [ST_INSERT_EVENT] = "INSERT INTO events(job_id, seq, time_ms, payload) VALUES(?1, ?2, ?3, ?4)",
    [ST_SET_LAST_SEQ] = "UPDATE jobs SET last_seq = ?2 WHERE id = ?1",
    /* A job that re-enters the queue (?7 is QUEUED: a restart) starts with no finish time and no pending
     * cancel. */
    [ST_SET_STATE] = "UPDATE jobs SET state = ?2, reason = ?3, exit_code = ?4,"
                     " started_ms = CASE WHEN ?5 > 0 THEN ?5 ELSE started_ms END,"
                     " finished_ms = CASE WHEN ?6 > 0 THEN ?6 WHEN ?2 = ?7 THEN 0 ELSE finished_ms END,"
                     " cancel_requested = CASE WHEN ?2 = ?7 THEN 0 ELSE cancel_requested END WHERE id = ?1",
    [ST_SET_METRICS] = "UPDATE jobs SET last_metrics = ?2, last_metrics_step = ?3 WHERE id = ?1",
    [ST_SET_CHECKPOINT] = "UPDATE jobs SET last_checkpoint = ?2, last_checkpoint_step = ?3 WHERE id = ?1",
    [ST_SET_EVAL] = "UPDATE jobs SET last_eval = ?2, last_eval_step = ?3, first_eval = COALESCE(first_eval, ?2)"
                    " WHERE id = ?1",
    [ST_GET_EVENT] = "SELECT payload FROM events WHERE job_id = ?1 AND seq = ?2",
    [ST_GET_JOB] = "SELECT id, name, state, spec, created_ms, started_ms, finished_ms, reason, exit_code,"
                   " run_dir, last_metrics, last_checkpoint, last_seq, first_eval, last_eval, restarts FROM jobs WHERE id = ?1",
    [ST_GET_INFO] = "SELECT state, cancel_requested, last_seq, secret, launch_handle, restarts, not_before_ms"
                    " FROM jobs WHERE id = ?1",
    [ST_SET_SECRET] = "UPDATE jobs SET secret = ?2 WHERE id = ?1",
    [ST_SET_CANCEL] = "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1",
    [ST_SET_HANDLE] = "UPDATE jobs SET launch_handle = ?2 WHERE id = ?1",
    [ST_ATTEMPT_START] = "INSERT OR REPLACE INTO attempts(job_id, attempt, started_ms) VALUES(?1, ?2, ?3)",
    [ST_ATTEMPT_END] = "UPDATE attempts SET ended_ms = ?3, exit_code = ?4, reason = ?5, will_retry = ?6"
                       " WHERE job_id = ?1 AND attempt = ?2",
    [ST_ATTEMPTS] = "SELECT attempt, started_ms, ended_ms, exit_code, reason, will_retry FROM attempts"
                    " WHERE job_id = ?1 ORDER BY attempt",
    [ST_CHECKPOINT_ADD] = "INSERT OR REPLACE INTO checkpoints(job_id, step, info) VALUES(?1, ?2, ?3)",
    [ST_CHECKPOINT_DEL] = "DELETE FROM checkpoints WHERE job_id = ?1 AND step = ?2",
    [ST_CHECKPOINTS] = "SELECT info FROM checkpoints WHERE job_id = ?1 ORDER BY step",
    [ST_SET_RESTARTS] = "UPDATE jobs SET restarts = ?2 WHERE id = ?1",
    [ST_SET_NOT_BEFORE] = "UPDATE jobs SET not_before_ms = ?2 WHERE id = ?1",
    [ST_SETTING_GET] = "SELECT value FROM settings WHERE key = ?1",
    [ST_SETTING_SET] = "INSERT OR REPLACE INTO settings(key, value) VALUES(?1, ?2)",
    [ST_SET_SPEC] = "UPDATE jobs SET spec = ?2 WHERE id = ?1",
};

/* Version 1. The *_step columns let an append decide "already stored?" without unpacking a blob. */
static const char store_schema_v1[] =
    "CREATE TABLE jobs("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL DEFAULT '',"
    "  state INTEGER NOT NULL,"
    "  spec BLOB NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER NOT NULL DEFAULT 0,"
    "  finished_ms INTEGER NOT NULL DEFAULT 0,"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  exit_code INTEGER NOT NULL DEFAULT 0,"
    "  run_dir TEXT NOT NULL DEFAULT '',"
    "  secret TEXT NOT NULL DEFAULT '',"
    "  last_metrics BLOB,"
    "  last_metrics_step INTEGER NOT NULL DEFAULT 0,"
    "  last_checkpoint BLOB,"
    "  last_checkpoint_step INTEGER NOT NULL DEFAULT 0,"
    "  last_seq INTEGER NOT NULL DEFAULT 0,"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_by_state ON jobs(state);"
    "CREATE TABLE events("
    "  job_id INTEGER NOT NULL REFERENCES jobs(id),"
    "  seq INTEGER NOT NULL,"
    "  time_ms INTEGER NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  PRIMARY KEY(job_id, seq)) WITHOUT ROWID;";

/* Version 2: evaluations. The first one (before training) is kept apart: it is the reference's score. */
static const char store_schema_v2[] =
    "ALTER TABLE jobs ADD COLUMN first_eval BLOB;"
    "ALTER TABLE jobs ADD COLUMN last_eval BLOB;"
    "ALTER TABLE jobs ADD COLUMN last_eval_step INTEGER NOT NULL DEFAULT -1;";

/* Version 3: the session of a launched job's mpirun, for recovery after a daemon crash. */
static const char store_schema_v3[] = "ALTER TABLE jobs ADD COLUMN session_id INTEGER NOT NULL DEFAULT 0;";

/* Version 4: the session id becomes the launcher's durable handle, text that any backend can write
 * ("mpirun:sid=1234,attempt=2", "slurm:job=5678,attempt=1"). Jobs launched before carry attempt 1. */
static const char store_schema_v4[] =
    "ALTER TABLE jobs ADD COLUMN launch_handle TEXT NOT NULL DEFAULT '';"
    "UPDATE jobs SET launch_handle = 'mpirun:sid=' || session_id || ',attempt=1' WHERE session_id > 0;"
    "ALTER TABLE jobs DROP COLUMN session_id;";

/* Version 5: attempts and their outcomes, the checkpoints on disk now (added by checkpoint events,
 * removed by checkpoint_removed ones), the automatic restarts used and the backoff before the next,
 * and daemon-wide settings that must survive a restart (draining). */
static const char store_schema_v5[] =
    "ALTER TABLE jobs ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN not_before_ms INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE attempts("
    "  job_id INTEGER NOT NULL REFERENCES jobs(id),"
    "  attempt INTEGER NOT NULL,"
    "  started_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER NOT NULL DEFAULT 0,"
    "  exit_code INTEGER NOT NULL DEFAULT 0,"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  will_retry INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(job_id, attempt)) WITHOUT ROWID;"
    "CREATE TABLE checkpoints("
    "  job_id INTEGER NOT NULL REFERENCES jobs(id),"
    "  step INTEGER NOT NULL,"
    "  info BLOB NOT NULL,"
    "  PRIMARY KEY(job_id, step)) WITHOUT ROWID;"
    "INSERT INTO checkpoints(job_id, step, info)"
    "  SELECT id, last_checkpoint_step, last_checkpoint FROM jobs WHERE last_checkpoint IS NOT NULL;"
    "CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);";

struct job_store {
  sqlite3 *db;
  sqlite3_stmt *stmt[ST_COUNT_];
  char err[512];
};

static int store_fail(job_store *s, const char *what) {
  snprintf(s->err, sizeof s->err, "%s: %s", what, s->db ? sqlite3_errmsg(s->db) : "no database");
  log_error("job store: %s", s->err);
  return DPOD_EDB;
}

/* Returns the statement reset and with its bindings cleared, ready to bind. */
static sqlite3_stmt *store_stmt(job_store *s, int which) {
  sqlite3_stmt *st = s->stmt[which];
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return st;
}

/* Runs a statement that returns no rows. */
static int store_exec_stmt(job_store *s, sqlite3_stmt *st, const char *what) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : store_fail(s, what);
}

static int store_begin(job_store *s) { return store_exec_stmt(s, store_stmt(s, ST_BEGIN), "begin"); }
static int store_commit(job_store *s) { return store_exec_stmt(s, store_stmt(s, ST_COMMIT), "commit"); }
static void store_rollback(job_store *s) {
  /* Keeps the error message of the failure that caused the rollback. */
  sqlite3_stmt *st = store_stmt(s, ST_ROLLBACK);
  sqlite3_step(st);
  sqlite3_reset(st);
}

/* Packs a message into a malloc'd buffer (NULL on ENOMEM; a zero-length message gives a 1-byte buffer
 * so that NULL always means failure). */
static uint8_t *store_pack(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (buf) protobuf_c_message_pack(m, buf);
  return buf;
}

/* Brings an older schema up to JOB_STORE_SCHEMA_VERSION. Later versions add `case N:` steps here. */
static int job_store_migrate_(job_store *s, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  int version = -1;
  if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    version = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  if (version < 0) {
    snprintf(err, errlen, "reading schema version: %s", sqlite3_errmsg(s->db));
    return DPOD_EDB;
  }
  if (version > JOB_STORE_SCHEMA_VERSION) {
    snprintf(err, errlen, "database schema version %d is newer than this dpod (%d)", version,
             JOB_STORE_SCHEMA_VERSION);
    return DPOD_EUNSUPPORTED;
  }
  if (version == JOB_STORE_SCHEMA_VERSION) return 0;

  /* One transaction per version step, so a database is always at some whole version. */
  for (; version < JOB_STORE_SCHEMA_VERSION; version++) {
    char *msg = NULL;
    char sql[2048];
    const char *step = version == 0   ? store_schema_v1
                       : version == 1 ? store_schema_v2
                       : version == 2 ? store_schema_v3
                       : version == 3 ? store_schema_v4
                       : version == 4 ? store_schema_v5
                                      : NULL;
    if (!step) {
      snprintf(err, errlen, "no migration from schema version %d", version);
      return DPOD_EDB;
    }
    snprintf(sql, sizeof sql, "BEGIN; %s PRAGMA user_version = %d; COMMIT;", step, version + 1);
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
      snprintf(err, errlen, "migrating the schema to version %d: %s", version + 1, msg ? msg : sqlite3_errmsg(s->db));
      sqlite3_free(msg);
      sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
      return DPOD_EDB;
    }
  }
  return 0;
}

/* The database holds every job's secret: 0600 whatever the umask, and whatever an older dpod left
 * (SQLite gives its -wal and -shm files the database's mode, but only when it creates them). */
static int store_make_private(const char *path, char *err, size_t errlen) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 || fchmod(fd, 0600) != 0) {
    snprintf(err, errlen, "%s: cannot make it private: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return DPOD_EIO;
  }
  close(fd);
  static const char *const companions[] = {"-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof companions / sizeof companions[0]; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s%s", path, companions[i]);
    if (chmod(p, 0600) != 0 && errno != ENOENT) {
      snprintf(err, errlen, "%s: cannot make it private: %s", p, strerror(errno));
      return DPOD_EIO;
    }
  }
  return 0;
}

int job_store_open(const char *path, job_store **out, char *err, size_t errlen) {
  int status = DPOD_EDB;
  char *msg = NULL;
  *out = NULL;
  job_store *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return DPOD_ENOMEM;
  }
  if (strcmp(path, ":memory:") != 0 && (status = store_make_private(path, err, errlen)) != 0) goto fail;
  status = DPOD_EDB;
  if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      NULL) != SQLITE_OK) {
    snprintf(err, errlen, "opening %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
    goto fail;
  }
  /* WAL keeps readers (a future `dpoctl` reading the db directly, sqlite3 CLI) off the writer's back;
   * synchronous=NORMAL in WAL mode loses at most the last transactions on power loss, never consistency. */
  if (sqlite3_exec(s->db,
                   "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                   NULL, NULL, &msg) != SQLITE_OK) {
    snprintf(err, errlen, "configuring %s: %s", path, msg ? msg : sqlite3_errmsg(s->db));
    sqlite3_free(msg);
    goto fail;
  }
  sqlite3_busy_timeout(s->db, 5000);
  if ((status = job_store_migrate_(s, err, errlen)) != 0) goto fail;
  status = DPOD_EDB;
  for (int i = 0; i < ST_COUNT_; i++) {
    if (sqlite3_prepare_v3(s->db, store_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL) !=
        SQLITE_OK) {
      snprintf(err, errlen, "preparing \"%s\": %s", store_sql[i], sqlite3_errmsg(s->db));
      goto fail;
    }
  }
  *out = s;
  return 0;

fail:
  job_store_close(s);
  return status;
}

void job_store_close(job_store *s) {
  if (!s) return;
  for (int i = 0; i < ST_COUNT_; i++) sqlite3_finalize(s->stmt[i]);
  if (s->db && sqlite3_close(s->db) != SQLITE_OK) log_warn("closing the job store: %s", sqlite3_errmsg(s->db));
  free(s);
}

const char *job_store_last_error(const job_store *s) { return s->err; }

/* The body of an append; runs inside the caller's transaction. */
static int store_append_locked(job_store *s, uint64_t job_id, Dpod__V1__JobEvent *ev, int64_t now_ms,
                               uint64_t *seq_out) {
  int status = 0;
  uint8_t *buf = NULL, *sub = NULL;
  size_t len = 0, sub_len = 0;

  sqlite3_stmt *st = store_stmt(s, ST_GET_SEQ);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    sqlite3_reset(st);
    snprintf(s->err, sizeof s->err, "no job %llu", (unsigned long long)job_id);
    return DPOD_ENOENT;
  }
  if (rc != SQLITE_ROW) {
    sqlite3_reset(st);
    return store_fail(s, "reading last_seq");
  }
  uint64_t last_seq = (uint64_t)sqlite3_column_int64(st, 0);
  int64_t metrics_step = sqlite3_column_int64(st, 1);
  int64_t checkpoint_step = sqlite3_column_int64(st, 2);
  int64_t eval_step = sqlite3_column_int64(st, 3);
  sqlite3_reset(st);

  /* Reports are retried by the worker when a reply is lost, so the same step may arrive twice; steps
   * only move forward, so "this step or a later one is stored" means "already have it". */
  if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_METRICS && ev->metrics &&
      (int64_t)ev->metrics->step <= metrics_step)
    goto skipped;
  if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT && ev->checkpoint &&
      (int64_t)ev->checkpoint->step <= checkpoint_step)
    goto skipped;
  if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_EVAL && ev->eval && (int64_t)ev->eval->step <= eval_step)
    goto skipped;
  /* A removal is news only while the checkpoint is listed (it too may be reported twice). */
  if (ev->event_case == DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT_REMOVED && ev->checkpoint_removed) {
    st = store_stmt(s, ST_CHECKPOINT_DEL);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
    sqlite3_bind_int64(st, 2, ev->checkpoint_removed->step);
    if ((status = store_exec_stmt(s, st, "removing a checkpoint")) != 0) return status;
    if (sqlite3_changes(s->db) == 0) goto skipped;
  }

  uint64_t seq = last_seq + 1;
  ev->has_job_id = 1;
  ev->job_id = job_id;
  ev->has_seq = 1;
  ev->seq = seq;
  ev->has_time_unix_ms = 1;
  ev->time_unix_ms = now_ms;
  if (!(buf = store_pack(&ev->base, &len))) return DPOD_ENOMEM;

  st = store_stmt(s, ST_INSERT_EVENT);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
  sqlite3_bind_int64(st, 3, now_ms);
  sqlite3_bind_blob(st, 4, buf, (int)len, SQLITE_STATIC);
  if ((status = store_exec_stmt(s, st, "inserting an event")) != 0) goto done;

  st = store_stmt(s, ST_SET_LAST_SEQ);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
  if ((status = store_exec_stmt(s, st, "updating last_seq")) != 0) goto done;

  switch (ev->event_case) {
    case DPOD__V1__JOB_EVENT__EVENT_STATE: {
      const Dpod__V1__StateChange *sc = ev->state;
      if (!sc) break;
      st = store_stmt(s, ST_SET_STATE);
      sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
      sqlite3_bind_int(st, 2, sc->state);
      sqlite3_bind_text(st, 3, sc->reason ? sc->reason : "", -1, SQLITE_STATIC);
      sqlite3_bind_int(st, 4, sc->has_exit_code ? sc->exit_code : 0);
      sqlite3_bind_int64(st, 5, sc->state == DPOD__V1__JOB_STATE__JOB_STATE_STARTING ? now_ms : 0);
      sqlite3_bind_int64(st, 6, job_state_is_terminal(sc->state) ? now_ms : 0);
      sqlite3_bind_int(st, 7, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
      status = store_exec_stmt(s, st, "updating the job state");
      break;
    }
    case DPOD__V1__JOB_EVENT__EVENT_METRICS:
    case DPOD__V1__JOB_EVENT__EVENT_CHECKPOINT: {
      bool m = ev->event_case == DPOD__V1__JOB_EVENT__EVENT_METRICS;
      const ProtobufCMessage *msg = m ? &ev->metrics->base : &ev->checkpoint->base;
      if (!(sub = store_pack(msg, &sub_len))) {
        status = DPOD_ENOMEM;
        break;
      }
      st = store_stmt(s, m ? ST_SET_METRICS : ST_SET_CHECKPOINT);
      sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
      sqlite3_bind_blob(st, 2, sub, (int)sub_len, SQLITE_STATIC);
      sqlite3_bind_int64(st, 3, m ? ev->metrics->step : ev->checkpoint->step);
      status = store_exec_stmt(s, st, m ? "updating last_metrics" : "updating last_checkpoint");
      if (status == 0 && !m) {
        st = store_stmt(s, ST_CHECKPOINT_ADD);
        sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
        sqlite3_bind_int64(st, 2, ev->checkpoint->step);
        sqlite3_bind_blob(st, 3, sub, (int)sub_len, SQLITE_STATIC);
        status = store_exec_stmt(s, st, "listing a checkpoint");
      }
      break;
    }
    case DPOD__V1__JOB_EVENT__EVENT_ATTEMPT: {
      const Dpod__V1__AttemptInfo *a = ev->attempt;
      if (!a) break;
      bool ended = a->has_ended_unix_ms;
      st = store_stmt(s, ended ? ST_ATTEMPT_END : ST_ATTEMPT_START);
      sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
      sqlite3_bind_int64(st, 2, a->attempt);
      if (ended) {
        sqlite3_bind_int64(st, 3, a->ended_unix_ms);
        sqlite3_bind_int(st, 4, a->exit_code);
        sqlite3_bind_text(st, 5, a->reason ? a->reason : "", -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, a->will_retry ? 1 : 0);
      } else {
        sqlite3_bind_int64(st, 3, a->has_started_unix_ms ? a->started_unix_ms : now_ms);
      }
      status = store_exec_stmt(s, st, "recording an attempt");
      break;
    }
    case DPOD__V1__JOB_EVENT__EVENT_EVAL: {
      if (!(sub = store_pack(&ev->eval->base, &sub_len))) {
        status = DPOD_ENOMEM;
        break;
      }
      st = store_stmt(s, ST_SET_EVAL);
      sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
      sqlite3_bind_blob(st, 2, sub, (int)sub_len, SQLITE_STATIC);
      sqlite3_bind_int64(st, 3, ev->eval->step);
      status = store_exec_stmt(s, st, "updating last_eval");
      break;
    }
    default:
      break;
  }
  if (status == 0 && seq_out) *seq_out = seq;

done:
  /* The statements bound the buffers with SQLITE_STATIC: clear them before freeing. */
  sqlite3_clear_bindings(s->stmt[ST_INSERT_EVENT]);
  sqlite3_clear_bindings(s->stmt[ST_SET_METRICS]);
  sqlite3_clear_bindings(s->stmt[ST_SET_CHECKPOINT]);
  sqlite3_clear_bindings(s->stmt[ST_SET_EVAL]);
  sqlite3_clear_bindings(s->stmt[ST_CHECKPOINT_ADD]);
  sqlite3_clear_bindings(s->stmt[ST_ATTEMPT_END]);
  free(buf);
  free(sub);
  return status;

skipped:
  if (seq_out) *seq_out = 0;
  return 0;
}

int job_store_append(job_store *s, uint64_t job_id, Dpod__V1__JobEvent *ev, int64_t now_ms,
                     uint64_t *seq_out) {
  int status;
  if (seq_out) *seq_out = 0;
  if ((status = store_begin(s)) != 0) return status;
  if ((status = store_append_locked(s, job_id, ev, now_ms, seq_out)) != 0) {
    store_rollback(s);
    if (seq_out) *seq_out = 0;
    return status;
  }
  return store_commit(s);
}

int job_store_append_batch(job_store *s, uint64_t job_id, Dpod__V1__JobEvent *const *evs, size_t n, int64_t now_ms,
                           size_t *stored_out) {
  int status;
  size_t stored = 0;
  if (stored_out) *stored_out = 0;
  if ((status = store_begin(s)) != 0) return status;
  for (size_t i = 0; i < n; i++) {
    uint64_t seq = 0;
    if ((status = store_append_locked(s, job_id, evs[i], now_ms, &seq)) != 0) {
      store_rollback(s);
      return status;
    }
    stored += seq != 0;
  }
  if ((status = store_commit(s)) != 0) return status;
  if (stored_out) *stored_out = stored;
  return 0;
}

int job_store_append_state(job_store *s, uint64_t job_id, Dpod__V1__JobState state, const char *reason,
                           int exit_code, int64_t now_ms, uint64_t *seq_out) {
  Dpod__V1__StateChange sc = DPOD__V1__STATE_CHANGE__INIT;
  sc.has_state = 1;
  sc.state = state;
  sc.reason = (char *)(reason ? reason : "");
  if (job_state_is_terminal(state)) {
    sc.has_exit_code = 1;
    sc.exit_code = exit_code;
  }
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_STATE;
  ev.state = &sc;
  return job_store_append(s, job_id, &ev, now_ms, seq_out);
}

int job_store_create(job_store *s, const Dpod__V1__JobSpec *spec, const char *jobs_dir, int64_t now_ms,
                     uint64_t *id_out) {
  int status;
  size_t len;
  uint8_t *buf = store_pack(&spec->base, &len);
  if (!buf) return DPOD_ENOMEM;
  if ((status = store_begin(s)) != 0) goto done;

  sqlite3_stmt *st = store_stmt(s, ST_INSERT_JOB);
  sqlite3_bind_text(st, 1, spec->name ? spec->name : "", -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 2, DPOD__V1__JOB_STATE__JOB_STATE_QUEUED);
  sqlite3_bind_blob(st, 3, buf, (int)len, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, now_ms);
  status = store_exec_stmt(s, st, "inserting a job");
  sqlite3_clear_bindings(st);
  if (status != 0) goto rollback;
  uint64_t id = (uint64_t)sqlite3_last_insert_rowid(s->db);

  char run_dir[4096];
  snprintf(run_dir, sizeof run_dir, "%s/%llu", jobs_dir, (unsigned long long)id);
  st = store_stmt(s, ST_SET_RUN_DIR);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
  sqlite3_bind_text(st, 2, run_dir, -1, SQLITE_TRANSIENT);
  if ((status = store_exec_stmt(s, st, "setting run_dir")) != 0) goto rollback;

  Dpod__V1__StateChange sc = DPOD__V1__STATE_CHANGE__INIT;
  sc.has_state = 1;
  sc.state = DPOD__V1__JOB_STATE__JOB_STATE_QUEUED;
  Dpod__V1__JobEvent ev = DPOD__V1__JOB_EVENT__INIT;
  ev.event_case = DPOD__V1__JOB_EVENT__EVENT_STATE;
  ev.state = &sc;
  if ((status = store_append_locked(s, id, &ev, now_ms, NULL)) != 0) goto rollback;
  if ((status = store_commit(s)) != 0) goto done;
  *id_out = id;
  goto done;

rollback:
  store_rollback(s);
done:
  free(buf);
  return status;
}

int job_store_get_event(job_store *s, uint64_t job_id, uint64_t seq, Dpod__V1__JobEvent **out) {
  *out = NULL;
  sqlite3_stmt *st = store_stmt(s, ST_GET_EVENT);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
  int rc = sqlite3_step(st);
  int status = 0;
  if (rc == SQLITE_ROW) {
    const void *p = sqlite3_column_blob(st, 0);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    *out = dpod__v1__job_event__unpack(NULL, n, p);
    if (!*out) {
      snprintf(s->err, sizeof s->err, "event %llu/%llu does not unpack", (unsigned long long)job_id,
               (unsigned long long)seq);
      status = DPOD_EFORMAT;
    }
  } else if (rc == SQLITE_DONE) {
    status = DPOD_ENOENT;
  } else {
    status = store_fail(s, "reading an event");
  }
  sqlite3_reset(st);
  return status;
}

static char *store_column_strdup(sqlite3_stmt *st, int col) {
  const unsigned char *t = sqlite3_column_text(st, col);
  return strdup(t ? (const char *)t : "");
}

/* Builds a Job from a row of ST_GET_JOB's column layout. Every pointer is malloc'd, so the result is
 * freed like an unpacked message. */
static Dpod__V1__Job *store_row_to_job(sqlite3_stmt *st) {
  Dpod__V1__Job *j = malloc(sizeof *j);
  if (!j) return NULL;
  dpod__v1__job__init(j);
  j->has_id = 1;
  j->id = (uint64_t)sqlite3_column_int64(st, 0);
  j->name = store_column_strdup(st, 1);
  j->has_state = 1;
  j->state = (Dpod__V1__JobState)sqlite3_column_int(st, 2);
  j->spec = dpod__v1__job_spec__unpack(NULL, (size_t)sqlite3_column_bytes(st, 3), sqlite3_column_blob(st, 3));
  /* Specs stored by older dpods hold only what their client set: every reader sees the defaults too. */
  if (j->spec && job_spec_normalize(j->spec) != 0) {
    protobuf_c_message_free_unpacked(&j->base, NULL);
    return NULL;
  }
  j->has_created_unix_ms = 1;
  j->created_unix_ms = sqlite3_column_int64(st, 4);
  j->has_started_unix_ms = sqlite3_column_int64(st, 5) > 0;
  j->started_unix_ms = sqlite3_column_int64(st, 5);
  j->has_finished_unix_ms = sqlite3_column_int64(st, 6) > 0;
  j->finished_unix_ms = sqlite3_column_int64(st, 6);
  j->reason = store_column_strdup(st, 7);
  j->has_exit_code = job_state_is_terminal(j->state);
  j->exit_code = sqlite3_column_int(st, 8);
  j->run_dir = store_column_strdup(st, 9);
  if (sqlite3_column_type(st, 10) == SQLITE_BLOB)
    j->last_metrics = dpod__v1__step_metrics__unpack(NULL, (size_t)sqlite3_column_bytes(st, 10),
                                                     sqlite3_column_blob(st, 10));
  if (sqlite3_column_type(st, 11) == SQLITE_BLOB)
    j->last_checkpoint = dpod__v1__checkpoint_info__unpack(NULL, (size_t)sqlite3_column_bytes(st, 11),
                                                           sqlite3_column_blob(st, 11));
  j->has_last_seq = 1;
  j->last_seq = (uint64_t)sqlite3_column_int64(st, 12);
  if (sqlite3_column_type(st, 13) == SQLITE_BLOB)
    j->first_eval = dpod__v1__eval_metrics__unpack(NULL, (size_t)sqlite3_column_bytes(st, 13),
                                                   sqlite3_column_blob(st, 13));
  if (sqlite3_column_type(st, 14) == SQLITE_BLOB)
    j->last_eval = dpod__v1__eval_metrics__unpack(NULL, (size_t)sqlite3_column_bytes(st, 14),
                                                  sqlite3_column_blob(st, 14));
  j->has_restarts = 1;
  j->restarts = (uint32_t)sqlite3_column_int64(st, 15);
  if (!j->name || !j->reason || !j->run_dir || !j->spec) {
    protobuf_c_message_free_unpacked(&j->base, NULL);
    return NULL;
  }
  return j;
}

/* Appends one element to a protobuf-c repeated field of pointers. Returns 0 or DPOD_ENOMEM. */
static int store_push_(void ***arr, size_t *n, void *elem) {
  void **grown = realloc(*arr, (*n + 1) * sizeof *grown);
  if (!grown) return DPOD_ENOMEM;
  grown[(*n)++] = elem;
  *arr = grown;
  return 0;
}

/* The job's attempts and listed checkpoints, from their tables. */
static int store_fill_lists_(job_store *s, Dpod__V1__Job *j) {
  int status = 0, rc;
  sqlite3_stmt *st = store_stmt(s, ST_ATTEMPTS);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->id);
  while (status == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    Dpod__V1__AttemptInfo *a = malloc(sizeof *a);
    if (!a) {
      status = DPOD_ENOMEM;
      break;
    }
    dpod__v1__attempt_info__init(a);
    a->has_attempt = a->has_started_unix_ms = 1;
    a->attempt = (uint32_t)sqlite3_column_int64(st, 0);
    a->started_unix_ms = sqlite3_column_int64(st, 1);
    if (sqlite3_column_int64(st, 2) > 0) {
      a->has_ended_unix_ms = a->has_exit_code = a->has_will_retry = 1;
      a->ended_unix_ms = sqlite3_column_int64(st, 2);
      a->exit_code = sqlite3_column_int(st, 3);
      a->will_retry = sqlite3_column_int(st, 5) != 0;
    }
    a->reason = store_column_strdup(st, 4);
    if (!a->reason || store_push_((void ***)&j->attempts, &j->n_attempts, a) != 0) {
      protobuf_c_message_free_unpacked(&a->base, NULL);
      status = DPOD_ENOMEM;
    }
  }
  sqlite3_reset(st);
  st = store_stmt(s, ST_CHECKPOINTS);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->id);
  while (status == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    Dpod__V1__CheckpointInfo *c =
        dpod__v1__checkpoint_info__unpack(NULL, (size_t)sqlite3_column_bytes(st, 0), sqlite3_column_blob(st, 0));
    if (!c || store_push_((void ***)&j->checkpoints, &j->n_checkpoints, c) != 0) {
      if (c) protobuf_c_message_free_unpacked(&c->base, NULL);
      status = DPOD_ENOMEM;
    }
  }
  sqlite3_reset(st);
  return status;
}

int job_store_get(job_store *s, uint64_t job_id, Dpod__V1__Job **out) {
  *out = NULL;
  sqlite3_stmt *st = store_stmt(s, ST_GET_JOB);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  int rc = sqlite3_step(st), status = 0;
  Dpod__V1__Job *j = NULL;
  if (rc == SQLITE_ROW) {
    if (!(j = store_row_to_job(st))) status = DPOD_ENOMEM;
  } else if (rc == SQLITE_DONE) {
    status = DPOD_ENOENT;
  } else {
    status = store_fail(s, "reading a job");
  }
  sqlite3_reset(st);
  if (status == 0 && (status = store_fill_lists_(s, j)) != 0) {
    protobuf_c_message_free_unpacked(&j->base, NULL);
    j = NULL;
  }
  *out = j;
  return status;
}

int job_store_get_info(job_store *s, uint64_t job_id, job_info *out) {
  memset(out, 0, sizeof *out);
  sqlite3_stmt *st = store_stmt(s, ST_GET_INFO);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  int rc = sqlite3_step(st), status = 0;
  if (rc == SQLITE_ROW) {
    out->id = job_id;
    out->state = (Dpod__V1__JobState)sqlite3_column_int(st, 0);
    out->cancel_requested = sqlite3_column_int(st, 1) != 0;
    out->last_seq = (uint64_t)sqlite3_column_int64(st, 2);
    const unsigned char *secret = sqlite3_column_text(st, 3);
    snprintf(out->secret, sizeof out->secret, "%s", secret ? (const char *)secret : "");
    const unsigned char *handle = sqlite3_column_text(st, 4);
    snprintf(out->launch_handle, sizeof out->launch_handle, "%s", handle ? (const char *)handle : "");
    out->restarts = (uint32_t)sqlite3_column_int64(st, 5);
    out->not_before_ms = sqlite3_column_int64(st, 6);
  } else if (rc == SQLITE_DONE) {
    status = DPOD_ENOENT;
  } else {
    status = store_fail(s, "reading a job");
  }
  sqlite3_reset(st);
  return status;
}

void job_store_free_jobs(Dpod__V1__Job **jobs, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (jobs[i]) protobuf_c_message_free_unpacked(&jobs[i]->base, NULL);
  free(jobs);
}

int job_store_list(job_store *s, const Dpod__V1__JobState *states, size_t n_states, uint32_t limit,
                   bool oldest_first, Dpod__V1__Job ***out, size_t *n) {
  /* The states travel as one bound bit mask, however many a request names (a state number beyond the
   * mask is none that is ever stored, so it matches nothing, as it should). */
  int64_t mask = 0;
  for (size_t i = 0; i < n_states; i++)
    if (states[i] >= 0 && states[i] < 63) mask |= (int64_t)1 << states[i];
  char sql[512];
  int off = snprintf(sql, sizeof sql,
                     "SELECT id, name, state, spec, created_ms, started_ms, finished_ms, reason, exit_code,"
                     " run_dir, last_metrics, last_checkpoint, last_seq, first_eval, last_eval, restarts FROM jobs%s",
                     n_states ? " WHERE ((?1 >> state) & 1) = 1" : "");
  off += snprintf(sql + off, sizeof sql - off, " ORDER BY id %s", oldest_first ? "ASC" : "DESC");
  if (limit) snprintf(sql + off, sizeof sql - off, " LIMIT %u", limit);

  *out = NULL;
  *n = 0;
  sqlite3_stmt *st = NULL;
  Dpod__V1__Job **jobs = NULL;
  size_t count = 0, cap = 0;
  int status = 0;
  if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return store_fail(s, "listing jobs");
  if (n_states) sqlite3_bind_int64(st, 1, mask);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (count == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      Dpod__V1__Job **grown = realloc(jobs, ncap * sizeof *grown);
      if (!grown) {
        status = DPOD_ENOMEM;
        goto fail;
      }
      jobs = grown;
      cap = ncap;
    }
    if (!(jobs[count] = store_row_to_job(st))) {
      status = DPOD_ENOMEM;
      goto fail;
    }
    count++;
  }
  if (rc != SQLITE_DONE) {
    status = store_fail(s, "listing jobs");
    goto fail;
  }
  sqlite3_finalize(st);
  *out = jobs;
  *n = count;
  return 0;

fail:
  sqlite3_finalize(st);
  job_store_free_jobs(jobs, count);
  return status;
}

int job_store_set_secret(job_store *s, uint64_t job_id, const char *secret) {
  sqlite3_stmt *st = store_stmt(s, ST_SET_SECRET);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_text(st, 2, secret, -1, SQLITE_TRANSIENT);
  return store_exec_stmt(s, st, "storing the job secret");
}

int job_store_set_launch_handle(job_store *s, uint64_t job_id, const char *handle) {
  if (strlen(handle) >= JOB_STORE_HANDLE_MAX) {
    snprintf(s->err, sizeof s->err, "launch handle longer than %d bytes", JOB_STORE_HANDLE_MAX - 1);
    return DPOD_EINVAL;
  }
  sqlite3_stmt *st = store_stmt(s, ST_SET_HANDLE);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_text(st, 2, handle, -1, SQLITE_STATIC);
  return store_exec_stmt(s, st, "storing the job's launch handle");
}

int job_store_set_restarts(job_store *s, uint64_t job_id, uint32_t restarts) {
  sqlite3_stmt *st = store_stmt(s, ST_SET_RESTARTS);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_int64(st, 2, restarts);
  return store_exec_stmt(s, st, "storing the restart count");
}

int job_store_set_not_before(job_store *s, uint64_t job_id, int64_t not_before_ms) {
  sqlite3_stmt *st = store_stmt(s, ST_SET_NOT_BEFORE);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_int64(st, 2, not_before_ms);
  return store_exec_stmt(s, st, "storing the restart backoff");
}

int job_store_set_spec(job_store *s, uint64_t job_id, const Dpod__V1__JobSpec *spec) {
  size_t len;
  uint8_t *buf = store_pack(&spec->base, &len);
  if (!buf) return DPOD_ENOMEM;
  sqlite3_stmt *st = store_stmt(s, ST_SET_SPEC);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  sqlite3_bind_blob(st, 2, buf, (int)len, SQLITE_STATIC);
  int status = store_exec_stmt(s, st, "storing the spec");
  free(buf);
  return status;
}

int job_store_get_setting(job_store *s, const char *key, char *buf, size_t len) {
  sqlite3_stmt *st = store_stmt(s, ST_SETTING_GET);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st), status = DPOD_ENOENT;
  if (rc == SQLITE_ROW) {
    const unsigned char *v = sqlite3_column_text(st, 0);
    snprintf(buf, len, "%s", v ? (const char *)v : "");
    status = 0;
  } else if (rc != SQLITE_DONE) {
    status = store_fail(s, "reading a setting");
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return status;
}

int job_store_set_setting(job_store *s, const char *key, const char *value) {
  sqlite3_stmt *st = store_stmt(s, ST_SETTING_SET);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
  int status = store_exec_stmt(s, st, "storing a setting");
  sqlite3_clear_bindings(st);
  return status;
}

int job_store_set_cancel_requested(job_store *s, uint64_t job_id) {
  sqlite3_stmt *st = store_stmt(s, ST_SET_CANCEL);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
  return store_exec_stmt(s, st, "storing the cancel request");
}

int job_store_delete(job_store *s, uint64_t job_id) {
  static const char *const tables[] = {"events", "attempts", "checkpoints"};
  int status = store_begin(s);
  if (status) return status;
  char sql[128];
  for (size_t i = 0; i <= sizeof tables / sizeof tables[0] && status == 0; i++) {
    if (i < sizeof tables / sizeof tables[0])
      snprintf(sql, sizeof sql, "DELETE FROM %s WHERE job_id = ?1", tables[i]);
    else
      snprintf(sql, sizeof sql, "DELETE FROM jobs WHERE id = ?1");
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
      status = store_fail(s, "preparing a delete");
      break;
    }
    sqlite3_bind_int64(st, 1, (sqlite3_int64)job_id);
    status = sqlite3_step(st) == SQLITE_DONE ? 0 : store_fail(s, "deleting a job");
    sqlite3_finalize(st);
    if (status == 0 && i == sizeof tables / sizeof tables[0] && sqlite3_changes(s->db) == 0) {
      snprintf(s->err, sizeof s->err, "no job %llu", (unsigned long long)job_id);
      status = DPOD_ENOENT;
    }
  }
  if (status) {
    store_rollback(s);
    return status;
  }
  return store_commit(s);
}
