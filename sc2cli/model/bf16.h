/* bf16 <-> fp32 for sc2's C kernels (int4_vnni.c, int8_vnni.c, bf16_gemv.c, attention_one.c): the top half
   of an fp32, rounded to nearest even on the way down, as PyTorch rounds; and 16 activations, bf16 or fp32,
   loaded as fp32. */

#ifndef SC2_BF16_H
#define SC2_BF16_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

#ifdef __AVX512F__
static inline __m512 load16(const void *x, int x_is_bf16, int k) { /* x[k..k+15] as fp32 */
    if (x_is_bf16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + k));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)x + k);
}
#endif

#endif
