/* backend_cuda: the backend op table (common/backend.h) for one CUDA GPU.
 *
 * Buffers are fp32 device memory (cudaMalloc, zeroed at allocation like the CPU
 * backend's); every op runs on one stream owned by the backend, and upload, download
 * and the ops that return a value synchronise that stream before returning. Matrix
 * products go through cuBLAS, in plain fp32 (the default) or with TF32 tensor cores
 * (backend_cuda_set_tf32); the info string says which. A CUDA failure is fatal: the
 * process exits with a message naming the call, file and line, as the op table has no
 * error channel. In a build without CUDA, backend_cuda_create returns NULL. */
#ifndef PC_BACKEND_CUDA_H
#define PC_BACKEND_CUDA_H

#include <stdio.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Backend on CUDA device `device`; NULL with a message in err (size errlen) when the
 * device is absent or CUDA was not built. Makes `device` current for the calling thread. */
backend *backend_cuda_create(int device, char *err, int errlen);
/* Matrix products with TF32 tensor cores (on != 0) or in plain fp32 (on == 0); updates
 * be->info. Returns -1 when be is not a CUDA backend. */
int backend_cuda_set_tf32(backend *be, int on);
/* Attention on bf16 tensor cores (bf16 != 0; attention_tc.h: head_dim a multiple of 16,
 * other shapes stay fp32) or in fp32 (0, the default); updates be->info. Returns -1 when
 * be is not a CUDA backend. */
int backend_cuda_set_attention(backend *be, int bf16);
/* Attention on bf16 inputs as above, by cuDNN's fused flash attention (attention_cudnn.h:
 * loaded at run time; its backward sums dQ atomically, so runs differ in the last bits);
 * backend_cuda_set_attention turns it off. 0, or -1 with the reason in err (no cuDNN 9,
 * or none usable on this device); updates be->info. */
int backend_cuda_use_cudnn(backend *be, char *err, int errlen);
/* A trial of cuDNN's attention (on != 0 starts it): until it ends (on == 0) a cuDNN call
 * that fails (a shape its engines do not take) returns, its outputs meaningless, instead
 * of ending the process, and the end returns -1 with the first failure's reason in err (0
 * when none failed), after the stream's work is done. -1 too when be is not a CUDA
 * backend. */
int backend_cuda_cudnn_trial(backend *be, int on, char *err, int errlen);
/* With bf16 matrix products (set_matmul MATMUL_BF16) the fp32 operands of a product are
 * rounded into two scratch buffers of at most this many bf16 elements each (128 MiB): a
 * larger operand is rounded and multiplied in blocks of rows of the product (A) or of
 * columns (B), whole dot products each. */
#define BACKEND_CUDA_BF16_BLOCK ((size_t)1 << 26)
/* Set that bound (elements; tests make it small to exercise the blocks). Returns -1 when
 * be is not a CUDA backend. */
int backend_cuda_set_bf16_block(backend *be, size_t elems);
/* Every cuBLAS product runs in pieces such that no operand spans this many elements or
 * more (its leading dimension times its stored rows): cuBLASLt has failed at exactly 2^31. */
#define BACKEND_CUDA_GEMM_SPAN ((int64_t)1 << 31)
/* Set that bound (elements, at least 2; tests make it small to exercise the pieces).
 * Returns -1 when be is not a CUDA backend. */
int backend_cuda_set_gemm_span(backend *be, int64_t elems);
/* cublasGemmEx calls so far, the pieces of a split product each (tests); 0 when be is
 * not a CUDA backend. */
uint64_t backend_cuda_gemm_calls(backend *be);
/* Bytes the two bf16 operand copies hold now: each grows to the largest operand rounded
 * into it so far, up to the bound above. 0 when be is not a CUDA backend. */
size_t backend_cuda_bf16_copies_bytes(backend *be);
/* Bytes of attention's bf16 copies of q, k, v and dO (backend.attention bf16; they only
 * grow, to the largest call's). */
size_t backend_cuda_attention_copies_bytes(backend *be);
/* Profiling (cuda/prof.h): on != 0 starts timing every op's device work with CUDA events
 * (forgetting what was timed before), 0 stops. PC_CUDA_PROFILE=1 in the environment
 * starts it at creation and prints the report on stderr when the backend is destroyed.
 * Returns -1 when be is not a CUDA backend. */
int backend_cuda_profile(backend *be, int on);
/* The profile so far, a table sorted by device time (prof_report); wall_s > 0 sets the
 * ops' total against that wall time. Nothing when not profiling. */
void backend_cuda_profile_report(backend *be, FILE *f, double wall_s);
/* Largest attention head_dim the attention kernels take. */
#define BACKEND_CUDA_MAX_HEAD_DIM 128

#ifdef __cplusplus
}
#endif

#endif
