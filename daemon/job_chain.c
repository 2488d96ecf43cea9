#include "job_chain.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusers_names.h"
#include "dpod_error.h"
#include "job_names.h"
#include "job_spec.h"

static const char *const chain_ref_keys[2] = {"model.weights", "model.reference_weights"};

/* The two weight fields of a spec's model, by index into chain_ref_keys. */
static char **chain_ref_field(Dpod__V1__ModelSpec *m, int i) { return i == 0 ? &m->weights : &m->reference_weights; }

/* The checkpoint of `job` a reference means: the newest (step 0) or the one of `step`; NULL if none. */
static const Dpod__V1__CheckpointInfo *chain_find_checkpoint(const Dpod__V1__Job *job, uint32_t step) {
  if (job->n_checkpoints == 0) return NULL;
  if (step == 0) return job->checkpoints[job->n_checkpoints - 1];
  for (size_t i = 0; i < job->n_checkpoints; i++)
    if (job->checkpoints[i]->step == step) return job->checkpoints[i];
  return NULL;
}

static int chain_check_ref(job_store *store, const char *key, const char *value, char *err, size_t errlen) {
  uint64_t id;
  uint32_t step;
  if (job_spec_parse_ref(value, &id, &step) != 1) return 0; /* a path (validation refused malformed ones) */
  Dpod__V1__Job *job = NULL;
  int status = job_store_get(store, id, &job);
  if (status == DPOD_ENOENT) return dpod_errf(err, errlen, DPOD_EINVAL, "%s: job %" PRIu64 " not found", key, id);
  if (status != 0)
    return dpod_errf(err, errlen, DPOD_EDB, "%s: reading job %" PRIu64 ": %s", key, id, job_store_last_error(store));
  const Dpod__V1__TrainSpec *t = job->spec->train;
  if (step > 0 && (step > t->steps || (step != t->steps && (t->checkpoint_every == 0 || step % t->checkpoint_every))))
    status = dpod_errf(err, errlen, DPOD_EINVAL,
                       "%s: job %" PRIu64 " writes no checkpoint at step %" PRIu32 " (it checkpoints %s%" PRIu32
                       " and at its last step, %" PRIu32 ")", key, id, step, t->checkpoint_every ? "every " : "",
                       t->checkpoint_every, t->steps);
  else if (job->state == DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED && !chain_find_checkpoint(job, step))
    status = step ? dpod_errf(err, errlen, DPOD_EINVAL, "%s: job %" PRIu64 " has no checkpoint at step %" PRIu32
                              " on disk any more (keep_last pruned it)", key, id, step)
                  : dpod_errf(err, errlen, DPOD_EINVAL, "%s: job %" PRIu64 " has no checkpoint on disk", key, id);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  return status;
}

int job_chain_check(job_store *store, const Dpod__V1__JobSpec *spec, char *err, size_t errlen) {
  for (size_t i = 0; i < spec->n_after; i++) {
    job_info info;
    int status = job_store_get_info(store, spec->after[i], &info);
    if (status == DPOD_ENOENT)
      return dpod_errf(err, errlen, DPOD_EINVAL, "after: job %" PRIu64 " not found", spec->after[i]);
    if (status != 0)
      return dpod_errf(err, errlen, DPOD_EDB, "after: reading job %" PRIu64 ": %s", spec->after[i],
                       job_store_last_error(store));
  }
  for (int i = 0; i < 2 && spec->model; i++) {
    int status = chain_check_ref(store, chain_ref_keys[i], *chain_ref_field(spec->model, i), err, errlen);
    if (status != 0) return status;
  }
  return 0;
}

job_chain_state job_chain_status(job_store *store, const uint64_t *deps, size_t n, char *why, size_t len) {
  job_chain_state result = JOB_CHAIN_READY;
  why[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    Dpod__V1__Job *job = NULL;
    int status = job_store_get(store, deps[i], &job);
    if (status == DPOD_ENOENT) {
      snprintf(why, len, "job %" PRIu64 ", which this job waited for, no longer exists", deps[i]);
      return JOB_CHAIN_BROKEN;
    }
    if (status != 0) { /* the store failed: keep waiting rather than fail a job for it */
      snprintf(why, len, "waiting for job %" PRIu64, deps[i]);
      return JOB_CHAIN_WAIT;
    }
    Dpod__V1__JobState s = job->state;
    if (s == DPOD__V1__JOB_STATE__JOB_STATE_FAILED || s == DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED) {
      snprintf(why, len, "job %" PRIu64 ", which this job waited for, ended %s%s%.300s", deps[i], job_state_name(s),
               job->reason && *job->reason ? ": " : "", job->reason ? job->reason : "");
      protobuf_c_message_free_unpacked(&job->base, NULL);
      return JOB_CHAIN_BROKEN;
    }
    /* Queued, running, or preempted (resumable: a restart or an undrain may still finish it). */
    if (s != DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED && result == JOB_CHAIN_READY) {
      snprintf(why, len, "waiting for job %" PRIu64, deps[i]);
      result = JOB_CHAIN_WAIT;
    }
    protobuf_c_message_free_unpacked(&job->base, NULL);
  }
  return result;
}

int job_chain_resolve(job_store *store, Dpod__V1__JobSpec *spec, char *note, size_t notelen, char *err,
                      size_t errlen) {
  note[0] = '\0';
  for (int i = 0; i < 2 && spec->model; i++) {
    char **field = chain_ref_field(spec->model, i);
    uint64_t id;
    uint32_t step;
    if (job_spec_parse_ref(*field, &id, &step) != 1) continue;
    Dpod__V1__Job *job = NULL;
    int status = job_store_get(store, id, &job);
    if (status != 0)
      return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: job %" PRIu64 " cannot be read", chain_ref_keys[i], *field, id);
    const Dpod__V1__CheckpointInfo *ck = chain_find_checkpoint(job, step);
    char path[4200];
    if (ck) snprintf(path, sizeof path, "%s/%s", ck->path, DIFFUSERS_WEIGHTS_NAME);
    protobuf_c_message_free_unpacked(&job->base, NULL);
    if (!ck)
      return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: job %" PRIu64 " has no such checkpoint on disk",
                       chain_ref_keys[i], *field, id);
    if (access(path, R_OK) != 0)
      return dpod_errf(err, errlen, DPOD_EINVAL, "%s: %s: %s is not readable", chain_ref_keys[i], *field, path);
    char *dup = strdup(path);
    if (!dup) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
    size_t used = strlen(note);
    snprintf(note + used, notelen - used, "%s%s: %s is %s", used ? "; " : "", chain_ref_keys[i], *field, path);
    free(*field); /* a reference is never the field's default, so it is owned */
    *field = dup;
  }
  return 0;
}
