/* tb_writer: TensorBoard event files for every job, written from the job's stored events.
 *
 * Each job gets RUN_DIR/tensorboard/events.out.tfevents.<unix>.<host>.<pid>, one file per dpod lifetime
 * (TensorBoard reads every file of the directory in name order). Steps, evaluations, checkpoints and
 * attempts become scalars (tb_writer.c lists the tags); each job event is one record whose Event carries
 * the event's seq (tb_event.proto's dpod_seq), so that the files hold each event exactly once across
 * restarts and kill -9: the first time a dpod touches a job it reads back the job's files, cuts off a torn
 * or corrupt tail, and goes on after the largest seq found.
 *
 * All file I/O, and the reads of the job store it needs, happen on the writer's own thread, through a
 * job store connection of its own: the loop thread only hands over job ids (tb_writer_notify takes a
 * mutex for a moment and never waits for I/O). On start the thread catches up every job in the store,
 * so that events stored while no writer was running (dpod was killed, or died between storing and
 * writing) reach the files too. A job whose files cannot be written is logged and skipped; it never
 * holds up dpod. */
#ifndef DPOD_TB_WRITER_H
#define DPOD_TB_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "dpod.pb-c.h"

typedef struct tb_writer tb_writer;

/* Starts the writer thread on the job store at db_path (STATE_DIR/dpod.db, already opened and migrated
 * by the coordinator). host names the files (NULL: gethostname()). Owned by the caller: tb_writer_stop(). */
int tb_writer_start(const char *db_path, const char *host, tb_writer **out, char *err, size_t errlen);

/* Events were appended to job `job_id`. Any thread; the signature of coord_set_event_hook(). */
void tb_writer_notify(void *w, uint64_t job_id);

/* Waits until every event notified so far (and the start-up catch-up) is written. */
void tb_writer_flush(tb_writer *w);

/* Writes what is pending, stops the thread and frees the writer. NULL is a no-op. */
void tb_writer_stop(tb_writer *w);

/* The record for one job event, framed, into buf (cap bytes): returns its length, or 0 for an event that
 * has no record (state changes, removed checkpoints) or does not fit. *step is the x axis of events that
 * have no step of their own (attempts): the latest step written, updated here. Exposed for the tests. */
size_t tb_writer_record_(const Dpod__V1__JobEvent *ev, int64_t *step, unsigned char *buf, size_t cap);

#endif
