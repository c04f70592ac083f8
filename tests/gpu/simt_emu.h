/* simt_emu: enough of CUDA's execution model to run the kernels of cuda/ on the host, so
 * that their indexing, masking, reductions and barriers are checked on machines without
 * a GPU (tests/gpu/emu_include/ adds the runtime and cuBLAS calls the backend makes).
 *
 * A launch runs its blocks one after another on the calling host thread, each CUDA
 * thread of a block a fiber (ucontext) that runs until it waits at a barrier or returns.
 * __syncthreads and __syncwarp are barriers over the block's and the warp's threads; a
 * thread that returns early drops out of them, as an exited GPU thread does, and a block
 * whose threads all wait at barriers that cannot open aborts naming the block. __shared__
 * variables are function statics (one block runs at a time) and the dynamic shared
 * memory is one buffer; both keep what the previous block left, and the dynamic buffer
 * starts as NaN bytes, so that a read of a value nobody wrote shows up. Warp shuffles
 * exchange through a per-warp array between two warp barriers (__ballot_sync too); with
 * one host thread, atomicAdd is a plain add. Blocks run in index order, or reversed or
 * shuffled (PC_EMU_BLOCK_ORDER, emu_block_order), to show a result that depends on it.
 *
 * mma.sync (m16n8k16, bf16 in, fp32 accumulation: emu_mma_16816) takes each lane's
 * fragment registers in the layout PTX documents and exchanges them through a per-warp
 * array between two warp barriers, as the tensor core gathers them from the lanes;
 * ldmatrix (m8n8.x4, plain and .trans: emu_ldmatrix_x4) gathers the rows whose
 * addresses the lanes give the same way. cp.async (4, 8 or 16 bytes, global to shared:
 * emu_cp_async, emu_cp_commit, emu_cp_wait) fills its destination with NaN bytes when
 * issued and copies only when the thread waits for its group, so that a tile read before
 * its copies are waited for and made visible by a barrier, or written while others still
 * read it, shows up as NaN.
 *
 * What a GPU refuses, the emulator refuses too, so that a launch or an access that only a
 * small test shape gets right fails here and not on the first GPU run:
 *  - launch configurations: 1..1024 threads a block, gridDim.x 1..2^31-1, gridDim.y and
 *    .z 1..65535, dynamic shared memory above 48 KiB only for a kernel whose
 *    cudaFuncAttributeMaxDynamicSharedMemorySize allows it (the launch fails with
 *    cudaErrorInvalidConfiguration / cudaErrorInvalidValue, which cudaGetLastError
 *    returns once, and is not run);
 *  - vector loads and stores aligned to their size (emu_ld4: 16 bytes, emu_st_aligned),
 *    and ldmatrix rows 16-byte aligned inside the block's dynamic shared memory;
 *  - streams: a kernel, copy, memset or cuBLAS call put on a stream runs when that
 *    stream or the device is synchronized, not before (emu_streams.cpp), so that a host
 *    read or another stream's work that does not wait for it sees the old contents;
 *  - device memory (emu_include/cuda_runtime.h): every buffer lies between red zones,
 *    checked after every kernel and cuBLAS call and at cudaFree (a write outside its
 *    buffer aborts naming the kernel; a read there reads a huge negative number), and
 *    copies, memsets and cuBLAS operands must lie inside one live buffer. */
#ifndef PC_SIMT_EMU_H
#define PC_SIMT_EMU_H

#define PC_SIMT_EMU 1

#include <math.h>
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <cstdio>
#include <type_traits>
#include <vector>

using std::max;
using std::min;

#define __global__
#define __device__
#define __forceinline__ inline
#define __host__
#define __shared__ static
#define __align__(n) alignas(n)

/* ---------------------------------------------------------------- device memory */

/* A live buffer of cudaMalloc or cudaMallocHost: `bytes` at its key, with EMU_RED bytes of
 * `red` on both sides that nothing may write. The red bytes (0xf0..0xfe) differ between
 * buffers and read as huge negative numbers in fp32 and bf16 (a NaN would be written back
 * unchanged by a kernel that reads one past its input and writes one past its output). */
#define EMU_RED 256
struct emu_buf {
    size_t bytes;
    unsigned char red; /* the red zones' byte */
};
inline std::map<uintptr_t, emu_buf> emu_bufs;

[[noreturn]] inline void emu_fail(const char *what)
{
    std::fprintf(stderr, "simt_emu: %s\n", what);
    std::abort();
}

/* Abort naming `after` when a red zone of a live buffer was written. */
inline void emu_check_red(const char *after)
{
    for (const auto &kv : emu_bufs) {
        const unsigned char *p = (const unsigned char *)kv.first;
        for (long long i = -EMU_RED; i < EMU_RED; i++) {
            const long long at = i < 0 ? i : (long long)kv.second.bytes + i;
            if (p[at] == kv.second.red) continue;
            char msg[256];
            std::snprintf(msg, sizeof msg, "%s wrote outside a device buffer of %zu bytes (at byte %lld of it)", after,
                          kv.second.bytes, at);
            emu_fail(msg);
        }
    }
}

/* Abort unless [p, p + bytes) lies inside one live buffer. */
inline void emu_check_range(const void *p, size_t bytes, const char *what)
{
    const uintptr_t a = (uintptr_t)p;
    auto it = emu_bufs.upper_bound(a);
    if (it != emu_bufs.begin()) {
        --it;
        if (a >= it->first && a - it->first <= it->second.bytes && bytes <= it->second.bytes - (a - it->first))
            return;
    }
    char msg[256];
    if (it != emu_bufs.end() && a >= it->first && a - it->first <= it->second.bytes)
        std::snprintf(msg, sizeof msg, "%s: %zu bytes at byte %zu of a device buffer of %zu bytes run past its end",
                      what, bytes, (size_t)(a - it->first), it->second.bytes);
    else
        std::snprintf(msg, sizeof msg, "%s: %p is not in a live device buffer", what, p);
    emu_fail(msg);
}

/* ---------------------------------------------------------------- streams */

/* A stream: its work, in order, not yet run (emu_streams.cpp runs it when the stream or
 * the device is synchronized: as late as CUDA allows, so that a read of a result before
 * the wait that orders it reads what was there before). */
struct emu_stream {
    std::deque<std::function<void()>> work;
};
inline std::vector<emu_stream *> emu_stream_list; /* live streams, in creation order */

/* Put f on stream s (the null stream runs it at once). */
inline void emu_put(emu_stream *s, std::function<void()> f)
{
    if (!s) {
        f();
        return;
    }
    s->work.push_back(std::move(f));
}

/* Run stream s's work (all streams' when s is NULL). */
inline void emu_run_stream(emu_stream *s)
{
    if (!s) {
        for (emu_stream *t : emu_stream_list) emu_run_stream(t);
        return;
    }
    while (!s->work.empty()) {
        std::function<void()> f = std::move(s->work.front());
        s->work.pop_front();
        f();
    }
}

/* The error of the last failed launch, which cudaGetLastError returns once (0: none). */
inline int emu_launch_error = 0;
/* cudaFuncAttributeMaxDynamicSharedMemorySize of each kernel that set it. */
inline std::map<const void *, size_t> emu_smem_optin;

struct emu_dim3 {
    unsigned x, y, z;
    emu_dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef emu_dim3 dim3;

/* The running block: one fiber per CUDA thread, all on the calling host thread,
 * switched at barriers (_setjmp/_longjmp): a fiber runs until it waits at __syncthreads
 * or __syncwarp or returns; a barrier opens when every thread of its block (or warp) that
 * has not returned waits at it. Each round runs the threads in ascending or descending
 * order (a fixed pseudo-random sequence), so that a thread reading what another writes
 * without a barrier between (a race on a GPU) reads it before it is written in some
 * rounds; and now and then one warp is held back for some rounds while the others go on
 * through their warp barriers up to the next block barrier, as warps drift apart on a
 * GPU, so that a warp still reading what the others overwrite without a block barrier
 * between reads the new contents. Fibers are made once (ucontext) and kept: after its kernel body returns a fiber
 * parks, and resuming it runs the body again for the next block or launch. */
#define EMU_STACK (64 * 1024)

enum { EMU_RUN = 0, EMU_AT_BLOCK, EMU_AT_WARP, EMU_DONE };

struct emu_fiber {
    ucontext_t ctx;                 /* its start */
    jmp_buf jb;                     /* where it parked */
    bool started = false;
    std::unique_ptr<char[]> stack;  /* EMU_STACK bytes */
    int wait = EMU_DONE;            /* EMU_RUN, waiting at a barrier, or its body returned */
};

/* Everything the fibers share. */
/* One cp.async copy: n bytes from src to dst, or zeros where src is null. */
struct emu_cp {
    char *dst;
    const char *src;
    unsigned n;
};
struct emu_state {
    std::vector<std::unique_ptr<emu_fiber>> fibers; /* grown to the largest block */
    jmp_buf sched;                                  /* the scheduler, while a fiber runs */
    unsigned cur = 0;                               /* the running fiber */
    const std::function<void()> *body = nullptr;    /* the kernel of this launch */
    std::vector<double> shfl;                       /* 32 per warp */
    std::vector<uint32_t> mma;                      /* EMU_MMA_WORDS per lane (emu_mma_16816) */
    std::vector<const char *> ldsm;                 /* 32 row addresses per warp (emu_ldmatrix_x4) */
    /* per thread: its cp.async copies not yet committed, and its committed groups, oldest
     * first (emu_cp_async) */
    std::vector<std::vector<emu_cp>> cp_open;
    std::vector<std::deque<std::vector<emu_cp>>> cp_groups;
    char *smem = nullptr;                           /* dynamic shared memory */
    size_t smem_bytes = 0;
};

inline emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
inline emu_state emu;

/* Park the running fiber with state w and go back to the scheduler. */
inline void emu_park(int w)
{
    emu_fiber &f = *emu.fibers[emu.cur];
    f.wait = w;
    if (!_setjmp(f.jb)) _longjmp(emu.sched, 1);
}
inline void __syncthreads() { emu_park(EMU_AT_BLOCK); }
inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    (void)mask;
    emu_park(EMU_AT_WARP);
}

/* Lane `src` of v across the warp (every lane of the warp takes part). */
template <typename T> inline T emu_shfl(T v, unsigned src)
{
    static_assert(sizeof(T) <= sizeof(double), "shuffle of a wide type");
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    double *slot = emu.shfl.data() + 32 * w;
    std::memcpy(&slot[l], &v, sizeof v);
    __syncwarp();
    T r;
    std::memcpy(&r, &slot[src & 31], sizeof r);
    __syncwarp();
    return r;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int lane_mask)
{
    return emu_shfl(v, (threadIdx.x & 31) ^ (unsigned)lane_mask);
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src_lane) { return emu_shfl(v, (unsigned)src_lane); }
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned delta)
{
    const unsigned l = threadIdx.x & 31;
    return emu_shfl(v, l + delta < 32 ? l + delta : l);
}

/* The lanes whose pred is non-zero, as bits (every lane of the warp takes part). */
inline unsigned __ballot_sync(unsigned, int pred)
{
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    double *slot = emu.shfl.data() + 32 * w;
    slot[l] = pred ? 1.0 : 0.0;
    __syncwarp();
    unsigned bits = 0;
    for (unsigned k = 0; k < 32 && 32 * w + k < blockDim.x; k++) bits |= slot[k] != 0.0 ? 1u << k : 0u;
    __syncwarp();
    return bits;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <typename T> inline T atomicAdd(T *p, T v) /* one host thread: a plain add is atomic */
{
    const T old = *p;
    *p = old + v;
    return old;
}

inline float __uint_as_float(unsigned u)
{
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline char *atc_smem_base() { return emu.smem; }

/* CUDA's 8- and 16-byte vectors. */
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

/* Refuses, as a GPU does, an n-byte access (op: "load from", "store to") at p not aligned
 * to n. */
inline void emu_aligned(const void *p, size_t n, const char *op)
{
    if ((uintptr_t)p % n == 0) return;
    char msg[96];
    std::snprintf(msg, sizeof msg, "%zu-byte %s %p, not %zu-byte aligned", n, op, p, n);
    emu_fail(msg);
}
/* Refuses an n-byte access (op as above) at p outside the block's dynamic shared memory. */
inline void emu_in_smem(const void *p, size_t n, const char *op)
{
    const char *c = (const char *)p;
    if (c >= emu.smem && c + n <= emu.smem + emu.smem_bytes) return;
    char msg[96];
    std::snprintf(msg, sizeof msg, "%zu-byte %s %p, outside the block's dynamic shared memory", n, op, p);
    emu_fail(msg);
}
/* A T-sized load at p (emu_ld4: 16 bytes, a float4) and a T-sized store (emu_st_aligned). */
template <typename T> inline T emu_ld_aligned(const void *p)
{
    emu_aligned(p, sizeof(T), "load from");
    T r;
    std::memcpy(&r, p, sizeof r);
    return r;
}
inline float4 emu_ld4(const float *p) { return emu_ld_aligned<float4>(p); }
template <typename T> inline void emu_st_aligned(void *p, T v)
{
    emu_aligned(p, sizeof(T), "store to");
    std::memcpy(p, &v, sizeof v);
}

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
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((uint32_t)h.bits << 16); }
inline float emu_to_float(__nv_bfloat16 h) { return __bfloat162float(h); }
inline float emu_to_float(float f) { return f; }

/* mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX): d (16 x 8, fp32) += a (16 x 16,
 * bf16) times b (16 x 8, bf16), each held across the warp in the fragments PTX documents,
 * with g = lane / 4 and t = lane % 4: a's registers hold (row, col) = (g, 2t..2t+1),
 * (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..), the lower column in the low half; b's
 * (k, n) = (2t..2t+1, g), (2t + 8.., g); d's (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8,
 * 2t + 1). Every lane of the warp takes part; each lane's operands go through the warp's
 * slots, as through the tensor core. Sums in fp32, k ascending. */
#define EMU_MMA_WORDS 6
/* the bf16 in the low (hi 0) or high half of a register */
inline float emu_bf16_half(uint32_t w, int hi) { return __bfloat162float(__nv_bfloat16{(uint16_t)(hi ? w >> 16 : w)}); }
inline void emu_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2])
{
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31, g = l >> 2, t = l & 3;
    uint32_t *slot = emu.mma.data() + (size_t)32 * EMU_MMA_WORDS * w;
    std::memcpy(slot + EMU_MMA_WORDS * l, a, 4 * sizeof *a);
    std::memcpy(slot + EMU_MMA_WORDS * l + 4, b, 2 * sizeof *b);
    __syncwarp();
    float out[4];
    for (int i = 0; i < 4; i++) {
        const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        float s = d[i];
        for (unsigned k = 0; k < 16; k++) {
            /* a (row, k): lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8) */
            const uint32_t *la = slot + EMU_MMA_WORDS * (4 * (row & 7) + ((k & 7) >> 1));
            const float av = emu_bf16_half(la[(row >= 8) + 2 * (k >= 8)], (int)(k & 1));
            /* b (k, col): lane 4 col + (k % 8) / 2, register k >= 8 */
            const uint32_t *lb = slot + EMU_MMA_WORDS * (4 * col + ((k & 7) >> 1)) + 4;
            s += av * emu_bf16_half(lb[k >= 8], (int)(k & 1));
        }
        out[i] = s;
    }
    __syncwarp(); /* every lane has read the slots before any lane's next product writes them */
    std::memcpy(d, out, sizeof out);
}

/* ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 (PTX): four 8 x 8 matrices of 16-bit
 * elements from shared memory, lanes 8i..8i+7 giving the addresses of matrix i's rows 0..7
 * (16 bytes each, 16-byte aligned); r[i] of lane l holds matrix i's (row, col) = (l / 4,
 * 2 (l % 4)) and (l / 4, 2 (l % 4) + 1), the lower column in the low half; .trans (trans
 * 1) the transposed matrix's: (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4). Every lane of
 * the warp takes part; the addresses go through the warp's slots. */
inline void emu_ldmatrix_x4(uint32_t r[4], const void *p, int trans)
{
    const char *row = (const char *)p;
    emu_aligned(row, 16, "ldmatrix row at");
    emu_in_smem(row, 16, "ldmatrix row at");
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    const char **slot = emu.ldsm.data() + 32 * w;
    slot[l] = row;
    __syncwarp();
    for (unsigned i = 0; i < 4; i++) {
        uint16_t h[2];
        for (unsigned e = 0; e < 2; e++) {
            const unsigned rr = trans ? 2 * (l & 3) + e : l >> 2, cc = trans ? l >> 2 : 2 * (l & 3) + e;
            std::memcpy(&h[e], slot[8 * i + rr] + 2 * cc, 2);
        }
        r[i] = (uint32_t)h[0] | (uint32_t)h[1] << 16;
    }
    __syncwarp(); /* every lane has read the slots before any lane's next load writes them */
}

/* cp.async.{ca,cg}.shared.global of `size` bytes (4, 8 or 16; .cg takes 16 only): dst in
 * the block's dynamic shared memory and src both aligned to size; src_bytes (PTX's
 * src-size) size copies, 0 reads nothing and fills dst with zeros (any other aborts). dst
 * holds NaN bytes until the thread waits for the group. */
inline void emu_cp_async(void *dst, const void *src, unsigned size, unsigned src_bytes)
{
    char *d = (char *)dst;
    if (size != 4 && size != 8 && size != 16) {
        fprintf(stderr, "simt_emu: cp.async of %u bytes: PTX copies 4, 8 or 16\n", size);
        abort();
    }
    emu_aligned(d, size, "cp.async to");
    emu_aligned(src, size, "cp.async from");
    emu_in_smem(d, size, "cp.async to");
    if (src_bytes != 0 && src_bytes != size) {
        fprintf(stderr, "simt_emu: cp.async src-size %u of %u bytes: only 0 and %u are emulated\n", src_bytes, size,
                size);
        abort();
    }
    std::memset(d, 0xff, size);
    emu.cp_open[threadIdx.x].push_back({d, src_bytes ? (const char *)src : nullptr, size}); /* nullptr: zeros */
}
/* cp.async.commit_group: the thread's copies issued since its last commit become a group. */
inline void emu_cp_commit()
{
    emu.cp_groups[threadIdx.x].push_back(std::move(emu.cp_open[threadIdx.x]));
    emu.cp_open[threadIdx.x].clear();
}
/* cp.async.wait_group n: the thread's groups but the newest n are done (copied now). */
inline void emu_cp_wait(unsigned n)
{
    auto &g = emu.cp_groups[threadIdx.x];
    while (g.size() > n) {
        for (auto &c : g.front())
            if (c.src)
                std::memcpy(c.dst, c.src, c.n);
            else
                std::memset(c.dst, 0, c.n);
        g.pop_front();
    }
}


[[noreturn]] inline void emu_fiber_main()
{
    for (;;) {
        (*emu.body)();
        emu_park(EMU_DONE);
    }
}

/* Open the barriers whose threads all wait (the block's, or a warp's); 1 when one opened. */
inline int emu_release(unsigned threads)
{
    bool all_block = true, any_block = false;
    for (unsigned t = 0; t < threads; t++) {
        const int w = emu.fibers[t]->wait;
        if (w == EMU_RUN || w == EMU_AT_WARP) all_block = false;
        any_block |= w == EMU_AT_BLOCK;
    }
    if (all_block && any_block) {
        for (unsigned t = 0; t < threads; t++)
            if (emu.fibers[t]->wait == EMU_AT_BLOCK) emu.fibers[t]->wait = EMU_RUN;
        return 1;
    }
    int opened = 0;
    for (unsigned w0 = 0; w0 < threads; w0 += 32) {
        const unsigned w1 = std::min(threads, w0 + 32);
        bool all = true, any = false;
        for (unsigned t = w0; t < w1; t++) {
            const int w = emu.fibers[t]->wait;
            if (w == EMU_RUN || w == EMU_AT_BLOCK) all = false;
            any |= w == EMU_AT_WARP;
        }
        if (all && any) {
            for (unsigned t = w0; t < w1; t++)
                if (emu.fibers[t]->wait == EMU_AT_WARP) emu.fibers[t]->wait = EMU_RUN;
            opened = 1;
        }
    }
    return opened;
}

/* Run fiber t until it parks: the first time from its start (setcontext), later from
 * where it parked. -Wclobbered does not apply: nothing here changes between the _setjmp
 * and the fiber's _longjmp back to it, and getcontext's context is only ever entered at
 * emu_fiber_main. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wclobbered"
__attribute__((noinline)) inline void emu_resume(unsigned t)
{
    emu_fiber &f = *emu.fibers[t];
    emu.cur = t;
    threadIdx = emu_dim3(t, 0, 0);
    if (_setjmp(emu.sched)) return; /* it parked */
    if (!f.started) {
        f.started = true;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = EMU_STACK;
        f.ctx.uc_link = nullptr; /* emu_fiber_main never returns */
        makecontext(&f.ctx, emu_fiber_main, 0);
        setcontext(&f.ctx);
    }
    _longjmp(f.jb, 1);
}
#pragma GCC diagnostic pop

/* 0 when a GPU would launch kernel `name` (entry point `func`) as grid x threads with
 * smem_bytes of dynamic shared memory; else says why on stderr and returns the
 * launch's error (cudaErrorInvalidConfiguration 9, cudaErrorInvalidValue 1). */
inline int emu_launch_refused(const char *name, const void *func, dim3 grid, unsigned threads, size_t smem_bytes)
{
    const char *why = nullptr;
    int err = 9;
    if (threads < 1 || threads > 1024)
        why = "threads per block outside 1..1024";
    else if (grid.x < 1 || grid.x > 0x7fffffffu || grid.y < 1 || grid.y > 65535 || grid.z < 1 || grid.z > 65535)
        why = "grid outside 1..2^31-1 x 1..65535 x 1..65535";
    else if (smem_bytes > 48 * 1024) {
        auto it = emu_smem_optin.find(func);
        if (it == emu_smem_optin.end() || smem_bytes > it->second)
            why = "dynamic shared memory above 48 KiB beyond the kernel's MaxDynamicSharedMemorySize", err = 1;
    }
    if (!why) return 0;
    std::fprintf(stderr, "simt_emu: launch of %s refused: %s (grid %u x %u x %u, %u threads, %zu bytes shared)\n",
                 name, why, grid.x, grid.y, grid.z, threads, smem_bytes);
    return err;
}

/* The order a launch runs its n blocks in, by PC_EMU_BLOCK_ORDER (read at every launch):
 * unset or "index", linear index order, x fastest (an empty list); "reverse"; "shuffle", a
 * pseudo-random permutation, another one at every launch. A GPU runs blocks in no order it
 * promises, so a kernel whose result depends on it (atomics summing floats, say) gives
 * other bits under another order. */
inline std::vector<size_t> emu_block_order(size_t n)
{
    static uint64_t launches = 0;
    const char *how = std::getenv("PC_EMU_BLOCK_ORDER");
    std::vector<size_t> idx;
    if (!how || !*how || !std::strcmp(how, "index")) return idx;
    idx.resize(n);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    if (!std::strcmp(how, "reverse")) {
        std::reverse(idx.begin(), idx.end());
    } else if (!std::strcmp(how, "shuffle")) {
        uint64_t s = 0x9e3779b97f4a7c15ull * ++launches;
        for (size_t i = n; i > 1; i--) { /* Fisher-Yates on splitmix64 */
            uint64_t z = (s += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            std::swap(idx[i - 1], idx[(z ^ (z >> 31)) % i]);
        }
    } else {
        emu_fail("PC_EMU_BLOCK_ORDER is not index, reverse or shuffle");
    }
    return idx;
}

/* Run body() as grid x threads CUDA threads with smem_bytes of dynamic shared memory. */
inline void emu_launch(const char *name, dim3 grid, unsigned threads, size_t smem_bytes,
                       const std::function<void()> &body)
{
    const size_t n_blocks = (size_t)grid.x * grid.y * grid.z;
    if (emu.body) emu_fail("a kernel launched from inside a kernel");
    while (emu.fibers.size() < threads) {
        emu.fibers.push_back(std::make_unique<emu_fiber>());
        emu.fibers.back()->stack.reset(new char[EMU_STACK]);
    }
    char *smem = (char *)std::aligned_alloc(128, (smem_bytes + 127) / 128 * 128 + 128);
    emu.shfl.assign(32 * ((threads + 31) / 32), 0.0);
    emu.mma.assign(32 * EMU_MMA_WORDS * ((threads + 31) / 32), 0u);
    emu.ldsm.assign(32 * ((threads + 31) / 32), nullptr);
    emu.cp_open.assign(threads, {});
    emu.cp_groups.assign(threads, {});
    emu.smem = smem;
    emu.smem_bytes = smem_bytes;
    emu.body = &body;
    blockDim = emu_dim3(threads, 1, 1);
    gridDim = grid;
    uint64_t order = 1; /* picks each round's thread order */
    const std::vector<size_t> blocks = emu_block_order(n_blocks);
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t i = blocks.empty() ? b : blocks[b];
        blockIdx = emu_dim3((unsigned)(i % grid.x), (unsigned)(i / grid.x % grid.y),
                            (unsigned)(i / ((size_t)grid.x * grid.y)));
        std::memset(smem, 0xff, smem_bytes); /* NaN in fp32 and bf16 */
        for (unsigned t = 0; t < threads; t++) {
            emu.fibers[t]->wait = EMU_RUN;
            emu.cp_open[t].clear(); /* a copy never waited for is lost with its block */
            emu.cp_groups[t].clear();
        }
        const unsigned n_warps = (threads + 31) / 32;
        int slow = -1, slow_rounds = 0; /* the warp held back, for so many more rounds */
        for (;;) {
            bool ran = false, live = false, held = false;
            order = order * 6364136223846793005ull + 1442695040888963407ull; /* fixed sequence (LCG) */
            const bool down = order >> 63;
            if (slow < 0 && n_warps > 1 && (order >> 40) % 8 == 0)
                slow = (int)((order >> 8) % n_warps), slow_rounds = 1 + (int)((order >> 24) % 32);
            for (unsigned k = 0; k < threads; k++) {
                const unsigned t = down ? threads - 1 - k : k; /* either order: a missing barrier shows */
                const int w = emu.fibers[t]->wait;
                if (w == EMU_DONE) continue;
                live = true;
                if (w != EMU_RUN) continue;
                if ((int)(t >> 5) == slow) {
                    held = true;
                    continue;
                }
                emu_resume(t);
                ran = true;
            }
            if (!live) break;
            if (slow >= 0 && --slow_rounds == 0) slow = -1;
            if (!ran && !emu_release(threads)) {
                if (held) { /* the others wait for it: it goes on */
                    slow = -1;
                    continue;
                }
                std::fprintf(stderr, "simt_emu: block (%u,%u,%u) deadlocked at a barrier\n", blockIdx.x, blockIdx.y,
                             blockIdx.z);
                std::abort();
            }
        }
    }
    emu.body = nullptr;
    emu.smem = nullptr;
    emu.smem_bytes = 0;
    std::free(smem);
    emu_check_red(name);
}

/* PC_LAUNCH (cuda/launch.h) on the emulator: a launch GPU would refuse fails now (through
 * cudaGetLastError); else the kernel, with its arguments copied into the closure as a
 * launch copies them, is put on the stream. */
template <typename K> struct emu_launcher {
    K kernel;
    const char *name;
    dim3 grid;
    unsigned threads;
    size_t smem;
    emu_stream *stream;
    template <typename... A> void operator()(A... args) const
    {
        if (int err = emu_launch_refused(name, (const void *)kernel, grid, threads, smem)) {
            emu_launch_error = err;
            return;
        }
        const emu_launcher l = *this;
        emu_put(stream, [l, args...] { emu_launch(l.name, l.grid, l.threads, l.smem, [&] { l.kernel(args...); }); });
    }
};
#define PC_LAUNCH(kernel, grid_, block_, shared_bytes, stream_)                                                  \
    (emu_launcher<decltype(&kernel)>{&kernel, #kernel, dim3(grid_), (unsigned)(block_), (size_t)(shared_bytes),     \
                                     (emu_stream *)(stream_)})

#endif
