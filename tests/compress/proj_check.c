/* proj_check: Projected Compression gradients of one batch for comparison with PyTorch
 * autograd (test_proj_grads.py).
 *
 *   proj_check BASE_DIR TOKENS.i32 B T D_MODEL_C D_FF_C OUT.safetensors [SEED [split]]
 *
 * Kept indices are drawn at random from SEED; every trainable tensor (P_in, P_out, A,
 * norm gains) is then perturbed with normal noise so that no projection is one-hot.
 * With "split", the input-only matrices are cut into two row blocks and o_proj into two
 * column blocks (all on this one rank), so their P_in / P_out are shared factors whose
 * gradient is summed over blocks; the output is assembled per tensor either way.
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
    if (llama_init(&m, &sc, be, B, T, &e)) return fail(&e);
    int split = argc > 9 && !strcmp(argv[9], "split");
    proj_spec *specs = pc_calloc((size_t)llama_n_tensors(&m) * 2, sizeof *specs);
    int n_specs = 0;
    for (int i = 0; i < llama_n_tensors(&m); i++) {
        const llama_tensor *t = llama_tensor_at(&m, i);
        int rows = split && t->ndim == 2 && !strstr(t->name, "mlp") && !strstr(t->name, "o_proj");
        int cols = split && strstr(t->name, "o_proj") != NULL;
        int64_t n = rows ? t->shape[0] : t->shape[1], cut = n / 2 - (n / 2) % 8;
        if (rows || cols) {
            specs[n_specs++] = (proj_spec){t->name, rows ? PROJ_ROWS : PROJ_COLS, 0, cut, 0};
            specs[n_specs++] = (proj_spec){t->name, rows ? PROJ_ROWS : PROJ_COLS, cut, n, 0};
        } else {
            specs[n_specs++] = (proj_spec){t->name, t->ndim == 1 ? PROJ_NORM : PROJ_WHOLE, 0, 0, 0};
        }
    }
    if (proj_init(&ps, be, base, &bc, &m, &idx, specs, n_specs, 0, 1, 0, &e)) return fail(&e);
    pc_rng rng;
    pc_rng_seed(&rng, seed * 7919 + 1);
    for (int64_t i = 0; i < ps.n_params; i++) ps.params[i] += 0.05f * pc_rng_normal(&rng);

    proj_materialize(&ps, &m);
    llama_zero_grad(&m);
    float loss = llama_forward(&m, tokens, targets);
    llama_backward(&m);

    /* gradients of every trainable tensor, laid out like ps.params */
    float *grads = pc_alloc_f32((size_t)ps.n_params);
    memset(ps.shared_grad, 0, sizeof(float) * (size_t)ps.shared_grad_n);
    for (int i = 0; i < ps.n_blocks; i++) {
        const proj_block *pb = &ps.blocks[i];
        int64_t gin, gout, ga;
        proj_grad_block(&ps, i, &m, 1, NULL, &gin, &gout, &ga);
        if (gin >= 0) memcpy(grads + pb->p_in, ps.grad + gin, sizeof(float) * (size_t)pb->d_in * pb->d_in_c);
        if (gout >= 0) memcpy(grads + pb->p_out, ps.grad + gout, sizeof(float) * (size_t)pb->d_out_c * pb->d_out);
        memcpy(grads + pb->a, ps.grad + ga, sizeof(float) * (size_t)pb->d_out_c * pb->d_in_c);
    }
    for (int s = 0; s < ps.n_shared; s++)
        memcpy(grads + ps.shared[s].param_off, ps.shared_grad + ps.shared[s].grad_off,
               sizeof(float) * (size_t)ps.shared[s].numel);

    /* assemble per small tensor: "<name>.p_in", ".p_out", ".a" (whole) and norm gains */
    float *vals = pc_alloc_f32((size_t)ps.n_params + (size_t)m.n_params);
    float *gs = pc_alloc_f32((size_t)ps.n_params + (size_t)m.n_params);
    int n_out = 0, cap = 3 * llama_n_tensors(&m);
    proj_tensor *outs = pc_calloc((size_t)cap, sizeof *outs);
    int64_t used = 0;
    for (int ti = 0; ti < llama_n_tensors(&m); ti++) {
        const llama_tensor *t = llama_tensor_at(&m, ti);
        for (int i = 0; i < ps.n_blocks; i++) {
            const proj_block *pb = &ps.blocks[i];
            if (pb->small_index != ti) continue;
            const char *sfx[3] = {".p_in", ".p_out", t->ndim == 1 ? "" : ".a"};
            int64_t offs[3] = {pb->p_in, pb->p_out, pb->a};
            int64_t ns[3] = {(int64_t)pb->d_in * pb->d_in_c, (int64_t)pb->d_out_c * pb->d_out, t->numel};
            for (int k = 0; k < 3; k++) {
                if (offs[k] < 0) continue;
                char nm[LLAMA_NAME_MAX + 32];
                snprintf(nm, sizeof nm, "%s%s", t->name, sfx[k]);
                int o = 0;
                while (o < n_out && strcmp(outs[o].name, nm)) o++;
                if (o == n_out) { /* first block of this tensor: reserve the whole tensor */
                    snprintf(outs[o].name, sizeof outs[o].name, "%s", nm);
                    outs[o].offset = used;
                    outs[o].numel = ns[k];
                    used += ns[k];
                    n_out++;
                }
                if (k < 2) { /* a factor: whole (shared ones are identical in every block) */
                    memcpy(vals + outs[o].offset, ps.params + offs[k], sizeof(float) * (size_t)ns[k]);
                    memcpy(gs + outs[o].offset, grads + offs[k], sizeof(float) * (size_t)ns[k]);
                } else { /* A slice (d_out', d_in') at its place in the (O, I) tensor */
                    int64_t base_off = pb->off_c - t->offset;
                    for (int r = 0; r < pb->d_out_c; r++) {
                        memcpy(vals + outs[o].offset + base_off + (int64_t)r * pb->ld_c,
                               ps.params + offs[k] + (int64_t)r * pb->d_in_c, sizeof(float) * (size_t)pb->d_in_c);
                        memcpy(gs + outs[o].offset + base_off + (int64_t)r * pb->ld_c,
                               grads + offs[k] + (int64_t)r * pb->d_in_c, sizeof(float) * (size_t)pb->d_in_c);
                    }
                }
            }
        }
    }

    int n_items = 2 * n_out + 2 + bc.n_layers;
    st_item *items = pc_calloc((size_t)n_items, sizeof *items);
    char (*names)[LLAMA_NAME_MAX + 48] = pc_calloc((size_t)n_items, sizeof *names);
    int k = 0;
    for (int i = 0; i < n_out; i++) {
        const proj_tensor *pt = &outs[i];
        for (int g = 0; g < 2; g++, k++) {
            snprintf(names[k], sizeof names[k], "%s%s", g ? "grad." : "", pt->name);
            items[k].name = names[k];
            items[k].ndim = 1;
            items[k].shape[0] = pt->numel;
            items[k].data = (g ? gs : vals) + pt->offset;
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
    printf("loss %.7f, %lld trainable parameters, %d blocks, %d shared factors\n", (double)loss,
           (long long)ps.n_params, ps.n_blocks, ps.n_shared);
    free(outs);
    free(vals);
    free(gs);
    free(specs);
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
