/* backend_cuda: the fp32 CUDA implementation of the backend op table (backend.h).
 *
 * One backend drives one GPU through one stream. Matrix products map the row-major
 * convention of backend.h onto column-major cuBLAS by computing C^T = op(B)^T op(A)^T:
 * a row-major matrix with leading dimension ld is, unchanged in memory, its own
 * transpose in column-major order. The other ops are plain kernels written for
 * clarity first: row-wise ops use one block per row with warp-shuffle/shared-memory
 * reductions; attention is a tiled flash-attention-style kernel (online softmax over
 * key tiles held in shared memory, one warp per query row, lse saved), and its
 * backward pass recomputes the probabilities tile by tile in two kernels (dQ per
 * query row, dK/dV per key row summed over the query heads of its group), so no
 * (T,T) matrix is ever stored and no atomics are needed. Reductions that return a
 * value to the host (xent, distill, sumsq) accumulate in double and are reduced in a
 * fixed order, and so are the sums many blocks feed (RMSNorm's dw, the embedding's
 * gradient): no float atomics, so no result depends on the order blocks run in and a
 * run repeats bit for bit. */
#include "backend_cuda.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cudnn.h"
#include "attention_tc.h"
#include "cuda_check.h"
#include "fastdiv.h"
#include "launch.h"
#include "prof.h"
#include "rows.cuh"
#include "vec.h"

#define CUBLAS_CHECK(call)                                                                                     \
    do {                                                                                                       \
        cublasStatus_t st_ = (call);                                                                           \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                                    \
            fprintf(stderr, "%s:%d: cuBLAS error %s: %s\n", __FILE__, __LINE__, #call, cublasGetStatusString(st_)); \
            exit(EXIT_FAILURE);                                                                                \
        }                                                                                                      \
    } while (0)

/* After a kernel launch (in an op, with its backend *be in scope): a bad launch
 * configuration is reported here, not later; with PC_CUDA_SYNC=1 in the environment the
 * stream is also synchronised, so that a fault inside the kernel names this line. */
#define LAUNCH_CHECK() launch_check(impl_of(be), __FILE__, __LINE__)

/* A profiled region (prof.h; nothing happens unless profiling): the work put on the
 * stream of cuda_impl *c between PROF_BEGIN and PROF_END counts as `name`, with its
 * FLOPs and bytes of memory traffic (what the op must read and write at least). One
 * region per scope, not nested. */
#define PROF_BEGIN(c, name, flops, bytes) \
    const int prof_slot_ = prof_begin((c)->prof, (c)->stream, name, (double)(flops), (double)(bytes))
#define PROF_END(c) prof_end((c)->prof, (c)->stream, prof_slot_)

typedef struct cuda_impl {
    int device;
    int tf32;
    matmul_mode matmul;
    uint16_t *bf_a, *bf_b; /* MATMUL_BF16: bf16 copies of (blocks of) the gemm inputs */
    size_t bf_a_n, bf_b_n;
    size_t bf_cap;         /* elements a block may hold (BACKEND_CUDA_BF16_BLOCK) */
    int64_t gemm_span;     /* a cuBLAS operand spans fewer elements than this (BACKEND_CUDA_GEMM_SPAN) */
    uint64_t gemm_calls;   /* cublasGemmEx calls so far (backend_cuda_gemm_calls) */
    char device_name[64];
    cudaStream_t stream;
    cublasHandle_t blas;
    float *att_d;    /* attention backward: D = rowsum(dO*O), (B,H,T) */
    size_t att_d_n;
    float *dw_part;  /* RMSNorm backward: the dw partials (at most RMS_DW_PARTS, d) */
    size_t dw_part_n;
    void *att16;     /* attention on tensor cores: the bf16 copies of q, k, v, dO (attn_tc_scratch_bytes) */
    size_t att16_n;
    double *red;     /* per-row / per-block double partials for host-returned reductions */
    size_t red_n;
    double *result;  /* (2) device result of a reduction */
    double *result_host; /* (2) pinned */
    size_t mem_peak;     /* most device bytes in use seen after an allocation */
    int sync_launches;   /* PC_CUDA_SYNC=1: synchronise after every kernel (debugging) */
    int attn_bf16;       /* backend_cuda_set_attention: tensor-core attention where it applies */
    attn_cudnn *cudnn;   /* backend_cuda_use_cudnn: that attention by cuDNN's fused kernels instead */
    int cudnn_trial;     /* backend_cuda_cudnn_trial: a failed cuDNN call is kept, not fatal */
    char cudnn_failed[768]; /* ... the first one's reason ("" none) */
    size_t smem_optin;   /* shared memory a block may opt into */
    cu_prof *prof;       /* backend_cuda_profile; NULL: not profiling */
    int prof_at_exit;    /* PC_CUDA_PROFILE=1: report on stderr at destroy */
} cuda_impl;

static cuda_impl *impl_of(backend *be) { return (cuda_impl *)be->impl; }

static void launch_check(const cuda_impl *c, const char *file, int line)
{
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess && c->sync_launches) err = cudaStreamSynchronize(c->stream);
    if (err != cudaSuccess) {
        fprintf(stderr, "%s:%d: CUDA error in a kernel launched here: %s\n", file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}

/* Track the device's used memory (total - free) after an allocation. */
static void note_usage(cuda_impl *c)
{
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && total_b - free_b > c->mem_peak)
        c->mem_peak = total_b - free_b;
}

/* cudaMalloc of `bytes` for `what`; a failure exits naming the size and the device. */
static void *dev_malloc(cuda_impl *c, size_t bytes, const char *what)
{
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        fprintf(stderr, "backend_cuda: cudaMalloc of %zu bytes (%.2f GiB) for %s on device %d failed: %s\n", bytes,
                (double)bytes / (1024.0 * 1024.0 * 1024.0), what, c->device, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
    note_usage(c);
    return p;
}

/* *buf: device scratch of at least n elements of `elem` bytes, grown (never shrunk) as needed. */
static void *grow(cuda_impl *c, void **buf, size_t *have, size_t n, size_t elem, const char *what)
{
    if (*have < n) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        CUDA_CHECK(cudaFree(*buf));
        *buf = dev_malloc(c, n * elem, what);
        *have = n;
    }
    return *buf;
}

static void grow_f32(cuda_impl *c, float **buf, size_t *have, size_t n)
{
    grow(c, (void **)buf, have, n, sizeof(float), "fp32 scratch");
}

static uint16_t *grow_bf16(cuda_impl *c, uint16_t **buf, size_t *have, size_t n)
{
    return (uint16_t *)grow(c, (void **)buf, have, n, sizeof(uint16_t), "the bf16 copy of a matrix product's operand");
}

static double *red_scratch(cuda_impl *c, size_t n)
{
    return (double *)grow(c, (void **)&c->red, &c->red_n, n, sizeof(double), "reduction scratch");
}

/* An op's output element in fp32, or rounded to bf16 (nearest even: round_bf16's rounding). */
template <typename T> __device__ inline void store_out(T *p, float v) { vec_st<1>(p, fvec<1>{{v}}); }

/* An element of an fp32 or bf16 buffer, as fp32. */
__device__ inline float to_f32(float v) { return v; }
__device__ inline float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }


/* ------------------------------------------------------------------ reductions */

template <typename T> __device__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
 * result. sh holds 33 elements; safe to call repeatedly with the same sh. */
template <typename T> __device__ T block_sum(T v, T *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = warp_sum(v);
    __syncthreads(); /* earlier readers of sh are done */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        T t = lane < nw ? sh[lane] : (T)0;
        t = warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

__device__ float block_max(float v, float *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? sh[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

/* result[0] = sum of part[0..n), result[1] = sum of part2[0..n) (part2 may be NULL);
 * one block, fixed order. */
__global__ void k_reduce_doubles(double *result, const double *part, const double *part2, size_t n)
{
    __shared__ double sh[33];
    double s = 0.0, s2 = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        s += part[i];
        if (part2) s2 += part2[i];
    }
    s = block_sum(s, sh);
    s2 = block_sum(s2, sh);
    if (threadIdx.x == 0) {
        result[0] = s;
        result[1] = s2;
    }
}

/* Reduce part (and part2) on the device and bring the two sums back. */
static void reduce_to_host(cuda_impl *c, const double *part, const double *part2, size_t n, double out[2])
{
    PC_LAUNCH(k_reduce_doubles, 1, 1024, 0, c->stream)(c->result, part, part2, n);
    launch_check(c, __FILE__, __LINE__);
    CUDA_CHECK(cudaMemcpyAsync(c->result_host, c->result, 2 * sizeof(double), cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    out[0] = c->result_host[0];
    out[1] = c->result_host[1];
}

/* ------------------------------------------------------------------ lifecycle, memory */

static void cu_destroy(backend *be)
{
    cuda_impl *c = impl_of(be);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (c->prof_at_exit) {
        backend_cuda_profile_report(be, stderr, 0.0);
        attn_tc_tuned_report(stderr);
    }
    prof_destroy(c->prof);
    attn_cudnn_free(c->cudnn);
    CUDA_CHECK(cudaFree(c->att_d));
    CUDA_CHECK(cudaFree(c->dw_part));
    CUDA_CHECK(cudaFree(c->att16));
    CUDA_CHECK(cudaFree(c->red));
    CUDA_CHECK(cudaFree(c->bf_a));
    CUDA_CHECK(cudaFree(c->bf_b));
    CUDA_CHECK(cudaFree(c->result));
    CUDA_CHECK(cudaFreeHost(c->result_host));
    CUBLAS_CHECK(cublasDestroy(c->blas));
    CUDA_CHECK(cudaStreamDestroy(c->stream));
    free(c);
    free(be);
}

static void *dev_alloc_zeroed(backend *be, size_t bytes)
{
    cuda_impl *c = impl_of(be);
    if (bytes == 0) bytes = 4;
    void *p = dev_malloc(c, bytes, "a buffer");
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, c->stream));
    return p;
}

static size_t cu_mem_peak(backend *be)
{
    cuda_impl *c = impl_of(be);
    note_usage(c);
    return c->mem_peak;
}

/* The device's memory (cudaMemGetInfo): its total bytes, or with free what is not in use now. */
static size_t mem_bytes(int free)
{
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return free ? free_b : total_b;
}

static size_t cu_mem_total(backend *be) { return (void)be, mem_bytes(0); }

static size_t cu_mem_free(backend *be) { return (void)be, mem_bytes(1); }

static float *cu_alloc(backend *be, size_t n) { return (float *)dev_alloc_zeroed(be, n * sizeof(float)); }

static int32_t *cu_alloc_i32(backend *be, size_t n) { return (int32_t *)dev_alloc_zeroed(be, n * sizeof(int32_t)); }

static void cu_free(backend *be, void *p)
{
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(impl_of(be)->stream));
    CUDA_CHECK(cudaFree(p));
}

static void cu_zero(backend *be, float *x, size_t n)
{
    cuda_impl *c = impl_of(be);
    if (!n) return;
    PROF_BEGIN(c, "zero", 0, 4 * n);
    CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(float), c->stream));
    PROF_END(c);
}

static void cu_copy(backend *be, float *dst, const float *src, size_t n)
{
    cuda_impl *c = impl_of(be);
    if (dst == src || n == 0) return;
    size_t bytes = n * sizeof(float);
    int overlap = (dst < src && dst + n > src) || (src < dst && src + n > dst);
    if (!overlap) {
        PROF_BEGIN(c, "copy", 0, 2 * bytes);
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
        PROF_END(c);
        return;
    }
    /* overlapping ranges (memmove semantics): through a temporary */
    PROF_BEGIN(c, "copy", 0, 4 * bytes);
    float *tmp = (float *)dev_malloc(c, bytes, "an overlapping copy's temporary");
    CUDA_CHECK(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    CUDA_CHECK(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, c->stream));
    PROF_END(c);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    CUDA_CHECK(cudaFree(tmp));
}

/* `bytes` between host and device on the stream, complete on return */
static void copy_sync(backend *be, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    cuda_impl *c = impl_of(be);
    if (bytes == 0) return;
    PROF_BEGIN(c, kind == cudaMemcpyHostToDevice ? "upload (host to device)" : "download (device to host)", 0, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, c->stream));
    PROF_END(c);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

static void cu_upload_raw(backend *be, void *dst, const void *host_src, size_t bytes)
{
    copy_sync(be, dst, host_src, bytes, cudaMemcpyHostToDevice);
}

static void cu_download_raw(backend *be, void *host_dst, const void *src, size_t bytes)
{
    copy_sync(be, host_dst, src, bytes, cudaMemcpyDeviceToHost);
}

static void cu_upload(backend *be, float *dst, const float *host_src, size_t n)
{
    cu_upload_raw(be, dst, host_src, n * sizeof(float));
}

static void cu_download(backend *be, float *host_dst, const float *src, size_t n)
{
    cu_download_raw(be, host_dst, src, n * sizeof(float));
}

static uint16_t *cu_alloc_bf16(backend *be, size_t n)
{
    return (uint16_t *)dev_alloc_zeroed(be, n * sizeof(uint16_t));
}

static void cu_upload_bf16(backend *be, uint16_t *dst, const uint16_t *host_src, size_t n)
{
    cu_upload_raw(be, dst, host_src, n * sizeof(uint16_t));
}

/* bf16 bits are the high half of the fp32 with the same value */
__device__ float widen1(uint16_t b) { return vec_widen_bf16(b); }

static void cu_widen_bf16(backend *be, float *dst, const uint16_t *src, size_t n)
{
    cuda_impl *c = impl_of(be);
    if (!n) return;
    PROF_BEGIN(c, "widen_bf16", 0, 6 * n);
    widen_rows_bf16(c->stream, dst, n, src, 1, n, n); /* one dense row: 4 values a thread where aligned */
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_upload_i32(backend *be, int32_t *dst, const int32_t *host_src, size_t n)
{
    cu_upload_raw(be, dst, host_src, n * sizeof(int32_t));
}

static void cu_sync(backend *be) { CUDA_CHECK(cudaStreamSynchronize(impl_of(be)->stream)); }

/* ------------------------------------------------------------------ matrix products */

static cublasComputeType_t compute_type(const cuda_impl *c)
{
    return c->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

static void round_strided(cuda_impl *c, const char *region, __nv_bfloat16 *dst, size_t ld_dst, const float *src,
                          size_t rows, size_t cols, size_t ld)
{
    if (rows * cols == 0) return;
    PROF_BEGIN(c, region, 0, 6 * rows * cols);
    round_rows_bf16(c->stream, dst, ld_dst, src, rows, cols, ld);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
}

/* into a contiguous (rows, cols) */
static void round_into(cuda_impl *c, const char *region, __nv_bfloat16 *dst, const float *src, size_t rows,
                       size_t cols, size_t ld)
{
    round_strided(c, region, dst, cols, src, rows, cols, ld);
}

static const __nv_bfloat16 *to_bf16(cuda_impl *c, uint16_t **buf, size_t *have, const float *src, int rows, int cols,
                                    int ld)
{
    __nv_bfloat16 *dst = (__nv_bfloat16 *)grow_bf16(c, buf, have, (size_t)rows * cols);
    round_into(c, "gemm operand to bf16", dst, src, (size_t)rows, (size_t)cols, (size_t)ld);
    return dst;
}

/* Rows of op(A) (or columns of op(B)), each of K elements, to round per block so that a
 * block holds at most cap elements: all `total` when they fit, else a multiple of 64 when
 * at least 64 fit, else as many as fit (at least one). */
static int bf16_block(int total, int K, size_t cap)
{
    if ((size_t)total * K <= cap) return total;
    size_t b = cap / (size_t)K;
    if (b >= 64) b -= b % 64;
    return b ? (int)b : 1;
}

static void cu_round_bf16(backend *be, uint16_t *dst, const float *src, size_t n)
{
    round_into(impl_of(be), "round_bf16", (__nv_bfloat16 *)dst, src, 1, n, n);
}

static void cu_round_bf16_2d(backend *be, uint16_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols)
{
    round_strided(impl_of(be), "round_bf16", (__nv_bfloat16 *)dst, (size_t)ld_dst, src, (size_t)rows, (size_t)cols,
                  (size_t)ld_src);
}

static size_t dtype_bytes(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

/* Row-major C[M,N] = alpha op(A) op(B) + beta C by cublasGemmEx (column-major C^T[N,M] =
 * op(B)^T op(A)^T), A and B of type abt, C of type ct, in pieces such that no operand
 * spans c->gemm_span elements or more, counted as its leading dimension times its stored
 * rows (cuBLASLt has failed at exactly 2^31: the logits (B*T, V) of 16,744 tokens at V
 * 128256). Rows of C (and of op(A)) first, then its columns (a B stored (N, K)), then K
 * (an A stored (K, M), a B stored (K, N): the dW of the head reads dlogits (N, V)), each
 * K piece after the first added with beta 1. K is split only for an fp32 C: a bf16 one
 * would round each partial sum; its products (the layers' own, K the model width) stay
 * far below the bound. */
static void blas_gemm(cuda_impl *c, int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda,
                      const void *B, int ldb, cudaDataType abt, float beta, void *C, cudaDataType ct, int ldc,
                      cublasComputeType_t compute)
{
    const int64_t cap = c->gemm_span - 1; /* the most elements a piece may span */
    const size_t es = dtype_bytes(abt), cs = dtype_bytes(ct);
    const int64_t row_c = ldc, row_a = ta ? 1 : lda;            /* one row of C, of op(A) stored (M, K) */
    const int64_t row_m = row_c > row_a ? row_c : row_a;
    if ((int64_t)M * row_m > cap && M > 1) {
        const int mb = (int)(cap / row_m > 1 ? cap / row_m : 1);
        for (int m0 = 0; m0 < M; m0 += mb) /* op(A)'s rows: stored rows (ta 0) or columns (ta 1) */
            blas_gemm(c, ta, tb, mb < M - m0 ? mb : M - m0, N, K, alpha,
                      (const char *)A + (ta ? (size_t)m0 : (size_t)m0 * lda) * es, lda, B, ldb, abt, beta,
                      (char *)C + (size_t)m0 * ldc * cs, ct, ldc, compute);
        return;
    }
    if (tb && (int64_t)N * ldb > cap && N > 1) { /* B stored (N, K): its rows are C's columns */
        const int nb = (int)(cap / ldb > 1 ? cap / ldb : 1);
        for (int n0 = 0; n0 < N; n0 += nb)
            blas_gemm(c, ta, tb, M, nb < N - n0 ? nb : N - n0, K, alpha, A, lda,
                      (const char *)B + (size_t)n0 * ldb * es, ldb, abt, beta, (char *)C + (size_t)n0 * cs, ct, ldc,
                      compute);
        return;
    }
    const int64_t k_a = ta ? lda : 1, k_b = tb ? 1 : ldb; /* one k of A stored (K, M), of B stored (K, N) */
    const int64_t row_k = k_a > k_b ? k_a : k_b;
    if ((int64_t)K * row_k > cap && K > 1 && ct == CUDA_R_32F) {
        const int kb = (int)(cap / row_k > 1 ? cap / row_k : 1);
        for (int k0 = 0; k0 < K; k0 += kb)
            blas_gemm(c, ta, tb, M, N, kb < K - k0 ? kb : K - k0, alpha,
                      (const char *)A + (ta ? (size_t)k0 * lda : (size_t)k0) * es, lda,
                      (const char *)B + (tb ? (size_t)k0 : (size_t)k0 * ldb) * es, ldb, abt, k0 ? 1.0f : beta, C, ct,
                      ldc, compute);
        return;
    }
    c->gemm_calls++;
    CUBLAS_CHECK(cublasGemmEx(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                              B, abt, ldb, A, abt, lda, &beta, C, ct, ldc, compute, CUBLAS_GEMM_DEFAULT));
}

/* cu_gemm's product on bf16 operands (leading dimensions of their stored layouts), fp32
 * accumulation, into C of type ct (fp32, or bf16: each sum rounded once) */
static void gemm_bf16_into(cuda_impl *c, const char *region, int ta, int tb, int M, int N, int K, float alpha,
                           const __nv_bfloat16 *a, int lda, const __nv_bfloat16 *b, int ldb, float beta, void *C,
                           cudaDataType ct, int ldc)
{
    PROF_BEGIN(c, region, 2.0 * M * N * K, 0);
    blas_gemm(c, ta, tb, M, N, K, alpha, a, lda, b, ldb, CUDA_R_16BF, beta, C, ct, ldc, CUBLAS_COMPUTE_32F);
    PROF_END(c);
}

static void gemm_bf16(cuda_impl *c, int ta, int tb, int M, int N, int K, float alpha, const __nv_bfloat16 *a, int lda,
                      const __nv_bfloat16 *b, int ldb, float beta, float *C, int ldc)
{
    gemm_bf16_into(c, "gemm bf16", ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, C, CUDA_R_32F, ldc);
}

/* op(B)'s columns n0 .. n0+n (fp32, stored (K, N) or, tb, (N, K)) rounded into bf_b;
 * *ld: the copy's leading dimension. */
static const __nv_bfloat16 *b_block_bf16(cuda_impl *c, int tb, int K, const float *B, int ldb, int n0, int n, int *ld)
{
    *ld = tb ? K : n;
    return tb ? to_bf16(c, &c->bf_b, &c->bf_b_n, B + (size_t)n0 * ldb, n, K, ldb)
              : to_bf16(c, &c->bf_b, &c->bf_b_n, B + n0, K, n, ldb);
}

/* C[M,N] = alpha op(A) op(B) + beta C on bf16 tensor cores (K > 0): op(A) rounded into
 * bf_a in blocks of rows, op(B) either given in bf16 (b16, leading dimension ldb) or
 * rounded from B into bf_b in blocks of columns. A block holds at most c->bf_cap
 * elements, so the scratch stays bounded whatever the operands' size (dlogits (N, V),
 * an embedding-sized base slice); every dot product is whole (K is never split). */
static void gemm_bf16_blocks(cuda_impl *c, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                             const float *B, const __nv_bfloat16 *b16, int ldb, float beta, float *C, int ldc)
{
    const int mb = bf16_block(M, K, c->bf_cap), nb = b16 ? N : bf16_block(N, K, c->bf_cap);
    int ldb16 = ldb;
    if (!b16) /* fits whole: rounded once for every row block */
        if (nb == N) b16 = b_block_bf16(c, tb, K, B, ldb, 0, N, &ldb16);
    for (int m0 = 0; m0 < M; m0 += mb) {
        const int m = M - m0 < mb ? M - m0 : mb;
        /* op(A) rows m0 .. m0+m: stored rows (ta = 0: (m, K)) or columns (ta = 1: (K, m)) */
        const __nv_bfloat16 *a = ta ? to_bf16(c, &c->bf_a, &c->bf_a_n, A + m0, K, m, lda)
                                    : to_bf16(c, &c->bf_a, &c->bf_a_n, A + (size_t)m0 * lda, m, K, lda);
        for (int n0 = 0; n0 < N; n0 += nb) {
            const int n = N - n0 < nb ? N - n0 : nb;
            const __nv_bfloat16 *b = nb == N ? b16 : b_block_bf16(c, tb, K, B, ldb, n0, n, &ldb16);
            gemm_bf16(c, ta, tb, m, n, K, alpha, a, ta ? m : K, b, ldb16, beta, C + (size_t)m0 * ldc + n0, ldc);
        }
    }
}

/* Row-major C[M,N] = alpha op(A) op(B) + beta C  <=>  column-major C^T[N,M] = op(B)^T op(A)^T. */
static void cu_gemm(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc)
{
    cuda_impl *c = impl_of(be);
    if (M <= 0 || N <= 0) return;
    if (c->matmul == MATMUL_BF16 && K > 0) { /* bf16 copies of A and B, fp32 accumulation */
        gemm_bf16_blocks(c, ta, tb, M, N, K, alpha, A, lda, B, NULL, ldb, beta, C, ldc);
        return;
    }
    PROF_BEGIN(c, c->tf32 ? "gemm tf32" : "gemm fp32", 2.0 * M * N * K, 0);
    blas_gemm(c, ta, tb, M, N, K, alpha, A, lda, B, ldb, CUDA_R_32F, beta, C, CUDA_R_32F, ldc, compute_type(c));
    PROF_END(c);
}

/* The weight B is already bf16: only A is rounded. */
static void cu_gemm_w16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    cuda_impl *c = impl_of(be);
    if (M <= 0 || N <= 0) return;
    if (K > 0)
        gemm_bf16_blocks(c, ta, tb, M, N, K, alpha, A, lda, NULL, (const __nv_bfloat16 *)B, ldb, beta, C, ldc);
    else /* C = beta C */
        gemm_bf16(c, ta, tb, M, N, K, alpha, NULL, lda, (const __nv_bfloat16 *)B, ldb, beta, C, ldc);
}

/* Both operands already bf16: one cuBLAS product, no rounding. */
static void cu_gemm_16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                       const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    gemm_bf16(impl_of(be), ta, tb, M, N, K, alpha, (const __nv_bfloat16 *)A, lda, (const __nv_bfloat16 *)B, ldb, beta,
              C, ldc);
}

/* The same with C in bf16 (beta 0): cuBLAS rounds each fp32 sum as it stores it. */
static void cu_gemm_16_to16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                            const uint16_t *B, int ldb, uint16_t *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    gemm_bf16_into(impl_of(be), "gemm bf16 to bf16", ta, tb, M, N, K, alpha, (const __nv_bfloat16 *)A, lda,
                   (const __nv_bfloat16 *)B, ldb, 0.0f, C, CUDA_R_16BF, ldc);
}

static void cu_gemm_batched(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                            int64_t sa, const float *B, int ldb, int64_t sb, float beta, float *C, int ldc, int64_t sc,
                            int batch)
{
    cuda_impl *c = impl_of(be);
    if (M <= 0 || N <= 0 || batch <= 0) return;
    PROF_BEGIN(c, "gemm_batched fp32", 2.0 * M * N * K * batch, 0);
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            N, M, K, &alpha, B, CUDA_R_32F, ldb, (long long)sb, A, CUDA_R_32F, lda,
                                            (long long)sa, &beta, C, CUDA_R_32F, ldc, (long long)sc, batch,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); /* fp32 in every matmul mode */
    PROF_END(c);
}

/* ------------------------------------------------------------------ embedding */

/* (N,) -> (N,d): block n copies row tokens[n] */
__global__ void k_embedding_fwd(float *out, const float *table, const int32_t *tokens, int d)
{
    const size_t n = blockIdx.x;
    const float *src = table + (size_t)tokens[n] * d;
    float *dst = out + n * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

/* the same from a bf16 table, widened */
__global__ void k_embedding_fwd_w16(float *out, const uint16_t *table, const int32_t *tokens, int d)
{
    const size_t n = blockIdx.x;
    const uint16_t *src = table + (size_t)tokens[n] * d;
    float *dst = out + n * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = widen1(src[i]);
}

#define EMB_BWD_THREADS 256 /* a block of the embedding backward */
#define EMB_BWD_EACH 4       /* positions a thread compares in a scan (their loads in flight together) */
#define EMB_BWD_SCAN (EMB_BWD_THREADS * EMB_BWD_EACH) /* positions a scan covers */
#define EMB_BWD_WARPS (EMB_BWD_THREADS / 32)

/* dtable[tokens[n],:] += dout[n,:] for n in order, as the CPU adds them: the block of
 * position n returns unless n is its token's first position, and that block adds the
 * rows of every position of the token, in order, to the token's row, which no other
 * block writes. So the sums are the CPU's, bit for bit, whatever order blocks run in
 * (atomics would add repeated tokens' rows in the order the blocks happen to run). The
 * positions are scanned EMB_BWD_SCAN at a time, thread t comparing m0 + k 256 + t for
 * k < EMB_BWD_EACH: those of the token in a scan are listed in order (a ballot per warp
 * and k, and the counts before it), then each thread adds their rows to its V columns of
 * the token's row. V values a thread (V divides d). */
template <int V>
__global__ void k_embedding_bwd(float *dtable, const float *dout, const int32_t *tokens, int N, int d)
{
    __shared__ int hits[EMB_BWD_SCAN]; /* positions of the token in this scan, in order */
    __shared__ int warp_hits[EMB_BWD_EACH][EMB_BWD_WARPS];
    __shared__ int earlier;
    const int n = (int)blockIdx.x, tok = tokens[n], lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) earlier = 0;
    __syncthreads();
    for (int m0 = 0; m0 < n; m0 += EMB_BWD_SCAN) { /* is there an earlier position of tok? */
        bool hit = false;
        for (int k = 0; k < EMB_BWD_EACH; k++) {
            const int m = m0 + k * EMB_BWD_THREADS + (int)threadIdx.x;
            hit |= m < n && tokens[m] == tok;
        }
        if (hit) earlier = 1;
        __syncthreads();
        const int seen = earlier;
        __syncthreads(); /* every thread has read it before any writes again */
        if (seen) return;
    }
    float *row = dtable + (size_t)tok * d;
    for (int m0 = n; m0 < N; m0 += EMB_BWD_SCAN) {
        bool hit[EMB_BWD_EACH];
        unsigned bits[EMB_BWD_EACH];
        for (int k = 0; k < EMB_BWD_EACH; k++) {
            const int m = m0 + k * EMB_BWD_THREADS + (int)threadIdx.x;
            hit[k] = m < N && tokens[m] == tok;
        }
        for (int k = 0; k < EMB_BWD_EACH; k++) {
            bits[k] = __ballot_sync(0xffffffffu, hit[k]);
            if (lane == 0) warp_hits[k][warp] = __popc(bits[k]);
        }
        __syncthreads();
        int before = 0; /* hits of this scan before the next of this thread's positions */
        for (int k = 0; k < EMB_BWD_EACH; k++) {
            int at = before + __popc(bits[k] & ((1u << lane) - 1u));
            for (int w = 0; w < EMB_BWD_WARPS; w++) {
                at += w < warp ? warp_hits[k][w] : 0;
                before += warp_hits[k][w];
            }
            if (hit[k]) hits[at] = m0 + k * EMB_BWD_THREADS + (int)threadIdx.x;
        }
        const int count = before;
        __syncthreads();
        for (int i = threadIdx.x * V; i < d && count > 0; i += EMB_BWD_THREADS * V) {
            fvec<V> acc = vec_ld<V>(row + i);
            for (int h = 0; h < count; h++) {
                const fvec<V> g = vec_ld<V>(dout + (size_t)hits[h] * d + i);
                for (int j = 0; j < V; j++) acc.v[j] += g.v[j];
            }
            vec_st<V>(row + i, acc);
        }
        __syncthreads(); /* hits and warp_hits are rewritten by the next scan */
    }
}

static void cu_embedding_fwd(backend *be, float *out, const float *table, const int32_t *tokens, int N, int d)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0 || d <= 0) return;
    PROF_BEGIN(c, "embedding_fwd", 0, 8.0 * N * d);
    PC_LAUNCH(k_embedding_fwd, N, 256, 0, c->stream)(out, table, tokens, d);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_embedding_fwd_w16(backend *be, float *out, const uint16_t *table, const int32_t *tokens, int N, int d)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0 || d <= 0) return;
    PROF_BEGIN(c, "embedding_fwd", 0, 6.0 * N * d);
    PC_LAUNCH(k_embedding_fwd_w16, N, 256, 0, c->stream)(out, table, tokens, d);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_embedding_bwd(backend *be, float *dtable, const float *dout, const int32_t *tokens, int N, int d)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0 || d <= 0) return;
    PROF_BEGIN(c, "embedding_bwd", 0, 12.0 * N * d);
    if (rows_v4(d, vec_aligned(dtable, 4) && vec_aligned(dout, 4)))
        PC_LAUNCH(k_embedding_bwd<4>, N, EMB_BWD_THREADS, 0, c->stream)(dtable, dout, tokens, N, d);
    else
        PC_LAUNCH(k_embedding_bwd<1>, N, EMB_BWD_THREADS, 0, c->stream)(dtable, dout, tokens, N, d);
    LAUNCH_CHECK();
    PROF_END(c);
}

/* ------------------------------------------------------------------ rmsnorm */

/* (N,d) -> (N,d) of OutT (float or bf16), one block per row, V values a thread at a time
 * (vec.h; V divides d); with x_copy x is copied there too */
template <typename OutT, int V>
__global__ void k_rmsnorm_fwd(OutT *out, float *rstd, const float *x, const float *w, int d, float eps, float *x_copy)
{
    __shared__ float sh[33];
    const size_t n = blockIdx.x;
    const float *xr = x + n * d;
    OutT *o = out + n * d;
    float ss = 0.0f;
    for (int i = threadIdx.x * V; i < d; i += blockDim.x * V) {
        const fvec<V> xv = vec_ld<V>(xr + i);
        for (int j = 0; j < V; j++) ss += xv.v[j] * xv.v[j];
    }
    ss = block_sum(ss, sh);
    const float r = 1.0f / sqrtf(ss / (float)d + eps);
    if (threadIdx.x == 0) rstd[n] = r;
    for (int i = threadIdx.x * V; i < d; i += blockDim.x * V) {
        const fvec<V> xv = vec_ld<V>(xr + i), wv = vec_ld<V>(w + i);
        fvec<V> ov;
        for (int j = 0; j < V; j++) ov.v[j] = wv.v[j] * (xv.v[j] * r);
        vec_st<V>(o + i, ov);
        if (x_copy) vec_st<V>(x_copy + n * d + i, xv);
    }
}

/* dx += r * (g*w - x * r^2 * mean(g*w*x)), one block per row, V values a thread at a time
 * (V divides d); with dx16 the new dx rounded there too (row stride d) */
template <int V>
__global__ void k_rmsnorm_bwd_dx(float *dx, __nv_bfloat16 *dx16, const float *dout, const float *x, const float *w,
                                 const float *rstd, int d)
{
    __shared__ float sh[33];
    const size_t n = blockIdx.x;
    const float *xr = x + n * d, *g = dout + n * d;
    float *dxr = dx + n * d;
    const float r = rstd[n];
    float dot = 0.0f;
    for (int i = threadIdx.x * V; i < d; i += blockDim.x * V) {
        const fvec<V> gv = vec_ld<V>(g + i), wv = vec_ld<V>(w + i), xv = vec_ld<V>(xr + i);
        for (int j = 0; j < V; j++) dot += gv.v[j] * wv.v[j] * xv.v[j];
    }
    dot = block_sum(dot, sh);
    const float cc = dot * r * r / (float)d;
    for (int i = threadIdx.x * V; i < d; i += blockDim.x * V) {
        const fvec<V> gv = vec_ld<V>(g + i), wv = vec_ld<V>(w + i), xv = vec_ld<V>(xr + i);
        fvec<V> dv = vec_ld<V>(dxr + i);
        for (int j = 0; j < V; j++) dv.v[j] += r * (gv.v[j] * wv.v[j] - xv.v[j] * cc);
        vec_st<V>(dxr + i, dv);
        if (dx16) vec_st<V>(dx16 + n * d + i, dv);
    }
}

/* The backward's dw = sum_n dout[n,i] x[n,i] rstd[n] goes in two steps that fix its
 * order: each block sums its chunk of rows into its own row of partials, part (P, d), and
 * k_rmsnorm_dw_sum adds the P partials to dw in a fixed order. So dw has the same bits
 * whatever order blocks run in (atomics would add the chunks in the order blocks finish).
 * P is at most RMS_DW_PARTS, by the rows a block takes (rms_dw_rows), so the partials
 * take at most RMS_DW_PARTS x d x 4 bytes (4 MiB at d 1024) however many rows there are. */
#define RMS_DW_PARTS 1024
#define RMS_DW_ROWS 64 /* at least, rows of a block of the two-pass backward's dw */

/* rows a block takes: at least `least`, and enough that at most RMS_DW_PARTS blocks cover N */
static int rms_dw_rows(int N, int least)
{
    const int rows = (N + RMS_DW_PARTS - 1) / RMS_DW_PARTS;
    return rows > least ? rows : least;
}

/* part[y, i] = sum over block y's `rows` rows of dout[n,i] x[n,i] rstd[n]: block (column
 * chunk, row chunk y) */
__global__ void k_rmsnorm_bwd_dw(float *part, const float *dout, const float *x, const float *rstd, int N, int d,
                                 int rows)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= d) return;
    const int n0 = blockIdx.y * rows, n1 = min(N, n0 + rows);
    float s = 0.0f;
    for (int n = n0; n < n1; n++) s += dout[(size_t)n * d + i] * x[(size_t)n * d + i] * rstd[n];
    part[(size_t)blockIdx.y * d + i] = s;
}

/* dw[i] += sum_p part[p, i] (P, d), p in a fixed order: a block of 8 warps per 32
 * columns, warp w summing the partials p = w, w + 8, ... of its lane's column, then the
 * 8 warps' sums in order */
__global__ void k_rmsnorm_dw_sum(float *dw, const float *part, int P, int d)
{
    __shared__ float sh[8][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, i = blockIdx.x * 32 + lane;
    float sum = 0.0f;
    if (i < d)
        for (int p = warp; p < P; p += 8) sum += part[(size_t)p * d + i];
    sh[warp][lane] = sum;
    __syncthreads();
    if (warp > 0 || i >= d) return;
    float t = sh[0][lane];
    for (int w = 1; w < 8; w++) t += sh[w][lane];
    dw[i] += t;
}

#define RMS_BWD_ROWS 8   /* at least, rows a block of the one-pass backward walks */
#define RMS_BWD_GROUPS 8 /* at most, groups of V columns a thread sums dw for: d up to 8 x 256 x V */

/* The backward in one pass over dout and x: dx as k_rmsnorm_bwd_dx and the block's row of
 * dw partials, part[blockIdx.x, i] = sum_n dout[n,i] x[n,i] rstd[n] over its `rows` rows
 * (rms_dw_rows), one row at a time, each thread summing its columns' dw over the block's
 * rows in registers and storing them once at the end (k_rmsnorm_bwd_dw read dout and x
 * a second time). V values a thread at a time (V divides d); d <= G * blockDim.x * V (G
 * groups a thread: no more registers than d needs). With dx16 the new dx rounded there
 * too (row stride d). */
template <int V, int G>
__global__ void k_rmsnorm_bwd(float *dx, __nv_bfloat16 *dx16, float *part, const float *dout, const float *x,
                              const float *w, const float *rstd, int N, int d, int rows)
{
    __shared__ float sh[33];
    float acc[G][V] = {};
    const int n1 = min(N, (int)(blockIdx.x + 1) * rows), step = (int)blockDim.x * V;
    for (int n = (int)blockIdx.x * rows; n < n1; n++) {
        const float *xr = x + (size_t)n * d, *g = dout + (size_t)n * d;
        float *dxr = dx + (size_t)n * d;
        const float r = rstd[n];
        float dot = 0.0f;
        for (int i = threadIdx.x * V; i < d; i += step) {
            const fvec<V> gv = vec_ld<V>(g + i), wv = vec_ld<V>(w + i), xv = vec_ld<V>(xr + i);
            for (int j = 0; j < V; j++) dot += gv.v[j] * wv.v[j] * xv.v[j];
        }
        dot = block_sum(dot, sh);
        const float cc = dot * r * r / (float)d;
        PC_UNROLL
        for (int k = 0; k < G; k++) { /* unrolled: acc stays in registers */
            const int i = threadIdx.x * V + k * step;
            if (i >= d) break;
            const fvec<V> gv = vec_ld<V>(g + i), wv = vec_ld<V>(w + i), xv = vec_ld<V>(xr + i);
            fvec<V> dv = vec_ld<V>(dxr + i);
            for (int j = 0; j < V; j++) {
                dv.v[j] += r * (gv.v[j] * wv.v[j] - xv.v[j] * cc);
                acc[k][j] += gv.v[j] * xv.v[j] * r;
            }
            vec_st<V>(dxr + i, dv);
            if (dx16) vec_st<V>(dx16 + (size_t)n * d + i, dv);
        }
    }
    PC_UNROLL
    for (int k = 0; k < G; k++) {
        const int i = threadIdx.x * V + k * step;
        if (i >= d) break;
        fvec<V> pv;
        for (int j = 0; j < V; j++) pv.v[j] = acc[k][j];
        vec_st<V>(part + (size_t)blockIdx.x * d + i, pv);
    }
}

/* k_rmsnorm_bwd with the fewest groups a thread (1, 2, 4 or RMS_BWD_GROUPS) that cover d
 * (d <= RMS_BWD_GROUPS * 256 V), `blocks` blocks of `rows` rows. */
template <int V>
static void rmsnorm_bwd_one_pass(cudaStream_t s, float *dx, __nv_bfloat16 *dx16, float *part, const float *dout,
                                 const float *x, const float *w, const float *rstd, int N, int d, int rows,
                                 unsigned blocks)
{
    const int groups = (d + 256 * V - 1) / (256 * V);
    if (groups <= 1)
        PC_LAUNCH((k_rmsnorm_bwd<V, 1>), blocks, 256, 0, s)(dx, dx16, part, dout, x, w, rstd, N, d, rows);
    else if (groups <= 2)
        PC_LAUNCH((k_rmsnorm_bwd<V, 2>), blocks, 256, 0, s)(dx, dx16, part, dout, x, w, rstd, N, d, rows);
    else if (groups <= 4)
        PC_LAUNCH((k_rmsnorm_bwd<V, 4>), blocks, 256, 0, s)(dx, dx16, part, dout, x, w, rstd, N, d, rows);
    else
        PC_LAUNCH((k_rmsnorm_bwd<V, RMS_BWD_GROUPS>), blocks, 256, 0, s)(dx, dx16, part, dout, x, w, rstd, N, d,
                                                                          rows);
}

/* rmsnorm_fwd's and rmsnorm_fwd_16's launch: out (N, d) in OutT, x copied to x_copy (or
 * NULL); bytes_per_elem for the profile (a copy adds 4) */
template <typename OutT>
static void rmsnorm_rows(backend *be, const char *region, double bytes_per_elem, OutT *out, float *rstd, const float *x,
                         const float *w, int N, int d, float eps, float *x_copy)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0 || d <= 0) return;
    PROF_BEGIN(c, region, 0, (bytes_per_elem + (x_copy ? 4.0 : 0.0)) * N * d);
    if (rows_v4(d, vec_aligned(out, sizeof *out) && vec_aligned(x, 4) && vec_aligned(w, 4) &&
                       (!x_copy || vec_aligned(x_copy, 4))))
        PC_LAUNCH((k_rmsnorm_fwd<OutT, 4>), N, 256, 0, c->stream)(out, rstd, x, w, d, eps, x_copy);
    else
        PC_LAUNCH((k_rmsnorm_fwd<OutT, 1>), N, 256, 0, c->stream)(out, rstd, x, w, d, eps, x_copy);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_rmsnorm_fwd(backend *be, float *out, float *rstd, const float *x, const float *w, int N, int d,
                           float eps)
{
    rmsnorm_rows<float>(be, "rmsnorm_fwd", 8.0, out, rstd, x, w, N, d, eps, NULL); /* x in, out */
}

static void cu_rmsnorm_fwd_16(backend *be, uint16_t *out, float *rstd, const float *x, const float *w, int N, int d,
                              float eps, float *x_copy)
{
    rmsnorm_rows<__nv_bfloat16>(be, x_copy ? "rmsnorm_fwd_16, x copy" : "rmsnorm_fwd_16", 6.0, (__nv_bfloat16 *)out,
                                rstd, x, w, N, d, eps, x_copy); /* bf16 out */
}

/* rmsnorm_bwd (dx16 NULL) and rmsnorm_bwd_16 */
static void rmsnorm_bwd_launch(cuda_impl *c, const char *region, float *dx, __nv_bfloat16 *dx16, float *dw,
                               const float *dout, const float *x, const float *w, const float *rstd, int N, int d)
{
    cudaStream_t s = c->stream;
    if (N <= 0 || d <= 0) return;
    PROF_BEGIN(c, region, 0, (dx16 ? 18.0 : 16.0) * N * d); /* dout and x in, dx added to (and rounded) */
    const bool v4 = rows_v4(d, vec_aligned(dx, 4) && vec_aligned(dout, 4) && vec_aligned(x, 4) &&
                                   vec_aligned(w, 4) && vec_aligned(dx16, 2));
    /* one pass where each thread's dw sums fit RMS_BWD_GROUPS groups of 256 V columns; the
     * partials' rows are its blocks, else the two-pass dw's row chunks */
    const bool one_pass = d <= RMS_BWD_GROUPS * 256 * (v4 ? 4 : 1);
    const int rows = rms_dw_rows(N, one_pass ? RMS_BWD_ROWS : RMS_DW_ROWS), parts = (N + rows - 1) / rows;
    grow_f32(c, &c->dw_part, &c->dw_part_n, (size_t)parts * d);
    float *part = c->dw_part; /* (parts, d) */
    if (one_pass) {
        if (v4)
            rmsnorm_bwd_one_pass<4>(s, dx, dx16, part, dout, x, w, rstd, N, d, rows, (unsigned)parts);
        else
            rmsnorm_bwd_one_pass<1>(s, dx, dx16, part, dout, x, w, rstd, N, d, rows, (unsigned)parts);
        launch_check(c, __FILE__, __LINE__);
    } else { /* wider rows: dx, then dw in a second pass */
        if (v4)
            PC_LAUNCH(k_rmsnorm_bwd_dx<4>, N, 256, 0, s)(dx, dx16, dout, x, w, rstd, d);
        else
            PC_LAUNCH(k_rmsnorm_bwd_dx<1>, N, 256, 0, s)(dx, dx16, dout, x, w, rstd, d);
        launch_check(c, __FILE__, __LINE__);
        dim3 grid((unsigned)((d + 255) / 256), (unsigned)parts);
        PC_LAUNCH(k_rmsnorm_bwd_dw, grid, 256, 0, s)(part, dout, x, rstd, N, d, rows);
        launch_check(c, __FILE__, __LINE__);
    }
    PC_LAUNCH(k_rmsnorm_dw_sum, (unsigned)((d + 31) / 32), 256, 0, s)(dw, part, parts, d);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
}

static void cu_rmsnorm_bwd(backend *be, float *dx, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int N, int d)
{
    rmsnorm_bwd_launch(impl_of(be), "rmsnorm_bwd", dx, NULL, dw, dout, x, w, rstd, N, d);
}

static void cu_rmsnorm_bwd_16(backend *be, float *dx, uint16_t *dx16, float *dw, const float *dout, const float *x,
                              const float *w, const float *rstd, int N, int d)
{
    rmsnorm_bwd_launch(impl_of(be), "rmsnorm_bwd_16", dx, (__nv_bfloat16 *)dx16, dw, dout, x, w, rstd, N, d);
}

/* ------------------------------------------------------------------ rope */

/* One thread per (token, head, V pairs from i); token row b*T+t at stride ld, position
 * t; V pairs at a time (vec.h; V divides hd / 2, ld, ld_y and the heads' offsets). x in
 * InT (fp32, or bf16 bits, widened); the rotated pairs go to y (row stride ld_y): x
 * itself (in place, fp32 or bf16), or a bf16 copy. The fastdivs divide by hd / 2V,
 * n_heads and T. */
template <typename OutT, typename InT, int V>
__global__ void k_rope(OutT *y, size_t ld_y, const InT *x, const float *cos_t, const float *sin_t, int T,
                       int n_heads, int hd, int ld, float sign, size_t groups, fastdiv f_half, fastdiv f_heads,
                       fastdiv f_T)
{
    const int half = hd / 2;
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (size_t)gridDim.x * blockDim.x) {
        size_t pairs, i; /* (row, head), first pair */
        vec_row_col<V>(g, f_half, half, &pairs, &i);
        const size_t row = fastdiv_div(f_heads, pairs); /* b*T + t */
        const int h = (int)(pairs - row * n_heads);
        const int t = (int)(row - fastdiv_div(f_T, row) * T);
        const InT *xh = x + row * ld + (size_t)h * hd;
        OutT *yh = y + row * ld_y + (size_t)h * hd;
        const fvec<V> c = vec_ld<V>(cos_t + (size_t)t * half + i), si = vec_ld<V>(sin_t + (size_t)t * half + i);
        fvec<V> x1 = vec_ld<V>(xh + i), x2 = vec_ld<V>(xh + i + half);
        for (int j = 0; j < V; j++) {
            const float a = x1.v[j], b = x2.v[j], sn = sign * si.v[j];
            x1.v[j] = a * c.v[j] - b * sn;
            x2.v[j] = b * c.v[j] + a * sn;
        }
        vec_st<V>(yh + i, x1);
        vec_st<V>(yh + i + half, x2);
    }
}

/* The rotation (sign 1) or its inverse (-1) of n_heads heads of x's B T rows (stride ld)
 * into y (row stride ld_y; y == x: in place), profiled as `region`. */
template <typename OutT, typename InT>
static void rope_launch(cuda_impl *c, const char *region, OutT *y, size_t ld_y, const InT *x, const float *cos_t,
                        const float *sin_t, int B, int T, int n_heads, int hd, int ld, float sign)
{
    size_t total = (size_t)B * T * n_heads * (hd / 2);
    if (total == 0) return;
    PROF_BEGIN(c, region, 0, 2.0 * (sizeof(InT) + sizeof(OutT)) * total); /* a pair read and written */
    /* rows of n_heads heads: (B T n_heads, hd / 2) pairs at stride hd / 2 (ld, ld_y, hd: the heads' offsets) */
    const rows_launch L = rows_plan((size_t)B * T * n_heads, hd / 2, (size_t)ld | ld_y | (size_t)hd,
                                    vec_aligned(x, sizeof(InT)) && vec_aligned(y, sizeof(OutT)) &&
                                        vec_aligned(cos_t, 4) && vec_aligned(sin_t, 4));
    const fastdiv f_heads = fastdiv_make((unsigned)n_heads), f_T = fastdiv_make((unsigned)T);
    if (L.v4)
        PC_LAUNCH((k_rope<OutT, InT, 4>), L.grid, 256, 0, c->stream)(y, ld_y, x, cos_t, sin_t, T, n_heads, hd, ld,
                                                                    sign, L.groups, L.fv, f_heads, f_T);
    else
        PC_LAUNCH((k_rope<OutT, InT, 1>), L.grid, 256, 0, c->stream)(y, ld_y, x, cos_t, sin_t, T, n_heads, hd, ld,
                                                                    sign, L.groups, L.fv, f_heads, f_T);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
}

static void cu_rope_fwd(backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                        int hd, int ld)
{
    rope_launch(impl_of(be), "rope_fwd", x, (size_t)ld, x, cos_t, sin_t, B, T, n_heads, hd, ld, 1.0f);
}

static void cu_rope_bwd(backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                        int hd, int ld)
{
    rope_launch(impl_of(be), "rope_bwd", dx, (size_t)ld, dx, cos_t, sin_t, B, T, n_heads, hd, ld, -1.0f);
}

/* ------------------------------------------------------------------ attention */

/* Tiling: a block of ATT_WARPS warps owns ATT_WARPS consecutive rows (one per warp);
 * the other side of the product is walked in tiles of 32 rows held in shared memory,
 * lane j of a warp handling row j of the tile. Each lane keeps the head_dim columns
 * c = lane + 32*r, r < ATT_R, of its warp's accumulators. */
#define ATT_WARPS 8
#define ATT_TILE 32
#define ATT_HD BACKEND_CUDA_MAX_HEAD_DIM
#define ATT_R (ATT_HD / 32)

/* Load a (ATT_TILE, hd) tile of rows r0.. of a (T, hd) head view with row stride ld
 * into dst with row stride dst_ld; rows past T are zero. All threads of the block call it. */
__device__ void load_tile(float *dst, int dst_ld, const float *src, int ld, int r0, int T, int hd)
{
    for (int idx = threadIdx.x; idx < ATT_TILE * hd; idx += blockDim.x) {
        const int j = idx / hd, c = idx % hd;
        dst[j * dst_ld + c] = r0 + j < T ? src[(size_t)(r0 + j) * ld + c] : 0.0f;
    }
}

/* grid (ceil(T/ATT_WARPS), H, B), ATT_WARPS*32 threads. out (B,T,H,hd) stride H*hd, lse (B,H,T). */
__global__ void k_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int T, int H,
                                int KV, int hd, int ld, float scale)
{
    __shared__ float k_s[ATT_TILE * (ATT_HD + 1)]; /* padded: lane j reads row j */
    __shared__ float v_s[ATT_TILE * ATT_HD];
    __shared__ float q_s[ATT_WARPS * ATT_HD];
    const int b = blockIdx.z, h = blockIdx.y, g = h / (H / KV);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * ATT_WARPS, i = q0 + warp; /* this warp's query row */
    const int last = min(T - 1, q0 + ATT_WARPS - 1);     /* last query row of the block */
    const size_t base = (size_t)b * T * ld;
    const float *qh = q + base + (size_t)h * hd, *kh = k + base + (size_t)g * hd, *vh = v + base + (size_t)g * hd;

    float *qw = q_s + warp * ATT_HD;
    for (int c = lane; c < hd; c += 32) qw[c] = i < T ? qh[(size_t)i * ld + c] : 0.0f;

    float m = -INFINITY, l = 0.0f, acc[ATT_R];
    for (int r = 0; r < ATT_R; r++) acc[r] = 0.0f;

    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads(); /* previous tile consumed (and q_s written) */
        load_tile(k_s, hd + 1, kh, ld, k0, T, hd);
        load_tile(v_s, hd, vh, ld, k0, T, hd);
        __syncthreads();
        if (i < T && k0 <= i) { /* warp-uniform: key k0 <= i is valid, so the tile max is finite */
            const int j = k0 + lane;
            float s = -INFINITY;
            if (j <= i) {
                float dot = 0.0f;
                for (int c = 0; c < hd; c++) dot += qw[c] * k_s[lane * (hd + 1) + c];
                s = scale * dot;
            }
            const float m_new = fmaxf(m, warp_max(s));
            const float alpha = expf(m - m_new); /* 0 on the first tile (m = -inf) */
            const float p = j <= i ? expf(s - m_new) : 0.0f;
            l = l * alpha + warp_sum(p);
            for (int r = 0; r < ATT_R; r++) acc[r] *= alpha;
            for (int jj = 0; jj < ATT_TILE; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
                for (int r = 0; r < ATT_R; r++) {
                    const int c = lane + 32 * r;
                    if (c < hd) acc[r] += pj * v_s[jj * hd + c];
                }
            }
            m = m_new;
        }
    }
    if (i < T) {
        const int ldo = H * hd;
        float *o = out + ((size_t)b * T + i) * ldo + (size_t)h * hd;
        const float inv = 1.0f / l;
        for (int r = 0; r < ATT_R; r++) {
            const int c = lane + 32 * r;
            if (c < hd) o[c] = acc[r] * inv;
        }
        if (lane == 0) lse[((size_t)b * H + h) * T + i] = m + logf(l);
    }
}

/* D[b,h,t] = sum_c dO[b,t,h,c] O[b,t,h,c]: one warp per (b,t,h) row; dO in GradT (fp32,
 * or bf16 already); with dout16 the same pass writes dO's bf16 copy (B,T,H,hd) for the
 * tensor-core kernels, nearest even (the values round_rows_bf16 would write), reading dO
 * once for both. */
template <typename OutT, typename GradT>
__global__ void k_attention_dsum(float *D, __nv_bfloat16 *dout16, const GradT *dout, const OutT *out, int B, int T,
                                 int H, int hd)
{
    const size_t row = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; /* (b*T + t)*H + h */
    const int lane = threadIdx.x & 31;
    if (row >= (size_t)B * T * H) return; /* warp-uniform */
    const OutT *o = out + row * hd;
    const GradT *g = dout + row * hd;
    float s = 0.0f;
    for (int c = lane; c < hd; c += 32) {
        const float gc = to_f32(g[c]);
        s += to_f32(o[c]) * gc;
        if (dout16) dout16[row * hd + c] = __float2bfloat16_rn(gc);
    }
    s = warp_sum(s);
    const int h = (int)(row % H);
    const size_t bt = row / H, b = bt / T, t = bt % T;
    if (lane == 0) D[(b * H + h) * T + t] = s;
}

/* dQ, one warp per query row i: dq_i = scale * sum_j dS_ij k_j with
 * P_ij = exp(scale q_i.k_j - lse_i), dS_ij = P_ij (dO_i.v_j - D_i), j <= i.
 * grid (ceil(T/ATT_WARPS), H, B). */
__global__ void k_attention_bwd_dq(float *dq, const float *dout, const float *lse, const float *D, const float *q,
                                   const float *k, const float *v, int T, int H, int KV, int hd, int ld, float scale)
{
    __shared__ float k_s[ATT_TILE * (ATT_HD + 1)];
    __shared__ float v_s[ATT_TILE * (ATT_HD + 1)];
    __shared__ float q_s[ATT_WARPS * ATT_HD];
    __shared__ float do_s[ATT_WARPS * ATT_HD];
    const int b = blockIdx.z, h = blockIdx.y, g = h / (H / KV);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * ATT_WARPS, i = q0 + warp;
    const int last = min(T - 1, q0 + ATT_WARPS - 1);
    const size_t base = (size_t)b * T * ld;
    const int ldo = H * hd;
    const float *qh = q + base + (size_t)h * hd, *kh = k + base + (size_t)g * hd, *vh = v + base + (size_t)g * hd;
    const float *doh = dout + (size_t)b * T * ldo + (size_t)h * hd;

    float *qw = q_s + warp * ATT_HD, *dow = do_s + warp * ATT_HD;
    for (int c = lane; c < hd; c += 32) {
        qw[c] = i < T ? qh[(size_t)i * ld + c] : 0.0f;
        dow[c] = i < T ? doh[(size_t)i * ldo + c] : 0.0f;
    }
    const float lse_i = i < T ? lse[((size_t)b * H + h) * T + i] : 0.0f;
    const float D_i = i < T ? D[((size_t)b * H + h) * T + i] : 0.0f;

    float acc[ATT_R];
    for (int r = 0; r < ATT_R; r++) acc[r] = 0.0f;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();
        load_tile(k_s, hd + 1, kh, ld, k0, T, hd);
        load_tile(v_s, hd + 1, vh, ld, k0, T, hd);
        __syncthreads();
        if (i < T && k0 <= i) {
            const int j = k0 + lane;
            float ds = 0.0f;
            if (j <= i) {
                float qk = 0.0f, dp = 0.0f;
                for (int c = 0; c < hd; c++) {
                    qk += qw[c] * k_s[lane * (hd + 1) + c];
                    dp += dow[c] * v_s[lane * (hd + 1) + c];
                }
                const float p = expf(scale * qk - lse_i);
                ds = p * (dp - D_i);
            }
            for (int jj = 0; jj < ATT_TILE; jj++) {
                const float dsj = __shfl_sync(0xffffffffu, ds, jj);
                for (int r = 0; r < ATT_R; r++) {
                    const int c = lane + 32 * r;
                    if (c < hd) acc[r] += dsj * k_s[jj * (hd + 1) + c];
                }
            }
        }
    }
    if (i < T) {
        float *o = dq + base + (size_t)i * ld + (size_t)h * hd;
        for (int r = 0; r < ATT_R; r++) {
            const int c = lane + 32 * r;
            if (c < hd) o[c] = scale * acc[r];
        }
    }
}

/* dK, dV, one warp per key row j of kv head g, summed over the query heads of the group
 * and the query rows i >= j: dv_j = sum P_ij dO_i, dk_j = scale * sum dS_ij q_i.
 * grid (ceil(T/ATT_WARPS), KV, B). */
__global__ void k_attention_bwd_dkv(float *dk, float *dv, const float *dout, const float *lse, const float *D,
                                    const float *q, const float *k, const float *v, int T, int H, int KV, int hd,
                                    int ld, float scale)
{
    __shared__ float q_s[ATT_TILE * (ATT_HD + 1)];
    __shared__ float do_s[ATT_TILE * (ATT_HD + 1)];
    __shared__ float k_s[ATT_WARPS * ATT_HD];
    __shared__ float v_s[ATT_WARPS * ATT_HD];
    __shared__ float lse_s[ATT_TILE], D_s[ATT_TILE];
    const int b = blockIdx.z, g = blockIdx.y, group = H / KV;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int j0 = blockIdx.x * ATT_WARPS, j = j0 + warp; /* this warp's key row */
    const size_t base = (size_t)b * T * ld;
    const int ldo = H * hd;
    const float *kh = k + base + (size_t)g * hd, *vh = v + base + (size_t)g * hd;

    float *kw = k_s + warp * ATT_HD, *vw = v_s + warp * ATT_HD;
    for (int c = lane; c < hd; c += 32) {
        kw[c] = j < T ? kh[(size_t)j * ld + c] : 0.0f;
        vw[c] = j < T ? vh[(size_t)j * ld + c] : 0.0f;
    }
    float dk_acc[ATT_R], dv_acc[ATT_R];
    for (int r = 0; r < ATT_R; r++) dk_acc[r] = dv_acc[r] = 0.0f;

    const int first_tile = (j0 / ATT_TILE) * ATT_TILE; /* tile holding the smallest i >= j0 */
    for (int h = g * group; h < (g + 1) * group; h++) {
        const float *qh = q + base + (size_t)h * hd;
        const float *doh = dout + (size_t)b * T * ldo + (size_t)h * hd;
        const float *lse_h = lse + ((size_t)b * H + h) * T, *D_h = D + ((size_t)b * H + h) * T;
        for (int i0 = first_tile; i0 < T; i0 += ATT_TILE) {
            __syncthreads();
            load_tile(q_s, hd + 1, qh, ld, i0, T, hd);
            load_tile(do_s, hd + 1, doh, ldo, i0, T, hd);
            if (threadIdx.x < ATT_TILE) {
                const int ii = i0 + threadIdx.x;
                lse_s[threadIdx.x] = ii < T ? lse_h[ii] : 0.0f;
                D_s[threadIdx.x] = ii < T ? D_h[ii] : 0.0f;
            }
            __syncthreads();
            if (j < T && i0 + ATT_TILE - 1 >= j) { /* warp-uniform: the tile holds some i >= j */
                const int i = i0 + lane;
                float p = 0.0f, ds = 0.0f;
                if (i < T && i >= j) {
                    float qk = 0.0f, dp = 0.0f;
                    for (int c = 0; c < hd; c++) {
                        qk += q_s[lane * (hd + 1) + c] * kw[c];
                        dp += do_s[lane * (hd + 1) + c] * vw[c];
                    }
                    p = expf(scale * qk - lse_s[lane]);
                    ds = p * (dp - D_s[lane]);
                }
                for (int ii = 0; ii < ATT_TILE; ii++) {
                    const float pi = __shfl_sync(0xffffffffu, p, ii);
                    const float dsi = __shfl_sync(0xffffffffu, ds, ii);
                    for (int r = 0; r < ATT_R; r++) {
                        const int c = lane + 32 * r;
                        if (c < hd) {
                            dv_acc[r] += pi * do_s[ii * (hd + 1) + c];
                            dk_acc[r] += dsi * q_s[ii * (hd + 1) + c];
                        }
                    }
                }
            }
        }
    }
    if (j < T) {
        float *dko = dk + base + (size_t)j * ld + (size_t)g * hd, *dvo = dv + base + (size_t)j * ld + (size_t)g * hd;
        for (int r = 0; r < ATT_R; r++) {
            const int c = lane + 32 * r;
            if (c < hd) {
                dko[c] = scale * dk_acc[r];
                dvo[c] = dv_acc[r];
            }
        }
    }
}

static void check_attention_shape(int H, int KV, int hd)
{
    if (hd <= 0 || hd > ATT_HD || KV <= 0 || H % KV != 0) {
        fprintf(stderr, "backend_cuda: attention needs 0 < head_dim <= %d and H a multiple of KV, got hd=%d H=%d KV=%d\n",
                ATT_HD, hd, H, KV);
        exit(EXIT_FAILURE);
    }
}

/* Attention goes to attention_tc.cu (backend_cuda_set_attention, and a head_dim and device
 * it takes). */
static int on_tensor_cores(const cuda_impl *c, int hd) { return c->attn_bf16 && attn_tc_supported(hd, c->smem_optin); }

/* attention_tc's scratch (grown, never shrunk): the bf16 copies of q, k, v (qkv16) and dO
 * (dout16) that calls with fp32 inputs make, or dout16 alone for calls given qkv16. */
static char *att16_scratch(cuda_impl *c, size_t bytes)
{
    return (char *)grow(c, &c->att16, &c->att16_n, bytes, 1, "the bf16 copies of attention's q, k, v and dO");
}

/* q, k, v (rows of stride ld) rounded into the first bytes of the att16 scratch, which is
 * sized first for `extra` bytes more (what the call puts after them: a grown scratch
 * keeps nothing); profiled as region (each fp32 value read, its bf16 copy written: 6
 * bytes). The copies, qkv16 as attention_tc.h lays it out. */
static char *att16_copies(cuda_impl *c, const char *region, size_t extra, const float *q, const float *k,
                          const float *v, int B, int T, int H, int KV, int hd, int ld)
{
    char *qkv16 = att16_scratch(c, attn_tc_qkv_bytes(B, T, H, KV, hd) + extra);
    PROF_BEGIN(c, region, 0, 6.0 * B * T * (H + 2 * KV) * hd);
    attn_tc_copies(c->stream, qkv16, q, k, v, B, T, H, KV, hd, ld);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
    return qkv16;
}

/* The tensor-core forward from qkv16 (attention_tc.h's layout), out in fp32 or (out16) bf16. */
static void att16_fwd(cuda_impl *c, const void *qkv16, void *out, int out16, float *lse, int B, int T, int H, int KV,
                      int hd)
{
    PROF_BEGIN(c, "attention_fwd bf16", attn_tc_flops(B, T, H, hd), 0);
    attn_tc_fwd(c->stream, qkv16, out, out16, lse, B, T, H, KV, hd);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
}

/* ---- attention by cuDNN (backend_cuda_use_cudnn): the same bf16 inputs as the
 * tensor-core kernels, with its bf16 outputs widened where the caller wants fp32 */

/* dst (rows, w) fp32 with row stride ld_dst from src (rows, w) bf16 with row stride ld_src */
static void widen_rows(cuda_impl *c, const char *region, float *dst, size_t ld_dst, const uint16_t *src,
                       size_t ld_src, size_t rows, int w)
{
    if (rows == 0 || w <= 0) return;
    PROF_BEGIN(c, region, 0, 6.0 * rows * w);
    widen_rows_bf16(c->stream, dst, ld_dst, src, rows, (size_t)w, ld_src);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
}

/* A cuDNN call that failed: the op table has no error channel, so the process exits with
 * cuDNN's reason, as a CUDA failure does (during a trial the reason is kept instead). */
static void cudnn_check(cuda_impl *c, int rc, const char *err)
{
    if (rc == 0) {
        note_usage(c); /* its scratch may have grown */
        return;
    }
    if (c->cudnn_trial) { /* kept for backend_cuda_cudnn_trial; the call's outputs mean nothing */
        if (!c->cudnn_failed[0]) snprintf(c->cudnn_failed, sizeof c->cudnn_failed, "%s", err);
        return;
    }
    fprintf(stderr, "backend_cuda on device %d: %s\n", c->device, err);
    exit(EXIT_FAILURE);
}

/* The att16 scratch the cuDNN calls below take past `skip` bytes (a caller whose qkv16 is
 * the scratch's first bytes sizes the scratch for both before making it: a grown
 * scratch keeps nothing): the forward's bf16 out where the caller wants fp32; the
 * backward's dO copy, out's (out16 0) and its bf16 dq | dk | dv. */
static size_t cudnn_fwd_bytes(int B, int T, int H, int hd, int out16)
{
    return out16 ? 0 : attn_tc_dout_bytes(B, T, H, hd);
}
static size_t cudnn_bwd_bytes(int B, int T, int H, int KV, int hd, int out16)
{
    const size_t nd = attn_tc_dout_bytes(B, T, H, hd);
    return nd + (out16 ? 0 : nd) + attn_tc_qkv_bytes(B, T, H, KV, hd);
}

/* out (B T, H hd) in bf16 (out16) or fp32, and lse, by cuDNN from qkv16 */
static void cudnn_fwd(cuda_impl *c, size_t skip, const void *qkv16, void *out, int out16, float *lse, int B, int T,
                      int H, int KV, int hd)
{
    void *o16 = out16 ? out : att16_scratch(c, skip + cudnn_fwd_bytes(B, T, H, hd, out16)) + skip;
    char err[768];
    int rc;
    {
        PROF_BEGIN(c, "attention_fwd cudnn", attn_tc_flops(B, T, H, hd), 0);
        rc = attn_cudnn_fwd(c->cudnn, qkv16, o16, lse, B, T, H, KV, hd, err, sizeof err);
        PROF_END(c);
    }
    cudnn_check(c, rc, err);
    if (!out16)
        widen_rows(c, "attention_fwd cudnn, out to fp32", (float *)out, (size_t)H * hd, (const uint16_t *)o16,
                   (size_t)H * hd, (size_t)B * T, H * hd);
}

/* cuDNN's gradients from qkv16, dout (fp32, or with dout16 bf16) and out (or out16: out in
 * bf16), in bf16 into g16 (B T rows of (H + 2 KV) hd: dq | dk | dv, the qkv product's
 * layout); dO's (from fp32) and O's (without out16) bf16 copies in the attention scratch
 * from skip */
static void cudnn_bwd_into(cuda_impl *c, size_t skip, const void *qkv16, uint16_t *g16, const void *dout, int dout16,
                           const void *out, int out16, const float *lse, int B, int T, int H, int KV, int hd)
{
    const size_t N = (size_t)B * T, qd = (size_t)H * hd, nd = attn_tc_dout_bytes(B, T, H, hd), n16 = dout16 ? 0 : nd;
    char *base = att16_scratch(c, skip + n16 + (out16 ? 0 : nd));
    __nv_bfloat16 *d16 = dout16 ? (__nv_bfloat16 *)dout : (__nv_bfloat16 *)(base + skip);
    __nv_bfloat16 *o16 = (__nv_bfloat16 *)(base + skip + n16);
    if (!dout16) round_into(c, "attention_bwd dO copy", d16, (const float *)dout, N, qd, qd);
    if (!out16) round_into(c, "attention_bwd out copy", o16, (const float *)out, N, qd, qd);
    char err[768];
    int rc;
    { /* FLOPs: a flash backward's 5 products (S recomputed, dV, dP, dQ, dK), 2.5 forwards */
        PROF_BEGIN(c, "attention_bwd cudnn", 2.5 * attn_tc_flops(B, T, H, hd), 0);
        rc = attn_cudnn_bwd(c->cudnn, qkv16, out16 ? out : o16, d16, lse, g16, B, T, H, KV, hd, err, sizeof err);
        PROF_END(c);
    }
    cudnn_check(c, rc, err);
}

/* dq, dk, dv (rows of stride ld, fp32) by cuDNN (cudnn_bwd_into), widened from its bf16
 * gradients in the scratch after dO's and O's copies */
static void cudnn_bwd(cuda_impl *c, size_t skip, const void *qkv16, float *dq, float *dk, float *dv,
                      const float *dout, const void *out, int out16, const float *lse, int B, int T, int H, int KV,
                      int hd, int ld)
{
    const size_t N = (size_t)B * T, qd = (size_t)H * hd, kvd = (size_t)KV * hd, C = qd + 2 * kvd;
    const size_t nd = attn_tc_dout_bytes(B, T, H, hd), no = out16 ? 0 : nd;
    char *base = att16_scratch(c, skip + cudnn_bwd_bytes(B, T, H, KV, hd, out16));
    uint16_t *g16 = (uint16_t *)(base + skip + nd + no);
    cudnn_bwd_into(c, skip, qkv16, g16, dout, 0, out, out16, lse, B, T, H, KV, hd); /* within the scratch just sized */
    widen_rows(c, "attention_bwd cudnn, dq dk dv to fp32", dq, (size_t)ld, g16, C, N, (int)qd);
    widen_rows(c, "attention_bwd cudnn, dq dk dv to fp32", dk, (size_t)ld, g16 + qd, C, N, (int)kvd);
    widen_rows(c, "attention_bwd cudnn, dq dk dv to fp32", dv, (size_t)ld, g16 + qd + kvd, C, N, (int)kvd);
}

static void cu_attention_fwd(backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                             int B, int T, int H, int KV, int hd, int ld)
{
    if (B <= 0 || T <= 0 || H <= 0) return;
    check_attention_shape(H, KV, hd);
    cuda_impl *c = impl_of(be);
    if (on_tensor_cores(c, hd)) {
        const size_t nqkv = attn_tc_qkv_bytes(B, T, H, KV, hd);
        char *qkv16 = att16_copies(c, "attention_fwd bf16 copies", c->cudnn ? cudnn_fwd_bytes(B, T, H, hd, 0) : 0, q,
                                   k, v, B, T, H, KV, hd, ld);
        if (c->cudnn)
            cudnn_fwd(c, nqkv, qkv16, out, 0, lse, B, T, H, KV, hd);
        else
            att16_fwd(c, qkv16, out, 0, lse, B, T, H, KV, hd);
        return;
    }
    PROF_BEGIN(c, "attention_fwd fp32", attn_tc_flops(B, T, H, hd), 0);
    dim3 grid((unsigned)((T + ATT_WARPS - 1) / ATT_WARPS), (unsigned)H, (unsigned)B);
    PC_LAUNCH(k_attention_fwd, grid, ATT_WARPS * 32, 0, c->stream)(out, lse, q, k, v, T, H, KV, hd, ld,
                                                                  1.0f / sqrtf((float)hd));
    LAUNCH_CHECK();
    PROF_END(c);
}

/* The backward's D = rowsum(dO o O) (B,H,T), into c->att_d; O in fp32, or (out16) bf16;
 * with dout16 (attention on tensor cores) dO's bf16 copy in the same pass. */
template <typename GradT>
static void att_dsum_launch(cuda_impl *c, const char *region, __nv_bfloat16 *d16, const GradT *dout, const void *out,
                            int out16, int B, int T, int H, int hd)
{
    size_t rows = (size_t)B * T * H;
    grow_f32(c, &c->att_d, &c->att_d_n, rows);
    const unsigned grid = (unsigned)((rows * 32 + 255) / 256); /* a warp per (b, t, h) row */
    /* bytes: dO read, O read, dO's copy written, D written */
    PROF_BEGIN(c, region, 0, (sizeof(GradT) + (out16 ? 2.0 : 4.0) + (d16 ? 2.0 : 0.0)) * rows * hd + 4.0 * rows);
    if (out16)
        PC_LAUNCH((k_attention_dsum<__nv_bfloat16, GradT>), grid, 256, 0, c->stream)(
            c->att_d, d16, dout, (const __nv_bfloat16 *)out, B, T, H, hd);
    else
        PC_LAUNCH((k_attention_dsum<float, GradT>), grid, 256, 0, c->stream)(c->att_d, d16, dout, (const float *)out,
                                                                             B, T, H, hd);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
}

/* The backward's D from dO in fp32, with its bf16 copy into dout16 (or none), or
 * (att_dsum_16) from dO in bf16 already */
static void att_dsum(backend *be, void *dout16, const float *dout, const void *out, int out16, int B, int T, int H,
                     int hd)
{
    att_dsum_launch(impl_of(be), dout16 ? "attention_bwd D, dO copy" : "attention_bwd D", (__nv_bfloat16 *)dout16,
                    dout, out, out16, B, T, H, hd);
}
static void att_dsum_16(cuda_impl *c, const uint16_t *dout16, const void *out, int out16, int B, int T, int H, int hd)
{
    att_dsum_launch(c, "attention_bwd D from bf16 dO", (__nv_bfloat16 *)NULL, (const __nv_bfloat16 *)dout16, out,
                    out16, B, T, H, hd);
}

/* The tensor-core backward from qkv16 and dout16, after att_dsum (D and dout16); FLOPs as
 * its kernels run them (attention_tc.h). */
static void att16_bwd(cuda_impl *c, const void *qkv16, const void *dout16, float *dq, float *dk, float *dv,
                      const float *lse, int B, int T, int H, int KV, int hd, int ld)
{
    const double fwd = attn_tc_flops(B, T, H, hd);
    { /* a scope of its own: one region per scope */
        PROF_BEGIN(c, "attention_bwd bf16 dQ", ATTN_TC_DQ_FORWARDS * fwd, 0);
        attn_tc_dq(c->stream, qkv16, dout16, dq, lse, c->att_d, B, T, H, KV, hd, ld);
        launch_check(c, __FILE__, __LINE__);
        PROF_END(c);
    }
    PROF_BEGIN(c, "attention_bwd bf16 dK dV", ATTN_TC_DKV_FORWARDS * fwd, 0);
    attn_tc_dkv(c->stream, qkv16, dout16, dk, dv, lse, c->att_d, B, T, H, KV, hd, ld);
    launch_check(c, __FILE__, __LINE__);
    PROF_END(c);
}

static void cu_attention_bwd(backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                             const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                             int KV, int hd, int ld)
{
    cuda_impl *c = impl_of(be);
    if (B <= 0 || T <= 0 || H <= 0) return;
    check_attention_shape(H, KV, hd);
    if (on_tensor_cores(c, hd)) {
        const size_t nqkv = attn_tc_qkv_bytes(B, T, H, KV, hd);
        const size_t extra = c->cudnn ? cudnn_bwd_bytes(B, T, H, KV, hd, 0) : attn_tc_dout_bytes(B, T, H, hd);
        char *qkv16 = att16_copies(c, "attention_bwd bf16 copies", extra, q, k, v, B, T, H, KV, hd, ld);
        if (c->cudnn) {
            cudnn_bwd(c, nqkv, qkv16, dq, dk, dv, dout, out, 0, lse, B, T, H, KV, hd, ld);
        } else {
            att_dsum(be, qkv16 + nqkv, dout, out, 0, B, T, H, hd);
            att16_bwd(c, qkv16, qkv16 + nqkv, dq, dk, dv, lse, B, T, H, KV, hd, ld);
        }
        return;
    }
    att_dsum(be, NULL, dout, out, 0, B, T, H, hd);
    const double fwd = attn_tc_flops(B, T, H, hd);
    const float scale = 1.0f / sqrtf((float)hd);
    /* FLOPs: the 5 products of a flash backward (S recomputed, dV, dP, dQ, dK), 2.5 forwards */
    PROF_BEGIN(c, "attention_bwd fp32", 2.5 * fwd, 0);
    dim3 gq((unsigned)((T + ATT_WARPS - 1) / ATT_WARPS), (unsigned)H, (unsigned)B);
    PC_LAUNCH(k_attention_bwd_dq, gq, ATT_WARPS * 32, 0, c->stream)(dq, dout, lse, c->att_d, q, k, v, T, H, KV, hd,
                                                                    ld, scale);
    LAUNCH_CHECK();
    dim3 gkv((unsigned)((T + ATT_WARPS - 1) / ATT_WARPS), (unsigned)KV, (unsigned)B);
    PC_LAUNCH(k_attention_bwd_dkv, gkv, ATT_WARPS * 32, 0, c->stream)(dk, dv, dout, lse, c->att_d, q, k, v, T, H,
                                                                      KV, hd, ld, scale);
    LAUNCH_CHECK();
    PROF_END(c);
}

/* ---- attention on inputs kept in bf16 (the model's qkv16, backend.h) */

static int cu_attention_16(backend *be, int hd) { return on_tensor_cores(impl_of(be), hd); }

/* Where the bf16 q, k and v go: their first rows and row strides. */
struct qkv16_dst {
    __nv_bfloat16 *q, *k, *v;
    size_t ldq, ldk, ldv;
};

/* q and k of qkv (B T rows of stride ld: q | k | v) rotated (sign 1) or back (-1), then
 * they and v rounded to bf16 into dst; profiled as rope_region (q, k) and v_region. */
static void rope_round_qkv(cuda_impl *c, const char *rope_region, const char *v_region, const qkv16_dst &dst,
                           const float *qkv, const float *cos_t, const float *sin_t, int B, int T, int H, int KV,
                           int hd, int ld, float sign)
{
    const size_t qd = (size_t)H * hd, kvd = (size_t)KV * hd;
    rope_launch(c, rope_region, dst.q, dst.ldq, qkv, cos_t, sin_t, B, T, H, hd, ld, sign);
    rope_launch(c, rope_region, dst.k, dst.ldk, qkv + qd, cos_t, sin_t, B, T, KV, hd, ld, sign);
    round_strided(c, v_region, dst.v, dst.ldv, qkv + qd + kvd, (size_t)B * T, kvd, (size_t)ld);
}

/* into the attention's layout: q (N, H hd), then k and v (N, KV hd) each */
static void cu_rope_qkv_16(backend *be, uint16_t *qkv16, const float *qkv, const float *cos_t, const float *sin_t,
                           int B, int T, int H, int KV, int hd, int ld)
{
    const size_t N = (size_t)B * T, qd = (size_t)H * hd, kvd = (size_t)KV * hd;
    __nv_bfloat16 *q16 = (__nv_bfloat16 *)qkv16;
    const qkv16_dst dst = {q16, q16 + N * qd, q16 + N * (qd + kvd), qd, kvd, kvd};
    rope_round_qkv(impl_of(be), "rope_fwd bf16", "round_bf16 v", dst, qkv, cos_t, sin_t, B, T, H, KV, hd, ld, 1.0f);
}

/* into the product's layout: rows of (H + 2 KV) hd, dq | dk | dv */
static void cu_rope_bwd_qkv_16(backend *be, uint16_t *dqkv16, const float *dqkv, const float *cos_t,
                               const float *sin_t, int B, int T, int H, int KV, int hd, int ld)
{
    const size_t qd = (size_t)H * hd, kvd = (size_t)KV * hd, C = qd + 2 * kvd;
    __nv_bfloat16 *d16 = (__nv_bfloat16 *)dqkv16;
    const qkv16_dst dst = {d16, d16 + qd, d16 + qd + kvd, C, C, C};
    rope_round_qkv(impl_of(be), "rope_bwd bf16", "round_bf16 dv", dst, dqkv, cos_t, sin_t, B, T, H, KV, hd, ld,
                   -1.0f);
}

static void cu_attention_fwd_16(backend *be, void *out, int out16, float *lse, const uint16_t *qkv16, int B, int T,
                                int H, int KV, int hd)
{
    if (B <= 0 || T <= 0 || H <= 0) return;
    check_attention_shape(H, KV, hd);
    cuda_impl *c = impl_of(be);
    if (c->cudnn)
        cudnn_fwd(c, 0, qkv16, out, out16, lse, B, T, H, KV, hd);
    else
        att16_fwd(c, qkv16, out, out16, lse, B, T, H, KV, hd);
}

static void cu_attention_bwd_16(backend *be, float *dq, float *dk, float *dv, const float *dout, const void *out,
                                int out16, const float *lse, const uint16_t *qkv16, int B, int T, int H, int KV,
                                int hd, int ld)
{
    cuda_impl *c = impl_of(be);
    if (B <= 0 || T <= 0 || H <= 0) return;
    check_attention_shape(H, KV, hd);
    if (c->cudnn) {
        cudnn_bwd(c, 0, qkv16, dq, dk, dv, dout, out, out16, lse, B, T, H, KV, hd, ld);
        return;
    }
    char *dout16 = att16_scratch(c, attn_tc_dout_bytes(B, T, H, hd));
    att_dsum(be, dout16, dout, out, out16, B, T, H, hd);
    att16_bwd(c, qkv16, dout16, dq, dk, dv, lse, B, T, H, KV, hd, ld);
}

/* dO is read in bf16 as the caller wrote it: no copy of it is made. The kernels' fp32
 * gradients go through dqkv and rope_bwd_qkv_16; cuDNN's bf16 ones into dqkv16, where dq
 * and dk are rotated back in place (rope_bwd bf16; dv is already there): no fp32 copy of
 * them is written nor read, and no rounding of dv. */
static void cu_attention_bwd_rope_16(backend *be, uint16_t *dqkv16, float *dqkv, const uint16_t *dout16,
                                     const void *out, int out16, const float *lse, const uint16_t *qkv16,
                                     const float *cos_t, const float *sin_t, int B, int T, int H, int KV, int hd,
                                     int ld)
{
    cuda_impl *c = impl_of(be);
    const size_t qd = (size_t)H * hd, kvd = (size_t)KV * hd, C = qd + 2 * kvd;
    if (B <= 0 || T <= 0 || H <= 0) return;
    check_attention_shape(H, KV, hd);
    if (!c->cudnn) {
        att_dsum_16(c, dout16, out, out16, B, T, H, hd);
        att16_bwd(c, qkv16, dout16, dqkv, dqkv + qd, dqkv + qd + kvd, lse, B, T, H, KV, hd, ld);
        cu_rope_bwd_qkv_16(be, dqkv16, dqkv, cos_t, sin_t, B, T, H, KV, hd, ld);
        return;
    }
    cudnn_bwd_into(c, 0, qkv16, dqkv16, dout16, 1, out, out16, lse, B, T, H, KV, hd);
    __nv_bfloat16 *d16 = (__nv_bfloat16 *)dqkv16;
    rope_launch(c, "rope_bwd bf16", d16, C, (const uint16_t *)dqkv16, cos_t, sin_t, B, T, H, hd, (int)C, -1.0f);
    rope_launch(c, "rope_bwd bf16", d16 + qd, C, (const uint16_t *)dqkv16 + qd, cos_t, sin_t, B, T, KV, hd, (int)C,
                -1.0f);
}

/* ------------------------------------------------------------------ swiglu */

/* V values from p as swiglu reads its inputs: widened (bf16 bits), as they are (fp32), or
 * with round_in rounded to bf16 values (fp32) */
template <int V, typename InT> __device__ __forceinline__ fvec<V> swiglu_in(const InT *p, bool round_in)
{
    fvec<V> x = vec_ld<V>(p);
    if (round_in)
        for (int j = 0; j < V; j++) x.v[j] = vec_bf16_value(x.v[j]);
    return x;
}

/* out (N,f) of OutT (float or bf16) = silu(gate) * up; gate, up (N,f) of InT (float, or
 * uint16_t: bf16 bits, widened) stride ld_in, read by swiglu_in; V values at a time
 * (V divides f and ld_in) */
template <typename OutT, typename InT, int V>
__global__ void k_swiglu_fwd(OutT *out, const InT *gate, const InT *up, int f, int ld_in, bool round_in,
                             size_t groups, fastdiv fv)
{
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (size_t)gridDim.x * blockDim.x) {
        size_t n, i;
        vec_row_col<V>(g, fv, f, &n, &i);
        const size_t at = n * ld_in + i;
        const fvec<V> gv = swiglu_in<V>(gate + at, round_in), uv = swiglu_in<V>(up + at, round_in);
        fvec<V> o;
        for (int j = 0; j < V; j++) o.v[j] = gv.v[j] / (1.0f + expf(-gv.v[j])) * uv.v[j];
        vec_st<V>(out + g * V, o);
    }
}

/* dgate, dup of OutT (float or bf16), row stride ld_in, from dout (N,f), gate and up of
 * InT (read as k_swiglu_fwd reads gate and up); V values at a time (V divides f and ld_in) */
template <typename OutT, typename InT, int V>
__global__ void k_swiglu_bwd(OutT *dgate, OutT *dup, const InT *dout, const InT *gate, const InT *up, int f,
                             int ld_in, bool round_in, size_t groups, fastdiv fv)
{
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (size_t)gridDim.x * blockDim.x) {
        size_t n, i;
        vec_row_col<V>(g, fv, f, &n, &i);
        const size_t o = n * ld_in + i;
        const fvec<V> gv = swiglu_in<V>(gate + o, round_in), uv = swiglu_in<V>(up + o, round_in),
                      d = swiglu_in<V>(dout + g * V, round_in);
        fvec<V> dg, du;
        for (int j = 0; j < V; j++) {
            const float sig = 1.0f / (1.0f + expf(-gv.v[j]));
            dg.v[j] = d.v[j] * uv.v[j] * sig * (1.0f + gv.v[j] * (1.0f - sig));
            du.v[j] = d.v[j] * gv.v[j] * sig;
        }
        vec_st<V>(dgate + o, dg);
        vec_st<V>(dup + o, du);
    }
}

/* swiglu_fwd's and swiglu_fwd_16's launch: out (N, f) in OutT from gate, up in InT;
 * bytes_per_elem for the profile */
template <typename OutT, typename InT>
static void swiglu_rows(backend *be, const char *region, double bytes_per_elem, OutT *out, const InT *gate,
                        const InT *up, int N, int f, int ld_in, bool round_in)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0 || f <= 0) return;
    PROF_BEGIN(c, region, 0, bytes_per_elem * N * f);
    const rows_launch L = rows_plan(N, f, ld_in,
                                    vec_aligned(out, sizeof *out) && vec_aligned(gate, sizeof *gate) &&
                                        vec_aligned(up, sizeof *up));
    if (L.v4)
        PC_LAUNCH((k_swiglu_fwd<OutT, InT, 4>), L.grid, 256, 0, c->stream)(out, gate, up, f, ld_in, round_in,
                                                                           L.groups, L.fv);
    else
        PC_LAUNCH((k_swiglu_fwd<OutT, InT, 1>), L.grid, 256, 0, c->stream)(out, gate, up, f, ld_in, round_in,
                                                                           L.groups, L.fv);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_swiglu_fwd(backend *be, float *out, const float *gate, const float *up, int N, int f, int ld_in,
                          int round_in)
{
    swiglu_rows<float, float>(be, "swiglu_fwd", 12.0, out, gate, up, N, f, ld_in, round_in); /* gate, up in; out */
}

static void cu_swiglu_fwd_16(backend *be, uint16_t *out, const uint16_t *gate, const uint16_t *up, int N, int f,
                             int ld_in)
{
    swiglu_rows<__nv_bfloat16, uint16_t>(be, "swiglu_fwd_16", 6.0, (__nv_bfloat16 *)out, gate, up, N, f, ld_in,
                                         false); /* all bf16 */
}

/* swiglu_bwd's and swiglu_bwd_16's launch: dgate, dup in OutT from gate, up in InT;
 * bytes_per_elem for the profile */
template <typename OutT, typename InT>
static void swiglu_bwd_rows(backend *be, const char *region, double bytes_per_elem, OutT *dgate, OutT *dup,
                            const InT *dout, const InT *gate, const InT *up, int N, int f, int ld_in, bool round_in)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0 || f <= 0) return;
    PROF_BEGIN(c, region, 0, bytes_per_elem * N * f);
    const rows_launch L = rows_plan(N, f, ld_in,
                                    vec_aligned(dgate, sizeof *dgate) && vec_aligned(dup, sizeof *dup) &&
                                        vec_aligned(dout, sizeof *dout) && vec_aligned(gate, sizeof *gate) &&
                                        vec_aligned(up, sizeof *up));
    if (L.v4)
        PC_LAUNCH((k_swiglu_bwd<OutT, InT, 4>), L.grid, 256, 0, c->stream)(dgate, dup, dout, gate, up, f, ld_in,
                                                                           round_in, L.groups, L.fv);
    else
        PC_LAUNCH((k_swiglu_bwd<OutT, InT, 1>), L.grid, 256, 0, c->stream)(dgate, dup, dout, gate, up, f, ld_in,
                                                                           round_in, L.groups, L.fv);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_swiglu_bwd(backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                          const float *up, int N, int f, int ld_in, int round_in)
{
    swiglu_bwd_rows<float, float>(be, "swiglu_bwd", 20.0, dgate, dup, dout, gate, up, N, f, ld_in,
                                  round_in); /* dout, gate, up in */
}

static void cu_swiglu_bwd_16(backend *be, uint16_t *dgate, uint16_t *dup, const uint16_t *dout,
                             const uint16_t *gate, const uint16_t *up, int N, int f, int ld_in)
{
    swiglu_bwd_rows<__nv_bfloat16, uint16_t>(be, "swiglu_bwd_16", 10.0, (__nv_bfloat16 *)dgate, (__nv_bfloat16 *)dup,
                                             dout, gate, up, N, f, ld_in, false); /* all bf16 */
}

/* ------------------------------------------------------------------ cross-entropy */

/* One block per row: lse[n], and into loss[n] / valid[n] the row loss and 1 (0, 0 when
 * ignored). The row is read once: each thread keeps the running max m of its elements and
 * the sum of exp(x - m) (rescaled by exp(m_old - m) when the max grows); the block's max
 * then rescales the threads' sums into one. */
template <int W>
__global__ void k_xent_fwd(float *lse, double *loss, double *valid, const float *logits, const int32_t *targets, int V)
{
    __shared__ float shf[33];
    __shared__ double shd[33];
    const size_t n = blockIdx.x;
    const float *r = logits + n * V;
    float m = -INFINITY;
    double s = 0.0;
    for (int j = threadIdx.x * W; j < V; j += blockDim.x * W) { /* W values a load (vec.h; W divides V) */
        const fvec<W> xv = vec_ld<W>(r + j);
        for (int k = 0; k < W; k++) {
            const float x = xv.v[k];
            if (x > m) {
                s = s * exp((double)m - (double)x) + 1.0;
                m = x;
            } else if (m > -INFINITY) {
                s += (double)expf(x - m);
            }
        }
    }
    const float mx = block_max(m, shf);
    const double sum = block_sum(m > -INFINITY ? s * exp((double)m - (double)mx) : 0.0, shd);
    if (threadIdx.x == 0) {
        const float l = mx + (float)log(sum);
        const int32_t t = targets[n];
        lse[n] = l;
        loss[n] = t >= 0 ? (double)l - (double)r[t] : 0.0;
        valid[n] = t >= 0 ? 1.0 : 0.0;
    }
}

/* One element of dlogits: scale * (softmax - onehot), x the logit, l its row's lse. */
__device__ float xent_grad(float x, float l, float scale, bool target)
{
    return scale * expf(x - l) - (target ? scale : 0.0f);
}

/* dlogits = scale * (softmax - onehot) on valid rows, 0 on ignored; in place allowed:
 * each element is read and written by the same thread. */
__global__ void k_xent_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *targets, int V,
                           float scale)
{
    const size_t n = blockIdx.x;
    const float *r = logits + n * V;
    float *d = dlogits + n * V;
    const int32_t t = targets[n];
    if (t < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = 0.0f;
        return;
    }
    const float l = lse[n];
    for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = xent_grad(r[j], l, scale, j == t);
}

/* A row's values g(j), j < V, computed from the row's fp32 values and written over them as
 * OutT (bf16: row n's at (bf16 *)(row), the first half of its own bytes). The block walks
 * the row in tiles of ROW_TILE_PER x blockDim.x elements, in order: each thread computes
 * its elements of the tile into registers, the block waits, then writes them. Tile k's
 * writes (bytes 2 j0 .. 2 (j0 + tile) in bf16) cover fp32 elements below j0 + tile / 2,
 * read by the block before the barrier; later tiles read bytes from 4 (j0 + tile) on,
 * which no write reaches. Every thread of the block must call it. */
#define ROW_TILE_PER 8
template <typename OutT, typename G> __device__ void write_row_tiled(float *row, int V, G g)
{
    OutT *d = (OutT *)row;
    const int tile = ROW_TILE_PER * (int)blockDim.x;
    for (int j0 = 0; j0 < V; j0 += tile) {
        float v[ROW_TILE_PER];
        for (int k = 0; k < ROW_TILE_PER; k++) {
            const int j = j0 + k * (int)blockDim.x + (int)threadIdx.x;
            v[k] = j < V ? g(j) : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < ROW_TILE_PER; k++) {
            const int j = j0 + k * (int)blockDim.x + (int)threadIdx.x;
            if (j < V) store_out(d + j, v[k]);
        }
    }
}

/* xent_bwd's values in bf16 over the logits (write_row_tiled). */
__global__ void k_xent_bwd_16(float *logits, const float *lse, const int32_t *targets, int V, float scale)
{
    const size_t n = blockIdx.x;
    float *r = logits + n * V;
    const int32_t t = targets[n];
    const float l = t >= 0 ? lse[n] : 0.0f;
    write_row_tiled<__nv_bfloat16>(r, V, [&](int j) { return t >= 0 ? xent_grad(r[j], l, scale, j == t) : 0.0f; });
}

static double cu_xent_fwd(backend *be, float *lse, const float *logits, const int32_t *targets, int N, int V,
                          int64_t *n_valid)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0) {
        if (n_valid) *n_valid = 0;
        return 0.0;
    }
    double *part = red_scratch(c, 2 * (size_t)N);
    PROF_BEGIN(c, "xent_fwd", 0, 4.0 * N * V); /* the logits */
    if (rows_v4(V, vec_aligned(logits, 4)))
        PC_LAUNCH(k_xent_fwd<4>, N, 256, 0, c->stream)(lse, part, part + N, logits, targets, V);
    else
        PC_LAUNCH(k_xent_fwd<1>, N, 256, 0, c->stream)(lse, part, part + N, logits, targets, V);
    LAUNCH_CHECK();
    PROF_END(c);
    double res[2];
    reduce_to_host(c, part, part + N, (size_t)N, res);
    if (n_valid) *n_valid = (int64_t)llround(res[1]);
    return res[0];
}

static void cu_xent_bwd(backend *be, float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                        int N, int V, float scale)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0) return;
    PROF_BEGIN(c, "xent_bwd", 0, 8.0 * N * V); /* logits in, dlogits */
    PC_LAUNCH(k_xent_bwd, N, 256, 0, c->stream)(dlogits, logits, lse, targets, V, scale);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_xent_bwd_16(backend *be, float *logits, const float *lse, const int32_t *targets, int N, int V,
                           float scale)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0) return;
    PROF_BEGIN(c, "xent_bwd_16", 0, 6.0 * N * V); /* logits in, bf16 dlogits */
    PC_LAUNCH(k_xent_bwd_16, N, 256, 0, c->stream)(logits, lse, targets, V, scale);
    LAUNCH_CHECK();
    PROF_END(c);
}

/* ------------------------------------------------------------------ distillation */

/* log-sum-exp of x/T over the row, as the CPU backend computes it: float max, double
 * sum of exp((x - max)/T). All threads get it. */
__device__ double row_lse_dev(const float *x, int V, float T, float *shf, double *shd)
{
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, x[j]);
    mx = block_max(mx, shf);
    double sum = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += exp((double)(x[j] - mx) / T);
    sum = block_sum(sum, shd);
    return (double)mx / T + log(sum);
}

/* One block per row; see backend.h. loss[n] gets the row loss (0 on ignored rows); the
 * gradient is written over the row as OutT (float, or bf16 as write_row_tiled says). */
template <typename OutT>
__global__ void k_distill(double *loss, float *logits, const float *teacher, const int32_t *targets, int V,
                          float alpha, float T, float scale)
{
    __shared__ float shf[33];
    __shared__ double shd[33];
    const size_t n = blockIdx.x;
    float *z = logits + n * V;
    const float *t = teacher + n * V;
    const int32_t y = targets[n];
    if (y < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) store_out((OutT *)z + j, 0.0f);
        if (threadIdx.x == 0) loss[n] = 0.0;
        return;
    }
    const double lse = row_lse_dev(z, V, 1.0f, shf, shd);
    const double lse_zt = row_lse_dev(z, V, T, shf, shd);
    const double lse_tt = row_lse_dev(t, V, T, shf, shd);
    double kl = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double log_pt = (double)t[j] / T - lse_tt, log_ps = (double)z[j] / T - lse_zt;
        kl += exp(log_pt) * (log_pt - log_ps);
    }
    kl = block_sum(kl, shd);
    /* every read of z[y] by thread 0 happens before the writes below (block_sum synchronises) */
    if (threadIdx.x == 0)
        loss[n] = (1.0 - alpha) * (lse - (double)z[y]) + (double)alpha * T * T * kl;
    __syncthreads();
    const float ce_grad = (float)(scale * (1.0 - alpha));
    write_row_tiled<OutT>(z, V, [&](int j) {
        const double ps = exp((double)z[j] - lse), ps_t = exp((double)z[j] / T - lse_zt),
                     pt_t = exp((double)t[j] / T - lse_tt);
        float gj = (float)(scale * ((1.0 - alpha) * ps + (double)alpha * T * (ps_t - pt_t)));
        return j == y ? gj - ce_grad : gj;
    });
}

/* k_distill<OutT> over N rows; the sum of the row losses. */
template <typename OutT>
static double distill_rows(backend *be, const char *region, double bytes_per_elem, float *logits,
                           const float *teacher, const int32_t *targets, int N, int V, float alpha, float temperature,
                           float scale)
{
    cuda_impl *c = impl_of(be);
    if (N <= 0) return 0.0;
    double *part = red_scratch(c, (size_t)N);
    PROF_BEGIN(c, region, 0, bytes_per_elem * N * V);
    PC_LAUNCH(k_distill<OutT>, N, 256, 0, c->stream)(part, logits, teacher, targets, V, alpha, temperature, scale);
    LAUNCH_CHECK();
    PROF_END(c);
    double res[2];
    reduce_to_host(c, part, NULL, (size_t)N, res);
    return res[0];
}

static double cu_distill(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                         float alpha, float temperature, float scale)
{
    /* student and teacher logits in, student's gradient */
    return distill_rows<float>(be, "distill", 12.0, logits, teacher, targets, N, V, alpha, temperature, scale);
}

static double cu_distill_16(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                            float alpha, float temperature, float scale)
{
    /* student and teacher logits in, student's gradient in bf16 */
    return distill_rows<__nv_bfloat16>(be, "distill_16", 10.0, logits, teacher, targets, N, V, alpha, temperature,
                                       scale);
}

/* ------------------------------------------------------------------ elementwise */

/* The flat kernels below take 4 values a thread at a time where their pointers allow
 * (vec: vec.h's vec_flat), the last n % 4 (or all) one at a time. */
__global__ void k_add(float *y, const float *a, const float *b, size_t n, bool vec)
{
    vec_flat(n, vec, [&](size_t i, auto w) {
        constexpr int V = decltype(w)::value;
        const fvec<V> av = vec_ld<V>(a + i), bv = vec_ld<V>(b + i);
        fvec<V> yv;
        for (int j = 0; j < V; j++) yv.v[j] = av.v[j] + bv.v[j];
        vec_st<V>(y + i, yv);
    });
}

/* dst[r,c] = src[r,c] + beta * dst[r,c] over rows * cols elements, V at a time (V divides
 * cols and both strides); fv divides by cols / V */
template <int V>
__global__ void k_add2d(float *dst, int ld_dst, const float *src, int ld_src, int cols, float beta, size_t groups,
                        fastdiv fv)
{
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (size_t)gridDim.x * blockDim.x) {
        size_t r, c;
        vec_row_col<V>(g, fv, cols, &r, &c);
        const fvec<V> sv = vec_ld<V>(src + r * ld_src + c);
        fvec<V> dv = vec_ld<V>(dst + r * ld_dst + c);
        for (int j = 0; j < V; j++) dv.v[j] = sv.v[j] + beta * dv.v[j];
        vec_st<V>(dst + r * ld_dst + c, dv);
    }
}

__global__ void k_scale(float *x, float s, size_t n, bool vec)
{
    vec_flat(n, vec, [&](size_t i, auto w) {
        constexpr int V = decltype(w)::value;
        fvec<V> xv = vec_ld<V>(x + i);
        for (int j = 0; j < V; j++) xv.v[j] *= s;
        vec_st<V>(x + i, xv);
    });
}

__global__ void k_axpy(float *y, float alpha, const float *x, size_t n, bool vec)
{
    vec_flat(n, vec, [&](size_t i, auto w) {
        constexpr int V = decltype(w)::value;
        const fvec<V> xv = vec_ld<V>(x + i);
        fvec<V> yv = vec_ld<V>(y + i);
        for (int j = 0; j < V; j++) yv.v[j] += alpha * xv.v[j];
        vec_st<V>(y + i, yv);
    });
}

/* part[block] = sum of x^2 over the block's grid-stride share, in double */
__global__ void k_sumsq(double *part, const float *x, size_t n, bool vec)
{
    __shared__ double sh[33];
    double s = 0.0;
    vec_flat(n, vec, [&](size_t i, auto w) {
        constexpr int V = decltype(w)::value;
        const fvec<V> xv = vec_ld<V>(x + i);
        for (int j = 0; j < V; j++) s += (double)xv.v[j] * (double)xv.v[j];
    });
    s = block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void k_adamw(float *p, const float *g, float *m, float *v, size_t n, float beta1, float beta2, float eps,
                        float grad_scale, float step_size, float inv_sqrt_bc2, float decay, bool vec)
{
    vec_flat(n, vec, [&](size_t i, auto w) {
        constexpr int V = decltype(w)::value;
        const fvec<V> gv = vec_ld<V>(g + i);
        fvec<V> pv = vec_ld<V>(p + i), mv = vec_ld<V>(m + i), vv = vec_ld<V>(v + i);
        for (int j = 0; j < V; j++) {
            const float gi = gv.v[j] * grad_scale;
            mv.v[j] = beta1 * mv.v[j] + (1.0f - beta1) * gi;
            vv.v[j] = beta2 * vv.v[j] + (1.0f - beta2) * gi * gi;
            const float denom = sqrtf(vv.v[j]) * inv_sqrt_bc2 + eps;
            pv.v[j] = pv.v[j] * decay - step_size * mv.v[j] / denom;
        }
        vec_st<V>(m + i, mv);
        vec_st<V>(v + i, vv);
        vec_st<V>(p + i, pv);
    });
}

/* The grid of a flat kernel over n values (256 threads a block): a thread a group of 4
 * where vec. */
static unsigned vec_flat_grid(size_t n, bool vec) { return grid_for(vec ? (n + 3) / 4 : n, 256); }

static void cu_add(backend *be, float *y, const float *a, const float *b, size_t n)
{
    cuda_impl *c = impl_of(be);
    if (!n) return;
    PROF_BEGIN(c, "add", 0, 12 * n);
    const bool vec = vec_aligned(y, 4) && vec_aligned(a, 4) && vec_aligned(b, 4);
    PC_LAUNCH(k_add, vec_flat_grid(n, vec), 256, 0, c->stream)(y, a, b, n, vec);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_add2d(backend *be, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols,
                     float beta)
{
    cuda_impl *c = impl_of(be);
    if (rows <= 0 || cols <= 0) return;
    PROF_BEGIN(c, "add2d", 0, (beta == 0.0f ? 8.0 : 12.0) * rows * cols);
    if (beta == 0.0f) {
        CUDA_CHECK(cudaMemcpy2DAsync(dst, sizeof(float) * (size_t)ld_dst, src, sizeof(float) * (size_t)ld_src,
                                     sizeof(float) * (size_t)cols, (size_t)rows, cudaMemcpyDeviceToDevice, c->stream));
    } else {
        const rows_launch L = rows_plan(rows, cols, ld_dst | ld_src, vec_aligned(dst, 4) && vec_aligned(src, 4));
        if (L.v4)
            PC_LAUNCH(k_add2d<4>, L.grid, 256, 0, c->stream)(dst, ld_dst, src, ld_src, cols, beta, L.groups, L.fv);
        else
            PC_LAUNCH(k_add2d<1>, L.grid, 256, 0, c->stream)(dst, ld_dst, src, ld_src, cols, beta, L.groups, L.fv);
        LAUNCH_CHECK();
    }
    PROF_END(c);
}

static void cu_scale(backend *be, float *x, float s, size_t n)
{
    cuda_impl *c = impl_of(be);
    if (!n) return;
    PROF_BEGIN(c, "scale", 0, 8 * n);
    const bool vec = vec_aligned(x, 4);
    PC_LAUNCH(k_scale, vec_flat_grid(n, vec), 256, 0, c->stream)(x, s, n, vec);
    LAUNCH_CHECK();
    PROF_END(c);
}

static void cu_axpy(backend *be, float *y, float alpha, const float *x, size_t n)
{
    cuda_impl *c = impl_of(be);
    if (!n) return;
    PROF_BEGIN(c, "axpy", 0, 12 * n);
    const bool vec = vec_aligned(y, 4) && vec_aligned(x, 4);
    PC_LAUNCH(k_axpy, vec_flat_grid(n, vec), 256, 0, c->stream)(y, alpha, x, n, vec);
    LAUNCH_CHECK();
    PROF_END(c);
}

#define SUMSQ_BLOCKS 1024
static double cu_sumsq(backend *be, const float *x, size_t n)
{
    cuda_impl *c = impl_of(be);
    if (!n) return 0.0;
    double *part = red_scratch(c, SUMSQ_BLOCKS);
    PROF_BEGIN(c, "sumsq", 0, 4 * n);
    PC_LAUNCH(k_sumsq, SUMSQ_BLOCKS, 256, 0, c->stream)(part, x, n, vec_aligned(x, 4));
    LAUNCH_CHECK();
    PROF_END(c);
    double res[2];
    reduce_to_host(c, part, NULL, SUMSQ_BLOCKS, res);
    return res[0];
}

static void cu_adamw(backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, float grad_scale, int64_t step)
{
    cuda_impl *c = impl_of(be);
    if (!n) return;
    /* the same float constants as the CPU backend */
    double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    float step_size = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float decay = 1.0f - lr * weight_decay;
    PROF_BEGIN(c, "adamw", 0, 28 * n); /* p, m, v read and written, g read */
    const bool vec = vec_aligned(p, 4) && vec_aligned(g, 4) && vec_aligned(m, 4) && vec_aligned(v, 4);
    PC_LAUNCH(k_adamw, vec_flat_grid(n, vec), 256, 0, c->stream)(p, g, m, v, n, beta1, beta2, eps, grad_scale,
                                                                 step_size, inv_sqrt_bc2, decay, vec);
    LAUNCH_CHECK();
    PROF_END(c);
}

/* ------------------------------------------------------------------ table, creation */

static int cu_set_matmul(backend *be, matmul_mode mode); /* below: it sets the info string */

static const backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cu_destroy,
    .alloc = cu_alloc,
    .alloc_i32 = cu_alloc_i32,
    .free = cu_free,
    .zero = cu_zero,
    .copy = cu_copy,
    .upload = cu_upload,
    .download = cu_download,
    .upload_i32 = cu_upload_i32,
    .upload_raw = cu_upload_raw,
    .download_raw = cu_download_raw,
    .alloc_bf16 = cu_alloc_bf16,
    .upload_bf16 = cu_upload_bf16,
    .widen_bf16 = cu_widen_bf16,
    .round_bf16 = cu_round_bf16,
    .round_bf16_2d = cu_round_bf16_2d,
    .sync = cu_sync,
    .mem_peak = cu_mem_peak,
    .mem_total = cu_mem_total,
    .mem_free = cu_mem_free,
    .set_matmul = cu_set_matmul,
    .gemm = cu_gemm,
    .gemm_w16 = cu_gemm_w16,
    .gemm_16 = cu_gemm_16,
    .gemm_16_to16 = cu_gemm_16_to16,
    .gemm_batched = cu_gemm_batched,
    .embedding_fwd = cu_embedding_fwd,
    .embedding_fwd_w16 = cu_embedding_fwd_w16,
    .embedding_bwd = cu_embedding_bwd,
    .rmsnorm_fwd = cu_rmsnorm_fwd,
    .rmsnorm_fwd_16 = cu_rmsnorm_fwd_16,
    .rmsnorm_bwd = cu_rmsnorm_bwd,
    .rmsnorm_bwd_16 = cu_rmsnorm_bwd_16,
    .rope_fwd = cu_rope_fwd,
    .rope_bwd = cu_rope_bwd,
    .attention_fwd = cu_attention_fwd,
    .attention_bwd = cu_attention_bwd,
    .attention_16 = cu_attention_16,
    .rope_qkv_16 = cu_rope_qkv_16,
    .rope_bwd_qkv_16 = cu_rope_bwd_qkv_16,
    .attention_fwd_16 = cu_attention_fwd_16,
    .attention_bwd_16 = cu_attention_bwd_16,
    .attention_bwd_rope_16 = cu_attention_bwd_rope_16,
    .swiglu_fwd = cu_swiglu_fwd,
    .swiglu_fwd_16 = cu_swiglu_fwd_16,
    .swiglu_bwd = cu_swiglu_bwd,
    .swiglu_bwd_16 = cu_swiglu_bwd_16,
    .xent_fwd = cu_xent_fwd,
    .xent_bwd = cu_xent_bwd,
    .xent_bwd_16 = cu_xent_bwd_16,
    .distill = cu_distill,
    .distill_16 = cu_distill_16,
    .add2d = cu_add2d,
    .add = cu_add,
    .scale = cu_scale,
    .axpy = cu_axpy,
    .sumsq = cu_sumsq,
    .adamw = cu_adamw,
};

static void set_info(backend *be)
{
    cuda_impl *c = impl_of(be);
    snprintf(be->info, sizeof(be->info), "CUDA device %d (%.40s), matmul %s, attention %s%s%s (fp32 accumulation)",
             c->device, c->device_name,
             c->matmul == MATMUL_BF16 ? "bf16"
             : c->tf32                ? "TF32"
                                      : "fp32",
             c->attn_bf16 ? "bf16" : "fp32", c->cudnn ? " by " : "", c->cudnn ? attn_cudnn_describe(c->cudnn) : "");
}

static int cu_set_matmul(backend *be, matmul_mode mode)
{
    cuda_impl *c = impl_of(be);
    c->matmul = mode;
    be->matmul = mode;
    c->tf32 = mode == MATMUL_TF32; /* cu_gemm's compute type; the handle stays in default math */
    set_info(be);
    return 0;
}

extern "C" int backend_cuda_set_attention(backend *be, int bf16)
{
    if (!be || be->ops != &cuda_ops) return -1;
    cuda_impl *c = impl_of(be);
    c->attn_bf16 = bf16 != 0;
    attn_cudnn_free(c->cudnn);
    c->cudnn = NULL;
    set_info(be);
    return 0;
}

extern "C" int backend_cuda_use_cudnn(backend *be, char *err, int errlen)
{
    if (!be || be->ops != &cuda_ops) {
        snprintf(err, (size_t)errlen, "not a CUDA backend");
        return -1;
    }
    cuda_impl *c = impl_of(be);
    if (!c->cudnn) {
        CUDA_CHECK(cudaSetDevice(c->device));
        c->cudnn = attn_cudnn_create((void *)c->stream, err, errlen);
        if (!c->cudnn) return -1;
    }
    c->attn_bf16 = 1;
    set_info(be);
    return 0;
}

extern "C" int backend_cuda_cudnn_trial(backend *be, int on, char *err, int errlen)
{
    if (!be || be->ops != &cuda_ops) {
        snprintf(err, (size_t)errlen, "not a CUDA backend");
        return -1;
    }
    cuda_impl *c = impl_of(be);
    if (on) {
        c->cudnn_trial = 1;
        c->cudnn_failed[0] = '\0';
        return 0;
    }
    CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* the trial's work done */
    c->cudnn_trial = 0;
    if (!c->cudnn_failed[0]) return 0;
    snprintf(err, (size_t)errlen, "%s", c->cudnn_failed);
    return -1;
}

extern "C" int backend_cuda_set_bf16_block(backend *be, size_t elems)
{
    if (!be || be->ops != &cuda_ops) return -1;
    impl_of(be)->bf_cap = elems ? elems : 1;
    return 0;
}

extern "C" int backend_cuda_set_gemm_span(backend *be, int64_t elems)
{
    if (!be || be->ops != &cuda_ops) return -1;
    impl_of(be)->gemm_span = elems > 1 ? elems : 2;
    return 0;
}

extern "C" uint64_t backend_cuda_gemm_calls(backend *be)
{
    return be && be->ops == &cuda_ops ? impl_of(be)->gemm_calls : 0;
}

extern "C" size_t backend_cuda_bf16_copies_bytes(backend *be)
{
    if (!be || be->ops != &cuda_ops) return 0;
    return sizeof(uint16_t) * (impl_of(be)->bf_a_n + impl_of(be)->bf_b_n);
}

extern "C" size_t backend_cuda_attention_copies_bytes(backend *be)
{
    if (!be || be->ops != &cuda_ops) return 0;
    const cuda_impl *c = impl_of(be);
    return c->att16_n + (c->cudnn ? attn_cudnn_scratch_bytes(c->cudnn) : 0);
}

extern "C" int backend_cuda_profile(backend *be, int on)
{
    if (!be || be->ops != &cuda_ops) return -1;
    cuda_impl *c = impl_of(be);
    if (on && c->prof) prof_reset(c->prof);
    if (on && !c->prof) c->prof = prof_create();
    if (!on) {
        prof_destroy(c->prof);
        c->prof = NULL;
    }
    return 0;
}

extern "C" void backend_cuda_profile_report(backend *be, FILE *f, double wall_s)
{
    if (!be || be->ops != &cuda_ops || !impl_of(be)->prof) return;
    fprintf(f, "%s\n", be->info);
    prof_report(impl_of(be)->prof, f, wall_s);
}

extern "C" int backend_cuda_set_tf32(backend *be, int on)
{
    if (!be || be->ops != &cuda_ops) return -1;
    return cu_set_matmul(be, on ? MATMUL_TF32 : MATMUL_FP32);
}

/* Report a failed runtime call into err and return nonzero. */
static int create_fail(char *err, int errlen, const char *what, int device, const char *why)
{
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "backend_cuda: %s on device %d failed: %s", what, device, why);
    return 1;
}

extern "C" backend *backend_cuda_create(int device, char *err, int errlen)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        create_fail(err, errlen, "cudaGetDeviceCount", device, cudaGetErrorString(rc));
        return NULL;
    }
    if (device < 0 || device >= n) {
        if (err && errlen > 0)
            snprintf(err, (size_t)errlen, "backend_cuda: device %d does not exist (%d CUDA device(s))", device, n);
        return NULL;
    }
    cudaDeviceProp prop;
    if ((rc = cudaSetDevice(device)) != cudaSuccess || (rc = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
        create_fail(err, errlen, "cudaSetDevice", device, cudaGetErrorString(rc));
        return NULL;
    }
    if (prop.major * 10 + prop.minor < PC_GPU_ARCH) { /* its kernels would fail to launch */
        if (err && errlen > 0)
            snprintf(err, (size_t)errlen,
                     "backend_cuda: device %d (%s) is sm_%d%d, older than this build's kernels (sm_%d): rebuild with "
                     "meson configure -Dgpu_arch=sm_%d%d",
                     device, prop.name, prop.major, prop.minor, PC_GPU_ARCH, prop.major, prop.minor);
        return NULL;
    }
    cuda_impl *c = (cuda_impl *)calloc(1, sizeof *c);
    backend *be = (backend *)calloc(1, sizeof *be);
    if (!c || !be) {
        free(c);
        free(be);
        create_fail(err, errlen, "allocation", device, "out of host memory");
        return NULL;
    }
    c->device = device;
    c->smem_optin = prop.sharedMemPerBlockOptin;
    c->bf_cap = BACKEND_CUDA_BF16_BLOCK;
    c->gemm_span = BACKEND_CUDA_GEMM_SPAN;
    const char *sync = getenv("PC_CUDA_SYNC"), *prof = getenv("PC_CUDA_PROFILE");
    c->sync_launches = sync && !strcmp(sync, "1");
    c->prof_at_exit = prof && !strcmp(prof, "1");
    snprintf(c->device_name, sizeof c->device_name, "%.63s", prop.name);
    if ((rc = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        create_fail(err, errlen, "cudaStreamCreate", device, cudaGetErrorString(rc));
        free(c);
        free(be);
        return NULL;
    }
    cublasStatus_t bs = cublasCreate(&c->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        create_fail(err, errlen, "cublasCreate", device, cublasGetStatusString(bs));
        cudaStreamDestroy(c->stream);
        free(c);
        free(be);
        return NULL;
    }
    CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    CUBLAS_CHECK(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    CUDA_CHECK(cudaMalloc((void **)&c->result, 2 * sizeof(double)));
    CUDA_CHECK(cudaMallocHost((void **)&c->result_host, 2 * sizeof(double)));
    be->ops = &cuda_ops;
    be->impl = c;
    be->threads = 1;
    set_info(be);
    if (c->prof_at_exit) backend_cuda_profile(be, 1);
    return be;
}
