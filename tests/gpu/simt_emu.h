/* simt_emu: enough of CUDA's execution model to run cuda/attention_tc_kernels.cuh on
 * the host, so that its indexing, masking, tiling, online softmax and barriers are
 * checked on machines without a GPU.
 *
 * A launch runs the blocks one after another; each block's threads are host threads
 * (std::thread) sharing one dynamic shared-memory buffer, which starts filled with NaN
 * bytes so that a read of a value nobody wrote shows up. __syncthreads and __syncwarp
 * are barriers over the block's and the warp's threads (every kernel here keeps them
 * warp- and block-uniform, as CUDA requires), and __shfl_xor_sync exchanges through a
 * per-warp array between two warp barriers.
 *
 * WMMA (nvcuda::wmma, m16n16k16) follows its documented element layouts: a row-major
 * operand's element (r, c) at ptr[r * ldm + c], a column-major one's at ptr[c * ldm + r],
 * for matrix_a (M x K), matrix_b (K x N) and the accumulator alike. Every lane keeps the
 * whole 16 x 16 fragment and multiplies it in fp32 (the real fragment is spread over the
 * lanes, which no correct kernel can observe); store_matrix_sync is written by lane 0,
 * and a kernel must __syncwarp before other lanes read what it stored, as on a GPU. */
#ifndef PC_SIMT_EMU_H
#define PC_SIMT_EMU_H

#define PC_SIMT_EMU 1

#include <algorithm>
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

using std::min;

#define __global__
#define __device__
#define __align__(n) alignas(n)

struct emu_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
typedef emu_dim3 dim3;

/* What the threads of the running block share. */
struct emu_block {
    std::unique_ptr<std::barrier<>> block_bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bar; /* one per warp */
    std::vector<float> shfl;                               /* 32 per warp */
    char *smem = nullptr;
};

inline thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local emu_block *emu_cur = nullptr;

inline void __syncthreads() { emu_cur->block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    (void)mask;
    emu_cur->warp_bar[threadIdx.x >> 5]->arrive_and_wait();
}
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask)
{
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    float *slot = emu_cur->shfl.data() + 32 * w;
    slot[l] = v;
    __syncwarp(mask);
    const float r = slot[l ^ (unsigned)lane_mask];
    __syncwarp(mask);
    return r;
}
inline char *atc_smem_base() { return emu_cur->smem; }

/* bf16 as its bit pattern; conversion rounds to nearest even, as __float2bfloat16_rn. */
struct __nv_bfloat16 {
    uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x40)}; /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline float emu_to_float(__nv_bfloat16 h)
{
    const uint32_t u = (uint32_t)h.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float emu_to_float(float f) { return f; }

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    float x[16][16];
};

template <typename Use, typename T, typename L>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm)
{
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.x[r][c] = emu_to_float(std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm, layout_t l)
{
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r][c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t l)
{
    if ((threadIdx.x & 31) != 0) return;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r][c];
}

template <typename Use, typename T, typename L> inline void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, float v)
{
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r][c] = v;
}

template <typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, TA, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c)
{
    float out[16][16];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.x[i][j];
            for (int k = 0; k < 16; k++) s += a.x[i][k] * b.x[k][j];
            out[i][j] = s;
        }
    std::memcpy(d.x, out, sizeof out);
}
} // namespace wmma
} // namespace nvcuda

/* Run body() as grid x threads CUDA threads with smem_bytes of dynamic shared memory. */
template <typename F> void emu_launch(dim3 grid, unsigned threads, size_t smem_bytes, F body)
{
    const unsigned warps = (threads + 31) / 32;
    char *smem = (char *)std::aligned_alloc(128, (smem_bytes + 127) / 128 * 128 + 128);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                emu_block blk;
                blk.block_bar = std::make_unique<std::barrier<>>((std::ptrdiff_t)threads);
                for (unsigned w = 0; w < warps; w++)
                    blk.warp_bar.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, threads - 32 * w)));
                blk.shfl.assign(32 * warps, 0.0f);
                std::memset(smem, 0xff, smem_bytes); /* NaN in fp32 and bf16 */
                blk.smem = smem;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < threads; t++)
                    ts.emplace_back([&, t] {
                        threadIdx = emu_dim3{t, 0, 0};
                        blockIdx = emu_dim3{bx, by, bz};
                        blockDim = emu_dim3{threads, 1, 1};
                        gridDim = grid;
                        emu_cur = &blk;
                        body();
                    });
                for (auto &t : ts) t.join();
            }
    std::free(smem);
}

#endif
