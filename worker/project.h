/* project: Projected Compression of a Llama model (METHOD.md).
 *
 * Every compressed matrix W_C [d_out', d_in'] of the small model is
 *     W_C = P_out W P_in + A
 * with W [d_out, d_in] the frozen base weight, P_in [d_in, d_in'] (absent when the input
 * side keeps its width), P_out [d_out', d_out] (absent when the output side keeps its
 * width) and A [d_out', d_in'] zero-initialised. The embedding is treated as an
 * input-side projection (E_C = E P^T + E_A with P_in = P^T). Norm gains are sliced at
 * the kept d_model indices and trained directly.
 *
 * Trainable state is one flat f32 buffer with a tensor table (names "<hf name>.p_in",
 * ".p_out", ".a", and the norm gains' own names). Gradients are never stored for the
 * whole model: proj_grad_matrix computes one matrix's (dP_in, dP_out, dA) at a time into
 * a scratch buffer, so a step runs two passes over the matrices (norm, then update). */
#ifndef PC_PROJECT_H
#define PC_PROJECT_H

#include "backend.h"
#include "llama.h"
#include "safetensors.h"

typedef struct proj_tensor {
    char name[LLAMA_NAME_MAX + 8];
    int64_t offset, numel; /* into proj_set.params */
    int ndim;
} proj_tensor;

typedef struct proj_matrix {
    char name[LLAMA_NAME_MAX];
    int small_index;         /* tensor index in the small model */
    int d_out, d_in;         /* base shape */
    int d_out_c, d_in_c;     /* compressed shape */
    const float *w;          /* (d_out, d_in) base weight; tied bases share one buffer */
    int64_t p_in, p_out, a;  /* offsets into params (-1: absent) */
    double flops;            /* projection FLOPs of one step's materialise + gradient */
} proj_matrix;

typedef struct proj_norm {
    int small_index;   /* tensor index in the small model */
    int64_t offset, n; /* into params */
} proj_norm;

typedef struct proj_set {
    backend *be;
    int n_mats, n_norms, n_tensors;
    proj_matrix *mats;
    proj_norm *norms;
    proj_tensor *tensors;
    int64_t n_params;
    float *params;              /* (n_params) trainable */
    float *base_bufs[2 + PC_MAX_LAYERS * 7];
    int n_base_bufs;
    float *scratch;             /* intermediates of one matrix */
    float *grad;                /* (dP_in | dP_out | dA) of one matrix */
    int64_t scratch_n, grad_n;
} proj_set;

/* Kept indices: idx_d (d_model', ascending) for every layer, idx_ff[i] (d_ff'_i,
 * ascending) for layer i. */
typedef struct proj_indices {
    int d_model_c;
    int *idx_d;
    int d_ff_c[PC_MAX_LAYERS];
    int *idx_ff[PC_MAX_LAYERS];
} proj_indices;

/* Load the frozen base (every tensor of `base`, shaped by base_cfg) and build the
 * projections of `small` (already shaped d', f') initialised one-hot at idx, A = 0, norm
 * gains sliced. */
int proj_init(proj_set *ps, backend *be, const st_model *base, const llama_config *base_cfg,
              const llama_model *small, const proj_indices *idx, pc_err *e);
void proj_free(proj_set *ps);

/* W_C of every matrix and the norm gains into small->params. */
void proj_materialize(proj_set *ps, llama_model *small);

/* Gradients of matrix i from G = small->grads at its tensor: writes dP_in, dP_out, dA
 * (same layout as params: offsets returned in *gin, *gout, *ga into ps->grad, -1 when
 * absent). Returns the sum of squares of the three. */
double proj_grad_matrix(proj_set *ps, int i, const llama_model *small, int64_t *gin, int64_t *gout, int64_t *ga);

/* Total projection FLOPs of one step (materialise + gradients, one pass). */
double proj_flops(const proj_set *ps);

/* Slice the base at idx (hard pruning) into small->params; used by prune mode and by
 * tests (steps 0 of compress must equal it). */
int proj_slice_base(const st_model *base, const llama_config *base_cfg, llama_model *small, const proj_indices *idx,
                    pc_err *e);

void proj_indices_free(proj_indices *idx, int n_layers);

#endif
