/* int8 weights (N, K), row-major with one fp32 scale per row, times a few rows of activations in VNNI's
   int8 dot products.

   Read by sc2cli/model/native.py, which compiles it once per machine with the system C compiler (the
   flags below need AVX-512 with VNNI) and calls it through ctypes; it is run only where its products equal
   the prompt path's (quant.py's `rounded_product`: torch._int_mm) bit for bit on this machine.

   Each row of x is rounded to int8 with its own scale sx = max(max |x|, 2^-126) / 127, as the prompt path
   rounds it, and stored biased by 128 (1..255: vpdpbusd multiplies unsigned bytes by signed ones), so
       y[n] = (sum_k (xq + 128) * w - 128 * row_sum[n]) * sx * scale[n] + bias[n]
   with the integer sums exact in int32 (|sum| < 255 * 127 * K) and the fp32 arithmetic in the prompt
   path's order (no fused multiply-adds: built with -ffp-contract=off). A weight row is one contiguous
   stream; 16 of them are read together for a lone row of x, 8 for more, each 64-byte load serving up to
   three rows of x.

   Each row's result depends on that row alone, so a token computes the same alone or with its drafts. */

#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"

#define ROWS_AT_ONCE 4 /* rows of x per pass over a block of weights: a token and 3 drafts */
#define BLOCK 16       /* weight rows per block: 16 streams for a lone row, 2 x 8 for more */

/* A row of x rounded to int8, plus 128 (xu, K bytes), and its scale; K a multiple of 16. */
static void quantize_row(const void *x, int x_is_bf16, int K, uint8_t *xu, float *sx) {
    __m512 amax = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(load16(x, x_is_bf16, k)));
    float top = _mm512_reduce_max_ps(amax);
    __m512 scale = _mm512_set1_ps((top > 0x1p-126f ? top : 0x1p-126f) / 127.0f);
    _mm_store_ss(sx, _mm512_castps512_ps128(scale));
    for (int k = 0; k < K; k += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_div_ps(load16(x, x_is_bf16, k), scale)); /* ties to even */
        q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        _mm_storeu_si128((__m128i *)(xu + k), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, _mm512_set1_epi32(128))));
    }
}

/* sums (M, BLOCK) += rows xu[0..M) times weight rows w[0..R) (each K bytes, K a multiple of 64), row m's
   at sums + m * BLOCK. Inlined with M and R constants (`block_product`), so every accumulator lives in a
   register: M x R of them, M rows of x and one weight load (28 of the 32 for 3 x 8). */
static inline __attribute__((always_inline)) void rows_product(const int8_t *w, int K, int M, int R,
                                                               const uint8_t *const *xu, int32_t *sums) {
    __m512i acc[ROWS_AT_ONCE][BLOCK];
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_si512();
    for (int k = 0; k < K; k += 64) {
        __m512i xv[ROWS_AT_ONCE];
        for (int m = 0; m < M; m++) xv[m] = _mm512_loadu_si512(xu[m] + k);
        for (int r = 0; r < R; r++) {
            __m512i wv = _mm512_loadu_si512(w + (size_t)r * K + k);
            for (int m = 0; m < M; m++) acc[m][r] = _mm512_dpbusd_epi32(acc[m][r], xv[m], wv);
        }
    }
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) sums[m * BLOCK + r] = _mm512_reduce_add_epi32(acc[m][r]);
}

/* sums (M, BLOCK) for weight rows w[0..BLOCK), M <= ROWS_AT_ONCE. 16 streams read a lone row's weights
   faster than 8 (3B shapes, 2 threads: 27-29 against 23-25 GB/s); more rows of x take 8 at a time, as
   their accumulators fill the registers. */
static void block_product(const int8_t *w, int K, int M, const uint8_t *const *xu, int32_t *sums) {
    const size_t half = (size_t)BLOCK / 2 * K;
    switch (M) {
    case 1: rows_product(w, K, 1, BLOCK, xu, sums); break;
    case 2:
        rows_product(w, K, 2, BLOCK / 2, xu, sums);
        rows_product(w + half, K, 2, BLOCK / 2, xu, sums + BLOCK / 2);
        break;
    case 3:
        rows_product(w, K, 3, BLOCK / 2, xu, sums);
        rows_product(w + half, K, 3, BLOCK / 2, xu, sums + BLOCK / 2);
        break;
    default: /* two rows of x at a time over 8 streams, the second pair reading them from L1/L2: faster than
                4 rows over 4 streams from memory (12288x3072: 20-23.5 against 17.7-19.7 GB/s) */
        for (int r = 0; r < BLOCK; r += BLOCK / 2) {
            rows_product(w + (size_t)r * K, K, 2, BLOCK / 2, xu, sums + r);
            rows_product(w + (size_t)r * K, K, 2, BLOCK / 2, xu + 2, sums + 2 * BLOCK + r);
        }
        break;
    }
}

/* out (M, N) = x (M, K) times the weight (N, K) transposed, K a multiple of 64 up to 65536, N of BLOCK. `scratch`
   holds M * (K + 4) bytes. x, out and `bias` (N, or NULL) are bf16 (`bf16` set) or fp32; the bias is
   added in fp32 before the one rounding. Returns 0, or -1 for sizes it does not take. */
int int8_vnni_mm(const void *x, int M, int K, int N, const int8_t *w, const float *scales,
                 const int32_t *row_sums, const void *bias, void *out, int bf16, int threads, void *scratch) {
    if (K % 64 || K > 65536 || N % BLOCK || M < 1) return -1; /* past 65536 inputs int32 could overflow */
    uint8_t *xu_all = (uint8_t *)scratch;
    float *sx = (float *)(xu_all + (size_t)M * K);
    size_t x_row = (size_t)K * (bf16 ? 2 : 4);
    for (int m = 0; m < M; m++) quantize_row((const char *)x + m * x_row, bf16, K, xu_all + (size_t)m * K, sx + m);
    int blocks = N / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int block = 0; block < blocks; block++) {
        int n0 = block * BLOCK;
        for (int m0 = 0; m0 < M; m0 += ROWS_AT_ONCE) {
            int rows = M - m0 < ROWS_AT_ONCE ? M - m0 : ROWS_AT_ONCE;
            const uint8_t *xu[ROWS_AT_ONCE];
            int32_t sums[ROWS_AT_ONCE * BLOCK];
            for (int m = 0; m < rows; m++) xu[m] = xu_all + (size_t)(m0 + m) * K;
            block_product(w + (size_t)n0 * K, K, rows, xu, sums);
            for (int m = 0; m < rows; m++) {
                size_t row = (size_t)(m0 + m) * N + n0;
                for (int j = 0; j < BLOCK; j++) {
                    int n = n0 + j;
                    float y = (float)(sums[m * BLOCK + j] - 128 * row_sums[n]) * sx[m0 + m];
                    y = y * scales[n];
                    if (bias) y = y + (bf16 ? bf16_to_float(((const uint16_t *)bias)[n]) : ((const float *)bias)[n]);
                    if (bf16)
                        ((uint16_t *)out)[row + j] = float_to_bf16(y);
                    else
                        ((float *)out)[row + j] = y;
                }
            }
        }
    }
    return 0;
}
