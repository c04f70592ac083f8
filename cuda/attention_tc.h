/* attention_tc: causal GQA attention forward and backward on bf16 tensor cores with
 * fp32 accumulation, flash style (attention_tc.cu). Shapes and layouts as the backend's
 * attention ops (common/backend.h); D is (B,H,T) rowsum(dO o O), computed by the caller,
 * which writes dout16 in the same pass (backend_cuda.cu, k_attention_dsum). */
#ifndef PC_ATTENTION_TC_H
#define PC_ATTENTION_TC_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernels take head_dim hd on a device with smem_optin bytes of shared memory
 * per block (cudaDeviceProp.sharedMemPerBlockOptin): hd a multiple of 16, at most 128. */
int attn_tc_supported(int hd, size_t smem_optin);
/* The kernels read bf16 copies: qkv16, q (B T, H hd) then k and v (B T, KV hd) each, rows
 * unpadded and token-major (b*T + t), B T (H + 2 KV) hd values (attn_tc_qkv_bytes); and
 * for the backward dout16, dout (B T, H hd) likewise, rounded to nearest even. Both
 * 16-byte aligned. */
size_t attn_tc_qkv_bytes(int B, int T, int H, int KV, int hd);
/* Bytes of dout16. */
size_t attn_tc_dout_bytes(int B, int T, int H, int hd);
/* FLOPs of causal attention's forward products, S = QK^T and O = PV over the T(T+1)/2
 * (query, key) pairs of each head: 2 products x 2 FLOPs x hd a pair. The backward kernels
 * run ATTN_TC_DQ_FORWARDS (dQ recomputes S and dP: 3 products) and ATTN_TC_DKV_FORWARDS
 * (dK/dV recomputes them too: 4 products) times that; a flash backward's useful work is
 * 2.5 forwards. */
double attn_tc_flops(int B, int T, int H, int hd);
#define ATTN_TC_DQ_FORWARDS 1.5
#define ATTN_TC_DKV_FORWARDS 2.0
/* q (B,T,H,hd), k, v (B,T,KV,hd), rows of stride ld (any alignment), rounded into qkv16;
 * queued on stream s, like every call below. */
void attn_tc_copies(cudaStream_t s, void *qkv16, const float *q, const float *k, const float *v, int B, int T, int H,
                    int KV, int hd, int ld);
/* out (B,T,H,hd) row stride H*hd, in fp32, or with out16 rounded to bf16 (nearest even),
 * and lse (B,H,T) from qkv16. */
void attn_tc_fwd(cudaStream_t s, const void *qkv16, void *out, int out16, float *lse, int B, int T, int H, int KV,
                 int hd);
/* dq (overwritten, rows of stride ld) from qkv16 and dout16, with lse and D. */
void attn_tc_dq(cudaStream_t s, const void *qkv16, const void *dout16, float *dq, const float *lse, const float *D,
                int B, int T, int H, int KV, int hd, int ld);
/* dk, dv (overwritten, rows of stride ld) likewise. */
void attn_tc_dkv(cudaStream_t s, const void *qkv16, const void *dout16, float *dk, float *dv, const float *lse,
                 const float *D, int B, int T, int H, int KV, int hd, int ld);

/* The kernels' variants, process-wide; every variant gives the same bits, they differ in
 * speed. groups: the row groups of 16 query rows each warp of the forward and dQ kernels
 * owns, 1, or 2 (blocks of 128 query rows, head_dim up to 64), which reads each K and V
 * fragment from shared memory once for both groups at the price of twice the registers.
 * dkv: the dK/dV kernel takes its warp's K and V fragments again for each pass (1, the
 * fewest registers), or keeps them (head_dim up to 64) with 3 (2) or 2 (3) blocks a
 * multiprocessor. 0 (the default on a GPU) tunes: the first call of each shape (B, T, H,
 * KV, head_dim) times every variant the head_dim allows and keeps the fastest for that
 * shape. A count above the head_dim's runs its last. */
typedef struct attn_tc_variants {
    int groups, dkv;
} attn_tc_variants;
/* Sets v (groups 0..2, dkv 0..3, else abort) and returns the setting it replaces. */
attn_tc_variants attn_tc_set_variants(attn_tc_variants v);
/* One line a tuned shape and kernel: each variant's time a call and the pick. */
void attn_tc_tuned_report(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
