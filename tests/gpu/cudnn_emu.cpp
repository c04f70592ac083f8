/* attention_cudnn.h's entry points for the emulator's build, where there is no cuDNN:
 *
 * - by default they refuse, with the reason a build without cuDNN gives;
 * - with PC_EMU_CUDNN=1 they stand in for cuDNN with the tensor-core kernels
 *   (attention_tc.h) behind cuDNN's contract: the output and dq | dk | dv written in
 *   bf16 only, rowsum(dO o O) computed from the bf16 dO and output. So the backend's
 *   cuDNN route (backend_cuda.cu: its scratch, dO's and the output's copies, the widening
 *   of cuDNN's bf16 results into the caller's rows) runs under the emu tests, against the
 *   CPU backend, as it will on a GPU around cuDNN itself. Nothing of cuDNN is checked
 *   here: cudnn-graphs-offline checks its graphs, the gpu suite its results;
 * - with PC_EMU_CUDNN=wrong the same, but the forward's lse comes out 1 too large (and
 *   so the backward's gradients wrong with it): a cuDNN whose results are off;
 * - with PC_EMU_CUDNN=refuse it loads, but every call fails with a reason, as a shape
 *   cuDNN's engines do not take does. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cuda/attention_cudnn.h"
#include "../../cuda/attention_tc.h"
#include "../../cuda/rows.cuh"

static const char emu_none[] = "this build has no cuDNN (attention_cudnn.c was built without its headers)";

struct attn_cudnn {
    cudaStream_t stream;
    int wrong, refuse; /* PC_EMU_CUDNN=wrong, refuse */
    size_t scratch_n; /* what a call held, as attn_cudnn_scratch_bytes reports */
};

static int emu_refuse(char *err, int errlen)
{
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", emu_none);
    return -1;
}

static int emu_refuse_shape(char *err, int errlen, int B, int T, int H, int KV, int hd)
{
    snprintf(err, (size_t)errlen, "cuDNN stand-in (PC_EMU_CUDNN=refuse): no engine for B %d T %d H %d KV %d hd %d", B,
             T, H, KV, hd);
    return -1;
}

extern "C" attn_cudnn *attn_cudnn_create(void *stream, char *err, int errlen)
{
    const char *on = getenv("PC_EMU_CUDNN");
    if (!on || (strcmp(on, "1") && strcmp(on, "wrong") && strcmp(on, "refuse"))) {
        emu_refuse(err, errlen);
        return NULL;
    }
    attn_cudnn *a = (attn_cudnn *)calloc(1, sizeof *a);
    a->stream = (cudaStream_t)stream;
    a->wrong = !strcmp(on, "wrong");
    a->refuse = !strcmp(on, "refuse");
    return a;
}

extern "C" void attn_cudnn_free(attn_cudnn *a) { free(a); }
extern "C" const char *attn_cudnn_describe(const attn_cudnn *a)
{
    (void)a;
    return "cuDNN stand-in (emulator)";
}
extern "C" size_t attn_cudnn_scratch_bytes(const attn_cudnn *a) { return a->scratch_n; }

extern "C" int attn_cudnn_fwd(attn_cudnn *a, const void *qkv16, void *out16, float *lse, int B, int T, int H, int KV,
                              int hd, char *err, int errlen)
{
    if (a->refuse) return emu_refuse_shape(err, errlen, B, T, H, KV, hd);
    attn_tc_fwd(a->stream, qkv16, out16, 1, lse, B, T, H, KV, hd);
    if (a->wrong) {
        cudaStreamSynchronize(a->stream); /* lse written (device memory is the host's here) */
        for (size_t i = 0; i < (size_t)B * H * T; i++) lse[i] += 1.0f;
    }
    return 0;
}

extern "C" int attn_cudnn_bwd(attn_cudnn *a, const void *qkv16, const void *out16, const void *dout16,
                              const float *lse, void *dqkv16, int B, int T, int H, int KV, int hd, char *err,
                              int errlen)
{
    if (a->refuse) return emu_refuse_shape(err, errlen, B, T, H, KV, hd);
    const size_t N = (size_t)B * T, C = (size_t)(H + 2 * KV) * hd, rows = (size_t)B * H * T;
    float *D = NULL, *g = NULL;
    cudaMalloc((void **)&D, rows * sizeof(float));
    cudaMalloc((void **)&g, N * C * sizeof(float));
    a->scratch_n = (rows + N * C) * sizeof(float);
    cudaStreamSynchronize(a->stream); /* dO's and the output's copies written */
    const uint16_t *o = (const uint16_t *)out16, *d = (const uint16_t *)dout16;
    for (int b = 0; b < B; b++) /* D (B,H,T) = rowsum(dO o O), from the bf16 values */
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const size_t r = ((size_t)b * T + t) * H * hd + (size_t)h * hd;
                float s = 0.0f;
                for (int j = 0; j < hd; j++) s += vec_widen_bf16(d[r + j]) * vec_widen_bf16(o[r + j]);
                D[((size_t)b * H + h) * T + t] = s;
            }
    attn_tc_dq(a->stream, qkv16, dout16, g, lse, D, B, T, H, KV, hd, (int)C);
    attn_tc_dkv(a->stream, qkv16, dout16, g + (size_t)H * hd, g + (size_t)(H + KV) * hd, lse, D, B, T, H, KV, hd,
                (int)C);
    round_rows_bf16(a->stream, (__nv_bfloat16 *)dqkv16, C, g, N, C, C);
    cudaFree(D); /* waits for the stream */
    cudaFree(g);
    return 0;
}

extern "C" int attn_cudnn_check_offline(const char *devprop_json, int bwd, int B, int T, int H, int KV, int hd,
                                        int *viable, char *err, int errlen)
{
    (void)devprop_json, (void)bwd, (void)B, (void)T, (void)H, (void)KV, (void)hd;
    *viable = 0;
    emu_refuse(err, errlen);
    return 77;
}
