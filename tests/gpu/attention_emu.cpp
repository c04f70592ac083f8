/* attention_emu: cuda/attention_tc_kernels.cuh compiled for the host against simt_emu.h
 * (attention_emu.h). */
#include "simt_emu.h"

#include "attention_emu.h"
#include "attention_tc_kernels.cuh"

extern "C" size_t atc_emu_smem(int hd)
{
    return std::max(atc_fwd_smem(hd), std::max(atc_dq_smem(hd), atc_dkv_smem(hd)));
}

extern "C" void atc_emu_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                            int KV, int hd, int ld)
{
    dim3 grid{(unsigned)((T + ATC_ROWS - 1) / ATC_ROWS), (unsigned)H, (unsigned)B};
    const float scale = 1.0f / sqrtf((float)hd);
    emu_launch(grid, ATC_WARPS * 32, atc_fwd_smem(hd), [&] { k_atc_fwd(out, lse, q, k, v, T, H, KV, hd, ld, scale); });
}

extern "C" void atc_emu_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                            const float *q, const float *k, const float *v, int B, int T, int H, int KV, int hd, int ld)
{
    std::vector<float> D((size_t)B * H * T); /* (B,H,T) */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                const size_t row = ((size_t)b * T + t) * H + h; /* (B,T,H) rows of hd */
                float s = 0.0f;
                for (int c = 0; c < hd; c++) s += dout[row * hd + c] * out[row * hd + c];
                D[((size_t)b * H + h) * T + t] = s;
            }
    const float scale = 1.0f / sqrtf((float)hd);
    const float *Dp = D.data();
    dim3 gq{(unsigned)((T + ATC_ROWS - 1) / ATC_ROWS), (unsigned)H, (unsigned)B};
    emu_launch(gq, ATC_WARPS * 32, atc_dq_smem(hd),
               [&] { k_atc_dq(dq, dout, lse, Dp, q, k, v, T, H, KV, hd, ld, scale); });
    dim3 gkv{(unsigned)((T + ATC_ROWS - 1) / ATC_ROWS), (unsigned)KV, (unsigned)B};
    emu_launch(gkv, ATC_WARPS * 32, atc_dkv_smem(hd),
               [&] { k_atc_dkv(dk, dv, dout, lse, Dp, q, k, v, T, H, KV, hd, ld, scale); });
}
