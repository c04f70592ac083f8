/* trainer: state of a training run and the per-mode hooks of the shared loop.
 *
 * The loop (train.c) is the same for every training mode: begin the step, run this
 * rank's micro-batches, all-reduce the small model's gradients, then let the method
 * compute the global gradient norm and apply the clipped AdamW update.
 *   pretrain, prune: the small model's weights are the trained parameters.
 *   compress: P_in, P_out, A and the norm gains are; W_C is materialised each step. */
#ifndef PC_TRAINER_H
#define PC_TRAINER_H

#include "importance.h"
#include "project.h"
#include "run.h"

typedef struct trainer trainer;

typedef struct train_method {
    const char *name;
    /* Before the micro-batches (compress: owners materialise W_C, then all-gather). */
    int (*begin_step)(run_ctx *r, trainer *t, pc_err *e);
    /* Sum the small model's gradients over ranks (direct: all-reduce; compress: each
     * block's G reduced to its owner), once per step or, with reduce_per_backward, after
     * every backward. */
    int (*reduce_grads)(run_ctx *r, trainer *t, pc_err *e);
    /* Squared global norm of the trained parameters' gradient, the same on every rank. */
    int (*grad_sumsq)(run_ctx *r, trainer *t, double *sumsq, pc_err *e);
    /* Clipped AdamW update of every trained parameter. */
    void (*update)(run_ctx *r, trainer *t, int64_t step, float lr, float clip_scale);
    /* Before eval and saving (compress: materialise and gather the current W_C). */
    int (*finish)(run_ctx *r, trainer *t, pc_err *e);
    /* Set as the model's llama_stage_hook for the step's last backward (every backward
     * with reduce_per_backward), to start reduce_grads' work as gradients become final
     * (backend.overlap_comm); NULL: none. */
    llama_stage_hook on_grads;
} train_method;

struct trainer {
    const train_method *method;
    llama_model m;          /* the model whose forward/backward runs (small for compress/prune) */
    data_set *train, *valid;
    data_loader *loader;
    float *adam_m, *adam_v; /* optimizer moments of the trained parameters (buffers of m.be) */
    float *kept_grads;      /* compress.store_grads: the kept blocks' gradients, packed (NULL: none kept) */
    int64_t *kept_off;      /* (ps.n_blocks) a kept block's offset in kept_grads, else -1 */
    int32_t *batch;         /* (B, T+1) */
    int32_t *tokens, *targets; /* (B, T) */
    /* compress and prune */
    st_model *base;
    llama_config base_cfg;
    proj_indices idx;
    proj_set ps;            /* compress only */
    llama_model teacher;    /* distill: the frozen base, forward only */
    int has_teacher;
    double proj_flops;      /* per step */
    int capacity_known;     /* capacity was measured (run_capacity, compress.c) */
    int64_t capacity;       /* bytes this rank may use, the same for every plan of the run; 0: unknown */
    int has_plan;           /* the plan was checked against the device (check_fit): */
    int64_t plan_copies16;  /* its CUDA bf16 operand copies on this rank, bytes */
    int64_t plan_attn16;    /* its CUDA attention's bf16 copies of q, k, v, dO on this rank, bytes */
    int reduce_per_backward; /* compress.shard_grads: reduce_grads after every backward, on_grads on each */
    char base_print[24];    /* rank 0: model.base's fingerprint for the checkpoints' meta ("" not yet) */
    struct {                /* backend.overlap_comm: the model's hooks, called from inside its passes */
        int gather;         /* begin_step only begins the W_C gather: the first forward completes it */
        run_ctx *r;         /* set with the method that has hooks */
        int failed;         /* a hook's comm call failed: accumulate or reduce_grads reports err */
        pc_err err;
    } overlap;
    /* the checkpoint chosen to resume from (found and verified once per run) */
    int ckpt_picked;
    int64_t ckpt_step;      /* -1: none */
    char ckpt_path[1200];
    int *ckpt_rank_of;      /* pretrain, prune: the rank that writes each state tensor (NULL: not dealt yet) */
};

/* Direct training of the model's own weights (pretrain, prune). */
extern const train_method METHOD_DIRECT;
/* Projected Compression. */
extern const train_method METHOD_PROJECT;

/* Open data.train (and data.valid when set) for a model of vocab_size, and the loader. */
int trainer_open_data(run_ctx *r, trainer *t, int vocab_size, pc_err *e);
void trainer_free(trainer *t);

/* compress/prune/importance set-up: open the base, score and select indices (saved as
 * RUN/importance.txt), shape the small model and initialise it (projections or slices). */
int compress_setup(run_ctx *r, trainer *t, pc_err *e);
/* run.mode: importance alone. */
int mode_importance(run_ctx *r, pc_err *e);

/* 0, or -1 with e what a comm call inside one of the model's hooks reported (then cleared). */
int trainer_overlap_result(trainer *t, pc_err *e);

#endif
