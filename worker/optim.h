/* optim: AdamW over a flat parameter buffer, the learning-rate schedule and gradient
 * clipping.
 *
 * The flat buffer is described by segments (offset, count, decay flag), one per tensor,
 * so that norm gains (1-D tensors) can be excluded from weight decay. Moments m and v
 * are fp32 device buffers of the same length as the parameters. */
#ifndef PC_OPTIM_H
#define PC_OPTIM_H

#include "backend.h"
#include "util.h"

typedef struct optim_hparams {
    float beta1, beta2, eps, weight_decay;
} optim_hparams;

typedef struct optim_segment {
    int64_t offset, numel; /* elements of the flat buffer */
    int decay;             /* 1: apply weight decay */
} optim_segment;

typedef struct optim_adamw {
    backend *be;
    int64_t n;            /* parameters */
    float *m, *v;         /* (n) device, zero at init */
    optim_segment *segs;
    int n_segs;
    int64_t step;         /* steps taken so far */
    optim_hparams h;
} optim_adamw;

/* Segments must lie inside [0, n) and not overlap; elements outside every segment are
 * never updated. Errors name the offending segment. */
int optim_init(optim_adamw *o, backend *be, int64_t n, const optim_segment *segs, int n_segs,
               const optim_hparams *h, pc_err *e);
void optim_free(optim_adamw *o);
/* One AdamW step (torch.optim.AdamW semantics, decoupled decay) with learning rate lr;
 * gradients are multiplied by grad_scale first (use optim_clip_scale). */
void optim_step(optim_adamw *o, float *params, const float *grads, float lr, float grad_scale);

/* Learning rate at step (0-based) of total_steps: linear warmup from 0.1*lr at step 0 to
 * lr at step warmup_steps, then cosine decay reaching min_lr_ratio*lr at step
 * total_steps-1 (and staying there after it). */
double optim_lr(int64_t step, int64_t total_steps, int64_t warmup_steps, double lr, double min_lr_ratio);
/* Clip factor for a global gradient norm: min(1, max_norm / (norm + 1e-6)) as
 * torch.nn.utils.clip_grad_norm_; 1 when max_norm <= 0. */
float optim_clip_scale(double grad_norm, double max_norm);
/* The same from the squared norm (a sum of sumsq over tensors or ranks). */
float optim_clip_scale_sq(double grad_sumsq, double max_norm);

#endif
