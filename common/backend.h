/* backend: the tensor/op seam between model code and a device.
 *
 * Model and optimizer code is written once against the ops below; a backend supplies
 * them for one device. The CPU backend (backend_cpu.c) keeps fp32 buffers in host
 * memory and runs every matrix product through OpenBLAS cblas_sgemm; a CUDA backend
 * implements the same table with device buffers.
 *
 * Conventions: every buffer argument is a device pointer obtained from be_alloc /
 * be_alloc_i32 (on the CPU backend, plain host memory). Sizes are element counts.
 * Matrices are row-major. Activations are laid out token-major: (N, C) with a row
 * stride `ld` (elements between consecutive tokens) where an op reads a column slice
 * of a wider buffer, e.g. the q, k, v parts of a fused (N, (H+2KV)*hd) projection.
 * Backward ops that produce a parameter gradient ACCUMULATE into it (+=), so that
 * gradients of several micro-batches, or of a tied weight, add up. */
#ifndef PC_BACKEND_H
#define PC_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct backend backend;

/* How `gemm` treats its inputs (accumulation and output are fp32 in every mode):
 * FP32 as they are; TF32 rounded to TF32 by the tensor cores (CUDA; the CPU computes
 * fp32); BF16 rounded to bf16, nearest even (CUDA: bf16 tensor cores; the CPU rounds
 * copies of the inputs and multiplies in fp32, the same arithmetic up to summation
 * order). gemm_batched and the attention products are not affected. */
typedef enum { MATMUL_FP32 = 0, MATMUL_TF32, MATMUL_BF16 } matmul_mode;

typedef struct backend_ops {
    const char *name;
    void (*destroy)(backend *be);

    /* memory */
    float *(*alloc)(backend *be, size_t n);
    int32_t *(*alloc_i32)(backend *be, size_t n);
    void (*free)(backend *be, void *p);
    void (*zero)(backend *be, float *x, size_t n);
    void (*copy)(backend *be, float *dst, const float *src, size_t n);
    void (*upload)(backend *be, float *dst, const float *host_src, size_t n);
    void (*download)(backend *be, float *host_dst, const float *src, size_t n);
    void (*upload_i32)(backend *be, int32_t *dst, const int32_t *host_src, size_t n);
    /* `bytes` bytes of any type between host and device (staging for the comm). */
    void (*upload_raw)(backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download_raw)(backend *be, void *host_dst, const void *src, size_t bytes);
    /* bf16 storage (frozen weights): raw bf16 bit patterns, zeroed at allocation. */
    uint16_t *(*alloc_bf16)(backend *be, size_t n);
    void (*upload_bf16)(backend *be, uint16_t *dst, const uint16_t *host_src, size_t n);
    /* dst = (float)src, exact, for n elements. */
    void (*widen_bf16)(backend *be, float *dst, const uint16_t *src, size_t n);
    /* dst = bf16(src), nearest even, for n elements. */
    void (*round_bf16)(backend *be, uint16_t *dst, const float *src, size_t n);
    /* The same for a (rows, cols) matrix with row strides ld_dst and ld_src. */
    void (*round_bf16_2d)(backend *be, uint16_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);
    void (*sync)(backend *be);
    /* Most device memory in use so far, in bytes (CUDA: the device's used memory after
     * each allocation, context and library workspaces included; cpu-guarded: its
     * buffers' pages). NULL on the CPU backend, whose buffers are host memory: the
     * process's peak RSS says it. */
    size_t (*mem_peak)(backend *be);
    /* The device's memory in bytes (CUDA: cudaMemGetInfo's total). NULL on backends whose
     * buffers are host memory. */
    size_t (*mem_total)(backend *be);
    /* The device's memory not in use now, in bytes (CUDA: cudaMemGetInfo's free: what the
     * context, the libraries, this process's buffers and every other process on the
     * device leave). NULL on backends whose buffers are host memory. */
    size_t (*mem_free)(backend *be);

    /* The matmul mode of later gemm calls, also kept in be->matmul; returns 0. */
    int (*set_matmul)(backend *be, matmul_mode mode);
    /* C[M,N] = alpha * op(A) * op(B) + beta * C; op(A) is [M,K], op(B) is [K,N];
     * inputs as the matmul mode says. */
    void (*gemm)(backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);
    /* The same with B given in bf16 (a weight's bf16 copy) and A rounded to bf16:
     * MATMUL_BF16's arithmetic, whatever the matmul mode. */
    void (*gemm_w16)(backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                     const uint16_t *B, int ldb, float beta, float *C, int ldc);
    /* The same with A and B both given in bf16 (operands rounded once for several
     * products): MATMUL_BF16's arithmetic, whatever the matmul mode. */
    void (*gemm_16)(backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A,
                    int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc);
    /* gemm_16 with beta 0 and C (row stride ldc) in bf16: each fp32 sum rounded once to
     * bf16 (nearest even), bitwise bf16(gemm_16's C). For a product whose output only
     * elementwise ops read (the gate|up product, read by SwiGLU alone). */
    void (*gemm_16_to16)(backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A,
                         int lda, const uint16_t *B, int ldb, uint16_t *C, int ldc);
    /* The same for batch matrices at A + i*stride_a, B + i*stride_b, C + i*stride_c. */
    void (*gemm_batched)(backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, int64_t stride_a, const float *B, int ldb, int64_t stride_b, float beta, float *C,
                         int ldc, int64_t stride_c, int batch);

    /* out[n,:] = table[tokens[n],:]   (N,) -> (N,d) */
    void (*embedding_fwd)(backend *be, float *out, const float *table, const int32_t *tokens, int N, int d);
    /* The same from a table in bf16 (a weight's bf16 copy), widened: exact. */
    void (*embedding_fwd_w16)(backend *be, float *out, const uint16_t *table, const int32_t *tokens, int N, int d);
    /* dtable[tokens[n],:] += dout[n,:] */
    void (*embedding_bwd)(backend *be, float *dtable, const float *dout, const int32_t *tokens, int N, int d);

    /* out = x * rstd * w, rstd[n] = 1/sqrt(mean(x[n]^2) + eps)   (N,d) -> (N,d), saves rstd (N) */
    void (*rmsnorm_fwd)(backend *be, float *out, float *rstd, const float *x, const float *w, int N, int d,
                        float eps);
    /* The same with out rounded to bf16 (nearest even): the bf16 input of the products
     * that read it, stored without an fp32 copy; bitwise bf16(rmsnorm_fwd's out). With
     * x_copy (else NULL) x is also copied there (N,d) as it is read: the residual stream's
     * copy that a product then adds to, without a pass of its own. */
    void (*rmsnorm_fwd_16)(backend *be, uint16_t *out, float *rstd, const float *x, const float *w, int N, int d,
                           float eps, float *x_copy);
    /* dx += d(out)/dx^T dout ; dw += sum_n dout*x*rstd */
    void (*rmsnorm_bwd)(backend *be, float *dx, float *dw, const float *dout, const float *x, const float *w,
                        const float *rstd, int N, int d);
    /* rmsnorm_bwd, and the new dx (after the addition) rounded to bf16 (nearest even) into
     * dx16 (N,d) in the same pass, for products that read it: bitwise rmsnorm_bwd then
     * round_bf16. NULL where a backend has none. */
    void (*rmsnorm_bwd_16)(backend *be, float *dx, uint16_t *dx16, float *dw, const float *dout, const float *x,
                           const float *w, const float *rstd, int N, int d);

    /* In-place rotation of n_heads heads of size hd for each of B*T tokens (row stride ld),
     * token t at position t % T; HF rotate_half pairs (i, i + hd/2); cos/sin are (T, hd/2). */
    void (*rope_fwd)(backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                     int hd, int ld);
    /* Inverse rotation of the gradient, in place. */
    void (*rope_bwd)(backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                     int hd, int ld);

    /* Causal grouped-query attention, scale 1/sqrt(hd). q (B,T,H,hd) row stride ld_qkv,
     * k and v (B,T,KV,hd) row stride ld_qkv, out (B,T,H,hd) row stride H*hd; saves the
     * softmax log-sum-exp lse (B,H,T) for the backward pass. */
    void (*attention_fwd)(backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                          int B, int T, int H, int KV, int hd, int ld_qkv);
    /* dq, dk, dv (same layout as q, k, v) are overwritten. */
    void (*attention_bwd)(backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                          int KV, int hd, int ld_qkv);
    /* Attention whose inputs are kept in bf16 (the CUDA backend's tensor-core attention;
     * NULL where a backend has none). attention_16: 1 when the three ops below take head_dim
     * hd now, else the model keeps fp32 q, k, v for the ops above. */
    int (*attention_16)(backend *be, int hd);
    /* qkv16 (bf16, N = B T rows each: q (N, H hd), then k (N, KV hd), then v (N, KV hd),
     * unpadded) from qkv (N rows of stride ld: q | k | v, unrotated): q and k rotated as
     * rope_fwd, then every value rounded to bf16 (nearest even). */
    void (*rope_qkv_16)(backend *be, uint16_t *qkv16, const float *qkv, const float *cos_t, const float *sin_t,
                        int B, int T, int H, int KV, int hd, int ld);
    /* The qkv product's output gradient in bf16, for a bf16 weight copy's products: dqkv16
     * (N rows of (H + 2 KV) hd, unpadded) from dqkv (N rows of stride ld: dq | dk | dv, the
     * gradient of the rotated q and k): dq and dk rotated back as rope_bwd, then every
     * value rounded to bf16 (nearest even), bit for bit rope_bwd then round_bf16 without
     * the fp32 pass over dq and dk between. NULL where a backend has none. */
    void (*rope_bwd_qkv_16)(backend *be, uint16_t *dqkv16, const float *dqkv, const float *cos_t, const float *sin_t,
                            int B, int T, int H, int KV, int hd, int ld);
    /* attention_fwd and attention_bwd with q, k and v from qkv16; out (B,T,H,hd) in fp32,
     * or with out16 its values rounded to bf16 (nearest even; a buffer of half as many
     * floats), which the backward's D = rowsum(dout o out) then reads; dq, dk, dv rows of
     * stride ld (the gradient of the rotated q and k, as attention_bwd's). */
    void (*attention_fwd_16)(backend *be, void *out, int out16, float *lse, const uint16_t *qkv16, int B, int T,
                             int H, int KV, int hd);
    void (*attention_bwd_16)(backend *be, float *dq, float *dk, float *dv, const float *dout, const void *out,
                             int out16, const float *lse, const uint16_t *qkv16, int B, int T, int H, int KV, int hd,
                             int ld);
    /* attention_bwd_16 and then rope_bwd_qkv_16 in one, from dout16, dout in bf16 (N, H hd:
     * the o_proj product's input gradient as gemm_16_to16 writes it): the qkv product's
     * output gradient dqkv16 (as rope_bwd_qkv_16's) from attention's; dqkv (N rows of
     * stride ld, fp32) is scratch. The values of those two ops given dout16 widened: D and
     * the products read dO's bf16 values, and no copy of it is made. An attention that
     * makes bf16 gradients (cuDNN's) writes them into dqkv16 and dq, dk are rotated back
     * there, in place (widening is exact); otherwise they go through dqkv, bit for bit.
     * NULL where a backend has none. */
    void (*attention_bwd_rope_16)(backend *be, uint16_t *dqkv16, float *dqkv, const uint16_t *dout16,
                                  const void *out, int out16, const float *lse, const uint16_t *qkv16,
                                  const float *cos_t, const float *sin_t, int B, int T, int H, int KV, int hd, int ld);

    /* out (N,f) = silu(gate) * up; gate and up (N,f) with row stride ld_in, with round_in
     * each rounded to bf16 (nearest even) as it is read (bf16 products: the gate|up
     * product's output as bf16 mixed precision keeps it), not where it is stored. */
    void (*swiglu_fwd)(backend *be, float *out, const float *gate, const float *up, int N, int f, int ld_in,
                       int round_in);
    /* The same from gate and up in bf16 (gemm_16_to16's output) with out rounded to bf16
     * (nearest even): bitwise bf16(swiglu_fwd's out) on gate and up widened (or on the
     * fp32 values, round_in). */
    void (*swiglu_fwd_16)(backend *be, uint16_t *out, const uint16_t *gate, const uint16_t *up, int N, int f,
                          int ld_in);
    /* dgate, dup (row stride ld_in) overwritten from dout (N,f); round_in as swiglu_fwd's,
     * dout rounded too (bf16 products: the down product's input gradient, in bf16). */
    void (*swiglu_bwd)(backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                       const float *up, int N, int f, int ld_in, int round_in);
    /* The same from dout, gate and up in bf16 with dgate, dup rounded to bf16 (nearest
     * even): bitwise bf16(swiglu_bwd's) on them widened (or on the fp32 values, round_in). */
    void (*swiglu_bwd_16)(backend *be, uint16_t *dgate, uint16_t *dup, const uint16_t *dout, const uint16_t *gate,
                          const uint16_t *up, int N, int f, int ld_in);

    /* Softmax cross-entropy of logits (N,V) against targets (N), targets < 0 ignored.
     * Saves lse (N); returns the SUM of losses over valid rows and their count in *n_valid. */
    double (*xent_fwd)(backend *be, float *lse, const float *logits, const int32_t *targets, int N, int V,
                       int64_t *n_valid);
    /* dlogits = scale * (softmax - onehot) on valid rows, 0 on ignored rows; dlogits may
     * alias logits. For the gradient of the mean loss pass scale = loss_scale / n_valid. */
    void (*xent_bwd)(backend *be, float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                     int N, int V, float scale);

    /* xent_bwd's dlogits rounded to bf16 (nearest even) and written over the logits:
     * row n's V values at (uint16_t *)logits + 2*n*V, the first half of its own fp32 row
     * (a bf16 matrix with row stride 2V for gemm_16), so no second (N,V) buffer exists. */
    void (*xent_bwd_16)(backend *be, float *logits, const float *lse, const int32_t *targets, int N, int V,
                        float scale);

    /* Distillation from teacher logits (N,V) on valid rows (targets >= 0): row loss
     * (1-alpha) CE(z, y) + alpha T^2 KL(softmax(t/T) || softmax(z/T)). Overwrites the
     * student logits z with scale * dloss/dz (0 on ignored rows); returns the SUM of row
     * losses. dloss/dz = (1-alpha)(softmax(z) - onehot(y)) + alpha T (softmax(z/T) - softmax(t/T)). */
    double (*distill)(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                      float alpha, float temperature, float scale);
    /* The same with scale * dloss/dz rounded to bf16 (nearest even) and written over the
     * logits as xent_bwd_16 writes its dlogits: row n at (uint16_t *)logits + 2*n*V. */
    double (*distill_16)(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                         float alpha, float temperature, float scale);

    /* dst[r,c] = src[r,c] + beta * dst[r,c] for a (rows, cols) matrix with row strides
     * ld_dst and ld_src; beta == 0 writes src without reading dst. */
    void (*add2d)(backend *be, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols, float beta);

    /* elementwise */
    void (*add)(backend *be, float *y, const float *a, const float *b, size_t n); /* y = a + b */
    void (*scale)(backend *be, float *x, float s, size_t n);                      /* x *= s */
    void (*axpy)(backend *be, float *y, float alpha, const float *x, size_t n);   /* y += alpha*x */
    double (*sumsq)(backend *be, const float *x, size_t n);                       /* sum x^2 */

    /* AdamW with decoupled weight decay on n parameters; g is multiplied by grad_scale
     * first (clipping); step counts from 1 for bias correction.
     * p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p) */
    void (*adamw)(backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int64_t step);
} backend_ops;

struct backend {
    const backend_ops *ops;
    void *impl; /* backend-private state */
    int threads;
    int host_memory; /* buffers are host memory that host code may also read and write (CPU backend) */
    matmul_mode matmul; /* the last set_matmul's mode (MATMUL_FP32 until one) */
    char info[160]; /* for logs, e.g. "OpenBLAS core Haswell, 2 thread(s)" */
};

/* CPU backend: fp32, OpenBLAS with `threads` threads (<= 0: leave OpenBLAS's default). */
backend *backend_cpu_create(int threads);
void backend_destroy(backend *be);
/* The CPU backend's ops on guarded buffers, to test device-resident code on a machine
 * without a GPU: every buffer is its own mapping that host code cannot read or write
 * (PROT_NONE) except while an op that takes it runs, so a host dereference of a device
 * buffer faults at once; an op given a pointer that is not inside one of its buffers,
 * or an upload/download whose host side is one, aborts naming the op. host_memory is 0,
 * results are bitwise those of the CPU backend. */
backend *backend_guard_create(int threads);
/* OpenBLAS picks its kernels when the process starts, from OPENBLAS_CORETYPE or CPU
 * detection, and detects some AVX-512 CPUs (e.g. AMD Zen 4) as Haswell, about 1.5x
 * slower. Returns 1 and writes a better OPENBLAS_CORETYPE value into out when the CPU
 * has AVX-512 F/BW/DQ/VL, OpenBLAS runs a core without it and OPENBLAS_CORETYPE is
 * unset (a launcher can then set it and re-exec); 0 otherwise. */
int backend_cpu_better_coretype(char *out, size_t n);

/* Llama rope tables on the host: cos_t, sin_t (T, hd/2) for positions 0..T-1, as
 * transformers computes them (float32 inverse frequencies; rope_scaling "llama3"
 * when scaling_type is "llama3", otherwise none). */
void rope_tables_host(float *cos_t, float *sin_t, int T, int hd, double theta, const char *scaling_type,
                      double factor, double low_freq_factor, double high_freq_factor, int original_max_pos);

/* Thin wrappers so that call sites read as ops. */
static inline float *be_alloc(backend *be, size_t n) { return be->ops->alloc(be, n); }
static inline int32_t *be_alloc_i32(backend *be, size_t n) { return be->ops->alloc_i32(be, n); }
static inline void be_free(backend *be, void *p) { be->ops->free(be, p); }
static inline size_t be_mem_peak(backend *be) { return be->ops->mem_peak ? be->ops->mem_peak(be) : 0; }
static inline size_t be_mem_total(backend *be) { return be->ops->mem_total ? be->ops->mem_total(be) : 0; }
static inline size_t be_mem_free(backend *be) { return be->ops->mem_free ? be->ops->mem_free(be) : 0; }
static inline void be_zero(backend *be, float *x, size_t n) { be->ops->zero(be, x, n); }
static inline void be_copy(backend *be, float *dst, const float *src, size_t n) { be->ops->copy(be, dst, src, n); }
static inline void be_upload(backend *be, float *dst, const float *src, size_t n) { be->ops->upload(be, dst, src, n); }
static inline void be_download(backend *be, float *dst, const float *src, size_t n)
{
    be->ops->download(be, dst, src, n);
}
static inline void be_gemm(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc)
{
    be->ops->gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif
