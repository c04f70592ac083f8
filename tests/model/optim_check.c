/* optim_check: run AdamW steps with the lr schedule and gradient clipping on given
 * parameters and gradients, for comparison with torch.optim.AdamW in test_optim.py.
 *
 *   optim_check IN.safetensors OUT.safetensors LR WARMUP MIN_RATIO BETA1 BETA2 EPS WD MAX_NORM SCHED_STEPS
 *
 * IN holds "p_decay" (n1), "p_nodecay" (n2) and "grads" (S, n1+n2). Step s (0-based) of
 * S uses lr = optim_lr(s, S, WARMUP, LR, MIN_RATIO) and the clip factor of that step's
 * gradient norm. OUT holds the final "p_decay", "p_nodecay", the per-step "clip" (S) and
 * "lr" (SCHED_STEPS), the schedule over SCHED_STEPS steps with the same warmup. */
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "optim.h"
#include "safetensors.h"

static int fail(const pc_err *e)
{
    fprintf(stderr, "optim_check: %s\n", e->msg);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 12) {
        fprintf(stderr, "usage: optim_check IN OUT LR WARMUP MIN_RATIO BETA1 BETA2 EPS WD MAX_NORM SCHED_STEPS\n");
        return 2;
    }
    double lr = atof(argv[3]), min_ratio = atof(argv[5]), max_norm = atof(argv[10]);
    int64_t warmup = atoll(argv[4]), sched = atoll(argv[11]);
    optim_hparams h = {(float)atof(argv[6]), (float)atof(argv[7]), (float)atof(argv[8]), (float)atof(argv[9])};
    pc_err e = {{0}};
    st_model *in = NULL;
    if (st_open(argv[1], &in, &e)) return fail(&e);
    const st_tensor *tp1 = st_find(in, "p_decay"), *tp2 = st_find(in, "p_nodecay"), *tg = st_find(in, "grads");
    if (!tp1 || !tp2 || !tg || tg->ndim != 2) {
        fprintf(stderr, "optim_check: %s needs p_decay, p_nodecay, grads (S,n)\n", argv[1]);
        return 2;
    }
    int64_t n1 = st_numel(tp1), n2 = st_numel(tp2), n = n1 + n2, S = tg->shape[0];
    if (tg->shape[1] != n) {
        fprintf(stderr, "optim_check: grads has %lld columns, expected %lld\n", (long long)tg->shape[1], (long long)n);
        return 2;
    }
    float *p = pc_alloc_f32((size_t)n), *g = pc_alloc_f32((size_t)(S * n));
    if (st_read_f32(in, "p_decay", p, (size_t)n1, &e) || st_read_f32(in, "p_nodecay", p + n1, (size_t)n2, &e) ||
        st_read_f32(in, "grads", g, (size_t)(S * n), &e))
        return fail(&e);
    st_close(in);

    backend *be = backend_cpu_create(1);
    optim_segment segs[2] = {{0, n1, 1}, {n1, n2, 0}};
    optim_adamw opt;
    if (optim_init(&opt, be, n, segs, 2, &h, &e)) return fail(&e);
    float *clip = pc_alloc_f32((size_t)S), *lrs = pc_alloc_f32((size_t)sched);
    for (int64_t s = 0; s < S; s++) {
        const float *gs = g + s * n; // (n)
        clip[s] = optim_clip_scale_sq(be->ops->sumsq(be, gs, (size_t)n), max_norm);
        optim_step(&opt, p, gs, (float)optim_lr(s, S, warmup, lr, min_ratio), clip[s]);
    }
    for (int64_t s = 0; s < sched; s++) lrs[s] = (float)optim_lr(s, sched, warmup, lr, min_ratio);

    st_item items[4] = {
        {.name = "p_decay", .ndim = 1, .shape = {n1}, .data = p},
        {.name = "p_nodecay", .ndim = 1, .shape = {n2}, .data = p + n1},
        {.name = "clip", .ndim = 1, .shape = {S}, .data = clip},
        {.name = "lr", .ndim = 1, .shape = {sched}, .data = lrs},
    };
    if (st_write(argv[2], items, 4, ST_F32, &e)) return fail(&e);
    optim_free(&opt);
    backend_destroy(be);
    free(p);
    free(g);
    free(clip);
    free(lrs);
    return 0;
}
