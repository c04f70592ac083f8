/* proj_check: Projected Compression gradients of one batch for comparison with PyTorch
 * autograd (test_proj_grads.py).
 *
 *   proj_check BASE_DIR TOKENS.i32 B T D_MODEL_C D_FF_C OUT.safetensors [SEED]
 *
 * Kept indices are drawn at random from SEED; every trainable tensor (P_in, P_out, A,
 * norm gains) is then perturbed with normal noise so that no projection is one-hot.
 * W_C is materialised, the small model runs forward and backward on tokens/targets
 * (TOKENS.i32: (B,T) tokens then (B,T) targets), and the output holds, for every
 * trainable tensor X, "X" (its value) and "grad.X", plus "loss", "idx.d" and
 * "idx.ff.<layer>" (as f32). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "importance.h"
#include "project.h"

static int fail(const pc_err *e) {
    fprintf(stderr, "proj_check: %s\n", e->msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: proj_check BASE_DIR TOKENS.i32 B T D_MODEL_C D_FF_C OUT.safetensors [SEED]\n");
        return 2;
    }
    int B = atoi(argv[3]), T = atoi(argv[4]), dc = atoi(argv[5]), fc = atoi(argv[6]);
    uint64_t seed = argc > 8 ? strtoull(argv[8], NULL, 10) : 1;
    pc_err e = {{0}};
    char *raw;
    size_t len, NT = (size_t)B * T;
    if (pc_read_file(argv[2], &raw, &len, &e)) return fail(&e);
    if (len != 2 * NT * sizeof(int32_t)) return fprintf(stderr, "proj_check: bad token file size\n"), 2;
    const int32_t *tokens = (const int32_t *)raw, *targets = tokens + NT;

    llama_config bc;
    st_model *base;
    if (hf_config_load(argv[1], &bc, &e) || st_open(argv[1], &base, &e)) return fail(&e);
    importance_scores s;
    importance_alloc(&s, &bc);
    importance_random(&s, seed);
    int d_ff_c[PC_MAX_LAYERS];
    for (int l = 0; l < bc.n_layers; l++) d_ff_c[l] = fc;
    proj_indices idx;
    importance_select(&s, dc, d_ff_c, &idx);

    llama_config sc = bc;
    sc.d_model = dc;
    sc.d_ff = fc;
    for (int l = 0; l < sc.n_layers; l++) sc.d_ff_layer[l] = fc;
    sc.tie_word_embeddings = 0;
    backend *be = backend_cpu_create(1);
    llama_model m;
    proj_set ps;
    if (llama_init(&m, &sc, be, B, T, &e) || proj_init(&ps, be, base, &bc, &m, &idx, &e)) return fail(&e);
    pc_rng rng;
    pc_rng_seed(&rng, seed * 7919 + 1);
    for (int64_t i = 0; i < ps.n_params; i++) ps.params[i] += 0.05f * pc_rng_normal(&rng);

    proj_materialize(&ps, &m);
    llama_zero_grad(&m);
    float loss = llama_forward(&m, tokens, targets);
    llama_backward(&m);

    /* gradients of every trainable tensor, laid out like ps.params */
    float *grads = pc_alloc_f32((size_t)ps.n_params);
    for (int i = 0; i < ps.n_mats; i++) {
        const proj_matrix *pm = &ps.mats[i];
        int64_t gin, gout, ga;
        proj_grad_matrix(&ps, i, &m, &gin, &gout, &ga);
        if (gin >= 0) memcpy(grads + pm->p_in, ps.grad + gin, sizeof(float) * (size_t)pm->d_in * pm->d_in_c);
        if (gout >= 0) memcpy(grads + pm->p_out, ps.grad + gout, sizeof(float) * (size_t)pm->d_out_c * pm->d_out);
        memcpy(grads + pm->a, ps.grad + ga, sizeof(float) * (size_t)pm->d_out_c * pm->d_in_c);
    }
    for (int i = 0; i < ps.n_norms; i++)
        memcpy(grads + ps.norms[i].offset, m.grads + llama_tensor_at(&m, ps.norms[i].small_index)->offset,
               sizeof(float) * (size_t)ps.norms[i].n);

    int n_items = 2 * ps.n_tensors + 2 + bc.n_layers;
    st_item *items = pc_calloc((size_t)n_items, sizeof *items);
    char (*names)[LLAMA_NAME_MAX + 16] = pc_calloc((size_t)n_items, sizeof *names);
    int k = 0;
    for (int i = 0; i < ps.n_tensors; i++) {
        const proj_tensor *pt = &ps.tensors[i];
        for (int g = 0; g < 2; g++, k++) {
            snprintf(names[k], sizeof names[k], "%s%s", g ? "grad." : "", pt->name);
            items[k].name = names[k];
            items[k].ndim = 1;
            items[k].shape[0] = pt->numel;
            items[k].data = (g ? grads : ps.params) + pt->offset;
        }
    }
    items[k++] = (st_item){.name = "loss", .ndim = 1, .shape = {1}, .data = &loss};
    float *idx_f = pc_alloc_f32((size_t)dc + (size_t)bc.n_layers * fc);
    for (int j = 0; j < dc; j++) idx_f[j] = (float)idx.idx_d[j];
    items[k++] = (st_item){.name = "idx.d", .ndim = 1, .shape = {dc}, .data = idx_f};
    for (int l = 0; l < bc.n_layers; l++, k++) {
        float *f = idx_f + dc + (size_t)l * fc;
        for (int j = 0; j < fc; j++) f[j] = (float)idx.idx_ff[l][j];
        snprintf(names[k], sizeof names[k], "idx.ff.%d", l);
        items[k] = (st_item){.name = names[k], .ndim = 1, .shape = {fc}, .data = f};
    }
    if (st_write(argv[7], items, k, ST_F32, &e)) return fail(&e);
    printf("loss %.7f, %lld trainable parameters in %d tensors\n", (double)loss, (long long)ps.n_params, ps.n_tensors);
    free(idx_f);
    free(names);
    free(items);
    free(grads);
    proj_free(&ps);
    llama_free(&m);
    proj_indices_free(&idx, bc.n_layers);
    importance_free(&s);
    st_close(base);
    backend_destroy(be);
    free(raw);
    return 0;
}
