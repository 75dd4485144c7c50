/* int4 weights in tinygemm's CPU layout for AVX2 times a few rows of activations, in AVX2's byte products:
   the kernel for CPUs without AVX-512 (most desktop and laptop CPUs: AMD Zen 2/3, Intel Core before and
   since the AVX-512 years), where PyTorch packs int4 weights in blocks of 32 rows.

   Read by sc2cli/model/native_int4.py, which compiles it once per machine with the system C compiler (the
   flags below need AVX2 and FMA) and calls it through ctypes; it is run only where PyTorch packs this
   layout and its products agree with PyTorch's own kernel on this machine.

   The weight: blocks of 32 output rows, each stored as (K, 16) bytes; byte q of input k holds row q's code
   in its low nibble and row q + 16's in its high nibble (dequant.py's Layout(32, 16)). Scales and zeros
   and the maths are int4_vnni.c's (read its header): each activation row rounded to int8 with its own
   scale, and per group of inputs
       y[n] += scale[g,n] * sx * (sum_k code * xq - 8 * sum_k xq) + zero[g,n] * sum_k x.
   Here code * xq is summed by vpmaddubsw, which multiplies unsigned bytes by signed ones and adds each
   pair into int16: inputs k's and k+1's bytes (one 32-byte load) woven so that each row's two codes sit
   side by side, 16 rows a register, against (xq[k], xq[k+1]) broadcast. A pair sums to at most
   15 * 127 * 2 = 3810, so 16 inputs (eight pairs: 30480 of int16's 32767) add up exactly in int16 before
   they are widened into the int32 sums. The int32 sums are exact and the fp32 steps are int4_vnni.c's in
   the same order, so a row computes the same alone or among drafts.

   Measured on 3B shapes (AMD EPYC with AVX2 only, 2 threads, interleaved in one process): one row 22-31
   GB/s of packed weights, two rows 1.3-1.5x one row's time, three 1.9-2.2x, four 2.65-2.9x (3.0-3.4x in
   the woven order alone): several rows are bound by the byte products (2 vpmaddubsw and 2 int16 adds per
   row per 32 bytes), where AVX-512 VNNI's take 1.2x for four. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define BLOCK 32
#define ROWS_AT_ONCE 4 /* rows sharing each load of the weights */

static inline __m256 load8(const void *x, int x_is_bf16, int k) { /* x[k..k+7] as fp32 */
    if (x_is_bf16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + k));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)x + k);
}

/* The sum of 16 fp32 lanes (lanes 0..7 in `low`, 8..15 in `high`) in _mm512_reduce_add_ps's order: the
   halves lane by lane, then those halves, then lanes 0 + 2 and 1 + 3, then the two. */
static inline float sum16(__m256 low, __m256 high) {
    __m256 eight = _mm256_add_ps(high, low);
    __m128 four = _mm_add_ps(_mm256_extractf128_ps(eight, 1), _mm256_castps256_ps128(eight));
    __m128 two = _mm_add_ps(four, _mm_shuffle_ps(four, four, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(two) + _mm_cvtss_f32(_mm_shuffle_ps(two, two, 1));
}

/* A row of x rounded to int8 (xq, K bytes), its scale, and per group: sum of xq, sum of x (fp32): what
   int4_vnni.c's quantize_row gives. K and group are multiples of 16. */
static void quantize_row(const void *x, int x_is_bf16, int K, int group, int8_t *xq, float *sx,
                         int32_t *sum_q, float *sum_x) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) amax = _mm256_max_ps(amax, _mm256_and_ps(load8(x, x_is_bf16, k), magnitude));
    __m128 four = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
    four = _mm_max_ps(four, _mm_shuffle_ps(four, four, _MM_SHUFFLE(1, 0, 3, 2)));
    float top = _mm_cvtss_f32(_mm_max_ps(four, _mm_shuffle_ps(four, four, 1)));
    float scale = top > 0.0f ? top / 127.0f : 1.0f;
    __m256 inverse = _mm256_set1_ps(1.0f / scale);
    const __m256i most = _mm256_set1_epi32(127), least = _mm256_set1_epi32(-127);
    *sx = scale;
    for (int g = 0; g < K / group; g++) {
        __m256i q_total = _mm256_setzero_si256();
        __m256 x_low = _mm256_setzero_ps(), x_high = _mm256_setzero_ps();
        for (int k = g * group; k < (g + 1) * group; k += 16) {
            __m256 v0 = load8(x, x_is_bf16, k), v1 = load8(x, x_is_bf16, k + 8);
            __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inverse)); /* to nearest, ties to even */
            __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inverse));
            q0 = _mm256_max_epi32(_mm256_min_epi32(q0, most), least);
            q1 = _mm256_max_epi32(_mm256_min_epi32(q1, most), least);
            /* 16 int32 to 16 bytes (each fits): packs work within 128-bit lanes, so put the quarters back */
            __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), _MM_SHUFFLE(3, 1, 2, 0));
            __m128i bytes = _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
            _mm_storeu_si128((__m128i *)(xq + k), bytes);
            q_total = _mm256_add_epi32(q_total, _mm256_add_epi32(q0, q1));
            x_low = _mm256_add_ps(x_low, v0);
            x_high = _mm256_add_ps(x_high, v1);
        }
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)lanes, q_total);
        sum_q[g] = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
        sum_x[g] = sum16(x_low, x_high);
    }
}

/* Group [k0, k1)'s int32 sums of M rows against the block: sums[m][s] for rows 8s..8s+7, two inputs a step,
   all 32 rows of the block at once (the order for 1-3 rows). */
static inline __attribute__((always_inline)) void group_sums_woven(const uint8_t *block, int k0, int k1, int M,
                                                                   const int8_t *const *xq, __m256i sums[][4]) {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    /* within each 128-bit lane, the lane's two 8-byte halves (one input's rows, the next input's) woven */
    const __m256i weave = _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,
                                           0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    for (int m = 0; m < M; m++)
        for (int s = 0; s < 4; s++) sums[m][s] = _mm256_setzero_si256();
    for (int k16 = k0; k16 < k1; k16 += 16) {
        __m256i pairs[ROWS_AT_ONCE][2];
        for (int m = 0; m < M; m++) pairs[m][0] = pairs[m][1] = _mm256_setzero_si256();
        /* two steps a loop: unrolled further, GCC spills the accumulators of 4 rows */
#pragma GCC unroll 2
        for (int k = k16; k < k16 + 16; k += 2) {
            /* inputs k, k+1 (16 bytes each): 64-bit quarters to (k 0..7, k+1 0..7 | k 8..15, k+1 8..15),
               then woven: byte pairs (k, k+1) of rows 0..15 in order */
            __m256i v = _mm256_loadu_si256((const __m256i *)(block + (size_t)k * 16));
            v = _mm256_shuffle_epi8(_mm256_permute4x64_epi64(v, _MM_SHUFFLE(3, 1, 2, 0)), weave);
            __m256i low = _mm256_and_si256(v, nibble);                         /* rows 0..15 */
            __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble); /* rows 16..31 */
            for (int m = 0; m < M; m++) {
                int16_t two;
                memcpy(&two, xq[m] + k, 2);
                __m256i xb = _mm256_set1_epi16(two);
                pairs[m][0] = _mm256_add_epi16(pairs[m][0], _mm256_maddubs_epi16(low, xb));
                pairs[m][1] = _mm256_add_epi16(pairs[m][1], _mm256_maddubs_epi16(high, xb));
            }
        }
        for (int m = 0; m < M; m++)
            for (int i = 0; i < 2; i++) { /* register i: rows 16i..16i+7, then 16i+8..16i+15 */
                __m256i p = pairs[m][i];
                sums[m][2 * i] = _mm256_add_epi32(sums[m][2 * i], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
                sums[m][2 * i + 1] =
                    _mm256_add_epi32(sums[m][2 * i + 1], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
            }
    }
}

/* group_sums_woven's sums by another order: four inputs a step, half the block's rows at a time (0..7 with
   16..23, then 8..15 with 24..31). Inputs k, k+1 (one load) and k+2, k+3 (the next) interleaved by bytes
   within 128-bit lanes give, in lane 0, row r's (k, k+2) byte pairs and in lane 1 its (k+1, k+3): no
   shuffle across lanes, against activations (xq[k], xq[k+2]) in lane 0 and (xq[k+1], xq[k+3]) in lane 1.
   Each int16 then gains one pair per 4 inputs, so 32 inputs add up in int16 (half as many widenings), and
   4 rows' 8 accumulators stay in registers, where the woven order's spill one (4 rows: 2.9x one row's time
   against 3.4x; 1-3 rows as fast either way). */
static inline __attribute__((always_inline)) void group_sums_halves(const uint8_t *block, int k0, int k1, int M,
                                                                    const int8_t *const *xq, __m256i sums[][4]) {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    const __m256i select = _mm256_setr_epi8(0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2,
                                            1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3);
    for (int m = 0; m < M; m++)
        for (int s = 0; s < 4; s++) sums[m][s] = _mm256_setzero_si256();
    for (int half = 0; half < 2; half++)
        for (int k32 = k0; k32 < k1; k32 += 32) {
            int end = k32 + 32 < k1 ? k32 + 32 : k1;
            __m256i pairs[ROWS_AT_ONCE][2];
            for (int m = 0; m < M; m++) pairs[m][0] = pairs[m][1] = _mm256_setzero_si256();
            for (int k = k32; k < end; k += 4) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(block + (size_t)k * 16));
                __m256i b = _mm256_loadu_si256((const __m256i *)(block + (size_t)(k + 2) * 16));
                __m256i u = half ? _mm256_unpackhi_epi8(a, b) : _mm256_unpacklo_epi8(a, b);
                __m256i low = _mm256_and_si256(u, nibble);                         /* rows 0..7 (8..15) */
                __m256i high = _mm256_and_si256(_mm256_srli_epi16(u, 4), nibble); /* rows 16..23 (24..31) */
                for (int m = 0; m < M; m++) {
                    int32_t four; /* xq[k..k+3] */
                    memcpy(&four, xq[m] + k, 4);
                    __m256i xb = _mm256_shuffle_epi8(_mm256_set1_epi32(four), select);
                    pairs[m][0] = _mm256_add_epi16(pairs[m][0], _mm256_maddubs_epi16(low, xb));
                    pairs[m][1] = _mm256_add_epi16(pairs[m][1], _mm256_maddubs_epi16(high, xb));
                }
            }
            for (int m = 0; m < M; m++)
                for (int i = 0; i < 2; i++) { /* both lanes hold the same 8 rows: their sums added */
                    __m256i p = pairs[m][i];
                    __m256i both = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)),
                                                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
                    sums[m][2 * i + half] = _mm256_add_epi32(sums[m][2 * i + half], both);
                }
        }
}

/* The order that is faster for M rows (a constant where inlined, so only one is compiled in). Both give the
   same exact int32 sums. */
static inline __attribute__((always_inline)) void group_sums(const uint8_t *block, int k0, int k1, int M,
                                                             const int8_t *const *xq, __m256i sums[][4]) {
    if (M == ROWS_AT_ONCE)
        group_sums_halves(block, k0, k1, M, xq, sums);
    else
        group_sums_woven(block, k0, k1, M, xq, sums);
}

/* Rows [0, M) (M <= ROWS_AT_ONCE) times one block of the weight (32 output rows from n0): acc (M, 32) fp32,
   int4_vnni.c's block_product in 8-lane steps. Inlined with M a constant (`block_rows`). */
static inline __attribute__((always_inline)) void block_product(
    const uint8_t *block, const uint16_t *sz, int N, int n0, int K, int group, int M, const int8_t *const *xq,
    const float *sx, const int32_t *const *sum_q, const float *const *sum_x, float *acc) {
    for (int j = 0; j < M * BLOCK; j += 8) _mm256_storeu_ps(acc + j, _mm256_setzero_ps());
    for (int g = 0; g < K / group; g++) {
        if (g + 2 < K / group) /* the scales and zeros two groups on (int4_vnni.c says why) */
            for (int line = 0; line < 2; line++)
                _mm_prefetch((const char *)(sz + ((size_t)(g + 2) * N + n0) * 2) + line * 64, _MM_HINT_T0);
        __m256i sums[ROWS_AT_ONCE][4];
        group_sums(block, g * group, (g + 1) * group, M, xq, sums);
        for (int s = 0; s < 4; s++) {
            /* 8 rows' (scale, zero) bf16 pairs: one 32-bit lane each, scale in the low half */
            __m256i pairs = _mm256_loadu_si256((const __m256i *)(sz + ((size_t)g * N + n0 + s * 8) * 2));
            __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
            __m256 zero = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32((int)0xffff0000u)));
            for (int m = 0; m < M; m++) {
                __m256i centred = _mm256_sub_epi32(sums[m][s], _mm256_set1_epi32(8 * sum_q[m][g]));
                float *out = acc + m * BLOCK + s * 8;
                __m256 t = _mm256_fmadd_ps(zero, _mm256_set1_ps(sum_x[m][g]), _mm256_loadu_ps(out));
                _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(centred),
                                                      _mm256_mul_ps(scale, _mm256_set1_ps(sx[m])), t));
            }
        }
    }
}

#include "int4_rows.h"

/* out (M, N) = x (M, K) times the weight (int4_rows.h), N a multiple of 32. */
int int4_avx2_mm(const void *x, int M, int K, int N, const uint8_t *packed, const uint16_t *sz, int group,
                 const void *bias, void *out, int bf16, int threads, void *scratch) {
    return int4_rows_mm(x, M, K, N, packed, sz, group, bias, out, bf16, threads, scratch);
}
