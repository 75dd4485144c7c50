/* int4 weights in tinygemm's CPU layout times a few rows of activations, in VNNI's int8 dot products.

   Read by sc2cli/model/native.py, which compiles it once per machine with the system C compiler (the
   flags below need AVX-512 with VNNI and VBMI) and calls it through ctypes; it is run only where its
   products agree with PyTorch's own kernel on this machine.

   The weight: blocks of 64 output rows, each stored as (K, 32) bytes; byte q of input k holds row q's code
   in its low nibble and row q + 32's in its high nibble (dequant.py's Layout(64, 32)). Group g of row n has
   a bf16 scale and zero, (G, N, 2): weight = (code - 8) * scale + zero.

   The activations: each row is rounded to int8 with its own scale sx = max |x| / 127, so
       y[n] = sum_g scale[g,n] * sx * (sum_k code * xq - 8 * sum_k xq) + zero[g,n] * sum_k x
   where the inner sums run over group g's inputs; code * xq is summed exactly in int32 by vpdpbusd (four
   bytes of one row's codes against four bytes of x), which takes 16 rows at a time: vpermt2b gathers each
   row's codes for inputs k..k+3 from the layout's (k, row) bytes into one 32-bit lane.

   Each row's result depends on that row alone (its int32 sums are exact in any order, and the fp32 steps
   are the same in the same order whatever the row count), so a row computes the same whether it comes
   alone or with drafts to verify. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define BLOCK 64
#define ROWS_AT_ONCE 4 /* rows sharing each load of the weights (5 would run out of registers) */

/* A row of x rounded to int8 (xq, K bytes), its scale, and per group: sum of xq, sum of x (fp32). K and
   group are multiples of 16. */
static void quantize_row(const void *x, int x_is_bf16, int K, int group, int8_t *xq, float *sx,
                         int32_t *sum_q, float *sum_x) {
    __m512 amax = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(load16(x, x_is_bf16, k)));
    float top = _mm512_reduce_max_ps(amax);
    float scale = top > 0.0f ? top / 127.0f : 1.0f;
    __m512 inverse = _mm512_set1_ps(1.0f / scale);
    *sx = scale;
    for (int g = 0; g < K / group; g++) {
        __m512i q_total = _mm512_setzero_si512();
        __m512 x_total = _mm512_setzero_ps();
        for (int k = g * group; k < (g + 1) * group; k += 16) {
            __m512 v = load16(x, x_is_bf16, k);
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse)); /* to nearest, ties to even */
            q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            _mm_storeu_si128((__m128i *)(xq + k), _mm512_cvtepi32_epi8(q));
            q_total = _mm512_add_epi32(q_total, q);
            x_total = _mm512_add_ps(x_total, v);
        }
        sum_q[g] = _mm512_reduce_add_epi32(q_total);
        sum_x[g] = _mm512_reduce_add_ps(x_total);
    }
}

/* Where a row's codes of inputs k..k+3 lie in the bytes of (k, k+1) and (k+2, k+3), two 64-byte loads:
   lane j of rows 0..15 gathers bytes j, 32 + j of the first and j, 32 + j of the second (vpermt2b's
   indices: 64 + i is byte i of the second); rows 16..31 are 16 bytes on (+ 16). */
#define ROWS_FIRST                                                                                             \
    _mm512_set_epi8(111, 79, 47, 15, 110, 78, 46, 14, 109, 77, 45, 13, 108, 76, 44, 12, 107, 75, 43, 11, 106, 74, \
                    42, 10, 105, 73, 41, 9, 104, 72, 40, 8, 103, 71, 39, 7, 102, 70, 38, 6, 101, 69, 37, 5, 100, 68, \
                    36, 4, 99, 67, 35, 3, 98, 66, 34, 2, 97, 65, 33, 1, 96, 64, 32, 0)

/* Group [k0, k1)'s int32 sums of M <= 3 rows against the block: sums[m][q] for rows 16q..16q+15. */
static inline __attribute__((always_inline)) void few_rows(const uint8_t *block, int k0, int k1, int M,
                                                           const int8_t *const *xq, __m512i sums[][4]) {
    const __m512i first = ROWS_FIRST, second = _mm512_add_epi8(first, _mm512_set1_epi8(16));
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    for (int m = 0; m < M; m++)
        for (int q = 0; q < 4; q++) sums[m][q] = _mm512_setzero_si512();
    for (int k = k0; k < k1; k += 4) {
        __m512i a = _mm512_loadu_si512(block + (size_t)k * 32);       /* inputs k, k+1 */
        __m512i b = _mm512_loadu_si512(block + (size_t)(k + 2) * 32); /* inputs k+2, k+3 */
        __m512i a_low = _mm512_and_si512(a, nibble), b_low = _mm512_and_si512(b, nibble);
        __m512i a_high = _mm512_and_si512(_mm512_srli_epi16(a, 4), nibble);
        __m512i b_high = _mm512_and_si512(_mm512_srli_epi16(b, 4), nibble);
        __m512i w[4] = {/* 16 rows each x codes of k..k+3: rows 0..15, 16..31, 32..47, 48..63 */
                        _mm512_permutex2var_epi8(a_low, first, b_low),
                        _mm512_permutex2var_epi8(a_low, second, b_low),
                        _mm512_permutex2var_epi8(a_high, first, b_high),
                        _mm512_permutex2var_epi8(a_high, second, b_high)};
        for (int m = 0; m < M; m++) {
            int32_t four;
            memcpy(&four, xq[m] + k, 4);
            __m512i xb = _mm512_set1_epi32(four);
            for (int q = 0; q < 4; q++) sums[m][q] = _mm512_dpbusd_epi32(sums[m][q], w[q], xb);
        }
    }
}

/* The same for exactly 4 rows (a token and 3 drafts). Their 16 accumulators are named variables, and each
   load's low nibbles (rows 0..31) are used up before its high ones: written as `few_rows` with M = 4,
   GCC 12 keeps copies of the accumulators on the stack, five stores a step, and 4 rows cost more than
   3 + 1. Measured on all of a 3B model's int4 matrices (2 threads, AMD Zen 4, memory ~30 GB/s): 4 rows
   1.16x one row's time, against 1.35x as 3 + 1. */
static inline __attribute__((always_inline)) void four_rows(const uint8_t *block, int k0, int k1,
                                                            const int8_t *const *xq, __m512i sums[][4]) {
    const __m512i first = ROWS_FIRST, second = _mm512_add_epi8(first, _mm512_set1_epi8(16));
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m512i s00 = _mm512_setzero_si512(), s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00,
            s13 = s00, s20 = s00, s21 = s00, s22 = s00, s23 = s00, s30 = s00, s31 = s00, s32 = s00, s33 = s00;
    for (int k = k0; k < k1; k += 4) {
        __m512i a = _mm512_loadu_si512(block + (size_t)k * 32);       /* inputs k, k+1 */
        __m512i b = _mm512_loadu_si512(block + (size_t)(k + 2) * 32); /* inputs k+2, k+3 */
        int32_t x0, x1, x2, x3;
        memcpy(&x0, xq[0] + k, 4), memcpy(&x1, xq[1] + k, 4), memcpy(&x2, xq[2] + k, 4), memcpy(&x3, xq[3] + k, 4);
        /* rows 0..15 and 16..31 (low nibbles), then 32..47 and 48..63 (high) */
        __m512i low = _mm512_and_si512(a, nibble), high = _mm512_and_si512(b, nibble);
        __m512i w0 = _mm512_permutex2var_epi8(low, first, high), w1 = _mm512_permutex2var_epi8(low, second, high);
#define ROW(s_0, s_1, x) s_0 = _mm512_dpbusd_epi32(s_0, w0, _mm512_set1_epi32(x)), \
                         s_1 = _mm512_dpbusd_epi32(s_1, w1, _mm512_set1_epi32(x))
        ROW(s00, s01, x0), ROW(s10, s11, x1), ROW(s20, s21, x2), ROW(s30, s31, x3);
        low = _mm512_and_si512(_mm512_srli_epi16(a, 4), nibble);
        high = _mm512_and_si512(_mm512_srli_epi16(b, 4), nibble);
        w0 = _mm512_permutex2var_epi8(low, first, high), w1 = _mm512_permutex2var_epi8(low, second, high);
        ROW(s02, s03, x0), ROW(s12, s13, x1), ROW(s22, s23, x2), ROW(s32, s33, x3);
#undef ROW
    }
    sums[0][0] = s00, sums[0][1] = s01, sums[0][2] = s02, sums[0][3] = s03;
    sums[1][0] = s10, sums[1][1] = s11, sums[1][2] = s12, sums[1][3] = s13;
    sums[2][0] = s20, sums[2][1] = s21, sums[2][2] = s22, sums[2][3] = s23;
    sums[3][0] = s30, sums[3][1] = s31, sums[3][2] = s32, sums[3][3] = s33;
}

/* Rows [0, M) (M <= ROWS_AT_ONCE) times one block of the weight (64 output rows from n0): acc (M, 64)
   fp32. Each load of the block's bytes serves every row and both nibbles (rows 0..31 and 32..63). Inlined
   with M a constant (`block_rows`), so every accumulator lives in a register. */
static inline __attribute__((always_inline)) void block_product(
    const uint8_t *block, const uint16_t *sz, int N, int n0, int K, int group, int M, const int8_t *const *xq,
    const float *sx, const int32_t *const *sum_q, const float *const *sum_x, float *acc) {
    /* acc is updated once per group (in memory: the registers hold the int32 sums) */
    for (int j = 0; j < M * 64; j += 16) _mm512_storeu_ps(acc + j, _mm512_setzero_ps());
    for (int g = 0; g < K / group; g++) {
        /* the scales and zeros two groups on: 256 bytes N * 4 apart from group to group, a stride the
           hardware's prefetchers miss, so each group's would otherwise wait on memory */
        if (g + 2 < K / group)
            for (int line = 0; line < 4; line++)
                _mm_prefetch((const char *)(sz + ((size_t)(g + 2) * N + n0) * 2) + line * 64, _MM_HINT_T0);
        __m512i sums[ROWS_AT_ONCE][4];
        if (M == 4)
            four_rows(block, g * group, (g + 1) * group, xq, sums);
        else
            few_rows(block, g * group, (g + 1) * group, M, xq, sums);
        for (int q = 0; q < 4; q++) {
            /* 16 rows' (scale, zero) bf16 pairs: one 32-bit lane each, scale in the low half */
            __m512i pairs = _mm512_loadu_si512(sz + ((size_t)g * N + n0 + q * 16) * 2);
            __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
            __m512 zero = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32((int)0xffff0000u)));
            for (int m = 0; m < M; m++) {
                __m512i centred = _mm512_sub_epi32(sums[m][q], _mm512_set1_epi32(8 * sum_q[m][g]));
                float *out = acc + m * 64 + q * 16;
                __m512 t = _mm512_fmadd_ps(zero, _mm512_set1_ps(sum_x[m][g]), _mm512_loadu_ps(out));
                _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(centred),
                                                      _mm512_mul_ps(scale, _mm512_set1_ps(sx[m])), t));
            }
        }
    }
}

#include "int4_rows.h"

/* out (M, N) = x (M, K) times the weight (int4_rows.h). */
int int4_vnni_mm(const void *x, int M, int K, int N, const uint8_t *packed, const uint16_t *sz, int group,
                 const void *bias, void *out, int bf16, int threads, void *scratch) {
    return int4_rows_mm(x, M, K, N, packed, sz, group, bias, out, bf16, threads, scratch);
}

/* Rows [n0, n0 + n) of the packed weight (N rows, whole 64-row blocks from n0) as int8 weights for a
   prompt's int8 product (dequant.py's `int8_product`): out (K, n), rows in their own order, each
   (code - 8) * multipliers[g * n + row - n0], the group's scale over the row's (1..16: the product fits
   in int8). One pass over the block's bytes, each thread its own blocks (columns of out). */
int int4_unpack_int8(const uint8_t *packed, int K, int N, int n0, int n, const int8_t *multipliers, int group,
                     int8_t *out, int threads) {
    if (n0 % BLOCK || n % BLOCK || n0 + n > N || group % 16 || K % group) return -1;
    const __m256i nibble = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int b = 0; b < n / BLOCK; b++) {
        const uint8_t *block = packed + (size_t)(n0 / BLOCK + b) * K * (BLOCK / 2);
        for (int k = 0; k < K; k++) {
            __m256i bytes = _mm256_loadu_si256((const __m256i *)(block + (size_t)k * (BLOCK / 2)));
            __m256i low = _mm256_sub_epi8(_mm256_and_si256(bytes, nibble), eight); /* rows 0..31 */
            __m256i high = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble), eight);
            const int8_t *m = multipliers + (size_t)(k / group) * n + b * BLOCK;
            __m512i m_low = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)m));
            __m512i m_high = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(m + 32)));
            __m512i p_low = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(low), m_low);
            __m512i p_high = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(high), m_high);
            int8_t *row = out + (size_t)k * n + b * BLOCK;
            _mm256_storeu_si256((__m256i *)row, _mm512_cvtepi16_epi8(p_low));
            _mm256_storeu_si256((__m256i *)(row + 32), _mm512_cvtepi16_epi8(p_high));
        }
    }
    return 0;
}
