/* attention_tc_kernels: the device code of attention_tc.cu (kernels, their helpers and
 * shared-memory sizes), in a header so that the same source also compiles for the host
 * against tests/gpu/simt_emu.h (PC_SIMT_EMU), which runs it on CPU threads. See
 * attention_tc.cu for the algorithm. */
#ifndef PC_ATTENTION_TC_KERNELS_CUH
#define PC_ATTENTION_TC_KERNELS_CUH

#ifndef PC_SIMT_EMU
#include <cuda_bf16.h>
#endif
#include <stdint.h>

#include "launch.h"
#include "vec.h"

#define ATC_WARPS 4
#define ATC_ROWS (16 * ATC_WARPS) /* rows of a block's own tile, 16 a warp */
#define ATC_TILE 64               /* rows of the tiles walked over */
#define ATC_NT (ATC_TILE / 8)     /* 16 x 8 products across a tile's rows */
#define ATC_DQ_NT 2                /* dQ: 16 x 8 products across a pass's 16 keys of a tile */
#define ATC_DKV_NT 4               /* dK/dV: 16 x 8 products across a pass's 32 queries of a tile */
#define ATC_HD_MAX 128
#define ATC_VARIANT_HD_MAX 64 /* head_dims with the kernels' variants beyond the first (attention_tc.h) */
#define ATC_LOG2E 1.44269504088896340736f /* exp(x) = exp2(x log2 e): the softmax in base 2, scale folded in */
#define ATC_LN2 0.69314718055994530942f
#define ATC_PAD 8 /* bf16 row padding: the 8 rows of an ldmatrix matrix (16 bytes each) fall in 32 banks */

typedef __nv_bfloat16 bf16;
typedef uint32_t u32;

#ifndef PC_SIMT_EMU
/* cp.async (tests/gpu/simt_emu.h): 16 bytes from global src to shared dst, both 16-byte
 * aligned, or with copy false 16 zeros (src-size 0: nothing read; src still a valid
 * address), in flight until the thread waits for its group (atc_cp_wait). The zeros take
 * the copy's path, where a store beside it took a branch and the compiler's padding. */
__device__ __forceinline__ void atc_cp16(void *dst, const void *src, bool copy)
{
    const u32 d = (u32)__cvta_generic_to_shared(dst), n = copy ? 16u : 0u;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
/* The same of one float (4 bytes, 4-byte aligned; cp.async.ca, .cg copying 16 only). */
__device__ __forceinline__ void atc_cp4(float *dst, const float *src, bool copy)
{
    const u32 d = (u32)__cvta_generic_to_shared(dst), n = copy ? 4u : 0u;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
/* The thread's copies issued since the last commit become a group. */
__device__ __forceinline__ void atc_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/* Wait until at most N of the thread's newest groups are in flight. */
template <int N> __device__ __forceinline__ void atc_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
/* d (16 x 8 fp32) += a (16 x 16 bf16) b (16 x 8 bf16), in the fragments PTX documents for
 * mma.m16n8k16 (tests/gpu/simt_emu.h, emu_mma_16816, spells them out). */
__device__ __forceinline__ void atc_mma(float d[4], const u32 a[4], const u32 b[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
/* Four 8 x 8 bf16 matrices from shared memory, lanes 8i..8i+7 pointing at matrix i's
 * rows (16 bytes each, 16-byte aligned), into r[i] in the fragment layout (TRANS 1: of
 * the transposed matrices), by ldmatrix.m8n8.x4 (tests/gpu/simt_emu.h, emu_ldmatrix_x4,
 * spells the layout out). */
template <int TRANS> __device__ __forceinline__ void atc_ldsm4(u32 r[4], const bf16 *p)
{
    const u32 a = (u32)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}
/* 2^x on the multifunction unit alone (ex2.approx.ftz: a result below 2^-126 is 0, as is
 * 2^-inf). exp2f keeps subnormal results at the cost of a range check and two multiplies
 * around the same instruction, three more instructions a score than the softmax needs:
 * a probability below 2^-126 adds nothing beside its row's largest, which is 1. Not
 * volatile, so the compiler may compute it for masked scores and select. */
__device__ __forceinline__ float atc_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
/* Two consecutive floats of shared memory (8-byte aligned) in one load. */
__device__ __forceinline__ float2 atc_ld2(const float *p) { return *(const float2 *)p; }
/* Up to head_dim 64 every kernel with one row group a warp (RG 1) keeps to 128 registers a
 * thread, so that 4 blocks of 4 warps fit a multiprocessor's 64K (ptxas alone gives dK/dV
 * 160; held to 128 it keeps 20 bytes in local memory at head_dim 64); two
 * groups (RG 2, up to head_dim 64: atc_rg_max) keep to 255, 2 blocks; beyond, no minimum (0). */
#define ATC_BOUNDS(HD, RG) __launch_bounds__(ATC_WARPS * 32, (HD) <= 64 ? 4 / (RG) : 0)
/* dK/dV (k_atc_dkv): 4, 3 or 2 blocks up to head_dim 64 as KEEP is 0, 1 or 2 */
#define ATC_DKV_BOUNDS(HD, KEEP) __launch_bounds__(ATC_WARPS * 32, (HD) <= 64 ? 4 - (KEEP) : 0)
#else
inline void atc_cp16(void *dst, const void *src, bool copy) { emu_cp_async(dst, src, 16u, copy ? 16u : 0u); }
inline void atc_cp4(float *dst, const float *src, bool copy) { emu_cp_async(dst, src, 4u, copy ? 4u : 0u); }
#define atc_cp_commit emu_cp_commit
template <int N> inline void atc_cp_wait() { emu_cp_wait(N); }
#define atc_mma emu_mma_16816
template <int TRANS> inline void atc_ldsm4(u32 r[4], const bf16 *p) { emu_ldmatrix_x4(r, p, TRANS); }
inline float atc_exp2(float x)
{
    const float y = std::exp2(x);
    return y < 0x1p-126f ? 0.0f : y;
}
inline float2 atc_ld2(const float *p) { return emu_ld_aligned<float2>(p); }
#define ATC_BOUNDS(HD, RG)
#define ATC_DKV_BOUNDS(HD, KEEP)
#endif

/* ---------------------------------------------------------------- tiles and fragments */

/* Two buffers of a kind (a tile and the one loading beside it), picked by a runtime index
 * with a select, so that no array of pointers goes to local memory. */
template <typename T> struct atc_two {
    T *b0, *b1;
    __device__ T *operator[](int i) const { return i ? b1 : b0; }
};

/* A tile to load: rows of a (T, hd) bf16 head view at src (row stride ld) into a
 * row-major bf16 tile at dst; src NULL: none. The kernels keep two of each tile they walk
 * over and load the next while they work on the other (cp.async, two groups in flight). */
struct atc_src {
    bf16 *dst;
    const bf16 *src;
    int ld;
};

/* Issues the copies of ROWS x HD of one or two head views (a, b) from row r0 into bf16
 * tiles of row stride HD + ATC_PAD (16-byte cp.async copies by the block's ATC_WARPS * 32
 * threads) and commits them as one group of each thread's; rows at or past T are zero
 * (filled by the same copies, reading nothing). The tiles are the block's to read once every thread has waited for the
 * group (atc_cp_wait) and passed a barrier after it. The sources and their ld keep 16-byte
 * alignment. Each thread copies one column of 8 values, every RSTEP-th row from its first,
 * so that its addresses are one base and a constant step (with runtime sizes and a flat
 * index a copy took 22 to 26 instructions of index and address arithmetic); where the
 * 8-value columns do not divide the threads (head_dim 48, 80, 96, 112) the few threads
 * beyond the last whole set of rows copy nothing. */
template <int HD, int ROWS> __device__ __forceinline__ void atc_load(atc_src a, atc_src b, int r0, int T)
{
    constexpr int VPR = HD / 8, LDH = HD + ATC_PAD;         /* 8-value columns a row */
    constexpr int RSTEP = ATC_WARPS * 32 / VPR;             /* rows the block copies at a time */
    const int tr = (int)threadIdx.x / VPR, c = (int)threadIdx.x % VPR * 8; /* first row, column */
    if (tr < RSTEP) {
        PC_UNROLL
        for (int j = 0; j < 2; j++) {
            const atc_src t = j ? b : a;
            if (!t.src) continue;
            /* row r0 (< T), where a zero fill points (reading nothing); row r0 + r at an int
             * offset (at most 128 rows of H hd values), selected in 32 bits */
            const bf16 *src0 = t.src + (size_t)r0 * t.ld + c;
            bf16 *dst = t.dst + tr * LDH + c;
            PC_UNROLL
            for (int i = 0; i < (ROWS + RSTEP - 1) / RSTEP; i++) {
                const int r = tr + i * RSTEP; /* of the tile */
                if (ROWS % RSTEP != 0 && r >= ROWS) break;
                const bool in = r0 + r < T;
                atc_cp16(dst + i * RSTEP * LDH, src0 + (in ? r * t.ld : 0), in);
            }
        }
    }
    atc_cp_commit();
}

/* The A fragment (16 x 16) of the warp's lane at rows r0.., columns k0.. of a row-major
 * bf16 tile X (row stride ld): lane l points at row r0 + l % 16, column k0 + 8 (l / 16),
 * so that the four matrices are a's registers (rows +0/+8, columns +0/+8). */
__device__ __forceinline__ void atc_frag_a(u32 a[4], const bf16 *X, int ld, int r0, int k0)
{
    const int l = threadIdx.x & 31;
    atc_ldsm4<0>(a, X + (r0 + (l & 15)) * ld + k0 + 8 * (l >> 4));
}

/* A fragments of 16 rows from r0 and KT x 16 columns of X. */
template <int KT> __device__ __forceinline__ void atc_frags_a(u32 a[KT][4], const bf16 *X, int ld, int r0)
{
    PC_UNROLL
    for (int kk = 0; kk < KT; kk++) atc_frag_a(a[kk], X, ld, r0, 16 * kk);
}

/* c[g] (16 x 8 NT, as NT C fragments, NT even) += A_g Y^T for G row groups g of the
 * warp's rows: A_g (16 x 16 KT) in fragments a[g][kk], Y a row-major bf16 tile (row
 * stride ld) of at least 8 NT rows and 16 KT columns, so that B(k, n) = Y[n][k]. One
 * ldmatrix takes the B fragments of two column blocks n, n + 1, which every group
 * multiplies: G groups read Y once. Lane l points at Y's row 8 n + l % 8 + 8 (l / 16),
 * column 16 kk + 8 (l / 8 % 2). Each c[g][n] sums over kk in the same order whatever G,
 * so a row's result does not depend on the groups beside it. */
template <int G, int KT, int NT>
__device__ __forceinline__ void atc_mma_abt(float (*c)[NT][4], const u32 (*a)[KT][4], const bf16 *Y, int ld)
{
    const int l = threadIdx.x & 31;
    PC_UNROLL
    for (int n = 0; n < NT; n += 2) {
        const bf16 *p = Y + (8 * n + (l & 7) + 8 * (l >> 4)) * ld + 8 * ((l >> 3) & 1);
        PC_UNROLL
        for (int kk = 0; kk < KT; kk++) {
            u32 b[4]; /* B fragments of blocks n (b[0..1]) and n + 1 (b[2..3]) */
            atc_ldsm4<0>(b, p + 16 * kk);
            PC_UNROLL
            for (int g = 0; g < G; g++) {
                atc_mma(c[g][n], a[g][kk], b);
                atc_mma(c[g][n + 1], a[g][kk], b + 2);
            }
        }
    }
}

/* c[g] (16 x 8 NT, NT even) += A_g Y for G row groups: A_g (16 x 16 KT) in fragments
 * a[g][kk], Y a row-major bf16 tile (row stride ld) of at least 16 KT rows and 8 NT
 * columns, so that B(k, n) = Y[k][n], taken transposed by ldmatrix.trans (shared by the
 * groups, as in atc_mma_abt): lane l points at Y's row 16 kk + l % 16, column 8 n + 8 (l / 16). */
template <int G, int KT, int NT>
__device__ __forceinline__ void atc_mma_ab(float (*c)[NT][4], const u32 (*a)[KT][4], const bf16 *Y, int ld)
{
    const int l = threadIdx.x & 31;
    PC_UNROLL
    for (int n = 0; n < NT; n += 2) {
        const bf16 *p = Y + (l & 15) * ld + 8 * n + 8 * (l >> 4);
        PC_UNROLL
        for (int kk = 0; kk < KT; kk++) {
            u32 b[4];
            atc_ldsm4<1>(b, p + 16 * kk * ld);
            PC_UNROLL
            for (int g = 0; g < G; g++) {
                atc_mma(c[g][n], a[g][kk], b);
                atc_mma(c[g][n + 1], a[g][kk], b + 2);
            }
        }
    }
}

/* The A fragments (16 x 16 each, rounded to bf16) of a 16 x 8 NT matrix held as C
 * fragments: an accumulator's layout is that of A's two halves, so P and dS go from one
 * product into the next without leaving the registers. */
template <int NT> __device__ __forceinline__ void atc_c_to_a(u32 a[NT / 2][4], const float c[NT][4])
{
    PC_UNROLL
    for (int kk = 0; kk < NT / 2; kk++) {
        a[kk][0] = vec_pack_bf16(c[2 * kk][0], c[2 * kk][1]);
        a[kk][1] = vec_pack_bf16(c[2 * kk][2], c[2 * kk][3]);
        a[kk][2] = vec_pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[kk][3] = vec_pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    }
}

template <int NT> __device__ __forceinline__ void atc_zero(float c[NT][4])
{
    PC_UNROLL
    for (int n = 0; n < NT; n++) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
}

/* Element i of C fragment n of the warp's lane: row (0..15) and column (0..8 NT-1). */
__device__ __forceinline__ int atc_c_row(int i) { return (int)((threadIdx.x & 31) >> 2) + 8 * (i >> 1); }
__device__ __forceinline__ int atc_c_col(int n, int i) { return 8 * n + 2 * (int)(threadIdx.x & 3) + (i & 1); }
/* atc_c_col less the lane's part: a constant once the loops over n and i are unrolled, so
 * that a mask compares it with a bound computed once per row and tile (atc_c_col(n, i) <=
 * b  <=>  atc_c_off(n, i) <= b - atc_c_col(0, 0)): one comparison and one select an element. */
__device__ __forceinline__ int atc_c_off(int n, int i) { return 8 * n + (i & 1); }

/* Row-major (rows, hd) output from C fragments c[n] (16 x hd) of the warp's rows row0..
 * (times mul[r] for the lane's two rows r = 0, 1), skipping rows at or past T: fp32, or
 * bf16 (nearest even; a lane's two adjacent columns in one 4-byte store). */
template <int DT, typename OutT>
__device__ __forceinline__ void atc_store(OutT *out, size_t ld, const float c[DT][4], int row0, int T,
                                          const float mul[2])
{
    PC_UNROLL
    for (int r = 0; r < 2; r++) {
        const int i = row0 + atc_c_row(2 * r);
        if (i >= T) continue;
        OutT *o = out + (size_t)i * ld;
        PC_UNROLL
        for (int n = 0; n < DT; n++) {
            const float x0 = c[n][2 * r] * mul[r], x1 = c[n][2 * r + 1] * mul[r];
            if constexpr (sizeof(OutT) == 2) {
                *(u32 *)(o + atc_c_col(n, 0)) = vec_pack_bf16(x0, x1); /* even column: 4-byte aligned */
            } else {
                o[atc_c_col(n, 0)] = x0;
                o[atc_c_col(n, 1)] = x1;
            }
        }
    }
}

#ifndef PC_SIMT_EMU
/* The block's dynamic shared memory. */
__device__ char *atc_smem_base()
{
    extern __shared__ __align__(128) char s[];
    return s;
}
#endif

/* Shared-memory carve-up: the next n elements of type T, 128-byte aligned. */
template <typename T> __device__ T *atc_take(char *&p, size_t n)
{
    T *r = (T *)p;
    p += (n * sizeof(T) + 127) / 128 * 128;
    return r;
}

static inline size_t atc_bytes(size_t n, size_t size) { return (n * size + 127) / 128 * 128; }
/* a row-major (64, hd) bf16 tile */
static inline size_t atc_tile_bytes(int hd) { return atc_bytes((size_t)ATC_TILE * (hd + ATC_PAD), 2); }

/* Rows of a query-tile block (forward, dQ) whose warps own RG groups of 16 query rows
 * each: RG 2 shares every fragment of K, V taken from shared memory between two groups,
 * half the ldmatrix reads a product, at the price of twice the accumulators a thread. */
#define ATC_QROWS(RG) (ATC_ROWS * (RG))

/* Where a query-tile block (grid atc_grid: (H, B, ceil(T/ATC_QROWS(RG)))) works: head h,
 * batch b, first row q0, the warp's first row w0 and its offset wr in the block, the
 * block's last row, and the head views of the bf16 q (rows of H hd), k and v (rows of KV
 * hd). The tile index is the grid's slowest: blocks start in the order of their index, so
 * every head's last tiles (most key tiles, the longest blocks) go first and the short ones
 * fill the last wave. */
struct atc_qtile {
    int b, h, q0, w0, wr, last;
    const bf16 *qh, *kh, *vh;
};
template <int RG>
__device__ atc_qtile atc_qtile_of(const bf16 *q, const bf16 *k, const bf16 *v, int T, int H, int KV, int hd)
{
    atc_qtile r;
    r.h = blockIdx.x, r.b = blockIdx.y;
    r.q0 = (gridDim.z - 1 - blockIdx.z) * ATC_QROWS(RG), r.wr = 16 * RG * (int)(threadIdx.x >> 5);
    r.w0 = r.q0 + r.wr;
    r.last = min(T - 1, r.q0 + ATC_QROWS(RG) - 1);
    const size_t tok = (size_t)r.b * T; /* the batch's first token */
    const int g = r.h / (H / KV);
    r.qh = q + tok * H * hd + (size_t)r.h * hd;
    r.kh = k + tok * KV * hd + (size_t)g * hd, r.vh = v + tok * KV * hd + (size_t)g * hd;
    return r;
}

/* The double-buffered loop over the tiles t = 0, step, 2 step, .. below end: load(t, j)
 * issues tile t's copies into buffer j (one atc_load group), work(t, j) runs once tile t
 * in buffer j has landed for every thread, and tile 0 is issued before the loop (by the
 * caller, into buffer 0). Each tile loads while the previous one is worked on; a barrier
 * after the work keeps the next load off a buffer still read. */
template <typename Load, typename Work>
__device__ __forceinline__ void atc_double_buffer(int end, int step, Load load, Work work)
{
    for (int t = 0, cur = 0; t < end; t += step, cur ^= 1) {
        if (t + step < end)
            load(t + step, cur ^ 1);
        else
            atc_cp_commit(); /* an empty group, so that the wait below is the same */
        atc_cp_wait<1>();
        __syncthreads(); /* this tile's copies, every thread's, have landed */
        work(t, cur);
        __syncthreads(); /* the tile is consumed before the next load goes there */
    }
}

/* Tiles of (64, hd) bf16 rows (row stride hd + ATC_PAD) in a query-tile block's shared
 * memory: K and V tile 0, then a region of atc_qregion_tiles(rg, own) tiles that holds K
 * and V tile 1 and, before them, the block's own rows of q (and of dO when own is 2):
 * ATC_QROWS(rg) rows each, one after the other. */
__host__ __device__ inline int atc_qregion_tiles(int rg, int own) { return own * rg > 2 ? own * rg : 2; }
struct atc_qsmem {
    atc_two<bf16> K, V;
    bf16 *own; /* the own rows of q, then of dO */
};
__device__ atc_qsmem atc_take_qsmem(char *p, int hd, int rg, int own)
{
    const size_t tile = (size_t)ATC_TILE * (hd + ATC_PAD);
    bf16 *k0 = atc_take<bf16>(p, tile), *v0 = atc_take<bf16>(p, tile);
    bf16 *r = atc_take<bf16>(p, tile * atc_qregion_tiles(rg, own));
    return {{k0, r}, {v0, r + tile}, r};
}

/* A query-tile block's walk over the key tiles (forward, dQ), two K and two V tiles in
 * shared memory (sm), the next loading while the warps work on the other. First the
 * block's own rows of q (and of own_b, dO, when not NULL) go into sm.own beside key tile
 * 0, and frags(Q, dO) takes the warp's fragments of them (Q and dO: the block's rows, row
 * stride HD + ATC_PAD); then tile(k0, K, V) runs for each key tile from k0 by the warps
 * whose rows reach it (warp-uniform). */
template <int HD, int RG, typename Frags, typename Tile>
__device__ __forceinline__ void atc_walk_keys(const atc_qtile &at, const bf16 *own_b, const atc_qsmem &sm, int T,
                                              int H, int KV, Frags frags, Tile tile)
{
    constexpr int ldh = HD + ATC_PAD;
    auto load = [&](int k0, int j) { /* the key tile from k0 into buffer j */
        atc_load<HD, ATC_TILE>({sm.K[j], at.kh, KV * HD}, {sm.V[j], at.vh, KV * HD}, k0, T);
    };
    bf16 *own_dO = sm.own + ATC_QROWS(RG) * ldh;
    atc_load<HD, ATC_QROWS(RG)>({sm.own, at.qh, H * HD}, {own_dO, own_b, H * HD}, at.q0, T);
    load(0, 0);
    atc_cp_wait<1>();
    __syncthreads(); /* the block's rows have landed */
    frags(sm.own, own_dO);
    __syncthreads(); /* and are read before key tile 1 goes where they were */
    atc_double_buffer(at.last + 1, ATC_TILE, load, [&](int k0, int j) {
        if (k0 <= at.w0 + 16 * RG - 1) tile(k0, sm.K[j], sm.V[j]); /* else every key is after the warp's rows */
    });
}

/* Two tiles of (64, hd) bf16 rows from the shared memory at p. */
__device__ atc_two<bf16> atc_take_tiles(char *&p, int hd)
{
    bf16 *t0 = atc_take<bf16>(p, (size_t)ATC_TILE * (hd + ATC_PAD));
    return {t0, atc_take<bf16>(p, (size_t)ATC_TILE * (hd + ATC_PAD))};
}

/* The causal mask's bound for the lane's rows r = 0, 1 of the 16-row group from row0 in
 * the keys from k0: key k0 + atc_c_col(n, i) counts for row row0 + atc_c_row(2 r) (query
 * qi) when it is at most qi and below T, i.e. when atc_c_off(n, i) <= last[r]. */
__device__ __forceinline__ void atc_mask_bound(int last[2], int row0, int k0, int T)
{
    last[0] = min(row0 + atc_c_row(0), T - 1) - k0 - atc_c_col(0, 0);
    last[1] = min(row0 + atc_c_row(2), T - 1) - k0 - atc_c_col(0, 0);
}
/* The causal mask on a 16-row group's values c (16 x 8 NT C fragments: rows from row0,
 * keys from k0): a key after its row, or at or past T, gets `dropped`. Where no key of
 * the 8 NT is dropped for any of the rows (the last key at most the first row and below
 * T: nearly all of a long sequence's tiles, those below the diagonal) one warp-uniform
 * branch skips the comparisons and selects; what they would select there is what they
 * keep, so the bits are the same. */
template <int NT>
__device__ __forceinline__ void atc_mask(float c[NT][4], int row0, int k0, int T, float dropped)
{
    if (k0 + 8 * NT - 1 <= min(row0, T - 1)) return;
    int last[2];
    atc_mask_bound(last, row0, k0, T);
    PC_UNROLL
    for (int n = 0; n < NT; n++)
        PC_UNROLL
        for (int i = 0; i < 4; i++)
            if (atc_c_off(n, i) > last[i >> 1]) c[n][i] = dropped;
}

/* ---------------------------------------------------------------- forward */

/* The online softmax of one key tile (keys k0..) for a 16-row group from row0: s the
 * group's raw scores S = Q K^T, masked and turned into P (base 2, scale2 = scale log2 e;
 * m of scaled scores); the running max m and sum l of the lane's two rows updated and the
 * output accumulator o rescaled, ready for O += P V. */
template <int HD>
__device__ __forceinline__ void atc_fwd_softmax(float s[ATC_NT][4], float o[HD / 8][4], float m[2], float l[2],
                                                int k0, int row0, int T, float scale2)
{
    constexpr int DT = HD / 8;
    atc_mask<ATC_NT>(s, row0, k0, T, -INFINITY);
    /* online softmax: the row max over the tile (the lane's 16 columns, then its quad's),
     * of the raw scores, scaled once per row (scale2 > 0) */
    float mx[2] = {-INFINITY, -INFINITY};
    PC_UNROLL
    for (int n = 0; n < ATC_NT; n++)
        PC_UNROLL
        for (int i = 0; i < 4; i++) mx[i >> 1] = fmaxf(mx[i >> 1], s[n][i]);
    float alpha[2];
    bool grew = false;
    PC_UNROLL
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[r], scale2 * mx[r]); /* finite: key 0 <= every row lies in the first tile */
        grew |= m_new != m[r];
        alpha[r] = atc_exp2(m[r] - m_new);
        m[r] = m_new;
    }
    /* The sum and the output are rescaled by alpha = 2^(m_old - m_new) unless no row of
     * the group has a new max (warp-uniform), where alpha is 2^0 = 1 for every row and
     * rescaling changes nothing: past the first tiles, the case of most. */
    const bool rescale = __ballot_sync(0xffffffffu, grew) != 0u;
    if (rescale)
        PC_UNROLL
        for (int r = 0; r < 2; r++) l[r] *= alpha[r]; /* the lane's part of the row sum; the quad's are added at the end */
    PC_UNROLL
    for (int n = 0; n < ATC_NT; n++)
        PC_UNROLL
        for (int i = 0; i < 4; i++) {
            s[n][i] = atc_exp2(fmaf(scale2, s[n][i], -m[i >> 1])); /* 0 where masked */
            l[i >> 1] += s[n][i];
        }
    if (rescale)
        PC_UNROLL
        for (int n = 0; n < DT; n++) {
            o[n][0] *= alpha[0], o[n][1] *= alpha[0];
            o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        }
}

/* One key tile (keys k0.., K and V in the row-major tiles Ks, Vs) of the forward for the
 * warp's RG groups of 16 query rows from w0: S = Q K^T, the online softmax
 * (atc_fwd_softmax) and O += P V, each group's rows as a warp of one group computes them. */
template <int HD, int RG>
__device__ __forceinline__ void atc_fwd_tile(float (*o)[HD / 8][4], float (*m)[2], float (*l)[2],
                                             const u32 (*qa)[HD / 16][4], const bf16 *Ks, const bf16 *Vs, int k0,
                                             int w0, int T, float scale2)
{
    constexpr int KT = HD / 16, DT = HD / 8, ldh = HD + ATC_PAD;
    float s[RG][ATC_NT][4];
    PC_UNROLL
    for (int g = 0; g < RG; g++) atc_zero<ATC_NT>(s[g]);
    atc_mma_abt<RG, KT, ATC_NT>(s, qa, Ks, ldh); /* S = Q K^T (16, 64) a group */
    u32 pa[RG][ATC_NT / 2][4];
    PC_UNROLL
    for (int g = 0; g < RG; g++) {
        atc_fwd_softmax<HD>(s[g], o[g], m[g], l[g], k0, w0 + 16 * g, T, scale2);
        atc_c_to_a<ATC_NT>(pa[g], s[g]);
    }
    atc_mma_ab<RG, ATC_NT / 2, DT>(o, pa, Vs, ldh); /* O += P V (16, HD) a group */
}

/* grid (H, B, ceil(T/ATC_QROWS(RG))), ATC_WARPS*32 threads, atc_fwd_smem(HD, RG) bytes of
 * shared memory; q, k, v the bf16 copies (atc_src's layout: (B,T,H,HD) and (B,T,KV,HD),
 * rows unpadded); the output to out (fp32), or when out is null to out16 (bf16). */
template <int HD, int RG>
__global__ void ATC_BOUNDS(HD, RG) k_atc_fwd(float *out, bf16 *out16, float *lse, const bf16 *q, const bf16 *k,
                                             const bf16 *v, int T, int H, int KV, float scale)
{
    constexpr int KT = HD / 16, DT = HD / 8, ldh = HD + ATC_PAD;
    const float scale2 = scale * ATC_LOG2E; /* scores in base 2: exp(scale s) = exp2(scale2 s) */
    const atc_qsmem sm = atc_take_qsmem(atc_smem_base(), HD, RG, 1); /* (64 keys, HD) tiles */
    const atc_qtile at = atc_qtile_of<RG>(q, k, v, T, H, KV, HD);
    const int b = at.b, h = at.h, w0 = at.w0;

    u32 qa[RG][KT][4]; /* the warp's query rows, 16 a group, the A operand of S = Q K^T */
    float o[RG][DT][4];
    float m[RG][2], l[RG][2]; /* of the lane's rows w0 + 16 g + atc_c_row(0 | 2) */
    PC_UNROLL
    for (int g = 0; g < RG; g++) {
        atc_zero<DT>(o[g]);
        m[g][0] = m[g][1] = -INFINITY, l[g][0] = l[g][1] = 0.0f;
    }
    atc_walk_keys<HD, RG>(
        at, nullptr, sm, T, H, KV,
        [&](const bf16 *Q, const bf16 *) {
            PC_UNROLL
            for (int g = 0; g < RG; g++) atc_frags_a<KT>(qa[g], Q, ldh, at.wr + 16 * g);
        },
        [&](int k0, const bf16 *K, const bf16 *V) { atc_fwd_tile<HD, RG>(o, m, l, qa, K, V, k0, w0, T, scale2); });
    const size_t at_row = (size_t)b * T * H * HD + (size_t)h * HD;
    PC_UNROLL
    for (int g = 0; g < RG; g++) {
        float inv[2];
        PC_UNROLL
        for (int r = 0; r < 2; r++) {
            l[g][r] += __shfl_xor_sync(0xffffffffu, l[g][r], 1);
            l[g][r] += __shfl_xor_sync(0xffffffffu, l[g][r], 2);
            inv[r] = 1.0f / l[g][r];
            const int i = w0 + 16 * g + atc_c_row(2 * r);
            if (i < T && (threadIdx.x & 3) == 0)
                lse[((size_t)b * H + h) * T + i] = (m[g][r] + log2f(l[g][r])) * ATC_LN2;
        }
        if (out)
            atc_store<DT>(out + at_row, (size_t)H * HD, o[g], w0 + 16 * g, T, inv);
        else
            atc_store<DT>(out16 + at_row, (size_t)H * HD, o[g], w0 + 16 * g, T, inv);
    }
}

static inline size_t atc_fwd_smem(int hd, int rg) { return (2 + atc_qregion_tiles(rg, 1)) * atc_tile_bytes(hd); }

/* ---------------------------------------------------------------- backward */

/* One pass of dQ (16 keys from k0, K and V rows Kp, Vp) for the warp's row groups G0..RG-1
 * (those of G0 and after reach the pass's keys): S = Q K^T and dP = dO V^T, dS = P (dP - D)
 * masked, dQ += dS K, each group as a warp of one group computes it. */
template <int HD, int RG, int G0>
__device__ __forceinline__ void atc_dq_pass(float (*acc)[HD / 8][4], const u32 (*qa)[HD / 16][4],
                                            const u32 (*da)[HD / 16][4], const float (*lse_r)[2],
                                            const float (*D_r)[2], const bf16 *Kp, const bf16 *Vp, int k0, int w0,
                                            int T, float scale2)
{
    constexpr int KT = HD / 16, DT = HD / 8, ldh = HD + ATC_PAD, NT = ATC_DQ_NT, G = RG - G0;
    float s[G][NT][4], dp[G][NT][4];
    PC_UNROLL
    for (int g = 0; g < G; g++) {
        atc_zero<NT>(s[g]);
        atc_zero<NT>(dp[g]);
    }
    atc_mma_abt<G, KT, NT>(s, qa + G0, Kp, ldh);  /* S = Q K^T */
    atc_mma_abt<G, KT, NT>(dp, da + G0, Vp, ldh); /* dP = dO V^T */
    u32 dsa[G][NT / 2][4];
    PC_UNROLL
    for (int g = 0; g < G; g++) {
        PC_UNROLL
        for (int n = 0; n < NT; n++)
            PC_UNROLL
            for (int i = 0; i < 4; i++) /* dS, computed for every key */
                s[g][n][i] = atc_exp2(fmaf(scale2, s[g][n][i], -lse_r[G0 + g][i >> 1])) *
                             (dp[g][n][i] - D_r[G0 + g][i >> 1]);
        /* key j counts for query qi when j <= qi and j < T (atc_mask): the masked ones
         * (even an inf) are dropped before they multiply anything. Rows at or past T are
         * not stored, and their dO rows are zero, so their dS is too. */
        atc_mask<NT>(s[g], w0 + 16 * (G0 + g), k0, T, 0.0f);
        atc_c_to_a<NT>(dsa[g], s[g]);
    }
    atc_mma_ab<G, NT / 2, DT>(acc + G0, dsa, Kp, ldh); /* dQ += dS K */
}

/* dQ: grid (H, B, ceil(T/ATC_QROWS(RG))), ATC_WARPS*32 threads, atc_dq_smem(HD, RG)
 * bytes. dq rows of stride ld (fp32); dout, q, k, v the bf16 copies (dout as q). */
template <int HD, int RG>
__global__ void ATC_BOUNDS(HD, RG) k_atc_dq(float *dq, size_t ld, const bf16 *dout, const float *lse,
                                            const float *D, const bf16 *q, const bf16 *k, const bf16 *v, int T, int H,
                                            int KV, float scale)
{
    constexpr int KT = HD / 16, DT = HD / 8, ldh = HD + ATC_PAD;
    const float scale2 = scale * ATC_LOG2E; /* scores in base 2: exp(scale s) = exp2(scale2 s) */
    const atc_qsmem sm = atc_take_qsmem(atc_smem_base(), HD, RG, 2); /* (64 keys, HD) tiles */
    const atc_qtile at = atc_qtile_of<RG>(q, k, v, T, H, KV, HD);
    const int b = at.b, h = at.h, w0 = at.w0;
    float lse_r[RG][2], D_r[RG][2]; /* of the lane's two rows of each group */
    PC_UNROLL
    for (int g = 0; g < RG; g++)
        PC_UNROLL
        for (int r = 0; r < 2; r++) {
            const int i = w0 + 16 * g + atc_c_row(2 * r);
            lse_r[g][r] = i < T ? lse[((size_t)b * H + h) * T + i] * ATC_LOG2E : 0.0f; /* in base 2 */
            D_r[g][r] = i < T ? D[((size_t)b * H + h) * T + i] : 0.0f;
        }

    u32 qa[RG][KT][4], da[RG][KT][4]; /* the warp's rows of Q and dO, A operands of S and dP */
    float acc[RG][DT][4];
    PC_UNROLL
    for (int g = 0; g < RG; g++) atc_zero<DT>(acc[g]);
    auto frags = [&](const bf16 *Q, const bf16 *dO) {
        PC_UNROLL
        for (int g = 0; g < RG; g++) {
            atc_frags_a<KT>(qa[g], Q, ldh, at.wr + 16 * g);
            atc_frags_a<KT>(da[g], dO, ldh, at.wr + 16 * g);
        }
    };
    /* A key tile in four passes of 16 keys, so that one pass's S and dP are live at a time
     * (126 registers at head_dim 64 with one group, within the 128 of ATC_BOUNDS, where
     * 32-key passes and whole tiles spill); a pass is skipped for the groups whose rows all
     * come before its keys (warp-uniform). The same products and loads as whole tiles, in
     * smaller pieces. */
    auto tile = [&](int k0, const bf16 *K, const bf16 *V) {
        PC_UNROLL
        for (int j0 = 0; j0 < ATC_TILE; j0 += 8 * ATC_DQ_NT) {
            const bf16 *Kp = K + j0 * ldh, *Vp = V + j0 * ldh;
            if (k0 + j0 <= w0 + 15)
                atc_dq_pass<HD, RG, 0>(acc, qa, da, lse_r, D_r, Kp, Vp, k0 + j0, w0, T, scale2);
            else if constexpr (RG == 2) {
                if (k0 + j0 <= w0 + 31) /* the second group's rows reach the keys, the first's not */
                    atc_dq_pass<HD, RG, 1>(acc, qa, da, lse_r, D_r, Kp, Vp, k0 + j0, w0, T, scale2);
            }
        }
    };
    atc_walk_keys<HD, RG>(at, dout + (size_t)b * T * H * HD + (size_t)h * HD, sm, T, H, KV, frags, tile);
    const float mul[2] = {scale, scale};
    PC_UNROLL
    for (int g = 0; g < RG; g++) atc_store<DT>(dq + (size_t)b * T * ld + (size_t)h * HD, ld, acc[g], w0 + 16 * g, T, mul);
}

static inline size_t atc_dq_smem(int hd, int rg) { return (2 + atc_qregion_tiles(rg, 2)) * atc_tile_bytes(hd); }

/* A dK/dV block's place in its walk over query tiles: the head and the tile's first row. */
struct atc_qcursor {
    int h, i0;
};
/* The next tile: 64 rows on, or the next head's first tile (rows from k0) past T. */
__device__ __forceinline__ void atc_next_tile(atc_qcursor &c, int k0, int T)
{
    c.i0 += ATC_TILE;
    if (c.i0 >= T) c.i0 = k0, c.h++;
}

/* dK, dV: grid (KV, B, ceil(T/64)) (the first key tiles, most query tiles, first),
 * ATC_WARPS*32 threads, atc_dkv_smem(HD) bytes; KEEP 1 or 2 keeps the warp's K and V
 * fragments in registers (below), with 3 or 2 blocks a multiprocessor (at most 168 or 255
 * registers a thread; 0: 4 blocks, 128) up to head_dim 64; each
 * warp owns 16 key rows and sums over the group's query heads and the query rows at or
 * after them. dk, dv rows of stride ld (fp32); dout, q, k, v the bf16 copies. */
template <int HD, int KEEP>
__global__ void ATC_DKV_BOUNDS(HD, KEEP) k_atc_dkv(float *dk, float *dv, size_t ld, const bf16 *dout, const float *lse,
                                         const float *D, const bf16 *q, const bf16 *k, const bf16 *v, int T, int H,
                                         int KV, float scale)
{
    constexpr int KT = HD / 16, DT = HD / 8, ldh = HD + ATC_PAD;
    const float scale2 = scale * ATC_LOG2E; /* scores in base 2: exp(scale s) = exp2(scale2 s) */
    char *p = atc_smem_base();
    bf16 *Ks = atc_take<bf16>(p, (size_t)ATC_ROWS * ldh); /* (64 keys, HD): the block's own */
    bf16 *Vs = atc_take<bf16>(p, (size_t)ATC_ROWS * ldh); /* (64 keys, HD) */
    const atc_two<bf16> Qs = atc_take_tiles(p, HD), dOs = atc_take_tiles(p, HD); /* (64 queries, HD) each */
    float *ld0 = atc_take<float>(p, 2 * ATC_TILE), *ld1 = atc_take<float>(p, 2 * ATC_TILE);
    const atc_two<float> lseD = {ld0, ld1}; /* (2, 64) each: the query tile's lse and D */

    const int g = blockIdx.x, b = blockIdx.y, group = H / KV, warp = threadIdx.x >> 5;
    const int k0 = blockIdx.z * ATC_ROWS, w0 = k0 + 16 * warp;
    const size_t tok = (size_t)b * T; /* the batch's first token */
    const bf16 *kh = k + tok * KV * HD + (size_t)g * HD, *vh = v + tok * KV * HD + (size_t)g * HD;
    /* the query tiles at or after the key tile (aligned: 64 = 64), of each head of the
     * group in turn: tile t is head g group + t / nq, rows from k0 + (t % nq) 64. The loads
     * and the work each take the tiles in order, t = 0, 1, ... (atc_double_buffer), so each
     * follows its tile by a cursor moved one tile a call (atc_next_tile) instead of that
     * division, two a tile: dozens of instructions. */
    const int nq = (T - k0 + ATC_TILE - 1) / ATC_TILE, n_tiles = group * nq;
    atc_qcursor at_load = {g * group, k0}, at_work = at_load;
    /* query tile t into buffer j: its lse and D (0 past T) and Q and dO, all copied by
     * cp.async in one group (atc_load commits it), so that no thread waits for a load of
     * its own before the tile's work */
    auto load_tile = [&](int, int j) {
        const int h = at_load.h, i0 = at_load.i0;
        atc_next_tile(at_load, k0, T);
        const size_t row = ((size_t)b * H + h) * T + i0; /* of lse and D: (B,H,T) */
        for (int r = threadIdx.x; r < ATC_TILE; r += blockDim.x) {
            const bool in = i0 + r < T;
            atc_cp4(lseD[j] + r, lse + row + (in ? r : 0), in);
            atc_cp4(lseD[j] + ATC_TILE + r, D + row + (in ? r : 0), in);
        }
        atc_load<HD, ATC_TILE>({Qs[j], q + tok * H * HD + (size_t)h * HD, H * HD},
                               {dOs[j], dout + tok * H * HD + (size_t)h * HD, H * HD}, i0, T);
    };

    atc_load<HD, ATC_ROWS>({Ks, kh, KV * HD}, {Vs, vh, KV * HD}, k0, T);
    load_tile(0, 0);
    float dk_acc[DT][4], dv_acc[DT][4];
    atc_zero<DT>(dk_acc);
    atc_zero<DT>(dv_acc);
    /* A query tile in two passes of 32 queries (ATC_DKV_NT column blocks), so that S^T
     * and dP^T of one pass (16 keys x 32 queries each) are live at a time: 128 registers
     * at head_dim 64 (ATC_DKV_BOUNDS), where whole tiles spill 280 bytes. */
    constexpr int NT = ATC_DKV_NT, QP = 8 * NT; /* queries a pass */
    /* The A operands of S^T and dP^T, the warp's 16 rows of K and V: with KEEP taken once
     * (kv[0] K, kv[1] V: 32 registers more at head_dim 64), else taken for each pass into
     * kv[0] (fewer registers, twice the ldmatrix reads of the pass's products). */
    constexpr int KV_V = KEEP ? 1 : 0; /* where V's fragments go */
    u32 kv[1 + KV_V][KT][4];
    if constexpr (KEEP) {
        atc_cp_wait<1>(); /* the first group, K and V; query tile 0 may be in flight */
        __syncthreads();
        atc_frags_a<KT>(kv[0], Ks, ldh, 16 * warp);
        atc_frags_a<KT>(kv[1], Vs, ldh, 16 * warp);
    }
    atc_double_buffer(n_tiles, 1, load_tile, [&](int, int cur) { /* K and V (the first group) landed too */
        const int i0 = at_work.i0;
        atc_next_tile(at_work, k0, T);
        PC_UNROLL
        for (int q0 = 0; q0 < ATC_TILE; q0 += QP) {
            if (i0 + q0 + QP - 1 < w0) continue; /* warp-uniform: every query of the pass is before the warp's keys */
            const bf16 *Q = Qs[cur] + q0 * ldh, *dO = dOs[cur] + q0 * ldh;
            const float *ls = lseD[cur] + q0, *Ds = lseD[cur] + ATC_TILE + q0;
            float st[NT][4], dpt[NT][4];
            if constexpr (!KEEP) /* the warp's K and V fragments, taken again for each pass */
                atc_frags_a<KT>(kv[0], Ks, ldh, 16 * warp);
            atc_zero<NT>(st);
            atc_mma_abt<1, KT, NT>(&st, &kv[0], Q, ldh); /* S^T = K Q^T (16 keys, QP queries) */
            if constexpr (!KEEP) atc_frags_a<KT>(kv[KV_V], Vs, ldh, 16 * warp);
            atc_zero<NT>(dpt);
            atc_mma_abt<1, KT, NT>(&dpt, &kv[KV_V], dO, ldh); /* dP^T = V dO^T */
            /* query i0 + q0 + c counts for the lane's key row r when it is at or after the
             * key: atc_c_off(n, i) >= first[r]. Queries at or past T have zero Q and dO
             * rows, lse and D 0: P 1 and dS 0 there, which add nothing to dV nor dK. */
            float2 l2[NT], d2[NT]; /* the lse and D of the lane's two columns (atc_c_col(n, 0 | 1)) */
            PC_UNROLL
            for (int n = 0; n < NT; n++) {
                l2[n] = atc_ld2(ls + atc_c_col(n, 0)), d2[n] = atc_ld2(Ds + atc_c_col(n, 0));
                PC_UNROLL
                for (int i = 0; i < 4; i++) /* P^T, computed for every query (lse in base 2) */
                    st[n][i] = atc_exp2(fmaf(scale2, st[n][i], -((i & 1 ? l2[n].y : l2[n].x) * ATC_LOG2E)));
            }
            /* queries before a key are dropped (as in dQ), where the pass has any: one
             * whose first query comes before the warp's last key (warp-uniform) */
            if (i0 + q0 < w0 + 15) {
                const int c0 = i0 + q0 + atc_c_col(0, 0);
                const int first[2] = {w0 + atc_c_row(0) - c0, w0 + atc_c_row(2) - c0};
                PC_UNROLL
                for (int n = 0; n < NT; n++)
                    PC_UNROLL
                    for (int i = 0; i < 4; i++)
                        if (atc_c_off(n, i) < first[i >> 1]) st[n][i] = 0.0f;
            }
            PC_UNROLL
            for (int n = 0; n < NT; n++)
                PC_UNROLL
                for (int i = 0; i < 4; i++) dpt[n][i] = st[n][i] * (dpt[n][i] - (i & 1 ? d2[n].y : d2[n].x)); /* dS^T */
            u32 fa[NT / 2][4];
            atc_c_to_a<NT>(fa, st);
            atc_mma_ab<1, NT / 2, DT>(&dv_acc, &fa, dO, ldh); /* dV += P^T dO */
            atc_c_to_a<NT>(fa, dpt);
            atc_mma_ab<1, NT / 2, DT>(&dk_acc, &fa, Q, ldh); /* dK += dS^T Q */
        }
    });
    const float mul_k[2] = {scale, scale}, mul_v[2] = {1.0f, 1.0f};
    atc_store<DT>(dk + tok * ld + (size_t)g * HD, ld, dk_acc, w0, T, mul_k);
    atc_store<DT>(dv + tok * ld + (size_t)g * HD, ld, dv_acc, w0, T, mul_v);
}

static inline size_t atc_dkv_smem(int hd)
{
    return 6 * atc_tile_bytes(hd) + 2 * atc_bytes(2 * ATC_TILE, 4);
}

#endif
