/* cudnn_graph: a thin layer over cuDNN's backend API (cudnn_graph.c), which attention_cudnn.c
 * builds its graphs with. cuDNN is loaded at run time (dlopen of libcudnn.so.9, or the
 * file PC_CUDNN_LIB names) and its functions taken by dlsym, so nothing links it.
 *
 * A graph under construction (cg_graph) owns every descriptor made for it, destroyed
 * together, and keeps the first failure: each call after one does nothing, so a builder
 * reads straight through and checks g->failed (g->why: the step and cuDNN's message) at
 * the end. Needs cudnn.h (PC_HAVE_CUDNN). */
#ifndef PC_CUDNN_GRAPH_H
#define PC_CUDNN_GRAPH_H
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <stddef.h>
#include <stdint.h>

/* NULL once cuDNN 9.0 or later is loaded (the first call loads it), else why not. */
const char *cg_load(void);
/* cudnnGetVersion(), e.g. 91900; 0 before cg_load succeeds */
size_t cg_version(void);
/* A handle on the current device with its work on stream (a cudaStream_t); NULL with the
 * reason in why. */
cudnnHandle_t cg_handle_create(void *stream, char *why, size_t n);
void cg_handle_destroy(cudnnHandle_t h);
/* cuDNN's name for st and its last error message: "CUDNN_STATUS_...: reason" */
void cg_status(cudnnStatus_t st, char *out, size_t n);

#define CG_MAX_DESC 128
#define CG_MAX_OPS 48

typedef struct cg_graph {
    cudnnBackendDescriptor_t desc[CG_MAX_DESC];
    int n;
    cudnnBackendDescriptor_t ops[CG_MAX_OPS]; /* the operations, in the order made */
    int nops;
    int64_t next_uid; /* the next virtual tensor's uid */
    int failed;
    char why[512];
} cg_graph;

/* An empty graph whose virtual tensors take uids from uid0 on. */
void cg_init(cg_graph *g, int64_t uid0);
void cg_free(cg_graph *g);
cudnnBackendDescriptor_t cg_new(cg_graph *g, cudnnBackendDescriptorType_t type, const char *what);
void cg_set(cg_graph *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
            cudnnBackendAttributeType_t type, int64_t count, const void *value, const char *what);
void cg_finalize(cg_graph *g, cudnnBackendDescriptor_t d, const char *what);

/* A tensor's 4 dimensions and strides. */
typedef struct cg_shape {
    int64_t d[4], s[4];
} cg_shape;

enum { CG_STORED = 0, CG_VIRTUAL = 1, CG_BY_VALUE = 2 };

/* A tensor: stored (uid given, a device pointer in the variant pack), virtual (an
 * intermediate the engine never writes out; a fresh uid) or by value (a host scalar, uid
 * given); 16-byte aligned. */
cudnnBackendDescriptor_t cg_tensor(cg_graph *g, int kind, int64_t uid, cudnnDataType_t type, cg_shape sh,
                                   const char *what);
/* y = mode(x[, b[, t]]) elementwise in precision prec (axis: GEN_INDEX's, else -1);
 * BINARY_SELECT: y = t ? x : b. */
void cg_pointwise(cg_graph *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis,
                  cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                  cudnnBackendDescriptor_t y, const char *what);
/* c = a b over the last two dimensions, batched over the first two (a head count of b
 * that divides a's is broadcast over a's heads), fp32 accumulation. */
void cg_matmul(cg_graph *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
               const char *what);
/* y = x reduced (how: max or add, in fp32) over the dimensions where y has 1 (or fewer). */
void cg_reduce(cg_graph *g, cudnnReduceTensorOp_t how, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y,
               const char *what);
/* y: x seen with other dimensions and strides (a transposed view). */
void cg_reshape(cg_graph *g, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y, const char *what);

/* Device properties from cuDNN's JSON of them (9.8 and later), for building without a GPU. */
cudnnBackendDescriptor_t cg_devprop(cg_graph *g, const char *json);
/* The operations made so far as one operation graph, and the engine configs cuDNN's
 * heuristics (mode A) give for it on the device of handle or of devprop that pass its
 * support checks, in its order of preference: up to max into cfg, their count in *n. 0,
 * or -1 with g->why (none is a failure). */
int cg_configs(cg_graph *g, cudnnHandle_t handle, cudnnBackendDescriptor_t devprop, cudnnBackendDescriptor_t *cfg,
               int max, int *n);
/* The first of those configs that finalizes into an execution plan for handle (owned by
 * the caller: cg_plan_destroy), and its workspace bytes. 0, or -1 with g->why. */
int cg_plan(cg_graph *g, cudnnHandle_t handle, cudnnBackendDescriptor_t *plan, int64_t *workspace);
void cg_plan_destroy(cudnnBackendDescriptor_t plan);
/* Runs plan on handle's stream with the n tensors uids[i] at ptrs[i] (host pointers for
 * those by value) and workspace. 0, or -1 with why. */
int cg_execute(cudnnHandle_t handle, cudnnBackendDescriptor_t plan, int n, const int64_t *uids, void *const *ptrs,
               void *workspace, char *why, size_t why_n);

#endif
