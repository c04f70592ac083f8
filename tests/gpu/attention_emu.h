/* attention_emu: the tensor-core attention kernels (cuda/attention_tc_kernels.cuh) run on
 * the host through tests/gpu/simt_emu.h, with attention_tc.cu's launch shapes, on host
 * buffers with the layouts of backend.h's attention ops. */
#ifndef PC_ATTENTION_EMU_H
#define PC_ATTENTION_EMU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out (B,T,H,hd) row stride H*hd and lse (B,H,T) from q (B,T,H,hd), k, v (B,T,KV,hd), rows
 * of stride ld. */
void atc_emu_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H, int KV,
                 int hd, int ld);
/* dq, dk, dv (rows of stride ld) from dout and the forward's out and lse; D = rowsum(dout o out)
 * computed here, as the backend does before its launch. */
void atc_emu_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                 const float *q, const float *k, const float *v, int B, int T, int H, int KV, int hd, int ld);
/* The largest dynamic shared memory one of the kernels takes at head_dim hd. */
size_t atc_emu_smem(int hd);

#ifdef __cplusplus
}
#endif

#endif
