/* test_fastdiv: cuda/fastdiv.h's quotient equals the division's for every divisor the
 * kernels use and more (1..4096 and large ones up to 2^31 - 1), at the dividends where
 * a rounding error would show (0, around every multiple near the divisor, around 2^31)
 * and at random ones below 2^31; and past 2^31 fastdiv_div falls back to the division. */
#include <stdint.h>
#include <stdio.h>

#include "fastdiv.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static unsigned next31(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17; /* xorshift64 */
    return (unsigned)(rng >> 33);                         /* below 2^31 */
}

int main(void)
{
    long checks = 0, bad = 0;
    unsigned divisors[4096 + 8];
    int nd = 0;
    for (unsigned d = 1; d <= 4096; d++) divisors[nd++] = d;
    const unsigned big[] = {5376, 128256, 65535, 65537, 1u << 20, (1u << 20) + 1, 0x7fffffffu, 0x40000001u};
    for (int i = 0; i < 8; i++) divisors[nd++] = big[i];
    for (int k = 0; k < nd; k++) {
        const unsigned d = divisors[k];
        const fastdiv f = fastdiv_make(d);
        unsigned ns[64];
        int nn = 0;
        ns[nn++] = 0, ns[nn++] = 0x7fffffffu, ns[nn++] = 0x7ffffffeu;
        for (unsigned m = 1; m <= 4; m++) /* around the first multiples and the last below 2^31 */
            for (int e = -1; e <= 1; e++) {
                const uint64_t a = (uint64_t)m * d + e, z = (uint64_t)(0x7fffffffu / d - m + 1) * d + e;
                if (a < 0x80000000u) ns[nn++] = (unsigned)a;
                if (z < 0x80000000u && z <= 0x7fffffffu) ns[nn++] = (unsigned)z;
            }
        for (int r = 0; r < 24; r++) ns[nn++] = next31();
        for (int j = 0; j < nn; j++) {
            checks++;
            if (fastdiv_q(f, ns[j]) != ns[j] / d || fastdiv_div(f, ns[j]) != ns[j] / d) {
                if (bad++ < 10) printf("FAIL %u / %u: %u, want %u\n", ns[j], d, fastdiv_q(f, ns[j]), ns[j] / d);
            }
        }
        const size_t wide = ((size_t)1 << 33) + 12345u; /* past 2^31: the division */
        checks++;
        if (fastdiv_div(f, wide) != wide / d) bad++;
    }
    printf("%s fastdiv: %ld quotients against the division, %ld wrong\n", bad ? "FAIL" : "ok  ", checks, bad);
    return bad ? 1 : 0;
}
