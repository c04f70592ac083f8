/* rows.cuh: the launches of the elementwise kernels over (N, f) rows (row stride ld), 4
 * values a thread where widths, strides and alignment allow (vec.h), and the one such
 * kernel both the backend and the attention kernels run: the rounding of fp32 rows into
 * bf16. Included by backend_cuda.cu and attention_tc.cu (and so by the host emulator). */
#ifndef PC_ROWS_CUH
#define PC_ROWS_CUH

#include "fastdiv.h"
#include "launch.h"
#include "vec.h"

/* Blocks for n threads of `threads` each, capped: grid-stride loops cover the rest. */
static inline unsigned grid_for(size_t n, unsigned threads)
{
    size_t g = (n + threads - 1) / threads;
    if (g > 65535u * 16u) g = 65535u * 16u;
    return g ? (unsigned)g : 1u;
}

/* Whether a row kernel over (N, d) rows takes V = 4: d a multiple of 4 and its pointers
 * aligned for it (aligned). */
static inline bool rows_v4(size_t d, bool aligned) { return d % 4 == 0 && aligned; }

/* The elementwise kernels over (N, f) rows V values at a time: a flat index g of the
 * N f / V groups as the row n and first column i; fv divides by f / V. */
template <int V> __device__ __forceinline__ void vec_row_col(size_t g, fastdiv fv, int f, size_t *n, size_t *i)
{
    *n = fastdiv_div(fv, g);
    *i = (g - *n * (size_t)(f / V)) * V;
}

/* The launch of an (N, f) elementwise kernel (row stride ld): V = 4 when f and ld are
 * multiples of 4 and its pointers are aligned for it (aligned), else 1; groups of V values,
 * fv dividing by f / V, and the grid (256 threads a block). */
struct rows_launch {
    bool v4;
    size_t groups;
    fastdiv fv;
    unsigned grid;
};
static inline rows_launch rows_plan(size_t N, size_t f, size_t ld, bool aligned)
{
    const int V = rows_v4(f | ld, aligned) ? 4 : 1; /* f | ld: both multiples of 4 */
    const size_t groups = N * f / V;
    return {V == 4, groups, fastdiv_make((unsigned)(f / V)), grid_for(groups, 256)};
}

/* dst (rows, cols) row stride ld_dst = src (rows, cols), row stride ld, converted: fp32 to
 * bf16 (nearest even) or bf16 (its bits, uint16_t) to fp32, V values at a time (V divides
 * cols, ld and ld_dst, or rows cols when dense); fc divides by cols / V (unused when
 * dense) */
template <int V, typename DstT, typename SrcT>
__global__ void k_convert_rows(DstT *dst, size_t ld_dst, const SrcT *src, size_t rows, size_t cols, size_t ld,
                               fastdiv fc)
{
    const size_t n = rows * cols / V, cv = cols / V;
    const int dense = ld == cols && ld_dst == cols; /* contiguous: no division */
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = dense ? 0 : fastdiv_div(fc, i), col = (dense ? i : i - r * cv) * V;
        vec_st<V>(dst + r * ld_dst + col, vec_ld<V>(src + r * ld + col));
    }
}

/* Queues k_convert_rows over (rows, cols) on stream s (the caller checks the launch). */
template <typename DstT, typename SrcT>
static inline void convert_rows(cudaStream_t s, DstT *dst, size_t ld_dst, const SrcT *src, size_t rows, size_t cols,
                                size_t ld)
{
    const bool aligned = vec_aligned(src, sizeof(SrcT)) && vec_aligned(dst, sizeof(DstT));
    const size_t n = rows * cols; /* contiguous: one row of them, no division */
    const rows_launch L =
        ld == cols && ld_dst == cols ? rows_plan(1, n, n, aligned) : rows_plan(rows, cols, ld | ld_dst, aligned);
    if (L.v4)
        PC_LAUNCH((k_convert_rows<4, DstT, SrcT>), L.grid, 256, 0, s)(dst, ld_dst, src, rows, cols, ld, L.fv);
    else
        PC_LAUNCH((k_convert_rows<1, DstT, SrcT>), L.grid, 256, 0, s)(dst, ld_dst, src, rows, cols, ld, L.fv);
}

/* dst = src rounded to bf16 (nearest even), and back: src's bf16 bits widened (exact) */
static inline void round_rows_bf16(cudaStream_t s, __nv_bfloat16 *dst, size_t ld_dst, const float *src, size_t rows,
                                   size_t cols, size_t ld)
{
    convert_rows(s, dst, ld_dst, src, rows, cols, ld);
}
static inline void widen_rows_bf16(cudaStream_t s, float *dst, size_t ld_dst, const uint16_t *src, size_t rows,
                                   size_t cols, size_t ld)
{
    convert_rows(s, dst, ld_dst, src, rows, cols, ld);
}

#endif
