#include "sched.h"

#include <stdlib.h>

#include "dpod_error.h"
#include "dpod_log.h"

void sched_init(sched *s, unsigned slots) {
  s->slots = slots;
  s->free_slots = slots;
  s->queued = 0;
  s->head = s->tail = NULL;
}

void sched_free(sched *s) {
  sched_entry *e = s->head;
  while (e) {
    sched_entry *next = e->next;
    free(e);
    e = next;
  }
  s->head = s->tail = NULL;
  s->queued = 0;
}

int sched_enqueue(sched *s, uint64_t job_id, unsigned ranks) {
  if (ranks == 0 || ranks > s->slots) return DPOD_EINVAL;
  sched_entry *e = malloc(sizeof *e);
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

int sched_remove(sched *s, uint64_t job_id) {
  sched_entry **link = &s->head, *prev = NULL;
  for (sched_entry *e = s->head; e; prev = e, e = e->next) {
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

uint64_t sched_next(sched *s, unsigned *ranks) {
  sched_entry *e = s->head;
  /* Strict FIFO: only the head is considered. See sched.h for why there is no backfilling. */
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

void sched_release(sched *s, unsigned ranks) {
  if (ranks > s->slots - s->free_slots) {
    /* A bookkeeping bug; clamp rather than hand out slots that do not exist. */
    log_error("sched: releasing %u slots but only %u are held", ranks, s->slots - s->free_slots);
    s->free_slots = s->slots;
    return;
  }
  s->free_slots += ranks;
}
