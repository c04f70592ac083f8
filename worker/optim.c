/* optim: AdamW over segments of a flat buffer, lr schedule, clipping (see optim.h). */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int optim_init(optim_adamw *o, backend *be, int64_t n, const optim_segment *segs, int n_segs,
               const optim_hparams *h, pc_err *e)
{
    memset(o, 0, sizeof(*o));
    int64_t end = 0;
    for (int i = 0; i < n_segs; i++) {
        const optim_segment *s = &segs[i];
        if (s->offset < 0 || s->numel < 0 || s->offset + s->numel > n)
            return pc_errorf(e, "optim: segment %d [%lld, +%lld) lies outside the %lld parameters", i,
                             (long long)s->offset, (long long)s->numel, (long long)n);
        if (s->offset < end)
            return pc_errorf(e, "optim: segment %d at offset %lld overlaps or precedes the previous one", i,
                             (long long)s->offset);
        end = s->offset + s->numel;
    }
    o->be = be;
    o->n = n;
    o->h = *h;
    o->n_segs = n_segs;
    o->segs = pc_calloc((size_t)(n_segs ? n_segs : 1), sizeof(optim_segment));
    memcpy(o->segs, segs, (size_t)n_segs * sizeof(optim_segment));
    o->m = be_alloc(be, (size_t)n);
    o->v = be_alloc(be, (size_t)n);
    be_zero(be, o->m, (size_t)n);
    be_zero(be, o->v, (size_t)n);
    return 0;
}

void optim_free(optim_adamw *o)
{
    if (!o->be) return;
    be_free(o->be, o->m);
    be_free(o->be, o->v);
    free(o->segs);
    memset(o, 0, sizeof(*o));
}

void optim_step(optim_adamw *o, float *params, const float *grads, float lr, float grad_scale)
{
    o->step++;
    for (int i = 0; i < o->n_segs; i++) {
        const optim_segment *s = &o->segs[i];
        o->be->ops->adamw(o->be, params + s->offset, grads + s->offset, o->m + s->offset, o->v + s->offset,
                          (size_t)s->numel, lr, o->h.beta1, o->h.beta2, o->h.eps, s->decay ? o->h.weight_decay : 0.0f,
                          grad_scale, o->step);
    }
}

double optim_lr(int64_t step, int64_t total_steps, int64_t warmup_steps, double lr, double min_lr_ratio)
{
    if (step < warmup_steps) return lr * (0.1 + 0.9 * (double)step / (double)warmup_steps);
    int64_t span = total_steps - 1 - warmup_steps; /* 0: the one step after warmup is the peak's */
    double p = span > 0 ? (double)(step - warmup_steps) / (double)span : 0.0;
    if (p > 1.0) p = 1.0;
    double min_lr = min_lr_ratio * lr;
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + cos(M_PI * p));
}

float optim_clip_scale(double grad_norm, double max_norm)
{
    if (max_norm <= 0.0) return 1.0f;
    double coef = max_norm / (grad_norm + 1e-6);
    return coef < 1.0 ? (float)coef : 1.0f;
}

float optim_clip_scale_sq(double grad_sumsq, double max_norm)
{
    return optim_clip_scale(sqrt(grad_sumsq), max_norm);
}
