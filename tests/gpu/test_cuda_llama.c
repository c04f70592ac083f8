/* test_cuda_llama: a whole Llama forward and backward on the CUDA backend against the
 * CPU backend, same random weights and batch.
 *
 * Two small models (GQA, per-layer d_ff, untied head; and a tied embedding) run
 * forward with targets (some ignored), backward, and then the distillation loss
 * against random teacher logits and its backward. The loss must agree within 1e-5
 * relative, the logits and every parameter's gradient within 1e-4 relative to the
 * largest reference value of that tensor, in plain fp32 (TF32 off). The first model
 * runs again with activation checkpointing on the GPU side, and with the head and
 * loss in chunks of 16 tokens there (train.logits_chunk; no whole logits to compare and
 * no distillation then). With the GPU's attention on bf16 tensor cores, a model that keeps
 * q, k, v in bf16 only (llama_attention_16) gives bit for bit the loss, logits and
 * gradients of one that keeps them in fp32 for the same kernels, also recomputing with
 * logits in chunks, and forward only; with bf16 products (the attention output kept in
 * bf16 as well) the same loss and logits, and gradients as close to the CPU's as the
 * fp32 output's (within 25% or 1e-3). With bf16 products the qkv product's output
 * gradient rotated back as it is rounded (rope_bwd_qkv_16), and the residual gradient
 * rounded by the RMSNorm backward that writes it (rmsnorm_bwd_16), give bit for bit the
 * loss and gradients of the fp32 op and a rounding after it, with either attention and
 * recomputing. Exit 77 without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "device.h"
#include "llama.h"
#include "testutil.h"
#include "util.h"

#define TOL_LOSS 1e-5
#define TOL_TENSOR 1e-4

static int failures, checks;

static void report(const char *what, double err, double tol)
{
    checks++;
    int ok = err <= tol && !isnan(err);
    if (!ok) failures++;
    if (!ok || strstr(what, "loss") || strstr(what, "logits") || strstr(what, "worst"))
        printf("%-4s %-64s err %.3e (tol %.0e)\n", ok ? "ok" : "FAIL", what, err, tol);
}

/* Compare a device buffer of each model (n elements at the given pointers). */
static void compare_buffers(const char *what, backend *bc, const float *pc, backend *bg, const float *pg, size_t n,
                            double tol)
{
    float *hc = pc_alloc_f32(n), *hg = pc_alloc_f32(n);
    be_download(bc, hc, pc, n);
    be_download(bg, hg, pg, n);
    report(what, test_rel_max_err(hc, hg, n), tol);
    free(hc);
    free(hg);
}

/* Every gradient tensor of the two models within tol relative to its largest reference
 * value (mc's); tol 0: bit for bit. Returns the worst tensor's error. */
static double compare_grads_tol(const char *tag, llama_model *mc, llama_model *mg, double tol)
{
    float *hc = pc_alloc_f32((size_t)mc->n_params), *hg = pc_alloc_f32((size_t)mg->n_params);
    be_download(mc->be, hc, mc->grads, (size_t)mc->n_params);
    be_download(mg->be, hg, mg->grads, (size_t)mg->n_params);
    int bad_before = failures;
    double worst = 0.0;
    for (int i = 0; i < llama_n_tensors(mc); i++) {
        const llama_tensor *t = llama_tensor_at(mc, i);
        char what[160];
        snprintf(what, sizeof what, "%s grad %s", tag, t->name);
        double err = test_rel_max_err(hc + t->offset, hg + t->offset, (size_t)t->numel);
        worst = isnan(err) ? err : fmax(worst, err);
        report(what, err, tol);
    }
    printf("%-4s %-64s err %.3e (tol %.0e)\n", failures == bad_before ? "ok" : "FAIL", "every gradient tensor (worst)",
           worst, tol);
    free(hc);
    free(hg);
    return worst;
}

static void compare_grads(const char *tag, llama_model *mc, llama_model *mg)
{
    (void)compare_grads_tol(tag, mc, mg, TOL_TENSOR);
}

/* Distillation against random teacher logits (N, V), accumulating onto both models'
 * gradients: loss and gradients compared. */
static void check_distill(const char *tag, llama_model *mc, llama_model *mg, const int32_t *tok, const int32_t *tgt,
                          pc_rng *r)
{
    size_t n = (size_t)mc->B * mc->T * mc->cfg.vocab_size;
    char what[160];
    float *teach_h = pc_alloc_f32(n);
    for (size_t i = 0; i < n; i++) teach_h[i] = 2.0f * pc_rng_normal(r);
    float *teach_c = be_alloc(mc->be, n), *teach_g = be_alloc(mg->be, n);
    be_upload(mc->be, teach_c, teach_h, n);
    be_upload(mg->be, teach_g, teach_h, n);
    llama_forward(mc, tok, tgt);
    llama_forward(mg, tok, tgt);
    float dc = llama_distill(mc, teach_c, 0.5f, 2.0f), dg = llama_distill(mg, teach_g, 0.5f, 2.0f);
    snprintf(what, sizeof what, "%s distill loss (cpu %.6f, cuda %.6f)", tag, (double)dc, (double)dg);
    report(what, fabs((double)dc - dg) / fabs((double)dc), TOL_LOSS);
    llama_backward(mc);
    llama_backward(mg);
    snprintf(what, sizeof what, "%s +distill", tag);
    compare_grads(what, mc, mg);
    be_free(mc->be, teach_c);
    be_free(mg->be, teach_g);
    free(teach_h);
}

/* A random batch of N tokens below V and its targets, every `every`-th (from `first`)
 * ignored (-1); the caller frees both. */
static void random_batch(int N, int V, uint64_t seed, int every, int first, int32_t **tok, int32_t **tgt)
{
    *tok = pc_malloc((size_t)N * sizeof(int32_t));
    *tgt = pc_malloc((size_t)N * sizeof(int32_t));
    pc_rng r;
    pc_rng_seed(&r, seed);
    for (int n = 0; n < N; n++) {
        (*tok)[n] = (int32_t)(pc_rng_u64(&r) % (uint64_t)V);
        (*tgt)[n] = n % every == first ? -1 : (int32_t)(pc_rng_u64(&r) % (uint64_t)V);
    }
}

/* go: the CUDA model's options (activation checkpointing, logits in chunks); the CPU
 * model keeps every activation and the whole logits. */
static int run_case(const char *tag, const llama_config *cfg, int B, int T, backend *cpu, backend *gpu,
                    const llama_opts *go)
{
    llama_model mc, mg;
    pc_err e;
    if (llama_init(&mc, cfg, cpu, B, T, &e) || llama_init_opts(&mg, cfg, gpu, B, T, go, &e)) {
        fprintf(stderr, "%s: llama_init: %s\n", tag, e.msg);
        return -1;
    }
    llama_init_random(&mc, 7, 0.2f);
    llama_init_random(&mg, 7, 0.2f);
    int N = B * T, V = cfg->vocab_size;
    int32_t *tok, *tgt;
    random_batch(N, V, 99, 7, 3, &tok, &tgt);
    pc_rng r; /* the teacher's logits (check_distill) */
    pc_rng_seed(&r, 98);
    char what[160];

    /* cross-entropy: forward, backward */
    llama_zero_grad(&mc);
    llama_zero_grad(&mg);
    float lc = llama_forward(&mc, tok, tgt), lg = llama_forward(&mg, tok, tgt);
    snprintf(what, sizeof what, "%s loss (cpu %.6f, cuda %.6f)", tag, (double)lc, (double)lg);
    report(what, fabs((double)lc - lg) / fabs((double)lc), TOL_LOSS);
    snprintf(what, sizeof what, "%s logits", tag);
    if (!mg.logits_chunk) compare_buffers(what, cpu, mc.logits, gpu, mg.logits, (size_t)N * V, TOL_TENSOR);
    llama_backward(&mc);
    llama_backward(&mg);
    compare_grads(tag, &mc, &mg);
    if (!mg.logits_chunk) check_distill(tag, &mc, &mg, tok, tgt, &r); /* it needs whole logits */
    free(tok);
    free(tgt);
    llama_free(&mc);
    llama_free(&mg);
    return 0;
}

/* The GPU's bf16 tensor-core attention two ways: a model made while the backend's attention
 * was fp32 keeps fp32 q, k, v (rotated in place) and its attention ops round them; one made
 * with bf16 attention keeps them in bf16 only (llama_attention_16: the rope goes into the
 * rounding). The same values, rounded the same way, into the same kernels: loss, logits
 * and every gradient bit for bit. With bf16 products (go->weights) the second also keeps
 * the attention output in bf16 only, which the products read rounded anyway, so the loss
 * and logits stay bitwise; the backward's D = rowsum(dO o O) is then computed from the
 * rounded output, so against the CPU's model (bf16 products, fp32 attention) its worst
 * gradient tensor must be as close as the first's, within 25% or 1e-3. */
static int run_qkv16_case(const char *tag, const llama_config *cfg, int B, int T, backend *cpu, backend *gpu,
                          const llama_opts *go)
{
    llama_model ma, mb, mc;
    pc_err e;
    backend_cuda_set_attention(gpu, 0);
    int rc = llama_init_opts(&ma, cfg, gpu, B, T, go, &e);
    backend_cuda_set_attention(gpu, 1);
    if (rc || llama_init_opts(&mb, cfg, gpu, B, T, go, &e) || llama_init_opts(&mc, cfg, cpu, B, T, go, &e)) {
        fprintf(stderr, "%s: llama_init: %s\n", tag, e.msg);
        return -1;
    }
    char what[160];
    snprintf(what, sizeof what, "%s: kept in bf16 by the second model only", tag);
    report(what, !llama_attention_16(&ma) && llama_attention_16(&mb) ? 0.0 : 1.0, 0.5);
    llama_model *ms[] = {&ma, &mb, &mc};
    for (int i = 0; i < 3; i++) {
        llama_init_random(ms[i], 7, 0.2f);
        llama_refresh_w16(ms[i]); /* the bf16 copy the products read (none without bf16 products) */
    }
    int N = B * T, V = cfg->vocab_size;
    int32_t *tok, *tgt;
    random_batch(N, V, 5, 5, 1, &tok, &tgt);
    if (go->forward_only) { /* a teacher's model: the loss only */
        float la = llama_loss(&ma, tok, tgt), lb = llama_loss(&mb, tok, tgt);
        snprintf(what, sizeof what, "%s loss bitwise (fp32 q, k, v %.6f, bf16 %.6f)", tag, (double)la, (double)lb);
        report(what, la == lb ? 0.0 : 1.0, 0.5);
    } else {
        float l[3];
        for (int i = 0; i < 3; i++) {
            llama_zero_grad(ms[i]);
            l[i] = llama_forward(ms[i], tok, tgt);
        }
        snprintf(what, sizeof what, "%s loss bitwise (fp32 q, k, v %.6f, bf16 %.6f)", tag, (double)l[0], (double)l[1]);
        report(what, l[0] == l[1] ? 0.0 : 1.0, 0.5);
        if (!mb.logits_chunk) {
            snprintf(what, sizeof what, "%s logits bitwise", tag);
            compare_buffers(what, gpu, ma.logits, gpu, mb.logits, (size_t)N * V, 0.0);
        }
        for (int i = 0; i < 3; i++) llama_backward(ms[i]);
        if (go->weights == LLAMA_F32) {
            snprintf(what, sizeof what, "%s bitwise", tag);
            compare_grads_tol(what, &ma, &mb, 0.0);
        } else {
            snprintf(what, sizeof what, "%s, fp32 attention output, vs cpu", tag);
            double ea = compare_grads_tol(what, &mc, &ma, INFINITY);
            snprintf(what, sizeof what, "%s, bf16 attention output, vs cpu", tag);
            double eb = compare_grads_tol(what, &mc, &mb, INFINITY);
            snprintf(what, sizeof what, "%s: worst gradient vs cpu %.3e with the bf16 output, %.3e without", tag, eb,
                     ea);
            report(what, eb <= fmax(1.25 * ea, 1e-3) ? 0.0 : 1.0, 0.5);
        }
    }
    backend_cuda_set_attention(gpu, 0);
    free(tok);
    free(tgt);
    for (int i = 0; i < 3; i++) llama_free(ms[i]);
    return 0;
}

/* The ops that write a bf16 product operand in the pass that makes its fp32 values, with
 * bf16 products: rope_bwd_qkv_16 (the qkv output gradient rotated back as it is rounded)
 * and rmsnorm_bwd_16 (the residual gradient rounded as the RMSNorm backward writes it,
 * for o_proj and down_proj). */
enum { FUSED_ROPE = 1, FUSED_RMSNORM = 2 };

/* The loss and every gradient bit for bit those of the same model run again with the ops
 * of `fused` taken out of the table (rotating in place, rounding on its own) and, with
 * `order`, its blocks run in that order (PC_EMU_BLOCK_ORDER on the emulator: reverse,
 * shuffle; on a GPU the second run is just another run), with attention on bf16 tensor
 * cores (attn16) or in fp32. */
static int run_same_bits_case(const char *tag, const llama_config *cfg, int B, int T, backend *gpu, int attn16,
                              int fused, const char *order, const llama_opts *go)
{
    llama_model ma, mb;
    pc_err e;
    backend_cuda_set_attention(gpu, attn16);
    if (llama_init_opts(&ma, cfg, gpu, B, T, go, &e) || llama_init_opts(&mb, cfg, gpu, B, T, go, &e)) {
        fprintf(stderr, "%s: llama_init: %s\n", tag, e.msg);
        return -1;
    }
    const backend_ops *ops = gpu->ops;
    backend_ops without = *ops; /* the fallbacks: the fp32 op, then round_bf16 */
    if (fused & FUSED_ROPE) without.rope_bwd_qkv_16 = NULL;
    if (fused & FUSED_RMSNORM) without.rmsnorm_bwd_16 = NULL;
    const int present = (!(fused & FUSED_ROPE) || ops->rope_bwd_qkv_16) && (!(fused & FUSED_RMSNORM) ||
                                                                            ops->rmsnorm_bwd_16);
    int N = B * T;
    int32_t *tok, *tgt;
    random_batch(N, cfg->vocab_size, 5, 5, 1, &tok, &tgt);
    float l[2];
    llama_model *ms[] = {&ma, &mb};
    for (int i = 0; i < 2; i++) {
        llama_init_random(ms[i], 7, 0.2f);
        llama_refresh_w16(ms[i]);
        llama_zero_grad(ms[i]);
        gpu->ops = i ? &without : ops;
        if (i && order) setenv("PC_EMU_BLOCK_ORDER", order, 1);
        l[i] = llama_forward(ms[i], tok, tgt);
        llama_backward(ms[i]);
        gpu->ops->sync(gpu); /* the emulator runs a stream's kernels when it is synchronised */
        unsetenv("PC_EMU_BLOCK_ORDER");
        gpu->ops = ops;
    }
    char what[160];
    snprintf(what, sizeof what, "%s: the ops present %d; loss bitwise (%.6f, %.6f)", tag, present, (double)l[0],
             (double)l[1]);
    report(what, present && l[0] == l[1] ? 0.0 : 1.0, 0.5);
    snprintf(what, sizeof what, "%s: gradients bitwise", tag);
    compare_grads_tol(what, &ma, &mb, 0.0);
    backend_cuda_set_attention(gpu, 0);
    free(tok);
    free(tgt);
    llama_free(&ma);
    llama_free(&mb);
    return 0;
}

/* The model with attention by cuDNN (backend_cuda_use_cudnn) beside the same model on
 * the tensor-core kernels, both against the CPU's (fp32 attention, products as go says):
 * the loss within 1e-3 relative of the kernels', and the worst gradient tensor vs the
 * CPU within twice the kernels' or 2e-3 (cuDNN writes dq, dk and dv in bf16: one
 * rounding more). Where cuDNN is not usable it says why and checks nothing. On the
 * emulator (PC_EMU_CUDNN=1) the backend's cuDNN route runs around the kernels as a
 * stand-in for cuDNN (tests/gpu/cudnn_emu.cpp); a GPU's cuDNN ignores the variable. */
static int run_cudnn_case(const char *tag, const llama_config *cfg, int B, int T, backend *cpu, backend *gpu,
                          const llama_opts *go)
{
    char err[512];
    setenv("PC_EMU_CUDNN", "1", 1);
    backend_cuda_set_attention(gpu, 1);
    int ok = backend_cuda_use_cudnn(gpu, err, (int)sizeof err) == 0;
    unsetenv("PC_EMU_CUDNN");
    if (!ok) {
        printf("%s: not tested: %s\n", tag, err);
        backend_cuda_set_attention(gpu, 0);
        return 0;
    }
    llama_model mk, md, mc;
    pc_err e;
    int rc = llama_init_opts(&md, cfg, gpu, B, T, go, &e);
    backend_cuda_set_attention(gpu, 1); /* the kernels for the second */
    if (rc || llama_init_opts(&mk, cfg, gpu, B, T, go, &e) || llama_init_opts(&mc, cfg, cpu, B, T, go, &e)) {
        fprintf(stderr, "%s: llama_init: %s\n", tag, e.msg);
        return -1;
    }
    llama_model *ms[] = {&md, &mk, &mc};
    int N = B * T;
    int32_t *tok, *tgt;
    random_batch(N, cfg->vocab_size, 5, 5, 1, &tok, &tgt);
    float l[3];
    setenv("PC_EMU_CUDNN", "1", 1);
    for (int i = 0; i < 3; i++) {
        if (i == 0) backend_cuda_use_cudnn(gpu, err, (int)sizeof err);
        if (i == 1) backend_cuda_set_attention(gpu, 1);
        llama_init_random(ms[i], 7, 0.2f);
        llama_refresh_w16(ms[i]);
        llama_zero_grad(ms[i]);
        l[i] = llama_forward(ms[i], tok, tgt);
        llama_backward(ms[i]);
        gpu->ops->sync(gpu);
    }
    char what[200];
    unsetenv("PC_EMU_CUDNN");
    snprintf(what, sizeof what, "%s: loss %.6f, kernels' %.6f, cpu %.6f", tag, (double)l[0], (double)l[1],
             (double)l[2]);
    report(what, fabs((double)l[0] - l[1]) / fabs((double)l[1]), 1e-3);
    snprintf(what, sizeof what, "%s: cuDNN vs cpu", tag);
    double ed = compare_grads_tol(what, &mc, &md, INFINITY);
    snprintf(what, sizeof what, "%s: kernels vs cpu", tag);
    double ek = compare_grads_tol(what, &mc, &mk, INFINITY);
    snprintf(what, sizeof what, "%s: worst gradient vs cpu %.3e by cuDNN, %.3e by the kernels", tag, ed, ek);
    report(what, ed <= fmax(2.0 * ek, 2e-3) ? 0.0 : 1.0, 0.5);
    backend_cuda_set_attention(gpu, 0);
    free(tok);
    free(tgt);
    for (int i = 0; i < 3; i++) llama_free(ms[i]);
    return 0;
}

int main(void)
{
    if (pc_cuda_device_count() == 0) {
        printf("no CUDA device: skipping\n");
        return 77;
    }
    char err[256];
    backend *gpu = backend_cuda_create(0, err, (int)sizeof err);
    if (!gpu) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (strstr(gpu->info, "TF32")) {
        fprintf(stderr, "cuda backend starts with TF32 on (%s); this test needs fp32\n", gpu->info);
        return 1;
    }
    backend *cpu = backend_cpu_create(1);
    printf("cpu: %s\ncuda: %s\n", cpu->info, gpu->info);

    llama_config c;
    hf_config_defaults(&c);
    c.vocab_size = 257;
    c.d_model = 96;
    c.n_layers = 3;
    c.n_heads = 6;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.d_ff = 160;
    c.d_ff_layer[0] = 160;
    c.d_ff_layer[1] = 96;
    c.d_ff_layer[2] = 128;
    c.max_position_embeddings = 256;
    c.tie_word_embeddings = 0;
    llama_opts plain = {0}, rc_opts = {.recompute = 1}, chunked = {.recompute = 1, .logits_chunk = 16};
    int rc = run_case("untied/gqa", &c, 2, 45, cpu, gpu, &plain);
    if (rc == 0) rc = run_case("untied/gqa, cuda recomputing", &c, 2, 45, cpu, gpu, &rc_opts);
    if (rc == 0) rc = run_case("untied/gqa, cuda recomputing, logits in chunks of 16", &c, 2, 45, cpu, gpu, &chunked);

    c.tie_word_embeddings = 1;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.head_dim = 64;
    c.n_layers = 2;
    snprintf(c.rope_scaling_type, sizeof c.rope_scaling_type, "llama3");
    c.rope_factor = 32.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_pos = 64;
    if (rc == 0) rc = run_case("tied/mha/llama3-rope", &c, 3, 70, cpu, gpu, &plain);
    if (rc == 0) rc = run_qkv16_case("bf16 attention", &c, 2, 70, cpu, gpu, &plain);
    if (rc == 0) rc = run_qkv16_case("bf16 attention, recomputing, logits in chunks", &c, 2, 70, cpu, gpu, &chunked);
    llama_opts fwd_only = {.forward_only = 1}, w16 = {.weights = LLAMA_BF16_WEIGHTS},
               w16_rc = {.weights = LLAMA_BF16_WEIGHTS, .recompute = 1};
    if (rc == 0) rc = run_qkv16_case("bf16 attention, forward only", &c, 2, 70, cpu, gpu, &fwd_only);
    if (rc == 0) rc = run_qkv16_case("bf16 attention and products", &c, 2, 70, cpu, gpu, &w16);
    if (rc == 0) rc = run_qkv16_case("bf16 attention and products, recomputing", &c, 2, 70, cpu, gpu, &w16_rc);
    if (rc == 0) rc = run_same_bits_case("bf16 products and attention, dq|dk|dv rotated as rounded", &c, 2, 70, gpu,
                                         1, FUSED_ROPE, NULL, &w16);
    if (rc == 0) rc = run_same_bits_case("bf16 products and attention, dres rounded by the norm", &c, 2, 70, gpu, 1,
                                         FUSED_RMSNORM, NULL, &w16);
    if (rc == 0) rc = run_same_bits_case("bf16 products, recomputing, dres rounded by the norm", &c, 2, 70, gpu, 1,
                                         FUSED_RMSNORM, NULL, &w16_rc);
    if (rc == 0) rc = run_same_bits_case("bf16 products, fp32 attention, both", &c, 2, 70, gpu, 0,
                                         FUSED_ROPE | FUSED_RMSNORM, NULL, &w16);
    /* no result depends on the order blocks run in: tied embedding (repeated tokens over
     * more than one 256-position scan), norms (dw in partials), attention */
    if (rc == 0) rc = run_cudnn_case("cuDNN attention, bf16 products", &c, 2, 70, cpu, gpu, &w16);
    if (rc == 0) rc = run_cudnn_case("cuDNN attention, bf16 products, recomputing", &c, 2, 70, cpu, gpu, &w16_rc);
    if (rc == 0) rc = run_cudnn_case("cuDNN attention, fp32 products", &c, 2, 70, cpu, gpu, &plain);
    if (rc == 0) rc = run_same_bits_case("fp32, blocks shuffled", &c, 4, 70, gpu, 0, 0, "shuffle", &plain);
    if (rc == 0) rc = run_same_bits_case("bf16 products and attention, blocks reversed", &c, 4, 70, gpu, 1, 0,
                                         "reverse", &w16);

    backend_destroy(gpu);
    backend_destroy(cpu);
    printf("%d of %d checks failed\n", failures, checks);
    return rc || failures ? 1 : 0;
}
