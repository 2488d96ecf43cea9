/* job_chain: jobs that wait for other jobs (JobSpec.after) and start from their checkpoints
 * (model.weights: job:ID or job:ID@step-N).
 *
 * The coordinator keeps the waiting jobs out of the queue and asks job_chain_status() whenever a job
 * ends; these functions only read the job store (and, to resolve a reference, the file system), so
 * that the rules can be read, and tested, apart from the queue. */
#ifndef DPOD_JOB_CHAIN_H
#define DPOD_JOB_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#include "dpod.pb-c.h"
#include "job_store.h"

/* At submission: every job in `after` exists (so none is this job or a later one), and every weight
 * reference names an existing job and, with @step-N, a step at which that job writes a checkpoint (and,
 * once it has succeeded, still has one). DPOD_EINVAL with err naming the field and the job otherwise. */
int job_chain_check(job_store *store, const Dpod__V1__JobSpec *spec, char *err, size_t errlen);

typedef enum {
  JOB_CHAIN_READY = 0,  /* every job it waits for succeeded */
  JOB_CHAIN_WAIT = 1,   /* some have not ended yet; why: "waiting for job 3" */
  JOB_CHAIN_BROKEN = 2, /* one failed, was cancelled or is gone; why names it and how it ended */
} job_chain_state;

/* Where a job waiting for `deps` stands, with why in words (for the job's reason). */
job_chain_state job_chain_status(job_store *store, const uint64_t *deps, size_t n, char *why, size_t len);

/* When the job starts: replaces each job:... reference in `spec` by the absolute path of that
 * checkpoint's weights, checked to exist. `note` receives what was resolved ("model.weights: job:1 is
 * /.../diffusion_pytorch_model.safetensors"; empty when nothing was). Returns 0, or a status with err
 * saying which reference could not be resolved and why. */
int job_chain_resolve(job_store *store, Dpod__V1__JobSpec *spec, char *note, size_t notelen, char *err,
                      size_t errlen);

#endif
