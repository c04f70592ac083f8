/* cudnn_graph: a thin layer over cuDNN's backend API (cudnn_graph.h). */
#ifdef PC_HAVE_CUDNN
#include "cudnn_graph.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#define CG_MIN_VERSION 90000 /* the -inf mask and the attention graphs' engines on Hopper */

const char *cg_load(void)
{
    if (L.state) return L.state > 0 ? NULL : L.why;
    const char *path = getenv("PC_CUDNN_LIB");
    if (!path || !*path) path = "libcudnn.so.9";
    L.state = -1;
    L.lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!L.lib) {
        snprintf(L.why, sizeof L.why, "cannot load cuDNN (%s): %s", path, dlerror());
        return L.why;
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
            snprintf(L.why, sizeof L.why, "%s lacks %s (cuDNN 9 needed)", path, syms[i].name);
            return L.why;
        }
    }
    const size_t v = L.GetVersion();
    if (v < CG_MIN_VERSION) {
        snprintf(L.why, sizeof L.why, "cuDNN %zu.%zu found (%s), 9.0 or later needed", v / 10000, v / 100 % 100,
                 path);
        return L.why;
    }
    L.state = 1;
    return NULL;
}

size_t cg_version(void) { return L.state > 0 ? L.GetVersion() : 0; }

void cg_status(cudnnStatus_t st, char *out, size_t n)
{
    char last[256] = "";
    L.GetLastErrorString(last, sizeof last);
    snprintf(out, n, "%s%s%.256s", L.GetErrorString(st), *last ? ": " : "", last);
}

cudnnHandle_t cg_handle_create(void *stream, char *why, size_t n)
{
    cudnnHandle_t h = NULL;
    cudnnStatus_t st = L.Create(&h);
    if (st == CUDNN_STATUS_SUCCESS) st = L.SetStream(h, (cudaStream_t)stream);
    if (st == CUDNN_STATUS_SUCCESS) return h;
    char s[400];
    cg_status(st, s, sizeof s);
    snprintf(why, n, "cudnnCreate: %s", s);
    if (h) L.Destroy(h);
    return NULL;
}

void cg_handle_destroy(cudnnHandle_t h)
{
    if (h) L.Destroy(h);
}

/* ---------------------------------------------------------------- descriptors */

static void cg_fail(cg_graph *g, const char *what, cudnnStatus_t st)
{
    if (g->failed) return;
    char s[400];
    cg_status(st, s, sizeof s);
    snprintf(g->why, sizeof g->why, "%.80s: %s", what, s);
    g->failed = 1;
}

void cg_init(cg_graph *g, int64_t uid0)
{
    memset(g, 0, sizeof *g);
    g->next_uid = uid0;
}

void cg_free(cg_graph *g)
{
    for (int i = g->n - 1; i >= 0; i--) L.DestroyDesc(g->desc[i]);
    g->n = g->nops = 0;
}

cudnnBackendDescriptor_t cg_new(cg_graph *g, cudnnBackendDescriptorType_t type, const char *what)
{
    if (g->failed) return NULL;
    if (g->n == CG_MAX_DESC) {
        snprintf(g->why, sizeof g->why, "%s: more than %d descriptors", what, CG_MAX_DESC);
        g->failed = 1;
        return NULL;
    }
    cudnnBackendDescriptor_t d = NULL;
    cudnnStatus_t st = L.CreateDesc(type, &d);
    if (st != CUDNN_STATUS_SUCCESS) {
        cg_fail(g, what, st);
        return NULL;
    }
    return g->desc[g->n++] = d;
}

void cg_set(cg_graph *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
            cudnnBackendAttributeType_t type, int64_t count, const void *value, const char *what)
{
    if (g->failed) return;
    cudnnStatus_t st = L.SetAttr(d, name, type, count, value);
    if (st != CUDNN_STATUS_SUCCESS) cg_fail(g, what, st);
}

void cg_finalize(cg_graph *g, cudnnBackendDescriptor_t d, const char *what)
{
    if (g->failed) return;
    cudnnStatus_t st = L.Finalize(d);
    if (st != CUDNN_STATUS_SUCCESS) cg_fail(g, what, st);
}

cudnnBackendDescriptor_t cg_tensor(cg_graph *g, int kind, int64_t uid, cudnnDataType_t type, cg_shape sh,
                                   const char *what)
{
    cudnnBackendDescriptor_t t = cg_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    if (kind == CG_VIRTUAL) uid = g->next_uid++;
    const int64_t align = 16;
    const bool virt = kind == CG_VIRTUAL, by_value = kind == CG_BY_VALUE;
    cg_set(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, what);
    cg_set(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, sh.d, what);
    cg_set(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, sh.s, what);
    cg_set(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, what);
    cg_set(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, what);
    cg_set(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, what);
    if (by_value) cg_set(g, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, what);
    cg_finalize(g, t, what);
    return t;
}

/* an operation descriptor finalized and appended to the graph's operations */
static void cg_op(cg_graph *g, cudnnBackendDescriptor_t op, const char *what)
{
    cg_finalize(g, op, what);
    if (g->failed) return;
    if (g->nops == CG_MAX_OPS) {
        snprintf(g->why, sizeof g->why, "%s: more than %d operations", what, CG_MAX_OPS);
        g->failed = 1;
        return;
    }
    g->ops[g->nops++] = op;
}

/* the attribute desc (of the operation's type) set to one descriptor */
static void cg_set1(cg_graph *g, cudnnBackendDescriptor_t op, cudnnBackendAttributeName_t name,
                    cudnnBackendDescriptor_t d, const char *what)
{
    cg_set(g, op, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &d, what);
}

void cg_pointwise(cg_graph *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis,
                  cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                  cudnnBackendDescriptor_t y, const char *what)
{
    cudnnBackendDescriptor_t pw = cg_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, what);
    cg_set(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, what);
    cg_set(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, what);
    if (axis >= 0) cg_set(g, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, what);
    cg_finalize(g, pw, what);
    cudnnBackendDescriptor_t op = cg_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, what);
    if (b) cg_set1(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, what);
    if (t) cg_set1(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, what);
    cg_op(g, op, what);
}

void cg_matmul(cg_graph *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
               const char *what)
{
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t mm = cg_new(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, what);
    cg_set(g, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, what);
    cg_finalize(g, mm, what);
    cudnnBackendDescriptor_t op = cg_new(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm, what);
    cg_op(g, op, what);
}

void cg_reduce(cg_graph *g, cudnnReduceTensorOp_t how, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y,
               const char *what)
{
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t rd = cg_new(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, what);
    cg_set(g, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, what);
    cg_set(g, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &how, what);
    cg_finalize(g, rd, what);
    cudnnBackendDescriptor_t op = cg_new(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, what);
    cg_op(g, op, what);
}

void cg_reshape(cg_graph *g, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y, const char *what)
{
    cudnnBackendDescriptor_t op = cg_new(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, what);
    cg_set1(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, what);
    cg_op(g, op, what);
}

/* ---------------------------------------------------------------- plans */

cudnnBackendDescriptor_t cg_devprop(cg_graph *g, const char *json)
{
    cudnnBackendDescriptor_t dp = cg_new(g, CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "device properties");
    cg_set(g, dp, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, (int64_t)strlen(json), json,
           "device properties");
    cg_finalize(g, dp, "device properties");
    return dp;
}

int cg_configs(cg_graph *g, cudnnHandle_t handle, cudnnBackendDescriptor_t devprop, cudnnBackendDescriptor_t *cfg,
               int max, int *n)
{
    *n = 0;
    cudnnBackendDescriptor_t og = cg_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    cg_set(g, og, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops, g->ops, "operation graph");
    if (handle) cg_set(g, og, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "operation graph");
    cg_finalize(g, og, "operation graph");
    cudnnBackendDescriptor_t heur = cg_new(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    cg_set1(g, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, og, "heuristics");
    cg_set(g, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics");
    if (devprop) cg_set1(g, heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, devprop, "heuristics");
    cg_finalize(g, heur, "heuristics");
    for (int i = 0; i < max; i++) cfg[i] = cg_new(g, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    if (g->failed) return -1;
    int64_t got = 0;
    cudnnStatus_t st = L.GetAttr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, max, &got, cfg);
    if (st != CUDNN_STATUS_SUCCESS) {
        cg_fail(g, "heuristics' engine configs", st);
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

#define CG_MAX_CONFIGS 16

int cg_plan(cg_graph *g, cudnnHandle_t handle, cudnnBackendDescriptor_t *plan_out, int64_t *workspace)
{
    cudnnBackendDescriptor_t cfg[CG_MAX_CONFIGS];
    int n = 0;
    if (cg_configs(g, handle, NULL, cfg, CG_MAX_CONFIGS, &n) < 0) return -1;
    char first[400] = "";
    for (int i = 0; i < n; i++) {
        cudnnBackendDescriptor_t plan = NULL;
        cudnnStatus_t st = L.CreateDesc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
        if (st != CUDNN_STATUS_SUCCESS) {
            cg_fail(g, "execution plan", st);
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
        if (!*first) cg_status(st, first, sizeof first);
        L.DestroyDesc(plan);
    }
    snprintf(g->why, sizeof g->why, "none of cuDNN's %d engine configs finalizes (the first: %.400s)", n, first);
    g->failed = 1;
    return -1;
}

void cg_plan_destroy(cudnnBackendDescriptor_t plan)
{
    if (plan) L.DestroyDesc(plan);
}

int cg_execute(cudnnHandle_t handle, cudnnBackendDescriptor_t plan, int n, const int64_t *uids, void *const *ptrs,
               void *workspace, char *why, size_t why_n)
{
    cg_graph vg;
    cg_init(&vg, 0);
    cudnnBackendDescriptor_t vp = cg_new(&vg, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    cg_set(&vg, vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids, "variant pack");
    cg_set(&vg, vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs, "variant pack");
    cg_set(&vg, vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace, "variant pack");
    cg_finalize(&vg, vp, "variant pack");
    if (!vg.failed) {
        cudnnStatus_t st = L.Execute(handle, plan, vp);
        if (st != CUDNN_STATUS_SUCCESS) cg_fail(&vg, "cudnnBackendExecute", st);
    }
    const int rc = vg.failed ? -1 : 0;
    if (rc) snprintf(why, why_n, "%s", vg.why);
    cg_free(&vg);
    return rc;
}

#else
typedef int cg_no_cudnn; /* ISO C: a translation unit is not empty */
#endif
