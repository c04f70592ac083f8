/* test_attention_emu: the tensor-core attention kernels (cuda/attention_tc_kernels.cuh),
 * run on the host through the SIMT emulator (attention_emu.h), against the CPU backend's
 * fp32 attention on random inputs. Runs on every machine: it checks the kernels' index
 * math, causal masking at tile edges (T = 1, 17, 64, 65, 130), GQA head mapping, online
 * softmax, lse and the backward's P and dS, not the GPU's arithmetic.
 *
 * The kernels round q, k, v, dO and the probabilities to bf16 and accumulate in fp32, so
 * each result must be within 1e-2 of the fp32 reference (max |diff| / max |ref|, as
 * test_cuda_ops) and must differ from it (the rounding happened). The fused q|k|v
 * gradient buffer starts random: every element of it must be written. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_emu.h"
#include "backend.h"
#include "testutil.h"
#include "util.h"

#define TOL 1e-2

static int failures, checks;

static void check(const char *what, const float *ref, const float *got, size_t n)
{
    double err = test_rel_max_err(ref, got, n);
    int ok = err <= TOL && err > 0.0;
    checks++;
    failures += !ok;
    printf("%-4s %-60s err %.3e (tol %.0e, > 0)\n", ok ? "ok" : "FAIL", what, err, TOL);
}

static float *randn(pc_rng *r, size_t n)
{
    float *x = pc_alloc_f32(n);
    for (size_t i = 0; i < n; i++) x[i] = pc_rng_normal(r);
    return x;
}

static void run_case(backend *cpu, pc_rng *r, int B, int T, int H, int KV, int hd)
{
    const int C = (H + 2 * KV) * hd, qd = H * hd; /* fused q|k|v rows */
    const size_t nq = (size_t)B * T * C, no = (size_t)B * T * qd, nl = (size_t)B * H * T;
    float *qkv = randn(r, nq), *dout = randn(r, no), *dqkv0 = randn(r, nq);
    float *out_c = pc_alloc_f32(no), *lse_c = pc_alloc_f32(nl), *dqkv_c = pc_alloc_f32(nq);
    float *out_e = pc_alloc_f32(no), *lse_e = pc_alloc_f32(nl), *dqkv_e = pc_alloc_f32(nq);
    memcpy(dqkv_c, dqkv0, nq * sizeof(float));
    memcpy(dqkv_e, dqkv0, nq * sizeof(float));
    const float *q = qkv, *k = qkv + qd, *v = qkv + qd + KV * hd;

    cpu->ops->attention_fwd(cpu, out_c, lse_c, q, k, v, B, T, H, KV, hd, C);
    cpu->ops->attention_bwd(cpu, dqkv_c, dqkv_c + qd, dqkv_c + qd + KV * hd, dout, out_c, lse_c, q, k, v, B, T, H, KV,
                            hd, C);
    atc_emu_fwd(out_e, lse_e, q, k, v, B, T, H, KV, hd, C);
    atc_emu_bwd(dqkv_e, dqkv_e + qd, dqkv_e + qd + KV * hd, dout, out_e, lse_e, q, k, v, B, T, H, KV, hd, C);

    char what[128];
    snprintf(what, sizeof what, "fwd out B=%d T=%d H=%d KV=%d hd=%d", B, T, H, KV, hd);
    check(what, out_c, out_e, no);
    snprintf(what, sizeof what, "fwd lse B=%d T=%d H=%d KV=%d hd=%d", B, T, H, KV, hd);
    check(what, lse_c, lse_e, nl);
    snprintf(what, sizeof what, "bwd dq|dk|dv B=%d T=%d H=%d KV=%d hd=%d", B, T, H, KV, hd);
    check(what, dqkv_c, dqkv_e, nq);

    free(qkv), free(dout), free(dqkv0);
    free(out_c), free(lse_c), free(dqkv_c);
    free(out_e), free(lse_e), free(dqkv_e);
}

int main(void)
{
    backend *cpu = backend_cpu_create(1);
    pc_rng r;
    pc_rng_seed(&r, 11);
    printf("shared memory per block at head_dim 128: %zu bytes\n", atc_emu_smem(128));
    run_case(cpu, &r, 1, 1, 2, 1, 16);    /* one token */
    run_case(cpu, &r, 2, 17, 4, 2, 64);   /* GQA, a partial tile */
    run_case(cpu, &r, 1, 64, 2, 2, 16);   /* exactly one tile */
    run_case(cpu, &r, 1, 65, 4, 1, 32);   /* multi-query, one row past the tile */
    run_case(cpu, &r, 1, 130, 2, 1, 128); /* three tiles, the largest head */
    run_case(cpu, &r, 1, 70, 3, 3, 80);   /* multi-head, head_dim 80 */
    backend_destroy(cpu);
    printf("%d of %d checks failed\n", failures, checks);
    return failures ? 1 : 0;
}
