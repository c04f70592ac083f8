/* attention_cudnn: causal GQA attention forward and backward by cuDNN's fused flash
 * attention (attention_cudnn.c), on the same bf16 inputs as attention_tc.h's kernels.
 *
 * cuDNN is loaded at run time (dlopen of libcudnn.so.9, or the file PC_CUDNN_LIB names),
 * so a build and a run without it lose only this path. Each shape's graph (cuDNN's
 * backend API: products, pointwise ops and reductions that its engines fuse into one
 * kernel) is built once and its execution plan kept.
 *
 * Layouts, as attention_tc.h: qkv16 is q (B T, H hd) then k and v (B T, KV hd), bf16,
 * token-major; out16 and dout16 (B T, H hd) bf16; lse (B,H,T) fp32, the natural log of
 * each row's sum of exp(scale s); dqkv16 (B T, (H + 2 KV) hd) bf16, dq | dk | dv in each
 * row (the qkv product's layout). Pointers 16-byte aligned. Unlike attention_tc, the
 * backward's dQ is summed by atomic adds in an order that varies from run to run. */
#ifndef PC_ATTENTION_CUDNN_H
#define PC_ATTENTION_CUDNN_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif

typedef struct attn_cudnn attn_cudnn;

/* A handle on the current device, its work queued on stream (a cudaStream_t); NULL with
 * the reason in err where cuDNN is missing, too old (before 9.0) or fails. */
attn_cudnn *attn_cudnn_create(void *stream, char *err, int errlen);
void attn_cudnn_free(attn_cudnn *a);
/* "cuDNN 9.19.0" */
const char *attn_cudnn_describe(const attn_cudnn *a);
/* Device memory it holds (the plans' workspaces, the backward's dQ accumulator and row
 * sums), grown to the largest call. */
size_t attn_cudnn_scratch_bytes(const attn_cudnn *a);

/* 0, or -1 with the reason in err (a shape cuDNN's engines do not take, a failed
 * launch). The first call of a shape builds its plan. */
int attn_cudnn_fwd(attn_cudnn *a, const void *qkv16, void *out16, float *lse, int B, int T, int H, int KV, int hd,
                   char *err, int errlen);
int attn_cudnn_bwd(attn_cudnn *a, const void *qkv16, const void *out16, const void *dout16, const float *lse,
                   void *dqkv16, int B, int T, int H, int KV, int hd, char *err, int errlen);

/* For the tests, with no GPU: builds the forward (bwd 0) or backward (1) graph of a shape
 * and asks cuDNN's heuristics for engine configs on the device that devprop_json
 * describes (cuDNN's device-properties JSON, 9.8 and later); cuDNN keeps those that pass
 * its support checks, which need a CUDA driver to load (tests/gpu/cuda_stub/ stands in
 * for one). 0 with their count in *viable, -1 with the reason (none, or cuDNN's message
 * for a graph it refuses), 77 where cuDNN cannot be loaded or is before 9.8. */
int attn_cudnn_check_offline(const char *devprop_json, int bwd, int B, int T, int H, int KV, int hd, int *viable,
                             char *err, int errlen);

#ifdef __cplusplus
}
#endif
#endif
