/* bench_gpu: tokens/s and MFU of a Llama forward+backward on the CUDA backend.
 *
 * The model has the shape of Llama-3.2-1B compressed to d_model 1344 (d_ff 5376, 16
 * layers, 32 query / 8 kv heads of 64, vocab 128256, tied embedding), random weights;
 * each step is llama_forward with targets plus llama_backward on one (B,T) batch.
 * FLOPs per token are llama_flops_per_token (6N + attention, PaLM convention); MFU
 * divides the achieved FLOP/s by the peak given with -peak (default: H100 SXM dense,
 * 989.4 TFLOP/s with -bf16 1 (bf16 gemm inputs, fp32 accumulation), 494.7 with TF32,
 * 66.9 plain fp32). With -bf16 1 the products read the model's bf16 weight copy, as the
 * daemon's do (llama_use_bf16_weights); -w16 0 rounds the weights on every product
 * instead, for comparison. -attn 1 runs attention on bf16 tensor cores
 * (backend_cuda_set_attention), -attn 2 the same by cuDNN's fused flash attention
 * (backend_cuda_use_cudnn). Peak device memory is sampled with cudaMemGetInfo after
 * every forward and backward. -prof N runs N more steps after the timed ones with the
 * backend's op profiler on (backend_cuda_profile: CUDA events around each op) and prints
 * where their device time went, op by op, with each op's TFLOP/s or GB/s; the timed steps
 * above are not profiled.
 *
 * -groups and -dkv set the tensor-core attention's kernel variants (attn_tc_set_variants:
 * the row groups a warp of the forward and dQ kernels, 1 or 2, and the dK/dV kernel's
 * 1 to 3; 0 tunes per shape, the default on a GPU); the shapes tuned are listed with each
 * variant's time a call.
 *
 * -layers, -d, -ff, -vocab, -heads, -kv and -hd change the shape (tests run it tiny; -hd
 * 128 -heads 16 -kv 4 keeps the products' sizes and gives attention Llama-3.1-8B's
 * head_dim).
 *
 *   bench-gpu [-B 4] [-T 2048] [-steps 10] [-warmup 2] [-tf32 1] [-bf16 0] [-w16 1] [-attn 0]
 *             [-groups 0] [-dkv 0] [-peak TFLOPS] [-layers 16] [-device 0] [-prof 0] [-d 1344] [-ff 5376]
 *             [-vocab 128256] [-heads 32] [-kv 8] [-hd 64] */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_tc.h"
#include "backend.h"
#include "backend_cuda.h"
#include "device.h"
#include "llama.h"
#include "util.h"

typedef struct mem_peak {
    size_t used, total;
} mem_peak;

static void sample_memory(mem_peak *m)
{
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return;
    m->total = total_b;
    if (total_b - free_b > m->used) m->used = total_b - free_b;
}

static int arg_int(int argc, char **argv, int *i, int *out)
{
    if (*i + 1 >= argc) return -1;
    char *end = NULL;
    long v = strtol(argv[++*i], &end, 10);
    if (!end || *end || v < 0 || v > 1 << 30) return -1;
    *out = (int)v;
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench-gpu [-B 4] [-T 2048] [-steps 10] [-warmup 2] [-tf32 1] [-bf16 0] [-w16 1] [-attn 0] "
                    "[-groups 0] [-dkv 0] [-peak TFLOPS] [-layers 16] [-device 0] [-prof 0] [-d 1344] [-ff 5376] "
                    "[-vocab 128256] [-heads 32] [-kv 8] [-hd 64] (heads a multiple of kv, hd even)\n");
    return 2;
}

int main(int argc, char **argv)
{
    int B = 4, T = 2048, steps = 10, warmup = 2, tf32 = 1, bf16 = 0, w16 = 1, attn = 0, layers = 16, device = 0;
    int prof_steps = 0, groups = -1, dkv = -1, d_model = 1344, d_ff = 5376, vocab = 128256, heads = 32, kv = 8,
        hd = 64;
    double peak_tflops = 0.0;
    for (int i = 1; i < argc; i++) {
        int bad = 0;
        if (!strcmp(argv[i], "-B")) bad = arg_int(argc, argv, &i, &B);
        else if (!strcmp(argv[i], "-T")) bad = arg_int(argc, argv, &i, &T);
        else if (!strcmp(argv[i], "-steps")) bad = arg_int(argc, argv, &i, &steps);
        else if (!strcmp(argv[i], "-warmup")) bad = arg_int(argc, argv, &i, &warmup);
        else if (!strcmp(argv[i], "-tf32")) bad = arg_int(argc, argv, &i, &tf32);
        else if (!strcmp(argv[i], "-bf16")) bad = arg_int(argc, argv, &i, &bf16);
        else if (!strcmp(argv[i], "-w16")) bad = arg_int(argc, argv, &i, &w16);
        else if (!strcmp(argv[i], "-attn")) bad = arg_int(argc, argv, &i, &attn);
        else if (!strcmp(argv[i], "-groups")) bad = arg_int(argc, argv, &i, &groups) || groups > 2;
        else if (!strcmp(argv[i], "-dkv")) bad = arg_int(argc, argv, &i, &dkv) || dkv > 3;
        else if (!strcmp(argv[i], "-layers")) bad = arg_int(argc, argv, &i, &layers);
        else if (!strcmp(argv[i], "-device")) bad = arg_int(argc, argv, &i, &device);
        else if (!strcmp(argv[i], "-prof")) bad = arg_int(argc, argv, &i, &prof_steps);
        else if (!strcmp(argv[i], "-d")) bad = arg_int(argc, argv, &i, &d_model);
        else if (!strcmp(argv[i], "-ff")) bad = arg_int(argc, argv, &i, &d_ff);
        else if (!strcmp(argv[i], "-vocab")) bad = arg_int(argc, argv, &i, &vocab);
        else if (!strcmp(argv[i], "-heads")) bad = arg_int(argc, argv, &i, &heads);
        else if (!strcmp(argv[i], "-kv")) bad = arg_int(argc, argv, &i, &kv);
        else if (!strcmp(argv[i], "-hd")) bad = arg_int(argc, argv, &i, &hd);
        else if (!strcmp(argv[i], "-peak") && i + 1 < argc) peak_tflops = atof(argv[++i]);
        else bad = 1;
        if (bad) return usage();
    }
    if (B < 1 || T < 1 || steps < 1 || layers < 1 || layers > PC_MAX_LAYERS || d_model < 1 || d_ff < 1 || vocab < 2 ||
        heads < 1 || kv < 1 || heads % kv != 0 || hd < 2 || hd % 2 != 0 || attn < 0 || attn > 2)
        return usage();
    if (pc_cuda_device_count() == 0) {
        printf("no CUDA device: nothing to measure\n");
        return 77;
    }
    if (peak_tflops <= 0.0) peak_tflops = bf16 ? 989.4 : tf32 ? 494.7 : 66.9;

    char err[256];
    backend *be = backend_cuda_create(device, err, (int)sizeof err);
    if (!be) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    backend_cuda_set_tf32(be, tf32);
    if (bf16) be->ops->set_matmul(be, MATMUL_BF16);
    backend_cuda_set_attention(be, attn != 0);
    if (attn == 2 && backend_cuda_use_cudnn(be, err, (int)sizeof err) != 0) {
        fprintf(stderr, "-attn 2: %s\n", err);
        return 1;
    }
    { /* the variants not given stay as they are */
        attn_tc_variants v = attn_tc_set_variants((attn_tc_variants){1, 1});
        if (groups >= 0) v.groups = groups;
        if (dkv >= 0) v.dkv = dkv;
        attn_tc_set_variants(v);
    }

    llama_config c;
    hf_config_defaults(&c);
    c.vocab_size = vocab;
    c.d_model = d_model;
    c.d_ff = d_ff;
    c.n_layers = layers;
    for (int l = 0; l < layers; l++) c.d_ff_layer[l] = d_ff;
    c.n_heads = heads;
    c.n_kv_heads = kv;
    c.head_dim = hd;
    c.max_position_embeddings = T > 131072 ? T : 131072;
    c.rope_theta = 500000.0;
    snprintf(c.rope_scaling_type, sizeof c.rope_scaling_type, "llama3");
    c.rope_factor = 32.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_pos = 8192;
    c.tie_word_embeddings = 1;

    mem_peak mem = {0, 0};
    sample_memory(&mem);
    size_t used_before = mem.used;
    llama_model m;
    pc_err e;
    if (llama_init(&m, &c, be, B, T, &e)) {
        fprintf(stderr, "llama_init: %s\n", e.msg);
        return 1;
    }
    llama_init_random(&m, 1, 0.02f);
    if (bf16 && w16) {
        llama_use_bf16_weights(&m);
        llama_refresh_w16(&m);
    }
    size_t N = (size_t)B * T;
    int32_t *tok = pc_malloc(N * sizeof(int32_t)), *tgt = pc_malloc(N * sizeof(int32_t));
    pc_rng r;
    pc_rng_seed(&r, 5);
    for (size_t i = 0; i < N; i++) tok[i] = (int32_t)(pc_rng_u64(&r) % (uint64_t)c.vocab_size);
    for (size_t i = 0; i < N; i++) tgt[i] = i + 1 < N ? tok[i + 1] : 0;

    printf("model: d %d, d_ff %d, layers %d, heads %d/%d x %d, vocab %d, tied; %.1fM parameters\n", c.d_model,
           c.d_ff, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, (double)m.n_params / 1e6);
    printf("batch: B %d x T %d = %zu tokens; %s%s\n", B, T, N, be->info,
           m.w16 ? "; products read a bf16 weight copy" : "");

    double t_fwd = 0.0, t_bwd = 0.0, t_prof = 0.0, loss = 0.0;
    for (int s = 0; s < warmup + steps + prof_steps; s++) {
        if (s == warmup + steps) backend_cuda_profile(be, 1);
        llama_zero_grad(&m);
        be->ops->sync(be);
        double t0 = pc_now();
        loss = llama_forward(&m, tok, tgt); /* returns after the loss reached the host */
        be->ops->sync(be);
        double t1 = pc_now();
        sample_memory(&mem);
        llama_backward(&m);
        be->ops->sync(be);
        double t2 = pc_now();
        sample_memory(&mem);
        if (s >= warmup + steps)
            t_prof += t2 - t0;
        else if (s >= warmup) {
            t_fwd += t1 - t0;
            t_bwd += t2 - t1;
        }
    }
    double per_step = (t_fwd + t_bwd) / steps, tok_s = (double)N / per_step;
    double flops_tok = llama_flops_per_token(&c, T);
    double achieved = flops_tok * tok_s;
    printf("loss %.4f (random weights, expect about ln(vocab) = %.2f)\n", loss, log((double)c.vocab_size));
    printf("step %.1f ms (forward %.1f ms, backward %.1f ms) over %d steps after %d warm-up\n", 1e3 * per_step,
           1e3 * t_fwd / steps, 1e3 * t_bwd / steps, steps, warmup);
    printf("tokens/s %.0f; %.3f GFLOP/token; %.1f TFLOP/s; MFU %.1f%% of %.1f TFLOP/s\n", tok_s, flops_tok / 1e9,
           achieved / 1e12, 100.0 * achieved / (peak_tflops * 1e12), peak_tflops);
    printf("peak device memory in use %.2f GiB of %.2f GiB (%.2f GiB before the model)\n",
           (double)mem.used / (1 << 30), (double)mem.total / (1 << 30), (double)used_before / (1 << 30));
    attn_tc_tuned_report(stdout);
    if (prof_steps > 0) {
        printf("\nop profile of %d more step(s), %.1f ms per step with the profiler's events:\n", prof_steps,
               1e3 * t_prof / prof_steps);
        backend_cuda_profile_report(be, stdout, t_prof);
    }
    llama_free(&m);
    free(tok);
    free(tgt);
    backend_destroy(be);
    return 0;
}
