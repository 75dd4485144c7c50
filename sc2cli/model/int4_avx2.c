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
   pair into int16. Four inputs' bytes (k and k+1 in one 32-byte load, k+2 and k+3 in the next)
   interleaved by vpunpcklbw put inputs k and k+2 of rows 0..7 side by side in the low 128-bit lane and
   k+1 and k+3 in the high one; each lane is multiplied by its own pair of xq. A pair sums to at most
   15 * 127 * 2 = 3810, so a row's 32 inputs (eight pairs in each lane: 30480 of int16's 32767) add up
   exactly in int16 before they are widened into the int32 sums; groups are whole 32s of inputs. The int32 sums are exact and the fp32 steps are int4_vnni.c's in the
   same order, so a row computes the same alone or among drafts. */

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

/* Group [k0, k1)'s int32 sums of M rows against the block: sums[m][s] for rows 8s..8s+7. */
static inline __attribute__((always_inline)) void group_sums(const uint8_t *block, int k0, int k1, int M,
                                                             const int8_t *const *xq, __m256i sums[][4]) {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    /* a row's xq[k..k+3], broadcast as 32 bits, into (xq[k], xq[k+2]) pairs in the low lane and
       (xq[k+1], xq[k+3]) in the high one */
    const __m256i spread = _mm256_setr_epi8(0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2,
                                            1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3);
    for (int m = 0; m < M; m++)
        for (int s = 0; s < 4; s++) sums[m][s] = _mm256_setzero_si256();
    for (int k32 = k0; k32 < k1; k32 += 32) {
        __m256i pairs[ROWS_AT_ONCE][4];
        for (int m = 0; m < M; m++)
            for (int i = 0; i < 4; i++) pairs[m][i] = _mm256_setzero_si256();
        for (int k = k32; k < k32 + 32; k += 4) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(block + (size_t)k * 16));       /* inputs k, k+1 */
            __m256i b = _mm256_loadu_si256((const __m256i *)(block + (size_t)(k + 2) * 16)); /* k+2, k+3 */
            __m256i low = _mm256_unpacklo_epi8(a, b), high = _mm256_unpackhi_epi8(a, b);
            __m256i w[4] = {/* rows 0..7, 8..15, 16..23, 24..31 */
                            _mm256_and_si256(low, nibble), _mm256_and_si256(high, nibble),
                            _mm256_and_si256(_mm256_srli_epi16(low, 4), nibble),
                            _mm256_and_si256(_mm256_srli_epi16(high, 4), nibble)};
            for (int m = 0; m < M; m++) {
                int32_t four;
                memcpy(&four, xq[m] + k, 4);
                __m256i xb = _mm256_shuffle_epi8(_mm256_set1_epi32(four), spread);
                for (int i = 0; i < 4; i++) pairs[m][i] = _mm256_add_epi16(pairs[m][i], _mm256_maddubs_epi16(w[i], xb));
            }
        }
        for (int m = 0; m < M; m++)
            for (int i = 0; i < 4; i++) { /* both lanes hold rows 8i..8i+7 */
                __m256i p = pairs[m][i];
                __m256i wide = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)),
                                                _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
                sums[m][i] = _mm256_add_epi32(sums[m][i], wide);
            }
    }
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

/* out (M, N) = x (M, K) times the weight (int4_rows.h), N a multiple of 32, `group` of 32. */
int int4_avx2_mm(const void *x, int M, int K, int N, const uint8_t *packed, const uint16_t *sz, int group,
                 const void *bias, void *out, int bf16, int threads, void *scratch) {
    if (group % 32) return -1;
    return int4_rows_mm(x, M, K, N, packed, sz, group, bias, out, bf16, threads, scratch);
}
