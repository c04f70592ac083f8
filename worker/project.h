/* project: Projected Compression of a Llama model (docs/guide.md, Concepts), sharded by blocks.
 *
 * Every compressed matrix W_C [d_out', d_in'] of the small model is
 *     W_C = P_out W P_in + A
 * with W [d_out, d_in] the frozen base weight, P_in [d_in, d_in'] (absent when the input
 * side keeps its width), P_out [d_out', d_out] (absent when the output side keeps its
 * width) and A [d_out', d_in'] zero-initialised. The embedding is an input-side
 * projection (E_C = E P^T + E_A with P_in = P^T). Norm gains are sliced at the kept
 * d_model indices and trained directly.
 *
 * Ownership (ARCHITECTURE.md, "Sharding"): the unit is a block, a whole matrix, a row
 * range of an input-only projected matrix (its rows compress independently; P_in is then
 * a shared factor), a column range of an output-only one (P_out shared), or a norm gain.
 * Each block has one owner rank, which alone holds its frozen base slice, its P/A slices
 * and their optimizer state; a shared factor is replicated on every rank owning a block
 * of its matrix and its gradient is all-reduced. Every rank knows the layout of all
 * blocks (to gather W_C and scatter G), and holds the data of its own.
 *
 * Gradients are never stored for the whole model: proj_grad_block computes one block's
 * (dP_in, dP_out, dA) into a scratch buffer, so a step makes two passes over the blocks
 * (global norm, then update) and peak extra memory is one block's intermediates. */
#ifndef PC_PROJECT_H
#define PC_PROJECT_H

#include "backend.h"
#include "comm.h"
#include "llama.h"
#include "safetensors.h"

typedef enum { PROJ_WHOLE = 0, PROJ_ROWS, PROJ_COLS, PROJ_NORM } proj_kind;

/* The axis along which a plan may cut small-model matrix `name` into blocks: its kept side,
 * the rows of an input-projected matrix (embedding, q, k, v, lm_head) or the columns of an
 * output-projected one (o_proj), whether or not the other side's width is compressed;
 * PROJ_WHOLE for the matrices projected on both sides (never cut) and anything else. */
proj_kind proj_split_axis(const char *name);

/* One block of the sharding plan. */
typedef struct proj_spec {
    const char *name; /* small-model tensor */
    proj_kind kind;
    int64_t r0, r1;   /* rows (PROJ_ROWS) or columns (PROJ_COLS) of the tensor; ignored otherwise */
    int owner;
} proj_spec;

typedef struct proj_tensor {
    char name[LLAMA_NAME_MAX + 32]; /* "<hf name>.p_in", ".p_out", ".a", ".a[r0:r1]", norm name */
    int64_t offset, numel;          /* into proj_set.params */
    int ndim;
    int write;                      /* this rank saves it (a shared factor: its lowest holder) */
} proj_tensor;

typedef struct proj_block {
    char name[LLAMA_NAME_MAX];
    proj_kind kind;
    int64_t r0, r1;
    int owner;
    int small_index;         /* tensor index in the small model */
    int stage;               /* when the backward finishes its G (llama_grad_stage) */
    int d_out, d_in;         /* shape of the base slice W */
    int full_out, full_in;   /* shape of the whole base matrix it is cut from (the config's) */
    int d_out_c, d_in_c;     /* shape of the compressed slice W_C */
    int ld_c;                /* row stride of W_C / G inside the small tensor */
    int64_t off_c;           /* offset of the slice's first element in small params / grads */
    const float *w;          /* (d_out, d_in) base slice, device, fp32 storage; owner only */
    const uint16_t *w16;     /* the same in bf16 storage (base_bf16), widened to fp32 on use */
    int64_t p_in, p_out, a;  /* offsets into params (-1: absent or not held) */
    int64_t xoff;            /* offset in proj_set.xchg of a strided block (-1: contiguous) */
    int64_t goff;            /* offset of its G in proj_set.gacc (sharded G, owned blocks), else -1 */
    int shared;              /* index of the shared factor of this block's matrix, or -1 */
    double flops;            /* projection FLOPs of one step (materialise + gradient, one pass) */
} proj_block;

typedef struct proj_shared {
    char name[LLAMA_NAME_MAX + 8];
    int64_t numel;
    int64_t grad_off;   /* into proj_set.shared_grad (same layout on every rank) */
    int64_t param_off;  /* into params, -1 when this rank holds no block of the matrix */
    int rows, cols;     /* shape of the factor */
} proj_shared;

typedef struct proj_set {
    backend *be;
    int rank, world;
    int n_blocks, n_tensors, n_shared;
    proj_block *blocks;         /* all blocks of the plan (data only for owned ones) */
    proj_tensor *tensors;       /* trainable tensors held by this rank */
    proj_shared *shared;
    int64_t n_params;
    /* every float buffer below (and the blocks' w) is a buffer of `be` (device memory) */
    float *params;              /* (n_params) trainable state held here */
    float *shared_grad;         /* (sum of shared numel) gradients of every shared factor */
    int64_t shared_grad_n;
    void **base_bufs;           /* frozen base slices loaded here (fp32 or bf16) */
    int64_t base_bytes;         /* their size */
    int n_base_bufs;
    int base_bf16;              /* base slices stored in bf16 (w16), else fp32 (w) */
    /* base_bf16 and a small model with a bf16 copy (its products bf16): a slice goes into
     * the projection products as stored (gemm_w16, gemm_16), never widened; the fp32
     * operand it is multiplied by on its right (P_in, or G) is rounded into b16 */
    int products16;
    uint16_t *b16;              /* (largest such operand, even count) its bf16 copy */
    int64_t b16_n;
    float *wide;                /* (largest base slice) fp32 copy of a bf16 slice in use (not with
                                 * products16, except for a block projected on neither side) */
    int64_t wide_n;
    float *scratch;             /* intermediates of one block projected on both sides */
    float *grad;                /* (dP_in | dP_out | dA) of one block, or a norm block's gain gradient */
    int64_t scratch_n, grad_n;
    /* W_C gather and G reduce: one piece per block, rooted at its owner, straight from / into
     * the small model's buffers; a block whose rows are strided there (an o_proj column
     * range) goes through its place in xchg */
    comm_piece *pieces;         /* (n_blocks) */
    float *xchg;                /* (every strided block's W_C, packed) world > 1 only */
    uint16_t *xchg16;           /* the same in bf16, when the small model has a bf16 copy (w16) */
    int64_t xchg_bytes;         /* the size of both */
    /* sharded G (proj_shard_grads): the small model keeps only two stages' gradients
     * (llama_opts.grad_windows); each backward's G goes to the owners stage by stage, and
     * they sum it over the step's backwards into gacc: every owned block's G, packed
     * (d_out' x d_in' at its goff) */
    int shard;
    float *gacc;
    int64_t gacc_n;
    int inflight;               /* sharded G: the stage whose reduce is under way, -1: none */
    int next_stage;             /* G reduce: stages below this one are started */
    int gather_started, gather_landed; /* W_C broadcast in forward stages: below these, started / landed */
    int n_stages;               /* llama_grad_stage's stages, 0 .. n_stages - 1 */
} proj_set;

/* Kept indices: idx_d (d_model', ascending) for every layer, idx_ff[i] (d_ff'_i,
 * ascending) for layer i. */
typedef struct proj_indices {
    int d_model_c;
    int *idx_d;
    int d_ff_c[PC_MAX_LAYERS];
    int *idx_ff[PC_MAX_LAYERS];
} proj_indices;

/* Build the blocks of `specs` (NULL: every tensor one block owned by rank 0) for the
 * small model `small` (shaped d', f'), load this rank's base slices from `base` (kept in
 * bf16 when base_bf16: half the memory, exact for a bf16 checkpoint, rounded to nearest
 * even otherwise; the products take the widened slice, or with a small model that has a
 * bf16 copy the bf16 slice itself: MATMUL_BF16's arithmetic, the same values), and
 * initialise one-hot projections at idx, A = 0, norm gains sliced. */
int proj_init(proj_set *ps, backend *be, const st_model *base, const llama_config *base_cfg,
              const llama_model *small, const proj_indices *idx, const proj_spec *specs, int n_specs, int rank,
              int world, int base_bf16, pc_err *e);
void proj_free(proj_set *ps);

/* W_C of this rank's blocks (and its norm gains) into small->params. A small model with
 * a bf16 copy must hold its matrices in bf16 only (LLAMA_BF16_ONLY, proj_init refuses
 * others): each block's W_C is then made in fp32 in G's place in small->grads (dead
 * between an update and the next backward, which zeroes it; so G is clobbered) or, for
 * a strided block, in xchg, and rounded at once into its bf16 piece (w16 or xchg16). */
void proj_materialize(proj_set *ps, llama_model *small);
/* Broadcast every block's W_C from its owner so that each rank holds the whole small model.
 * When the small model is bf16 only, W_C goes over the wire in bf16 (half the bytes) into
 * every rank's w16, and the norm gains are widened into params on every rank, the owner
 * too: the same model on every rank and at any world size. */
int proj_gather(proj_set *ps, llama_model *small, comm *c, pc_err *e);
/* The same in forward stages, to overlap it with the forward (llama_forward's on_weights,
 * the embedding first): proj_gather_begin makes the owners' pieces and starts stage 0;
 * proj_gather_stage(s), called before the forward reads stage s, completes the stages
 * up to s (starting any not yet started) and starts stage s + 1, which then moves while
 * stage s computes. Every stage has landed once stage n_stages - 1 has. */
int proj_gather_begin(proj_set *ps, llama_model *small, comm *c, pc_err *e);
int proj_gather_stage(proj_set *ps, llama_model *small, comm *c, int stage, pc_err *e);
/* Sum each block's gradient G over ranks into its owner's small->grads (grouped reduces,
 * in place), in up to n_stages parts so that it can overlap the backward:
 * proj_reduce_start starts the reduce of every block whose G is final at `stage`
 * (llama_grad_stage) and of earlier stages not yet started (a llama_stage_hook calls
 * it); proj_reduce_finish starts the rest (all of it, without starts), waits for all and
 * unpacks the owners' strided blocks.
 * Sharded G: the same two calls after every backward (start from on_grads on every
 * backward, finish after it), stage by stage: when stage s's G is final, the reduce of
 * stage s - 1 is waited for, its owners copy their sum into gacc and its window is
 * zeroed for stage s + 1; then the owners add gacc into their pieces of stage s (the sum
 * so far over the step's backwards) and its reduce starts, to run beside stage s + 1's
 * backward. The finish also takes the stages a backward without targets never reached. */
int proj_reduce_start(proj_set *ps, llama_model *small, comm *c, int stage, pc_err *e);
int proj_reduce_finish(proj_set *ps, llama_model *small, comm *c, pc_err *e);

/* Shard G (compress.shard_grads) for a small model made with llama_opts.grad_windows:
 * gacc for the owned blocks (zeroed by proj_materialize, the start of every step). */
void proj_shard_grads(proj_set *ps);

/* Where block i's own gradients go, packed in that order: dP_in, dP_out (where the block
 * alone holds them, not a shared factor's) and dA (a norm block: its gain's), at offsets
 * *gin, *gout, *ga (-1 when absent); returns their total element count. */
int64_t proj_grad_layout(const proj_set *ps, int i, int64_t *gin, int64_t *gout, int64_t *ga);
/* Gradients of owned block i from its G: writes dP_in, dP_out, dA packed in that order
 * into dst (a device buffer; NULL: ps->grad, the block scratch) at *gin, *gout, *ga (-1
 * when absent: proj_grad_layout). When the block's P_in/P_out is a shared factor its partial gradient is
 * ADDED to ps->shared_grad instead (with_shared) or skipped (*gin / *gout = -1 either
 * way). A norm block's gradient is its G, at *ga. Returns the sum of squares of what it
 * wrote to dst. */
double proj_grad_block(proj_set *ps, int i, const llama_model *small, int with_shared, float *dst, int64_t *gin,
                       int64_t *gout, int64_t *ga);

/* Total projection FLOPs of one step over all blocks (materialise + gradients, one pass). */
double proj_flops(const proj_set *ps);
/* Bytes of this rank's projection work buffers: intermediates, the widened base slice
 * or (products16) the bf16 copy of the operand a bf16 slice meets, one block's gradients and every shared factor's gradient (plan.txt's scratch column
 * less the CUDA backend's bf16 operand copies). */
int64_t proj_scratch_bytes(const proj_set *ps);

/* Slice the base at idx (hard pruning) into small->params; prune mode and steps-0 checks. */
int proj_slice_base(const st_model *base, const llama_config *base_cfg, llama_model *small, const proj_indices *idx,
                    pc_err *e);

void proj_indices_free(proj_indices *idx, int n_layers);

#endif
