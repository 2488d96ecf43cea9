/* OpenBLAS picks its sgemm kernels once, when it is loaded, from the CPU's model number. A CPU newer
 * than the OpenBLAS build (Debian 12 ships 0.3.21; Sapphire and Emerald Rapids are newer) is "unknown"
 * and gets the SSE3 Prescott kernels: on such a machine every convolution and attention matmul runs 2-3x
 * slower than the CPU allows. blas_select_kernels() notices that and re-executes the program with
 * OPENBLAS_CORETYPE naming the right kernels (SkylakeX for AVX-512, Haswell for AVX2+FMA).
 *
 * Call it early in main(), before MPI_Init or any thread: on success it does not return (the
 * process image is replaced, same pid, same arguments). It returns, doing nothing, when the variable is
 * already set (the user's choice wins: OPENBLAS_CORETYPE=Prescott turns this off), when the BLAS is not
 * OpenBLAS, when OpenBLAS recognised the CPU, or when the CPU has no AVX2. */
#ifndef DPOD_BLAS_SELECT_H
#define DPOD_BLAS_SELECT_H

/* The kernels to ask for, or NULL to leave OpenBLAS alone: `corename` is what OpenBLAS chose (NULL if
 * the BLAS is not OpenBLAS); `avx2_fma` and `avx512` say what the CPU and OS support. Pure, for tests. */
const char *blas_select_coretype(const char *corename, int avx2_fma, int avx512);

/* argv as main() received it; `env_changed` 1 when the caller has changed settings a library reads as it
 * loads (thread_wait_prepare), so that the one re-exec carries them too. Returns only if nothing needed
 * to change or the re-exec failed. */
void blas_select_kernels(char **argv, int env_changed);

/* The kernels OpenBLAS is using ("SkylakeX"), or "not OpenBLAS". Pointer valid for the process. */
const char *blas_select_corename(void);

#endif
