/* attn_auto: backend.attention auto's choice between projcompd's bf16 attention kernels
 * and cuDNN's (attn_auto.h). The probe runs the ops the model runs with bf16 products
 * (attention_fwd_16 with a bf16 output, attention_bwd_rope_16 from a bf16 dO) on random
 * inputs of one micro-batch's shape, each route once to warm up (cuDNN builds its plans,
 * the kernels tune their variants) and then ATTN_PROBE_REPS times. */
#include "attn_auto.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"

#define ATTN_PROBE_REPS 5

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

/* The probe's device buffers, N = B T tokens, C = (H + 2 KV) hd. */
typedef struct probe_bufs {
    uint16_t *qkv16;  /* (N, C) bf16: q | k | v, the attention's inputs */
    uint16_t *dout16; /* (N, H hd) bf16: the output's gradient */
    uint16_t *out16;  /* (N, H hd) bf16 */
    float *lse;       /* (B, H, T) */
    uint16_t *dqkv16; /* (N, C) bf16: dq | dk | dv, rotated back */
    float *dqkv;      /* (N, C) fp32 scratch of the kernels' route */
    float *cos_t, *sin_t; /* (T, hd/2) */
    int B, T, H, KV, hd;
} probe_bufs;

/* What a route computed, on the host. */
typedef struct probe_out {
    uint16_t *out16, *dqkv16;
    float *lse;
} probe_out;

static size_t n_tok(const probe_bufs *b) { return (size_t)b->B * b->T; }
static size_t n_qkv(const probe_bufs *b) { return n_tok(b) * (size_t)(b->H + 2 * b->KV) * b->hd; }
static size_t n_q(const probe_bufs *b) { return n_tok(b) * (size_t)b->H * b->hd; }

static uint16_t *upload_random_bf16(backend *be, size_t n, pc_rng *rng) {
    uint16_t *h = pc_malloc(n * sizeof *h), *d = be->ops->alloc_bf16(be, n);
    for (size_t i = 0; i < n; i++) h[i] = pc_f32_to_bf16((float)(2.0 * pc_rng_uniform(rng) - 1.0));
    be->ops->upload_bf16(be, d, h, n);
    free(h);
    return d;
}

static void probe_alloc(backend *be, probe_bufs *b, uint64_t seed) {
    pc_rng rng;
    pc_rng_seed(&rng, seed);
    const size_t half = (size_t)b->T * (b->hd / 2);
    b->qkv16 = upload_random_bf16(be, n_qkv(b), &rng);
    b->dout16 = upload_random_bf16(be, n_q(b), &rng);
    b->out16 = be->ops->alloc_bf16(be, n_q(b));
    b->lse = be->ops->alloc(be, n_tok(b) * (size_t)b->H);
    b->dqkv16 = be->ops->alloc_bf16(be, n_qkv(b));
    b->dqkv = be->ops->alloc(be, n_qkv(b));
    float *cs = pc_alloc_f32(2 * half); /* Llama's default rope at theta 10000 */
    rope_tables_host(cs, cs + half, b->T, b->hd, 10000.0, NULL, 0.0, 0.0, 0.0, 0);
    b->cos_t = be->ops->alloc(be, half);
    b->sin_t = be->ops->alloc(be, half);
    be->ops->upload(be, b->cos_t, cs, half);
    be->ops->upload(be, b->sin_t, cs + half, half);
    free(cs);
}

static void probe_free(backend *be, probe_bufs *b) {
    void *p[] = {b->qkv16, b->dout16, b->out16, b->lse, b->dqkv16, b->dqkv, b->cos_t, b->sin_t};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) be->ops->free(be, p[i]);
}

/* One forward and backward as the model runs them, waited for. */
static void probe_step(backend *be, const probe_bufs *b) {
    const int C = (b->H + 2 * b->KV) * b->hd;
    be->ops->attention_fwd_16(be, b->out16, 1, b->lse, b->qkv16, b->B, b->T, b->H, b->KV, b->hd);
    be->ops->attention_bwd_rope_16(be, b->dqkv16, b->dqkv, b->dout16, b->out16, 1, b->lse, b->qkv16, b->cos_t,
                                   b->sin_t, b->B, b->T, b->H, b->KV, b->hd, C);
    be->ops->sync(be);
}

/* The route now set on be: a warm-up step, then the best of ATTN_PROBE_REPS in ms; its
 * last step's results into o. */
static double probe_route(backend *be, const probe_bufs *b, probe_out *o) {
    probe_step(be, b);
    double best = INFINITY;
    for (int i = 0; i < ATTN_PROBE_REPS; i++) {
        double t0 = pc_now();
        probe_step(be, b);
        double ms = (pc_now() - t0) * 1e3;
        if (ms < best) best = ms;
    }
    o->out16 = pc_malloc(n_q(b) * sizeof *o->out16);
    o->dqkv16 = pc_malloc(n_qkv(b) * sizeof *o->dqkv16);
    o->lse = pc_malloc(n_tok(b) * (size_t)b->H * sizeof *o->lse);
    be->ops->download_raw(be, o->out16, b->out16, n_q(b) * sizeof *o->out16);
    be->ops->download_raw(be, o->dqkv16, b->dqkv16, n_qkv(b) * sizeof *o->dqkv16);
    be->ops->download(be, o->lse, b->lse, n_tok(b) * (size_t)b->H);
    return best;
}

static void probe_out_free(probe_out *o) {
    free(o->out16);
    free(o->dqkv16);
    free(o->lse);
}

/* max|x - ref| / max|ref| over n values, bf16 (x16, ref16) or fp32 */
static double rel_diff(const uint16_t *x16, const uint16_t *ref16, const float *x, const float *ref, size_t n) {
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = x16 ? pc_bf16_to_f32(x16[i]) : x[i], r = ref16 ? pc_bf16_to_f32(ref16[i]) : ref[i];
        if (!(fabs(a - r) <= d)) d = fabs(a - r); /* a NaN makes the difference NaN: no agreement */
        if (fabs(r) > m) m = fabs(r);
    }
    return m > 0.0 ? d / m : d;
}

static double outputs_diff(const probe_bufs *b, const probe_out *x, const probe_out *ref) {
    double d[3] = {rel_diff(x->out16, ref->out16, NULL, NULL, n_q(b)),
                   rel_diff(NULL, NULL, x->lse, ref->lse, n_tok(b) * (size_t)b->H),
                   rel_diff(x->dqkv16, ref->dqkv16, NULL, NULL, n_qkv(b))};
    double worst = 0.0;
    for (int i = 0; i < 3; i++)
        if (!(d[i] <= worst)) worst = d[i];
    return worst;
}

/* The probe on be (a CUDA backend with bf16 attention for head_dim hd) at (B, T, H, KV,
 * hd), random inputs from seed; a cuDNN call that fails (a shape its engines do not
 * take) is a reason in p->why, not the end of the process. It leaves cuDNN's attention on
 * where it ran (its plans built), else the kernels'. */
static void attn_probe_run(backend *be, int B, int T, int H, int KV, int hd, uint64_t seed, attn_probe *p) {
    memset(p, 0, sizeof *p);
    if (backend_cuda_use_cudnn(be, p->why, sizeof p->why) != 0) return; /* the backend is left as it was */
    backend_cuda_set_attention(be, 1); /* the kernels first, so that cuDNN's route, last, keeps its plans */
    probe_bufs b = {.B = B, .T = T, .H = H, .KV = KV, .hd = hd};
    probe_alloc(be, &b, seed);
    probe_out by_cudnn = {0}, by_kernels = {0};
    p->kernels_ms = probe_route(be, &b, &by_kernels);
    if (backend_cuda_use_cudnn(be, p->why, sizeof p->why) == 0) {
        backend_cuda_cudnn_trial(be, 1, p->why, sizeof p->why);
        p->cudnn_ms = probe_route(be, &b, &by_cudnn);
        p->cudnn = backend_cuda_cudnn_trial(be, 0, p->why, sizeof p->why) == 0;
        if (!p->cudnn) backend_cuda_set_attention(be, 1);
    }
    p->diff = p->cudnn ? outputs_diff(&b, &by_cudnn, &by_kernels) : NAN;
    probe_out_free(&by_cudnn);
    probe_out_free(&by_kernels);
    probe_free(be, &b);
}

/* The choice from the ranks' probes summed: ranks_ok the number whose cuDNN loaded and
 * agreed, of world; times summed over the ranks. 1: cuDNN. */
static int attn_auto_pick(int ranks_ok, int world, double kernels_ms, double cudnn_ms) {
    return ranks_ok == world && cudnn_ms < ATTN_AUTO_MARGIN * kernels_ms;
}

int attn_auto_choose(run_ctx *r, const llama_config *lc, pc_err *e) {
    const int B = r->cfg.train.micro_batch, T = r->cfg.data.seq_len;
    attn_probe p;
    attn_probe_run(r->be, B, T, lc->n_heads, lc->n_kv_heads, lc->head_dim, (uint64_t)r->cfg.run.seed, &p);
    const int agrees = p.cudnn && p.diff <= ATTN_AUTO_MAX_DIFF;
    if (p.cudnn && !agrees)
        LOGW(&r->log, "attention auto: cuDNN's results differ from projcompd's kernels' by %.3g (more than %.0e) at "
                      "B %d T %d heads %d/%d of %d",
             p.diff, ATTN_AUTO_MAX_DIFF, B, T, lc->n_heads, lc->n_kv_heads, lc->head_dim);
    else if (!p.cudnn)
        LOGI(&r->log, "attention auto: cuDNN's attention cannot run here: %s", p.why);
    double sum[3] = {agrees, p.kernels_ms, p.cudnn_ms}; /* over the ranks: how many agree, the times */
    if (r->comm->ops->all_reduce(r->comm, sum, sum, 3, COMM_F64, COMM_SUM, e) != 0) return -1;
    const int ok = (int)sum[0];
    const double *ms = sum + 1;
    const int cudnn = attn_auto_pick(ok, r->world, ms[0], ms[1]);
    if (!cudnn) backend_cuda_set_attention(r->be, 1); /* the probe left cuDNN's on where it ran */
    char margin[64];
    snprintf(margin, sizeof margin, "; cuDNN is not %.0f%% faster)", (1.0 - ATTN_AUTO_MARGIN) * 100.0);
    if (ok == r->world)
        LOGI(&r->log, "attention auto: a forward and backward at B %d T %d heads %d/%d of %d take %.3f ms by cuDNN, "
                      "%.3f ms by projcompd's kernels (mean of %d ranks; results within %.2g here): %s%s",
             B, T, lc->n_heads, lc->n_kv_heads, lc->head_dim, ms[1] / r->world, ms[0] / r->world, r->world, p.diff,
             cudnn ? "using cuDNN's attention" : "using projcompd's kernels (bit-for-bit repeatable", cudnn ? "" : margin);
    else
        LOGI(&r->log, "attention auto: projcompd's kernels (cuDNN cannot run or disagrees on %d of %d ranks)",
             r->world - ok, r->world);
    return 0;
}
