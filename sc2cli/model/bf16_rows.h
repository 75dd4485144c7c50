/* The driver bf16_gemv.c and bf16_avx2.c share: each thread its own blocks of weight rows (WIDE_ROWS for
   a token alone, OUT_ROWS otherwise), X_ROWS rows of x per pass over a block, the bias added in fp32 and
   each output rounded to bf16 once. Included after the kernel's own OUT_ROWS, WIDE_ROWS, X_ROWS and
   rows_block, which is given the caller's `order` through a weight (bf16_avx2.c has two). */

#ifndef SC2_BF16_ROWS_H
#define SC2_BF16_ROWS_H

/* out (M, N) = x (M, K) times w (N, K) transposed, plus `bias` (N, or NULL), all bf16; K a multiple of 32,
   N of 4. Returns 0, or -1 for sizes it does not take. */
static int bf16_rows_mm(const uint16_t *x, int M, int K, int N, const uint16_t *w, const uint16_t *bias,
                        uint16_t *out, int threads, int order) {
    if (K % 32 || N % OUT_ROWS || M < 1) return -1;
    const int R = M == 1 && N % WIDE_ROWS == 0 ? WIDE_ROWS : OUT_ROWS;
    const int blocks = N / R;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int b = 0; b < blocks; b++) {
        int n0 = b * R;
        float sums[X_ROWS * WIDE_ROWS];
        for (int m0 = 0; m0 < M; m0 += X_ROWS) {
            int rows = M - m0 < X_ROWS ? M - m0 : X_ROWS;
            const uint16_t *xs[X_ROWS];
            for (int m = 0; m < rows; m++) xs[m] = x + (size_t)(m0 + m) * K;
            rows_block(xs, rows, R, K, w, n0, sums, order);
            for (int m = 0; m < rows; m++)
                for (int r = 0; r < R; r++) {
                    float y = sums[m * R + r] + (bias ? bf16_to_float(bias[n0 + r]) : 0.0f);
                    out[(size_t)(m0 + m) * N + n0 + r] = float_to_bf16(y);
                }
        }
    }
    return 0;
}

#endif
