/* bench-model: forward+backward throughput of the Llama model on the CPU backend.
 *
 *   bench-model [d=256] [layers=4] [heads=4] [kv=2] [head_dim=64] [ff=688] [vocab=8192]
 *               [B=4] [T=128] [iters=10] [threads=1] [recompute=0]
 *
 * recompute=1 builds the model with activation checkpointing (llama_init_recompute).
 * Random weights (llama_init_random), random tokens; one untimed warm-up iteration.
 * Prints one JSON line: tokens/s, ms per iteration and achieved GFLOP/s. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "hf_config.h"
#include "llama.h"

int main(int argc, char **argv)
{
    int d = 256, layers = 4, heads = 4, kv = 2, hd = 64, ff = 688, vocab = 8192, B = 4, T = 128, iters = 10,
        threads = 1, recompute = 0;
    struct {
        const char *key;
        int *val;
    } opts[] = {{"d", &d},         {"layers", &layers}, {"heads", &heads}, {"kv", &kv},
                {"head_dim", &hd}, {"ff", &ff},         {"vocab", &vocab}, {"B", &B},
                {"T", &T},         {"iters", &iters},   {"threads", &threads}, {"recompute", &recompute}};
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        int found = 0;
        for (size_t k = 0; eq && k < PC_ARRAY_LEN(opts); k++)
            if (strncmp(argv[i], opts[k].key, (size_t)(eq - argv[i])) == 0 &&
                strlen(opts[k].key) == (size_t)(eq - argv[i])) {
                *opts[k].val = atoi(eq + 1);
                found = 1;
            }
        if (!found) {
            fprintf(stderr, "bench-model: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    llama_config c;
    hf_config_defaults(&c);
    c.vocab_size = vocab;
    c.d_model = d;
    c.d_ff = ff;
    c.n_layers = layers;
    for (int l = 0; l < layers; l++) c.d_ff_layer[l] = ff;
    c.n_heads = heads;
    c.n_kv_heads = kv;
    c.head_dim = hd;
    c.max_position_embeddings = T;
    c.tie_word_embeddings = 0;

    pc_err e = {{0}};
    backend *be = backend_cpu_create(threads);
    char core[32];
    if (backend_cpu_better_coretype(core, sizeof(core)))
        fprintf(stderr, "bench-model: %s; OPENBLAS_CORETYPE=%s would use this CPU's AVX-512 kernels\n", be->info, core);
    llama_model m;
    if ((recompute ? llama_init_recompute : llama_init)(&m, &c, be, B, T, &e)) {
        fprintf(stderr, "bench-model: %s\n", e.msg);
        return 1;
    }
    llama_init_random(&m, 1234, 0.02f);
    size_t N = (size_t)B * T;
    int32_t *tok = pc_malloc(2 * N * sizeof(int32_t));
    pc_rng r;
    pc_rng_seed(&r, 99);
    for (size_t i = 0; i < 2 * N; i++) tok[i] = (int32_t)(pc_rng_u64(&r) % (uint64_t)vocab);

    llama_zero_grad(&m);
    float loss = llama_forward(&m, tok, tok + N);
    llama_backward(&m);
    double t0 = pc_now();
    for (int it = 0; it < iters; it++) {
        loss = llama_forward(&m, tok, tok + N);
        llama_backward(&m);
    }
    be->ops->sync(be);
    double dt = (pc_now() - t0) / iters;
    double flops = llama_flops_per_token(&c, T) * (double)N;
    printf("{\"backend\": \"%s\", \"info\": \"%s\", \"threads\": %d, \"params\": %lld, \"B\": %d, \"T\": %d, \"loss\": %.4f, "
           "\"ms_per_iter\": %.3f, \"tokens_per_s\": %.1f, \"gflops\": %.2f}\n",
           be->ops->name, be->info, threads, (long long)m.n_params, B, T, (double)loss, dt * 1e3, (double)N / dt,
           flops / dt * 1e-9);
    free(tok);
    llama_free(&m);
    backend_destroy(be);
    return 0;
}
