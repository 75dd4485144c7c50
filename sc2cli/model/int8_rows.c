/* Around the prompt paths' int8 products (torch._int_mm; int8.py's `rounded_product`, dequant.py's
   `int8_product`): each row of activations rounded to int8, and the int32 products scaled back and rounded
   to the model's dtype, each in one pass where PyTorch takes three or four (a 512 x 12288 prompt block:
   ~9 ms of conversions and scaling per matrix there).

   Read by sc2cli/model/native.py, which compiles it once per machine with the system C compiler and uses it
   only where it gives PyTorch's operations' results bit for bit: the same IEEE operations in the same
   order (division, rounding to nearest even, products in fp32 without fused multiply-adds: built with
   -ffp-contract=off). */

#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"

/* Rows of x (M, K; bf16 when `bf16`, else fp32) to int8 xq (M, K) and scales (M): a row's scale is
   max(max |x|, 2^-126) / 127 (NaN when the row holds a NaN, so its products stay NaN), each element
   x / scale rounded to nearest even. K a multiple of 16. */
int round_rows(const void *x, int M, int K, int bf16, int8_t *xq, float *scales, int threads) {
    if (K % 16 || M < 1) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int m = 0; m < M; m++) {
        const char *row = (const char *)x + (size_t)m * K * (bf16 ? 2 : 4);
        __m512 amax = _mm512_setzero_ps();
        __mmask16 nan = 0;
        for (int k = 0; k < K; k += 16) {
            __m512 v = load16(row, bf16, k);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        }
        float top = _mm512_reduce_max_ps(amax);
        float scale = nan ? __builtin_nanf("") : (top > 0x1p-126f ? top : 0x1p-126f) / 127.0f;
        scales[m] = scale;
        __m512 s = _mm512_set1_ps(scale);
        int8_t *q = xq + (size_t)m * K;
        for (int k = 0; k < K; k += 16) {
            __m512i r = _mm512_cvtps_epi32(_mm512_div_ps(load16(row, bf16, k), s)); /* ties to even */
            _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtsepi32_epi8(r));
        }
    }
    return 0;
}

/* 16 results to out[i..i+15]: fp32, or bf16 rounded to nearest even as bf16.h's float_to_bf16 rounds */
static inline void store16(void *out, int bf16, size_t i, __m512 y) {
    if (!bf16) {
        _mm512_storeu_ps((float *)out + i, y);
        return;
    }
    __m512i bits = _mm512_castps_si512(y);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q); /* quiet NaN, as float_to_bf16 */
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm512_cvtepi32_epi16(r));
}

/* out[m, j] (row stride ld_out; bf16 when `bf16`, else fp32) = ((float)acc[m, j] * xs[m]) * rs[j], plus
   base[m, j] (row stride ld_base; NULL: none), plus bias[j] (NULL: none), rounded once: acc (M, n)
   int32, contiguous; xs (M) fp32; rs, bias (n) fp32. */
int scale_rows(const int32_t *acc, int M, int n, const float *xs, const float *rs, const float *base,
               int ld_base, const float *bias, void *out, int ld_out, int bf16, int threads) {
    if (M < 1 || n < 1) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int m = 0; m < M; m++) {
        const int32_t *a = acc + (size_t)m * n;
        __m512 x_scale = _mm512_set1_ps(xs[m]);
        int j = 0;
        for (; j + 16 <= n; j += 16) {
            __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(a + j)), x_scale);
            y = _mm512_mul_ps(y, _mm512_loadu_ps(rs + j));
            if (base) y = _mm512_add_ps(_mm512_loadu_ps(base + (size_t)m * ld_base + j), y);
            if (bias) y = _mm512_add_ps(y, _mm512_loadu_ps(bias + j));
            store16(out, bf16, (size_t)m * ld_out + j, y);
        }
        for (; j < n; j++) {
            float y = ((float)a[j] * xs[m]) * rs[j];
            if (base) y = base[(size_t)m * ld_base + j] + y;
            if (bias) y = y + bias[j];
            if (bf16)
                ((uint16_t *)out)[(size_t)m * ld_out + j] = float_to_bf16(y);
            else
                ((float *)out)[(size_t)m * ld_out + j] = y;
        }
    }
    return 0;
}
