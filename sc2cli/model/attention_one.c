/* Attention over a bf16 KV cache for a token, or a token and its drafts (each row exactly as that token
   alone), every query head of a K/V head together: scores in AVX512-BF16's dot products (bf16 products
   exact in fp32, fp32 sums), softmax in fp32, the values summed in fp32 FMAs, the result rounded once to
   bf16. The same maths as attention.py's `grouped_attention` (which converts K and V to fp32 and
   multiplies), without the conversion copies and with each K/V row read from cache while the whole query
   group uses it.

   `rotate_attend` puts the new tokens' rotary embedding and cache write before it (model.py's rotate and
   KVCache.store, the same bits), so a layer's attention of a token is one call.

   Read by sc2cli/model/native.py, which compiles it once per machine and calls it through ctypes for a
   token's attention where the CPU has native bf16 (native_attention.py for `rotate_attend`). */

#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"

#define KEYS 16    /* keys whose scores are summed across lanes together */
#define QUERIES 12 /* query heads sharing each load of V (a 3B/15B model's group) */

/* The 16 lanes of each of a[0..15] summed: lane t of the result is the sum of a[t]'s lanes. Each level adds
   two vectors' halves, so 16 sums cost 15 additions and 30 shuffles instead of 16 full reductions. */
static inline __m512 sum_lanes16(__m512 a[KEYS]) {
    __m512 b[8], c[4], d[2];
    for (int t = 0; t < 8; t++) /* lanes 0-7: a[t]'s halves added, lanes 8-15: a[t+8]'s */
        b[t] = _mm512_add_ps(_mm512_shuffle_f32x4(a[t], a[t + 8], 0x44), _mm512_shuffle_f32x4(a[t], a[t + 8], 0xEE));
    for (int t = 0; t < 4; t++) /* quarters: a[t], a[t+8], a[t+4], a[t+12], four partial sums each */
        c[t] = _mm512_add_ps(_mm512_shuffle_f32x4(b[t], b[t + 4], 0x88), _mm512_shuffle_f32x4(b[t], b[t + 4], 0xDD));
    for (int t = 0; t < 2; t++) /* each quarter: two partial sums of c[2t]'s key, then two of c[2t+1]'s */
        d[t] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * t], c[2 * t + 1], 0x44),
                             _mm512_shuffle_ps(c[2 * t], c[2 * t + 1], 0xEE));
    /* each quarter q of the result: the keys of c[0], c[1], c[2], c[3] at quarter q, i.e. key
       quarter_key[q] + {0, 1, 2, 3} with quarter_key = {0, 8, 4, 12}: put them in order */
    __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    const __m512i order = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
    return _mm512_permutexvar_ps(order, e);
}

/* q (hd) times keys [0, 16) of k (rows `hd` apart): their 16 dot products. */
static inline __attribute__((always_inline)) __m512 scores16(const uint16_t *q, const uint16_t *k, int hd) {
    __m512 acc[KEYS];
    for (int t = 0; t < KEYS; t++) acc[t] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d += 32) {
        __m512bh qs = (__m512bh)_mm512_loadu_si512(q + d);
        for (int t = 0; t < KEYS; t++)
            acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)_mm512_loadu_si512(k + (size_t)t * hd + d), qs);
    }
    return sum_lanes16(acc);
}

/* The scores of queries q[0, nq) (rows `hd` apart) over S keys, scaled, into s (rows S apart): each block of
   16 keys is read from cache once and serves every query from L1. Inlined with hd a constant (key offsets
   become immediates). */
static inline __attribute__((always_inline)) void scores_of(const uint16_t *q, int nq, const uint16_t *k, int S,
                                                            int hd, float scale, float *s) {
    int j = 0;
    for (; j + KEYS <= S; j += KEYS)
        for (int i = 0; i < nq; i++)
            _mm512_storeu_ps(s + (size_t)i * S + j, _mm512_mul_ps(scores16(q + (size_t)i * hd, k + (size_t)j * hd, hd),
                                                                   _mm512_set1_ps(scale)));
    for (; j < S; j++)
        for (int i = 0; i < nq; i++) {
            __m512 acc = _mm512_setzero_ps();
            for (int d = 0; d < hd; d += 32)
                acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(k + (size_t)j * hd + d),
                                       (__m512bh)_mm512_loadu_si512(q + (size_t)i * hd + d));
            s[(size_t)i * S + j] = _mm512_reduce_add_ps(acc) * scale;
        }
}

static void query_scores(const uint16_t *q, int nq, const uint16_t *k, int S, int hd, float scale, float *s) {
    switch (hd) { /* a multiple of 32 */
    case 64: scores_of(q, nq, k, S, 64, scale, s); break;
    case 128: scores_of(q, nq, k, S, 128, scale, s); break;
    default: scores_of(q, nq, k, S, hd, scale, s); break;
    }
}

/* e^x in fp32 for x <= 0 (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-7 polynomial in r, within
   ~1 ulp); 0 below -88 and for -inf, NaN stays NaN. */
static inline __m512 exp_ps(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.0f), _CMP_LT_OQ);
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, n));
}

/* One query's scores (S of them, already scaled) into probabilities, in place. */
static void softmax(float *s, int S) {
    __m512 top = _mm512_set1_ps(-__builtin_inff());
    int j = 0;
    for (; j + 16 <= S; j += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(s + j));
    float most = _mm512_reduce_max_ps(top);
    for (; j < S; j++) most = s[j] > most ? s[j] : most; /* a NaN score makes every probability NaN below */
    const __m512 m = _mm512_set1_ps(most);
    __m512 total = _mm512_setzero_ps();
    for (j = 0; j + 16 <= S; j += 16) {
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
        _mm512_storeu_ps(s + j, e);
        total = _mm512_add_ps(total, e);
    }
    if (j < S) {
        const __mmask16 rest = (__mmask16)((1u << (S - j)) - 1);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(rest, s + j), m));
        _mm512_mask_storeu_ps(s + j, rest, e);
        total = _mm512_add_ps(total, _mm512_maskz_mov_ps(rest, e));
    }
    const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
    for (j = 0; j < S; j += 16) {
        const __mmask16 part = S - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (S - j)) - 1);
        _mm512_mask_storeu_ps(s + j, part, _mm512_mul_ps(_mm512_maskz_loadu_ps(part, s + j), inverse));
    }
}

/* out[i] = sum_j p[i][j] v[j] for NQ queries (p rows `S` apart), 32 dimensions at a time so every
   query's sums stay in registers while V streams past once per 32 dimensions. Inlined with NQ a constant. */
static inline __attribute__((always_inline)) void weighted_values(const float *p, int NQ, int S,
                                                                  const uint16_t *v, int hd, uint16_t *out) {
    for (int d = 0; d < hd; d += 32) {
        __m512 acc[QUERIES][2];
        for (int i = 0; i < NQ; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        for (int j = 0; j < S; j++) {
            __m512i raw = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(v + (size_t)j * hd + d)));
            __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
            raw = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(v + (size_t)j * hd + d + 16)));
            __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
            for (int i = 0; i < NQ; i++) {
                __m512 weight = _mm512_set1_ps(p[(size_t)i * S + j]);
                acc[i][0] = _mm512_fmadd_ps(weight, lo, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(weight, hi, acc[i][1]);
            }
        }
        for (int i = 0; i < NQ; i++) {
            float sums[32];
            _mm512_storeu_ps(sums, acc[i][0]);
            _mm512_storeu_ps(sums + 16, acc[i][1]);
            for (int t = 0; t < 32; t++) out[(size_t)i * hd + d + t] = float_to_bf16(sums[t]);
        }
    }
}

/* 16 fp32 values rounded to bf16 (to nearest even, as PyTorch rounds; NaN stays NaN), kept as fp32. */
static inline __m512i bf16_bits16(__m512 f) {
    const __m512i bits = _mm512_castps_si512(f);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    const __m512i quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x400000));
    return _mm512_and_si512(_mm512_mask_mov_epi32(rounded, nan, quiet), _mm512_set1_epi32((int)0xffff0000u));
}

static inline __m512 round_bf16(__m512 f) { return _mm512_castsi512_ps(bf16_bits16(f)); }

/* One head's row x (hd bf16) rotated as model.py's `rotate` computes it in bf16, x cos + roll(x, hd/2)
   signed_sin with each product and the sum rounded to bf16 (a product of two bf16 values is exact in fp32,
   so each rounding is the one PyTorch's bf16 operations make): the same bits. hd a multiple of 32. */
static void rotate_row(const uint16_t *x, const uint16_t *cos, const uint16_t *sin, int hd, uint16_t *out) {
    const int half = hd / 2;
    for (int i = 0; i < hd; i += 16) {
        const int other = i < half ? i + half : i - half;
        __m512 a = round_bf16(_mm512_mul_ps(load16(x, 1, i), load16(cos, 1, i)));
        __m512 b = round_bf16(_mm512_mul_ps(load16(x, 1, other), load16(sin, 1, i)));
        __m512i y = _mm512_srli_epi32(bf16_bits16(_mm512_add_ps(a, b)), 16);
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(y));
    }
}

#include "attention_rows.h" /* attend_rows and rotate_attend */
