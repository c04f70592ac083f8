/* test_plan: units for the sharding planner on real model shapes (Llama-3.1-8B,
 * Llama-3.2-1B, SmolLM-135M, a 70B GQA shape, the tiny demo): every projected element
 * covered by exactly one block, one owner per block, byte and element sums against
 * counts derived here from the shapes, determinism, balance, no splits on one rank,
 * head-aligned q/k/v rows and o_proj columns, owner lookup, speed, the dry run from a
 * job YAML, the error paths, and the distillation teacher's and the activations' bytes
 * (with and without recomputation) against what llama_init* allocates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend_cuda.h"
#include "llama.h"
#include "plan.h"

typedef struct model_case {
    const char *dir; /* under configs/models, or NULL for the demo model */
    int d_model_c, d_ff_c;
} model_case;

static const model_case MODELS[] = {
    {"llama-3.1-8b", 2160, 6480},
    {"llama-3.2-1b", 1344, 5376},
    {"smollm-135m", 384, 1024},
    {"llama-3.1-70b", 4320, 12960},
    {NULL, 64, 192},
};
static const int WORLDS[] = {1, 2, 3, 8, 16, 64, 512};

static void load_case(const model_case *mc, llama_config *base, llama_config *small) {
    const char *src = getenv("PC_SRC");
    char path[2048];
    if (mc->dir)
        snprintf(path, sizeof path, "%s/configs/models/%s/config.json", src ? src : ".", mc->dir);
    else
        snprintf(path, sizeof path, "%s/configs/demo-model.json", src ? src : ".");
    pc_err e = {{0}};
    int rc = hf_config_load_file(path, base, &e);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    *small = *base;
    small->d_model = mc->d_model_c;
    small->d_ff = mc->d_ff_c;
    for (int l = 0; l < base->n_layers; l++) small->d_ff_layer[l] = mc->d_ff_c;
    small->tie_word_embeddings = 0;
}

static plan_opts gpu_opts(void) {
    plan_opts o;
    plan_opts_default(&o);
    o.base_dtype_bytes = 2;
    o.compute_dtype_bytes = 2;
    o.attn_tt = 0;
    return o;
}

/* Expected shapes, derived from the config alone. */
typedef struct expect_tensor {
    char name[PLAN_NAME_MAX];
    int norm;
    int64_t d_out, d_in, d_out_c, d_in_c;
    int split_cols; /* 1: o_proj (column ranges) */
} expect_tensor;

static int expected_tensors(const llama_config *b, const llama_config *s, expect_tensor *t) {
    int n = 0;
    int64_t V = b->vocab_size, qd = (int64_t)b->n_heads * b->head_dim, kvd = (int64_t)b->n_kv_heads * b->head_dim;
#define ADD(nm, nrm, o, i, oc, ic, sc)                                                                                \
    do {                                                                                                               \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                                               \
        t[n].norm = nrm, t[n].d_out = o, t[n].d_in = i, t[n].d_out_c = oc, t[n].d_in_c = ic, t[n].split_cols = sc;    \
        n++;                                                                                                           \
    } while (0)
    char nm[PLAN_NAME_MAX];
    ADD("model.embed_tokens.weight", 0, V, b->d_model, V, s->d_model, 0);
    for (int l = 0; l < b->n_layers; l++) {
        int64_t f = b->d_ff_layer[l], fc = s->d_ff_layer[l];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        ADD(nm, 1, b->d_model, 1, s->d_model, 1, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(nm, 0, qd, b->d_model, qd, s->d_model, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(nm, 0, kvd, b->d_model, kvd, s->d_model, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(nm, 0, kvd, b->d_model, kvd, s->d_model, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(nm, 0, b->d_model, qd, s->d_model, qd, 1);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(nm, 1, b->d_model, 1, s->d_model, 1, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(nm, 0, f, b->d_model, fc, s->d_model, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(nm, 0, f, b->d_model, fc, s->d_model, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.down_proj.weight", l);
        ADD(nm, 0, b->d_model, f, s->d_model, fc, 0);
    }
    ADD("model.norm.weight", 1, b->d_model, 1, s->d_model, 1, 0);
    ADD("lm_head.weight", 0, V, b->d_model, V, s->d_model, 0);
#undef ADD
    return n;
}

/* Checks every structural invariant of one plan against the shapes. */
static void check_plan(const plan *p, const llama_config *b, const llama_config *s, int base_bytes_per) {
    int cap = 3 + 9 * b->n_layers;
    expect_tensor *t = calloc((size_t)cap, sizeof *t);
    int nt = expected_tensors(b, s, t);
    assert_int_equal(p->n_tensors, nt);
    int bi = 0;
    int64_t exp_base_bytes = 0, exp_trainable = 0, got_trainable = 0;
    for (int i = 0; i < nt; i++) {
        const expect_tensor *x = &t[i];
        int pin = !x->norm && x->d_in_c < x->d_in, pout = !x->norm && x->d_out_c < x->d_out;
        /* P_in, P_out, A (or the norm gain) of this tensor */
        exp_trainable += x->norm ? x->d_out_c
                                 : x->d_out_c * x->d_in_c + (pin ? x->d_in * x->d_in_c : 0) +
                                       (pout ? x->d_out_c * x->d_out : 0);
        if (!x->norm) exp_base_bytes += x->d_out * x->d_in * base_bytes_per;
        /* blocks of tensor i are consecutive and tile its split axis in order */
        int64_t next = 0, base_elems = 0, c_elems = 0;
        int64_t extent = x->norm ? x->d_out_c : x->split_cols ? x->d_in : x->d_out;
        int first = bi;
        const char *shared = NULL;
        while (bi < p->n_blocks && !strcmp(p->blocks[bi].name, x->name)) {
            const plan_block *k = &p->blocks[bi];
            assert_int_equal(k->matrix, i);
            assert_true(k->owner >= 0 && k->owner < p->world);
            assert_int_equal(k->r0, next);
            assert_true(k->r1 > k->r0);
            next = k->r1;
            base_elems += k->base_rows * k->base_cols;
            c_elems += k->c_rows * k->c_cols;
            got_trainable += k->own_numel;
            if (x->norm) {
                assert_int_equal(k->kind, PLAN_NORM);
            } else {
                assert_int_equal(k->base_bytes, k->base_rows * k->base_cols * base_bytes_per);
                assert_int_equal(k->state_bytes, 12 * k->own_numel);
                assert_int_equal(k->shared_bytes, 12 * k->shared_numel);
                if (k->kind == PLAN_COLS) {
                    assert_true(x->split_cols);
                    assert_int_equal(k->base_rows, x->d_out);
                    assert_int_equal(k->c_rows, x->d_out_c);
                    assert_int_equal(k->base_cols, k->r1 - k->r0);
                } else if (k->kind == PLAN_ROWS) {
                    assert_false(x->split_cols);
                    assert_int_equal(k->base_cols, x->d_in);
                    assert_int_equal(k->c_cols, x->d_in_c);
                    assert_int_equal(k->base_rows, k->r1 - k->r0);
                } else {
                    assert_int_equal(k->kind, PLAN_WHOLE);
                }
                /* one shared factor name per split matrix, present iff the side projects */
                if (k->kind == PLAN_ROWS || k->kind == PLAN_COLS) {
                    int has = k->kind == PLAN_ROWS ? pin : pout;
                    assert_int_equal(k->shared[0] != '\0', has);
                    if (shared) assert_string_equal(shared, k->shared);
                    shared = k->shared;
                    int64_t sn = k->kind == PLAN_ROWS ? x->d_in * x->d_in_c : x->d_out_c * x->d_out;
                    assert_int_equal(k->shared_numel, has ? sn : 0);
                } else {
                    assert_int_equal(k->shared_numel, 0);
                }
            }
            bi++;
        }
        assert_true(bi > first); /* every tensor has at least one block */
        assert_int_equal(next, extent);
        if (!x->norm) {
            assert_int_equal(base_elems, x->d_out * x->d_in);
            assert_int_equal(c_elems, x->d_out_c * x->d_in_c);
        }
        if (shared) got_trainable += p->blocks[first].shared_numel; /* counted once per matrix */
    }
    assert_int_equal(bi, p->n_blocks);
    assert_int_equal(got_trainable, exp_trainable);
    assert_int_equal(p->total_base_bytes, exp_base_bytes);
    /* per-rank sums */
    int64_t sb = 0, ss = 0, sh = 0, sh_exp = 0, strided = 0;
    int nb = 0;
    for (int i = 0; i < p->n_blocks; i++) /* the exchange buffer: every column block's W_C, f32 */
        if (p->blocks[i].kind == PLAN_COLS) strided += p->blocks[i].c_rows * (p->blocks[i].r1 - p->blocks[i].r0);
    for (int r = 0; r < p->world; r++) {
        sb += p->ranks[r].base_bytes;
        ss += p->ranks[r].state_bytes;
        sh += p->ranks[r].shared_bytes;
        nb += p->ranks[r].n_blocks;
        if (p->n_blocks >= p->world) assert_true(p->ranks[r].n_blocks >= 1);
        const plan_rank *rk = &p->ranks[r];
        assert_int_equal(rk->xchg_bytes, p->world > 1 ? 4 * strided : 0);
        assert_int_equal(rk->total_bytes, rk->base_bytes + rk->state_bytes + rk->shared_bytes + rk->replica_bytes +
                                              rk->xchg_bytes + rk->scratch_bytes + rk->act_bytes);
    }
    for (int i = 0; i < p->n_shared; i++) {
        /* count distinct owners of the blocks carrying this factor, here */
        char *seen = calloc((size_t)p->world, 1);
        int n = 0;
        for (int k = 0; k < p->n_blocks; k++)
            if (!strcmp(p->blocks[k].shared, p->shared[i].name) && !seen[p->blocks[k].owner])
                seen[p->blocks[k].owner] = 1, n++;
        free(seen);
        assert_int_equal(p->shared[i].n_ranks, n);
        sh_exp += (int64_t)n * 12 * p->shared[i].numel;
    }
    assert_int_equal(nb, p->n_blocks);
    assert_int_equal(sb, exp_base_bytes);
    assert_int_equal(ss, p->total_state_bytes);
    assert_int_equal(sh, sh_exp);
    assert_int_equal(p->small_numel, hf_config_n_params(s));
    free(t);
}

static void test_invariants_all_models(void **state) {
    (void)state;
    static llama_config base, small;
    for (size_t m = 0; m < PC_ARRAY_LEN(MODELS); m++) {
        load_case(&MODELS[m], &base, &small);
        for (size_t w = 0; w < PC_ARRAY_LEN(WORLDS); w++) {
            for (int cpu = 0; cpu < 2; cpu++) {
                plan_opts o = gpu_opts();
                if (cpu) o.base_dtype_bytes = o.compute_dtype_bytes = 4, o.attn_tt = 1;
                plan p;
                pc_err e = {{0}};
                int rc = plan_build(&p, &base, &small, WORLDS[w], &o, &e);
                if (rc != 0) fprintf(stderr, "%s\n", e.msg);
                assert_int_equal(rc, 0);
                check_plan(&p, &base, &small, o.base_dtype_bytes);
                if (WORLDS[w] == 1) { /* one rank: nothing is split */
                    assert_int_equal(p.n_split, 0);
                    assert_int_equal(p.n_shared, 0);
                    for (int i = 0; i < p.n_blocks; i++)
                        assert_true(p.blocks[i].kind == PLAN_WHOLE || p.blocks[i].kind == PLAN_NORM);
                }
                plan_free(&p);
            }
        }
    }
}

/* Forced splits: a 1-byte threshold cuts every splittable matrix as far as it goes
 * (one head, one vocabulary row, capped by the world size). */
static void test_head_alignment(void **state) {
    (void)state;
    static llama_config base, small;
    for (size_t m = 0; m < PC_ARRAY_LEN(MODELS); m++) {
        load_case(&MODELS[m], &base, &small);
        plan_opts o = gpu_opts();
        o.split_bytes = 1;
        plan p;
        assert_int_equal(plan_build(&p, &base, &small, 64, &o, NULL), 0);
        check_plan(&p, &base, &small, 2);
        int q_split = 0, o_split = 0, v_split = 0;
        for (int i = 0; i < p.n_blocks; i++) {
            const plan_block *k = &p.blocks[i];
            int qkv = strstr(k->name, "q_proj") || strstr(k->name, "k_proj") || strstr(k->name, "v_proj");
            if (qkv && k->kind == PLAN_ROWS) {
                assert_int_equal(k->r0 % base.head_dim, 0);
                assert_int_equal(k->r1 % base.head_dim, 0);
                q_split = 1;
            }
            if (strstr(k->name, "o_proj") && k->kind == PLAN_COLS) {
                assert_int_equal(k->r0 % base.head_dim, 0);
                assert_int_equal(k->r1 % base.head_dim, 0);
                o_split = 1;
            }
            if ((strstr(k->name, "embed_tokens") || strstr(k->name, "lm_head")) && k->kind == PLAN_ROWS) v_split = 1;
            if (strstr(k->name, "mlp.")) assert_int_equal(k->kind, PLAN_WHOLE); /* both-side: never split */
        }
        assert_true(q_split && o_split && v_split);
        assert_true(p.n_shared > 0);
        plan_free(&p);
    }
}

static char *plan_text(const plan *p) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(plan_write(p, f), 0);
    fclose(f);
    return buf;
}

static void test_deterministic(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[0], &base, &small);
    for (int w = 1; w <= 512; w *= 8) {
        plan_opts o = gpu_opts();
        plan a, b;
        assert_int_equal(plan_build(&a, &base, &small, w, &o, NULL), 0);
        assert_int_equal(plan_build(&b, &base, &small, w, &o, NULL), 0);
        assert_int_equal(a.n_blocks, b.n_blocks);
        for (int i = 0; i < a.n_blocks; i++) assert_int_equal(a.blocks[i].owner, b.blocks[i].owner);
        char *ta = plan_text(&a), *tb = plan_text(&b);
        assert_string_equal(ta, tb);
        free(ta);
        free(tb);
        plan_free(&a);
        plan_free(&b);
    }
}

/* Greedy by size: each block went to a rank whose load, before it, was minimal. Replays
 * the assignment from the plan's own blocks in the documented order. */
static int cmp_blocks_size(const void *x, const void *y) {
    const plan_block *a = *(const plan_block *const *)x, *b = *(const plan_block *const *)y;
    int64_t la = a->base_bytes + a->state_bytes + a->shared_bytes, lb = b->base_bytes + b->state_bytes + b->shared_bytes;
    if (la != lb) return la > lb ? -1 : 1;
    int c = strcmp(a->name, b->name);
    return c ? c : (a->r0 > b->r0) - (a->r0 < b->r0);
}

static void test_greedy_and_balance(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[0], &base, &small);
    const int worlds[] = {8, 16, 64, 512};
    for (size_t w = 0; w < PC_ARRAY_LEN(worlds); w++) {
        plan_opts o = gpu_opts();
        plan p;
        assert_int_equal(plan_build(&p, &base, &small, worlds[w], &o, NULL), 0);
        const plan_block **ord = calloc((size_t)p.n_blocks, sizeof *ord);
        for (int i = 0; i < p.n_blocks; i++) ord[i] = &p.blocks[i];
        qsort(ord, (size_t)p.n_blocks, sizeof *ord, cmp_blocks_size);
        int64_t *load = calloc((size_t)p.world, sizeof *load);
        double *fl = calloc((size_t)p.world, sizeof *fl);
        for (int i = 0; i < p.n_blocks; i++) {
            int r = ord[i]->owner;
            for (int q = 0; q < p.world; q++)
                assert_true(load[r] < load[q] || (load[r] == load[q] && (fl[r] < fl[q] || (fl[r] == fl[q] && r <= q))));
            load[r] += ord[i]->base_bytes + ord[i]->state_bytes + ord[i]->shared_bytes;
            fl[r] += ord[i]->flops;
        }
        int64_t mx = 0, sum = 0, mem = 0;
        for (int r = 0; r < p.world; r++) {
            assert_int_equal(load[r], p.ranks[r].load_bytes);
            mx = PC_MAX(mx, load[r]);
            sum += load[r];
            mem = PC_MAX(mem, p.ranks[r].total_bytes);
        }
        double bal = (double)mx * p.world / (double)sum;
        assert_true(bal > 0.999 && bal - plan_balance(&p) < 1e-9 && plan_balance(&p) - bal < 1e-9);
        printf("# 8B at 2160/6480 on %d ranks: max/mean rank bytes %.3f, memory per rank max %.2f GiB\n", worlds[w],
               bal, (double)mem / 1073741824.0);
        if (worlds[w] <= 64) assert_true(bal <= 1.3);
        free(ord);
        free(load);
        free(fl);
        plan_free(&p);
    }
}

static void test_owner_lookup(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[0], &base, &small);
    plan_opts o = gpu_opts();
    o.split_bytes = 64 << 20;
    plan p;
    assert_int_equal(plan_build(&p, &base, &small, 64, &o, NULL), 0);
    pc_rng rng;
    pc_rng_seed(&rng, 7);
    for (int i = 0; i < p.n_blocks; i++) {
        const plan_block *k = &p.blocks[i];
        int64_t span = k->r1 - k->r0;
        int64_t probes[3] = {k->r0, k->r1 - 1, k->r0 + (int64_t)(pc_rng_u64(&rng) % (uint64_t)span)};
        for (int j = 0; j < 3; j++) {
            assert_int_equal(plan_block_of(&p, k->name, probes[j]), i);
            assert_int_equal(plan_owner_of(&p, k->name, probes[j]), k->owner);
        }
        if (k->kind == PLAN_ROWS || k->kind == PLAN_COLS) {
            int last = i + 1 == p.n_blocks || strcmp(p.blocks[i + 1].name, k->name) != 0;
            if (last) assert_int_equal(plan_owner_of(&p, k->name, k->r1), -1);
            if (k->r0 == 0) assert_int_equal(plan_owner_of(&p, k->name, -1), -1);
        }
    }
    assert_int_equal(plan_owner_of(&p, "model.layers.99.mlp.up_proj.weight", 0), -1);
    assert_int_equal(plan_owner_of(&p, "lm_head", 0), -1);
    assert_int_equal(plan_owner_of(&p, "", 0), -1);
    assert_null(plan_block_at(&p, -1));
    assert_null(plan_block_at(&p, p.n_blocks));
    assert_non_null(plan_block_at(&p, p.n_blocks - 1));
    plan_free(&p);
}

static void test_speed(void **state) {
    (void)state;
    static llama_config base, small;
    const struct {
        int m, w;
    } cases[] = {{0, 8}, {0, 16}, {0, 64}, {0, 512}, {3, 64}, {3, 128}, {3, 256}, {3, 512}};
    for (size_t c = 0; c < PC_ARRAY_LEN(cases); c++) {
        load_case(&MODELS[cases[c].m], &base, &small);
        plan_opts o = gpu_opts();
        double t0 = pc_now();
        plan p;
        assert_int_equal(plan_build(&p, &base, &small, cases[c].w, &o, NULL), 0);
        FILE *f = fopen("/dev/null", "w");
        assert_int_equal(plan_write(&p, f), 0);
        fclose(f);
        double dt = pc_now() - t0;
        printf("# %s on %d ranks: %d blocks, built and written in %.4f s\n", MODELS[cases[c].m].dir, cases[c].w,
               p.n_blocks, dt);
        assert_true(dt < 1.0);
        plan_free(&p);
    }
}

static void test_errors(void **state) {
    (void)state;
    static llama_config base, small, bad;
    load_case(&MODELS[0], &base, &small);
    plan_opts o = gpu_opts();
    plan p;
    pc_err e = {{0}};
    assert_int_equal(plan_build(&p, &base, &small, 0, &o, &e), -1);
    assert_non_null(strstr(e.msg, "world size 0"));
    bad = small;
    bad.d_model = base.d_model + 8;
    assert_int_equal(plan_build(&p, &base, &bad, 4, &o, &e), -1);
    assert_non_null(strstr(e.msg, "hidden_size"));
    bad = small;
    bad.d_ff_layer[5] = base.d_ff + 1;
    bad.d_ff = base.d_ff + 1;
    assert_int_equal(plan_build(&p, &base, &bad, 4, &o, &e), -1);
    assert_non_null(strstr(e.msg, "layer 5"));
    bad = small;
    bad.n_kv_heads = 4;
    assert_int_equal(plan_build(&p, &base, &bad, 4, &o, &e), -1);
    assert_non_null(strstr(e.msg, "heads"));
    bad = small;
    bad.tie_word_embeddings = 1;
    assert_int_equal(plan_build(&p, &base, &bad, 4, &o, &e), -1);
    assert_non_null(strstr(e.msg, "untied"));
    plan_opts ob = o;
    ob.base_dtype_bytes = 3;
    assert_int_equal(plan_build(&p, &base, &small, 4, &ob, &e), -1);
    assert_non_null(strstr(e.msg, "dtype"));
    ob = o;
    ob.seq_len = 0;
    assert_int_equal(plan_build(&p, &base, &small, 4, &ob, &e), -1);
    assert_non_null(strstr(e.msg, "seq_len"));
}

/* The dry run from a job YAML: reads only config.json (the directory has no weights). */
static void test_dry_run(void **state) {
    (void)state;
    const char *src = getenv("PC_SRC");
    char dir[] = "/tmp/pc-plan-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[4096], yaml[2100];
    snprintf(cmd, sizeof cmd, "cp '%s/configs/models/llama-3.1-8b/config.json' '%s/config.json'", src ? src : ".",
             dir);
    assert_int_equal(system(cmd), 0);
    snprintf(yaml, sizeof yaml, "%s/job.yaml", dir);
    FILE *f = fopen(yaml, "w");
    assert_non_null(f);
    fprintf(f,
            "run: {dir: %s/run, mode: compress}\nmodel: {base: %s, dtype: bf16}\n"
            "compress: {d_model: 2160, d_ff: 6480, importance: magnitude}\n"
            "data: {train: [%s/none-*.h5], seq_len: 4096}\n"
            "train: {steps: 1, global_batch: 64, micro_batch: 2}\nbackend: {device: cuda}\n",
            dir, dir, dir);
    fclose(f);
    static pc_config c;
    pc_err e = {{0}};
    int rc = config_load(&c, yaml, NULL, 0, &e);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    double t0 = pc_now();
    rc = plan_dry_run(&c, 16, 0, out, NULL, &e);
    double dt = pc_now() - t0;
    fclose(out);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    assert_true(dt < 1.0);
    assert_non_null(strstr(buf, "# base   d_model 4096  d_ff 14336  layers 32  heads 32/8  head_dim 128  vocab 128256"));
    assert_non_null(strstr(buf, "# small  d_model 2160  d_ff 6480  layers 32"));
    assert_non_null(strstr(buf, "# world 16  micro_batch 2  seq_len 4096  base_dtype 2B  compute_dtype 4B  attn_tt 0"));
    /* the largest rank in GiB, as the table prints it, against devices just above and below */
    const char *max = strstr(buf, "# memory GiB per rank: max ");
    assert_non_null(max);
    double largest = atof(max + strlen("# memory GiB per rank: max "));
    free(buf);
    int fits = -1;
    out = open_memstream(&buf, &len);
    assert_int_equal(plan_dry_run(&c, 16, largest + 0.01, out, &fits, &e), 0);
    fclose(out);
    assert_int_equal(fits, 1);
    assert_non_null(strstr(buf, "GiB device: the largest rank ("));
    free(buf);
    out = open_memstream(&buf, &len);
    assert_int_equal(plan_dry_run(&c, 16, largest - 0.01, out, &fits, &e), 0);
    fclose(out);
    assert_int_equal(fits, 0);
    assert_null(strstr(buf, "# fits"));
    assert_non_null(strstr(e.msg, "GiB device has "));
    assert_non_null(strstr(e.msg, "; try train.activation_checkpointing: true"));
    free(buf);

    /* backend.memory_gib is the size checked without --device-gib, and the one
     * compress.store_grads auto keeps gradients in: none below the plan, some above */
    char mem[64];
    const char *msets[] = {mem};
    for (int big = 0; big < 2; big++) {
        snprintf(mem, sizeof mem, "backend.memory_gib=%.3f", big ? largest * 2 : largest - 0.01);
        assert_int_equal(config_load(&c, yaml, msets, 1, &e), 0);
        out = open_memstream(&buf, &len);
        assert_int_equal(plan_dry_run(&c, 16, 0, out, &fits, &e), 0);
        fclose(out);
        assert_int_equal(fits, big);
        assert_true(strstr(buf, "compress.store_grads auto within") != NULL);
        assert_int_equal(strstr(buf, "   yes\n") != NULL, big); /* a kept block */
        free(buf);
    }

    /* per-layer d_ff and the CPU backend (bf16 base slices, f32 compute, one (T,T) score matrix) */
    const char *sets[] = {"backend.device=cpu", "compress.d_ff=[6480,6400,6480,6480,6480,6480,6480,6480,6480,6480,"
                                                "6480,6480,6480,6480,6480,6480,6480,6480,6480,6480,6480,6480,6480,"
                                                "6480,6480,6480,6480,6480,6480,6480,6480,7000]"};
    rc = config_load(&c, yaml, sets, 2, &e);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    out = open_memstream(&buf, &len);
    assert_int_equal(plan_dry_run(&c, 8, 0, out, NULL, &e), 0);
    fclose(out);
    assert_non_null(strstr(buf, "# small  d_model 2160  d_ff 7000 (max, per layer)"));
    assert_non_null(strstr(buf, "base_dtype 2B  compute_dtype 4B  attn_tt 1"));
    free(buf);

    /* a d_ff list of the wrong length is refused, naming the key */
    const char *bad[] = {"compress.d_ff=[6480,6480]"};
    rc = config_load(&c, yaml, bad, 1, &e);
    if (rc == 0) {
        out = open_memstream(&buf, &len);
        rc = plan_dry_run(&c, 8, 0, out, NULL, &e);
        fclose(out);
        free(buf);
    }
    assert_int_equal(rc, -1);
    assert_non_null(strstr(e.msg, "compress.d_ff"));
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* The distillation teacher: every rank's total grows by teacher_bytes, which is what
 * llama_init_forward_only really allocates for the base (counted through the backend's
 * alloc ops) less its token buffers and rope tables; in fp32, and in bf16 only (a bf16
 * base, model.dtype bf16). */
static size_t counted_bytes;
static const backend_ops *cpu_ops;
static float *count_alloc(backend *be, size_t n) {
    counted_bytes += n * sizeof(float);
    return cpu_ops->alloc(be, n);
}
static int32_t *count_alloc_i32(backend *be, size_t n) {
    counted_bytes += n * sizeof(int32_t);
    return cpu_ops->alloc_i32(be, n);
}
static uint16_t *count_alloc_bf16(backend *be, size_t n) {
    counted_bytes += n * sizeof(uint16_t);
    return cpu_ops->alloc_bf16(be, n);
}

/* A CPU backend whose allocations add to counted_bytes (restore with counting_end). */
static backend *counting_begin(void) {
    static backend_ops counting;
    backend *be = backend_cpu_create(1);
    cpu_ops = be->ops;
    counting = *be->ops;
    counting.alloc = count_alloc;
    counting.alloc_i32 = count_alloc_i32;
    counting.alloc_bf16 = count_alloc_bf16;
    be->ops = &counting;
    counted_bytes = 0;
    return be;
}

static void counting_end(backend *be) {
    be->ops = cpu_ops;
    backend_destroy(be);
}

static void test_teacher(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[4], &base, &small);
    plan_opts o;
    plan_opts_default(&o);
    o.micro_batch = 3, o.seq_len = 16, o.attn_tt = 0, o.base_dtype_bytes = 4;
    plan without, with;
    assert_int_equal(plan_build(&without, &base, &small, 3, &o, NULL), 0);
    o.teacher = 1;
    assert_int_equal(plan_build(&with, &base, &small, 3, &o, NULL), 0);
    assert_int_equal(without.teacher_bytes, 0);
    assert_true(with.teacher_bytes > 4 * hf_config_n_params(&base));
    for (int r = 0; r < 3; r++)
        assert_int_equal(with.ranks[r].total_bytes - without.ranks[r].total_bytes, with.teacher_bytes);
    char *text = plan_text(&with);
    assert_non_null(strstr(text, "# distill teacher "));
    free(text);

    backend *be = counting_begin();
    llama_model m;
    pc_err e = {{0}};
    assert_int_equal(llama_init_forward_only(&m, &base, be, o.micro_batch, o.seq_len, &e), 0);
    size_t N = (size_t)o.micro_batch * o.seq_len, rope = 2 * (size_t)o.seq_len * (base.head_dim / 2);
    assert_int_equal(counted_bytes - 4 * (2 * N + rope), with.teacher_bytes);
    llama_free(&m);

    /* with a bf16 base the teacher holds its matrices in bf16 only: the same count */
    plan with16;
    o.base_dtype_bytes = 2;
    assert_int_equal(plan_build(&with16, &base, &small, 3, &o, NULL), 0);
    text = plan_text(&with16);
    assert_non_null(strstr(text, "(bf16 base + forward activations"));
    free(text);
    counted_bytes = 0;
    llama_opts to = {.forward_only = 1, .weights = LLAMA_BF16_ONLY};
    assert_int_equal(llama_init_opts(&m, &base, be, o.micro_batch, o.seq_len, &to, &e), 0);
    assert_int_equal(counted_bytes - 4 * (2 * N + rope), with16.teacher_bytes);
    assert_true(with16.teacher_bytes < with.teacher_bytes - hf_config_n_params(&base)); /* 2 bytes a matrix weight less */
    llama_free(&m);
    counting_end(be);
    plan_free(&without);
    plan_free(&with);
    plan_free(&with16);
}

/* Activations: each rank's act_bytes is what llama_init (or llama_init_recompute with
 * o.recompute) allocates for the small model, counted through the backend's alloc ops,
 * less its parameters, gradients, token buffers and rope tables; recomputation keeps less
 * and the total falls by the difference. */
static void test_activations(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[4], &base, &small);
    small.d_ff_layer[1] = small.d_ff / 2; /* uneven widths: the shared buffers take the largest */
    plan_opts o;
    plan_opts_default(&o);
    o.micro_batch = 3, o.seq_len = 16, o.attn_tt = 0;
    plan keep, rc;
    assert_int_equal(plan_build(&keep, &base, &small, 2, &o, NULL), 0);
    o.recompute = 1;
    assert_int_equal(plan_build(&rc, &base, &small, 2, &o, NULL), 0);
    assert_true(rc.ranks[0].act_bytes < keep.ranks[0].act_bytes);
    assert_int_equal(keep.ranks[1].total_bytes - rc.ranks[1].total_bytes,
                     keep.ranks[1].act_bytes - rc.ranks[1].act_bytes);
    char *text = plan_text(&rc);
    assert_non_null(strstr(text, "  recompute 1  "));
    free(text);

    /* train.logits_chunk: (chunk, V) logits instead of (N, V); a chunk of N or more is
     * whole. And what llama_init allocates is the plan's activations exactly, for every
     * pair of (recompute, chunk). */
    int64_t N = (int64_t)o.micro_batch * o.seq_len;
    size_t rope = 2 * (size_t)o.seq_len * (small.head_dim / 2);
    size_t fixed = 4 * (2 * (size_t)hf_config_n_params(&small) + 2 * (size_t)N + rope);
    int chunks[] = {0, 7, 48, 1000};
    backend *be = counting_begin();
    for (int recompute = 0; recompute < 2; recompute++)
        for (size_t k = 0; k < PC_ARRAY_LEN(chunks); k++) {
            plan want;
            o.recompute = recompute, o.logits_chunk = chunks[k];
            assert_int_equal(plan_build(&want, &base, &small, 2, &o, NULL), 0);
            int64_t rows = chunks[k] ? PC_MIN(chunks[k], N) : N;
            assert_int_equal((recompute ? rc : keep).ranks[0].act_bytes - want.ranks[0].act_bytes,
                             4 * (N - rows) * small.vocab_size);
            if (chunks[k] == 7) {
                text = plan_text(&want);
                assert_non_null(strstr(text, "  logits_chunk 7  "));
                free(text);
            }
            llama_model m;
            pc_err e = {{0}};
            counted_bytes = 0;
            llama_opts lo = {.recompute = recompute, .logits_chunk = chunks[k]};
            assert_int_equal(llama_init_opts(&m, &small, be, o.micro_batch, o.seq_len, &lo, &e), 0);
            assert_int_equal(counted_bytes - fixed, want.ranks[0].act_bytes);
            llama_free(&m);
            plan_free(&want);
        }
    counting_end(be);
    plan_free(&keep);
    plan_free(&rc);
}

/* backend.matmul bf16 (weights_bf16): every rank's replica holds W_C in bf16 and in fp32
 * only its norm gains, exactly what LLAMA_BF16_ONLY allocates less and
 * more than a plain model; the exchange buffer a bf16 copy of the column blocks;
 * W_C is gathered in bf16, half the f32 payload; nothing else moves. */
/* shard_grads: G leaves every replica but two windows of its largest stage (what a
 * model with grad_windows allocates), each rank adds its own blocks' sums (together all
 * of G), and G is reduced once per backward. */
static void test_shard_grads(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[0], &base, &small); /* Llama-3.1-8B at 2160/6480 */
    plan_opts o;
    plan_opts_default(&o);
    o.micro_batch = 2, o.attn_tt = 0, o.split_bytes = 8 << 20, o.global_batch = 512;
    plan f, h;
    assert_int_equal(plan_build(&f, &base, &small, 16, &o, NULL), 0);
    o.shard_grads = 1;
    assert_int_equal(plan_build(&h, &base, &small, 16, &o, NULL), 0);
    int64_t head = 4 * ((int64_t)small.vocab_size * small.d_model + small.d_model); /* the largest stage */
    assert_int_equal(h.gwin_bytes, head);
    int64_t sums = 0;
    for (int r = 0; r < 16; r++) {
        const plan_rank *a = &f.ranks[r], *b = &h.ranks[r];
        assert_int_equal(a->gsum_bytes, 0);
        assert_true(b->gsum_bytes > 0);
        assert_int_equal(b->replica_bytes - a->replica_bytes, 2 * head + b->gsum_bytes - 4 * h.small_numel);
        assert_int_equal(b->total_bytes - a->total_bytes, b->replica_bytes - a->replica_bytes);
        sums += b->gsum_bytes;
    }
    assert_int_equal(sums, 4 * h.small_numel);
    assert_int_equal(h.backwards, 512 / (16 * 2));
    assert_int_equal(h.comm.reduce_bytes, 16 * f.comm.reduce_bytes);
    assert_int_equal(h.comm.gather_bytes, f.comm.gather_bytes);
    char *text = plan_text(&h);
    assert_non_null(strstr(text, "# G sharded: two stage windows of "));
    assert_non_null(strstr(text, "reduced after each of 16 backwards per step"));
    free(text);
    text = plan_text(&f);
    assert_null(strstr(text, "G sharded"));
    free(text);
    plan_free(&f);
    plan_free(&h);

    /* the windows are what the model allocates instead of its whole gradient */
    static llama_config tb, ts;
    load_case(&MODELS[4], &tb, &ts);
    o.split_bytes = 0, o.micro_batch = 1, o.seq_len = 8;
    assert_int_equal(plan_build(&h, &tb, &ts, 2, &o, NULL), 0);
    backend *be = counting_begin();
    llama_model m;
    pc_err e = {{0}};
    assert_int_equal(llama_init(&m, &ts, be, 1, 8, &e), 0);
    size_t whole = counted_bytes;
    llama_free(&m);
    counted_bytes = 0;
    llama_opts win = {.grad_windows = 1};
    assert_int_equal(llama_init_opts(&m, &ts, be, 1, 8, &win, &e), 0);
    assert_null(m.grads);
    assert_int_equal(whole - counted_bytes, 4 * (size_t)hf_config_n_params(&ts) - 2 * (size_t)h.gwin_bytes);
    assert_int_equal(4 * m.gwin_n, h.gwin_bytes);
    llama_free(&m);
    counting_end(be);
    plan_free(&h);
}

/* The largest base slice of a plan's blocks, in elements. */
static int64_t largest_slice(const plan *p) {
    int64_t m = 0;
    for (int i = 0; i < p->n_blocks; i++) m = PC_MAX(m, p->blocks[i].base_rows * p->blocks[i].base_cols);
    return m;
}

static void test_weights_bf16(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[0], &base, &small); /* Llama-3.1-8B at 2160/6480 */
    plan_opts o;
    plan_opts_default(&o);
    o.micro_batch = 2, o.attn_tt = 0, o.split_bytes = 8 << 20; /* o_proj in column blocks */
    plan f, h;
    assert_int_equal(plan_build(&f, &base, &small, 16, &o, NULL), 0);
    o.weights_bf16 = 1;
    assert_int_equal(plan_build(&h, &base, &small, 16, &o, NULL), 0);
    int64_t strided = 0;
    for (int r = 0; r < 16; r++) {
        const plan_rank *a = &f.ranks[r], *b = &h.ranks[r];
        assert_int_equal(b->replica_bytes - a->replica_bytes,
                         2 * h.small_numel - 4 * (h.small_numel - hf_config_n_norm_params(&small)));
        assert_true(b->replica_bytes < a->replica_bytes * 5 / 6); /* 8B: fp32 8, bf16 6.4 bytes per parameter */
        assert_int_equal(2 * b->xchg_bytes, 3 * a->xchg_bytes); /* f32 + bf16 */
        assert_true(b->act_bytes < a->act_bytes); /* ln1, ln2, h, lnf in bf16 only (below) */
        /* a bf16 base's slices go into the products as stored: a bf16 copy of the operand
         * they meet instead of the widened slice (compress-base-bf16 checks it against
         * what each rank allocates) */
        assert_true(b->scratch_bytes < a->scratch_bytes);
        assert_int_equal(b->total_bytes - a->total_bytes, (b->replica_bytes - a->replica_bytes) +
                                                              (b->xchg_bytes - a->xchg_bytes) +
                                                              (b->act_bytes - a->act_bytes) +
                                                              (b->scratch_bytes - a->scratch_bytes));
        strided += a->xchg_bytes;
    }
    assert_true(strided > 0);
    assert_int_equal(2 * h.comm.gather_bytes, f.comm.gather_bytes);
    assert_int_equal(h.comm.reduce_bytes, f.comm.reduce_bytes);
    char *text = plan_text(&h);
    assert_non_null(strstr(text, "  weights_bf16 1  "));
    free(text);
    /* on cuda the two bf16 operand copies, each as large as the largest operand rounded
     * into it: the 8B's largest fp32 base slice (its MLP matrices are whole here), above
     * the attention output (2 x 2048 tokens, 32 heads of 128) and below the block bound */
    plan g;
    o.gemm_bf16_block = (int64_t)BACKEND_CUDA_BF16_BLOCK;
    assert_int_equal(plan_build(&g, &base, &small, 16, &o, NULL), 0);
    int64_t slice = largest_slice(&g), att = (int64_t)2 * 2048 * 32 * 128;
    assert_true(slice == (int64_t)14336 * 4096 && att < slice && slice < (int64_t)BACKEND_CUDA_BF16_BLOCK);
    for (int r = 0; r < 16; r++) {
        assert_int_equal(g.ranks[r].scratch_bytes - h.ranks[r].scratch_bytes, 2 * 2 * slice);
        assert_int_equal(g.ranks[r].total_bytes - h.ranks[r].total_bytes, 2 * 2 * slice);
    }
    plan_free(&g);
    plan_free(&f);
    plan_free(&h);

    static llama_config tb, ts;
    load_case(&MODELS[4], &tb, &ts);
    /* a bound above every operand: the copies are as large as the largest operand, the
     * largest base slice (whole matrices here) with 3 x 16 tokens, the attention output
     * (N, H hd) with 64 x 64 (the dlogits (N, V), larger, are never rounded there) */
    o.split_bytes = 0;
    for (int big = 0; big < 2; big++) {
        o.micro_batch = big ? 64 : 3, o.seq_len = big ? 64 : 16, o.gemm_bf16_block = 0;
        assert_int_equal(plan_build(&f, &tb, &ts, 2, &o, NULL), 0);
        o.gemm_bf16_block = (int64_t)1 << 40;
        assert_int_equal(plan_build(&g, &tb, &ts, 2, &o, NULL), 0);
        int64_t N = (int64_t)o.micro_batch * o.seq_len, whole = largest_slice(&g);
        assert_int_equal(whole, (int64_t)tb.d_model * PC_MAX(tb.vocab_size, tb.d_ff));
        int64_t att = N * ts.n_heads * ts.head_dim, copies = g.ranks[0].scratch_bytes - f.ranks[0].scratch_bytes;
        assert_true(big ? att > whole : att < whole);
        assert_true(!big || (int64_t)N * ts.vocab_size > att); /* the dlogits: larger, not counted */
        assert_int_equal(copies, 4 * PC_MAX(att, whole));
        assert_int_equal(g.ranks[1].scratch_bytes - f.ranks[1].scratch_bytes, copies);
        plan_free(&f);
        plan_free(&g);
    }
    /* before training, activation importance runs the base's layers in fp32 under bf16
     * products, and an fp32 teacher runs in fp32 too: their matrices are rounded, the
     * widest a fused gate|up (2 f, d) of the base, or the teacher's head (V, d) */
    o.micro_batch = 3, o.seq_len = 16;
    int64_t fused = (int64_t)tb.d_model * PC_MAX(2 * tb.d_ff, (tb.n_heads + 2 * tb.n_kv_heads) * tb.head_dim);
    int64_t head = (int64_t)tb.vocab_size * tb.d_model;
    for (int k = 0; k < 3; k++) { /* importance; fp32 teacher; bf16 teacher (its inputs only) */
        o.importance_act = k == 0, o.teacher = k > 0, o.base_dtype_bytes = k == 2 ? 2 : 4, o.gemm_bf16_block = 0;
        assert_int_equal(plan_build(&f, &tb, &ts, 2, &o, NULL), 0);
        o.gemm_bf16_block = (int64_t)1 << 40;
        assert_int_equal(plan_build(&g, &tb, &ts, 2, &o, NULL), 0);
        int64_t whole = largest_slice(&g);
        int64_t want = k == 0 ? fused : k == 1 ? PC_MAX(fused, head) : whole;
        assert_true(want >= whole && (k == 2 || want > whole));
        assert_int_equal(g.ranks[0].scratch_bytes - f.ranks[0].scratch_bytes, 4 * want);
        plan_free(&f);
        plan_free(&g);
    }
    o.importance_act = 0, o.teacher = 0, o.base_dtype_bytes = 2;
    /* the model's bf16 copy, and for a trainable model its product inputs in bf16 only and
     * the backward's bf16 operands: what the plan's activations count more (or less) with
     * weights_bf16, exactly, with every layer's activations and with recomputation, over an
     * odd number of values (7 tokens, a layer of odd d_ff: the bf16 buffers round up to
     * whole floats) */
    ts.d_ff_layer[1] -= 1;
    backend *be = counting_begin();
    llama_model m;
    pc_err e = {{0}};
    size_t plain = 0;
    for (int rc = 0; rc < 2; rc++) {
        o.micro_batch = 1, o.seq_len = 7, o.weights_bf16 = 0, o.recompute = rc;
        assert_int_equal(plan_build(&f, &tb, &ts, 2, &o, NULL), 0);
        o.weights_bf16 = 1;
        assert_int_equal(plan_build(&g, &tb, &ts, 2, &o, NULL), 0);
        int64_t act16 = g.ranks[0].act_bytes - f.ranks[0].act_bytes;
        plan_free(&f);
        plan_free(&g);
        llama_opts lo = {.recompute = rc};
        counted_bytes = 0;
        assert_int_equal(llama_init_opts(&m, &ts, be, 1, 7, &lo, &e), 0);
        size_t f32_bytes = counted_bytes;
        if (!rc) plain = f32_bytes;
        llama_free(&m);
        lo.weights = LLAMA_BF16_WEIGHTS;
        counted_bytes = 0;
        assert_int_equal(llama_init_opts(&m, &ts, be, 1, 7, &lo, &e), 0);
        assert_int_equal((int64_t)counted_bytes - (int64_t)f32_bytes, 2 * hf_config_n_params(&ts) + act16);
        llama_free(&m);
    }
    o.recompute = 0;
    counted_bytes = 0; /* a forward-only model: the copy alone */
    llama_opts fwd = {.forward_only = 1, .weights = LLAMA_BF16_WEIGHTS};
    assert_int_equal(llama_init_opts(&m, &ts, be, 1, 8, &fwd, &e), 0);
    size_t fwd_bytes = counted_bytes;
    llama_free(&m);
    counted_bytes = 0;
    fwd.weights = LLAMA_F32;
    assert_int_equal(llama_init_opts(&m, &ts, be, 1, 8, &fwd, &e), 0);
    assert_int_equal(fwd_bytes - counted_bytes, 2 * (size_t)hf_config_n_params(&ts));
    llama_free(&m);
    counted_bytes = 0; /* never more than this at any time: nothing is freed on the way */
    llama_opts lean = {.weights = LLAMA_BF16_ONLY};
    assert_int_equal(llama_init_opts(&m, &ts, be, 1, 7, &lean, &e), 0);
    o.seq_len = 7, o.weights_bf16 = 0;
    assert_int_equal(plan_build(&f, &tb, &ts, 2, &o, NULL), 0);
    o.weights_bf16 = 1;
    assert_int_equal(plan_build(&g, &tb, &ts, 2, &o, NULL), 0);
    assert_int_equal((int64_t)counted_bytes - (int64_t)plain,
                     2 * hf_config_n_params(&ts) + (g.ranks[0].act_bytes - f.ranks[0].act_bytes) -
                         4 * (hf_config_n_params(&ts) - hf_config_n_norm_params(&ts)));
    plan_free(&f);
    plan_free(&g);
    assert_int_equal(m.n_params_f32, hf_config_n_norm_params(&ts));
    assert_int_equal(m.n_params, hf_config_n_params(&ts));
    llama_free(&m);
    counting_end(be);
}

/* plan_check_fit: a rank's total against a device's memory; the message names the rank,
 * the device, both sizes and only the remedies that apply. */
/* backend.attention bf16 on cuda: every rank's scratch holds attention's bf16 copy of one
 * micro-batch's dO (2 bytes x N H hd), and each layer keeps q, k, v in bf16 only (2 bytes x
 * N (H + 2 KV) hd instead of 4) beside one fp32 qkv for all layers; on the cpu, with fp32
 * attention, or with a head_dim the tensor cores do not take, none of it. */
static void test_attention_copies(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[0], &base, &small); /* Llama-3.1-8B at 2160/6480: 32/8 heads of 128 */
    plan_opts o;
    plan_opts_default(&o);
    o.micro_batch = 2, o.seq_len = 4096;
    plan none, some;
    for (int cuda = 0; cuda < 2; cuda++) {
        o.attn_bf16 = 0;
        plan_opts_set_device(&o, cuda);
        assert_int_equal(plan_build(&none, &base, &small, 4, &o, NULL), 0);
        o.attn_bf16 = 1;
        plan_opts_set_device(&o, cuda);
        assert_int_equal(plan_build(&some, &base, &small, 4, &o, NULL), 0);
        const int64_t N = 2 * 4096, C = (32 + 2 * 8) * 128, L = small.n_layers;
        int64_t want = cuda ? 2 * N * 32 * 128 : 0, act = cuda ? L * (2 * N * C - 4 * N * C) + 4 * N * C : 0;
        assert_int_equal(none.attn_copies_bytes, 0);
        assert_int_equal(some.attn_copies_bytes, want);
        for (int r = 0; r < 4; r++) {
            assert_int_equal(some.ranks[r].scratch_bytes - none.ranks[r].scratch_bytes, want);
            assert_int_equal(some.ranks[r].act_bytes - none.ranks[r].act_bytes, act);
            assert_int_equal(some.ranks[r].total_bytes - none.ranks[r].total_bytes, want + act);
        }
        plan_free(&none);
        plan_free(&some);
    }
    /* with bf16 products the attention output is kept in bf16 only too, and no bf16
     * operand copy is made of it: (4 - 2) bytes x N H hd less per layer, 2 x N H hd less */
    o.weights_bf16 = 1;
    for (int att = 0; att < 2; att++) {
        o.attn_bf16 = att;
        plan_opts_set_device(&o, 1);
        assert_int_equal(plan_build(att ? &some : &none, &base, &small, 4, &o, NULL), 0);
    }
    {
        const int64_t N = 2 * 4096, C = (32 + 2 * 8) * 128, qd = 32 * 128, L = small.n_layers;
        int64_t act = L * (2 * N * C - 4 * N * C) + 4 * N * C + L * (2 * N * qd - 4 * N * qd) - 2 * N * qd;
        assert_int_equal(some.ranks[0].act_bytes - none.ranks[0].act_bytes, act);
    }
    plan_free(&none);
    plan_free(&some);
    /* by cuDNN (attn_cudnn): besides dO's copy, the fp32 dQ accumulator and row sums, and
     * (products not bf16) the output's bf16 copy and the bf16 dq | dk | dv */
    o.attn_bf16 = 1;
    for (int w16 = 0; w16 < 2; w16++) {
        o.weights_bf16 = w16;
        for (int cudnn = 0; cudnn < 2; cudnn++) {
            o.attn_cudnn = cudnn;
            plan_opts_set_device(&o, 1);
            assert_int_equal(plan_build(cudnn ? &some : &none, &base, &small, 4, &o, NULL), 0);
        }
        const int64_t N = 2 * 4096, C = (32 + 2 * 8) * 128, qd = 32 * 128;
        const int64_t more = (w16 ? 0 : 2 * N * qd + 2 * N * C) + 4 * N * qd + 4 * N * 32;
        assert_int_equal(some.attn_copies_bytes - none.attn_copies_bytes, more);
        assert_int_equal(some.ranks[0].scratch_bytes - none.ranks[0].scratch_bytes, more);
        plan_free(&none);
        plan_free(&some);
    }
    o.attn_cudnn = 0;
    o.weights_bf16 = 0;
    o.attn_bf16 = 1;
    /* a head_dim the tensor-core kernels do not take (not a multiple of 16): fp32 attention */
    small.head_dim = base.head_dim = 72;
    plan_opts_set_device(&o, 1);
    assert_int_equal(plan_build(&some, &base, &small, 4, &o, NULL), 0);
    o.attn_bf16 = 0;
    plan_opts_set_device(&o, 1);
    assert_int_equal(plan_build(&none, &base, &small, 4, &o, NULL), 0);
    assert_int_equal(some.attn_copies_bytes, 0);
    assert_int_equal(some.ranks[0].total_bytes, none.ranks[0].total_bytes);
    plan_free(&none);
    plan_free(&some);
    /* from a job's keys: backend.attention auto counts the copies on cuda with bf16 products */
    static const struct {
        const char *device, *matmul, *attention;
        int copies;
    } jobs[] = {{"cuda", "bf16", "auto", 1}, {"cuda", "tf32", "auto", 0}, {"cuda", "bf16", "fp32", 0},
                {"cuda", "fp32", "bf16", 1}, {"cpu", "bf16", "auto", 0},  {"cpu", "fp32", "bf16", 0},
                {"cuda", "bf16", "cudnn", 1}, {"cpu", "bf16", "cudnn", 0}};
    static pc_config c;
    strcpy(c.run.mode, "compress"), strcpy(c.model.dtype, "bf16"), strcpy(c.compress.importance, "magnitude");
    for (size_t i = 0; i < PC_ARRAY_LEN(jobs); i++) {
        strcpy(c.backend.device, jobs[i].device), strcpy(c.backend.matmul, jobs[i].matmul);
        strcpy(c.backend.attention, jobs[i].attention);
        plan_opts_from_config(&c, &o);
        if (o.attn_copies != jobs[i].copies)
            fail_msg("device %s, matmul %s, attention %s: attn_copies %d", jobs[i].device, jobs[i].matmul,
                     jobs[i].attention, o.attn_copies);
    }
}

static void test_check_fit(void **state) {
    (void)state;
    static llama_config base, small;
    load_case(&MODELS[0], &base, &small); /* Llama-3.1-8B at 2160/6480 */
    plan_opts o;
    plan_opts_default(&o);
    o.micro_batch = 2, o.attn_tt = 0;
    plan p;
    assert_int_equal(plan_build(&p, &base, &small, 16, &o, NULL), 0);
    int64_t need = p.ranks[3].total_bytes;
    pc_err e = {{0}};
    assert_int_equal(plan_check_fit(&p, 3, need, "cuda:3", &e), 0);
    assert_int_equal(plan_check_fit(&p, 3, need - 1, "cuda:3", &e), -1);
    char want[96];
    snprintf(want, sizeof want, "rank 3: the plan needs %.1f GiB here", (double)need / 1073741824.0);
    assert_non_null(strstr(e.msg, want));
    assert_non_null(strstr(e.msg, "but cuda:3 has "));
    assert_non_null(strstr(e.msg, "train.activation_checkpointing: true, a smaller train.micro_batch, "
                                  "train.logits_chunk: 2048, backend.matmul: bf16, compress.shard_grads: true, "
                                  "more ranks"));
    assert_null(strstr(e.msg, "model.dtype")); /* the base is bf16 already */
    assert_null(strstr(e.msg, "teacher"));
    plan_free(&p);
    o.logits_chunk = 2048, o.weights_bf16 = 1, o.shard_grads = 1; /* all three already: not suggested again */
    assert_int_equal(plan_build(&p, &base, &small, 16, &o, NULL), 0);
    assert_int_equal(plan_check_fit(&p, 3, 1 << 30, "cuda:3", &e), -1);
    assert_non_null(strstr(e.msg, "a smaller train.micro_batch, more ranks"));
    o.shard_grads = 0;
    plan_free(&p);
    o.recompute = 1, o.micro_batch = 1, o.base_dtype_bytes = 4, o.logits_chunk = 0;
    assert_int_equal(plan_build(&p, &base, &small, 16, &o, NULL), 0);
    assert_int_equal(plan_check_fit(&p, 0, 1 << 30, "cuda:0", &e), -1);
    assert_non_null(strstr(e.msg, "try model.dtype: bf16, compress.shard_grads: true, more ranks"));
    plan_free(&p);
    o.teacher = 1; /* a teacher: in the breakdown, and model.dtype bf16 halves it too */
    assert_int_equal(plan_build(&p, &base, &small, 16, &o, NULL), 0);
    assert_int_equal(plan_check_fit(&p, 0, 1 << 30, "cuda:0", &e), -1);
    snprintf(want, sizeof want, ", distillation teacher %.1f) but", (double)p.teacher_bytes / 1073741824.0);
    assert_non_null(strstr(e.msg, want));
    assert_non_null(
        strstr(e.msg, "try model.dtype: bf16 (the teacher too), compress.shard_grads: true, more ranks"));
    plan_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invariants_all_models),
        cmocka_unit_test(test_head_alignment),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_greedy_and_balance),
        cmocka_unit_test(test_owner_lookup),
        cmocka_unit_test(test_speed),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_dry_run),
        cmocka_unit_test(test_teacher),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_check_fit),
        cmocka_unit_test(test_weights_bf16),
        cmocka_unit_test(test_attention_copies),
        cmocka_unit_test(test_shard_grads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
