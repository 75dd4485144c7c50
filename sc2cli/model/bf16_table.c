/* An elementwise function of bf16 values by table: out[i] = table[x[i]], the bit patterns as indices.

   A bf16 value has 65,536 bit patterns, so any elementwise function of one is a table of 128 KB, and
   native_table.py fills it with PyTorch's own results (F.gelu's tanh form, which PyTorch computes in
   fp32 through Sleef's tanh: ~46-97 us for a 3B MLP's 12,288 values on two cores without native bf16,
   1.4-2.9 ms of a token). The table gives the same bits, read in ~5 us. No CPU flags: it runs on any CPU
   the compiler targets. */

#include <stdint.h>

/* out (n) = table[x] for x (n) bf16 bit patterns; several threads only for a prompt's many rows. */
int bf16_lookup(const uint16_t *x, long n, const uint16_t *table, uint16_t *out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (n >= 65536)
    for (long i = 0; i < n; i++) out[i] = table[x[i]];
    return 0;
}
