/* attention_tc: causal GQA attention on bf16 tensor cores (mma.sync m16n8k16, fp32
 * accumulation), flash style: no (T,T) matrix is ever held; scores, probabilities and
 * accumulators live in registers.
 *
 * The backend uses it when backend.attention is bf16 (backend_cuda.cu); the products
 * QK^T, PV, dO V^T, dS K, P^T dO and dS^T Q take bf16-rounded inputs (q, k, v, dO and the
 * probabilities P and dS) and accumulate in fp32; the softmax, lse, its running max and
 * sum, and D = rowsum(dO o O) are fp32. Layouts are those of backend.h: q, k, v rows of
 * stride ld, token-major (b*T + t); out (B,T,H,hd) with row stride H*hd; lse (B,H,T).
 * The kernels read q, k, v and dO rounded once into unpadded bf16 copies (attention_tc.h),
 * which their tiles are copied from: half the bytes of the fp32 tensors, and no block
 * converts what the others convert too. attn_tc_copies makes those of q, k, v
 * (round_rows_bf16, rows.cuh), the backend's rope_qkv_16 makes them directly, and its
 * D pass writes dO's.
 * The forward, dQ and dK/dV kernels are separate calls, so that the backend's profiler
 * times each.
 *
 * Blocks of ATC_WARPS warps; each warp owns 16 rows of the block's 64 (query rows in the
 * forward pass and dQ, key rows in dK/dV). The block loads the shared 64-row tiles it walks
 * over (K and V, or Q and dO) into row-major bf16 shared memory, two of each, the next by
 * cp.async while the warps work on the current one; ldmatrix takes the fragments of a
 * product's right operand from there, read as B = Y^T or (.trans) as B = Y. A warp keeps
 * its own rows' operands and its accumulators in the fragments PTX documents for
 * mma.m16n8k16, whose accumulator layout is that of an A operand's halves, so a tile's scores become
 * the A operand of the next product (P V, dS K, P^T dO, dS^T Q) in registers, and the
 * online softmax rescales the output accumulator in place.
 * Forward (per (b, h, query tile)): for each key tile up to the diagonal, S = Q K^T,
 * online softmax (running max m and sum l per row, O rescaled by exp(m_old - m_new)),
 * O += P V; at the end out = O / l, lse = m + log l. Backward, as the fp32 kernels: dQ per
 * (b, h, query tile) over key tiles, dK and dV per (b, kv head, key tile) over the heads
 * of its group and the query tiles at or after it, with P = exp(scale S - lse) and
 * dS = P (dO.v - D). */
#include "attention_tc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "attention_tc_kernels.cuh"
#include "cuda_check.h"
#include "launch.h"
#include "rows.cuh"

/* ---------------------------------------------------------------- launchers */

/* Row groups a warp of the forward and dQ kernels may own at head_dim hd: two up to
 * ATC_VARIANT_HD_MAX (beyond, two groups' accumulators and fragments do not fit 255
 * registers). */
static int atc_rg_max(int hd) { return hd <= ATC_VARIANT_HD_MAX ? 2 : 1; }

extern "C" int attn_tc_supported(int hd, size_t smem_optin)
{
    return hd > 0 && hd <= ATC_HD_MAX && hd % 16 == 0 && atc_dkv_smem(hd) <= smem_optin &&
           atc_dq_smem(hd, atc_rg_max(hd)) <= smem_optin && atc_fwd_smem(hd, atc_rg_max(hd)) <= smem_optin;
}

extern "C" double attn_tc_flops(int B, int T, int H, int hd) { return 2.0 * B * H * hd * (double)T * (T + 1); }

extern "C" size_t attn_tc_qkv_bytes(int B, int T, int H, int KV, int hd)
{
    return (size_t)B * T * (H + 2 * KV) * hd * sizeof(bf16);
}

extern "C" size_t attn_tc_dout_bytes(int B, int T, int H, int hd) { return (size_t)B * T * H * hd * sizeof(bf16); }

/* The bf16 copies the kernels read (attention_tc.h): q and dout (N, H hd), k and v (N, KV
 * hd), N = B T; each a multiple of 16 values, so every copy is 32-byte aligned. */
struct atc_copies {
    const bf16 *q, *k, *v, *dout;
};
static atc_copies atc_copies_in(const void *qkv16, const void *dout16, int B, int T, int H, int KV, int hd)
{
    const size_t nq = (size_t)B * T * H * hd, nkv = (size_t)B * T * KV * hd;
    const bf16 *p = (const bf16 *)qkv16;
    return atc_copies{p, p + nq, p + nq + nkv, (const bf16 *)dout16};
}

/* dst (rows, w) bf16 from src (rows of stride ld floats), on stream s. */
static void atc_to_bf16(cudaStream_t s, bf16 *dst, const float *src, size_t ld, size_t rows, int w)
{
    round_rows_bf16(s, dst, (size_t)w, src, rows, (size_t)w, ld);
    CUDA_CHECK(cudaGetLastError());
}

/* Opt a kernel into `bytes` of dynamic shared memory (beyond the default 48 KB). */
static void atc_smem(const void *kernel, size_t bytes)
{
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

/* The kernels' grid: a block of ATC_WARPS warps per `rows` rows of T (ATC_QROWS(rg) for
 * the query-tile kernels, ATC_ROWS for dK/dV), for each of `heads` heads (query heads, or
 * the key/value heads of dK/dV) of each of B batches. Blocks start roughly in the order
 * of their linear index (x fastest), and under the causal mask a block's work grows with
 * its tile's distance from the sequence's start (end, for dK/dV): with the tile slowest
 * the kernels take every head's longest tiles first, all of them before any shorter one
 * (longest-processing-time order), so the last wave holds the shortest blocks instead of
 * a mix whose longest leaves the multiprocessors idle. */
static dim3 atc_grid(int T, int heads, int B, int rows)
{
    return dim3((unsigned)heads, (unsigned)B, (unsigned)((T + rows - 1) / rows));
}

/* The kernels are compiled for each head_dim (the fragments live in registers, sized at
 * compile time): F<hd>(args...) for hd = 16, 32, ..., ATC_HD_MAX. */
#define ATC_DISPATCH(F, hd, ...)                                                                            \
    switch (hd) {                                                                                          \
    case 16: F<16>(__VA_ARGS__); break;                                                                    \
    case 32: F<32>(__VA_ARGS__); break;                                                                    \
    case 48: F<48>(__VA_ARGS__); break;                                                                    \
    case 64: F<64>(__VA_ARGS__); break;                                                                    \
    case 80: F<80>(__VA_ARGS__); break;                                                                    \
    case 96: F<96>(__VA_ARGS__); break;                                                                    \
    case 112: F<112>(__VA_ARGS__); break;                                                                  \
    case 128: F<128>(__VA_ARGS__); break;                                                                  \
    default: fprintf(stderr, "attention_tc: head_dim %d is not a multiple of 16 up to %d\n", hd, ATC_HD_MAX); \
             abort();                                                                                      \
    }

template <int HD, int RG>
static void atc_fwd_rg(cudaStream_t s, void *out, int out16, float *lse, const atc_copies &c, int B, int T, int H,
                       int KV)
{
    const size_t bytes = atc_fwd_smem(HD, RG);
    atc_smem((const void *)k_atc_fwd<HD, RG>, bytes);
    PC_LAUNCH((k_atc_fwd<HD, RG>), atc_grid(T, H, B, ATC_QROWS(RG)), ATC_WARPS * 32, bytes, s)
    (out16 ? nullptr : (float *)out, out16 ? (bf16 *)out : nullptr, lse, c.q, c.k, c.v, T, H, KV,
     1.0f / sqrtf((float)HD));
    CUDA_CHECK(cudaGetLastError());
}
/* rg 2 where the head_dim has it (atc_rg_max), else 1 */
template <int HD>
static void atc_fwd(int rg, cudaStream_t s, void *out, int out16, float *lse, const atc_copies &c, int B, int T, int H,
                    int KV)
{
    if constexpr (HD <= ATC_VARIANT_HD_MAX)
        if (rg == 2) return atc_fwd_rg<HD, 2>(s, out, out16, lse, c, B, T, H, KV);
    atc_fwd_rg<HD, 1>(s, out, out16, lse, c, B, T, H, KV);
}

template <int HD, int RG>
static void atc_dq_rg(cudaStream_t s, float *dq, size_t ld, const float *lse, const float *D, const atc_copies &c,
                      int B, int T, int H, int KV)
{
    const size_t bytes = atc_dq_smem(HD, RG);
    atc_smem((const void *)k_atc_dq<HD, RG>, bytes);
    PC_LAUNCH((k_atc_dq<HD, RG>), atc_grid(T, H, B, ATC_QROWS(RG)), ATC_WARPS * 32, bytes, s)
    (dq, ld, c.dout, lse, D, c.q, c.k, c.v, T, H, KV, 1.0f / sqrtf((float)HD));
    CUDA_CHECK(cudaGetLastError());
}
/* likewise */
template <int HD>
static void atc_dq(int rg, cudaStream_t s, float *dq, size_t ld, const float *lse, const float *D, const atc_copies &c,
                   int B, int T, int H, int KV)
{
    if constexpr (HD <= ATC_VARIANT_HD_MAX)
        if (rg == 2) return atc_dq_rg<HD, 2>(s, dq, ld, lse, D, c, B, T, H, KV);
    atc_dq_rg<HD, 1>(s, dq, ld, lse, D, c, B, T, H, KV);
}

template <int HD, int KEEP>
static void atc_dkv_keep(cudaStream_t s, float *dk, float *dv, size_t ld, const float *lse, const float *D,
                         const atc_copies &c, int B, int T, int H, int KV)
{
    const size_t bytes = atc_dkv_smem(HD);
    atc_smem((const void *)k_atc_dkv<HD, KEEP>, bytes);
    PC_LAUNCH((k_atc_dkv<HD, KEEP>), atc_grid(T, KV, B, ATC_ROWS), ATC_WARPS * 32, bytes, s)
    (dk, dv, ld, c.dout, lse, D, c.q, c.k, c.v, T, H, KV, 1.0f / sqrtf((float)HD));
    CUDA_CHECK(cudaGetLastError());
}
/* variant 1: K and V fragments taken for each pass; 2 and 3 (where the head_dim has them,
 * atc_dkv_variants): kept, with 3 and 2 blocks a multiprocessor (k_atc_dkv's KEEP 1, 2) */
template <int HD>
static void atc_dkv(int variant, cudaStream_t s, float *dk, float *dv, size_t ld, const float *lse, const float *D,
                    const atc_copies &c, int B, int T, int H, int KV)
{
    if constexpr (HD <= ATC_VARIANT_HD_MAX) {
        if (variant == 2) return atc_dkv_keep<HD, 1>(s, dk, dv, ld, lse, D, c, B, T, H, KV);
        if (variant == 3) return atc_dkv_keep<HD, 2>(s, dk, dv, ld, lse, D, c, B, T, H, KV);
    }
    atc_dkv_keep<HD, 0>(s, dk, dv, ld, lse, D, c, B, T, H, KV);
}

/* ---------------------------------------------------------------- variants, tuned */

/* The kernels with variants (attention_tc.h): each variant's label, how many the head_dim
 * allows (the others are not compiled for it), and the kernel's FLOPs in forwards
 * (attn_tc_flops). */
#define ATC_VARIANTS 3
struct atc_kernel {
    const char *name, *label[ATC_VARIANTS];
    int (*n_variants)(int hd);
    double forwards;
};
static int atc_dkv_variants(int hd) { return hd <= ATC_VARIANT_HD_MAX ? 3 : 1; }
static const atc_kernel atc_fwd_kernel = {"forward", {"16 rows a warp", "32 rows a warp", ""}, atc_rg_max, 1.0};
static const atc_kernel atc_dq_kernel = {"dQ", {"16 rows a warp", "32 rows a warp", ""}, atc_rg_max,
                                         ATTN_TC_DQ_FORWARDS};
static const atc_kernel atc_dkv_kernel = {
    "dK dV", {"K, V fragments each pass", "kept, 3 blocks an SM", "kept, 2 blocks an SM"}, atc_dkv_variants,
    ATTN_TC_DKV_FORWARDS};

/* The variants set (attn_tc_set_variants): 0 tunes per shape; the emulator's default is
 * 1, its timings meaning nothing. */
#ifdef PC_SIMT_EMU
static attn_tc_variants atc_set = {1, 1};
#else
static attn_tc_variants atc_set = {0, 0};
#endif

/* A shape tuned: the kernel, the shape, each variant's milliseconds a call (0 where not
 * run) and the pick. At most ATC_TUNED shapes a kernel are tuned; calls with others run
 * variant 1 (none of this changes a result). */
#define ATC_TUNED 32
struct atc_tuned {
    const atc_kernel *kernel;
    int B, T, H, KV, hd, pick;
    float ms[ATC_VARIANTS];
};
static atc_tuned atc_tuned_shapes[3 * ATC_TUNED];
static int atc_n_tuned;

/* Runs kernel k at this shape as run(variant): the variant set (set, at most the head_dim's
 * count), a tuned shape's pick, or, where set is 0, the fastest the head_dim allows: each
 * timed on stream s once to warm up (and set its shared memory), then ATC_TUNE_RUNS times
 * between two events. Every run writes the same outputs (the variants give the same bits,
 * tests/gpu), so the last run tuning makes leaves the call's result. */
#define ATC_TUNE_RUNS 3
template <typename Run>
static void atc_run(const atc_kernel &k, int set, cudaStream_t s, int B, int T, int H, int KV, int hd, Run run)
{
    const int max = k.n_variants(hd);
    if (set) return run(set < max ? set : max);
    if (max == 1) return run(1);
    int n_kernel = 0;
    for (int i = 0; i < atc_n_tuned; i++) {
        const atc_tuned &t = atc_tuned_shapes[i];
        if (t.kernel != &k) continue;
        n_kernel++;
        if (t.B == B && t.T == T && t.H == H && t.KV == KV && t.hd == hd) return run(t.pick);
    }
    if (n_kernel >= ATC_TUNED) return run(1);
    atc_tuned t = {&k, B, T, H, KV, hd, 1, {0.0f, 0.0f, 0.0f}};
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int v = 1; v <= max; v++) {
        run(v);
        CUDA_CHECK(cudaEventRecord(e0, s));
        for (int i = 0; i < ATC_TUNE_RUNS; i++) run(v);
        CUDA_CHECK(cudaEventRecord(e1, s));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&t.ms[v - 1], e0, e1));
        t.ms[v - 1] /= ATC_TUNE_RUNS;
        if (t.ms[v - 1] < t.ms[t.pick - 1]) t.pick = v;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    atc_tuned_shapes[atc_n_tuned++] = t;
}

extern "C" attn_tc_variants attn_tc_set_variants(attn_tc_variants v)
{
    if (v.groups < 0 || v.groups > 2 || v.dkv < 0 || v.dkv > 3) {
        fprintf(stderr, "attention_tc: variants are groups 0 (tuned), 1 or 2 and dkv 0 (tuned) to 3, got %d and %d\n",
                v.groups, v.dkv);
        abort();
    }
    const attn_tc_variants was = atc_set;
    atc_set = v;
    return was;
}

extern "C" void attn_tc_tuned_report(FILE *f)
{
    for (int i = 0; i < atc_n_tuned; i++) {
        const atc_tuned &t = atc_tuned_shapes[i];
        const double flops = t.kernel->forwards * attn_tc_flops(t.B, t.T, t.H, t.hd);
        fprintf(f, "attention_tc %s B %d T %d H %d KV %d hd %d:", t.kernel->name, t.B, t.T, t.H, t.KV, t.hd);
        for (int v = 1; v <= t.kernel->n_variants(t.hd); v++)
            fprintf(f, " %d (%s) %.3f ms %.1f TFLOP/s,", v, t.kernel->label[v - 1], (double)t.ms[v - 1],
                    t.ms[v - 1] > 0.0f ? flops / (t.ms[v - 1] * 1e-3) / 1e12 : 0.0);
        fprintf(f, " picked %d\n", t.pick);
    }
}

extern "C" void attn_tc_copies(cudaStream_t s, void *qkv16, const float *q, const float *k, const float *v, int B,
                               int T, int H, int KV, int hd, int ld)
{
    const size_t rows = (size_t)B * T, nq = rows * H * hd, nkv = rows * KV * hd;
    bf16 *p = (bf16 *)qkv16;
    atc_to_bf16(s, p, q, (size_t)ld, rows, H * hd);
    atc_to_bf16(s, p + nq, k, (size_t)ld, rows, KV * hd);
    atc_to_bf16(s, p + nq + nkv, v, (size_t)ld, rows, KV * hd);
}

extern "C" void attn_tc_fwd(cudaStream_t s, const void *qkv16, void *out, int out16, float *lse, int B, int T, int H,
                            int KV, int hd)
{
    const atc_copies c = atc_copies_in(qkv16, NULL, B, T, H, KV, hd);
    auto run = [&](int rg) { ATC_DISPATCH(atc_fwd, hd, rg, s, out, out16, lse, c, B, T, H, KV) };
    atc_run(atc_fwd_kernel, atc_set.groups, s, B, T, H, KV, hd, run);
}

extern "C" void attn_tc_dq(cudaStream_t s, const void *qkv16, const void *dout16, float *dq, const float *lse,
                           const float *D, int B, int T, int H, int KV, int hd, int ld)
{
    const atc_copies c = atc_copies_in(qkv16, dout16, B, T, H, KV, hd);
    auto run = [&](int rg) { ATC_DISPATCH(atc_dq, hd, rg, s, dq, (size_t)ld, lse, D, c, B, T, H, KV) };
    atc_run(atc_dq_kernel, atc_set.groups, s, B, T, H, KV, hd, run);
}

extern "C" void attn_tc_dkv(cudaStream_t s, const void *qkv16, const void *dout16, float *dk, float *dv,
                            const float *lse, const float *D, int B, int T, int H, int KV, int hd, int ld)
{
    const atc_copies c = atc_copies_in(qkv16, dout16, B, T, H, KV, hd);
    auto run = [&](int variant) { ATC_DISPATCH(atc_dkv, hd, variant, s, dk, dv, (size_t)ld, lse, D, c, B, T, H, KV) };
    atc_run(atc_dkv_kernel, atc_set.dkv, s, B, T, H, KV, hd, run);
}
