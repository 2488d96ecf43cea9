#include "job_names.h"

#include <stddef.h>

#include "dpod_error.h"
#include "pb_walk.h"

const char *job_state_name(Dpod__V1__JobState s) {
  switch (s) {
    case DPOD__V1__JOB_STATE__JOB_STATE_UNSPECIFIED: return "unspecified";
    case DPOD__V1__JOB_STATE__JOB_STATE_QUEUED: return "queued";
    case DPOD__V1__JOB_STATE__JOB_STATE_STARTING: return "starting";
    case DPOD__V1__JOB_STATE__JOB_STATE_RUNNING: return "running";
    case DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED: return "succeeded";
    case DPOD__V1__JOB_STATE__JOB_STATE_FAILED: return "failed";
    case DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED: return "cancelled";
    case DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED: return "preempted";
    default: return "unknown";
  }
}

const char *objective_name(Dpod__V1__Objective o) {
  switch (o) {
    case DPOD__V1__OBJECTIVE__OBJECTIVE_DPO: return "dpo";
    case DPOD__V1__OBJECTIVE__OBJECTIVE_SFT: return "sft";
    default: return "unknown";
  }
}

int job_state_parse(const char *text, Dpod__V1__JobState *out) {
  int v;
  if (!text || pb_enum_parse(&dpod__v1__job_state__descriptor, text, &v) != 0) return DPOD_EINVAL;
  *out = (Dpod__V1__JobState)v;
  return 0;
}

bool job_state_is_terminal(Dpod__V1__JobState s) {
  return s == DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED || s == DPOD__V1__JOB_STATE__JOB_STATE_FAILED ||
         s == DPOD__V1__JOB_STATE__JOB_STATE_CANCELLED || s == DPOD__V1__JOB_STATE__JOB_STATE_PREEMPTED;
}
