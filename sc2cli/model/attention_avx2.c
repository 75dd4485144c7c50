/* attention_one.c for CPUs without native bf16: attention over a bf16 KV cache for a token, or a token and
   its drafts (each row exactly as that token alone), every query head of a K/V head together, and
   `rotate_attend`'s rotary embedding and cache write before it, in AVX2 and FMA. The same maths in 8-lane
   steps: each bf16 widened to fp32 exactly (16 at a time: the even ones' bits shifted up, the odd ones'
   low halves cleared), products exact in fp32 and summed in fp32 FMAs (in another order of sums than
   AVX512-BF16's dot products), softmax in fp32, the values summed in fp32 FMAs, the result rounded once
   to bf16; the rotary embedding rounds each step as PyTorch's bf16 operations do (the same bits).

   Read by sc2cli/model/native.py, which compiles it where the CPU has AVX2 and FMA but not AVX512-BF16 and
   calls it under attention_one.c's names and signatures. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define KEYS 8     /* keys whose scores are summed across lanes together */
#define QUERIES 12 /* query heads sharing each load of V (a 3B/15B model's group): one register each */

static inline float sum8(__m256 v) {
    __m128 four = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

/* The 8 lanes of each of a[0..7] summed: lane t of the result is the sum of a[t]'s lanes (pairs, then
   quarters, then the two halves). */
static inline __m256 sum_lanes8(const __m256 a[KEYS]) {
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3); /* keys 0-3 | 0-3, keys 4-7 | 4-7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Query q (hd bf16) times n keys of k (rows `hd` apart), one accumulator each: acc[0..n). */
static inline __attribute__((always_inline)) void dot_keys(const uint16_t *q, const uint16_t *k, int n, int hd,
                                                           __m256 *acc) {
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    for (int t = 0; t < n; t++) acc[t] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 16) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(q + d));
        __m256 qe = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16)), qo = _mm256_castsi256_ps(_mm256_and_si256(u, high));
        for (int t = 0; t < n; t++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(k + (size_t)t * hd + d));
            acc[t] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), qe, acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), qo, acc[t]);
        }
    }
}

/* The scores of queries q[0, nq) (rows `hd` apart) over S keys, scaled, into s (rows S apart): each block
   of 8 keys is read from cache once and serves every query from L1. */
static void query_scores(const uint16_t *q, int nq, const uint16_t *k, int S, int hd, float scale, float *s) {
    int j = 0;
    for (; j + KEYS <= S; j += KEYS)
        for (int i = 0; i < nq; i++) {
            __m256 acc[KEYS];
            dot_keys(q + (size_t)i * hd, k + (size_t)j * hd, KEYS, hd, acc);
            _mm256_storeu_ps(s + (size_t)i * S + j, _mm256_mul_ps(sum_lanes8(acc), _mm256_set1_ps(scale)));
        }
    for (; j < S; j++)
        for (int i = 0; i < nq; i++) {
            __m256 acc[1];
            dot_keys(q + (size_t)i * hd, k + (size_t)j * hd, 1, hd, acc);
            s[(size_t)i * S + j] = sum8(acc[0]) * scale;
        }
}

/* e^x in fp32 for x <= 0 (attention_one.c's: Cephes' expf, x = n ln2 + r, a degree-7 polynomial in r);
   0 below -87 (where 2^n would leave fp32's normal range) and for -inf, NaN stays NaN. */
static inline __m256 exp_ps(__m256 x) {
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    /* 2^n from its exponent bits (n >= -126 where it counts) */
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

/* Lanes [0, n) of a vector, n < 8: a mask for maskload and maskstore. */
static inline __m256i first_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* One query's scores (S of them, already scaled) into probabilities, in place. */
static void softmax(float *s, int S) {
    __m256 top = _mm256_set1_ps(-__builtin_inff());
    int j = 0;
    for (; j + 8 <= S; j += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(s + j));
    __m128 four = _mm_max_ps(_mm256_extractf128_ps(top, 1), _mm256_castps256_ps128(top));
    four = _mm_max_ps(four, _mm_movehl_ps(four, four));
    float most = _mm_cvtss_f32(_mm_max_ss(four, _mm_movehdup_ps(four)));
    for (; j < S; j++) most = s[j] > most ? s[j] : most; /* a NaN score makes every probability NaN below */
    const __m256 m = _mm256_set1_ps(most);
    __m256 total = _mm256_setzero_ps();
    for (j = 0; j + 8 <= S; j += 8) {
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(s + j, e);
        total = _mm256_add_ps(total, e);
    }
    if (j < S) {
        const __m256i rest = first_lanes(S - j);
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(s + j, rest), m));
        _mm256_maskstore_ps(s + j, rest, e);
        total = _mm256_add_ps(total, _mm256_and_ps(e, _mm256_castsi256_ps(rest)));
    }
    const __m256 inverse = _mm256_set1_ps(1.0f / sum8(total));
    for (j = 0; j + 8 <= S; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inverse));
    if (j < S) {
        const __m256i rest = first_lanes(S - j);
        _mm256_maskstore_ps(s + j, rest, _mm256_mul_ps(_mm256_maskload_ps(s + j, rest), inverse));
    }
}

/* out[i] = sum_j p[i][j] v[j] for NQ queries (p rows `S` apart), 8 dimensions at a time so every query's
   sums stay in registers while V streams past once per 8 dimensions. Inlined with NQ a constant. */
static inline __attribute__((always_inline)) void weighted_values(const float *p, int NQ, int S,
                                                                  const uint16_t *v, int hd, uint16_t *out) {
    for (int d = 0; d < hd; d += 8) {
        __m256 acc[QUERIES];
        for (int i = 0; i < NQ; i++) acc[i] = _mm256_setzero_ps();
        for (int j = 0; j < S; j++) {
            __m128i raw = _mm_loadu_si128((const __m128i *)(v + (size_t)j * hd + d));
            __m256 values8 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
            for (int i = 0; i < NQ; i++)
                acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + (size_t)i * S + j), values8, acc[i]);
        }
        for (int i = 0; i < NQ; i++) {
            float sums[8];
            _mm256_storeu_ps(sums, acc[i]);
            for (int t = 0; t < 8; t++) out[(size_t)i * hd + d + t] = float_to_bf16(sums[t]);
        }
    }
}

/* 8 fp32 values rounded to bf16 (to nearest even, as PyTorch rounds; NaN stays NaN), kept as fp32 bits. */
static inline __m256i bf16_bits8(__m256 f) {
    const __m256i bits = _mm256_castps_si256(f);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
    const __m256 nan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
    const __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x400000));
    const __m256i either = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet), nan));
    return _mm256_and_si256(either, _mm256_set1_epi32((int)0xffff0000u));
}

static inline __m256 round_bf16(__m256 f) { return _mm256_castsi256_ps(bf16_bits8(f)); }

static inline __m256 load8_bf16(const uint16_t *x) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x)), 16));
}

/* attention_one.c's `rotate_row` in 8-lane steps: x cos + roll(x, hd/2) signed_sin, each product and the sum
   rounded to bf16 as PyTorch's bf16 operations round them (the same bits). hd a multiple of 32. */
static void rotate_row(const uint16_t *x, const uint16_t *cos, const uint16_t *sin, int hd, uint16_t *out) {
    const int half = hd / 2;
    for (int i = 0; i < hd; i += 8) {
        const int other = i < half ? i + half : i - half;
        __m256 a = round_bf16(_mm256_mul_ps(load8_bf16(x + i), load8_bf16(cos + i)));
        __m256 b = round_bf16(_mm256_mul_ps(load8_bf16(x + other), load8_bf16(sin + i)));
        __m256i y = _mm256_srli_epi32(bf16_bits8(_mm256_add_ps(a, b)), 16); /* 8 values of 16 bits */
        __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
        _mm_storeu_si128((__m128i *)(out + i), packed);
    }
}

#include "attention_rows.h" /* attend_rows and rotate_attend, as attention_one.c's */
