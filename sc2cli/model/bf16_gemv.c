/* bf16 weights times a token and its drafts, in AVX512-BF16's dot products (vdpbf16ps: pairs of bf16
   products, exact in fp32, summed into fp32 accumulators), on the weight's own dense (N, K) layout.

   Read by sc2cli/model/native.py, which compiles it once per machine with the system C compiler and calls
   it through ctypes where the CPU has native bf16: there, PyTorch's and oneDNN's one-row products were
   measured reading well under the memory's speed. Each block of 4 output rows (8 for a token alone) is
   read once for up to 3 rows of x at a time; each output is its row's alone (the same operations
   whatever the row count or block). */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define OUT_ROWS 4 /* weight rows per block for a token and its drafts */
#define WIDE_ROWS 8 /* for a token alone: more rows streaming at once (~10% faster from memory here) */
#define X_ROWS 3

/* Rows [0, M) (M <= X_ROWS) of x times weight rows [n0, n0 + R): sums (M, R). Inlined with M and R
   constants, so the accumulators live in registers; each sum's order is the same whatever M and R. */
static inline __attribute__((always_inline)) void block(const uint16_t *const *x, int M, int R, int K,
                                                        const uint16_t *w, int n0, float *sums) {
    __m512 acc[X_ROWS][WIDE_ROWS];
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 32) {
        __m512bh xs[X_ROWS];
        for (int m = 0; m < M; m++) xs[m] = (__m512bh)_mm512_loadu_si512(x[m] + k);
        for (int r = 0; r < R; r++) {
            __m512bh weights = (__m512bh)_mm512_loadu_si512(w + (size_t)(n0 + r) * K + k);
            for (int m = 0; m < M; m++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], weights, xs[m]);
        }
    }
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) sums[m * R + r] = _mm512_reduce_add_ps(acc[m][r]);
}

static void rows_block(const uint16_t *const *x, int M, int R, int K, const uint16_t *w, int n0, float *sums,
                       int order) {
    (void)order; /* one order here (bf16_avx2.c has two) */
    if (R == WIDE_ROWS) { /* a token alone */
        block(x, 1, WIDE_ROWS, K, w, n0, sums);
        return;
    }
    switch (M) { /* M <= X_ROWS */
    case 1: block(x, 1, OUT_ROWS, K, w, n0, sums); break;
    case 2: block(x, 2, OUT_ROWS, K, w, n0, sums); break;
    default: block(x, 3, OUT_ROWS, K, w, n0, sums); break;
    }
}

#include "bf16_rows.h"

/* out (M, N) = x (M, K) times w (N, K) transposed, plus `bias` (N, or NULL), all bf16 (bf16_rows.h): K a
   multiple of 32, N of 4; 0, or -1 for sizes it does not take. */
int bf16_gemv(const uint16_t *x, int M, int K, int N, const uint16_t *w, const uint16_t *bias, uint16_t *out,
              int threads) {
    return bf16_rows_mm(x, M, K, N, w, bias, out, threads, 0);
}
