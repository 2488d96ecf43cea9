/* The names of job states and objectives as dpod prints them and job files spell them, and which states
 * end a job. */
#ifndef DPOD_JOB_NAMES_H
#define DPOD_JOB_NAMES_H

#include <stdbool.h>

#include "dpod.pb-c.h"

/* Short lower-case names: "queued", "running", ... and "dpo"/"sft". Static storage. */
const char *job_state_name(Dpod__V1__JobState s);
const char *objective_name(Dpod__V1__Objective o);

/* Parses "running" or "JOB_STATE_RUNNING" (any case). Returns 0 or DPOD_EINVAL. */
int job_state_parse(const char *text, Dpod__V1__JobState *out);

/* SUCCEEDED, FAILED, CANCELLED and PREEMPTED: the job's processes are gone and it waits for nothing. */
bool job_state_is_terminal(Dpod__V1__JobState s);

#endif
