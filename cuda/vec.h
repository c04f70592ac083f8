/* vec.h: V consecutive fp32 values for the elementwise and row kernels, V = 1 (one
 * 4-byte access) or V = 4 (one 16-byte load or store; 8 bytes for bf16 values). A thread
 * of a memory-bound kernel keeps its loads in flight until their values are used; at 4
 * bytes a load a multiprocessor's 2048 threads hold too few bytes in flight to cover the
 * memory's latency at the H100's or H200's bandwidth, and 16-byte loads hold four times
 * as many. A V = 4 access needs its address aligned to its size: the launches check
 * (vec_aligned) and fall back to V = 1, and the emulator refuses a misaligned one
 * (tests/gpu/simt_emu.h). */
#ifndef PC_VEC_H
#define PC_VEC_H

#ifndef PC_SIMT_EMU
#include <cuda_bf16.h>
#endif
#include <stddef.h>
#include <stdint.h>
#include <string.h>

template <int V> struct fvec {
    float v[V];
};

#ifndef PC_SIMT_EMU
__device__ __forceinline__ float4 vec_ld16(const float *p) { return *(const float4 *)p; }
__device__ __forceinline__ void vec_st16(float *p, float4 v) { *(float4 *)p = v; }
__device__ __forceinline__ void vec_st8(void *p, uint64_t v) { *(uint64_t *)p = v; }
__device__ __forceinline__ uint64_t vec_ld8(const void *p) { return *(const uint64_t *)p; }
/* a bf16's bits (the high half of an fp32) widened, exactly */
__device__ __forceinline__ float vec_widen_bf16(uint16_t b) { return __uint_as_float((unsigned)b << 16); }
/* lo and hi rounded to bf16 (nearest even), lo in the low half */
__device__ __forceinline__ uint32_t vec_pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
#else
inline float4 vec_ld16(const float *p) { return emu_ld4(p); }
inline void vec_st16(float *p, float4 v) { emu_st_aligned<float4>(p, v); }
inline void vec_st8(void *p, uint64_t v) { emu_st_aligned<uint64_t>(p, v); }
inline uint64_t vec_ld8(const void *p) { return emu_ld_aligned<uint64_t>(p); }
inline float vec_widen_bf16(uint16_t b)
{
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline uint32_t vec_pack_bf16(float lo, float hi)
{
    return (uint32_t)__float2bfloat16_rn(lo).bits | (uint32_t)__float2bfloat16_rn(hi).bits << 16;
}
#endif

/* V values from p (V = 4: p 16-byte aligned) */
template <int V> __device__ __forceinline__ fvec<V> vec_ld(const float *p)
{
    fvec<V> r;
    if constexpr (V == 4) {
        const float4 a = vec_ld16(p);
        r.v[0] = a.x, r.v[1] = a.y, r.v[2] = a.z, r.v[3] = a.w;
    } else {
        for (int j = 0; j < V; j++) r.v[j] = p[j];
    }
    return r;
}

/* V bf16 values from p, widened (V = 4: p 8-byte aligned) */
template <int V> __device__ __forceinline__ fvec<V> vec_ld(const uint16_t *p)
{
    fvec<V> r;
    if constexpr (V == 4) {
        const uint64_t a = vec_ld8(p);
        for (int j = 0; j < 4; j++) r.v[j] = vec_widen_bf16((uint16_t)(a >> (16 * j)));
    } else {
        for (int j = 0; j < V; j++) r.v[j] = vec_widen_bf16(p[j]);
    }
    return r;
}

/* x rounded to a bf16 value (nearest even), kept in fp32 */
__device__ __forceinline__ float vec_bf16_value(float x) { return vec_widen_bf16((uint16_t)vec_pack_bf16(x, 0.0f)); }

/* V values to p, in fp32 (V = 4: p 16-byte aligned) or rounded to bf16 (8-byte aligned) */
template <int V> __device__ __forceinline__ void vec_st(float *p, const fvec<V> &x)
{
    if constexpr (V == 4)
        vec_st16(p, make_float4(x.v[0], x.v[1], x.v[2], x.v[3]));
    else
        for (int j = 0; j < V; j++) p[j] = x.v[j];
}
template <int V> __device__ __forceinline__ void vec_st(__nv_bfloat16 *p, const fvec<V> &x)
{
    if constexpr (V == 4)
        vec_st8(p, (uint64_t)vec_pack_bf16(x.v[2], x.v[3]) << 32 | vec_pack_bf16(x.v[0], x.v[1]));
    else
        for (int j = 0; j < V; j++) p[j] = __float2bfloat16_rn(x.v[j]);
}

/* The width of a flat kernel's access, as a type (vec_flat's op tells V by it). */
template <int V> struct vec_width {
    static constexpr int value = V;
};

/* The grid-stride loop of a flat elementwise kernel over [0, n): op(i, vec_width<4>())
 * for the groups of 4 values from i where vec (every pointer op touches aligned for a
 * 4-value access), then op(i, vec_width<1>()) for each value left (all of them when not
 * vec). The grid: vec_flat_grid. */
template <typename Op> __device__ __forceinline__ void vec_flat(size_t n, bool vec, Op op)
{
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    const size_t n4 = vec ? n / 4 : 0;
    for (size_t g = t; g < n4; g += stride) op(4 * g, vec_width<4>());
    for (size_t i = 4 * n4 + t; i < n; i += stride) op(i, vec_width<1>());
}

/* Whether p is aligned to a V = 4 access of its elements (size bytes each). */
static inline bool vec_aligned(const void *p, size_t size) { return (uintptr_t)p % (4 * size) == 0; }

#endif
