/* bf16 weights times a token and its drafts with AVX2 and FMA: bf16_gemv.c for CPUs without native bf16.
   Each bf16 (weights and x) widened to fp32 exactly (16 at a time: the even ones' bits shifted up, the odd
   ones' low halves cleared, no shuffles), then fused multiply-adds: a
   bf16 x bf16 product is exact in fp32, so each output is the exact products summed in fp32 and rounded
   to bf16 once, like bf16_gemv.c's (in another order of sums).

   Two orders through a weight, each exported: `bf16_gemv` reads a block of 4 weight rows (8 for a token
   alone) together, one accumulator per output, for up to 2 rows of x at a time; `bf16_gemv_stream` reads
   one weight row at a time (one stream through memory) into 4 accumulators per output. Which is faster
   depends on the CPU and the shape, so the decode probe measures both (`native`, `stream`); either way
   each output is its row's alone (the same operations whatever the row count).

   Read by sc2cli/model/native.py, which compiles it where the CPU has AVX2 and FMA but not AVX512-BF16 and
   exports it under bf16_gemv.c's name and signature. Measured on an AMD EPYC exposing only AVX2 (2
   threads): PyTorch's one-row bf16 product read 13-22 GB/s of 3B matrices there; `bf16_gemv` 29-33, and
   `bf16_gemv_stream` 33-40 on the 3072-input shapes (1.3-1.5x `bf16_gemv` for 2 rows) but 24 on the
   12288-input one, whose two x rows (48 KB) no longer stay in L1 beside the stream. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define OUT_ROWS 4 /* weight rows per block for a token and its drafts */
#define WIDE_ROWS 8 /* for a token alone: eight accumulators, as many as keep the FMA units busy */
#define X_ROWS 2    /* 2 x 4 accumulators, the x rows' halves and a weight's in 16 registers */
#define SPLIT 4     /* accumulators per output in the one-stream order (4 chains of FMAs in flight) */

static inline float sum8(__m256 v) {
    __m128 four = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

/* Rows [0, M) (M <= X_ROWS) of x times weight rows [n0, n0 + R): sums (M, R). Inlined with M and R
   constants, so the accumulators live in registers; each sum's order is the same whatever M and R. */
static inline __attribute__((always_inline)) void block(const uint16_t *const *x, int M, int R, int K,
                                                        const uint16_t *w, int n0, float *sums) {
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[X_ROWS][WIDE_ROWS];
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) acc[m][r] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        /* 16 bf16 as two fp32 vectors: the even ones shifted up, the odd ones with their low half cleared */
        __m256 x_even[X_ROWS], x_odd[X_ROWS];
        for (int m = 0; m < M; m++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(x[m] + k));
            x_even[m] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            x_odd[m] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
        }
        for (int r = 0; r < R; r++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(w + (size_t)(n0 + r) * K + k));
            __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, high));
            for (int m = 0; m < M; m++)
                acc[m][r] = _mm256_fmadd_ps(odd, x_odd[m], _mm256_fmadd_ps(even, x_even[m], acc[m][r]));
        }
    }
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) sums[m * R + r] = sum8(acc[m][r]);
}

/* Rows [0, M) (M <= X_ROWS) of x times weight row n, one 16-input step into each of SPLIT accumulators
   in turn: sums[m * R + r] (`bf16_gemv_stream`'s order). Inlined with M a constant. */
static inline __attribute__((always_inline)) void stream_row(const uint16_t *const *x, int M, int R, int r,
                                                             int K, const uint16_t *row, float *sums) {
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[X_ROWS][SPLIT];
    for (int m = 0; m < M; m++)
        for (int s = 0; s < SPLIT; s++) acc[m][s] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16 * SPLIT)
        for (int s = 0; s < SPLIT && k + 16 * s < K; s++) {
            int k16 = k + 16 * s;
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + k16));
            __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, high));
            for (int m = 0; m < M; m++) {
                __m256i u = _mm256_loadu_si256((const __m256i *)(x[m] + k16));
                __m256 x_even = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
                __m256 x_odd = _mm256_castsi256_ps(_mm256_and_si256(u, high));
                acc[m][s] = _mm256_fmadd_ps(odd, x_odd, _mm256_fmadd_ps(even, x_even, acc[m][s]));
            }
        }
    for (int m = 0; m < M; m++) {
        __m256 total = acc[m][0];
        for (int s = 1; s < SPLIT; s++) total = _mm256_add_ps(total, acc[m][s]);
        sums[m * R + r] = sum8(total);
    }
}

static void rows_block(const uint16_t *const *x, int M, int R, int K, const uint16_t *w, int n0, float *sums,
                       int stream) {
    if (stream)
        for (int r = 0; r < R; r++) {
            if (M == 1)
                stream_row(x, 1, R, r, K, w + (size_t)(n0 + r) * K, sums);
            else
                stream_row(x, 2, R, r, K, w + (size_t)(n0 + r) * K, sums);
        }
    else if (R == WIDE_ROWS)
        block(x, 1, WIDE_ROWS, K, w, n0, sums); /* a token alone */
    else if (M == 1)
        block(x, 1, OUT_ROWS, K, w, n0, sums);
    else
        block(x, 2, OUT_ROWS, K, w, n0, sums);
}

#include "bf16_rows.h"

/* out (M, N) = x (M, K) times w (N, K) transposed, plus `bias` (N, or NULL), all bf16 (bf16_rows.h): K a
   multiple of 32, N of 4; 0, or -1 for sizes it does not take. In blocks of rows, or one row at a time. */
int bf16_gemv(const uint16_t *x, int M, int K, int N, const uint16_t *w, const uint16_t *bias, uint16_t *out,
              int threads) {
    return bf16_rows_mm(x, M, K, N, w, bias, out, threads, 0);
}

int bf16_gemv_stream(const uint16_t *x, int M, int K, int N, const uint16_t *w, const uint16_t *bias,
                     uint16_t *out, int threads) {
    return bf16_rows_mm(x, M, K, N, w, bias, out, threads, 1);
}
