/* The driver attention_one.c and attention_avx2.c share: `attend_rows` splits T tokens' attention into work
   items (a token, a K/V head and up to QUERIES of its query heads) across threads, and `rotate_attend`
   puts the new tokens' rotary embedding and cache write before it. Included after the kernel's own
   QUERIES, query_scores, softmax, weighted_values and rotate_row. */

#ifndef SC2_ATTENTION_ROWS_H
#define SC2_ATTENTION_ROWS_H

#include <string.h>

/* The kernel's weighted_values with NQ a constant (its sums in registers). */
static void values(const float *p, int NQ, int S, const uint16_t *v, int hd, uint16_t *out) {
    switch (NQ) { /* NQ <= QUERIES */
    case 1: weighted_values(p, 1, S, v, hd, out); break;
    case 2: weighted_values(p, 2, S, v, hd, out); break;
    case 3: weighted_values(p, 3, S, v, hd, out); break;
    case 4: weighted_values(p, 4, S, v, hd, out); break;
    case 5: weighted_values(p, 5, S, v, hd, out); break;
    case 6: weighted_values(p, 6, S, v, hd, out); break;
    case 7: weighted_values(p, 7, S, v, hd, out); break;
    case 8: weighted_values(p, 8, S, v, hd, out); break;
    case 9: weighted_values(p, 9, S, v, hd, out); break;
    case 10: weighted_values(p, 10, S, v, hd, out); break;
    case 11: weighted_values(p, 11, S, v, hd, out); break;
    default: weighted_values(p, 12, S, v, hd, out); break;
    }
}

/* T tokens (a token and its drafts), each exactly as it would be alone: token t's query heads q[t] (H, hd)
   attend to keys [first[t], first[t] + count[t]) of k and v (n_kv heads, keys `hd` apart, heads
   `head_stride` elements apart), all bf16; out[t] (H, hd) bf16, head h attending with K/V head
   h / (H / n_kv). `scores`: T * H * max(count) floats of working memory. hd a multiple of 32. Returns 0,
   or -1 for sizes it does not take. */
int attend_rows(const uint16_t *q, int T, int H, int n_kv, int hd, const int *first, const int *count,
                const uint16_t *k, const uint16_t *v, long head_stride, float scale, uint16_t *out, float *scores,
                int threads) {
    if (hd % 32 || T < 1 || n_kv < 1 || H % n_kv) return -1;
    int most = 0;
    for (int t = 0; t < T; t++) {
        if (count[t] < 1 || first[t] < 0) return -1;
        most = count[t] > most ? count[t] : most;
    }
    const int group = H / n_kv;
    /* work items: a token, a K/V head and up to QUERIES of its query heads; more items than heads where
       threads would otherwise idle, but never fewer than 4 queries sharing V. Which thread computes a
       query changes nothing in its result. */
    int parts = (group + QUERIES - 1) / QUERIES;
    while (T * n_kv * parts < threads && (group + parts) / (parts + 1) >= 4) parts++;
    const int per = (group + parts - 1) / parts;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int item = 0; item < T * n_kv * parts; item++) {
        const int t = item / (n_kv * parts), h = item / parts % n_kv;
        const int lo = h * group + (item % parts) * per;
        const int hi = lo + per < (h + 1) * group ? lo + per : (h + 1) * group;
        if (lo >= hi) continue;
        const int S = count[t];
        const uint16_t *kh = k + (size_t)h * head_stride + (size_t)first[t] * hd;
        const uint16_t *vh = v + (size_t)h * head_stride + (size_t)first[t] * hd;
        const uint16_t *qt = q + (size_t)t * H * hd;
        float *st = scores + (size_t)t * H * most;
        query_scores(qt + (size_t)lo * hd, hi - lo, kh, S, hd, scale, st + (size_t)lo * S);
        for (int i = lo; i < hi; i++) softmax(st + (size_t)i * S, S);
        values(st + (size_t)lo * S, hi - lo, S, vh, hd, out + (size_t)t * H * hd + (size_t)lo * hd);
    }
    return 0;
}

/* T new tokens at positions [start, start + T) of a sequence whose K/V cache holds `start` of them: their
   projections q (T, H, hd), k and v (T, n_kv, hd), bf16, rows dense. Rotates q into `rotated` (T, H, hd)
   and k into the cache, copies v into it (cache heads `head_stride` elements apart, positions `hd`), then
   attends each token over the keys it sees (all before it and itself; with a `window` > 0, only the
   `window` ending at itself) exactly as `attend_rows` does: model.py's rotate, KVCache.store and
   native_attention in one call, the same bits. `cos` and `sin`: the rotary table's rows for the T
   positions (T, hd). Returns 0, or -1 for sizes it does not take. */
int rotate_attend(const uint16_t *q, const uint16_t *k, const uint16_t *v, int T, int H, int n_kv, int hd,
                  const uint16_t *cos, const uint16_t *sin, uint16_t *k_cache, uint16_t *v_cache, long head_stride,
                  int start, int window, float scale, uint16_t *rotated, uint16_t *out, float *scores, int threads) {
    if (hd % 32 || T < 1 || T > 64 || n_kv < 1 || H % n_kv || start < 0) return -1;
    int first[64], count[64];
    for (int t = 0; t < T; t++) {
        const int position = start + t;
        const uint16_t *c = cos + (size_t)t * hd, *s = sin + (size_t)t * hd;
        for (int h = 0; h < H; h++)
            rotate_row(q + ((size_t)t * H + h) * hd, c, s, hd, rotated + ((size_t)t * H + h) * hd);
        for (int h = 0; h < n_kv; h++) {
            const size_t row = (size_t)h * head_stride + (size_t)position * hd;
            rotate_row(k + ((size_t)t * n_kv + h) * hd, c, s, hd, k_cache + row);
            memcpy(v_cache + row, v + ((size_t)t * n_kv + h) * hd, (size_t)hd * 2);
        }
        first[t] = window > 0 && position - window + 1 > 0 ? position - window + 1 : 0;
        count[t] = position + 1 - first[t];
    }
    return attend_rows(rotated, T, H, n_kv, hd, first, count, k_cache, v_cache, head_stride, scale, out, scores,
                       threads);
}

#endif
