/* IEEE half precision (F16) and bfloat16 (BF16) to and from float32, for the files that store them. */
#ifndef DPOD_HALF_H
#define DPOD_HALF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Round to nearest even; overflow gives infinity, NaN stays NaN. */
uint16_t dpod_f32_to_f16(float f);
/* Exact (every F16 and BF16 value is a float32). */
float dpod_f16_to_f32(uint16_t h);
float dpod_bf16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif

#endif
