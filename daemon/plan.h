/* plan: the sharding planner. Cuts every projected matrix of a Projected Compression
 * run into blocks (the unit of ownership), assigns each block to one rank, and
 * estimates per-rank memory and per-step communication (ARCHITECTURE.md, "Sharding").
 *
 * Blocks, named by the small model's HF tensor names:
 *   whole  a matrix projected on both sides (gate/up/down), or any matrix left unsplit;
 *   rows   a row range [r0, r1) of an input-only projected matrix (q/k/v, embedding,
 *          lm_head): W_C[r0:r1] = W[r0:r1] P_in + A[r0:r1]; P_in is a shared factor
 *          replicated on every owner of one of these blocks (row ranges of q/k/v are
 *          multiples of head_dim);
 *   cols   a column range [c0, c1) of the output-only o_proj:
 *          W_C[:, c0:c1] = P_out W[:, c0:c1] + A[:, c0:c1]; P_out is shared;
 *   norm   a norm gain (trained directly, no frozen base kept).
 * A matrix is split only when it is larger than the split threshold (default: total
 * bytes / world / 2) and never on one rank. Assignment is deterministic greedy: blocks
 * by bytes descending (ties by name, then range), each to the least-loaded rank (bytes,
 * then FLOPs, then rank id).
 *
 * A tied base's head projects the frozen embedding: owners of embedding blocks and of
 * lm_head blocks each hold their rows of it, so it counts twice in the base bytes.
 *
 * Everything is computed from the two shapes alone: no weights are read, nothing is
 * allocated in proportion to the model (a 70B plan on 512 ranks takes milliseconds). */
#ifndef PC_PLAN_H
#define PC_PLAN_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "hf_config.h"
#include "util.h"

#define PLAN_NAME_MAX 96

typedef enum plan_kind { PLAN_WHOLE = 0, PLAN_ROWS, PLAN_COLS, PLAN_NORM } plan_kind;

typedef struct plan_opts {
    int micro_batch, seq_len;  /* activations are sized for one (B,T) micro-batch */
    int base_dtype_bytes;      /* frozen base in memory: 2 (bf16) or 4 (f32) */
    int compute_dtype_bytes;   /* W_C replica, activations, comm: 4 (f32, every backend); 2 models bf16 compute */
    int attn_tt;               /* 1: attention materialises (T,T) f32 score matrices, one head at a time (cpu) */
    int64_t split_bytes;       /* split a matrix above this many bytes; 0: total / world / 2 */
    int teacher;               /* distill: every rank also holds the base as a forward-only teacher */
    int importance_act;        /* compress.importance activation: the base streamed a layer at a time
                                * (fp32 weights) before training */
    int recompute;             /* train.activation_checkpointing: layer inputs + one layer's activations */
    int logits_chunk;          /* train.logits_chunk: (chunk, V) logits instead of (B*T, V); 0: whole */
    int weights_bf16;          /* backend.matmul bf16: a bf16 copy of W_C beside it, gathered in bf16 */
    int64_t gemm_bf16_block;   /* bf16 products on cuda: each of the two bf16 operand copies holds at most
                                * this many elements (BACKEND_CUDA_BF16_BLOCK); 0: none (cpu, fp32, tf32) */
    int attn_bf16;             /* attention on bf16 tensor cores (config_attention_bf16) */
    int attn_cudnn;            /* ... maybe by cuDNN (config_attention_may_cudnn): more scratch */
    int attn_copies;           /* attn_bf16 on cuda: attention's bf16 copy of dO in scratch, and of q, k, v
                                * where the model does not keep them in bf16 (plan.c, qkv16); 0 where the
                                * device's kernels do not take the head_dim (the daemon asks the backend) */
    int shard_grads;           /* compress.shard_grads: two stages' G + the owned blocks' sums, reduced
                                * after every backward */
    int global_batch;          /* train.global_batch: backwards per step (with shard_grads); 0: one */
    int store_grads;           /* compress.store_grads (PC_GRADS_*): which blocks keep their gradients
                                * between the norm pass and the update (plan_block.kept) */
    int64_t capacity;          /* bytes a rank may use (backend.memory_gib, else the device's free memory at
                                * start-up); 0: unknown. PC_GRADS_AUTO keeps gradients within capacity -
                                * capacity / 16 */
    int prune;                 /* run.mode prune: every rank trains the whole small model directly (its fp32
                                * weights, G, AdamW m and v, with weights_bf16 their bf16 copy); the blocks
                                * only say what is sliced: no base, projections or exchange held */
} plan_opts;

enum { PLAN_WORK_BUFS = 4 };

typedef struct plan_block {
    char name[PLAN_NAME_MAX];      /* small model tensor, e.g. "model.layers.3.self_attn.q_proj.weight" */
    char base_name[PLAN_NAME_MAX]; /* base tensor holding W (a tied head reads the embedding) */
    plan_kind kind;
    int matrix;                    /* index of the tensor in HF order (plan_tensor_count) */
    int64_t r0, r1;                /* range on the matrix's split axis: columns for o_proj, rows otherwise
                                    * (whole blocks span it all; norm: [0, d')) */
    int64_t base_rows, base_cols;  /* shape of the frozen base slice W[.., ..] (norm: 0, 0) */
    int64_t c_rows, c_cols;        /* shape of the compressed slice W_C[.., ..] */
    char shared[PLAN_NAME_MAX + 8];  /* shared factor "<name>.p_in" / ".p_out", "" when none */
    int64_t shared_numel;          /* elements of the shared factor (0 when none) */
    int64_t own_numel;             /* trainable elements only this block holds (P/A slices, norm gain) */
    int64_t base_bytes;            /* frozen base slice, in the base dtype */
    int64_t state_bytes;           /* own trainable state: 3 x f32 per element (value, Adam m, v) */
    int64_t shared_bytes;          /* replicated shared factor with its Adam state: 12 x shared_numel */
    /* project.c's work buffers for this block, in f32 elements: intermediates (both sides
     * projected), the fp32 copy of a bf16 base slice, its gradients, and with a bf16 base
     * and bf16 weights the bf16 copy of the operand the slice meets (in whole f32 words); a
     * rank allocates the largest of each over its blocks */
    int64_t work[PLAN_WORK_BUFS];
    double flops;                  /* projection FLOPs per step (materialise + gradients) */
    double grad_flops;             /* the gradients' part of flops: what the update recomputes unless kept */
    int owner;                     /* rank in [0, world) */
    int kept;                      /* its gradients (own_numel f32) are kept between the two passes */
} plan_block;

/* A shared factor and the ranks that hold a replica (they all-reduce its gradient). */
typedef struct plan_shared {
    char name[PLAN_NAME_MAX + 8];
    int64_t numel;
    int n_blocks, n_ranks;
} plan_shared;

/* Per-rank memory (bytes) and work. */
typedef struct plan_rank {
    int n_blocks;          /* (prune: 0) */
    int64_t base_bytes;    /* frozen base slices */
    int64_t state_bytes;   /* own P/A slices + Adam m, v (prune: the model's Adam m, v) */
    int64_t shared_bytes;  /* shared factors held here (each once) with Adam state */
    int64_t replica_bytes; /* all of W_C (compute dtype) + its gradient G (f32) + its bf16 copy (weights_bf16);
                            * with shard_grads G is two stage windows + gsum_bytes; prune: the trained
                            * model's fp32 weights + G + (weights_bf16) their bf16 copy */
    int64_t gsum_bytes;    /* shard_grads: the sums of G of the blocks owned here (f32) */
    int64_t scratch_bytes; /* projection work buffers (the largest block's of each kind), every shared factor's
                            * gradient, the bf16 operand copies (gemm_bf16_block) */
    int64_t xchg_bytes;    /* W_C / G exchange buffer: f32 (+ bf16) W_C of every column block (world > 1) */
    int64_t act_bytes;     /* activations of one micro-batch */
    int64_t grads_bytes;   /* the kept blocks' gradients (f32) */
    int64_t total_bytes;
    int64_t load_bytes;    /* what the assignment balanced: base + state + shared, per block */
    double flops;
    double recompute_flops; /* gradient FLOPs the update recomputes (blocks not kept) */
    int n_kept;             /* blocks whose gradients are kept */
} plan_rank;

typedef struct plan_comm {
    int64_t gather_bytes;     /* all-gather of W_C, compute dtype (bf16 with weights_bf16) */
    int64_t reduce_bytes;     /* reduce of G to the owners, compute dtype (once per backward with shard_grads) */
    int64_t shared_bytes;     /* payload of the shared-factor gradient all-reduces (f32) */
    int n_shared_allreduce;   /* shared factors held by more than one rank */
    int64_t allreduce_bytes;  /* prune: the all-reduce of the whole gradient (f32; the rest are 0) */
    int64_t per_rank_bytes;   /* ring estimate of bytes one rank sends per step (max over ranks) */
} plan_comm;

typedef struct plan {
    llama_config base, small;
    int world;
    plan_opts opts;
    int64_t split_bytes;      /* threshold used */
    int n_tensors;            /* projected tensors of the small model (HF order) */
    int n_blocks, n_split;    /* blocks, and matrices cut into more than one */
    plan_block *blocks;       /* (n_blocks) in HF tensor order, ranges ascending */
    int n_shared;
    plan_shared *shared;      /* (n_shared) */
    plan_rank *ranks;         /* (world) */
    int64_t total_base_bytes, total_state_bytes, total_shared_bytes; /* shared: replicas counted per rank */
    int64_t small_numel;      /* parameters of the compressed model */
    int64_t teacher_bytes;    /* per rank (in every rank's total): fp32 base + forward activations; 0 without */
    int64_t gemm_bf16_bytes;  /* per rank (in every rank's scratch): the CUDA backend's bf16 operand copies */
    int64_t attn_copies_bytes; /* per rank (in every rank's scratch): attention's bf16 copies (attention_tc.h) */
    int64_t gwin_bytes;       /* shard_grads: one of the two stage windows of G (f32; in every replica) */
    int backwards;            /* backwards per step (global_batch / (world x micro_batch)) */
    double total_flops;
    plan_comm comm;
    int *by_name;             /* (n_blocks) block indices sorted by (name, r0) */
} plan;

/* Defaults: micro_batch 1, seq_len 2048, base bf16, compute f32, attn_tt 1, split auto. */
void plan_opts_default(plan_opts *o);

/* Build the plan for compressing `base` into `small` (same layers and heads, narrower or
 * equal d_model and d_ff, untied) on `world` ranks. Errors name the offending field. */
int plan_build(plan *p, const llama_config *base, const llama_config *small, int world, const plan_opts *o,
               pc_err *e);
void plan_free(plan *p);

int plan_block_count(const plan *p);
const plan_block *plan_block_at(const plan *p, int i);
/* Rank owning element row_or_col (a row for rows blocks, a column for cols blocks; ignored
 * for whole and norm blocks) of small tensor `tensor`; -1 when no block holds it. */
int plan_owner_of(const plan *p, const char *tensor, int64_t row_or_col);
/* Index of the block holding that element, or -1. */
int plan_block_of(const plan *p, const char *tensor, int64_t row_or_col);
/* "whole", "rows", "cols", "norm". */
const char *plan_kind_name(plan_kind k);
/* Largest rank load divided by the mean (bytes the assignment balanced). */
double plan_balance(const plan *p);
/* Ranks that own no block (more ranks than the plan has blocks to give), and the busiest
 * rank's projection FLOPs per step in *busiest_flops (may be NULL). */
int plan_idle_ranks(const plan *p, double *busiest_flops);

/* 0 when rank's planned total fits `capacity` bytes of `device` memory; else -1 with a
 * message naming the rank, the device, both sizes, the largest items and the remedies
 * that apply (activation checkpointing, a smaller micro-batch, bf16 base slices, more
 * ranks). */
int plan_check_fit(const plan *p, int rank, int64_t capacity, const char *device, pc_err *e);

/* The human-readable plan (RUN/plan.txt): header, one line per block, per-rank memory
 * table in GiB, shared factors, comm estimate. */
int plan_write(const plan *p, FILE *f);

/* The compressed shape a job asks for: base widths replaced by compress.d_model and
 * compress.d_ff (uniform or per layer; unset keeps the base width), untied. */
int plan_small_config(const pc_config *c, const llama_config *base, llama_config *small, pc_err *e);
/* Options from a job: train.micro_batch, data.seq_len; base slices in model.dtype (bf16
 * or f32), everything else f32 (what every backend computes in); backend.device as by
 * plan_opts_set_device; train.activation_checkpointing; compress.split_mb; run.mode prune. */
void plan_opts_from_config(const pc_config *c, plan_opts *o);
/* What the device changes (after weights_bf16 and attn_bf16 are set): on cuda (cuda != 0)
 * no (T,T) attention matrix, with bf16 products the two bf16 operand copies of at most
 * BACKEND_CUDA_BF16_BLOCK elements, and with bf16 attention its bf16 copies of q, k, v
 * and dO; on the cpu, the (T,T) matrix and no copies. */
void plan_opts_set_device(plan_opts *o, int cuda);
/* Read model.base/config.json (or model.config) without touching weights, build the
 * plan for `world` ranks and write it to out. With device_gib > 0 (else the job's
 * backend.memory_gib, when set) plan compress.store_grads auto in that size and check the
 * largest rank against it: *fits = 1 (and a "# fits" line), or 0 with e holding
 * plan_check_fit's message (its remedies). */
int plan_dry_run(const pc_config *c, int world, double device_gib, FILE *out, int *fits, pc_err *e);

#endif
