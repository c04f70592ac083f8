/* compress: set-up of the compress and prune modes (base model, importance scores and
 * kept indices, the small model), the Projected Compression update, and the importance
 * mode. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "checkpoint.h"
#include "plan.h"
#include "stream.h"
#include "trainer.h"

/* ---- importance ---- */

/* stream_layer_fn: a layer's activations into the scores. */
static int score_layer(void *ctx, const llama_model *m, int l, int64_t rows, pc_err *e) {
    (void)e;
    importance_accumulate_layer(ctx, m, 0, l, rows);
    return 0;
}

/* Activation scores over compress.calibration_sequences windows of the train data
 * (pseudo-step -1 of the sampler): rank r scores windows r, r+R, ... and the sums are
 * all-reduced. The base is streamed one decoder layer at a time: a rank holds its
 * windows' hidden states (n, T, d) and one layer, never the whole base. */
static int score_activation(run_ctx *r, trainer *t, importance_scores *s, pc_err *e) {
    const pc_config *c = &r->cfg;
    const llama_config *bc = &t->base_cfg;
    int B = c->train.micro_batch, T = c->data.seq_len, d = bc->d_model;
    int64_t n_seq = c->compress.calibration_sequences;
    int64_t mine = n_seq > r->rank ? (n_seq - r->rank + r->world - 1) / r->world : 0;
    int64_t n_tok = mine * T;
    int32_t *win = pc_malloc(sizeof(int32_t) * ((size_t)T + 1));
    int32_t *tokens = pc_malloc(sizeof(int32_t) * (size_t)(n_tok ? n_tok : 1)); /* (mine, T) */
    float *h = pc_alloc_f32((size_t)(n_tok * d));                              /* (mine, T, d) */
    int rc = 0;
    for (int64_t j = 0; j < mine && rc == 0; j++) {
        int64_t w = r->rank + j * r->world;
        int64_t off = data_sample_offset((uint64_t)c->run.seed, -1, w, data_n_tokens(t->train), T);
        rc = data_read(t->train, off, (int64_t)T + 1, win, e);
        memcpy(tokens + j * T, win, sizeof(int32_t) * (size_t)T);
    }
    if (rc == 0) rc = stream_embed(t->base, bc, tokens, n_tok, 0, h, e);
    /* every rank, one without windows too (it reads no layer: 960 of 1024 ranks at the
     * default 64 sequences), so that none waits a whole pass over the base at once */
    rc = stream_layers(r, t->base, bc, LLAMA_F32, h, mine, B, T, score_layer, s, rc != 0, e);
    free(win);
    free(tokens);
    free(h);
    if (rc != 0) return -1;
    if (comm_all_reduce(r->comm, s->d, s->d, (size_t)s->d_model, COMM_F64, COMM_SUM, e) != 0) return -1;
    for (int l = 0; l < s->n_layers; l++)
        if (comm_all_reduce(r->comm, s->ff[l], s->ff[l], (size_t)s->d_ff[l], COMM_F64, COMM_SUM, e) != 0) return -1;
    return 0;
}

/* Magnitude scores: each rank reads a share of the layers (every rank read the whole
 * base), the ranks agree that none failed, and the sums give each the whole scores. */
static int score_magnitude(run_ctx *r, trainer *t, importance_scores *s, pc_err *e) {
    const llama_config *bc = &t->base_cfg;
    size_t n = (size_t)s->n_layers * (size_t)s->d_model;
    double *d_layer = pc_calloc(n, sizeof *d_layer); /* (n_layers, d_model) */
    int rc = importance_magnitude(s, bc, t->base, r->rank, r->world, d_layer, e);
    int any = run_agree(r, rc, e, "magnitude importance: another rank failed reading its layers of %s (see its log)",
                        r->cfg.model.base) != 0;
    if (!any && r->world > 1 && comm_all_reduce(r->comm, d_layer, d_layer, n, COMM_F64, COMM_SUM, e) != 0) any = 1;
    for (int l = 0; !any && r->world > 1 && l < s->n_layers; l++)
        if (comm_all_reduce(r->comm, s->ff[l], s->ff[l], (size_t)s->d_ff[l], COMM_F64, COMM_SUM, e) != 0) any = 1;
    if (!any) importance_sum_layers(s, d_layer);
    free(d_layer);
    return any ? -1 : 0;
}

/* Kept indices for the small model's widths (sc: the base's where compress.d_model or
 * d_ff is unset, as importance mode allows): from a checkpoint being resumed, else
 * scored (RUN/importance.txt). */
static int select_indices(run_ctx *r, trainer *t, const llama_config *sc, pc_err *e) {
    const pc_config *c = &r->cfg;
    const int *d_ff_c = sc->d_ff_layer;
    int resumed = 0; /* a checkpoint holds the indices its state was trained with */
    if (strcmp(c->run.mode, "importance") && ckpt_resume_indices(r, t, d_ff_c, &resumed, e) != 0) return -1;
    if (resumed) return 0;
    importance_scores s;
    importance_alloc(&s, &t->base_cfg);
    const char *how = c->compress.importance;
    int rc = 0;
    double t0 = pc_now();
    if (!strcmp(how, "activation"))
        rc = score_activation(r, t, &s, e);
    else if (!strcmp(how, "magnitude"))
        rc = score_magnitude(r, t, &s, e);
    else
        importance_random(&s, (uint64_t)c->run.seed);
    if (rc == 0) {
        importance_select(&s, sc->d_model, d_ff_c, &t->idx);
        LOGI(&r->log, "importance (%s) in %.1f s: keeping %d of %d d_model dims", how, pc_now() - t0, sc->d_model,
             t->base_cfg.d_model);
        if (r->rank == 0) {
            char path[1100];
            snprintf(path, sizeof path, "%s/importance.txt", r->run_dir);
            rc = importance_save(&s, &t->idx, path, e);
        }
    }
    importance_free(&s);
    return rc;
}

/* ---- set-up ---- */

/* Bytes this rank may use: backend.memory_gib, else the device's memory free when first
 * asked (check_fit, before any of the plan's buffers exist: what the context, the
 * libraries and other processes on the device leave) and the attention scratch that
 * backend.attention auto's probe left (the plan counts it), the same for the run's later
 * plans (0: unknown, a host-memory backend). */
static int64_t run_capacity(const run_ctx *r, trainer *t) {
    if (!t->capacity_known) {
        double gib = r->cfg.backend.memory_gib;
        if (gib > 0)
            t->capacity = (int64_t)(gib * 1073741824.0);
        else if (r->be->ops->mem_free) /* a full device is known to hold nothing more, not unknown */
            t->capacity = PC_MAX((int64_t)1,
                                 (int64_t)(be_mem_free(r->be) + backend_cuda_attention_copies_bytes(r->be)));
        t->capacity_known = 1;
    }
    return t->capacity;
}

/* The plan of this job on this run's ranks and backend. */
static int build_plan(const run_ctx *r, trainer *t, const llama_config *small, plan *p, pc_err *e) {
    plan_opts o;
    plan_opts_from_config(&r->cfg, &o);
    plan_opts_set_device(&o, !strcmp(r->be->ops->name, "cuda")); /* the backend in use, as `auto` resolved it */
    /* bf16 attention where this device's kernels take the head_dim (their shared memory
     * per block against its limit), which the shape rule of a dry run assumes */
    if (o.attn_copies && !(r->be->ops->attention_16 && r->be->ops->attention_16(r->be, small->head_dim)))
        o.attn_copies = 0;
    o.capacity = run_capacity(r, t);
    return plan_build(p, &t->base_cfg, small, r->world, &o, e);
}

/* Before any weight is read: on a device of known size, the plan's total for this rank
 * must fit (else a clear error now instead of running out of memory later). */
static int check_fit(run_ctx *r, trainer *t, const llama_config *small, pc_err *e) {
    int64_t capacity = run_capacity(r, t);
    if (capacity == 0 || !strcmp(r->cfg.run.mode, "importance")) return 0;
    plan p;
    if (build_plan(r, t, small, &p, e) != 0) return -1;
    char device[256];
    if (r->cfg.backend.memory_gib > 0)
        snprintf(device, sizeof device, "backend.memory_gib on the %s backend (%s)", r->be->ops->name, r->be->info);
    else
        snprintf(device, sizeof device, "the free memory of the %s device (%s; %.1f GiB in all)", r->be->ops->name,
                 r->be->info, (double)be_mem_total(r->be) / 1073741824.0);
    int rc = plan_check_fit(&p, r->rank, capacity, device, e);
    t->has_plan = 1;
    t->plan_copies16 = p.gemm_bf16_bytes;
    t->plan_attn16 = p.attn_copies_bytes;
    if (rc == 0)
        LOGI(&r->log, "the plan needs %.3f of the %.3f GiB this rank may use",
             (double)p.ranks[r->rank].total_bytes / 1073741824.0, (double)capacity / 1073741824.0);
    plan_free(&p);
    return rc;
}

/* compress.store_grads: the blocks of this rank the plan keeps, packed in kept_grads. */
static int plan_kept_grads(run_ctx *r, trainer *t, const plan *p, pc_err *e) {
    const proj_set *ps = &t->ps;
    int64_t total = 0, gin, gout, ga;
    int kept = 0, mine = 0;
    t->kept_off = pc_malloc((size_t)(ps->n_blocks > 0 ? ps->n_blocks : 1) * sizeof *t->kept_off);
    for (int i = 0; i < ps->n_blocks; i++) {
        const plan_block *pb = plan_block_at(p, i);
        t->kept_off[i] = -1;
        if (ps->blocks[i].owner != r->rank) continue;
        mine++;
        if (!pb->kept) continue;
        int64_t n = proj_grad_layout(ps, i, &gin, &gout, &ga);
        if (n != pb->own_numel)
            return pc_errorf(e, "plan: block %s keeps %lld gradient elements here, the plan %lld", pb->name,
                             (long long)n, (long long)pb->own_numel);
        t->kept_off[i] = total;
        total += pb->own_numel;
        kept++;
    }
    const plan_rank *rk = &p->ranks[r->rank];
    if (total > 0) t->kept_grads = be_alloc(r->be, (size_t)total);
    LOGI(&r->log, "compress.store_grads %s: gradients of %d of %d blocks kept here (%.1f MiB, plan %.1f), the "
         "update recomputes the rest (%.3g FLOPs per step)", r->cfg.compress.store_grads, kept, mine,
         (double)total * 4 / 1048576.0, (double)rk->grads_bytes / 1048576.0, rk->recompute_flops);
    return 0;
}

/* RUN/plan.txt, from rank 0. */
static int write_plan(const run_ctx *r, const plan *p, pc_err *e) {
    if (r->rank != 0) return 0;
    char path[1100];
    snprintf(path, sizeof path, "%s/plan.txt", r->run_dir);
    FILE *f = fopen(path, "w");
    int rc = f ? plan_write(p, f) : -1;
    if (f && fclose(f) != 0) rc = -1;
    return rc == 0 ? 0 : pc_errorf(e, "%s: cannot write the plan", path);
}

/* prune's plan (the whole small model on every rank) in RUN/plan.txt. */
static int prune_plan(run_ctx *r, trainer *t, pc_err *e) {
    plan p;
    if (build_plan(r, t, &t->m.cfg, &p, e) != 0) return -1;
    int rc = write_plan(r, &p, e);
    if (rc == 0)
        LOGI(&r->log, "prune: the plan holds %.1f MiB on each rank (plan.txt)",
             (double)p.ranks[r->rank].total_bytes / 1048576.0);
    plan_free(&p);
    return rc;
}

/* The sharding plan (RUN/plan.txt) and this rank's blocks of it. */
static int proj_setup(run_ctx *r, trainer *t, pc_err *e) {
    plan p;
    if (build_plan(r, t, &t->m.cfg, &p, e) != 0) return -1;
    if (write_plan(r, &p, e) != 0) {
        plan_free(&p);
        return -1;
    }
    proj_spec *specs = pc_calloc((size_t)p.n_blocks, sizeof *specs);
    for (int i = 0; i < p.n_blocks; i++) {
        const plan_block *b = plan_block_at(&p, i);
        static const proj_kind kinds[] = {[PLAN_WHOLE] = PROJ_WHOLE, [PLAN_ROWS] = PROJ_ROWS, [PLAN_COLS] = PROJ_COLS,
                                          [PLAN_NORM] = PROJ_NORM};
        specs[i] = (proj_spec){b->name, kinds[b->kind], b->r0, b->r1, b->owner};
    }
    int rc = proj_init(&t->ps, r->be, t->base, &t->base_cfg, &t->m, &t->idx, specs, p.n_blocks, r->rank, r->world,
                       !strcmp(r->cfg.model.dtype, "bf16"), e);
    LOGI(&r->log, "plan: %d blocks (%d matrices split), balance %.2f; this rank owns %lld trainable parameters",
         p.n_blocks, p.n_split, plan_balance(&p), (long long)t->ps.n_params);
    double busiest;
    int idle = plan_idle_ranks(&p, &busiest);
    if (r->rank == 0 && idle > 0)
        LOGW(&r->log, "%d of %d ranks own no block of the plan's %d: the projection work (%.3f TFLOP/step on the "
                      "busiest rank) no longer shrinks with more ranks; the model's forward and backward still do",
             idle, r->world, p.n_blocks, busiest / 1e12);
    if (rc == 0) {
        LOGI(&r->log, "W_C/G exchange buffer: %lld bytes here (plan: %lld)", (long long)t->ps.xchg_bytes,
             (long long)p.ranks[r->rank].xchg_bytes);
        LOGI(&r->log, "projection work buffers: %lld bytes here (plan: %lld)", (long long)proj_scratch_bytes(&t->ps),
             (long long)(p.ranks[r->rank].scratch_bytes - p.gemm_bf16_bytes));
    }
    if (rc == 0) rc = plan_kept_grads(r, t, &p, e);
    if (rc == 0 && r->cfg.compress.shard_grads) { /* the model holds two stage windows of G (grad_windows) */
        proj_shard_grads(&t->ps);
        t->reduce_per_backward = 1;
        LOGI(&r->log, "sharded G: the owned blocks' sums %lld bytes here (plan: %lld), stage windows 2 x %lld bytes "
             "(plan: 2 x %lld)", (long long)(t->ps.gacc_n * (int64_t)sizeof(float)),
             (long long)p.ranks[r->rank].gsum_bytes, (long long)(t->m.gwin_n * (int64_t)sizeof(float)),
             (long long)p.gwin_bytes);
        int64_t held = (t->ps.gacc_n + 2 * t->m.gwin_n) * (int64_t)sizeof(float),
                whole = t->m.n_params * (int64_t)sizeof(float);
        if (held >= whole)
            LOGW(&r->log, "compress.shard_grads holds %.1f MiB of G here, no less than the whole G's %.1f MiB: it "
                 "saves memory only on more ranks", (double)held / 1048576.0, (double)whole / 1048576.0);
    }
    free(specs);
    plan_free(&p);
    return rc;
}

int compress_setup(run_ctx *r, trainer *t, pc_err *e) {
    const pc_config *c = &r->cfg;
    if (hf_config_load(c->model.base, &t->base_cfg, e) != 0) return -1;
    if (hf_config_validate(&t->base_cfg, c->model.base, e) != 0) return -1;
    run_warn_seq_len(r, &t->base_cfg);
    llama_config sc; /* the small model: same heads, narrower widths, untied */
    if (plan_small_config(c, &t->base_cfg, &sc, e) != 0) return -1;
    if (st_open(c->model.base, &t->base, e) != 0 || llama_check_tied_head(t->base, &t->base_cfg, e) != 0) return -1;
    if (!r->be && run_backend(r, e) != 0) return -1;
    if (check_fit(r, t, &sc, e) != 0) return -1;
    if (trainer_open_data(r, t, t->base_cfg.vocab_size, e) != 0) return -1;
    if (select_indices(r, t, &sc, e) != 0) return -1;
    if (!strcmp(c->run.mode, "importance")) return 0;

    run_model_use use = strcmp(c->run.mode, "prune") ? RUN_PROJECTED : RUN_TRAINED; /* prune trains the weights */
    if (run_llama_init(r, &t->m, &sc, c->train.micro_batch, use, e) != 0) return -1;
    if (c->distill.enabled) { /* the teacher: the whole frozen base on every rank (bf16 with model.dtype bf16) */
        llama_opts to = {.forward_only = 1, .weights = !strcmp(c->model.dtype, "bf16") ? LLAMA_BF16_ONLY : LLAMA_F32};
        if (llama_init_opts(&t->teacher, &t->base_cfg, r->be, c->train.micro_batch, c->data.seq_len, &to, e) != 0)
            return -1;
        t->has_teacher = 1;
        if (llama_load_safetensors(&t->teacher, c->model.base, e) != 0) return -1;
        LOGI(&r->log, "distillation from the base (%s weights): alpha %.3g, temperature %.3g",
             to.weights == LLAMA_BF16_ONLY ? "bf16" : "fp32", c->distill.alpha, c->distill.temperature);
    }
    if (!strcmp(c->run.mode, "prune")) {
        t->method = &METHOD_DIRECT;
        if (prune_plan(r, t, e) != 0) return -1;
        return proj_slice_base(t->base, &t->base_cfg, &t->m, &t->idx, e);
    }
    t->method = &METHOD_PROJECT;
    t->overlap.r = r; /* for the model's hooks (backend.overlap_comm) */
    if (proj_setup(r, t, e) != 0) return -1;
    t->proj_flops = proj_flops(&t->ps);
    LOGI(&r->log, "projections: %lld trainable parameters here, %d blocks in all, %.3g projection FLOPs per step",
         (long long)t->ps.n_params, t->ps.n_blocks, t->proj_flops);
    LOGI(&r->log, "frozen base slices here: %lld bytes in %s", (long long)t->ps.base_bytes,
         t->ps.base_bf16 ? "bf16" : "f32");
    t->adam_m = be_alloc(r->be, (size_t)t->ps.n_params);
    t->adam_v = be_alloc(r->be, (size_t)t->ps.n_params);
    return 0;
}

int mode_importance(run_ctx *r, pc_err *e) {
    static trainer t;
    memset(&t, 0, sizeof t);
    int rc = compress_setup(r, &t, e);
    trainer_free(&t);
    return rc;
}

/* ---- the Projected Compression update ---- */

/* llama_stage_hook for the forward: the W_C of forward stage `stage` is needed now. */
static void project_on_weights(void *ctx, int stage) {
    trainer *t = ctx;
    if (!t->overlap.failed && proj_gather_stage(&t->ps, &t->m, t->overlap.r->dcomm, stage, &t->overlap.err) != 0)
        t->overlap.failed = 1;
}

/* W_C materialised by the owners and gathered; with t->overlap.gather, only begun: the
 * next forward completes it stage by stage (project_on_weights). */
static int project_begin(run_ctx *r, trainer *t, pc_err *e) {
    proj_materialize(&t->ps, &t->m);
    if (!t->overlap.gather) return proj_gather(&t->ps, &t->m, r->dcomm, e);
    t->m.on_weights = project_on_weights;
    t->m.on_weights_ctx = t;
    return proj_gather_begin(&t->ps, &t->m, r->dcomm, e);
}


/* G to the owners: what on_grads started during the backward, and the rest. */
static int project_reduce(run_ctx *r, trainer *t, pc_err *e) {
    if (trainer_overlap_result(t, e) != 0) return -1;
    return proj_reduce_finish(&t->ps, &t->m, r->dcomm, e);
}

/* llama_stage_hook: the blocks whose G is final at `stage` start their reduce. */
static void project_on_grads(void *ctx, int stage) {
    trainer *t = ctx;
    if (!t->overlap.failed && proj_reduce_start(&t->ps, &t->m, t->overlap.r->dcomm, stage, &t->overlap.err) != 0)
        t->overlap.failed = 1;
}

/* First pass: every owned block's gradient, shared factors summed over their blocks; the
 * blocks compress.store_grads keeps write theirs straight into kept_grads, for the update. */
static int project_sumsq(run_ctx *r, trainer *t, double *sumsq, pc_err *e) {
    proj_set *ps = &t->ps;
    double s = 0;
    int64_t gin, gout, ga;
    if (ps->shared_grad_n > 0) be_zero(r->be, ps->shared_grad, (size_t)ps->shared_grad_n);
    for (int i = 0; i < ps->n_blocks; i++) {
        if (ps->blocks[i].owner != r->rank) continue;
        float *kept = t->kept_off[i] >= 0 ? t->kept_grads + t->kept_off[i] : NULL; /* else the block scratch */
        s += proj_grad_block(ps, i, &t->m, 1, kept, &gin, &gout, &ga);
    }
    if (r->world > 1 && ps->shared_grad_n > 0 &&
        comm_all_reduce(r->dcomm, ps->shared_grad, ps->shared_grad, (size_t)ps->shared_grad_n, COMM_F32, COMM_SUM,
                        e) != 0)
        return -1;
    if (r->rank == 0) s += r->be->ops->sumsq(r->be, ps->shared_grad, (size_t)ps->shared_grad_n);
    if (r->world > 1 && comm_all_reduce(r->comm, &s, &s, 1, COMM_F64, COMM_SUM, e) != 0) return -1;
    *sumsq = s;
    return 0;
}

static void adamw(run_ctx *r, trainer *t, int64_t off, const float *g, int64_t n, float lr, float wd, float clip,
                  int64_t step) {
    const pc_config *c = &r->cfg;
    r->be->ops->adamw(r->be, t->ps.params + off, g, t->adam_m + off, t->adam_v + off, (size_t)n, lr,
                      (float)c->train.beta1, (float)c->train.beta2, 1e-8f, wd, clip, step + 1);
}

/* Second pass: recompute each owned block's gradients (never all at once), or take those
 * kept (compress.store_grads), and update; then the shared factors this rank holds, from
 * their all-reduced gradients. */
static void project_update(run_ctx *r, trainer *t, int64_t step, float lr, float clip) {
    float wd = (float)r->cfg.train.weight_decay;
    proj_set *ps = &t->ps;
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->owner != r->rank) continue;
        int64_t gin, gout, ga;
        const float *g = ps->grad; /* gradients at gin, gout, ga */
        if (t->kept_off[i] >= 0) { /* written by project_sumsq, where proj_grad_layout puts them */
            g = t->kept_grads + t->kept_off[i];
            proj_grad_layout(ps, i, &gin, &gout, &ga);
        } else {
            proj_grad_block(ps, i, &t->m, 0, NULL, &gin, &gout, &ga);
        }
        if (b->kind == PROJ_NORM) {
            adamw(r, t, b->a, g + ga, b->d_in_c, lr, 0.0f, clip, step);
            continue;
        }
        if (gin >= 0) adamw(r, t, b->p_in, g + gin, (int64_t)b->d_in * b->d_in_c, lr, wd, clip, step);
        if (gout >= 0) adamw(r, t, b->p_out, g + gout, (int64_t)b->d_out_c * b->d_out, lr, wd, clip, step);
        adamw(r, t, b->a, g + ga, (int64_t)b->d_out_c * b->d_in_c, lr, wd, clip, step);
    }
    for (int s = 0; s < ps->n_shared; s++) {
        const proj_shared *sh = &ps->shared[s];
        if (sh->param_off >= 0) adamw(r, t, sh->param_off, ps->shared_grad + sh->grad_off, sh->numel, lr, wd, clip, step);
    }
}

const train_method METHOD_PROJECT = {"project", project_begin, project_reduce, project_sumsq, project_update,
                                     project_begin, project_on_grads};
