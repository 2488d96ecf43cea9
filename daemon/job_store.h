/* job_store: the daemon's durable state in SQLite (STATE_DIR/dpod.db).
 *
 * Two tables: `jobs` (one row per job, the columns of dpod.v1.Job plus the secret and the cancel flag)
 * and `events` (every JobEvent of every job, keyed by (job_id, seq)). The events table is the source of
 * truth for WatchJob; `jobs` is a summary kept in step with it: every append runs in one transaction
 * that takes the next seq, inserts the event and updates the summary columns it implies.
 *
 * The store is used from the loop thread only; statements are prepared once and kept open. The schema
 * carries a version in `PRAGMA user_version` so that later work (resume from checkpoints) can extend it
 * with ALTER TABLE steps in job_store_migrate_(). */
#ifndef DPOD_JOB_STORE_H
#define DPOD_JOB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dpod.pb-c.h"
#include "dpod_paths.h"
#include "job_names.h"

#define JOB_STORE_SCHEMA_VERSION 5
#define JOB_STORE_HANDLE_MAX 128 /* longest launch handle, NUL included (LAUNCH_HANDLE_MAX) */

typedef struct job_store job_store;

/* What the Report path and the launcher need about a job, without unpacking its spec. */
typedef struct {
  uint64_t id;
  Dpod__V1__JobState state;
  bool cancel_requested;
  uint64_t last_seq;
  char secret[JOB_SECRET_HEX_LEN + 1]; /* "" until the job is launched */
  char launch_handle[JOB_STORE_HANDLE_MAX]; /* the newest attempt's launch handle; "" until launched */
  uint32_t restarts;                   /* automatic restarts used since the last manual restart */
  int64_t not_before_ms;               /* a restarted job waits in its backoff until then; 0: none */
} job_info;

/* Opens (creating if needed) the database at `path`: WAL, synchronous=NORMAL, a busy timeout, schema
 * created or migrated. On failure returns DPOD_EDB (or DPOD_EUNSUPPORTED for a database written by a
 * newer dpod) and writes why into err. The handle is owned by the caller: job_store_close(). */
int job_store_open(const char *path, job_store **out, char *err, size_t errlen);
void job_store_close(job_store *s);
/* The message of the last failed call on this handle; valid until the next call. */
const char *job_store_last_error(const job_store *s);

/* Creates a QUEUED job from a normalized spec and appends its first event (seq 1, state QUEUED), in one
 * transaction. run_dir is set to "<jobs_dir>/<id>". `now_ms` is Unix time in milliseconds. */
int job_store_create(job_store *s, const Dpod__V1__JobSpec *spec, const char *jobs_dir, int64_t now_ms,
                     uint64_t *id_out);

/* Appends `ev` to the job's events with the next seq, and updates the summary columns:
 *   state      -> state, reason, exit_code; started_ms on STARTING, finished_ms on terminal states;
 *   metrics    -> last_metrics; skipped when a metrics event of that step or a later one is stored;
 *   checkpoint -> last_checkpoint and the listed checkpoints; skipped likewise by step (a retried Report
 *                 must not duplicate);
 *   checkpoint_removed -> no longer listed; skipped when it was not listed;
 *   attempt    -> the attempts table (started, or ended with its outcome).
 * ev->job_id, ev->seq and ev->time_unix_ms are filled in here (ev is modified; it stays owned by the
 * caller). *seq_out (may be NULL) receives the new seq, or 0 when the event was skipped as a duplicate.
 * Returns DPOD_ENOENT for an unknown job. */
int job_store_append(job_store *s, uint64_t job_id, Dpod__V1__JobEvent *ev, int64_t now_ms,
                     uint64_t *seq_out);

/* Appends events in one transaction (a worker's report): all of them or none. *stored_out (may be NULL)
 * receives how many were new (not duplicates). Events are modified as by job_store_append(). */
int job_store_append_batch(job_store *s, uint64_t job_id, Dpod__V1__JobEvent *const *evs, size_t n, int64_t now_ms,
                           size_t *stored_out);

/* Convenience: appends a state change (reason may be NULL; exit_code is stored as given). */
int job_store_append_state(job_store *s, uint64_t job_id, Dpod__V1__JobState state, const char *reason,
                           int exit_code, int64_t now_ms, uint64_t *seq_out);

/* The event of `job_id` with sequence number `seq`. Returns DPOD_ENOENT when there is none (yet).
 * *out is owned by the caller: protobuf_c_message_free_unpacked(&(*out)->base, NULL). */
int job_store_get_event(job_store *s, uint64_t job_id, uint64_t seq, Dpod__V1__JobEvent **out);

/* The full Job message (normalized spec, last metrics and checkpoint, last_seq, run_dir).
 * Returns DPOD_ENOENT for an unknown job. Free with protobuf_c_message_free_unpacked(&(*out)->base, NULL). */
int job_store_get(job_store *s, uint64_t job_id, Dpod__V1__Job **out);

/* The small per-job facts, cheaply. Returns DPOD_ENOENT for an unknown job. */
int job_store_get_info(job_store *s, uint64_t job_id, job_info *out);

/* Jobs in any of `states` (n_states 0: all), ordered by id, newest first unless `oldest_first`;
 * at most `limit` of them (0: no limit). *out is a malloc'd array of *n messages; free it with
 * job_store_free_jobs(). */
int job_store_list(job_store *s, const Dpod__V1__JobState *states, size_t n_states, uint32_t limit,
                   bool oldest_first, Dpod__V1__Job ***out, size_t *n);
void job_store_free_jobs(Dpod__V1__Job **jobs, size_t n);

/* Removes the job's row, events, attempts and checkpoints, in one transaction (the caller checks that
 * the job has ended). DPOD_ENOENT for an unknown job. */
int job_store_delete(job_store *s, uint64_t job_id);

/* Stores the job's secret (set when it is launched). */
int job_store_set_secret(job_store *s, uint64_t job_id, const char *secret);
/* Stores the launch handle of the job's newest attempt (daemon/launch/launch.h), so that a dpod
 * restarted after a crash can find what it was running. DPOD_EINVAL if longer than the column allows. */
int job_store_set_launch_handle(job_store *s, uint64_t job_id, const char *handle);
/* The automatic restarts a job has used, and the time before which it must not start again. */
int job_store_set_restarts(job_store *s, uint64_t job_id, uint32_t restarts);
int job_store_set_not_before(job_store *s, uint64_t job_id, int64_t not_before_ms);

/* Replaces the job's stored spec (dpod resolved its checkpoint references when it started). */
int job_store_set_spec(job_store *s, uint64_t job_id, const Dpod__V1__JobSpec *spec);

/* Daemon-wide settings that outlive a restart ("draining"). get: DPOD_ENOENT when unset. */
int job_store_get_setting(job_store *s, const char *key, char *buf, size_t len);
int job_store_set_setting(job_store *s, const char *key, const char *value);

/* Persists the cancel request of a STARTING/RUNNING job. */
int job_store_set_cancel_requested(job_store *s, uint64_t job_id);


#endif
