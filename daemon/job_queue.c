#include "job_queue.h"

#include <stdlib.h>

#include "dpod_error.h"
#include "dpod_log.h"

void job_queue_init(job_queue *s, unsigned slots) {
  s->slots = slots;
  s->free_slots = slots;
  s->queued = 0;
  s->head = s->tail = NULL;
}

void job_queue_free(job_queue *s) {
  job_queue_entry *e = s->head;
  while (e) {
    job_queue_entry *next = e->next;
    free(e);
    e = next;
  }
  s->head = s->tail = NULL;
  s->queued = 0;
}

int job_queue_enqueue(job_queue *s, uint64_t job_id, unsigned ranks) {
  if (ranks == 0 || ranks > s->slots) return DPOD_EINVAL;
  job_queue_entry *e = malloc(sizeof *e);
  if (!e) return DPOD_ENOMEM;
  e->job_id = job_id;
  e->ranks = ranks;
  e->next = NULL;
  if (s->tail)
    s->tail->next = e;
  else
    s->head = e;
  s->tail = e;
  s->queued++;
  return 0;
}

int job_queue_remove(job_queue *s, uint64_t job_id) {
  job_queue_entry **link = &s->head, *prev = NULL;
  for (job_queue_entry *e = s->head; e; prev = e, e = e->next) {
    if (e->job_id != job_id) {
      link = &e->next;
      continue;
    }
    *link = e->next;
    if (s->tail == e) s->tail = prev;
    free(e);
    s->queued--;
    return 0;
  }
  return DPOD_ENOENT;
}

uint64_t job_queue_next(job_queue *s, unsigned *ranks) {
  job_queue_entry *e = s->head;
  /* Strict FIFO: only the head is considered. See job_queue.h for why there is no backfilling. */
  if (!e || e->ranks > s->free_slots) return 0;
  s->head = e->next;
  if (!s->head) s->tail = NULL;
  s->queued--;
  s->free_slots -= e->ranks;
  uint64_t id = e->job_id;
  if (ranks) *ranks = e->ranks;
  free(e);
  return id;
}

int job_queue_hold(job_queue *s, unsigned ranks) {
  if (ranks > s->free_slots) return DPOD_ESTATE;
  s->free_slots -= ranks;
  return 0;
}

void job_queue_release(job_queue *s, unsigned ranks) {
  if (ranks > s->slots - s->free_slots) {
    /* A bookkeeping bug; clamp rather than hand out slots that do not exist. */
    log_error("job queue: releasing %u slots but only %u are held", ranks, s->slots - s->free_slots);
    s->free_slots = s->slots;
    return;
  }
  s->free_slots += ranks;
}
