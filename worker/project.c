/* project: projections of a frozen base Llama into a smaller one (see project.h). */
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

/* Layer number of "model.layers.<i>...." or -1. */
static int layer_of(const char *name) {
    const char *p = strstr(name, "layers.");
    return p ? atoi(p + 7) : -1;
}

static const int *side_index(const proj_indices *idx, side_kind k, int layer) {
    return k == SIDE_D ? idx->idx_d : k == SIDE_FF ? idx->idx_ff[layer] : NULL;
}

/* The base tensor name holding the weight of small tensor `name` (lm_head of a tied base
 * is the embedding). */
static const char *base_name(const st_model *base, const char *name) {
    if (!strcmp(name, "lm_head.weight") && !st_find(base, name)) return "model.embed_tokens.weight";
    return name;
}

static float *load_base(proj_set *ps, const st_model *base, const char *name, int64_t rows, int64_t cols,
                        pc_err *e) {
    const st_tensor *t = st_find(base, name);
    if (!t) return pc_errorf(e, "base model: tensor '%s' is missing", name), NULL;
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return pc_errorf(e, "%s: tensor '%s' has shape [%lld, %lld], config.json says [%lld, %lld]",
                         st_file_path(base, t), name, (long long)(t->ndim > 0 ? t->shape[0] : 0),
                         (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)rows, (long long)cols),
               NULL;
    float *w = pc_alloc_f32((size_t)(rows * cols));
    if (st_read_f32(base, name, w, (size_t)(rows * cols), e) != 0) {
        free(w);
        return NULL;
    }
    ps->base_bufs[ps->n_base_bufs++] = w;
    return w;
}

static int64_t add_tensor(proj_set *ps, const char *name, const char *suffix, int64_t rows, int64_t cols, int ndim) {
    proj_tensor *t = &ps->tensors[ps->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s%s", name, suffix);
    t->offset = ps->n_params;
    t->numel = rows * cols;
    t->ndim = ndim;
    ps->n_params += t->numel;
    return t->offset;
}

static double matrix_flops(const proj_matrix *m) {
    double dO = m->d_out, dI = m->d_in, o = m->d_out_c, i = m->d_in_c, f = 0;
    int pin = m->p_in >= 0, pout = m->p_out >= 0;
    if (pin && pout) {
        double a = dO * dI * i + o * dO * i, b = o * dO * dI + o * dI * i;
        f += a < b ? a : b;             /* materialise, cheaper order */
        f += dO * dI * i + o * dO * dI; /* W P_in and P_out W for the gradients */
        f += o * i * dO + dI * o * i;   /* dP_out, dP_in */
    } else if (pin) {
        f += dO * dI * i + dO * dI * i; /* W P_in; dP_in = W^T G */
    } else if (pout) {
        f += o * dO * dI + o * dI * dO; /* P_out W; dP_out = G W^T */
    }
    return 2.0 * f;
}

int proj_init(proj_set *ps, backend *be, const st_model *base, const llama_config *base_cfg,
              const llama_model *small, const proj_indices *idx, pc_err *e) {
    memset(ps, 0, sizeof *ps);
    ps->be = be;
    int n = llama_n_tensors(small);
    ps->mats = pc_calloc((size_t)n, sizeof *ps->mats);
    ps->norms = pc_calloc((size_t)n, sizeof *ps->norms);
    ps->tensors = pc_calloc((size_t)n * 3, sizeof *ps->tensors);
    const float *embed_w = NULL;
    for (int ti = 0; ti < n; ti++) {
        const llama_tensor *st = llama_tensor_at(small, ti);
        if (st->ndim == 1) { /* norm gain, sliced at the kept d_model indices */
            proj_norm *pn = &ps->norms[ps->n_norms++];
            pn->small_index = ti;
            pn->n = st->numel;
            pn->offset = add_tensor(ps, st->name, "", 1, st->numel, 1);
            continue;
        }
        const tensor_role *role = role_of(st->name);
        if (!role) return pc_errorf(e, "projection: no rule for tensor '%s'", st->name);
        int layer = layer_of(st->name);
        proj_matrix *m = &ps->mats[ps->n_mats++];
        snprintf(m->name, sizeof m->name, "%s", st->name);
        m->small_index = ti;
        m->d_out_c = (int)st->shape[0];
        m->d_in_c = (int)st->shape[1];
        m->d_out = role->out == SIDE_D ? base_cfg->d_model
                   : role->out == SIDE_FF ? base_cfg->d_ff_layer[layer]
                                          : m->d_out_c;
        m->d_in = role->in == SIDE_D ? base_cfg->d_model : role->in == SIDE_FF ? base_cfg->d_ff_layer[layer] : m->d_in_c;
        const char *bname = base_name(base, st->name);
        if (!strcmp(bname, "model.embed_tokens.weight") && embed_w) {
            m->w = embed_w; /* tied base: the head projects the same frozen embedding */
        } else {
            m->w = load_base(ps, base, bname, m->d_out, m->d_in, e);
            if (!m->w) return -1;
            if (!strcmp(bname, "model.embed_tokens.weight")) embed_w = m->w;
        }
        m->p_in = m->d_in_c < m->d_in ? add_tensor(ps, st->name, ".p_in", m->d_in, m->d_in_c, 2) : -1;
        m->p_out = m->d_out_c < m->d_out ? add_tensor(ps, st->name, ".p_out", m->d_out_c, m->d_out, 2) : -1;
        m->a = add_tensor(ps, st->name, ".a", m->d_out_c, m->d_in_c, 2);
        m->flops = matrix_flops(m);
        int64_t s = (int64_t)m->d_out * m->d_in_c > (int64_t)m->d_out_c * m->d_in
                        ? (int64_t)m->d_out * m->d_in_c
                        : (int64_t)m->d_out_c * m->d_in;
        if (s > ps->scratch_n) ps->scratch_n = s;
        int64_t g = (m->p_in >= 0 ? (int64_t)m->d_in * m->d_in_c : 0) +
                    (m->p_out >= 0 ? (int64_t)m->d_out_c * m->d_out : 0) + (int64_t)m->d_out_c * m->d_in_c;
        if (g > ps->grad_n) ps->grad_n = g;
    }
    ps->params = pc_alloc_f32((size_t)ps->n_params);
    ps->scratch = pc_alloc_f32((size_t)ps->scratch_n);
    ps->grad = pc_alloc_f32((size_t)ps->grad_n);

    /* one-hot initialisation: W_C at step 0 is W[idx_out][:, idx_in]; A = 0 */
    for (int i = 0; i < ps->n_mats; i++) {
        proj_matrix *m = &ps->mats[i];
        const tensor_role *role = role_of(m->name);
        int layer = layer_of(m->name);
        if (m->p_in >= 0) { /* P_in (d_in, d_in'): P_in[idx[j], j] = 1 */
            const int *ix = side_index(idx, role->in, layer);
            for (int j = 0; j < m->d_in_c; j++) ps->params[m->p_in + (int64_t)ix[j] * m->d_in_c + j] = 1.0f;
        }
        if (m->p_out >= 0) { /* P_out (d_out', d_out): P_out[j, idx[j]] = 1 */
            const int *ix = side_index(idx, role->out, layer);
            for (int j = 0; j < m->d_out_c; j++) ps->params[m->p_out + (int64_t)j * m->d_out + ix[j]] = 1.0f;
        }
    }
    for (int i = 0; i < ps->n_norms; i++) {
        proj_norm *pn = &ps->norms[i];
        const char *name = llama_tensor_at(small, pn->small_index)->name;
        float *full = pc_alloc_f32((size_t)base_cfg->d_model);
        if (st_read_f32(base, name, full, (size_t)base_cfg->d_model, e) != 0) {
            free(full);
            return -1;
        }
        for (int64_t j = 0; j < pn->n; j++) ps->params[pn->offset + j] = full[idx->idx_d[j]];
        free(full);
    }
    return 0;
}

void proj_free(proj_set *ps) {
    for (int i = 0; i < ps->n_base_bufs; i++) free(ps->base_bufs[i]);
    free(ps->mats);
    free(ps->norms);
    free(ps->tensors);
    free(ps->params);
    free(ps->scratch);
    free(ps->grad);
    memset(ps, 0, sizeof *ps);
}

static void gemm(proj_set *ps, int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc) {
    ps->be->ops->gemm(ps->be, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

/* W_C = P_out W P_in + A into out (d_out', d_in'). */
static void materialize_one(proj_set *ps, const proj_matrix *m, float *out) {
    const float *p_in = m->p_in >= 0 ? ps->params + m->p_in : NULL;   /* (d_in, d_in') */
    const float *p_out = m->p_out >= 0 ? ps->params + m->p_out : NULL; /* (d_out', d_out) */
    const float *a = ps->params + m->a;                                /* (d_out', d_in') */
    int dO = m->d_out, dI = m->d_in, o = m->d_out_c, i = m->d_in_c;
    memcpy(out, a, sizeof(float) * (size_t)o * i);
    if (p_in && p_out) {
        double cost_x = (double)dO * dI * i + (double)o * dO * i, cost_y = (double)o * dO * dI + (double)o * dI * i;
        if (cost_x <= cost_y) {
            float *x = ps->scratch;                                   /* W P_in: (d_out, d_in') */
            gemm(ps, 0, 0, dO, i, dI, m->w, dI, p_in, i, 0.0f, x, i);
            gemm(ps, 0, 0, o, i, dO, p_out, dO, x, i, 1.0f, out, i); /* P_out X: (d_out', d_in') */
        } else {
            float *y = ps->scratch;                                   /* P_out W: (d_out', d_in) */
            gemm(ps, 0, 0, o, dI, dO, p_out, dO, m->w, dI, 0.0f, y, dI);
            gemm(ps, 0, 0, o, i, dI, y, dI, p_in, i, 1.0f, out, i);  /* Y P_in */
        }
    } else if (p_in) {
        gemm(ps, 0, 0, dO, i, dI, m->w, dI, p_in, i, 1.0f, out, i);
    } else if (p_out) {
        gemm(ps, 0, 0, o, dI, dO, p_out, dO, m->w, dI, 1.0f, out, i);
    } else {
        for (size_t k = 0; k < (size_t)o * i; k++) out[k] += m->w[k];
    }
}

void proj_materialize(proj_set *ps, llama_model *small) {
    for (int i = 0; i < ps->n_mats; i++) {
        const proj_matrix *m = &ps->mats[i];
        materialize_one(ps, m, small->params + llama_tensor_at(small, m->small_index)->offset);
    }
    for (int i = 0; i < ps->n_norms; i++) {
        const proj_norm *pn = &ps->norms[i];
        memcpy(small->params + llama_tensor_at(small, pn->small_index)->offset, ps->params + pn->offset,
               sizeof(float) * (size_t)pn->n);
    }
}

double proj_grad_matrix(proj_set *ps, int idx, const llama_model *small, int64_t *gin, int64_t *gout, int64_t *ga) {
    const proj_matrix *m = &ps->mats[idx];
    const float *G = small->grads + llama_tensor_at(small, m->small_index)->offset; /* (d_out', d_in') */
    const float *p_in = m->p_in >= 0 ? ps->params + m->p_in : NULL;
    const float *p_out = m->p_out >= 0 ? ps->params + m->p_out : NULL;
    int dO = m->d_out, dI = m->d_in, o = m->d_out_c, i = m->d_in_c;
    int64_t off = 0;
    *gin = *gout = -1;
    if (p_in) { /* dP_in (d_in, d_in') = (P_out W)^T G */
        *gin = off;
        const float *y = m->w; /* (d_out', d_in) */
        if (p_out) {
            gemm(ps, 0, 0, o, dI, dO, p_out, dO, m->w, dI, 0.0f, ps->scratch, dI);
            y = ps->scratch;
        }
        gemm(ps, 1, 0, dI, i, o, y, dI, G, i, 0.0f, ps->grad + off, i);
        off += (int64_t)dI * i;
    }
    if (p_out) { /* dP_out (d_out', d_out) = G (W P_in)^T */
        *gout = off;
        const float *x = m->w; /* (d_out, d_in') */
        if (p_in) {
            gemm(ps, 0, 0, dO, i, dI, m->w, dI, p_in, i, 0.0f, ps->scratch, i);
            x = ps->scratch;
        }
        gemm(ps, 0, 1, o, dO, i, G, i, x, i, 0.0f, ps->grad + off, dO);
        off += (int64_t)o * dO;
    }
    *ga = off; /* dA = G */
    memcpy(ps->grad + off, G, sizeof(float) * (size_t)o * i);
    off += (int64_t)o * i;
    return ps->be->ops->sumsq(ps->be, ps->grad, (size_t)off);
}

double proj_flops(const proj_set *ps) {
    double f = 0;
    for (int i = 0; i < ps->n_mats; i++) f += ps->mats[i].flops;
    return f;
}

int proj_slice_base(const st_model *base, const llama_config *base_cfg, llama_model *small, const proj_indices *idx,
                    pc_err *e) {
    for (int ti = 0; ti < llama_n_tensors(small); ti++) {
        const llama_tensor *st = llama_tensor_at(small, ti);
        float *dst = small->params + st->offset;
        if (st->ndim == 1) {
            float *full = pc_alloc_f32((size_t)base_cfg->d_model);
            int rc = st_read_f32(base, st->name, full, (size_t)base_cfg->d_model, e);
            for (int64_t j = 0; rc == 0 && j < st->numel; j++) dst[j] = full[idx->idx_d[j]];
            free(full);
            if (rc != 0) return -1;
            continue;
        }
        const tensor_role *role = role_of(st->name);
        if (!role) return pc_errorf(e, "prune: no rule for tensor '%s'", st->name);
        int layer = layer_of(st->name);
        const char *bname = base_name(base, st->name);
        const st_tensor *bt = st_find(base, bname);
        if (!bt || bt->ndim != 2) return pc_errorf(e, "base model: tensor '%s' is missing or not 2-D", bname);
        int64_t R = bt->shape[0], C = bt->shape[1];
        float *w = pc_alloc_f32((size_t)(R * C));
        if (st_read_f32(base, bname, w, (size_t)(R * C), e) != 0) {
            free(w);
            return -1;
        }
        const int *ro = side_index(idx, role->out, layer), *ci = side_index(idx, role->in, layer);
        int64_t rows = st->shape[0], cols = st->shape[1];
        for (int64_t r = 0; r < rows; r++) /* (d_out', d_in') = W[idx_out][:, idx_in] */
            for (int64_t c = 0; c < cols; c++)
                dst[r * cols + c] = w[(ro ? ro[r] : r) * C + (ci ? ci[c] : c)];
        free(w);
    }
    return 0;
}

void proj_indices_free(proj_indices *idx, int n_layers) {
    free(idx->idx_d);
    for (int i = 0; i < n_layers; i++) free(idx->idx_ff[i]);
    memset(idx, 0, sizeof *idx);
}
