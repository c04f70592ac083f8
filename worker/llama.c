/* llama: Llama forward/backward over the backend op table (see llama.h).
 *
 * Per layer the forward pass is
 *   ln1 = rmsnorm(x); qkv = ln1 Wqkv^T; rope(q,k); a = attn(q,k,v); mid = x + a Wo^T
 *   ln2 = rmsnorm(mid); gu = ln2 Wgu^T; h = silu(g)*u; x' = mid + h Wdown^T
 * and every tensor the backward pass needs is kept per layer. The backward pass
 * walks the layers in reverse, carrying the residual-stream gradient dres.
 *
 * ln1, ln2, h and the final norm's lnf are read only as inputs of weight products. A
 * trainable model with a bf16 weight copy, whose products all take bf16 operands, keeps
 * them in bf16 only (in16): each is rounded once, where it is made, and stored at half
 * the size, with the same results bit for bit as rounding it for every product. */
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* offsets of a layer's tensors inside its block of LLAMA_TENSORS_PER_LAYER */
enum { T_LN1 = 0, T_Q, T_K, T_V, T_O, T_LN2, T_GATE, T_UP, T_DOWN };

struct llama_acts {
    /* per layer l (N = B*T) */
    float **res;   /* L+1 x (N,d): input of layer l; res[L] is the final residual */
    float **mid;   /* L x (N,d): residual after attention */
    /* in16: ln1, ln2, h and lnf (and gu) hold bf16 values (N rows of the same widths) in
     * buffers of half the size, read through act_in; else fp32 */
    int in16;
    float **ln1, **ln2;     /* L x (N,d) */
    float **rstd1, **rstd2; /* L x (N) */
    float **qkv;   /* L x (N,(H+2KV)*hd), q and k after rope; with qkv16 one buffer, unrotated */
    /* attention_16 (backend.h): each layer's q, k (rotated) and v kept in bf16 only, in the
     * layout of rope_qkv_16 (N (H+2KV) hd values in buffers of half as many floats); the
     * qkv product's fp32 output then lives in one buffer for all layers. NULL otherwise. */
    float **qkv16;
    float **att;   /* L x (N,H*hd) attention output before o_proj; bf16 values with att16 */
    /* att16: attention writes its output in bf16 (attention_16 with bf16 products, which
     * are all that read it besides the backward's D), in buffers of half as many floats;
     * then there is no x16 */
    int att16;
    float **lse;   /* L x (B,H,T) */
    /* L x (N,2*f_l): gate | up. With bf16 products (bf16_products) SwiGLU takes them
     * rounded to bf16 (mlp_in): with in16 held in bf16 (buffers of half as many floats),
     * else in fp32 as the product wrote them */
    float **gu;
    float **h;     /* L x (N,f_l) */
    float *lnf, *rstdf; /* (N,d), (N) */
    float *xent_lse;    /* (N) */
    /* backward scratch */
    float *dres, *dln;  /* (N,d) */
    float *datt;        /* (N,H*hd): bf16 values where attention takes them so (llama_backward) */
    float *dqkv;        /* (N,(H+2KV)*hd) */
    /* (N,f_max), (N,2*f_max); with dy16 dh holds bf16 values (a buffer of half as many
     * floats) and dgu is NULL (the gradient goes there in bf16) */
    float *dh, *dgu;
    /* with a bf16 weight copy (and a backward): a product's output gradient and input, each
     * rounded to bf16 once for both backward products (bf16_scratch); NULL otherwise */
    uint16_t *dy16; /* (N, max(C, d, 2 f_max)): the widest layer product's outputs */
    uint16_t *x16;  /* (N, H*hd): the one fp32 product input, att (o_proj's); NULL with att16 */
};

/* A weight product's input activation (N, in): fp32 (f32), or bf16 (b16); one is set. */
typedef struct act_in {
    const float *f32;
    const uint16_t *b16;
} act_in;

static act_in f32_in(const float *x) { return (act_in){x, NULL}; }

/* Layer l's attention output as o_proj's input: bf16 with att16, else fp32. */
static act_in att_in(const llama_acts *a, int l)
{
    return a->att16 ? (act_in){NULL, (const uint16_t *)a->att[l]} : f32_in(a->att[l]);
}

/* ln1, ln2, h or lnf (buf) from row r of width `in` on: bf16 when the model keeps them so */
static act_in prod_in(const llama_acts *a, const float *buf, size_t r, int in)
{
    if (a->in16) return (act_in){NULL, (const uint16_t *)buf + r * in};
    return f32_in(buf + r * in);
}

/* ---- tensor table ---- */

static void add_tensor(llama_model *m, const char *name, int ndim, int64_t d0, int64_t d1)
{
    llama_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->numel = d0 * (ndim == 2 ? d1 : 1);
    t->offset = t->poff = m->n_params;
    m->n_params += t->numel;
}

static void build_table(llama_model *m)
{
    const llama_config *c = &m->cfg;
    int64_t d = c->d_model, V = c->vocab_size, qd = (int64_t)c->n_heads * c->head_dim,
            kvd = (int64_t)c->n_kv_heads * c->head_dim;
    m->tensors = pc_calloc((size_t)(3 + LLAMA_TENSORS_PER_LAYER * c->n_layers), sizeof(llama_tensor));
    char nm[LLAMA_NAME_MAX];
    add_tensor(m, "model.embed_tokens.weight", 2, V, d);
    for (int i = 0; i < c->n_layers; i++) {
        int64_t f = c->d_ff_layer[i];
#define LNAME(s) (snprintf(nm, sizeof(nm), "model.layers.%d.%s", i, s), nm)
        add_tensor(m, LNAME("input_layernorm.weight"), 1, d, 0);
        add_tensor(m, LNAME("self_attn.q_proj.weight"), 2, qd, d);
        add_tensor(m, LNAME("self_attn.k_proj.weight"), 2, kvd, d);
        add_tensor(m, LNAME("self_attn.v_proj.weight"), 2, kvd, d);
        add_tensor(m, LNAME("self_attn.o_proj.weight"), 2, d, qd);
        add_tensor(m, LNAME("post_attention_layernorm.weight"), 1, d, 0);
        add_tensor(m, LNAME("mlp.gate_proj.weight"), 2, f, d);
        add_tensor(m, LNAME("mlp.up_proj.weight"), 2, f, d);
        add_tensor(m, LNAME("mlp.down_proj.weight"), 2, d, f);
#undef LNAME
    }
    add_tensor(m, "model.norm.weight", 1, d, 0);
    if (!c->tie_word_embeddings) add_tensor(m, "lm_head.weight", 2, V, d);
}

static int layer_tensor(int l, int which) { return 1 + LLAMA_TENSORS_PER_LAYER * l + which; }
static int final_norm_tensor(const llama_model *m) { return 1 + LLAMA_TENSORS_PER_LAYER * m->cfg.n_layers; }
static int head_tensor(const llama_model *m) { return m->cfg.tie_word_embeddings ? 0 : final_norm_tensor(m) + 1; }

/* Tensor i's fp32 values; aborts where the model holds none (LLAMA_BF16_ONLY), which is
 * where they are never read: such a model reads its matrices through weight_gemm and its
 * embedding rows through embedding_fwd_w16. */
static float *P(const llama_model *m, int i)
{
    float *p = llama_param(m, i);
    if (!p) {
        fprintf(stderr, "llama: %s has no fp32 values in this model (LLAMA_BF16_ONLY)\n", m->tensors[i].name);
        abort();
    }
    return p;
}

float *llama_param(const llama_model *m, int i)
{
    return m->tensors[i].poff >= 0 ? m->params + m->tensors[i].poff : NULL;
}
static float *G(const llama_model *m, int i) { return llama_grad(m, i); }

int llama_n_tensors(const llama_model *m) { return m->n_tensors; }
const llama_tensor *llama_tensor_at(const llama_model *m, int i) { return &m->tensors[i]; }
const char *llama_tensor_name(const llama_model *m, int i) { return m->tensors[i].name; }
int64_t llama_tensor_offset(const llama_model *m, int i) { return m->tensors[i].offset; }
int64_t llama_tensor_numel(const llama_model *m, int i) { return m->tensors[i].numel; }
int llama_tensor_ndim(const llama_model *m, int i) { return m->tensors[i].ndim; }
int64_t llama_tensor_dim(const llama_model *m, int i, int axis) { return m->tensors[i].shape[axis]; }

int llama_tensor_index(const llama_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return i;
    return -1;
}

/* ---- init / free ---- */

static int check_config(const llama_config *c, int B, int T, pc_err *e)
{
    if (c->vocab_size <= 0) return pc_errorf(e, "llama: vocab_size must be positive, got %d", c->vocab_size);
    if (c->d_model <= 0) return pc_errorf(e, "llama: hidden_size must be positive, got %d", c->d_model);
    if (c->n_layers <= 0 || c->n_layers > PC_MAX_LAYERS)
        return pc_errorf(e, "llama: num_hidden_layers must be in [1,%d], got %d", PC_MAX_LAYERS, c->n_layers);
    if (c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0)
        return pc_errorf(e, "llama: num_attention_heads (%d) must be a positive multiple of num_key_value_heads (%d)",
                         c->n_heads, c->n_kv_heads);
    if (c->head_dim <= 0 || c->head_dim % 2 != 0)
        return pc_errorf(e, "llama: head_dim must be positive and even, got %d", c->head_dim);
    for (int i = 0; i < c->n_layers; i++)
        if (c->d_ff_layer[i] <= 0)
            return pc_errorf(e, "llama: intermediate_size of layer %d must be positive, got %d", i, c->d_ff_layer[i]);
    if (B <= 0 || T <= 0) return pc_errorf(e, "llama: micro-batch shape must be positive, got B=%d T=%d", B, T);
    return 0;
}

/* count buffers of sizes[i]; shared: one buffer of the largest size for every entry (a
 * layer's activations are dead once the next layer has run, or recomputed when needed) */
static float **alloc_list(backend *be, int count, const size_t *sizes, int shared)
{
    float **v = pc_calloc((size_t)count, sizeof(float *));
    size_t most = 0;
    for (int i = 0; i < count; i++) most = PC_MAX(most, sizes[i]);
    for (int i = 0; i < count; i++) v[i] = shared ? (i ? v[0] : be_alloc(be, most)) : be_alloc(be, sizes[i]);
    return v;
}

static void free_list(backend *be, float **v, int count, int shared)
{
    if (!v) return;
    for (int i = 0; i < (shared ? 1 : count); i++) be_free(be, v[i]);
    free(v);
}

enum { KEEP_ALL = 0, RECOMPUTE, FORWARD_ONLY };

/* Each layer's ln1, ln2 (N,d), h (N,f_l) and gu (N,2f_l) (one set shared by the layers
 * without KEEP_ALL) and lnf (N,d): fp32, or (in16) bf16 values in buffers of half as many
 * floats: the products' inputs, and the one product output only an elementwise op reads. */
static void prod_inputs(llama_model *m, int in16)
{
    const llama_config *c = &m->cfg;
    llama_acts *a = m->act;
    int L = c->n_layers, shared = m->forward_only || m->recompute;
    size_t N = (size_t)m->B * m->T, d = (size_t)c->d_model, per = in16 ? 2 : 1; /* values per float */
    size_t *sz = pc_calloc((size_t)L, sizeof(size_t));
    for (int l = 0; l < L; l++) sz[l] = (N * d + per - 1) / per;
    a->ln1 = alloc_list(m->be, L, sz, shared);
    a->ln2 = alloc_list(m->be, L, sz, shared);
    for (int l = 0; l < L; l++) sz[l] = (N * (size_t)c->d_ff_layer[l] + per - 1) / per;
    a->h = alloc_list(m->be, L, sz, shared);
    for (int l = 0; l < L; l++) sz[l] = (N * 2 * (size_t)c->d_ff_layer[l] + per - 1) / per;
    a->gu = alloc_list(m->be, L, sz, shared);
    a->lnf = be_alloc(m->be, (N * d + per - 1) / per);
    a->in16 = in16;
    free(sz);
}

static void free_prod_inputs(llama_model *m)
{
    llama_acts *a = m->act;
    int L = m->cfg.n_layers, shared = m->forward_only || m->recompute;
    free_list(m->be, a->ln1, L, shared);
    free_list(m->be, a->ln2, L, shared);
    free_list(m->be, a->h, L, shared);
    free_list(m->be, a->gu, L, shared);
    be_free(m->be, a->lnf);
    a->ln1 = a->ln2 = a->h = a->gu = NULL;
    a->lnf = NULL;
}

/* Each stage's span of the flat layout (its tensors are adjacent: the embedding, one
 * layer's, the final norm and head) and two windows of the largest (opts.grad_windows). */
static void grad_windows(llama_model *m)
{
    int S = m->cfg.n_layers + 2;
    m->gstage_first = pc_calloc((size_t)S, sizeof(int64_t));
    m->gstage_n = pc_calloc((size_t)S, sizeof(int64_t));
    for (int s = 0; s < S; s++) m->gstage_first[s] = -1;
    for (int i = 0; i < m->n_tensors; i++) {
        int s = llama_grad_stage(m, i);
        const llama_tensor *t = &m->tensors[i];
        if (m->gstage_first[s] < 0) m->gstage_first[s] = t->offset;
        if (t->offset != m->gstage_first[s] + m->gstage_n[s]) {
            fprintf(stderr, "llama: tensor %s is not adjacent to the rest of its stage\n", t->name);
            abort();
        }
        m->gstage_n[s] += t->numel;
    }
    for (int s = 0; s < S; s++) m->gwin_n = PC_MAX(m->gwin_n, m->gstage_n[s]);
    m->gwin = be_alloc(m->be, (size_t)(2 * m->gwin_n));
}

/* params: every tensor, or (bf16_only) the norm gains */
static void alloc_params(llama_model *m, int bf16_only)
{
    m->n_params_f32 = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        llama_tensor *t = &m->tensors[i];
        int f32 = !bf16_only || t->ndim == 1;
        t->poff = f32 ? m->n_params_f32 : -1;
        if (f32) m->n_params_f32 += t->numel;
    }
    m->params = be_alloc(m->be, (size_t)m->n_params_f32);
}

/* The widest layer's d_ff (the layers' widths may differ). */
static size_t max_d_ff(const llama_config *c)
{
    size_t f = 0;
    for (int l = 0; l < c->n_layers; l++) f = PC_MAX(f, (size_t)c->d_ff_layer[l]);
    return f;
}

static int init(llama_model *m, const llama_config *c, backend *be, int B, int T, int mode, const llama_opts *o,
                pc_err *e)
{
    int forward_only = mode == FORWARD_ONLY, shared = mode != KEEP_ALL; /* the per-layer lists but res */
    memset(m, 0, sizeof(*m));
    if (check_config(c, B, T, e)) return -1;
    if (o->grad_windows && c->tie_word_embeddings)
        return pc_errorf(e, "llama: gradient windows need an untied head (a tied one spans two stages)");
    m->cfg = *c;
    m->be = be;
    m->B = B;
    m->T = T;
    m->loss_scale = 1.0f;
    m->forward_only = forward_only;
    m->recompute = mode == RECOMPUTE;
    m->acts_layer = -1;
    if (o->logits_chunk < 0) return pc_errorf(e, "llama: logits_chunk must be >= 0, got %d", o->logits_chunk);
    m->logits_chunk = o->logits_chunk < B * T && !forward_only ? o->logits_chunk : 0;
    build_table(m);
    alloc_params(m, o->weights == LLAMA_BF16_ONLY);
    if (!forward_only && o->grad_windows)
        grad_windows(m);
    else if (!forward_only)
        m->grads = be_alloc(be, (size_t)m->n_params);

    int L = c->n_layers, H = c->n_heads, hd = c->head_dim;
    size_t N = (size_t)B * T, d = (size_t)c->d_model, qd = (size_t)H * hd;
    size_t C = qd + 2 * (size_t)c->n_kv_heads * hd, fmax = max_d_ff(c);
    size_t *sz = pc_calloc((size_t)L + 1, sizeof(size_t));
    llama_acts *a = pc_calloc(1, sizeof(*a));
    m->act = a;
#define LIST(field, count, expr)                                                                                      \
    do {                                                                                                              \
        for (int l = 0; l < (count); l++) sz[l] = (expr);                                                            \
        a->field = alloc_list(be, (count), sz, shared);                                                               \
    } while (0)
    for (int l = 0; l <= L; l++) sz[l] = N * d;
    a->res = alloc_list(be, L + 1, sz, forward_only); /* recompute: every layer's input kept */
    LIST(mid, L, N * d);
    LIST(rstd1, L, N);
    LIST(rstd2, L, N);
    if (be->ops->attention_16 && be->ops->attention_16(be, hd)) { /* the backend's choice, fixed here */
        LIST(qkv16, L, (N * C + 1) / 2);
        for (int l = 0; l < L; l++) sz[l] = N * C;
        a->qkv = alloc_list(be, L, sz, 1);
    } else {
        LIST(qkv, L, N * C);
    }
    LIST(att, L, N * qd);
    LIST(lse, L, (size_t)B * H * T);
#undef LIST
    free(sz);
    prod_inputs(m, !forward_only && o->weights != LLAMA_F32);
    a->rstdf = be_alloc(be, N);
    a->xent_lse = be_alloc(be, N);
    if (!forward_only) { /* backward scratch */
        a->dres = be_alloc(be, N * d);
        a->dln = be_alloc(be, N * d);
        a->datt = be_alloc(be, N * qd);
        a->dqkv = be_alloc(be, N * C);
        a->dh = be_alloc(be, o->weights == LLAMA_F32 ? N * fmax : (N * fmax + 1) / 2); /* else bf16 values */
        if (o->weights == LLAMA_F32) a->dgu = be_alloc(be, N * 2 * fmax); /* else in bf16, in dy16 */
    }
    m->logits = be_alloc(be, (m->logits_chunk ? (size_t)m->logits_chunk : N) * (size_t)c->vocab_size);
    m->tokens = be_alloc_i32(be, N);
    m->targets = be_alloc_i32(be, N);
    if (o->weights != LLAMA_F32) llama_use_bf16_weights(m);

    // rope tables (T, hd/2)
    size_t nrope = (size_t)T * (hd / 2);
    float *hc = pc_alloc_f32(nrope), *hs = pc_alloc_f32(nrope);
    rope_tables_host(hc, hs, T, hd, c->rope_theta, c->rope_scaling_type, c->rope_factor, c->rope_low_freq_factor,
                     c->rope_high_freq_factor, c->rope_original_max_pos);
    m->rope_cos = be_alloc(be, nrope);
    m->rope_sin = be_alloc(be, nrope);
    be_upload(be, m->rope_cos, hc, nrope);
    be_upload(be, m->rope_sin, hs, nrope);
    free(hc);
    free(hs);
    return 0;
}

int llama_attention_16(const llama_model *m) { return m->act && m->act->qkv16; }

void llama_free(llama_model *m)
{
    if (!m->tensors) return;
    backend *be = m->be;
    llama_acts *a = m->act;
    int L = m->cfg.n_layers;
    float **lists[] = {a->mid, a->rstd1, a->rstd2, a->qkv16, a->att, a->lse};
    free_list(be, a->res, L + 1, m->forward_only);
    free_list(be, a->qkv, L, m->forward_only || m->recompute || a->qkv16);
    for (size_t i = 0; i < PC_ARRAY_LEN(lists); i++) free_list(be, lists[i], L, m->forward_only || m->recompute);
    free_prod_inputs(m);
    float *singles[] = {a->rstdf, a->xent_lse, a->dres, a->dln, a->datt, a->dqkv, a->dh, a->dgu,
                        m->logits, m->params, m->grads, m->gwin, m->rope_cos, m->rope_sin};
    for (size_t i = 0; i < PC_ARRAY_LEN(singles); i++) be_free(be, singles[i]);
    if (m->w16) be_free(be, m->w16);
    if (a->dy16) be_free(be, a->dy16);
    if (a->x16) be_free(be, a->x16);
    be_free(be, m->tokens);
    be_free(be, m->targets);
    free(a);
    free(m->tensors);
    free(m->gstage_first);
    free(m->gstage_n);
    memset(m, 0, sizeof(*m));
}

/* A trainable model's dy16 and x16, and its product inputs in bf16 (llama_acts). */
static void bf16_scratch(llama_model *m)
{
    const llama_config *c = &m->cfg;
    llama_acts *a = m->act;
    if (m->forward_only || a->dy16) return;
    size_t N = (size_t)m->B * m->T, d = (size_t)c->d_model, qd = (size_t)c->n_heads * c->head_dim;
    size_t C = qd + 2 * (size_t)c->n_kv_heads * c->head_dim, fmax = max_d_ff(c);
    a->dy16 = m->be->ops->alloc_bf16(m->be, N * PC_MAX(PC_MAX(C, d), 2 * fmax));
    if (a->qkv16) { /* the attention output in bf16 (att16): made in fp32 by llama_init, dead until a forward */
        int L = c->n_layers, shared = m->recompute;
        size_t *sz = pc_calloc((size_t)L, sizeof(size_t));
        for (int l = 0; l < L; l++) sz[l] = (N * qd + 1) / 2;
        free_list(m->be, a->att, L, shared);
        a->att = alloc_list(m->be, L, sz, shared);
        a->att16 = 1;
        free(sz);
    } else {
        a->x16 = m->be->ops->alloc_bf16(m->be, N * qd);
    }
    if (a->dgu) { /* made in fp32 (llama_init): the gate|up gradient goes to dy16 in bf16 (swiglu_bwd_16), and
                   * down_proj's input gradient into dh in bf16 (res_linear_bwd) */
        be_free(m->be, a->dgu);
        a->dgu = NULL;
        be_free(m->be, a->dh);
        a->dh = be_alloc(m->be, (N * fmax + 1) / 2);
    }
    if (!a->in16) { /* made in fp32 (llama_init): what they hold is dead until the next forward */
        free_prod_inputs(m);
        prod_inputs(m, 1);
    }
}

void llama_use_bf16_weights(llama_model *m)
{
    if (!m->w16) m->w16 = m->be->ops->alloc_bf16(m->be, (size_t)m->n_params);
    bf16_scratch(m);
}

void llama_refresh_w16(llama_model *m)
{
    if (!m->w16) return;
    if (m->n_params_f32 == m->n_params) { /* every tensor, one call */
        m->be->ops->round_bf16(m->be, m->w16, m->params, (size_t)m->n_params);
        return;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const llama_tensor *t = &m->tensors[i];
        if (t->poff >= 0) m->be->ops->round_bf16(m->be, m->w16 + t->offset, m->params + t->poff, (size_t)t->numel);
    }
}


int llama_grad_stage(const llama_model *m, int i)
{
    int L = m->cfg.n_layers;
    if (i == 0) return L + 1;
    if (i >= final_norm_tensor(m)) return 0;
    return 1 + (L - 1 - (i - 1) / LLAMA_TENSORS_PER_LAYER);
}

static void grads_done(const llama_model *m, int stage)
{
    if (m->on_grads) m->on_grads(m->on_grads_ctx, stage);
}

/* forward order: 0 the embedding, 1 + l layer l, n_layers + 1 the final norm and head */
static void weights_needed(const llama_model *m, int fwd_stage)
{
    if (m->on_weights) m->on_weights(m->on_weights_ctx, fwd_stage);
}

void llama_zero_grad(llama_model *m)
{
    if (m->grads) be_zero(m->be, m->grads, (size_t)m->n_params);
    if (m->gwin) be_zero(m->be, m->gwin, (size_t)(2 * m->gwin_n));
}

float *llama_grad(const llama_model *m, int i)
{
    const llama_tensor *t = &m->tensors[i];
    if (!m->gwin) return m->grads + t->offset;
    int s = llama_grad_stage(m, i);
    return m->gwin + (s & 1) * m->gwin_n + (t->offset - m->gstage_first[s]);
}

void llama_zero_grad_stage(llama_model *m, int s)
{
    if (m->gwin) be_zero(m->be, m->gwin + (s & 1) * m->gwin_n, (size_t)m->gstage_n[s]);
}

static const llama_opts PLAIN;

int llama_init(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e)
{
    return init(m, c, be, B, T, KEEP_ALL, &PLAIN, e);
}

int llama_init_recompute(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e)
{
    return init(m, c, be, B, T, RECOMPUTE, &PLAIN, e);
}

int llama_init_opts(llama_model *m, const llama_config *c, backend *be, int B, int T, const llama_opts *o,
                    pc_err *e)
{
    return init(m, c, be, B, T, o->forward_only ? FORWARD_ONLY : o->recompute ? RECOMPUTE : KEEP_ALL, o, e);
}

int llama_init_forward_only(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e)
{
    return init(m, c, be, B, T, FORWARD_ONLY, &PLAIN, e);
}

void llama_set_loss_scale(llama_model *m, float s) { m->loss_scale = s; }

/* ---- random init ---- */

void llama_init_random(llama_model *m, uint64_t seed, float std)
{
    int64_t maxn = 0;
    for (int i = 0; i < m->n_tensors; i++) maxn = PC_MAX(maxn, m->tensors[i].numel);
    float *buf = pc_alloc_f32((size_t)maxn);
    for (int i = 0; i < m->n_tensors; i++) {
        const llama_tensor *t = &m->tensors[i];
        if (t->ndim == 1) {
            for (int64_t j = 0; j < t->numel; j++) buf[j] = 1.0f;
        } else {
            pc_rng r;
            pc_rng_seed(&r, pc_hash64(seed, (uint64_t)i, 0x11a3a, 0));
            for (int64_t j = 0; j < t->numel; j++) buf[j] = std * pc_rng_normal(&r);
        }
        be_upload(m->be, P(m, i), buf, (size_t)t->numel);
    }
    free(buf);
}

/* ---- safetensors I/O ---- */

static void shape_str(char *out, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(out + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(out + k, n - k, "]");
}

/* A layer narrower than intermediate_size is stored zero-padded (gate/up rows, down
 * columns) so that stock transformers loads it; read the real part (R, C) into dst and
 * check that the padding is zero (else the stored model is not this one). */
static int read_padded(const st_model *st, const st_tensor *s, int64_t R, int64_t C, float *dst, pc_err *e)
{
    int64_t SR = s->shape[0], SC = s->shape[1];
    float *full = pc_alloc_f32((size_t)(SR * SC)); /* (SR, SC) as stored */
    int rc = st_read_f32(st, s->name, full, (size_t)(SR * SC), e);
    for (int64_t r = 0; rc == 0 && r < SR; r++)
        for (int64_t c = 0; c < SC; c++) {
            float v = full[r * SC + c];
            if (r < R && c < C) {
                dst[r * C + c] = v;
            } else if (v != 0.0f) {
                rc = pc_errorf(e, "%s: tensor %s: padding beyond the layer's width %lld must be zero",
                               st_file_path(st, s), s->name, (long long)(SR > R ? R : C));
                break;
            }
        }
    free(full);
    return rc;
}

const st_tensor *llama_stored_tensor(const st_model *st, const char *name, int ndim, const int64_t *shape,
                                     int64_t d_ff, int *padded, pc_err *e)
{
    const st_tensor *s = st_find(st, name);
    char want[64], got[64];
    shape_str(want, sizeof(want), ndim, shape);
    *padded = 0;
    if (!s) return pc_errorf(e, "%s: tensor %s %s is missing", st_source(st), name, want), NULL;
    int same = s->ndim == ndim;
    for (int k = 0; same && k < ndim; k++) same = s->shape[k] == shape[k];
    if (!same && s->ndim == 2 && ndim == 2 && strstr(name, ".mlp.")) /* narrower layer padded to d_ff */
        *padded = (s->shape[0] == d_ff && s->shape[1] == shape[1] && shape[0] < d_ff) ||
                  (s->shape[1] == d_ff && s->shape[0] == shape[0] && shape[1] < d_ff);
    if (same || *padded) return s;
    shape_str(got, sizeof(got), s->ndim, s->shape);
    return pc_errorf(e, "%s: tensor %s has shape %s, expected %s", st_file_path(st, s), name, got, want), NULL;
}

int llama_read_stored(const st_model *st, const char *name, int ndim, const int64_t *shape, int64_t d_ff, float *dst,
                      pc_err *e)
{
    int padded;
    const st_tensor *s = llama_stored_tensor(st, name, ndim, shape, d_ff, &padded, e);
    if (!s) return -1;
    int64_t n = 1;
    for (int k = 0; k < ndim; k++) n *= shape[k];
    if (padded ? read_padded(st, s, shape[0], shape[1], dst, e) : st_read_f32(st, name, dst, (size_t)n, e)) return -1;
    return st_check_finite(st, name, dst, (size_t)n, e);
}

/* Tensor i's values from host fp32: into params, or (held in bf16 only) rounded to
 * nearest even into w16, exact for values that came from bf16. */
static void upload_values(llama_model *m, int i, const float *host)
{
    const llama_tensor *t = &m->tensors[i];
    if (t->poff >= 0) {
        be_upload(m->be, m->params + t->poff, host, (size_t)t->numel);
        return;
    }
    uint16_t *h16 = pc_malloc(sizeof(uint16_t) * (size_t)t->numel);
    for (int64_t j = 0; j < t->numel; j++) h16[j] = pc_f32_to_bf16(host[j]);
    m->be->ops->upload_bf16(m->be, m->w16 + t->offset, h16, (size_t)t->numel);
    free(h16);
}

int llama_load_tensor(llama_model *m, int i, const st_model *st, const char *name, float *buf, pc_err *e)
{
    const llama_tensor *t = &m->tensors[i];
    if (llama_read_stored(st, name, t->ndim, t->shape, m->cfg.d_ff, buf, e)) return -1;
    upload_values(m, i, buf);
    return 0;
}

int llama_check_tied_head(const st_model *st, const llama_config *c, pc_err *e)
{
    const st_tensor *emb = st_find(st, "model.embed_tokens.weight"), *head = st_find(st, "lm_head.weight");
    if (!c->tie_word_embeddings || !emb || !head) return 0;
    if (emb->dtype == head->dtype && emb->nbytes == head->nbytes && !memcmp(emb->data, head->data, emb->nbytes))
        return 0;
    return pc_errorf(e, "%s: config.json ties the head to the embedding (tie_word_embeddings: true), but %s holds "
                        "an lm_head.weight unlike model.embed_tokens.weight: set tie_word_embeddings to false to use "
                        "it, or remove it",
                     st_source(st), st_file_path(st, head));
}

int llama_load_safetensors(llama_model *m, const char *dir_or_file, pc_err *e)
{
    st_model *st = NULL;
    if (st_open(dir_or_file, &st, e)) return -1;
    if (llama_check_tied_head(st, &m->cfg, e)) {
        st_close(st);
        return -1;
    }
    int64_t maxn = 0;
    for (int i = 0; i < m->n_tensors; i++) maxn = PC_MAX(maxn, m->tensors[i].numel);
    float *buf = pc_alloc_f32((size_t)maxn);
    int rc = 0;
    for (int i = 0; i < m->n_tensors && rc == 0; i++) rc = llama_load_tensor(m, i, st, m->tensors[i].name, buf, e);
    free(buf);
    st_close(st);
    return rc;
}

/* Saving streams each tensor from the device a piece at a time (st_item.fill), so the
 * host never holds the model: save_src is one tensor as saved, (R, C) with the tensor's
 * (rows, cols) in its top-left corner and zeros elsewhere (a narrower MLP layer padded to
 * intermediate_size), its values fp32 where the model holds them, else widened from its
 * bf16 copy (exact). */
typedef struct save_scratch {
    uint16_t *h16;
    int64_t cap;
} save_scratch;

typedef struct save_src {
    const llama_model *m;
    int i;
    int64_t R, C;
    save_scratch *s;
} save_src;

/* Elements [a, a + n) of tensor i (flat, in the tensor's own layout) into dst. */
static void tensor_values(const llama_model *m, int i, int64_t a, int64_t n, float *dst, save_scratch *s)
{
    const llama_tensor *t = &m->tensors[i];
    if (t->poff >= 0) {
        be_download(m->be, dst, m->params + t->poff + a, (size_t)n);
        return;
    }
    if (s->cap < n) {
        free(s->h16);
        s->h16 = pc_malloc(sizeof(uint16_t) * (size_t)n);
        s->cap = n;
    }
    m->be->ops->download_raw(m->be, s->h16, m->w16 + t->offset + a, sizeof(uint16_t) * (size_t)n);
    for (int64_t j = 0; j < n; j++) dst[j] = pc_bf16_to_f32(s->h16[j]);
}

/* st_item fill: elements [at, at + n) of the saved (R, C) tensor, a row segment at a time. */
static int save_fill(void *ctx, int64_t at, int64_t n, float *dst, pc_err *e)
{
    (void)e;
    const save_src *src = ctx;
    const llama_tensor *t = &src->m->tensors[src->i];
    if (src->R * src->C == t->numel) { /* not padded: the tensor's own layout */
        tensor_values(src->m, src->i, at, n, dst, src->s);
        return 0;
    }
    int64_t rows = t->shape[0], cols = t->shape[1];
    for (int64_t pos = at; pos < at + n;) {
        int64_t r = pos / src->C, c = pos % src->C, seg = PC_MIN(src->C - c, at + n - pos);
        int64_t real = r < rows && c < cols ? PC_MIN(seg, cols - c) : 0; /* the rest of the segment is padding */
        if (real > 0) tensor_values(src->m, src->i, r * cols + c, real, dst + (pos - at), src->s);
        memset(dst + (pos - at) + real, 0, sizeof(float) * (size_t)(seg - real));
        pos += seg;
    }
    return 0;
}

int llama_save_safetensors(const llama_model *m, const char *dir, st_dtype dtype, pc_err *e)
{
    if (pc_mkdirs(dir, e)) return -1;
    st_item *items = pc_calloc((size_t)m->n_tensors, sizeof(st_item));
    save_src *srcs = pc_calloc((size_t)m->n_tensors, sizeof(save_src));
    save_scratch scratch = {0};
    int64_t F = m->cfg.d_ff;
    for (int i = 0; i < m->n_tensors; i++) {
        const llama_tensor *t = &m->tensors[i];
        int rows = strstr(t->name, ".mlp.gate_proj") || strstr(t->name, ".mlp.up_proj");
        int cols = strstr(t->name, ".mlp.down_proj") != NULL;
        /* a narrower layer: zero-padded to intermediate_size (zero neurons contribute nothing) */
        int64_t R = rows && t->shape[0] < F ? F : t->shape[0];
        int64_t C = t->ndim < 2 ? 1 : cols && t->shape[1] < F ? F : t->shape[1];
        srcs[i] = (save_src){m, i, R, C, &scratch};
        items[i] = (st_item){.name = t->name, .ndim = t->ndim, .shape = {R, t->ndim < 2 ? 0 : C},
                             .fill = save_fill, .ctx = &srcs[i]};
    }
    int rc = st_write_model(dir, items, m->n_tensors, dtype, (size_t)5 << 30, e);
    free(srcs);
    free(scratch.h16);
    if (rc == 0) {
        llama_config c = m->cfg;
        snprintf(c.torch_dtype, sizeof(c.torch_dtype), "%s",
                 dtype == ST_BF16 ? "bfloat16" : dtype == ST_F16 ? "float16" : "float32");
        rc = hf_config_save(dir, &c, e);
    }
    free(items);
    return rc;
}

/* ---- forward ---- */

/* C (M,N) = A (M,K) op(W) + beta C, W = tensor ti [out,in] (tb = 1: op(W) = W^T, K = in,
 * N = out; tb = 0: K = out, N = in); from its bf16 copy when the model has one */
static void weight_gemm(const llama_model *m, int ti, int tb, int M, int N, int K, const float *A, float beta, float *C)
{
    const llama_tensor *t = &m->tensors[ti];
    int ld = (int)t->shape[1];
    if (m->w16)
        m->be->ops->gemm_w16(m->be, 0, tb, M, N, K, 1.0f, A, K, m->w16 + t->offset, ld, beta, C, N);
    else
        be_gemm(m->be, 0, tb, M, N, K, 1.0f, A, K, P(m, ti), ld, beta, C, N);
}

/* y (N,out) = x (N,in) W^T, W = tensor ti [out,in]; beta = 1 accumulates into y */
static void linear_fwd(const llama_model *m, float *y, act_in x, int ti, int N, int in, int out, float beta)
{
    const llama_tensor *t = &m->tensors[ti];
    if (x.b16) /* in16: both operands in bf16 already */
        m->be->ops->gemm_16(m->be, 0, 1, N, out, in, 1.0f, x.b16, in, m->w16 + t->offset, in, beta, y, out);
    else
        weight_gemm(m, ti, 1, N, out, in, x.f32, beta, y);
}

/* A product input (ln1, ln2, lnf) (N,d) = rmsnorm(x (N,d)) with gain tensor ti; rstd (N);
 * with x_copy (else NULL) x copied there too (N,d): with in16 as the norm reads it */
static void norm_in(llama_model *m, float *out, float *rstd, const float *x, int ti, float *x_copy)
{
    const backend_ops *op = m->be->ops;
    int N = m->B * m->T, d = m->cfg.d_model;
    float eps = (float)m->cfg.rms_norm_eps;
    if (m->act->in16) {
        op->rmsnorm_fwd_16(m->be, (uint16_t *)out, rstd, x, P(m, ti), N, d, eps, x_copy);
        return;
    }
    op->rmsnorm_fwd(m->be, out, rstd, x, P(m, ti), N, d, eps);
    if (x_copy) be_copy(m->be, x_copy, x, (size_t)N * d);
}

/* dW [out,in] += dy^T x ; dx (N,in) = dy W (beta 0), W = tensor ti; each product takes
 * its operands as they are (a bf16 product rounds its own) */
static void linear_bwd_each(const llama_model *m, float *dx, float *dW, const float *dy, const float *x, int ti, int N,
                            int in, int out)
{
    be_gemm(m->be, 1, 0, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);
    if (dx) weight_gemm(m, ti, 0, N, in, out, dy, 0.0f, dx);
}

/* The same with the bf16 weight copy from dy already in bf16 (N,out) with row stride ld_dy:
 * x (N,in) taken as stored in bf16, or rounded once into x16, both products on bf16
 * operands (MATMUL_BF16's arithmetic, what linear_bwd_each computes with a bf16 weight
 * copy, bit for bit); with dx16 dx is written in bf16 (a buffer of half as many floats:
 * the sums linear_bwd_each computes, rounded). */
static void linear_bwd_16(const llama_model *m, float *dx, int dx16, float *dW, const uint16_t *dy, int ld_dy, act_in x,
                          int ti, int N, int in, int out)
{
    const backend_ops *op = m->be->ops;
    const llama_tensor *t = &m->tensors[ti];
    const uint16_t *x16 = x.b16;
    if (!x16) {
        op->round_bf16(m->be, m->act->x16, x.f32, (size_t)N * in); // (N,in)
        x16 = m->act->x16;
    }
    op->gemm_16(m->be, 1, 0, out, in, N, 1.0f, dy, ld_dy, x16, in, 1.0f, dW, in); // (out,N)(N,in)
    const uint16_t *w = m->w16 + t->offset; // (out,in)
    if (dx && dx16) /* (N,in) in bf16 */
        op->gemm_16_to16(m->be, 0, 0, N, in, out, 1.0f, dy, ld_dy, w, (int)t->shape[1], (uint16_t *)dx, in);
    else if (dx)
        op->gemm_16(m->be, 0, 0, N, in, out, 1.0f, dy, ld_dy, w, (int)t->shape[1], 0.0f, dx, in);
}

/* dW [out,in] += dy^T x ; dx (N,in) = dy W (beta 0), W = tensor ti of a decoder layer; with
 * a bf16 weight copy dy is rounded once (into dy16) for both products */
static void linear_bwd(const llama_model *m, float *dx, int dx16, float *dW, const float *dy, act_in x, int ti, int N,
                       int in, int out)
{
    if (!m->act->dy16) { /* and so x in fp32 (and dx) */
        linear_bwd_each(m, dx, dW, dy, x.f32, ti, N, in, out);
        return;
    }
    m->be->ops->round_bf16(m->be, m->act->dy16, dy, (size_t)N * out); // (N,out)
    linear_bwd_16(m, dx, dx16, dW, m->act->dy16, out, x, ti, N, in, out);
}

/* dres += the backward of RMSNorm tensor ti (input x, its rstd) from dln. With a bf16
 * weight copy and rmsnorm_bwd_16 the new dres is rounded into dy16 in the same pass, as
 * the output gradient of the next product backward (the layer's o_proj, or the layer
 * below's down_proj: nothing else writes dy16 between, a recomputed forward included);
 * returns whether it did (res_linear_bwd's res16). */
static int norm_bwd(const llama_model *m, int ti, const float *x, const float *rstd)
{
    const backend_ops *op = m->be->ops;
    llama_acts *a = m->act;
    int N = m->B * m->T, d = m->cfg.d_model;
    if (a->dy16 && op->rmsnorm_bwd_16) {
        op->rmsnorm_bwd_16(m->be, a->dres, a->dy16, G(m, ti), a->dln, x, P(m, ti), rstd, N, d);
        return 1;
    }
    op->rmsnorm_bwd(m->be, a->dres, G(m, ti), a->dln, x, P(m, ti), rstd, N, d);
    return 0;
}

/* The backward of decoder-layer product ti (N,in) -> (N,d) whose output gradient is dres:
 * from its bf16 rounding in dy16 when norm_bwd left it there (res16), else from dres;
 * with dx16 (a model with dy16) dx in bf16. */
static void res_linear_bwd(const llama_model *m, float *dx, int dx16, act_in x, int ti, int in, int res16)
{
    int N = m->B * m->T, d = m->cfg.d_model;
    if (res16)
        linear_bwd_16(m, dx, dx16, G(m, ti), m->act->dy16, d, x, ti, N, in, d);
    else
        linear_bwd(m, dx, dx16, G(m, ti), m->act->dres, x, ti, N, in, d);
}

/* The head's backward over n rows of logits (n,V) (m->logits) from their inputs x (n,d):
 * dlogits = scale * (softmax - onehot) over the logits (xent_bwd), into the head's
 * gradient and dx (n,d). With a bf16 weight copy the dlogits are written in bf16 over the
 * logits (xent_bwd_16), so they are rounded once and never stored in fp32. */
static void head_bwd(llama_model *m, float *dx, act_in x, const float *lse, const int32_t *targets, int n,
                     float scale)
{
    const backend_ops *op = m->be->ops;
    int d = m->cfg.d_model, V = m->cfg.vocab_size, hi = head_tensor(m);
    if (m->act->dy16) {
        op->xent_bwd_16(m->be, m->logits, lse, targets, n, V, scale);
        linear_bwd_16(m, dx, 0, G(m, hi), (const uint16_t *)m->logits, 2 * V, x, hi, n, d, V); // (n,V) -> (n,d)
    } else {
        op->xent_bwd(m->be, m->logits, m->logits, lse, targets, n, V, scale);
        linear_bwd_each(m, dx, G(m, hi), m->logits, x.f32, hi, n, d, V); // (n,V) -> (n,d)
    }
}

/* Whether the model's products are bf16's (MATMUL_BF16's arithmetic): through its bf16
 * weight copy, or in the backend's matmul mode. */
static int bf16_products(const llama_model *m) { return m->w16 || m->be->matmul == MATMUL_BF16; }

/* Layer l's gate|up product ln2 (N,d) -> gu (N,2f) and h (N,f) = swiglu(gate, up). With
 * bf16 products only SwiGLU reads gu, in both passes, and reads it rounded to bf16, as
 * bf16 mixed precision keeps a product's output: written in bf16 by the product with
 * in16 (half the bytes written and read twice), else kept in fp32 as the product wrote
 * it and rounded as SwiGLU reads it (round_in); the same values either way. */
static void mlp_in(llama_model *m, int l)
{
    const backend_ops *op = m->be->ops;
    llama_acts *a = m->act;
    int N = m->B * m->T, d = m->cfg.d_model, f = m->cfg.d_ff_layer[l], tg = layer_tensor(l, T_GATE);
    if (a->in16) {
        const uint16_t *w = m->w16 + m->tensors[tg].offset; // gate (f,d) then up (f,d): (2f,d)
        uint16_t *gu16 = (uint16_t *)a->gu[l];
        op->gemm_16_to16(m->be, 0, 1, N, 2 * f, d, 1.0f, (const uint16_t *)a->ln2[l], d, w, d, gu16, 2 * f);
        op->swiglu_fwd_16(m->be, (uint16_t *)a->h[l], gu16, gu16 + f, N, f, 2 * f); // -> (N,f) bf16
        return;
    }
    linear_fwd(m, a->gu[l], prod_in(a, a->ln2[l], 0, d), tg, N, d, 2 * f, 0.0f); // -> (N,2f)
    op->swiglu_fwd(m->be, a->h[l], a->gu[l], a->gu[l] + f, N, f, 2 * f, bf16_products(m)); // -> (N,f)
}

/* Decoder layer l: res[l] (N,d) -> its activations and, with out, res[l+1] (N,d); a
 * recomputation (out = 0) skips the down projection, whose output the backward never
 * reads. */
static void layer_fwd(llama_model *m, int l, int out)
{
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const llama_config *c = &m->cfg;
    llama_acts *a = m->act;
    int B = m->B, T = m->T, N = B * T, d = c->d_model;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, qd = H * hd, C = qd + 2 * KV * hd;
    int f = c->d_ff_layer[l];
    float *qkv = a->qkv[l];
    norm_in(m, a->ln1[l], a->rstd1[l], a->res[l], layer_tensor(l, T_LN1), a->mid[l]); // mid = res, o_proj adds
    linear_fwd(m, qkv, prod_in(a, a->ln1[l], 0, d), layer_tensor(l, T_Q), N, d, C, 0.0f); // (N,d) -> (N,C)
    if (a->qkv16) { // q, k rotated and q, k, v rounded into the layer's bf16 copy (N,C), which attention reads
        uint16_t *qkv16 = (uint16_t *)a->qkv16[l];
        op->rope_qkv_16(be, qkv16, qkv, m->rope_cos, m->rope_sin, B, T, H, KV, hd, C);
        op->attention_fwd_16(be, a->att[l], a->att16, a->lse[l], qkv16, B, T, H, KV, hd);
    } else {
        op->rope_fwd(be, qkv, m->rope_cos, m->rope_sin, B, T, H, hd, C);       // q part
        op->rope_fwd(be, qkv + qd, m->rope_cos, m->rope_sin, B, T, KV, hd, C); // k part
        op->attention_fwd(be, a->att[l], a->lse[l], qkv, qkv + qd, qkv + qd + KV * hd, B, T, H, KV, hd, C);
    }
    linear_fwd(m, a->mid[l], att_in(a, l), layer_tensor(l, T_O), N, qd, d, 1.0f); // += (N,qd) -> (N,d)
    norm_in(m, a->ln2[l], a->rstd2[l], a->mid[l], layer_tensor(l, T_LN2), out ? a->res[l + 1] : NULL); // down adds
    mlp_in(m, l);
    m->acts_layer = l;
    if (!out) return;
    linear_fwd(m, a->res[l + 1], prod_in(a, a->h[l], 0, f), layer_tensor(l, T_DOWN), N, f, d, 1.0f); // += -> (N,d)
}

/* The decoder layers: res[0] (N,d) -> res[n_layers] (N,d). */
static void layers_fwd(llama_model *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++) {
        weights_needed(m, 1 + l);
        layer_fwd(m, l, 1);
    }
}

void llama_layers_forward(llama_model *m, const float *x, float *y)
{
    size_t n = (size_t)m->B * m->T * m->cfg.d_model;
    be_copy(m->be, m->act->res[0], x, n); // (N,d)
    layers_fwd(m);
    be_copy(m->be, y, m->act->res[m->cfg.n_layers], n);
}

/* The head and the loss logits_chunk tokens at a time, over targets (host, (N,)) already
 * uploaded: each chunk's logits (n,V), their loss, and with grad (a backward follows)
 * at once their dlogits, into the head's gradient and the final norm's input gradient
 * dln (N,d); the sum of the valid rows' losses. */
static double head_chunks(llama_model *m, const int32_t *targets, int grad)
{
    const backend_ops *op = m->be->ops;
    llama_acts *a = m->act;
    int N = m->B * m->T, d = m->cfg.d_model, V = m->cfg.vocab_size, hi = head_tensor(m);
    int64_t valid = 0; /* the scale of every chunk's dlogits needs the micro-batch's count first */
    for (int i = 0; i < N; i++) valid += targets[i] >= 0;
    grad = grad && valid > 0;
    double sum = 0.0;
    m->n_valid = 0;
    for (int r0 = 0; r0 < N; r0 += m->logits_chunk) {
        int n = PC_MIN(m->logits_chunk, N - r0);
        act_in x = prod_in(a, a->lnf, (size_t)r0, d); // (n,d)
        int64_t nv;
        linear_fwd(m, m->logits, x, hi, n, d, V, 0.0f); // (n,d) -> (n,V)
        sum += op->xent_fwd(m->be, a->xent_lse + r0, m->logits, m->targets + r0, n, V, &nv);
        m->n_valid += nv;
        if (grad)
            head_bwd(m, a->dln + (size_t)r0 * d, x, a->xent_lse + r0, m->targets + r0, n, m->loss_scale / (float)valid);
    }
    m->head_done = grad;
    return sum;
}

static float forward_tail(llama_model *m, const int32_t *targets, int grad);

static float forward(llama_model *m, const int32_t *tokens, const int32_t *targets, int grad)
{
    backend *be = m->be;
    const backend_ops *op = be->ops;
    llama_acts *a = m->act;
    int N = m->B * m->T, d = m->cfg.d_model;

    op->upload_i32(be, m->tokens, tokens, (size_t)N);
    m->have_targets = targets != NULL;
    if (targets) op->upload_i32(be, m->targets, targets, (size_t)N);

    weights_needed(m, 0);
    if (m->tensors[0].poff >= 0)
        op->embedding_fwd(be, a->res[0], P(m, 0), m->tokens, N, d); // (N,) -> (N,d)
    else /* LLAMA_BF16_ONLY: the rows of the bf16 copy, widened */
        op->embedding_fwd_w16(be, a->res[0], m->w16, m->tokens, N, d);
    layers_fwd(m);
    return forward_tail(m, targets, grad);
}

/* The final norm, the head and (with targets, already uploaded) the loss, on the last
 * decoder layer's output res[n_layers]. */
static float forward_tail(llama_model *m, const int32_t *targets, int grad)
{
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const llama_config *c = &m->cfg;
    llama_acts *a = m->act;
    int N = m->B * m->T, d = c->d_model, V = c->vocab_size;
    weights_needed(m, c->n_layers + 1);
    norm_in(m, a->lnf, a->rstdf, a->res[c->n_layers], final_norm_tensor(m), NULL);
    m->head_done = 0;
    if (!m->logits_chunk) linear_fwd(m, m->logits, prod_in(a, a->lnf, 0, d), head_tensor(m), N, d, V, 0.0f); // -> (N,V)
    if (!targets) {
        m->loss = 0.0f;
        m->n_valid = 0;
        return 0.0f;
    }
    double sum = m->logits_chunk ? head_chunks(m, targets, grad)
                                 : op->xent_fwd(be, a->xent_lse, m->logits, m->targets, N, V, &m->n_valid);
    m->loss = m->n_valid > 0 ? (float)(sum / (double)m->n_valid) : NAN;
    return m->loss;
}

float llama_forward(llama_model *m, const int32_t *tokens, const int32_t *targets)
{
    return forward(m, tokens, targets, 1);
}

float llama_loss(llama_model *m, const int32_t *tokens, const int32_t *targets)
{
    return forward(m, tokens, targets, 0);
}

float llama_loss_hidden(llama_model *m, const float *x, const int32_t *targets)
{
    m->have_targets = 1;
    m->be->ops->upload_i32(m->be, m->targets, targets, (size_t)m->B * m->T);
    be_copy(m->be, m->act->res[m->cfg.n_layers], x, (size_t)m->B * m->T * m->cfg.d_model); // (N,d)
    return forward_tail(m, targets, 0);
}

/* ---- backward ---- */

void llama_backward(llama_model *m)
{
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const llama_config *c = &m->cfg;
    llama_acts *a = m->act;
    int B = m->B, T = m->T, N = B * T, d = c->d_model, V = c->vocab_size;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, qd = H * hd, C = qd + 2 * KV * hd;
    if (m->forward_only) {
        fprintf(stderr, "llama_backward: the model was made by llama_init_forward_only\n");
        abort();
    }
    if (!m->have_targets || m->n_valid == 0) return; // nothing to differentiate

    if (m->logits_chunk && !m->head_done) {
        fprintf(stderr, "llama_backward: with logits_chunk the forward differentiates the head: llama_forward "
                        "(not llama_loss) must come first\n");
        abort();
    }
    if (!m->logits_chunk) { /* (with chunks the forward differentiated the head) */
        int hi = head_tensor(m);
        act_in lnf = prod_in(a, a->lnf, 0, d); // (N,d)
        if (m->dlogits_ready && a->dy16) /* llama_distill left bf16 dlogits (N,V), row stride 2V */
            linear_bwd_16(m, a->dln, 0, G(m, hi), (const uint16_t *)m->logits, 2 * V, lnf, hi, N, d, V); // -> (N,d)
        else if (m->dlogits_ready) /* fp32 dlogits (N,V) */
            linear_bwd_each(m, a->dln, G(m, hi), m->logits, lnf.f32, hi, N, d, V); // (N,V) -> (N,d)
        else
            head_bwd(m, a->dln, lnf, a->xent_lse, m->targets, N, m->loss_scale / (float)m->n_valid);
    }
    m->dlogits_ready = m->head_done = 0;
    be_zero(be, a->dres, (size_t)N * d);
    int res16 = norm_bwd(m, final_norm_tensor(m), a->res[c->n_layers], a->rstdf);
    grads_done(m, 0);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        if (m->recompute && m->acts_layer != l) layer_fwd(m, l, 0); // the shared buffers hold another layer
        int f = c->d_ff_layer[l];
        float *qkv = a->qkv[l], *dqkv = a->dqkv;
        // MLP: res[l+1] = mid + h Wdown^T
        int td = layer_tensor(l, T_DOWN), tg = layer_tensor(l, T_GATE);
        /* with bf16 products dh, which only the SwiGLU backward reads, in bf16 (N,f) */
        res_linear_bwd(m, a->dh, a->dy16 != NULL, prod_in(a, a->h[l], 0, f), td, f, res16); // (N,d) -> (N,f)
        if (a->dy16) { // the gate|up gradient only meets products: written in bf16 at once (N,2f)
            const uint16_t *gu16 = (const uint16_t *)a->gu[l]; // (N,2f) bf16 (in16)
            op->swiglu_bwd_16(be, a->dy16, a->dy16 + f, (const uint16_t *)a->dh, gu16, gu16 + f, N, f, 2 * f);
            linear_bwd_16(m, a->dln, 0, G(m, tg), a->dy16, 2 * f, prod_in(a, a->ln2[l], 0, d), tg, N, d, 2 * f);
        } else {
            op->swiglu_bwd(be, a->dgu, a->dgu + f, a->dh, a->gu[l], a->gu[l] + f, N, f, 2 * f,
                           bf16_products(m)); // -> (N,2f)
            linear_bwd(m, a->dln, 0, G(m, tg), a->dgu, prod_in(a, a->ln2[l], 0, d), tg, N, d, 2 * f); // -> (N,d)
        }
        res16 = norm_bwd(m, layer_tensor(l, T_LN2), a->mid[l], a->rstd2[l]);
        // attention: mid = res + att Wo^T
        int to = layer_tensor(l, T_O), tq = layer_tensor(l, T_Q);
        const uint16_t *qkv16 = a->qkv16 ? (const uint16_t *)a->qkv16[l] : NULL;
        /* with bf16 products and attention the o_proj product's input gradient, which only
         * attention reads, is bf16 (in datt), and so is the qkv product's output gradient,
         * dq and dk rotated back: attention writes it there at once where the backend can */
        const int to16 = qkv16 && a->dy16 && op->attention_bwd_rope_16;
        res_linear_bwd(m, a->datt, to16, att_in(a, l), to, qd, res16); // (N,d) -> (N,qd)
        if (to16) // -> (N,C) bf16
            op->attention_bwd_rope_16(be, a->dy16, dqkv, (const uint16_t *)a->datt, a->att[l], a->att16, a->lse[l],
                                      qkv16, m->rope_cos, m->rope_sin, B, T, H, KV, hd, C);
        else if (qkv16)
            op->attention_bwd_16(be, dqkv, dqkv + qd, dqkv + qd + KV * hd, a->datt, a->att[l], a->att16, a->lse[l],
                                 qkv16, B, T, H, KV, hd, C);
        else
            op->attention_bwd(be, dqkv, dqkv + qd, dqkv + qd + KV * hd, a->datt, a->att[l], a->lse[l], qkv,
                              qkv + qd, qkv + qd + KV * hd, B, T, H, KV, hd, C);
        if (to16 || (a->dy16 && op->rope_bwd_qkv_16)) { // rotated back as it is rounded for the products (N,C)
            if (!to16) op->rope_bwd_qkv_16(be, a->dy16, dqkv, m->rope_cos, m->rope_sin, B, T, H, KV, hd, C);
            linear_bwd_16(m, a->dln, 0, G(m, tq), a->dy16, C, prod_in(a, a->ln1[l], 0, d), tq, N, d, C);
        } else {
            op->rope_bwd(be, dqkv, m->rope_cos, m->rope_sin, B, T, H, hd, C);
            op->rope_bwd(be, dqkv + qd, m->rope_cos, m->rope_sin, B, T, KV, hd, C);
            linear_bwd(m, a->dln, 0, G(m, tq), dqkv, prod_in(a, a->ln1[l], 0, d), tq, N, d, C); // (N,C) -> (N,d)
        }
        res16 = norm_bwd(m, layer_tensor(l, T_LN1), a->res[l], a->rstd1[l]);
        grads_done(m, 1 + (c->n_layers - 1 - l));
    }
    op->embedding_bwd(be, G(m, 0), a->dres, m->tokens, N, d);
    grads_done(m, c->n_layers + 1);
}

/* ---- FLOPs ---- */

double llama_flops_per_token(const llama_config *c, int T)
{
    double d = c->d_model, qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    double n = (double)c->vocab_size * d; // head (tied or not, it is a matmul)
    for (int i = 0; i < c->n_layers; i++) n += d * (2 * qd + 2 * kvd) + 3.0 * d * c->d_ff_layer[i];
    return 6.0 * n + 12.0 * c->n_layers * qd * T;
}

void llama_layer_acts(const llama_model *m, int l, const float **ln1, const float **ln2, const float **gu)
{
    if (m->act->in16) {
        fprintf(stderr, "llama_layer_acts: the model keeps ln1 and ln2 in bf16 only (a trainable model with a bf16 "
                        "weight copy)\n");
        abort();
    }
    *ln1 = m->act->ln1[l]; // (N,d)
    *ln2 = m->act->ln2[l]; // (N,d)
    *gu = m->act->gu[l];   // (N,2*f_l): gate | up
}

float llama_distill(llama_model *m, const float *teacher_logits, float alpha, float temperature)
{
    if (!m->have_targets || m->n_valid == 0) return NAN;
    if (m->logits_chunk) {
        fprintf(stderr, "llama_distill: the model holds a chunk of its logits only (logits_chunk)\n");
        abort();
    }
    int N = m->B * m->T;
    /* with the backward's bf16 operands the dlogits are written in bf16 over the logits (as
     * head_bwd's xent_bwd_16 writes them), rounded once */
    double (*distill)(backend *, float *, const float *, const int32_t *, int, int, float, float, float) =
        m->act->dy16 ? m->be->ops->distill_16 : m->be->ops->distill;
    double sum = distill(m->be, m->logits, teacher_logits, m->targets, N, m->cfg.vocab_size, alpha, temperature,
                         m->loss_scale / (float)m->n_valid);
    m->dlogits_ready = 1;
    return (float)(sum / (double)m->n_valid);
}
