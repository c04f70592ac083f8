/* train: the data-parallel training loop shared by pretrain, prune and compress.
 *
 * One optimizer step on R ranks with global batch G and micro-batch B:
 *   the method begins the step (compress: materialise W_C); each rank runs
 *   n_micro = G / (R*B) micro-batches (samples r*G/R + m*B ...), with the loss gradient
 *   scaled by 1/(n_micro*R) so that the all-reduced SUM of the small model's gradients
 *   is the gradient of the global-batch mean loss; then the method computes the global
 *   gradient norm, and every rank applies the same clipped AdamW update. */
#include <math.h>
#include <errno.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cuda.h"
#include "checkpoint.h"
#include "optim.h"
#include "trainer.h"

int trainer_open_data(run_ctx *r, trainer *t, int vocab_size, pc_err *e) {
    const pc_config *c = &r->cfg;
    const char *globs[PC_CONFIG_MAX_GLOBS];
    for (int i = 0; i < c->data.n_train; i++) globs[i] = c->data.train[i];
    if (data_open(globs, c->data.n_train, vocab_size, c->data.seq_len + 1, &t->train, e) != 0)
        return pc_error_wrap(e, "data.train");
    if (c->data.n_valid > 0 && open_valid(r, vocab_size, &t->valid, e) != 0) return -1;
    warn_data_sets(r, t->train, t->valid);
    return data_loader_create(t->train, (uint64_t)c->run.seed, c->data.seq_len, c->train.micro_batch, &t->loader, e);
}

void trainer_free(trainer *t) {
    if (t->loader) data_loader_destroy(t->loader);
    if (t->train) data_close(t->train);
    if (t->valid) data_close(t->valid);
    float *dev[] = {t->adam_m, t->adam_v, t->kept_grads}; /* buffers of the model's backend */
    for (size_t i = 0; i < PC_ARRAY_LEN(dev); i++)
        if (dev[i]) be_free(t->m.be, dev[i]);
    free(t->kept_off);
    free(t->ckpt_rank_of);
    free(t->batch);
    free(t->tokens);
    free(t->targets);
    if (t->m.tensors) llama_free(&t->m);
    if (t->has_teacher) llama_free(&t->teacher);
    if (t->ps.params) proj_free(&t->ps);
    if (t->idx.idx_d) proj_indices_free(&t->idx, t->base_cfg.n_layers);
    if (t->base) st_close(t->base);
    memset(t, 0, sizeof *t);
}

/* x with %g, a NaN as "nan" whatever its sign bit (printf writes "-nan" for some). */
static void fmt_value(char *out, size_t n, double x) {
    if (isnan(x))
        snprintf(out, n, "nan");
    else
        snprintf(out, n, "%g", x);
}

/* ---- direct training of the model's weights (pretrain, prune) ---- */

/* The weights the products read: the bf16 copy of the fp32 weights, after an update or a
 * resume (nothing without a copy). */
static int direct_begin(run_ctx *r, trainer *t, pc_err *e) {
    (void)r;
    (void)e;
    llama_refresh_w16(&t->m);
    return 0;
}

/* (n_params,) gradients summed over ranks: every rank then holds the same. */
static int direct_reduce(run_ctx *r, trainer *t, pc_err *e) {
    if (r->world == 1) return 0;
    return comm_all_reduce(r->dcomm, t->m.grads, t->m.grads, (size_t)t->m.n_params, COMM_F32, COMM_SUM, e);
}

static int direct_sumsq(run_ctx *r, trainer *t, double *sumsq, pc_err *e) {
    (void)e;
    *sumsq = r->be->ops->sumsq(r->be, t->m.grads, (size_t)t->m.n_params);
    return 0;
}

/* AdamW on every tensor; 1-D tensors (norm gains) get no weight decay. */
static void direct_update(run_ctx *r, trainer *t, int64_t step, float lr, float clip) {
    const pc_config *c = &r->cfg;
    llama_model *m = &t->m;
    for (int i = 0; i < llama_n_tensors(m); i++) {
        const llama_tensor *ti = llama_tensor_at(m, i);
        float wd = ti->ndim == 1 ? 0.0f : (float)c->train.weight_decay;
        r->be->ops->adamw(r->be, m->params + ti->offset, m->grads + ti->offset, t->adam_m + ti->offset,
                          t->adam_v + ti->offset, (size_t)ti->numel, lr, (float)c->train.beta1,
                          (float)c->train.beta2, 1e-8f, wd, clip, step + 1);
    }
}

const train_method METHOD_DIRECT = {"direct", direct_begin, direct_reduce, direct_sumsq, direct_update, direct_begin,
                                    NULL};

/* ---- the loop ---- */

int trainer_overlap_result(trainer *t, pc_err *e) {
    if (!t->overlap.failed) return 0;
    t->overlap.failed = 0;
    *e = t->overlap.err;
    return -1;
}

/* Forward and backward over this rank's micro-batches of `step`; returns the sum of
 * micro-batch mean losses in *loss_sum. Gradients accumulate into t->m's grads. */
static int accumulate(run_ctx *r, trainer *t, int64_t step, int n_micro, double *loss_sum, pc_err *e) {
    const pc_config *c = &r->cfg;
    int B = c->train.micro_batch, T = c->data.seq_len;
    int64_t per_rank = (int64_t)c->train.global_batch / r->world;
    llama_zero_grad(&t->m);
    llama_set_loss_scale(&t->m, 1.0f / (float)(n_micro * r->world));
    *loss_sum = 0.0;
    for (int mi = 0; mi < n_micro; mi++) {
        int64_t first = r->rank * per_rank + (int64_t)mi * B;
        if (data_loader_get(t->loader, step, first, t->batch, e) != 0) return -1;
        for (int b = 0; b < B; b++) { /* (B, T+1) -> inputs (B,T), targets shifted by one */
            memcpy(t->tokens + (size_t)b * T, t->batch + (size_t)b * (T + 1), sizeof(int32_t) * (size_t)T);
            memcpy(t->targets + (size_t)b * T, t->batch + (size_t)b * (T + 1) + 1, sizeof(int32_t) * (size_t)T);
        }
        if (mi + 1 == n_micro) data_loader_hint(t->loader, step + 1, r->rank * per_rank);
        float loss = llama_forward(&t->m, t->tokens, t->targets);
        if (t->m.on_weights) { /* this forward completed the W_C gather the step began */
            t->m.on_weights = NULL;
            if (trainer_overlap_result(t, e) != 0) return -1;
        }
        if (t->has_teacher) { /* (1-a) CE + a T^2 KL(teacher || student) */
            llama_forward(&t->teacher, t->tokens, NULL);
            loss = llama_distill(&t->m, t->teacher.logits, (float)c->distill.alpha, (float)c->distill.temperature);
        }
        *loss_sum += loss;
        int last = mi + 1 == n_micro; /* the gradients are final in this backward */
        if (t->method->on_grads && (t->reduce_per_backward || (last && r->world > 1 && c->backend.overlap_comm))) {
            t->m.on_grads = t->method->on_grads;
            t->m.on_grads_ctx = t;
        }
        llama_backward(&t->m);
        t->m.on_grads = NULL;
        if (t->reduce_per_backward && t->method->reduce_grads(r, t, e) != 0) return -1;
    }
    return 0;
}

static int maybe_eval(run_ctx *r, trainer *t, int64_t step, int force, pc_err *e) {
    const pc_config *c = &r->cfg;
    if (!t->valid) return 0;
    if (!force && !(c->eval.every_steps > 0 && step % c->eval.every_steps == 0)) return 0;
    double vl;
    if (eval_valid(r, &t->m, t->valid, &vl, e) != 0) return -1;
    log_eval(r, (long)step, vl, hf_config_n_params(&t->m.cfg));
    return 0;
}

/* All ranks agree whether a stop signal reached any of them (at a step boundary). */
static int agree_stop(run_ctx *r, int *stop, pc_err *e) {
    int local = *r->stop_flag != 0;
    return comm_all_reduce(r->comm, &local, stop, 1, COMM_I32, COMM_MAX, e);
}

/* The base model's tokenizer files travel with the output (the vocabulary is unchanged). */
static int copy_tokenizer(const char *from, const char *to, pc_err *e) {
    for (const char *const *f = run_tokenizer_files; *f; f++) {
        char src[2048], dst[2048], *buf;
        size_t len;
        if (pc_path_join(src, sizeof src, from, *f) != 0 || pc_path_join(dst, sizeof dst, to, *f) != 0)
            return pc_errorf(e, "%s: path too long", from);
        if (access(src, F_OK) != 0) continue;
        if (pc_read_file(src, &buf, &len, e) != 0) return -1;
        int rc = pc_write_file_atomic(dst, buf, len, e);
        free(buf);
        if (rc != 0) return -1;
    }
    return 0;
}

/* The final model: written whole into a sibling FINAL.tmp-PID, then renamed into place
 * (an earlier FINAL, from a rerun of a finished job, moved aside first and removed
 * after), so that FINAL is never a half-written model. What FINAL holds is checked
 * again first (run_final_check ran before the training): anything but a model
 * projcompd wrote stays, and the new model is left in FINAL.tmp-PID. */
static int save_final(run_ctx *r, trainer *t, pc_err *e) {
    const pc_config *c = &r->cfg;
    if (r->rank != 0) return 0;
    st_dtype dt;
    if (st_dtype_parse(c->output.dtype, &dt) != 0)
        return pc_errorf(e, "%s: output.dtype '%s' unknown", c->source, c->output.dtype);
    char tmp[1100], old[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", r->final_dir, (long)getpid());
    snprintf(old, sizeof old, "%s.old-%ld", r->final_dir, (long)getpid());
    char *quoted = pc_glob_escape(r->final_dir);
    size_t len = strlen(r->final_dir);
    for (int k = 0; k < 2; k++) { /* what a killed earlier save left: a partial model, or a */
        char pattern[2300];      /* whole one moved aside (back in place if nothing replaced it) */
        glob_t g;
        snprintf(pattern, sizeof pattern, "%s%s", quoted, k ? ".old-[0-9]*" : ".tmp-[0-9]*");
        if (glob(pattern, 0, NULL, &g) == 0)
            for (size_t i = 0; i < g.gl_pathc; i++) {
                if (strncmp(g.gl_pathv[i], r->final_dir, len) != 0 || strlen(g.gl_pathv[i]) < len + 5) continue;
                const char *pid = g.gl_pathv[i] + len + 5; /* after ".tmp-" / ".old-" */
                if (pid[strspn(pid, "0123456789")] != '\0') continue; /* not a name save_final gives */
                char owner[1024];
                if (!k && run_final_other_run(c, g.gl_pathv[i], owner, sizeof owner)) {
                    LOGW(&r->log, "%s: left alone: another run (run.dir '%s') writes its final model there; it "
                                  "shares output.dir with this one",
                         g.gl_pathv[i], owner);
                    continue;
                }
                if (!k || access(r->final_dir, F_OK) == 0 || rename(g.gl_pathv[i], r->final_dir) != 0)
                    pc_rm_rf(g.gl_pathv[i]);
            }
        globfree(&g);
    }
    free(quoted);
    /* the provenance first: another run's cleanup (one sharing output.dir) knows it */
    int rc = pc_mkdirs(tmp, e) == 0 && run_provenance_write(c, tmp, e) == 0 ? 0 : -1;
    if (rc == 0) rc = llama_save_safetensors(&t->m, tmp, dt, e);
    if (rc == 0 && c->model.base[0]) rc = copy_tokenizer(c->model.base, tmp, e);
    if (rc == 0 && pc_fsync_dir(tmp, e) != 0) rc = -1;
    if (rc == 0 && run_final_replaceable(c, r->final_dir, e) != 0) { /* it changed during the run */
        size_t at = strlen(e->msg);
        snprintf(e->msg + at, sizeof e->msg - at, "; the trained model is in %s (move it away: a rerun removes it)", tmp);
        return -1;
    }
    int had = rc == 0 && access(r->final_dir, F_OK) == 0;
    if (had && rename(r->final_dir, old) != 0)
        rc = pc_errorf(e, "%s: cannot move the earlier final model aside: %s", r->final_dir, strerror(errno));
    if (rc == 0 && rename(tmp, r->final_dir) != 0) {
        rc = pc_errorf(e, "%s: cannot rename %s into place: %s", r->final_dir, tmp, strerror(errno));
        if (had) rename(old, r->final_dir); /* the earlier one back */
    }
    if (rc != 0) {
        pc_rm_rf(tmp);
        return -1;
    }
    if (had) pc_rm_rf(old);
    if (pc_fsync_parent(r->final_dir, e) != 0) return -1;
    LOGI(&r->log, "wrote %s", r->final_dir);
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Step times kept for the summary: the last this many (a ring). */
#define STEP_TIMES_KEPT 65536

/* The end of training's summary of the n steps this process ran, the last ending at
 * step `last`, times dt (s, the ring of the last STEP_TIMES_KEPT): the median step time
 * and what it makes of the step's tokens and FLOPs (model_flops, the model's own;
 * proj_flops, compress's projections), the process's first step (allocations, tuning,
 * the first plans) left out when there are others. */
static void log_summary(run_ctx *r, const double *dt, int64_t n, int64_t last, double tokens, double model_flops,
                        double proj_flops) {
    int64_t kept = PC_MIN(n, STEP_TIMES_KEPT), skip = n > 1 && n == kept, m = kept - skip;
    if (m <= 0) return;
    double *sorted = pc_malloc(sizeof(double) * (size_t)m);
    memcpy(sorted, dt + skip, sizeof(double) * (size_t)m);
    qsort(sorted, (size_t)m, sizeof(double), cmp_double);
    double med = m % 2 ? sorted[m / 2] : 0.5 * (sorted[m / 2 - 1] + sorted[m / 2]);
    free(sorted);
    char mfu[32] = "";
    if (r->peak_tflops > 0)
        snprintf(mfu, sizeof mfu, ", mfu %.1f%%", 100.0 * model_flops / med * 1e-12 / r->peak_tflops);
    LOGI(&r->log, "steps %lld-%lld: median %.4g s a step%s, %.0f tok/s, %.4g TFLOP/s%s", (long long)(last - m + 1),
         (long long)last, med, skip ? " (this process's first step left out)" : "", tokens / med,
         (model_flops + proj_flops) / med * 1e-12, mfu);
}

int mode_train(run_ctx *r, pc_err *e) {
    const pc_config *c = &r->cfg;
    int B = c->train.micro_batch, T = c->data.seq_len;
    int n_micro = c->train.global_batch / (r->world * B);
    static trainer t;
    memset(&t, 0, sizeof t);
    int rc = -1;
    double *step_s = NULL; /* this process's step times (log_summary's ring) */
    if (!strcmp(c->run.mode, "pretrain")) { /* no distill: the config refuses it (no teacher) */
        if (run_model(r, &t.m, B, RUN_TRAINED, e) != 0 || trainer_open_data(r, &t, t.m.cfg.vocab_size, e) != 0) goto out;
        t.method = &METHOD_DIRECT;
    } else if (compress_setup(r, &t, e) != 0) {
        goto out;
    }
    if (t.method == &METHOD_DIRECT) {
        t.adam_m = be_alloc(r->be, (size_t)t.m.n_params);
        t.adam_v = be_alloc(r->be, (size_t)t.m.n_params);
    }
    t.batch = pc_malloc(sizeof(int32_t) * (size_t)B * (T + 1));
    t.tokens = pc_malloc(sizeof(int32_t) * (size_t)B * T);
    t.targets = pc_malloc(sizeof(int32_t) * (size_t)B * T);
    double flops_per_token = llama_flops_per_token(&t.m.cfg, T);
    LOGI(&r->log, "%s: %lld steps, global batch %d = %d rank(s) x %d micro-batch(es) x %d, seq_len %d", c->run.mode,
         (long long)c->train.steps, c->train.global_batch, r->world, n_micro, B, T);
    if (r->rank == 0 && c->train.steps > 0 && c->train.warmup_steps >= c->train.steps) /* keys doing nothing */
        LOGW(&r->log, "train.warmup_steps %d is not below train.steps %lld: the lr rises the whole run and never "
                      "reaches train.lr %g, nor decays",
             c->train.warmup_steps, (long long)c->train.steps, c->train.lr);
    if (r->rank == 0 && c->eval.every_steps > 0 && !t.valid)
        LOGW(&r->log, "eval.every_steps %d: no data.valid is set, so nothing is evaluated", c->eval.every_steps);

    int64_t start = 0, n_timed = 0;
    int skipped_in_row = 0;
    int current = 0; /* the model's weights are those of the latest update (finish ran) */
    if (ckpt_resume(r, &t, &start, e) != 0) goto out;
    if (start > c->train.steps) { /* the model is past the end asked for: nothing would make it so */
        pc_errorf(e, "%s/checkpoints: the newest checkpoint is of step %lld, past train.steps %lld: raise "
                     "train.steps, or use another run.dir for a shorter run",
                  r->run_dir, (long long)start, (long long)c->train.steps);
        goto out;
    }
    if (start > 0) LOGI(&r->log, "resumed after step %lld", (long long)start);
    int64_t last_ckpt = start; /* the newest checkpoint there is (0: none) */
    /* The weights of the next step made outside it (begin_step before the loop, finish
     * before an eval): their time and bytes are that step's, as begin_step's are in the
     * steps it runs in, so every row counts the same work */
    double carry_s = pc_now();
    uint64_t carry_bytes = run_comm_bytes(r);
    if (t.method->begin_step(r, &t, e) != 0) goto out;
    carry_s = pc_now() - carry_s;
    carry_bytes = run_comm_bytes(r) - carry_bytes;
    if (start == 0 && maybe_eval(r, &t, 0, 1, e) != 0) goto out; /* the starting point: step 0 */
    for (int64_t step = start; step < c->train.steps; step++) {
        r->log.step = (long)step + 1;
        double t0 = pc_now() - carry_s, local_loss;
        uint64_t comm0 = run_comm_bytes(r) - carry_bytes;
        carry_s = 0;
        carry_bytes = 0;
        if (step > start && !current) { /* the gather may go on during the first forward */
            t.overlap.gather = r->world > 1 && c->backend.overlap_comm;
            int brc = t.method->begin_step(r, &t, e);
            t.overlap.gather = 0;
            if (brc != 0) goto out;
        }
        current = 0;
        if (accumulate(r, &t, step, n_micro, &local_loss, e) != 0) goto out;
        if (!t.reduce_per_backward && t.method->reduce_grads(r, &t, e) != 0) goto out;
        double loss;
        if (comm_all_reduce(r->comm, &local_loss, &loss, 1, COMM_F64, COMM_SUM, e) != 0) goto out;
        loss /= (double)(n_micro * r->world);
        double sumsq;
        if (t.method->grad_sumsq(r, &t, &sumsq, e) != 0) goto out;
        double gnorm = sqrt(sumsq);
        float clip = optim_clip_scale(gnorm, c->train.grad_clip);
        float lr = (float)optim_lr(step, c->train.steps, c->train.warmup_steps, c->train.lr, c->train.min_lr_ratio);
        if (!isfinite(loss) || !isfinite(gnorm)) {
            char ls[32], gs[32];
            fmt_value(ls, sizeof ls, loss);
            fmt_value(gs, sizeof gs, gnorm);
            if (strcmp(c->train.on_nonfinite, "skip") != 0 || ++skipped_in_row > 10) {
                if (last_ckpt > 0)
                    pc_errorf(e, "step %lld: loss %s, grad norm %s: training diverged (lower train.lr?); the "
                                 "checkpoint of step %lld in %s/checkpoints is intact",
                              (long long)step + 1, ls, gs, (long long)last_ckpt, r->run_dir);
                else
                    pc_errorf(e, "step %lld: loss %s, grad norm %s: training diverged (lower train.lr?); no "
                                 "checkpoint was written",
                              (long long)step + 1, ls, gs);
                goto out;
            }
            LOGW(&r->log, "step %lld: loss %s, grad norm %s: update skipped (train.on_nonfinite: skip)",
                 (long long)step + 1, ls, gs);
        } else {
            skipped_in_row = 0;
            t.method->update(r, &t, step, lr, clip);
        }
        double dt = pc_now() - t0;
        if (!step_s) step_s = pc_malloc(sizeof(double) * (size_t)PC_MIN(c->train.steps - start, STEP_TIMES_KEPT));
        step_s[n_timed++ % STEP_TIMES_KEPT] = dt;
        double comm_mb = (double)(run_comm_bytes(r) - comm0) / 1e6;
        double tok_s = (double)c->train.global_batch * T / dt;
        double model_tflops = flops_per_token * tok_s * 1e-12; /* the model's own FLOPs a second, all ranks */
        double mfu = r->peak_tflops > 0 ? model_tflops / r->peak_tflops : -1.0; /* < 0: no known peak */
        char line[512], mfu_json[48] = "", mfu_log[32] = "";
        if (mfu >= 0) {
            snprintf(mfu_json, sizeof mfu_json, ", \"mfu\": %.6g", mfu);
            snprintf(mfu_log, sizeof mfu_log, ", mfu %.1f%%", 100.0 * mfu);
        }
        char loss_s[48], gnorm_s[48]; /* null where the step diverged (train.on_nonfinite) */
        snprintf(line, sizeof line,
                 "{\"step\": %lld, \"loss\": %s, \"lr\": %.6e, \"grad_norm\": %s, \"tokens_per_s\": %.1f, "
                 "\"step_time\": %.4f, \"tokens\": %lld, \"tflops\": %.6g%s, \"comm_mb\": %.3f}",
                 (long long)step + 1, run_json_number(loss_s, sizeof loss_s, "%.8f", loss), lr,
                 run_json_number(gnorm_s, sizeof gnorm_s, "%.6f", gnorm), tok_s, dt,
                 (long long)(step + 1) * c->train.global_batch * T, model_tflops + t.proj_flops / dt * 1e-12,
                 mfu_json, comm_mb);
        run_metrics(r, line);
        log_file(&r->log, LOG_INFO, "loss %.4f lr %.3e grad_norm %.3f %.0f tok/s %.3f s%s, comm %.2f MB", loss, lr,
                 gnorm, tok_s, dt, mfu_log, comm_mb);
        run_progress(r, (long)step + 1, (long)c->train.steps, loss, tok_s, mfu, dt);
        int last = step + 1 == c->train.steps;
        if (last || (c->eval.every_steps > 0 && (step + 1) % c->eval.every_steps == 0)) {
            double f0 = pc_now();
            uint64_t fb = run_comm_bytes(r);
            if (t.method->finish(r, &t, e) != 0) goto out; /* evaluate the weights after this update */
            carry_s = pc_now() - f0; /* the next step's weights: its begin_step is skipped */
            carry_bytes = run_comm_bytes(r) - fb;
            current = 1;
            if (maybe_eval(r, &t, step + 1, 1, e) != 0) goto out;
        }
        int stop;
        if (agree_stop(r, &stop, e) != 0) goto out;
        int every = c->checkpoint.every_steps;
        int save = last ? c->checkpoint.at_end : stop || (every > 0 && (step + 1) % every == 0);
        if (save && ckpt_save(r, &t, step + 1, e) != 0) goto out;
        if (save) last_ckpt = step + 1;
        if (stop && !last) {
            LOGW(&r->log, "stop signal: checkpoint of step %lld written; rerun the same command to resume",
                 (long long)step + 1);
            rc = 1;
            goto out;
        }
    }
    log_summary(r, step_s, n_timed, c->train.steps, (double)c->train.global_batch * T,
                flops_per_token * c->train.global_batch * T, t.proj_flops);
    if (!current && t.method->finish(r, &t, e) != 0) goto out;
    if (t.has_plan && !strcmp(r->be->ops->name, "cuda")) {
        LOGI(&r->log, "bf16 operand copies: %zu bytes here (plan: %lld)", backend_cuda_bf16_copies_bytes(r->be),
             (long long)t.plan_copies16);
        LOGI(&r->log, "attention bf16 copies: %zu bytes here (plan: %lld)",
             backend_cuda_attention_copies_bytes(r->be), (long long)t.plan_attn16);
    }
    /* the last collective before the save: rank 0 writes the model alone, and a peer waiting
     * for it in a collective would be ended by the watchdog (run.collective_timeout) */
    if (run_report_memory(r, e) != 0 || save_final(r, &t, e) != 0) goto out;
    rc = 0;
out:
    free(step_s);
    trainer_free(&t);
    return rc;
}
