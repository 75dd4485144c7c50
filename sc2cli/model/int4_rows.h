/* The driver int4_vnni.c and int4_avx2.c share: each row of x rounded to int8 once, then each thread its
   own BLOCK-row blocks of the weight, ROWS_AT_ONCE rows per pass over a block's bytes, the bias added in fp32
   and the result rounded once. Included after the kernel's own BLOCK, ROWS_AT_ONCE (4), quantize_row and
   block_product. */

#ifndef SC2_INT4_ROWS_H
#define SC2_INT4_ROWS_H

/* block_product with M a constant, so that every accumulator can live in a register */
static void block_rows(const uint8_t *block, const uint16_t *sz, int N, int n0, int K, int group, int M,
                       const int8_t *const *xq, const float *sx, const int32_t *const *sum_q,
                       const float *const *sum_x, float *acc) {
    switch (M) { /* M <= ROWS_AT_ONCE */
    case 1: block_product(block, sz, N, n0, K, group, 1, xq, sx, sum_q, sum_x, acc); break;
    case 2: block_product(block, sz, N, n0, K, group, 2, xq, sx, sum_q, sum_x, acc); break;
    case 3: block_product(block, sz, N, n0, K, group, 3, xq, sx, sum_q, sum_x, acc); break;
    default: block_product(block, sz, N, n0, K, group, 4, xq, sx, sum_q, sum_x, acc); break;
    }
}

/* out (M, N) = x (M, K) times the weight, N a multiple of BLOCK, K of `group` (itself a multiple of 16).
   `scratch` holds M * (K + 4 + 8 * K / group) bytes. x, out and `bias` (N, or NULL; added before the
   output is rounded) are bf16 (`bf16` set) or fp32. Returns 0, or -1 for sizes it does not take. */
static int int4_rows_mm(const void *x, int M, int K, int N, const uint8_t *packed, const uint16_t *sz, int group,
                        const void *bias, void *out, int bf16, int threads, void *scratch) {
    if (N % BLOCK || group % 16 || K % group || M < 1) return -1;
    int groups = K / group;
    int8_t *xq_all = (int8_t *)scratch;
    float *sx = (float *)(xq_all + (size_t)M * K);
    int32_t *sum_q_all = (int32_t *)(sx + M);
    float *sum_x_all = (float *)(sum_q_all + (size_t)M * groups);
    size_t x_row = (size_t)K * (bf16 ? 2 : 4);
    for (int m = 0; m < M; m++)
        quantize_row((const char *)x + m * x_row, bf16, K, group, xq_all + (size_t)m * K, sx + m,
                     sum_q_all + (size_t)m * groups, sum_x_all + (size_t)m * groups);
    int blocks = N / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int block = 0; block < blocks; block++) {
        int n0 = block * BLOCK;
        float acc[ROWS_AT_ONCE * BLOCK];
        for (int m0 = 0; m0 < M; m0 += ROWS_AT_ONCE) {
            int rows = M - m0 < ROWS_AT_ONCE ? M - m0 : ROWS_AT_ONCE;
            const int8_t *xq[ROWS_AT_ONCE];
            const int32_t *sum_q[ROWS_AT_ONCE];
            const float *sum_x[ROWS_AT_ONCE];
            for (int m = 0; m < rows; m++) {
                xq[m] = xq_all + (size_t)(m0 + m) * K;
                sum_q[m] = sum_q_all + (size_t)(m0 + m) * groups;
                sum_x[m] = sum_x_all + (size_t)(m0 + m) * groups;
            }
            const uint8_t *weights = packed + (size_t)n0 * K / 2;
            block_rows(weights, sz, N, n0, K, group, rows, xq, sx + m0, sum_q, sum_x, acc);
            for (int m = 0; m < rows; m++) {
                size_t row = (size_t)(m0 + m) * N + n0;
                for (int j = 0; j < BLOCK; j++) {
                    float y = acc[m * BLOCK + j];
                    if (bias && bf16) y += bf16_to_float(((const uint16_t *)bias)[n0 + j]);
                    if (bias && !bf16) y += ((const float *)bias)[n0 + j];
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

#endif
