/* attention_tc: causal GQA attention forward and backward on bf16 tensor cores with
 * fp32 accumulation, flash style (attention_tc.cu). Shapes and layouts as the backend's
 * attention ops (common/backend.h); D is (B,H,T) rowsum(dO o O), computed by the caller. */
#ifndef PC_ATTENTION_TC_H
#define PC_ATTENTION_TC_H

#include <cuda_runtime.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernels take head_dim hd on a device with smem_optin bytes of shared memory
 * per block (cudaDeviceProp.sharedMemPerBlockOptin): hd a multiple of 16, at most 128. */
int attn_tc_supported(int hd, size_t smem_optin);
/* Whether q, k, v (row stride ld floats) and dout (row stride H*hd, or NULL) allow the
 * kernels' 16-byte loads: each pointer 16-byte aligned, ld a multiple of 4. */
int attn_tc_aligned(size_t ld, const float *q, const float *k, const float *v, const float *dout);
/* out (B,T,H,hd) row stride H*hd, lse (B,H,T) from q (B,T,H,hd), k, v (B,T,KV,hd), rows
 * of stride ld; queued on stream s. */
void attn_tc_fwd(cudaStream_t s, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                 int H, int KV, int hd, int ld);
/* dq, dk, dv (overwritten, rows of stride ld) from dout (B,T,H,hd), lse, D and the inputs. */
void attn_tc_bwd(cudaStream_t s, float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                 const float *q, const float *k, const float *v, int B, int T, int H, int KV, int hd, int ld);

#ifdef __cplusplus
}
#endif

#endif
