/* attention_tc: causal GQA attention on bf16 tensor cores (WMMA m16n16k16, fp32
 * accumulation), flash style: no (T,T) matrix is ever held, only one 64 x 64 tile of
 * scores per block in shared memory.
 *
 * The backend uses it when backend.attention is bf16 (backend_cuda.cu); the products
 * QK^T, PV, dO V^T, dS K, P^T dO and dS^T Q take bf16-rounded inputs (q, k, v, dO and the
 * probabilities P and dS) and accumulate in fp32; the softmax, lse, its running max and
 * sum, and D = rowsum(dO o O) are fp32. Layouts are those of backend.h: q, k, v rows of
 * stride ld, token-major (b*T + t); out (B,T,H,hd) with row stride H*hd; lse (B,H,T).
 *
 * Blocks of ATC_WARPS warps; each warp owns 16 rows of the block's 64 (query rows in the
 * forward pass and dQ, key rows in dK/dV), so a warp's scores, probabilities and
 * accumulators are private to it and only the shared K/V (or Q/dO) tiles need block
 * barriers. Accumulators live in shared memory as fp32 (WMMA fragments have no row
 * layout one could rescale in registers) and pass through fragments for each product.
 * Forward (per (b, h, query tile)): for each key tile up to the diagonal, S = Q K^T,
 * online softmax (running max m and sum l per row, O rescaled by exp(m_old - m_new)),
 * O += P V; at the end out = O / l, lse = m + log l. Backward, as the fp32 kernels: dQ per
 * (b, h, query tile) over key tiles, dK and dV per (b, kv head, key tile) over the heads
 * of its group and the query tiles at or after it, with P = exp(scale S - lse) and
 * dS = P (dO.v - D). */
#include "attention_tc.h"

#include <stdint.h>

#include "attention_tc_kernels.cuh"
#include "cuda_check.h"
#include "launch.h"

/* ---------------------------------------------------------------- launchers */

extern "C" int attn_tc_supported(int hd, size_t smem_optin)
{
    return hd > 0 && hd <= ATC_HD_MAX && hd % 16 == 0 && atc_dkv_smem(hd) <= smem_optin &&
           atc_dq_smem(hd) <= smem_optin && atc_fwd_smem(hd) <= smem_optin;
}

extern "C" int attn_tc_aligned(size_t ld, const float *q, const float *k, const float *v, const float *dout)
{
    return ld % 4 == 0 && ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)dout) % 16 == 0;
}

/* Opt a kernel into `bytes` of dynamic shared memory (beyond the default 48 KB). */
static void atc_smem(const void *kernel, size_t bytes)
{
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

extern "C" void attn_tc_fwd(cudaStream_t s, float *out, float *lse, const float *q, const float *k, const float *v,
                            int B, int T, int H, int KV, int hd, int ld)
{
    const size_t bytes = atc_fwd_smem(hd);
    atc_smem((const void *)k_atc_fwd, bytes);
    dim3 grid((unsigned)((T + ATC_ROWS - 1) / ATC_ROWS), (unsigned)H, (unsigned)B);
    PC_LAUNCH(k_atc_fwd, grid, ATC_WARPS * 32, bytes, s)(out, lse, q, k, v, T, H, KV, hd, ld, 1.0f / sqrtf((float)hd));
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void attn_tc_bwd(cudaStream_t s, float *dq, float *dk, float *dv, const float *dout, const float *lse,
                            const float *D, const float *q, const float *k, const float *v, int B, int T, int H, int KV,
                            int hd, int ld)
{
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t b_dq = atc_dq_smem(hd), b_dkv = atc_dkv_smem(hd);
    atc_smem((const void *)k_atc_dq, b_dq);
    atc_smem((const void *)k_atc_dkv, b_dkv);
    dim3 gq((unsigned)((T + ATC_ROWS - 1) / ATC_ROWS), (unsigned)H, (unsigned)B);
    PC_LAUNCH(k_atc_dq, gq, ATC_WARPS * 32, b_dq, s)(dq, dout, lse, D, q, k, v, T, H, KV, hd, ld, scale);
    CUDA_CHECK(cudaGetLastError());
    dim3 gkv((unsigned)((T + ATC_ROWS - 1) / ATC_ROWS), (unsigned)KV, (unsigned)B);
    PC_LAUNCH(k_atc_dkv, gkv, ATC_WARPS * 32, b_dkv, s)(dk, dv, dout, lse, D, q, k, v, T, H, KV, hd, ld, scale);
    CUDA_CHECK(cudaGetLastError());
}
