/* attn_auto: backend.attention auto with bf16 products on CUDA picks, per run, between
 * projcompd's bf16 attention kernels and cuDNN's fused flash attention: each rank times
 * both on its GPU at the run's shape and compares their results; every rank then takes
 * cuDNN only if it loaded and agreed on every rank and is faster on average. */
#ifndef PC_ATTN_AUTO_H
#define PC_ATTN_AUTO_H

#include "backend.h"
#include "run.h"

/* One rank's probe: forward + backward of one micro-batch's attention, best of reps. */
typedef struct attn_probe {
    int cudnn;           /* cuDNN loaded and ran (else why says why not) */
    double kernels_ms;   /* projcompd's kernels */
    double cudnn_ms;     /* cuDNN's */
    double diff;         /* max over out, lse, dq|dk|dv of max|cuDNN - kernels| / max|kernels| */
    char why[512];
} attn_probe;

/* Largest diff at which cuDNN's attention counts as agreeing with the kernels' (both
 * bf16 inputs and probabilities with fp32 sums: a few bf16 ulps apart; a wrong layout or
 * mask is off by the values' own size). */
#define ATTN_AUTO_MAX_DIFF 2e-2
/* cuDNN is taken when its time is below this fraction of the kernels': where the two are
 * about as fast, the kernels' bit-for-bit repeatable runs win. */
#define ATTN_AUTO_MARGIN 0.95

/* The probe on be (a CUDA backend with bf16 attention for head_dim hd) at (B, T, H, KV,
 * hd), random inputs from seed; a cuDNN call that fails (a shape its engines do not
 * take) is a reason in p->why, not the end of the process. It leaves cuDNN's attention on
 * where it ran (its plans built), else the kernels'. */
void attn_probe_run(backend *be, int B, int T, int H, int KV, int hd, uint64_t seed, attn_probe *p);

/* The choice from the ranks' probes summed: ranks_ok the number whose cuDNN loaded and
 * agreed, of world; times summed over the ranks. 1: cuDNN. */
int attn_auto_pick(int ranks_ok, int world, double kernels_ms, double cudnn_ms);

/* backend.attention auto with bf16 attention on r->be (CUDA) for the run's model shape:
 * the probe on every rank, the choice shared, logged, and set on r->be. Collective. */
int attn_auto_choose(run_ctx *r, const llama_config *lc, pc_err *e);

#endif
