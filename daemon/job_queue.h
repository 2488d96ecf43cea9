/* job_queue: which queued job runs next, over a fixed number of worker slots.
 *
 * Pure bookkeeping with no I/O, so that the policy can be tested alone: the coordinator enqueues jobs,
 * asks job_queue_next() for the next job to launch whenever slots may have been freed, and releases a job's
 * slots when its processes have exited.
 *
 * The policy is strict FIFO: a job waits until `ranks` slots are free, and while the head of the queue
 * waits, later jobs wait too even if they would fit. That keeps large jobs from starving behind a stream
 * of small ones, at the cost of idle slots; backfilling would need run-time estimates we do not have. */
#ifndef DPOD_JOB_QUEUE_H
#define DPOD_JOB_QUEUE_H

#include <stddef.h>
#include <stdint.h>

typedef struct job_queue_entry {
  uint64_t job_id;
  unsigned ranks;
  struct job_queue_entry *next;
} job_queue_entry;

typedef struct {
  unsigned slots;      /* worker slots in total */
  unsigned free_slots; /* slots not held by a launched job */
  size_t queued;       /* jobs waiting */
  job_queue_entry *head, *tail;
} job_queue;

void job_queue_init(job_queue *s, unsigned slots);
/* Frees the queue (the jobs in it are forgotten, not cancelled). */
void job_queue_free(job_queue *s);

/* Appends a job to the queue. Returns 0, DPOD_EINVAL when ranks is 0 or above the slot count (it could
 * never run, and would block the queue forever), or DPOD_ENOMEM. */
int job_queue_enqueue(job_queue *s, uint64_t job_id, unsigned ranks);
/* Takes a job out of the queue (it was cancelled while waiting). Returns 0 or DPOD_ENOENT. */
int job_queue_remove(job_queue *s, uint64_t job_id);

/* If the head of the queue fits in the free slots, pops it, reserves its slots and returns its id
 * (with its rank count in *ranks); otherwise returns 0. Call in a loop until it returns 0. */
uint64_t job_queue_next(job_queue *s, unsigned *ranks);

/* Reserves the slots of a job that is already running (adopted after a daemon restart), before the
 * queue hands any out. Returns 0, or DPOD_ESTATE when fewer are free (the daemon now has fewer slots
 * than the one that launched it): then nothing is reserved. */
int job_queue_hold(job_queue *s, unsigned ranks);

/* Gives back the slots of a launched job that has ended (or failed to launch). */
void job_queue_release(job_queue *s, unsigned ranks);

#endif
