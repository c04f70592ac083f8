/* project: blocks of projections of a frozen base Llama into a smaller one (project.h). */
#include "project.h"

#include <stdlib.h>
#include <string.h>

/* Which index set compresses a side of a tensor: none (width kept), d_model or d_ff. */
typedef enum { SIDE_KEEP = 0, SIDE_D, SIDE_FF } side_kind;

typedef struct tensor_role {
    const char *suffix;
    side_kind out, in;
} tensor_role;

static const tensor_role ROLES[] = {
    {"embed_tokens.weight", SIDE_KEEP, SIDE_D},    {"self_attn.q_proj.weight", SIDE_KEEP, SIDE_D},
    {"self_attn.k_proj.weight", SIDE_KEEP, SIDE_D}, {"self_attn.v_proj.weight", SIDE_KEEP, SIDE_D},
    {"self_attn.o_proj.weight", SIDE_D, SIDE_KEEP}, {"mlp.gate_proj.weight", SIDE_FF, SIDE_D},
    {"mlp.up_proj.weight", SIDE_FF, SIDE_D},        {"mlp.down_proj.weight", SIDE_D, SIDE_FF},
    {"lm_head.weight", SIDE_KEEP, SIDE_D},
};

static const tensor_role *role_of(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < PC_ARRAY_LEN(ROLES); i++) {
        size_t k = strlen(ROLES[i].suffix);
        if (n >= k && !strcmp(name + n - k, ROLES[i].suffix)) return &ROLES[i];
    }
    return NULL;
}

proj_kind proj_split_axis(const char *name) {
    const tensor_role *role = role_of(name);
    if (role && role->out == SIDE_KEEP && role->in != SIDE_KEEP) return PROJ_ROWS; /* input-projected: rows */
    if (role && role->in == SIDE_KEEP && role->out != SIDE_KEEP) return PROJ_COLS; /* output-projected: columns */
    return PROJ_WHOLE;
}

/* Layer number of "model.layers.<i>...." or -1. */
static int layer_of(const char *name) {
    const char *p = strstr(name, "layers.");
    return p ? atoi(p + 7) : -1;
}

static const int *side_index(const proj_indices *idx, side_kind k, int layer) {
    return k == SIDE_D ? idx->idx_d : k == SIDE_FF ? idx->idx_ff[layer] : NULL;
}

static int side_width(const llama_config *c, side_kind k, int layer, int kept) {
    return k == SIDE_D ? c->d_model : k == SIDE_FF ? c->d_ff_layer[layer] : kept;
}

/* The base tensor holding the weight of small tensor `name`: lm_head of a tied base
 * (config.json's tie_word_embeddings) is the embedding where the file has no head of its
 * own; an untied base must have one. */
static const char *base_name(const st_model *base, const llama_config *base_cfg, const char *name) {
    if (!strcmp(name, "lm_head.weight") && base_cfg->tie_word_embeddings && !st_find(base, name))
        return "model.embed_tokens.weight";
    return name;
}

static double block_flops(const proj_block *b) {
    double dO = b->d_out, dI = b->d_in, o = b->d_out_c, i = b->d_in_c, f = 0;
    int pin = b->d_in_c < b->d_in, pout = b->d_out_c < b->d_out;
    if (pin && pout) {
        double x = dO * dI * i + o * dO * i, y = o * dO * dI + o * dI * i;
        f += x < y ? x : y;             /* materialise, cheaper order */
        f += dO * dI * i + o * dO * dI; /* W P_in and P_out W for the gradients */
        f += o * i * dO + dI * o * i;   /* dP_out, dP_in */
    } else if (pin) {
        f += 2 * dO * dI * i; /* W P_in; dP_in = W^T G */
    } else if (pout) {
        f += 2 * o * dO * dI; /* P_out W; dP_out = G W^T */
    }
    return 2.0 * f;
}

/* Shape the block from its spec; errors name the tensor. */
static int shape_block(proj_block *b, const llama_config *bc, const llama_model *small, pc_err *e) {
    const llama_tensor *st = llama_tensor_at(small, b->small_index);
    if (st->ndim == 1) {
        b->kind = PROJ_NORM;
        b->d_out = b->d_out_c = 1;
        b->d_in = bc->d_model;
        b->d_in_c = b->ld_c = (int)st->numel;
        b->off_c = st->offset;
        return 0;
    }
    const tensor_role *role = role_of(st->name);
    if (!role) return pc_errorf(e, "projection: no rule for tensor '%s'", st->name);
    int layer = layer_of(st->name), O = (int)st->shape[0], I = (int)st->shape[1];
    int D_out = side_width(bc, role->out, layer, O), D_in = side_width(bc, role->in, layer, I);
    b->ld_c = I;
    b->full_out = D_out, b->full_in = D_in;
    if (b->kind == PROJ_WHOLE || b->kind == PROJ_NORM) {
        b->kind = PROJ_WHOLE;
        b->d_out = D_out, b->d_in = D_in, b->d_out_c = O, b->d_in_c = I;
        b->off_c = st->offset;
    } else if (b->kind == PROJ_ROWS) {
        if (role->out != SIDE_KEEP || b->r0 < 0 || b->r1 > O || b->r0 >= b->r1)
            return pc_errorf(e, "plan: rows [%lld, %lld) of '%s' are not a valid row block", (long long)b->r0,
                             (long long)b->r1, st->name);
        b->d_out = b->d_out_c = (int)(b->r1 - b->r0);
        b->d_in = D_in, b->d_in_c = I;
        b->off_c = st->offset + b->r0 * I;
    } else {
        if (role->in != SIDE_KEEP || b->r0 < 0 || b->r1 > I || b->r0 >= b->r1)
            return pc_errorf(e, "plan: columns [%lld, %lld) of '%s' are not a valid column block", (long long)b->r0,
                             (long long)b->r1, st->name);
        b->d_in = b->d_in_c = (int)(b->r1 - b->r0);
        b->d_out = D_out, b->d_out_c = O;
        b->off_c = st->offset + b->r0;
    }
    b->flops = block_flops(b);
    return 0;
}

static int64_t add_tensor(proj_set *ps, const char *name, const char *suffix, int64_t numel, int ndim, int write) {
    proj_tensor *t = &ps->tensors[ps->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s%s", name, suffix);
    t->offset = ps->n_params;
    t->numel = numel;
    t->ndim = ndim;
    t->write = write;
    ps->n_params += numel;
    return t->offset;
}

/* The shared factor of block b's matrix (creating it), or -1 when b's factor is its own. */
static int shared_of(proj_set *ps, const proj_block *b, const llama_model *small, int is_in) {
    const llama_tensor *st = llama_tensor_at(small, b->small_index);
    int whole = b->kind == PROJ_ROWS ? b->d_out_c == st->shape[0] : b->d_in_c == st->shape[1];
    if (b->kind == PROJ_WHOLE || b->kind == PROJ_NORM || whole) return -1;
    char name[LLAMA_NAME_MAX + 8];
    snprintf(name, sizeof name, "%s%s", st->name, is_in ? ".p_in" : ".p_out");
    for (int s = 0; s < ps->n_shared; s++)
        if (!strcmp(ps->shared[s].name, name)) return s;
    proj_shared *sh = &ps->shared[ps->n_shared];
    snprintf(sh->name, sizeof sh->name, "%s", name);
    sh->rows = is_in ? b->d_in : b->d_out_c;
    sh->cols = is_in ? b->d_in_c : b->d_out;
    sh->numel = (int64_t)sh->rows * sh->cols;
    sh->grad_off = ps->shared_grad_n;
    sh->param_off = -1;
    ps->shared_grad_n += sh->numel;
    return ps->n_shared++;
}

/* Lowest rank owning a block of the same matrix as block i (the writer of a shared factor). */
static int lowest_holder(const proj_set *ps, int i) {
    int lo = ps->blocks[i].owner;
    for (int j = 0; j < ps->n_blocks; j++)
        if (ps->blocks[j].small_index == ps->blocks[i].small_index) lo = PC_MIN(lo, ps->blocks[j].owner);
    return lo;
}

/* Block b's base slice into device memory (b->w, or b->w16 in bf16 storage): rows or
 * columns [r0, r1) of the whole matrix, which is checked against the config's shape
 * (d_ff: the base's intermediate_size, to which narrower layers are padded). */
static int load_slice(proj_set *ps, const st_model *base, proj_block *b, const char *bname, int64_t d_ff, pc_err *e) {
    int64_t R = b->kind == PROJ_ROWS ? b->r1 - b->r0 : b->d_out, C = b->kind == PROJ_COLS ? b->r1 - b->r0 : b->d_in;
    int64_t full[2] = {b->full_out, b->full_in};
    int padded;
    if (!llama_stored_tensor(base, bname, 2, full, d_ff, &padded, e)) return -1;
    float *w = pc_alloc_f32((size_t)(R * C)); /* (R, C) host copy */
    int rc;
    if (padded) { /* the real part, whole (full_out, full_in), then the block's rows or columns of it */
        float *all = pc_alloc_f32((size_t)(full[0] * full[1]));
        rc = llama_read_stored(base, bname, 2, full, d_ff, all, e);
        int64_t r0 = b->kind == PROJ_ROWS ? b->r0 : 0, c0 = b->kind == PROJ_COLS ? b->r0 : 0;
        for (int64_t r = 0; rc == 0 && r < R; r++) memcpy(w + r * C, all + (r0 + r) * full[1] + c0, sizeof(float) * (size_t)C);
        free(all);
    } else {
        rc = b->kind == PROJ_ROWS   ? st_read_rows_f32(base, bname, b->r0, R, w, e)
             : b->kind == PROJ_COLS ? st_read_cols_f32(base, bname, b->r0, C, w, e)
                                    : st_read_f32(base, bname, w, (size_t)(R * C), e);
        if (rc == 0) rc = st_check_finite(base, bname, w, (size_t)(R * C), e);
    }
    size_t n = (size_t)(R * C);
    if (rc == 0 && ps->base_bf16) {
        uint16_t *h = pc_malloc(n * sizeof(uint16_t)); /* (R, C) bf16, round to nearest even */
        for (size_t i = 0; i < n; i++) h[i] = pc_f32_to_bf16(w[i]);
        uint16_t *dev = ps->be->ops->alloc_bf16(ps->be, n);
        ps->be->ops->upload_bf16(ps->be, dev, h, n);
        free(h);
        ps->base_bufs[ps->n_base_bufs++] = dev;
        b->w16 = dev;
        ps->base_bytes += (int64_t)(n * sizeof(uint16_t));
    } else if (rc == 0) {
        float *dev = be_alloc(ps->be, n);
        be_upload(ps->be, dev, w, n);
        ps->base_bufs[ps->n_base_bufs++] = dev;
        b->w = dev;
        ps->base_bytes += (int64_t)(n * sizeof(float));
    }
    free(w);
    return rc;
}

/* Block b's base slice as fp32 (d_out, d_in): its own buffer, or widened into ps->wide. */
static const float *slice_f32(proj_set *ps, const proj_block *b) {
    if (!b->w16) return b->w;
    ps->be->ops->widen_bf16(ps->be, ps->wide, b->w16, (size_t)b->d_out * b->d_in);
    return ps->wide;
}

/* The exchange layout: strided blocks get their place in xchg (every rank reserves all). */
static void build_layout(proj_set *ps, const llama_model *small) {
    int64_t n = 0;
    for (int i = 0; i < ps->n_blocks; i++) {
        proj_block *b = &ps->blocks[i];
        b->xoff = ps->world > 1 && b->kind != PROJ_NORM && b->ld_c != b->d_in_c ? n : -1;
        b->goff = -1;
        if (b->xoff >= 0) n += (int64_t)b->d_out_c * b->d_in_c;
    }
    ps->pieces = pc_calloc((size_t)(ps->n_blocks > 0 ? ps->n_blocks : 1), sizeof *ps->pieces);
    if (ps->world > 1 && n > 0) {
        ps->xchg = be_alloc(ps->be, (size_t)n);
        ps->xchg_bytes = (int64_t)sizeof(float) * n;
        if (small->w16) {
            ps->xchg16 = ps->be->ops->alloc_bf16(ps->be, (size_t)n);
            ps->xchg_bytes += (int64_t)sizeof(uint16_t) * n;
        }
    }
}

/* One-hot initialisation: W_C at step 0 is W[idx_out][:, idx_in]; A stays 0. Each
 * tensor is built in a host buffer and uploaded. */
static int init_params(proj_set *ps, const st_model *base, const llama_config *base_cfg, const proj_indices *idx,
                       pc_err *e) {
    int64_t most = base_cfg->d_model; /* the largest factor built here (never a side kept whole: (V, V)) */
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->owner != ps->rank) continue;
        if (b->p_in >= 0) most = PC_MAX(most, (int64_t)b->d_in * b->d_in_c);
        if (b->p_out >= 0) most = PC_MAX(most, (int64_t)b->d_out_c * b->d_out);
    }
    float *host = pc_alloc_f32((size_t)most), *norm = pc_alloc_f32((size_t)base_cfg->d_model);
    int rc = 0;
    for (int i = 0; rc == 0 && i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->owner != ps->rank) continue;
        if (b->kind == PROJ_NORM) { /* gain (d') = gain[idx_d] */
            rc = st_read_f32(base, b->name, norm, (size_t)base_cfg->d_model, e);
            if (rc == 0) rc = st_check_finite(base, b->name, norm, (size_t)base_cfg->d_model, e);
            for (int j = 0; rc == 0 && j < b->d_in_c; j++) host[j] = norm[idx->idx_d[j]];
            if (rc == 0) be_upload(ps->be, ps->params + b->a, host, (size_t)b->d_in_c);
            continue;
        }
        const tensor_role *role = role_of(b->name);
        int layer = layer_of(b->name);
        if (b->p_in >= 0) { /* P_in (d_in, d_in'): P_in[idx[j], j] = 1 */
            const int *ix = side_index(idx, role->in, layer);
            size_t n = (size_t)b->d_in * b->d_in_c;
            memset(host, 0, sizeof(float) * n);
            for (int j = 0; j < b->d_in_c; j++) host[(int64_t)ix[j] * b->d_in_c + j] = 1.0f;
            be_upload(ps->be, ps->params + b->p_in, host, n);
        }
        if (b->p_out >= 0) { /* P_out (d_out', d_out): P_out[j, idx[j]] = 1 */
            const int *ix = side_index(idx, role->out, layer);
            size_t n = (size_t)b->d_out_c * b->d_out;
            memset(host, 0, sizeof(float) * n);
            for (int j = 0; j < b->d_out_c; j++) host[(int64_t)j * b->d_out + ix[j]] = 1.0f;
            be_upload(ps->be, ps->params + b->p_out, host, n);
        }
    }
    free(host);
    free(norm);
    return rc;
}

int proj_init(proj_set *ps, backend *be, const st_model *base, const llama_config *base_cfg,
              const llama_model *small, const proj_indices *idx, const proj_spec *specs, int n_specs, int rank,
              int world, int base_bf16, pc_err *e) {
    memset(ps, 0, sizeof *ps);
    if (small->w16 && small->n_params_f32 == small->n_params)
        return pc_errorf(e, "proj_init: a small model with a bf16 copy keeps its matrices in bf16 only "
                            "(LLAMA_BF16_ONLY)");
    ps->be = be;
    ps->base_bf16 = base_bf16;
    ps->products16 = base_bf16 && small->w16;
    ps->rank = rank;
    ps->world = world;
    int n = specs ? n_specs : llama_n_tensors(small);
    ps->blocks = pc_calloc((size_t)n, sizeof *ps->blocks);
    ps->shared = pc_calloc((size_t)n * 2, sizeof *ps->shared);
    ps->tensors = pc_calloc((size_t)n * 3, sizeof *ps->tensors);
    ps->base_bufs = pc_calloc((size_t)n, sizeof *ps->base_bufs);
    for (int i = 0; i < n; i++) {
        proj_block *b = &ps->blocks[ps->n_blocks++];
        const char *name = specs ? specs[i].name : llama_tensor_at(small, i)->name;
        snprintf(b->name, sizeof b->name, "%s", name);
        b->small_index = llama_tensor_index(small, name);
        if (b->small_index < 0) return pc_errorf(e, "plan: no tensor '%s' in the compressed model", name);
        b->stage = llama_grad_stage(small, b->small_index);
        b->kind = specs ? specs[i].kind : PROJ_WHOLE;
        b->r0 = specs ? specs[i].r0 : 0;
        b->r1 = specs ? specs[i].r1 : 0;
        b->owner = specs ? specs[i].owner : 0;
        if (b->owner < 0 || b->owner >= world) return pc_errorf(e, "plan: block '%s' has no valid owner", name);
        if (shape_block(b, base_cfg, small, e) != 0) return -1;
        b->p_in = b->p_out = b->a = -1;
        b->shared = -1;
        if (b->kind != PROJ_NORM) {
            int s_in = b->d_in_c < b->d_in ? shared_of(ps, b, small, 1) : -1;
            int s_out = b->d_out_c < b->d_out ? shared_of(ps, b, small, 0) : -1;
            b->shared = s_in >= 0 ? s_in : s_out;
        }
    }
    ps->shared_grad = be_alloc(be, (size_t)ps->shared_grad_n);

    /* this rank's trainable tensors and base slices */
    for (int i = 0; i < ps->n_blocks; i++) {
        proj_block *b = &ps->blocks[i];
        if (b->owner != rank) continue;
        if (b->kind == PROJ_NORM) {
            b->a = add_tensor(ps, b->name, "", b->d_in_c, 1, 1);
            ps->grad_n = PC_MAX(ps->grad_n, (int64_t)b->d_in_c); /* its gradient is G, copied */
            continue;
        }
        if (load_slice(ps, base, b, base_name(base, base_cfg, b->name), base_cfg->d_ff, e) != 0) return -1;
        int has_in = b->d_in_c < b->d_in, has_out = b->d_out_c < b->d_out;
        proj_shared *sh = b->shared >= 0 ? &ps->shared[b->shared] : NULL;
        int in_shared = sh && has_in && b->kind == PROJ_ROWS, out_shared = sh && has_out && b->kind == PROJ_COLS;
        if (sh && sh->param_off < 0)
            sh->param_off = add_tensor(ps, b->name, in_shared ? ".p_in" : ".p_out", sh->numel, 2,
                                       lowest_holder(ps, i) == rank);
        if (has_in)
            b->p_in = in_shared ? sh->param_off : add_tensor(ps, b->name, ".p_in", (int64_t)b->d_in * b->d_in_c, 2, 1);
        if (has_out)
            b->p_out = out_shared ? sh->param_off
                                  : add_tensor(ps, b->name, ".p_out", (int64_t)b->d_out_c * b->d_out, 2, 1);
        char suffix[48] = ".a";
        const llama_tensor *st = llama_tensor_at(small, b->small_index);
        if ((b->kind == PROJ_ROWS && b->d_out_c < st->shape[0]) || (b->kind == PROJ_COLS && b->d_in_c < st->shape[1]))
            snprintf(suffix, sizeof suffix, ".a[%lld:%lld]", (long long)b->r0, (long long)b->r1);
        b->a = add_tensor(ps, b->name, suffix, (int64_t)b->d_out_c * b->d_in_c, 2, 1);
        if (ps->products16 && has_in) /* the rounded P_in (d_in, d_in'), or (P_in only) G (d_out, d_in') */
            ps->b16_n = PC_MAX(ps->b16_n, (int64_t)b->d_in_c * (has_out ? b->d_in : PC_MAX(b->d_in, b->d_out)));
        else if (ps->base_bf16 && !(ps->products16 && has_out)) /* the widened slice */
            ps->wide_n = PC_MAX(ps->wide_n, (int64_t)b->d_out * b->d_in);
        if (has_in && has_out) /* W P_in or P_out W; one-sided blocks need none (an embedding's: (V, d)) */
            ps->scratch_n = PC_MAX(ps->scratch_n, PC_MAX((int64_t)b->d_out * b->d_in_c, (int64_t)b->d_out_c * b->d_in));
        ps->grad_n = PC_MAX(ps->grad_n, (has_in && !in_shared ? (int64_t)b->d_in * b->d_in_c : 0) +
                                            (has_out && !out_shared ? (int64_t)b->d_out_c * b->d_out : 0) +
                                            (int64_t)b->d_out_c * b->d_in_c);
    }
    ps->params = be_alloc(be, (size_t)ps->n_params); /* zeroed: A = 0 */
    ps->scratch = be_alloc(be, (size_t)ps->scratch_n);
    if (ps->wide_n > 0) ps->wide = be_alloc(be, (size_t)ps->wide_n);
    ps->b16_n += ps->b16_n % 2; /* whole fp32 words, as the plan counts it */
    if (ps->b16_n > 0) ps->b16 = be->ops->alloc_bf16(be, (size_t)ps->b16_n);
    ps->grad = be_alloc(be, (size_t)ps->grad_n);
    build_layout(ps, small);
    ps->n_stages = small->cfg.n_layers + 2;
    return init_params(ps, base, base_cfg, idx, e);
}

void proj_free(proj_set *ps) {
    backend *be = ps->be;
    for (int i = 0; i < ps->n_base_bufs; i++) be_free(be, ps->base_bufs[i]);
    float *dev[] = {ps->params, ps->shared_grad, ps->scratch, ps->grad, ps->xchg, ps->wide, ps->gacc};
    for (size_t i = 0; i < PC_ARRAY_LEN(dev); i++)
        if (dev[i]) be_free(be, dev[i]);
    if (ps->xchg16) be_free(be, ps->xchg16);
    if (ps->b16) be_free(be, ps->b16);
    free(ps->base_bufs);
    free(ps->blocks);
    free(ps->shared);
    free(ps->tensors);
    free(ps->pieces);
    memset(ps, 0, sizeof *ps);
}

static void gemm(proj_set *ps, int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc) {
    ps->be->ops->gemm(ps->be, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

/* C (M,N) = op(W) op(B) + beta C, W block b's base slice (d_out, d_in): the fp32 slice w,
 * or with products16 its bf16 as stored and B rounded into b16 (what gemm computes in
 * MATMUL_BF16 on the widened slice, bit for bit on the CPU). */
static void w_gemm(proj_set *ps, const proj_block *b, const float *w, int ta, int tb, int M, int N, int K,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    if (!ps->products16) {
        gemm(ps, ta, tb, M, N, K, w, b->d_in, B, ldb, beta, C, ldc);
        return;
    }
    int rb = tb ? N : K, cb = tb ? K : N; /* B's stored shape */
    ps->be->ops->round_bf16_2d(ps->be, ps->b16, cb, B, ldb, rb, cb);
    ps->be->ops->gemm_16(ps->be, ta, tb, M, N, K, 1.0f, b->w16, b->d_in, ps->b16, cb, beta, C, ldc);
}

/* C (M,N) = op(A) op(W) + beta C, the same with W on the right (gemm_w16 rounds A). */
static void gemm_w(proj_set *ps, const proj_block *b, const float *w, int ta, int tb, int M, int N, int K,
                   const float *A, int lda, float beta, float *C, int ldc) {
    if (!ps->products16)
        gemm(ps, ta, tb, M, N, K, A, lda, w, b->d_in, beta, C, ldc);
    else
        ps->be->ops->gemm_w16(ps->be, ta, tb, M, N, K, 1.0f, A, lda, b->w16, b->d_in, beta, C, ldc);
}

/* Copy a (rows, cols) matrix between row strides (device buffers). */
static void copy_rows(backend *be, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    be->ops->add2d(be, dst, ld_dst, src, ld_src, rows, cols, 0.0f);
}

/* W_C = P_out W P_in + A into out (d_out', d_in') with row stride ld. */
static void materialize_block(proj_set *ps, const proj_block *b, float *out, int ld) {
    const float *p_in = b->p_in >= 0 ? ps->params + b->p_in : NULL;   /* (d_in, d_in') */
    const float *p_out = b->p_out >= 0 ? ps->params + b->p_out : NULL; /* (d_out', d_out) */
    int dO = b->d_out, dI = b->d_in, o = b->d_out_c, i = b->d_in_c;
    /* (d_out, d_in) fp32, or NULL: the products read the bf16 slice (products16) */
    const float *w = ps->products16 && (p_in || p_out) ? NULL : slice_f32(ps, b);
    copy_rows(ps->be, out, ld, ps->params + b->a, i, o, i); /* A (d_out', d_in') */
    if (p_in && p_out) {
        double cost_x = (double)dO * dI * i + (double)o * dO * i, cost_y = (double)o * dO * dI + (double)o * dI * i;
        if (cost_x <= cost_y) {
            float *x = ps->scratch;                                  /* W P_in: (d_out, d_in') */
            w_gemm(ps, b, w, 0, 0, dO, i, dI, p_in, i, 0.0f, x, i);
            gemm(ps, 0, 0, o, i, dO, p_out, dO, x, i, 1.0f, out, ld); /* P_out X: (d_out', d_in') */
        } else {
            float *y = ps->scratch;                                  /* P_out W: (d_out', d_in) */
            gemm_w(ps, b, w, 0, 0, o, dI, dO, p_out, dO, 0.0f, y, dI);
            gemm(ps, 0, 0, o, i, dI, y, dI, p_in, i, 1.0f, out, ld); /* Y P_in */
        }
    } else if (p_in) {
        w_gemm(ps, b, w, 0, 0, dO, i, dI, p_in, i, 1.0f, out, ld);
    } else if (p_out) {
        gemm_w(ps, b, w, 0, 0, o, dI, dO, p_out, dO, 1.0f, out, ld);
    } else { /* nothing compressed: W_C = W + A */
        ps->be->ops->add2d(ps->be, out, ld, w, dI, o, i, 1.0f);
    }
}

/* Block b's first element in the small model's fp32 values, or NULL where it holds none. */
static float *f32_at(const proj_block *b, const llama_model *small) {
    float *p = llama_param(small, b->small_index);
    return p ? p + (b->off_c - llama_tensor_offset(small, b->small_index)) : NULL;
}

/* Block b's piece of the W_C broadcast in bf16: its place in w16, or in xchg16 for a
 * strided block; *ld its row stride. */
static uint16_t *piece16(const proj_set *ps, const proj_block *b, const llama_model *small, int *ld) {
    *ld = b->xoff >= 0 ? b->d_in_c : b->ld_c;
    return b->xoff >= 0 ? ps->xchg16 + b->xoff : small->w16 + b->off_c;
}

void proj_materialize(proj_set *ps, llama_model *small) {
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->owner != ps->rank) continue;
        /* W_C in fp32 (d_out', d_in') with row stride ld: where the model holds fp32 values,
         * else (bf16 only) staged in G's place: packed in gacc (sharded G), packed into xchg
         * for a strided block, or in the small model's G */
        float *out = f32_at(b, small);
        int ld = b->ld_c;
        if (!out && ps->shard) {
            out = ps->gacc + b->goff;
            ld = b->d_in_c;
        } else if (!out && b->xoff >= 0) {
            out = ps->xchg + b->xoff;
            ld = b->d_in_c;
        } else if (!out) {
            out = small->grads + b->off_c;
        }
        if (b->kind == PROJ_NORM)
            be_copy(ps->be, out, ps->params + b->a, (size_t)b->d_in_c);
        else
            materialize_block(ps, b, out, ld);
        if (small->w16) { /* rounded into its piece now: the staging is reused by the next block */
            int ld16;
            uint16_t *dst = piece16(ps, b, small, &ld16);
            ps->be->ops->round_bf16_2d(ps->be, dst, ld16, out, ld, b->d_out_c, b->d_in_c);
        }
    }
    if (ps->shard) be_zero(ps->be, ps->gacc, (size_t)ps->gacc_n); /* the step's sums start here */
}

/* (d_out', d_in') slice of block b, first element `at` with row stride ld_c (inside a
 * small-model buffer) <-> contiguous. */
static void pack_block(backend *be, const proj_block *b, float *dst, const float *at) {
    copy_rows(be, dst, b->d_in_c, at, b->ld_c, b->d_out_c, b->d_in_c);
}

static void unpack_block(backend *be, const proj_block *b, float *at, const float *src) {
    copy_rows(be, at, b->ld_c, src, b->d_in_c, b->d_out_c, b->d_in_c);
}

/* Block b's first element of G where the backward leaves it (grads, or its stage's
 * window), row stride ld_c. */
static float *g_first(const proj_block *b, const llama_model *small) {
    return llama_grad(small, b->small_index) + (b->off_c - llama_tensor_offset(small, b->small_index));
}

/* Block i's piece of small-model buffer buf (params or grads): in place, or its place in
 * xchg for a strided block. */
static float *piece_at(const proj_set *ps, const proj_block *b, float *buf) {
    return b->xoff >= 0 ? ps->xchg + b->xoff : buf + b->off_c;
}

/* Forward order of the stages (llama_forward's on_weights): the embedding first. */
static int fwd_stage(const proj_set *ps, const proj_block *b) { return ps->n_stages - 1 - b->stage; }

/* Block b's piece of the W_C broadcast: in bf16 (piece16), or its place in params (f32),
 * or in xchg for a strided block. */
static void *gather_piece(const proj_set *ps, const proj_block *b, const llama_model *small) {
    int ld;
    if (small->w16) return piece16(ps, b, small, &ld);
    return piece_at(ps, b, small->params);
}

/* Owners make their pieces: f32, strided blocks packed (bf16 pieces are made by
 * proj_materialize). */
static void gather_prepare(proj_set *ps, llama_model *small) {
    if (small->w16) return;
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->owner == ps->rank && b->xoff >= 0) pack_block(ps->be, b, ps->xchg + b->xoff, small->params + b->off_c);
    }
}

/* Start the broadcast of the blocks of forward stages first .. last, as one group. */
static int gather_start(proj_set *ps, llama_model *small, comm *c, int first, int last, pc_err *e) {
    int n = 0;
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        int s = fwd_stage(ps, b);
        if (s >= first && s <= last)
            ps->pieces[n++] = (comm_piece){gather_piece(ps, b, small), (size_t)b->d_out_c * b->d_in_c, b->owner};
    }
    ps->gather_started = last + 1;
    if (ps->world == 1 || n == 0) return 0;
    return comm_broadcast_group_start(c, ps->pieces, n, small->w16 ? COMM_BF16 : COMM_F32, e);
}

/* The blocks of forward stages first .. last have arrived: a strided one is unpacked into
 * params; in bf16 a strided one is unpacked into w16 (widened and rounded again: exact)
 * and a piece of a tensor the model also holds in fp32 (a norm gain; never strided) is
 * widened into params, on the owners too: every rank then holds the same values. */
static void gather_land(proj_set *ps, llama_model *small, int first, int last) {
    backend *be = ps->be;
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        int s = fwd_stage(ps, b);
        if (s < first || s > last) continue;
        size_t n = (size_t)b->d_out_c * b->d_in_c;
        if (!small->w16) {
            if (b->xoff >= 0 && b->owner != ps->rank) unpack_block(be, b, small->params + b->off_c, ps->xchg + b->xoff);
        } else if (b->xoff < 0) {
            float *f32 = f32_at(b, small);
            if (f32) be->ops->widen_bf16(be, f32, small->w16 + b->off_c, n);
        } else {
            be->ops->widen_bf16(be, ps->xchg + b->xoff, ps->xchg16 + b->xoff, n);
            be->ops->round_bf16_2d(be, small->w16 + b->off_c, b->ld_c, ps->xchg + b->xoff, b->d_in_c, b->d_out_c,
                                   b->d_in_c);
        }
    }
    ps->gather_landed = last + 1;
}

int proj_gather(proj_set *ps, llama_model *small, comm *c, pc_err *e) {
    gather_prepare(ps, small);
    if (gather_start(ps, small, c, 0, ps->n_stages - 1, e) != 0 || comm_wait(c, e) != 0) return -1;
    gather_land(ps, small, 0, ps->n_stages - 1);
    return 0;
}

int proj_gather_begin(proj_set *ps, llama_model *small, comm *c, pc_err *e) {
    gather_prepare(ps, small);
    ps->gather_landed = 0;
    return gather_start(ps, small, c, 0, 0, e);
}

int proj_gather_stage(proj_set *ps, llama_model *small, comm *c, int stage, pc_err *e) {
    int last = ps->n_stages - 1;
    stage = PC_MIN(stage, last);
    if (stage < ps->gather_landed) return 0;
    if (ps->gather_started <= stage && gather_start(ps, small, c, ps->gather_started, stage, e) != 0) return -1;
    if (comm_wait(c, e) != 0) return -1;
    gather_land(ps, small, ps->gather_landed, stage);
    return stage < last && ps->gather_started == stage + 1 ? gather_start(ps, small, c, stage + 1, stage + 1, e) : 0;
}

/* Start the G reduce of the blocks of stages next_stage .. last (strided ones packed into
 * xchg first), as one group. */
static int reduce_stages(proj_set *ps, llama_model *small, comm *c, int last, pc_err *e) {
    int n = 0, first = ps->next_stage;
    if (last < first) return 0;
    ps->next_stage = last + 1;
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->stage < first || b->stage > last) continue;
        if (b->xoff >= 0) pack_block(ps->be, b, ps->xchg + b->xoff, g_first(b, small));
        ps->pieces[n++] = (comm_piece){piece_at(ps, b, small->grads), (size_t)b->d_out_c * b->d_in_c, b->owner};
    }
    return comm_reduce_group_start(c, ps->pieces, n, COMM_F32, COMM_SUM, e);
}

/* Sharded G: block b's piece of its stage's reduce: in the window, or packed in xchg for a
 * strided block; *ld its row stride. */
static float *shard_piece(const proj_set *ps, const proj_block *b, const llama_model *small, int *ld) {
    *ld = b->xoff >= 0 ? b->d_in_c : b->ld_c;
    return b->xoff >= 0 ? ps->xchg + b->xoff : g_first(b, small);
}

/* Sharded G: wait for the stage in flight; its owners copy their sums into gacc, and its
 * window is zeroed for the stage after next. */
static int shard_land(proj_set *ps, llama_model *small, comm *c, pc_err *e) {
    int s = ps->inflight, ld;
    if (s < 0) return 0;
    ps->inflight = -1;
    if (ps->world > 1 && comm_wait(c, e) != 0) return -1;
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->stage != s || b->owner != ps->rank) continue;
        const float *p = shard_piece(ps, b, small, &ld);
        copy_rows(ps->be, ps->gacc + b->goff, b->d_in_c, p, ld, b->d_out_c, b->d_in_c);
    }
    llama_zero_grad_stage(small, s);
    return 0;
}

/* Sharded G: stages next_stage .. last in turn: land the one in flight, then the owners
 * add their sums so far into their pieces and the stage's reduce starts. */
static int shard_stages(proj_set *ps, llama_model *small, comm *c, int last, pc_err *e) {
    for (int s = ps->next_stage; s <= last; s++) {
        if (shard_land(ps, small, c, e) != 0) return -1;
        int n = 0, ld;
        for (int i = 0; i < ps->n_blocks; i++) {
            const proj_block *b = &ps->blocks[i];
            if (b->stage != s) continue;
            if (b->xoff >= 0) pack_block(ps->be, b, ps->xchg + b->xoff, g_first(b, small));
            float *p = shard_piece(ps, b, small, &ld);
            if (b->owner == ps->rank) /* p += the sum of the step's earlier backwards */
                ps->be->ops->add2d(ps->be, p, ld, ps->gacc + b->goff, b->d_in_c, b->d_out_c, b->d_in_c, 1.0f);
            ps->pieces[n++] = (comm_piece){p, (size_t)b->d_out_c * b->d_in_c, b->owner};
        }
        ps->inflight = s;
        ps->next_stage = s + 1;
        if (ps->world > 1 && n > 0 && comm_reduce_group_start(c, ps->pieces, n, COMM_F32, COMM_SUM, e) != 0)
            return -1;
    }
    return 0;
}

void proj_shard_grads(proj_set *ps) {
    int64_t n = 0;
    for (int i = 0; i < ps->n_blocks; i++) {
        proj_block *b = &ps->blocks[i];
        b->goff = b->owner == ps->rank ? n : -1;
        if (b->goff >= 0) n += (int64_t)b->d_out_c * b->d_in_c;
    }
    ps->shard = 1;
    ps->inflight = -1;
    ps->gacc_n = n;
    ps->gacc = be_alloc(ps->be, (size_t)(n > 0 ? n : 1));
}

int proj_reduce_start(proj_set *ps, llama_model *small, comm *c, int stage, pc_err *e) {
    if (ps->shard) return shard_stages(ps, small, c, PC_MIN(stage, ps->n_stages - 1), e);
    if (ps->world == 1) return 0;
    return reduce_stages(ps, small, c, PC_MIN(stage, ps->n_stages - 1), e);
}

int proj_reduce_finish(proj_set *ps, llama_model *small, comm *c, pc_err *e) {
    if (ps->shard) {
        int rc = shard_stages(ps, small, c, ps->n_stages - 1, e);
        if (rc == 0) rc = shard_land(ps, small, c, e);
        ps->next_stage = 0; /* the next backward starts over */
        return rc;
    }
    if (ps->world == 1) return 0;
    int rc = reduce_stages(ps, small, c, ps->n_stages - 1, e);
    ps->next_stage = 0; /* the next step starts over */
    if (rc != 0 || comm_wait(c, e) != 0) return -1;
    for (int i = 0; i < ps->n_blocks; i++) {
        const proj_block *b = &ps->blocks[i];
        if (b->xoff >= 0 && b->owner == ps->rank) unpack_block(ps->be, b, g_first(b, small), ps->xchg + b->xoff);
    }
    return 0;
}

int64_t proj_grad_layout(const proj_set *ps, int idx, int64_t *gin, int64_t *gout, int64_t *ga) {
    const proj_block *b = &ps->blocks[idx];
    int in_shared = b->shared >= 0 && b->kind == PROJ_ROWS, out_shared = b->shared >= 0 && b->kind == PROJ_COLS;
    int64_t n_in = b->p_in >= 0 && !in_shared ? (int64_t)b->d_in * b->d_in_c : 0;
    int64_t n_out = b->p_out >= 0 && !out_shared ? (int64_t)b->d_out_c * b->d_out : 0;
    int64_t n_a = b->kind == PROJ_NORM ? b->d_in_c : (int64_t)b->d_out_c * b->d_in_c;
    *gin = n_in ? 0 : -1;
    *gout = n_out ? n_in : -1;
    *ga = n_in + n_out;
    return n_in + n_out + n_a;
}

double proj_grad_block(proj_set *ps, int idx, const llama_model *small, int with_shared, float *dst, int64_t *gin,
                       int64_t *gout, int64_t *ga) {
    const proj_block *b = &ps->blocks[idx];
    /* G (d_out', d_in'): packed in gacc (sharded), else in the small model's, row stride ld_c */
    const float *G = ps->shard ? ps->gacc + b->goff : small->grads + b->off_c;
    const float *p_in = b->p_in >= 0 ? ps->params + b->p_in : NULL;
    const float *p_out = b->p_out >= 0 ? ps->params + b->p_out : NULL;
    int dO = b->d_out, dI = b->d_in, o = b->d_out_c, i = b->d_in_c, ld = ps->shard ? b->d_in_c : b->ld_c;
    const proj_shared *sh = b->shared >= 0 ? &ps->shared[b->shared] : NULL;
    const int64_t n = proj_grad_layout(ps, idx, gin, gout, ga);
    float *out = dst ? dst : ps->grad; /* dP_in, dP_out, dA packed */
    /* (d_out, d_in) fp32; NULL for a norm block, or where the products read the bf16 slice */
    const float *w = b->kind == PROJ_NORM || ps->products16 ? NULL : slice_f32(ps, b);
    if (b->kind == PROJ_NORM) {
        be_copy(ps->be, out + *ga, G, (size_t)i);
        return ps->be->ops->sumsq(ps->be, out, (size_t)n);
    }
    int in_shared = sh && b->kind == PROJ_ROWS, out_shared = sh && b->kind == PROJ_COLS;
    if (p_in && (with_shared || !in_shared)) { /* dP_in (d_in, d_in') = (P_out W)^T G */
        float *d = in_shared ? ps->shared_grad + sh->grad_off : out + *gin;
        float beta = in_shared ? 1.0f : 0.0f; /* a shared factor's partial: summed over its blocks */
        if (p_out) {
            gemm_w(ps, b, w, 0, 0, o, dI, dO, p_out, dO, 0.0f, ps->scratch, dI); /* Y = P_out W (d_out', d_in) */
            gemm(ps, 1, 0, dI, i, o, ps->scratch, dI, G, ld, beta, d, i);
        } else {
            w_gemm(ps, b, w, 1, 0, dI, i, o, G, ld, beta, d, i); /* W^T G */
        }
    }
    if (p_out && (with_shared || !out_shared)) { /* dP_out (d_out', d_out) = G (W P_in)^T */
        float *d = out_shared ? ps->shared_grad + sh->grad_off : out + *gout;
        float beta = out_shared ? 1.0f : 0.0f;
        if (p_in) {
            w_gemm(ps, b, w, 0, 0, dO, i, dI, p_in, i, 0.0f, ps->scratch, i); /* X = W P_in (d_out, d_in') */
            gemm(ps, 0, 1, o, dO, i, G, ld, ps->scratch, i, beta, d, dO);
        } else {
            gemm_w(ps, b, w, 0, 1, o, dO, i, G, ld, beta, d, dO); /* G W^T */
        }
    }
    copy_rows(ps->be, out + *ga, i, G, ld, o, i); /* dA = G */
    return ps->be->ops->sumsq(ps->be, out, (size_t)n);
}

int64_t proj_scratch_bytes(const proj_set *ps) {
    return (int64_t)sizeof(float) * (ps->scratch_n + ps->wide_n + ps->grad_n + ps->shared_grad_n) +
           (int64_t)sizeof(uint16_t) * ps->b16_n;
}

double proj_flops(const proj_set *ps) {
    double f = 0;
    for (int i = 0; i < ps->n_blocks; i++) f += ps->blocks[i].flops;
    return f;
}

/* Small tensor st sliced from the base at idx into dst (host, st->numel). */
static int slice_tensor(const st_model *base, const llama_config *base_cfg, const llama_tensor *st,
                        const proj_indices *idx, float *dst, pc_err *e) {
    if (st->ndim == 1) { /* gain (d') = gain[idx_d] */
        float *full = pc_alloc_f32((size_t)base_cfg->d_model);
        int rc = st_read_f32(base, st->name, full, (size_t)base_cfg->d_model, e);
        if (rc == 0) rc = st_check_finite(base, st->name, full, (size_t)base_cfg->d_model, e);
        for (int64_t j = 0; rc == 0 && j < st->numel; j++) dst[j] = full[idx->idx_d[j]];
        free(full);
        return rc;
    }
    const tensor_role *role = role_of(st->name);
    if (!role) return pc_errorf(e, "prune: no rule for tensor '%s'", st->name);
    int layer = layer_of(st->name);
    const char *bname = base_name(base, base_cfg, st->name);
    int64_t full[2] = {side_width(base_cfg, role->out, layer, (int)st->shape[0]),
                       side_width(base_cfg, role->in, layer, (int)st->shape[1])};
    int64_t C = full[1];
    float *w = pc_alloc_f32((size_t)(full[0] * C)); /* (full[0], C): the config's shape */
    if (llama_read_stored(base, bname, 2, full, base_cfg->d_ff, w, e) != 0) {
        free(w);
        return -1;
    }
    const int *ro = side_index(idx, role->out, layer), *ci = side_index(idx, role->in, layer);
    int64_t rows = st->shape[0], cols = st->shape[1];
    for (int64_t r = 0; r < rows; r++) /* (d_out', d_in') = W[idx_out][:, idx_in] */
        for (int64_t c = 0; c < cols; c++) dst[r * cols + c] = w[(ro ? ro[r] : r) * C + (ci ? ci[c] : c)];
    free(w);
    return 0;
}

int proj_slice_base(const st_model *base, const llama_config *base_cfg, llama_model *small, const proj_indices *idx,
                    pc_err *e) {
    for (int ti = 0; ti < llama_n_tensors(small); ti++) {
        const llama_tensor *st = llama_tensor_at(small, ti);
        float *dst = pc_alloc_f32((size_t)st->numel); /* host copy of the small tensor */
        int rc = slice_tensor(base, base_cfg, st, idx, dst, e);
        if (rc == 0) be_upload(small->be, small->params + st->offset, dst, (size_t)st->numel);
        free(dst);
        if (rc != 0) return -1;
    }
    return 0;
}

void proj_indices_free(proj_indices *idx, int n_layers) {
    free(idx->idx_d);
    for (int i = 0; i < n_layers; i++) free(idx->idx_ff[i]);
    memset(idx, 0, sizeof *idx);
}
