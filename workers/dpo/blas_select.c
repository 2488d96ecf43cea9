/* See blas_select.h. OpenBLAS is found through dlsym, so nothing links against it by name: with another
 * BLAS behind libblas.so.3 (the reference one, say) every function here is a no-op. */
#include "blas_select.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dpod_log.h"
#include "reexec.h"

/* The cores OpenBLAS falls back to for a CPU it does not know; none of them uses AVX2. */
static const char *const fallback_cores[] = {"prescott", "core2", "penryn", "dunnington", "nehalem",
                                             "sandybridge", "katmai", "coppermine", "northwood", "banias",
                                             "atom", "barcelona", "bobcat", "unknown"};

const char *blas_select_coretype(const char *corename, int avx2_fma, int avx512) {
  if (!corename || !avx2_fma) return NULL;
  int fallback = 0;
  for (size_t i = 0; i < sizeof fallback_cores / sizeof fallback_cores[0]; i++)
    if (strcasecmp(corename, fallback_cores[i]) == 0) fallback = 1;
  if (!fallback) return NULL;
  return avx512 ? "SkylakeX" : "Haswell";
}

typedef char *(*corename_fn)(void);

/* OpenBLAS's own report of the kernels it chose, or NULL when the BLAS is not OpenBLAS. */
static corename_fn openblas_corename(void) { return (corename_fn)dlsym(RTLD_DEFAULT, "openblas_get_corename"); }

const char *blas_select_corename(void) {
  corename_fn corename = openblas_corename();
  return corename ? corename() : "not OpenBLAS";
}

/* The kernels to ask OpenBLAS for on this CPU, or NULL (see blas_select_coretype). */
static const char *wanted_coretype(void) {
  if (getenv("OPENBLAS_CORETYPE")) return NULL;
  corename_fn corename = openblas_corename();
  if (!corename) return NULL;
  __builtin_cpu_init();
  int avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512cd");
  return blas_select_coretype(corename(), avx2_fma, avx512);
}

void blas_select_kernels(char **argv, int env_changed) {
  const char *want = wanted_coretype();
  if (!want && !env_changed) return;
  if (want) setenv("OPENBLAS_CORETYPE", want, 1);
  dpod_reexec_self(argv);
  /* Still here: run on as loaded, and say so. */
  if (want)
    log_warn("OpenBLAS chose %s kernels for this CPU and re-executing with OPENBLAS_CORETYPE=%s failed; "
             "set it in the environment for 2-3x faster training", blas_select_corename(), want);
  else
    log_warn("re-executing with the threads' wait settings failed; training goes on without them");
  if (want) unsetenv("OPENBLAS_CORETYPE");
}
