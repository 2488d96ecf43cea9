/* See thread_wait.h. */
#include "thread_wait.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


const char *thread_wait_spincount(int low_precision, const char *policy, const char *spincount, unsigned threads,
                               unsigned local_ranks, unsigned cpus) {
  if (spincount && *spincount) return NULL;
  if (policy && strcasecmp(policy, "ACTIVE") == 0) return NULL;
  if (!low_precision || threads < 2 || cpus == 0) return NULL;
  if (local_ranks == 0) local_ranks = 1;
  if ((unsigned long long)threads * local_ranks > cpus) return NULL;
  return THREAD_WAIT_SPINCOUNT;
}

/* The leading whole number of an environment variable ("2(x3)" is 2), or 0. */
static unsigned env_leading_count(const char *name) {
  const char *v = getenv(name);
  if (!v) return 0;
  unsigned long n = 0;
  for (; *v >= '0' && *v <= '9' && n < 1000000; v++) n = n * 10 + (unsigned long)(*v - '0');
  return (unsigned)n;
}

const char *thread_wait_blas_timeout(const char *timeout, unsigned threads) {
  if ((timeout && *timeout) || threads < 2) return NULL;
  return THREAD_WAIT_BLAS_TIMEOUT;
}

int thread_wait_prepare(int low_precision, unsigned threads) {
  unsigned local = env_leading_count("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!local) local = env_leading_count("SLURM_STEP_TASKS_PER_NODE");
  cpu_set_t set;
  unsigned cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? (unsigned)CPU_COUNT(&set) : 0;
  const char *spin = thread_wait_spincount(low_precision, getenv("OMP_WAIT_POLICY"), getenv("GOMP_SPINCOUNT"),
                                           threads, local, cpus);
  const char *timeout = thread_wait_blas_timeout(getenv("OPENBLAS_THREAD_TIMEOUT"), threads);
  if (spin) setenv("GOMP_SPINCOUNT", spin, 1);
  if (timeout) setenv("OPENBLAS_THREAD_TIMEOUT", timeout, 1);
  return spin || timeout;
}

const char *thread_wait_describe(void) {
  static char text[48];
  const char *spin = getenv("GOMP_SPINCOUNT"), *policy = getenv("OMP_WAIT_POLICY");
  if (spin && *spin)
    snprintf(text, sizeof text, "spin %.24s", spin);
  else if (policy && *policy)
    snprintf(text, sizeof text, "%.24s", policy);
  else
    snprintf(text, sizeof text, "libgomp's default");
  for (char *c = text; *c; c++)
    if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
  return text;
}
