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
/* Bytes of device scratch the calls below need (16-byte aligned): the bf16 copies of q, k,
 * v and dout, B T (2 H + 2 KV) hd values. */
size_t attn_tc_scratch_bytes(int B, int T, int H, int KV, int hd);
/* The bf16 copies in scratch of q (B,T,H,hd), k, v (B,T,KV,hd), rows of stride ld (any
 * alignment), and of dout (B,T,H,hd; the backward's, NULL in the forward), which the
 * calls below read; queued on stream s, which must not run anything else that uses the
 * scratch until they are done. */
void attn_tc_copies(cudaStream_t s, void *scratch, const float *q, const float *k, const float *v, const float *dout,
                    int B, int T, int H, int KV, int hd, int ld);
/* out (B,T,H,hd) row stride H*hd, lse (B,H,T) from the copies of q, k, v. */
void attn_tc_fwd(cudaStream_t s, void *scratch, float *out, float *lse, int B, int T, int H, int KV, int hd);
/* dq (overwritten, rows of stride ld) from the copies of q, k, v, dout, with lse and D. */
void attn_tc_dq(cudaStream_t s, void *scratch, float *dq, const float *lse, const float *D, int B, int T, int H,
                int KV, int hd, int ld);
/* dk, dv (overwritten, rows of stride ld) likewise. */
void attn_tc_dkv(cudaStream_t s, void *scratch, float *dk, float *dv, const float *lse, const float *D, int B, int T,
                 int H, int KV, int hd, int ld);

#ifdef __cplusplus
}
#endif

#endif
