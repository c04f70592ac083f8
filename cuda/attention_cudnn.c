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
 * cuDNN's functions are taken from the library by dlsym, so nothing links it. */
#include "attention_cudnn.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef PC_HAVE_CUDNN
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <dlfcn.h>
#include <math.h>

/* ---------------------------------------------------------------- the library */

static struct {
    void *lib;
    size_t (*GetVersion)(void);
    const char *(*GetErrorString)(cudnnStatus_t);
    void (*GetLastErrorString)(char *, size_t);
    cudnnStatus_t (*Create)(cudnnHandle_t *);
    cudnnStatus_t (*Destroy)(cudnnHandle_t);
    cudnnStatus_t (*SetStream)(cudnnHandle_t, cudaStream_t);
    cudnnStatus_t (*CreateDesc)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t *);
    cudnnStatus_t (*DestroyDesc)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*SetAttr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                             int64_t, const void *);
    cudnnStatus_t (*GetAttr)(cudnnBackendDescriptor_t const, cudnnBackendAttributeName_t,
                             cudnnBackendAttributeType_t, int64_t, int64_t *, void *);
    cudnnStatus_t (*Finalize)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*Execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t);
    int state; /* 0 not tried, 1 loaded, -1 failed (why) */
    char why[256];
} L;

#define AC_MIN_VERSION 90000         /* the -inf mask and these graphs' engines on Hopper */
#define AC_OFFLINE_MIN_VERSION 90800 /* device properties from JSON */

static int ac_load(void)
{
    if (L.state) return L.state;
    const char *path = getenv("PC_CUDNN_LIB");
    L.lib = dlopen(path && *path ? path : "libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!L.lib) {
        snprintf(L.why, sizeof L.why, "cannot load cuDNN (%s): %s", path && *path ? path : "libcudnn.so.9",
                 dlerror());
        return L.state = -1;
    }
    struct {
        void **fn;
        const char *name;
    } syms[] = {
        {(void **)&L.GetVersion, "cudnnGetVersion"},
        {(void **)&L.GetErrorString, "cudnnGetErrorString"},
        {(void **)&L.GetLastErrorString, "cudnnGetLastErrorString"},
        {(void **)&L.Create, "cudnnCreate"},
        {(void **)&L.Destroy, "cudnnDestroy"},
        {(void **)&L.SetStream, "cudnnSetStream"},
        {(void **)&L.CreateDesc, "cudnnBackendCreateDescriptor"},
        {(void **)&L.DestroyDesc, "cudnnBackendDestroyDescriptor"},
        {(void **)&L.SetAttr, "cudnnBackendSetAttribute"},
        {(void **)&L.GetAttr, "cudnnBackendGetAttribute"},
        {(void **)&L.Finalize, "cudnnBackendFinalize"},
        {(void **)&L.Execute, "cudnnBackendExecute"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].fn = dlsym(L.lib, syms[i].name);
        if (!*syms[i].fn) {
            snprintf(L.why, sizeof L.why, "cuDNN library lacks %s (cuDNN 9 needed)", syms[i].name);
            return L.state = -1;
        }
    }
    size_t v = L.GetVersion();
    if (v < AC_MIN_VERSION) {
        snprintf(L.why, sizeof L.why, "cuDNN %zu.%zu found, 9.0 or later needed", v / 10000, v / 100 % 100);
        return L.state = -1;
    }
    return L.state = 1;
}

static void ac_errf(char *err, int errlen, const char *fmt, ...)
{
    if (!err || errlen <= 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)errlen, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- graphs */

#define AC_MAX_DESC 128
#define AC_MAX_OPS 48
#define AC_VIRTUAL_UID0 1000

/* A graph under construction: every descriptor made (destroyed together), the operations
 * in order, and the first failure (the step and cuDNN's message). */
typedef struct ac_graph {
    cudnnBackendDescriptor_t desc[AC_MAX_DESC];
    int n;
    cudnnBackendDescriptor_t ops[AC_MAX_OPS];
    int nops;
    int64_t next_uid;
    int failed;
    char why[512];
} ac_graph;

static void ac_fail(ac_graph *g, const char *what, cudnnStatus_t st)
{
    if (g->failed) return;
    char last[256] = "";
    L.GetLastErrorString(last, sizeof last);
    snprintf(g->why, sizeof g->why, "%s: %s%s%s", what, L.GetErrorString(st), *last ? ": " : "", last);
    g->failed = 1;
}

static cudnnBackendDescriptor_t ac_new(ac_graph *g, cudnnBackendDescriptorType_t type, const char *what)
{
    if (g->failed) return NULL;
    if (g->n == AC_MAX_DESC) {
        snprintf(g->why, sizeof g->why, "%s: more than %d descriptors", what, AC_MAX_DESC);
        g->failed = 1;
        return NULL;
    }
    cudnnBackendDescriptor_t d = NULL;
    cudnnStatus_t st = L.CreateDesc(type, &d);
    if (st != CUDNN_STATUS_SUCCESS) {
        ac_fail(g, what, st);
        return NULL;
    }
    return g->desc[g->n++] = d;
}

static void ac_set(ac_graph *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                   cudnnBackendAttributeType_t type, int64_t count, const void *value, const char *what)
{
    if (g->failed) return;
    cudnnStatus_t st = L.SetAttr(d, name, type, count, value);
    if (st != CUDNN_STATUS_SUCCESS) ac_fail(g, what, st);
}

static void ac_finalize(ac_graph *g, cudnnBackendDescriptor_t d, const char *what)
{
    if (g->failed) return;
    cudnnStatus_t st = L.Finalize(d);
    if (st != CUDNN_STATUS_SUCCESS) ac_fail(g, what, st);
}

static void ac_graph_free(ac_graph *g)
{
    for (int i = g->n - 1; i >= 0; i--) L.DestroyDesc(g->desc[i]);
    g->n = g->nops = 0;
}

/* A tensor's dimensions and strides, 4 of each. */
typedef struct ac_shape {
    int64_t d[4], s[4];
} ac_shape;

enum { AC_STORED = 0, AC_VIRTUAL = 1, AC_BY_VALUE = 2 };

/* A tensor: stored (uid given, a pointer in the variant pack), virtual (an intermediate
 * the engine never writes out; a fresh uid) or by value (a host scalar, uid given). */
static cudnnBackendDescriptor_t ac_tensor(ac_graph *g, int kind, int64_t uid, cudnnDataType_t type, ac_shape sh,
                                          const char *what)
{
    cudnnBackendDescriptor_t t = ac_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    if (kind == AC_VIRTUAL) uid = g->next_uid++;
    const int64_t align = 16;
    const bool virt = kind == AC_VIRTUAL, by_value = kind == AC_BY_VALUE;
    ac_set(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, what);
    ac_set(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, sh.d, what);
    ac_set(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, sh.s, what);
    ac_set(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, what);
    ac_set(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, what);
    ac_set(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, what);
    if (by_value) ac_set(g, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, what);
    ac_finalize(g, t, what);
    return t;
}

static void ac_op(ac_graph *g, cudnnBackendDescriptor_t op, const char *what)
{
    ac_finalize(g, op, what);
    if (g->failed) return;
    if (g->nops == AC_MAX_OPS) {
        snprintf(g->why, sizeof g->why, "%s: more than %d operations", what, AC_MAX_OPS);
        g->failed = 1;
        return;
    }
    g->ops[g->nops++] = op;
}

/* y = mode(x[, b[, t]]) elementwise in precision prec (axis: GEN_INDEX's, else -1);
 * BINARY_SELECT: y = t ? x : b. */
static void ac_pointwise(ac_graph *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis,
                         cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                         cudnnBackendDescriptor_t y, const char *what)
{
    cudnnBackendDescriptor_t pw = ac_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, what);
    ac_set(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, what);
    ac_set(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, what);
    if (axis >= 0) ac_set(g, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, what);
    ac_finalize(g, pw, what);
    cudnnBackendDescriptor_t op = ac_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, what);
    if (b) ac_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, what);
    if (t) ac_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, what);
    ac_op(g, op, what);
}

/* c = a b over the last two dimensions, batched over the first two (a head count of b
 * that divides a's is broadcast over a's heads: GQA), fp32 accumulation. */
static void ac_matmul(ac_graph *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
                      const char *what)
{
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t mm = ac_new(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, what);
    ac_set(g, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, what);
    ac_finalize(g, mm, what);
    cudnnBackendDescriptor_t op = ac_new(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm, what);
    ac_op(g, op, what);
}

/* y = x reduced (max or sum, fp32) over the dimensions where y has 1. */
static void ac_reduce(ac_graph *g, cudnnReduceTensorOp_t how, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y,
                      const char *what)
{
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t rd = ac_new(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, what);
    ac_set(g, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, what);
    ac_set(g, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &how, what);
    ac_finalize(g, rd, what);
    cudnnBackendDescriptor_t op = ac_new(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, what);
    ac_op(g, op, what);
}

/* y: x seen with other dimensions and strides (a transposed view). */
static void ac_reshape(ac_graph *g, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y, const char *what)
{
    cudnnBackendDescriptor_t op = ac_new(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, what);
    ac_set(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, what);
    ac_op(g, op, what);
}

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
static ac_shape ac_bshd(ac_dims d, int64_t heads, int64_t width)
{
    return (ac_shape){{d.B, heads, d.T, d.hd}, {d.T * width, d.hd, width, 1}};
}
/* the same with dimensions 2 and 3 swapped: (B, heads, hd, T) */
static ac_shape ac_bsdh(ac_dims d, int64_t heads, int64_t width)
{
    return (ac_shape){{d.B, heads, d.hd, d.T}, {d.T * width, d.hd, 1, width}};
}
static ac_shape ac_scores(ac_dims d) { return (ac_shape){{d.B, d.H, d.T, d.T}, {d.H * d.T * d.T, d.T * d.T, d.T, 1}}; }
static ac_shape ac_scores_t(ac_dims d)
{
    return (ac_shape){{d.B, d.H, d.T, d.T}, {d.H * d.T * d.T, d.T * d.T, 1, d.T}};
}
static ac_shape ac_rows(ac_dims d) { return (ac_shape){{d.B, d.H, d.T, 1}, {d.H * d.T, d.T, 1, 1}}; }
static ac_shape ac_heads_full(ac_dims d)
{
    return (ac_shape){{d.B, d.H, d.T, d.hd}, {d.H * d.T * d.hd, d.T * d.hd, d.hd, 1}};
}
static const ac_shape ac_scalar = {{1, 1, 1, 1}, {1, 1, 1, 1}};

#define F32 CUDNN_DATA_FLOAT
#define BF16 CUDNN_DATA_BFLOAT16

/* S (B,H,T,T) fp32 with the causal mask applied: keys after the row's query -inf. */
static cudnnBackendDescriptor_t ac_causal(ac_graph *g, ac_dims d, cudnnBackendDescriptor_t s,
                                          cudnnBackendDescriptor_t neg_inf)
{
    cudnnBackendDescriptor_t row = ac_tensor(g, AC_VIRTUAL, 0, CUDNN_DATA_INT32, ac_scores(d), "row index");
    cudnnBackendDescriptor_t col = ac_tensor(g, AC_VIRTUAL, 0, CUDNN_DATA_INT32, ac_scores(d), "column index");
    cudnnBackendDescriptor_t keep = ac_tensor(g, AC_VIRTUAL, 0, CUDNN_DATA_BOOLEAN, ac_scores(d), "causal mask");
    cudnnBackendDescriptor_t out = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "masked scores");
    ac_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, F32, 2, s, NULL, NULL, row, "row index");
    ac_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, F32, 3, s, NULL, NULL, col, "column index");
    ac_pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, -1, row, col, NULL, keep, "row >= column");
    ac_pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, F32, -1, s, neg_inf, keep, out, "causal select");
    return out;
}

static void ac_build_fwd(ac_graph *g, ac_dims d)
{
    const int64_t wq = d.H * d.hd, wkv = d.KV * d.hd;
    cudnnBackendDescriptor_t q = ac_tensor(g, AC_STORED, UID_Q, BF16, ac_bshd(d, d.H, wq), "Q");
    cudnnBackendDescriptor_t kt = ac_tensor(g, AC_STORED, UID_K, BF16, ac_bsdh(d, d.KV, wkv), "K^T");
    cudnnBackendDescriptor_t v = ac_tensor(g, AC_STORED, UID_V, BF16, ac_bshd(d, d.KV, wkv), "V");
    cudnnBackendDescriptor_t o = ac_tensor(g, AC_STORED, UID_O, BF16, ac_bshd(d, d.H, wq), "O");
    cudnnBackendDescriptor_t stats = ac_tensor(g, AC_STORED, UID_STATS, F32, ac_rows(d), "stats (lse)");
    cudnnBackendDescriptor_t scale = ac_tensor(g, AC_BY_VALUE, UID_SCALE, F32, ac_scalar, "scale");
    cudnnBackendDescriptor_t neg_inf = ac_tensor(g, AC_BY_VALUE, UID_NEG_INF, F32, ac_scalar, "-inf");

    cudnnBackendDescriptor_t s = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "S");
    ac_matmul(g, q, kt, s, "S = Q K^T");
    cudnnBackendDescriptor_t ss = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "S scaled");
    ac_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, s, scale, NULL, ss, "S * scale");
    cudnnBackendDescriptor_t sm = ac_causal(g, d, ss, neg_inf);
    cudnnBackendDescriptor_t m = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_rows(d), "row max");
    ac_reduce(g, CUDNN_REDUCE_TENSOR_MAX, sm, m, "row max");
    cudnnBackendDescriptor_t sub = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "S - max");
    ac_pointwise(g, CUDNN_POINTWISE_SUB, F32, -1, sm, m, NULL, sub, "S - max");
    cudnnBackendDescriptor_t e = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "exp");
    ac_pointwise(g, CUDNN_POINTWISE_EXP, F32, -1, sub, NULL, NULL, e, "exp");
    cudnnBackendDescriptor_t z = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_rows(d), "row sum");
    ac_reduce(g, CUDNN_REDUCE_TENSOR_ADD, e, z, "row sum");
    cudnnBackendDescriptor_t logz = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_rows(d), "log row sum");
    ac_pointwise(g, CUDNN_POINTWISE_LOG, F32, -1, z, NULL, NULL, logz, "log row sum");
    ac_pointwise(g, CUDNN_POINTWISE_ADD, F32, -1, m, logz, NULL, stats, "stats = max + log sum");
    cudnnBackendDescriptor_t p = ac_tensor(g, AC_VIRTUAL, 0, BF16, ac_scores(d), "P");
    ac_pointwise(g, CUDNN_POINTWISE_DIV, F32, -1, e, z, NULL, p, "P = exp / sum");
    ac_matmul(g, p, v, o, "O = P V");
}

/* (B,H,T,hd) = a b, summed over each group of H / KV heads into out (B,KV,T,hd) where
 * H > KV (a bf16 intermediate, as cuDNN's own graphs have it) */
static void ac_matmul_grouped(ac_graph *g, ac_dims d, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                              cudnnBackendDescriptor_t out, const char *what)
{
    if (d.H == d.KV) {
        ac_matmul(g, a, b, out, what);
        return;
    }
    cudnnBackendDescriptor_t full = ac_tensor(g, AC_VIRTUAL, 0, BF16, ac_heads_full(d), what);
    ac_matmul(g, a, b, full, what);
    ac_reduce(g, CUDNN_REDUCE_TENSOR_ADD, full, out, what);
}

static void ac_build_bwd(ac_graph *g, ac_dims d)
{
    const int64_t wq = d.H * d.hd, wkv = d.KV * d.hd, wg = wq + 2 * wkv;
    cudnnBackendDescriptor_t q = ac_tensor(g, AC_STORED, UID_Q, BF16, ac_bshd(d, d.H, wq), "Q");
    cudnnBackendDescriptor_t kt = ac_tensor(g, AC_STORED, UID_K, BF16, ac_bsdh(d, d.KV, wkv), "K^T");
    cudnnBackendDescriptor_t vt = ac_tensor(g, AC_STORED, UID_V, BF16, ac_bsdh(d, d.KV, wkv), "V^T");
    cudnnBackendDescriptor_t o = ac_tensor(g, AC_STORED, UID_O, BF16, ac_bshd(d, d.H, wq), "O");
    cudnnBackendDescriptor_t dO = ac_tensor(g, AC_STORED, UID_DO, BF16, ac_bshd(d, d.H, wq), "dO");
    cudnnBackendDescriptor_t stats = ac_tensor(g, AC_STORED, UID_STATS, F32, ac_rows(d), "stats (lse)");
    cudnnBackendDescriptor_t dq = ac_tensor(g, AC_STORED, UID_DQ, BF16, ac_bshd(d, d.H, wg), "dQ");
    cudnnBackendDescriptor_t dk = ac_tensor(g, AC_STORED, UID_DK, BF16, ac_bshd(d, d.KV, wg), "dK");
    cudnnBackendDescriptor_t dv = ac_tensor(g, AC_STORED, UID_DV, BF16, ac_bshd(d, d.KV, wg), "dV");
    cudnnBackendDescriptor_t scale = ac_tensor(g, AC_BY_VALUE, UID_SCALE, F32, ac_scalar, "scale");
    cudnnBackendDescriptor_t neg_inf = ac_tensor(g, AC_BY_VALUE, UID_NEG_INF, F32, ac_scalar, "-inf");
    cudnnBackendDescriptor_t one = ac_tensor(g, AC_BY_VALUE, UID_ONE, F32, ac_scalar, "1");
    cudnnBackendDescriptor_t dsum = ac_tensor(g, AC_STORED, UID_DSUM, F32, ac_rows(d), "rowsum(dO o O)");
    cudnnBackendDescriptor_t dq_acc = ac_tensor(g, AC_STORED, UID_DQ_ACC, F32, ac_heads_full(d), "dQ accumulator");

    /* Dsum = rowsum(dO o O) */
    const ac_shape prod = {{d.B, d.H, d.T, d.hd}, {d.H * d.T * d.hd, d.T * d.hd, d.H * d.hd, 1}};
    cudnnBackendDescriptor_t doo = ac_tensor(g, AC_VIRTUAL, 0, F32, prod, "dO o O");
    ac_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, dO, o, NULL, doo, "dO o O");
    cudnnBackendDescriptor_t dsum0 = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_rows(d), "rowsum");
    ac_reduce(g, CUDNN_REDUCE_TENSOR_ADD, doo, dsum0, "rowsum(dO o O)");
    ac_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, dsum0, one, NULL, dsum, "rowsum * 1");

    /* E = exp(masked(Q K^T scale - stats)) */
    cudnnBackendDescriptor_t s = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "S");
    ac_matmul(g, q, kt, s, "S = Q K^T");
    cudnnBackendDescriptor_t ss = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "S scaled");
    ac_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, s, scale, NULL, ss, "S * scale");
    cudnnBackendDescriptor_t sl = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "S - lse");
    ac_pointwise(g, CUDNN_POINTWISE_SUB, F32, -1, ss, stats, NULL, sl, "S - lse");
    cudnnBackendDescriptor_t sm = ac_causal(g, d, sl, neg_inf);
    cudnnBackendDescriptor_t e = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "P");
    ac_pointwise(g, CUDNN_POINTWISE_EXP, F32, -1, sm, NULL, NULL, e, "P = exp");

    /* dV = P^T dO */
    cudnnBackendDescriptor_t pt = ac_tensor(g, AC_VIRTUAL, 0, BF16, ac_scores_t(d), "P^T");
    ac_reshape(g, e, pt, "P^T");
    ac_matmul_grouped(g, d, pt, dO, dv, "dV = P^T dO");

    /* dS = (dO V^T - Dsum) o P * scale */
    cudnnBackendDescriptor_t dp = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "dP");
    ac_matmul(g, dO, vt, dp, "dP = dO V^T");
    cudnnBackendDescriptor_t dpd = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "dP - Dsum");
    ac_pointwise(g, CUDNN_POINTWISE_SUB, F32, -1, dp, dsum, NULL, dpd, "dP - Dsum");
    cudnnBackendDescriptor_t ds0 = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "dS unscaled");
    ac_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, dpd, e, NULL, ds0, "(dP - Dsum) o P");
    cudnnBackendDescriptor_t ds = ac_tensor(g, AC_VIRTUAL, 0, F32, ac_scores(d), "dS");
    ac_pointwise(g, CUDNN_POINTWISE_MUL, F32, -1, ds0, scale, NULL, ds, "dS * scale");

    /* dK = dS^T Q */
    cudnnBackendDescriptor_t dst = ac_tensor(g, AC_VIRTUAL, 0, BF16, ac_scores_t(d), "dS^T");
    ac_reshape(g, ds, dst, "dS^T");
    ac_matmul_grouped(g, d, dst, q, dk, "dK = dS^T Q");

    /* dQ = dS K, through the fp32 accumulator */
    const ac_shape kv = {{d.B, d.KV, d.T, d.hd}, {d.T * wkv, d.hd, wkv, 1}};
    cudnnBackendDescriptor_t k = ac_tensor(g, AC_VIRTUAL, 0, F32, kv, "K");
    ac_reshape(g, kt, k, "K");
    ac_matmul(g, ds, k, dq_acc, "dQ = dS K");
    ac_pointwise(g, CUDNN_POINTWISE_IDENTITY, F32, -1, dq_acc, NULL, NULL, dq, "dQ from its accumulator");
}

/* ---------------------------------------------------------------- plans */

/* The graph of (bwd, dims), and the engine configs cuDNN's heuristics give for it on the
 * device of handle (on a GPU) or devprop, those that pass cuDNN's support checks, in its
 * order of preference: up to max into cfg (made in g), their count in *n. 0, or -1 with
 * g->why. */
static int ac_configs(ac_graph *g, int bwd, ac_dims d, cudnnHandle_t handle, cudnnBackendDescriptor_t devprop,
                      cudnnBackendDescriptor_t *cfg, int max, int *n)
{
    g->next_uid = AC_VIRTUAL_UID0;
    if (bwd)
        ac_build_bwd(g, d);
    else
        ac_build_fwd(g, d);
    cudnnBackendDescriptor_t og = ac_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    ac_set(g, og, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops, g->ops, "operation graph");
    if (handle) ac_set(g, og, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "operation graph");
    ac_finalize(g, og, "operation graph");
    cudnnBackendDescriptor_t heur = ac_new(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    ac_set(g, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &og, "heuristics");
    ac_set(g, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics");
    if (devprop)
        ac_set(g, heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &devprop, "heuristics");
    ac_finalize(g, heur, "heuristics");
    for (int i = 0; i < max; i++) cfg[i] = ac_new(g, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    if (g->failed) return -1;
    int64_t got = 0;
    cudnnStatus_t st = L.GetAttr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, max, &got, cfg);
    if (st != CUDNN_STATUS_SUCCESS) {
        ac_fail(g, "heuristics' engine configs", st);
        return -1;
    }
    if (got <= 0) {
        snprintf(g->why, sizeof g->why, "cuDNN has no engine for this graph on this device (its log says why: "
                                         "CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr)");
        g->failed = 1;
        return -1;
    }
    *n = (int)got;
    return 0;
}

#define AC_MAX_CONFIGS 16

/* The first of the graph's engine configs that finalizes into an execution plan for
 * handle, and its workspace bytes. 0, or -1 with g->why. */
static int ac_plan(ac_graph *g, int bwd, ac_dims d, cudnnHandle_t handle, cudnnBackendDescriptor_t *plan_out,
                   int64_t *workspace)
{
    cudnnBackendDescriptor_t cfg[AC_MAX_CONFIGS];
    int n = 0;
    if (ac_configs(g, bwd, d, handle, NULL, cfg, AC_MAX_CONFIGS, &n) < 0) return -1;
    char first[256] = "";
    for (int i = 0; i < n; i++) {
        cudnnBackendDescriptor_t plan = NULL;
        cudnnStatus_t st = L.CreateDesc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
        if (st != CUDNN_STATUS_SUCCESS) {
            ac_fail(g, "execution plan", st);
            return -1;
        }
        int64_t count = 0;
        st = L.SetAttr(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg[i]);
        if (st == CUDNN_STATUS_SUCCESS)
            st = L.SetAttr(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        if (st == CUDNN_STATUS_SUCCESS) st = L.Finalize(plan);
        if (st == CUDNN_STATUS_SUCCESS)
            st = L.GetAttr(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &count, workspace);
        if (st == CUDNN_STATUS_SUCCESS) {
            *plan_out = plan;
            return 0;
        }
        if (!*first) {
            char last[160] = "";
            L.GetLastErrorString(last, sizeof last);
            snprintf(first, sizeof first, "%s%s%s", L.GetErrorString(st), *last ? ": " : "", last);
        }
        L.DestroyDesc(plan);
    }
    snprintf(g->why, sizeof g->why, "none of cuDNN's %d engine configs finalizes (the first: %s)", n, first);
    g->failed = 1;
    return -1;
}

int attn_cudnn_check_offline(const char *devprop_json, int bwd, int B, int T, int H, int KV, int hd, int *viable,
                             char *err, int errlen)
{
    if (ac_load() < 0) {
        ac_errf(err, errlen, "%s", L.why);
        return 77;
    }
    if (L.GetVersion() < AC_OFFLINE_MIN_VERSION) {
        ac_errf(err, errlen, "cuDNN %zu checks graphs without a GPU from 9.8 on", L.GetVersion());
        return 77;
    }
    ac_graph *g = calloc(1, sizeof *g);
    if (!g) {
        ac_errf(err, errlen, "out of host memory");
        return -1;
    }
    cudnnBackendDescriptor_t dp = ac_new(g, CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "device properties");
    ac_set(g, dp, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, (int64_t)strlen(devprop_json),
           devprop_json, "device properties");
    ac_finalize(g, dp, "device properties");
    cudnnBackendDescriptor_t cfg[AC_MAX_CONFIGS];
    *viable = 0;
    int rc = g->failed ? -1 : ac_configs(g, bwd, (ac_dims){B, T, H, KV, hd}, NULL, dp, cfg, AC_MAX_CONFIGS, viable);
    if (rc) ac_errf(err, errlen, "%s", g->why);
    ac_graph_free(g);
    free(g);
    return rc;
}

/* ---------------------------------------------------------------- on a GPU */

#define AC_PLANS 32

typedef struct ac_entry {
    int bwd;
    ac_dims d;
    ac_graph *g; /* its descriptors, alive as long as the plan */
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
    if (ac_load() < 0) {
        ac_errf(err, errlen, "%s", L.why);
        return NULL;
    }
    attn_cudnn *a = calloc(1, sizeof *a);
    if (!a) {
        ac_errf(err, errlen, "out of host memory");
        return NULL;
    }
    cudnnStatus_t st = L.Create(&a->handle);
    if (st == CUDNN_STATUS_SUCCESS) st = L.SetStream(a->handle, (cudaStream_t)stream);
    if (st != CUDNN_STATUS_SUCCESS) {
        char last[256] = "";
        L.GetLastErrorString(last, sizeof last);
        ac_errf(err, errlen, "cudnnCreate: %s%s%s", L.GetErrorString(st), *last ? ": " : "", last);
        if (a->handle) L.Destroy(a->handle);
        free(a);
        return NULL;
    }
    a->stream = (cudaStream_t)stream;
    const size_t v = L.GetVersion();
    snprintf(a->desc, sizeof a->desc, "cuDNN %zu.%zu.%zu", v / 10000, v / 100 % 100, v % 100);
    return a;
}

void attn_cudnn_free(attn_cudnn *a)
{
    if (!a) return;
    cudaStreamSynchronize(a->stream); /* nothing queued may still use the plans or scratch */
    for (int i = 0; i < a->nplans; i++) {
        L.DestroyDesc(a->plans[i].plan);
        ac_graph_free(a->plans[i].g);
        free(a->plans[i].g);
    }
    if (a->scratch) cudaFree(a->scratch);
    L.Destroy(a->handle);
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
        L.DestroyDesc(a->plans[0].plan);
        ac_graph_free(a->plans[0].g);
        free(a->plans[0].g);
        memmove(a->plans, a->plans + 1, sizeof a->plans[0] * (AC_PLANS - 1));
        a->nplans--;
    }
    ac_entry *e = &a->plans[a->nplans];
    memset(e, 0, sizeof *e);
    e->bwd = bwd;
    e->d = d;
    e->g = calloc(1, sizeof *e->g);
    if (!e->g) {
        ac_errf(err, errlen, "out of host memory");
        return NULL;
    }
    if (ac_plan(e->g, bwd, d, a->handle, &e->plan, &e->workspace) < 0) {
        ac_errf(err, errlen, "cuDNN attention %s (B %lld, T %lld, heads %lld/%lld x %lld): %s",
                bwd ? "backward" : "forward", (long long)d.B, (long long)d.T, (long long)d.H, (long long)d.KV,
                (long long)d.hd, e->g->why);
        ac_graph_free(e->g);
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
    ac_graph vg = {0};
    cudnnBackendDescriptor_t vp = ac_new(&vg, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    ac_set(&vg, vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids, "variant pack");
    ac_set(&vg, vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs, "variant pack");
    void *ws = a->scratch;
    ac_set(&vg, vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws, "variant pack");
    ac_finalize(&vg, vp, "variant pack");
    if (!vg.failed) {
        cudnnStatus_t st = L.Execute(a->handle, e->plan, vp);
        if (st != CUDNN_STATUS_SUCCESS) ac_fail(&vg, "cudnnBackendExecute", st);
    }
    int rc = vg.failed ? -1 : 0;
    if (rc)
        ac_errf(err, errlen, "cuDNN attention %s (B %lld, T %lld): %s", e->bwd ? "backward" : "forward",
                (long long)e->d.B, (long long)e->d.T, vg.why);
    ac_graph_free(&vg);
    return rc;
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
    if (L.GetVersion() < 90600 && cudaMemsetAsync(acc, 0, nacc, a->stream) != cudaSuccess) {
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
