/* attention_cudnn: causal GQA attention by cuDNN's fused flash attention (attention_cudnn.h).
 *
 * The graphs are those cuDNN's engines recognise as scaled dot-product attention, built
 * with its backend API (descriptors set attribute by attribute), all in fp32 but the
 * inputs, the products' bf16 operands and the outputs:
 *
 * forward    S = Q K^T (B,H,T,T) fp32; S *= scale; causal: S = row >= col ? S : -inf
 *            (row, col from GEN_INDEX on axes 2, 3); M = rowmax S; E = exp(S - M);
 *            Z = rowsum E; stats = M + log Z (the lse); P = E / Z in bf16; O = P V
 * backward   Dsum = rowsum(dO o O) * 1 (kept: the engines take it as a stored tensor);
 *            S = Q K^T * scale - stats, masked as above; E = exp S (the probabilities);
 *            dV = E^T dO; dP = dO V^T; dS = (dP - Dsum) o E * scale;
 *            dK = dS^T Q; dQacc = dS K (fp32, stored); dQ = dQacc
 *            with GQA (H > KV) dV and dK are (B,H,T,hd) products summed over each
 *            group's heads by a reduction into (B,KV,T,hd).
 * K and V enter the products as (B,KV,hd,T) views (dimensions 2 and 3 swapped, strides
 * with them), and E^T, dS^T as reshaped (B,H,T_k,T_q) views; no copy is made of any.
 *
 * The descriptors are made through cudnn_graph.h (cuDNN loaded at run time). */
#include "attention_cudnn.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef PC_HAVE_CUDNN
#include <math.h>

#include "cudnn_graph.h"

#define AC_OFFLINE_MIN_VERSION 90800 /* device properties from JSON */
#define AC_VIRTUAL_UID0 1000         /* the graphs' virtual tensors' uids, above the stored ones' */

static void ac_errf(char *err, int errlen, const char *fmt, ...)
{
    if (!err || errlen <= 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)errlen, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- graphs */

/* The stored tensors' uids (the variant pack's). */
enum {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV,
    UID_SCALE, UID_NEG_INF, UID_ONE, UID_DSUM, UID_DQ_ACC,
};

/* The shapes of one call: (B, heads, T, hd) token-major views of its buffers. */
typedef struct ac_dims {
    int64_t B, T, H, KV, hd;
} ac_dims;

/* rows of `width` values, token-major, `heads` heads of hd from the pointer's column
 * on: (B, heads, T, hd) */
static cg_shape ac_bshd(ac_dims d, int64_t heads, int64_t width)
{
    return (cg_shape){{d.B, heads, d.T, d.hd}, {d.T * width, d.hd, width, 1}};
}
/* the same with dimensions 2 and 3 swapped: (B, heads, hd, T) */
static cg_shape ac_bsdh(ac_dims d, int64_t heads, int64_t width)
{
    return (cg_shape){{d.B, heads, d.hd, d.T}, {d.T * width, d.hd, 1, width}};
}
static cg_shape ac_scores(ac_dims d) { return (cg_shape){{d.B, d.H, d.T, d.T}, {d.H * d.T * d.T, d.T * d.T, d.T, 1}}; }
static cg_shape ac_scores_t(ac_dims d)
{
    return (cg_shape){{d.B, d.H, d.T, d.T}, {d.H * d.T * d.T, d.T * d.T, 1, d.T}};
}
static cg_shape ac_rows(ac_dims d) { return (cg_shape){{d.B, d.H, d.T, 1}, {d.H * d.T, d.T, 1, 1}}; }
static cg_shape ac_heads_full(ac_dims d)
{
    return (cg_shape){{d.B, d.H, d.T, d.hd}, {d.H * d.T * d.hd, d.T * d.hd, d.hd, 1}};
}
static const cg_shape ac_scalar = {{1, 1, 1, 1}, {1, 1, 1, 1}};

#define F32 CUDNN_DATA_FLOAT
#define BF16 CUDNN_DATA_BFLOAT16

/* S (B,H,T,T) fp32 with the causal mask applied: keys after the row's query -inf. */
static cudnnBackendDescriptor_t ac_causal(cg_graph *g, ac_dims d, cudnnBackendDescriptor_t s,
                                          cudnnBackendDescriptor_t neg_inf)
{
    cudnnBackendDescriptor_t row = cg_tensor(g, CG_VIRTUAL, 0, CUDNN_DATA_INT32, ac_scores(d), "row index");
    cudnnBackendDescriptor_t col = cg_tensor(g, CG_VIRTUAL, 0, CUDNN_DATA_INT32, ac_scores(d), "column index");
    cudnnBackendDescriptor_t keep = cg_tensor(g, CG_VIRTUAL, 0, CUDNN_DATA_BOOLEAN, ac_scores(d), "causal mask");
    cudnnBackendDescriptor_t out = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "masked scores");
    cg_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, F32, 2, s, NULL, NULL, row, "row index");
    cg_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, F32, 3, s, NULL, NULL, col, "column index");
    cg_pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, -1, row, col, NULL, keep, "row >= column");
    cg_pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, F32, -1, s, neg_inf, keep, out, "causal select");
    return out;
}

/* Q K^T * scale (B,H,T,T) fp32 */
static cudnnBackendDescriptor_t ac_scaled_scores(cg_graph *g, ac_dims d, cudnnBackendDescriptor_t q,
                                                 cudnnBackendDescriptor_t kt, cudnnBackendDescriptor_t scale)
{
    cudnnBackendDescriptor_t s = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "S");
    cg_matmul(g, q, kt, s, "S = Q K^T");
    cudnnBackendDescriptor_t ss = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "S scaled");
    cg_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, s, scale, NULL, ss, "S * scale");
    return ss;
}

static void ac_build_fwd(cg_graph *g, ac_dims d)
{
    const int64_t wq = d.H * d.hd, wkv = d.KV * d.hd;
    cudnnBackendDescriptor_t q = cg_tensor(g, CG_STORED, UID_Q, BF16, ac_bshd(d, d.H, wq), "Q");
    cudnnBackendDescriptor_t kt = cg_tensor(g, CG_STORED, UID_K, BF16, ac_bsdh(d, d.KV, wkv), "K^T");
    cudnnBackendDescriptor_t v = cg_tensor(g, CG_STORED, UID_V, BF16, ac_bshd(d, d.KV, wkv), "V");
    cudnnBackendDescriptor_t o = cg_tensor(g, CG_STORED, UID_O, BF16, ac_bshd(d, d.H, wq), "O");
    cudnnBackendDescriptor_t stats = cg_tensor(g, CG_STORED, UID_STATS, F32, ac_rows(d), "stats (lse)");
    cudnnBackendDescriptor_t scale = cg_tensor(g, CG_BY_VALUE, UID_SCALE, F32, ac_scalar, "scale");
    cudnnBackendDescriptor_t neg_inf = cg_tensor(g, CG_BY_VALUE, UID_NEG_INF, F32, ac_scalar, "-inf");

    cudnnBackendDescriptor_t sm = ac_causal(g, d, ac_scaled_scores(g, d, q, kt, scale), neg_inf);
    cudnnBackendDescriptor_t m = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_rows(d), "row max");
    cg_reduce(g, CUDNN_REDUCE_TENSOR_MAX, sm, m, "row max");
    cudnnBackendDescriptor_t sub = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "S - max");
    cg_pointwise(g, CUDNN_POINTWISE_SUB, F32, -1, sm, m, NULL, sub, "S - max");
    cudnnBackendDescriptor_t e = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "exp");
    cg_pointwise(g, CUDNN_POINTWISE_EXP, F32, -1, sub, NULL, NULL, e, "exp");
    cudnnBackendDescriptor_t z = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_rows(d), "row sum");
    cg_reduce(g, CUDNN_REDUCE_TENSOR_ADD, e, z, "row sum");
    cudnnBackendDescriptor_t logz = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_rows(d), "log row sum");
    cg_pointwise(g, CUDNN_POINTWISE_LOG, F32, -1, z, NULL, NULL, logz, "log row sum");
    cg_pointwise(g, CUDNN_POINTWISE_ADD, F32, -1, m, logz, NULL, stats, "stats = max + log sum");
    cudnnBackendDescriptor_t p = cg_tensor(g, CG_VIRTUAL, 0, BF16, ac_scores(d), "P");
    cg_pointwise(g, CUDNN_POINTWISE_DIV, F32, -1, e, z, NULL, p, "P = exp / sum");
    cg_matmul(g, p, v, o, "O = P V");
}

/* (B,H,T,hd) = a b, summed over each group of H / KV heads into out (B,KV,T,hd) where
 * H > KV (a bf16 intermediate, as cuDNN's own graphs have it) */
static void ac_matmul_grouped(cg_graph *g, ac_dims d, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                              cudnnBackendDescriptor_t out, const char *what)
{
    if (d.H == d.KV) {
        cg_matmul(g, a, b, out, what);
        return;
    }
    cudnnBackendDescriptor_t full = cg_tensor(g, CG_VIRTUAL, 0, BF16, ac_heads_full(d), what);
    cg_matmul(g, a, b, full, what);
    cg_reduce(g, CUDNN_REDUCE_TENSOR_ADD, full, out, what);
}

static void ac_build_bwd(cg_graph *g, ac_dims d)
{
    const int64_t wq = d.H * d.hd, wkv = d.KV * d.hd, wg = wq + 2 * wkv;
    cudnnBackendDescriptor_t q = cg_tensor(g, CG_STORED, UID_Q, BF16, ac_bshd(d, d.H, wq), "Q");
    cudnnBackendDescriptor_t kt = cg_tensor(g, CG_STORED, UID_K, BF16, ac_bsdh(d, d.KV, wkv), "K^T");
    cudnnBackendDescriptor_t vt = cg_tensor(g, CG_STORED, UID_V, BF16, ac_bsdh(d, d.KV, wkv), "V^T");
    cudnnBackendDescriptor_t o = cg_tensor(g, CG_STORED, UID_O, BF16, ac_bshd(d, d.H, wq), "O");
    cudnnBackendDescriptor_t dO = cg_tensor(g, CG_STORED, UID_DO, BF16, ac_bshd(d, d.H, wq), "dO");
    cudnnBackendDescriptor_t stats = cg_tensor(g, CG_STORED, UID_STATS, F32, ac_rows(d), "stats (lse)");
    cudnnBackendDescriptor_t dq = cg_tensor(g, CG_STORED, UID_DQ, BF16, ac_bshd(d, d.H, wg), "dQ");
    cudnnBackendDescriptor_t dk = cg_tensor(g, CG_STORED, UID_DK, BF16, ac_bshd(d, d.KV, wg), "dK");
    cudnnBackendDescriptor_t dv = cg_tensor(g, CG_STORED, UID_DV, BF16, ac_bshd(d, d.KV, wg), "dV");
    cudnnBackendDescriptor_t scale = cg_tensor(g, CG_BY_VALUE, UID_SCALE, F32, ac_scalar, "scale");
    cudnnBackendDescriptor_t neg_inf = cg_tensor(g, CG_BY_VALUE, UID_NEG_INF, F32, ac_scalar, "-inf");
    cudnnBackendDescriptor_t one = cg_tensor(g, CG_BY_VALUE, UID_ONE, F32, ac_scalar, "1");
    cudnnBackendDescriptor_t dsum = cg_tensor(g, CG_STORED, UID_DSUM, F32, ac_rows(d), "rowsum(dO o O)");
    cudnnBackendDescriptor_t dq_acc = cg_tensor(g, CG_STORED, UID_DQ_ACC, F32, ac_heads_full(d), "dQ accumulator");

    /* Dsum = rowsum(dO o O) */
    const cg_shape prod = {{d.B, d.H, d.T, d.hd}, {d.H * d.T * d.hd, d.T * d.hd, d.H * d.hd, 1}};
    cudnnBackendDescriptor_t doo = cg_tensor(g, CG_VIRTUAL, 0, F32, prod, "dO o O");
    cg_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, dO, o, NULL, doo, "dO o O");
    cudnnBackendDescriptor_t dsum0 = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_rows(d), "rowsum");
    cg_reduce(g, CUDNN_REDUCE_TENSOR_ADD, doo, dsum0, "rowsum(dO o O)");
    cg_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, dsum0, one, NULL, dsum, "rowsum * 1");

    /* E = exp(masked(Q K^T scale - stats)) */
    cudnnBackendDescriptor_t ss = ac_scaled_scores(g, d, q, kt, scale);
    cudnnBackendDescriptor_t sl = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "S - lse");
    cg_pointwise(g, CUDNN_POINTWISE_SUB, F32, -1, ss, stats, NULL, sl, "S - lse");
    cudnnBackendDescriptor_t sm = ac_causal(g, d, sl, neg_inf);
    cudnnBackendDescriptor_t e = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "P");
    cg_pointwise(g, CUDNN_POINTWISE_EXP, F32, -1, sm, NULL, NULL, e, "P = exp");

    /* dV = P^T dO */
    cudnnBackendDescriptor_t pt = cg_tensor(g, CG_VIRTUAL, 0, BF16, ac_scores_t(d), "P^T");
    cg_reshape(g, e, pt, "P^T");
    ac_matmul_grouped(g, d, pt, dO, dv, "dV = P^T dO");

    /* dS = (dO V^T - Dsum) o P * scale */
    cudnnBackendDescriptor_t dp = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "dP");
    cg_matmul(g, dO, vt, dp, "dP = dO V^T");
    cudnnBackendDescriptor_t dpd = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "dP - Dsum");
    cg_pointwise(g, CUDNN_POINTWISE_SUB, F32, -1, dp, dsum, NULL, dpd, "dP - Dsum");
    cudnnBackendDescriptor_t ds0 = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "dS unscaled");
    cg_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, dpd, e, NULL, ds0, "(dP - Dsum) o P");
    cudnnBackendDescriptor_t ds = cg_tensor(g, CG_VIRTUAL, 0, F32, ac_scores(d), "dS");
    cg_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, ds0, scale, NULL, ds, "dS * scale");

    /* dK = dS^T Q */
    cudnnBackendDescriptor_t dst = cg_tensor(g, CG_VIRTUAL, 0, BF16, ac_scores_t(d), "dS^T");
    cg_reshape(g, ds, dst, "dS^T");
    ac_matmul_grouped(g, d, dst, q, dk, "dK = dS^T Q");

    /* dQ = dS K, through the fp32 accumulator */
    const cg_shape kv = {{d.B, d.KV, d.T, d.hd}, {d.T * wkv, d.hd, wkv, 1}};
    cudnnBackendDescriptor_t k = cg_tensor(g, CG_VIRTUAL, 0, F32, kv, "K");
    cg_reshape(g, kt, k, "K");
    cg_matmul(g, ds, k, dq_acc, "dQ = dS K");
    cg_pointwise(g, CUDNN_POINTWISE_IDENTITY, F32, -1, dq_acc, NULL, NULL, dq, "dQ from its accumulator");
}

/* The graph of (bwd, d) in g. */
static void ac_build(cg_graph *g, int bwd, ac_dims d)
{
    cg_init(g, AC_VIRTUAL_UID0);
    if (bwd)
        ac_build_bwd(g, d);
    else
        ac_build_fwd(g, d);
}

#define AC_MAX_CONFIGS 16

int attn_cudnn_check_offline(const char *devprop_json, int bwd, int B, int T, int H, int KV, int hd, int *viable,
                             char *err, int errlen)
{
    *viable = 0;
    const char *why = cg_load();
    if (why) {
        ac_errf(err, errlen, "%s", why);
        return 77;
    }
    if (cg_version() < AC_OFFLINE_MIN_VERSION) {
        ac_errf(err, errlen, "cuDNN %zu checks graphs without a GPU from 9.8 on", cg_version());
        return 77;
    }
    cg_graph *g = malloc(sizeof *g);
    if (!g) {
        ac_errf(err, errlen, "out of host memory");
        return -1;
    }
    ac_build(g, bwd, (ac_dims){B, T, H, KV, hd});
    cudnnBackendDescriptor_t cfg[AC_MAX_CONFIGS];
    cudnnBackendDescriptor_t dp = cg_devprop(g, devprop_json);
    int rc = g->failed ? -1 : cg_configs(g, NULL, dp, cfg, AC_MAX_CONFIGS, viable);
    if (rc) ac_errf(err, errlen, "%s", g->why);
    cg_free(g);
    free(g);
    return rc;
}

/* ---------------------------------------------------------------- on a GPU */

#define AC_PLANS 32

typedef struct ac_entry {
    int bwd;
    ac_dims d;
    cg_graph *g; /* its descriptors, alive as long as the plan */
    cudnnBackendDescriptor_t plan;
    int64_t workspace;
} ac_entry;

struct attn_cudnn {
    cudnnHandle_t handle;
    cudaStream_t stream;
    ac_entry plans[AC_PLANS];
    int nplans;
    void *scratch; /* workspace, then the backward's Dsum and dQ accumulator */
    size_t scratch_n;
    char desc[64];
};

attn_cudnn *attn_cudnn_create(void *stream, char *err, int errlen)
{
    const char *why = cg_load();
    if (why) {
        ac_errf(err, errlen, "%s", why);
        return NULL;
    }
    attn_cudnn *a = calloc(1, sizeof *a);
    if (!a) {
        ac_errf(err, errlen, "out of host memory");
        return NULL;
    }
    char msg[512];
    a->handle = cg_handle_create(stream, msg, sizeof msg);
    if (!a->handle) {
        ac_errf(err, errlen, "%s", msg);
        free(a);
        return NULL;
    }
    a->stream = (cudaStream_t)stream;
    const size_t v = cg_version();
    snprintf(a->desc, sizeof a->desc, "cuDNN %zu.%zu.%zu", v / 10000, v / 100 % 100, v % 100);
    return a;
}

static void ac_entry_free(ac_entry *e)
{
    cg_plan_destroy(e->plan);
    cg_free(e->g);
    free(e->g);
}

void attn_cudnn_free(attn_cudnn *a)
{
    if (!a) return;
    cudaStreamSynchronize(a->stream); /* nothing queued may still use the plans or scratch */
    for (int i = 0; i < a->nplans; i++) ac_entry_free(&a->plans[i]);
    if (a->scratch) cudaFree(a->scratch);
    cg_handle_destroy(a->handle);
    free(a);
}

const char *attn_cudnn_describe(const attn_cudnn *a) { return a->desc; }
size_t attn_cudnn_scratch_bytes(const attn_cudnn *a) { return a->scratch_n; }

/* The plan of (bwd, d), built on its first call; NULL with err. */
static ac_entry *ac_get(attn_cudnn *a, int bwd, ac_dims d, char *err, int errlen)
{
    for (int i = 0; i < a->nplans; i++) {
        ac_entry *e = &a->plans[i];
        if (e->bwd == bwd && !memcmp(&e->d, &d, sizeof d)) return e;
    }
    if (a->nplans == AC_PLANS) { /* drop the oldest */
        ac_entry_free(&a->plans[0]);
        memmove(a->plans, a->plans + 1, sizeof a->plans[0] * (AC_PLANS - 1));
        a->nplans--;
    }
    ac_entry *e = &a->plans[a->nplans];
    memset(e, 0, sizeof *e);
    e->bwd = bwd;
    e->d = d;
    e->g = malloc(sizeof *e->g);
    if (!e->g) {
        ac_errf(err, errlen, "out of host memory");
        return NULL;
    }
    ac_build(e->g, bwd, d);
    if (e->g->failed || cg_plan(e->g, a->handle, &e->plan, &e->workspace) < 0) {
        ac_errf(err, errlen, "cuDNN attention %s (B %lld, T %lld, heads %lld/%lld x %lld): %s",
                bwd ? "backward" : "forward", (long long)d.B, (long long)d.T, (long long)d.H, (long long)d.KV,
                (long long)d.hd, e->g->why);
        cg_free(e->g);
        free(e->g);
        return NULL;
    }
    a->nplans++;
    return e;
}

static size_t ac_align(size_t n) { return (n + 255) & ~(size_t)255; }

/* scratch of at least n bytes; 0, or -1 with err */
static int ac_scratch(attn_cudnn *a, size_t n, char *err, int errlen)
{
    if (n <= a->scratch_n) return 0;
    if (a->scratch) {
        cudaStreamSynchronize(a->stream);
        cudaFree(a->scratch);
        a->scratch = NULL;
        a->scratch_n = 0;
    }
    cudaError_t ce = cudaMalloc(&a->scratch, n);
    if (ce != cudaSuccess) {
        a->scratch = NULL;
        ac_errf(err, errlen, "cuDNN attention: cannot allocate %zu bytes of device scratch: %s", n,
                cudaGetErrorString(ce));
        return -1;
    }
    a->scratch_n = n;
    return 0;
}

/* runs e with the pointers of uids[i] = ptrs[i] and the scratch's workspace */
static int ac_execute(attn_cudnn *a, ac_entry *e, int n, const int64_t *uids, void *const *ptrs, char *err,
                      int errlen)
{
    char why[512];
    if (cg_execute(a->handle, e->plan, n, uids, ptrs, a->scratch, why, sizeof why) == 0) return 0;
    ac_errf(err, errlen, "cuDNN attention %s (B %lld, T %lld): %s", e->bwd ? "backward" : "forward",
            (long long)e->d.B, (long long)e->d.T, why);
    return -1;
}

int attn_cudnn_fwd(attn_cudnn *a, const void *qkv16, void *out16, float *lse, int B, int T, int H, int KV, int hd,
                   char *err, int errlen)
{
    const ac_dims d = {B, T, H, KV, hd};
    ac_entry *e = ac_get(a, 0, d, err, errlen);
    if (!e || ac_scratch(a, ac_align((size_t)e->workspace), err, errlen)) return -1;
    const size_t N = (size_t)B * T;
    const uint16_t *q = qkv16, *k = q + N * H * hd, *v = k + N * KV * hd;
    float scale = 1.0f / sqrtf((float)hd), neg_inf = -INFINITY;
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEG_INF};
    void *const ptrs[] = {(void *)q, (void *)k, (void *)v, out16, lse, &scale, &neg_inf};
    return ac_execute(a, e, 7, uids, ptrs, err, errlen);
}

int attn_cudnn_bwd(attn_cudnn *a, const void *qkv16, const void *out16, const void *dout16, const float *lse,
                   void *dqkv16, int B, int T, int H, int KV, int hd, char *err, int errlen)
{
    const ac_dims d = {B, T, H, KV, hd};
    ac_entry *e = ac_get(a, 1, d, err, errlen);
    if (!e) return -1;
    const size_t rows = (size_t)B * H * T, ws = ac_align((size_t)e->workspace), nsum = ac_align(rows * 4),
                 nacc = rows * (size_t)hd * 4;
    if (ac_scratch(a, ws + nsum + nacc, err, errlen)) return -1;
    char *dsum = (char *)a->scratch + ws, *acc = dsum + nsum;
    if (cg_version() < 90600 && /* since 9.6 cuDNN clears it itself */ cudaMemsetAsync(acc, 0, nacc, a->stream) != cudaSuccess) {
        ac_errf(err, errlen, "cuDNN attention backward: cannot clear its dQ accumulator");
        return -1;
    }
    const size_t N = (size_t)B * T;
    const uint16_t *q = qkv16, *k = q + N * H * hd, *v = k + N * KV * hd;
    uint16_t *dq = dqkv16, *dk = dq + (size_t)H * hd, *dv = dk + (size_t)KV * hd;
    float scale = 1.0f / sqrtf((float)hd), neg_inf = -INFINITY, one = 1.0f;
    const int64_t uids[] = {UID_Q,  UID_K,  UID_V,  UID_O,     UID_STATS,   UID_DO,  UID_DQ,
                            UID_DK, UID_DV, UID_SCALE, UID_NEG_INF, UID_ONE, UID_DSUM, UID_DQ_ACC};
    void *const ptrs[] = {(void *)q, (void *)k, (void *)v, (void *)out16, (void *)lse, (void *)dout16, dq,
                          dk,        dv,        &scale,    &neg_inf,      &one,        dsum,           acc};
    return ac_execute(a, e, 14, uids, ptrs, err, errlen);
}

#else /* built without cuDNN's headers */

static const char ac_none[] = "this build has no cuDNN (attention_cudnn.c was built without its headers)";

attn_cudnn *attn_cudnn_create(void *stream, char *err, int errlen)
{
    (void)stream;
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", ac_none);
    return NULL;
}
void attn_cudnn_free(attn_cudnn *a) { (void)a; }
const char *attn_cudnn_describe(const attn_cudnn *a)
{
    (void)a;
    return "no cuDNN";
}
size_t attn_cudnn_scratch_bytes(const attn_cudnn *a)
{
    (void)a;
    return 0;
}
int attn_cudnn_fwd(attn_cudnn *a, const void *qkv16, void *out16, float *lse, int B, int T, int H, int KV, int hd,
                   char *err, int errlen)
{
    (void)a, (void)qkv16, (void)out16, (void)lse, (void)B, (void)T, (void)H, (void)KV, (void)hd;
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", ac_none);
    return -1;
}
int attn_cudnn_bwd(attn_cudnn *a, const void *qkv16, const void *out16, const void *dout16, const float *lse,
                   void *dqkv16, int B, int T, int H, int KV, int hd, char *err, int errlen)
{
    (void)a, (void)qkv16, (void)out16, (void)dout16, (void)lse, (void)dqkv16, (void)B, (void)T, (void)H, (void)KV,
        (void)hd;
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", ac_none);
    return -1;
}
int attn_cudnn_check_offline(const char *devprop_json, int bwd, int B, int T, int H, int KV, int hd, int *viable,
                             char *err, int errlen)
{
    (void)devprop_json, (void)bwd, (void)B, (void)T, (void)H, (void)KV, (void)hd;
    *viable = 0;
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", ac_none);
    return 77;
}

#endif
