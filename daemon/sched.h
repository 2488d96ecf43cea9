/* sched: which queued job runs next, over a fixed number of worker slots.
 *
 * Pure bookkeeping with no I/O, so that the policy can be tested alone: the coordinator enqueues jobs,
 * asks sched_next() for the next job to launch whenever slots may have been freed, and releases a job's
 * slots when its processes have exited.
 *
 * The policy is strict FIFO: a job waits until `ranks` slots are free, and while the head of the queue
 * waits, later jobs wait too even if they would fit. That keeps large jobs from starving behind a stream
 * of small ones, at the cost of idle slots; backfilling would need run-time estimates we do not have. */
#ifndef DPOD_SCHED_H
#define DPOD_SCHED_H

#include <stddef.h>
#include <stdint.h>

typedef struct sched_entry {
  uint64_t job_id;
  unsigned ranks;
  struct sched_entry *next;
} sched_entry;

typedef struct {
  unsigned slots;      /* worker slots in total */
  unsigned free_slots; /* slots not held by a launched job */
  size_t queued;       /* jobs waiting */
  sched_entry *head, *tail;
} sched;

void sched_init(sched *s, unsigned slots);
/* Frees the queue (the jobs in it are forgotten, not cancelled). */
void sched_free(sched *s);

/* Appends a job to the queue. Returns 0, DPOD_EINVAL when ranks is 0 or above the slot count (it could
 * never run, and would block the queue forever), or DPOD_ENOMEM. */
int sched_enqueue(sched *s, uint64_t job_id, unsigned ranks);
/* Takes a job out of the queue (it was cancelled while waiting). Returns 0 or DPOD_ENOENT. */
int sched_remove(sched *s, uint64_t job_id);

/* If the head of the queue fits in the free slots, pops it, reserves its slots and returns its id
 * (with its rank count in *ranks); otherwise returns 0. Call in a loop until it returns 0. */
uint64_t sched_next(sched *s, unsigned *ranks);

/* Gives back the slots of a launched job that has ended (or failed to launch). */
void sched_release(sched *s, unsigned ranks);

#endif
