/* fastdiv: n / d for an unsigned 32-bit n below 2^31 and a divisor d fixed for a kernel
 * launch, by a multiply-high and a shift instead of a division (the round-up method of
 * Granlund and Montgomery, "Division by invariant integers using multiplication", 1994):
 * with p = 31 + ceil(log2 d) and m = ceil(2^p / d) < 2^32, n / d = (n m) >> p. The
 * memory-bound kernels split flat indices into (row, column) with it: a 64-bit division
 * costs a GPU thread about as many instructions as the bytes it moves allow.
 * fastdiv_make runs on the host; the kernels take the struct by value. */
#ifndef PC_FASTDIV_H
#define PC_FASTDIV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define FASTDIV_HD __host__ __device__
#else
#define FASTDIV_HD
#endif

typedef struct fastdiv {
    unsigned d;     /* the divisor, >= 1 */
    unsigned mul;   /* m (0 for d = 1) */
    unsigned shift; /* p - 32 */
} fastdiv;

static inline fastdiv fastdiv_make(unsigned d)
{
    fastdiv f = {d, 0u, 0u};
    if (d <= 1) return f;
    unsigned l = 0; /* ceil(log2 d) */
    while ((1ull << l) < d) l++;
    const unsigned p = 31 + l;
    f.mul = (unsigned)(((1ull << p) + d - 1) / d);
    f.shift = p - 32;
    return f;
}

/* n / d for n < 2^31 */
static inline FASTDIV_HD unsigned fastdiv_q(fastdiv f, unsigned n)
{
    return f.d == 1 ? n : (unsigned)(((unsigned long long)n * f.mul) >> 32) >> f.shift;
}

/* i / d for any i: the multiply where i < 2^31 (every index of a tensor below 8 GiB of
 * fp32), a division otherwise */
static inline FASTDIV_HD size_t fastdiv_div(fastdiv f, size_t i)
{
    return i < 0x80000000u ? fastdiv_q(f, (unsigned)i) : i / f.d;
}

#endif
