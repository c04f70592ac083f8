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
/* Bytes of device scratch either call needs (16-byte aligned): the bf16 copies of q, k, v
 * and dout, B T (2 H + 2 KV) hd values. */
size_t attn_tc_scratch_bytes(int B, int T, int H, int KV, int hd);
/* out (B,T,H,hd) row stride H*hd, lse (B,H,T) from q (B,T,H,hd), k, v (B,T,KV,hd), rows
 * of stride ld (any alignment); queued on stream s, which must not run anything else
 * that uses the scratch meanwhile. */
void attn_tc_fwd(cudaStream_t s, void *scratch, float *out, float *lse, const float *q, const float *k,
                 const float *v, int B, int T, int H, int KV, int hd, int ld);
/* dq, dk, dv (overwritten, rows of stride ld) from dout (B,T,H,hd), lse, D and the inputs. */
void attn_tc_bwd(cudaStream_t s, void *scratch, float *dq, float *dk, float *dv, const float *dout, const float *lse,
                 const float *D, const float *q, const float *k, const float *v, int B, int T, int H, int KV, int hd,
                 int ld);

#ifdef __cplusplus
}
#endif

#endif
