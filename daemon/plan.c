/* plan: blocks, their owners, per-rank memory and comm of a Projected Compression run
 * (see plan.h). Pure arithmetic on the two model shapes; allocations are proportional
 * to the number of tensors, blocks and ranks, never to the model's parameters. */
#include "plan.h"

#include "backend_cuda.h"

#include <stdlib.h>
#include <string.h>

#define ADAM_F32 12 /* bytes per trainable element: f32 value + Adam m + Adam v */

/* Which width a side of a tensor has: kept (not projected), d_model or d_ff. */
typedef enum { SIDE_KEEP = 0, SIDE_D, SIDE_FF } side_kind;

/* One projected tensor of the small model before it is cut into blocks. */
typedef struct tensor_desc {
    char name[PLAN_NAME_MAX], base_name[PLAN_NAME_MAX];
    int norm;                   /* 1: norm gain (1-D, trained directly) */
    int64_t d_out, d_in;        /* base shape */
    int64_t d_out_c, d_in_c;    /* compressed shape */
    int p_in, p_out;            /* projections present */
    plan_kind split;            /* PLAN_ROWS, PLAN_COLS or PLAN_WHOLE (never split) */
    int64_t granule;            /* split ranges are multiples of this */
    int pieces;                 /* blocks this tensor becomes */
} tensor_desc;

void plan_opts_default(plan_opts *o) {
    memset(o, 0, sizeof *o);
    o->micro_batch = 1;
    o->seq_len = 2048;
    o->base_dtype_bytes = 2;
    o->compute_dtype_bytes = 4;
    o->attn_tt = 1;
    o->split_bytes = 0;
}

const char *plan_kind_name(plan_kind k) {
    switch (k) {
    case PLAN_WHOLE: return "whole";
    case PLAN_ROWS: return "rows";
    case PLAN_COLS: return "cols";
    case PLAN_NORM: return "norm";
    }
    return "?";
}

/* Projection FLOPs of one step for a (d_out, d_in) -> (o, i) matrix: the formula of
 * matrix_flops in worker/project.c (materialise in the cheaper order, the W P_in / P_out W
 * products the gradients need, dP_out, dP_in; 2 FLOPs per multiply-add). Restricted to a
 * row or column slice it sums to the whole matrix's count. *grad: the gradients' part
 * (all but the materialisation), what the update recomputes for a block not kept. */
static double slice_flops(double dO, double dI, double o, double i, int pin, int pout, double *grad) {
    double m = 0, g = 0;
    if (pin && pout) {
        double a = dO * dI * i + o * dO * i, b = o * dO * dI + o * dI * i;
        m = a < b ? a : b;
        g = dO * dI * i + o * dO * dI + o * i * dO + dI * o * i;
    } else if (pin) {
        m = g = dO * dI * i; /* W P_in; dP_in = W^T G */
    } else if (pout) {
        m = g = o * dO * dI; /* P_out W; dP_out = G W^T */
    }
    *grad = 2.0 * g;
    return 2.0 * (m + g);
}

/* ---- tensor enumeration (HF order of the small model, see worker/llama.h) ---- */

static void add_matrix(tensor_desc *t, int *n, const char *name, const char *base_name, side_kind out, side_kind in,
                       int64_t rows, int64_t cols, const llama_config *b, const llama_config *s, int layer,
                       int64_t head_dim) {
    tensor_desc *d = &t[(*n)++];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->base_name, sizeof d->base_name, "%s", base_name);
    /* rows, cols: the kept sides' extents (same in base and small) */
    d->d_out = out == SIDE_D ? b->d_model : out == SIDE_FF ? b->d_ff_layer[layer] : rows;
    d->d_out_c = out == SIDE_D ? s->d_model : out == SIDE_FF ? s->d_ff_layer[layer] : rows;
    d->d_in = in == SIDE_D ? b->d_model : in == SIDE_FF ? b->d_ff_layer[layer] : cols;
    d->d_in_c = in == SIDE_D ? s->d_model : in == SIDE_FF ? s->d_ff_layer[layer] : cols;
    d->p_in = d->d_in_c < d->d_in;
    d->p_out = d->d_out_c < d->d_out;
    d->split = PLAN_WHOLE;
    d->granule = 1;
    if (out == SIDE_KEEP && in != SIDE_KEEP) { /* input-only: rows compress independently */
        d->split = PLAN_ROWS;
        d->granule = head_dim > 0 ? head_dim : 1;
    } else if (in == SIDE_KEEP && out != SIDE_KEEP) { /* output-only: columns do */
        d->split = PLAN_COLS;
        d->granule = head_dim;
    }
    d->pieces = 1;
}

static void add_norm(tensor_desc *t, int *n, const char *name, const llama_config *b, const llama_config *s) {
    tensor_desc *d = &t[(*n)++];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->base_name, sizeof d->base_name, "%s", name);
    d->norm = 1;
    d->d_out = b->d_model;
    d->d_out_c = s->d_model;
    d->d_in = d->d_in_c = 1;
    d->split = PLAN_WHOLE;
    d->granule = 1;
    d->pieces = 1;
}

static int enumerate(const llama_config *b, const llama_config *s, tensor_desc *t) {
    int n = 0;
    char nm[PLAN_NAME_MAX], pre[64];
    int64_t V = b->vocab_size, hd = b->head_dim, qd = (int64_t)b->n_heads * hd, kvd = (int64_t)b->n_kv_heads * hd;
    /* embedding E_C = E P^T + E_A: an input-side projection of [V, d] */
    add_matrix(t, &n, "model.embed_tokens.weight", "model.embed_tokens.weight", SIDE_KEEP, SIDE_D, V, 0, b, s, 0, 0);
    for (int l = 0; l < b->n_layers; l++) {
        snprintf(pre, sizeof pre, "model.layers.%d.", l);
#define NAME(suffix) (snprintf(nm, sizeof nm, "%s%s", pre, suffix), nm)
        add_norm(t, &n, NAME("input_layernorm.weight"), b, s);
        add_matrix(t, &n, NAME("self_attn.q_proj.weight"), nm, SIDE_KEEP, SIDE_D, qd, 0, b, s, l, hd);
        add_matrix(t, &n, NAME("self_attn.k_proj.weight"), nm, SIDE_KEEP, SIDE_D, kvd, 0, b, s, l, hd);
        add_matrix(t, &n, NAME("self_attn.v_proj.weight"), nm, SIDE_KEEP, SIDE_D, kvd, 0, b, s, l, hd);
        add_matrix(t, &n, NAME("self_attn.o_proj.weight"), nm, SIDE_D, SIDE_KEEP, 0, qd, b, s, l, hd);
        add_norm(t, &n, NAME("post_attention_layernorm.weight"), b, s);
        add_matrix(t, &n, NAME("mlp.gate_proj.weight"), nm, SIDE_FF, SIDE_D, 0, 0, b, s, l, 0);
        add_matrix(t, &n, NAME("mlp.up_proj.weight"), nm, SIDE_FF, SIDE_D, 0, 0, b, s, l, 0);
        add_matrix(t, &n, NAME("mlp.down_proj.weight"), nm, SIDE_D, SIDE_FF, 0, 0, b, s, l, 0);
#undef NAME
    }
    add_norm(t, &n, "model.norm.weight", b, s);
    /* the small model is untied: a tied base's head projects the same frozen embedding */
    add_matrix(t, &n, "lm_head.weight", b->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
               SIDE_KEEP, SIDE_D, V, 0, b, s, 0, 0);
    return n;
}

/* ---- sizes of a tensor or a slice of it ---- */

/* Extent of the split axis. */
static int64_t split_extent(const tensor_desc *d) {
    return d->split == PLAN_COLS ? d->d_in : d->d_out;
}

static int64_t shared_numel_of(const tensor_desc *d) {
    if (d->split == PLAN_ROWS && d->p_in) return d->d_in * d->d_in_c;    /* P_in (d_in, d_in') */
    if (d->split == PLAN_COLS && d->p_out) return d->d_out_c * d->d_out; /* P_out (d_out', d_out) */
    return 0;
}

/* Fill the size fields of block k for range [r0, r1) of tensor d. */
static void size_block(const tensor_desc *d, plan_block *k, int pieces, const plan_opts *o) {
    int64_t n = k->r1 - k->r0;
    if (d->norm) { /* gain sliced at the kept indices at init, then trained directly */
        k->kind = PLAN_NORM;
        k->base_rows = k->base_cols = 0;
        k->c_rows = d->d_out_c;
        k->c_cols = 1;
        k->own_numel = d->d_out_c;
        k->base_bytes = 0;
        k->state_bytes = ADAM_F32 * k->own_numel;
        k->work[0] = k->work[1] = k->work[3] = 0;
        k->work[2] = k->own_numel; /* the gain's gradient */
        k->flops = k->grad_flops = 0;
        return;
    }
    int64_t dO = d->d_out, dI = d->d_in, oc = d->d_out_c, ic = d->d_in_c;
    if (d->split == PLAN_ROWS) /* rows kept on the output side: slice both */
        dO = oc = n;
    else if (d->split == PLAN_COLS) /* columns kept on the input side */
        dI = ic = n;
    k->kind = pieces > 1 ? d->split : PLAN_WHOLE;
    k->base_rows = dO;
    k->base_cols = dI;
    k->c_rows = oc;
    k->c_cols = ic;
    int64_t sh = pieces > 1 ? shared_numel_of(d) : 0;
    if (sh > 0)
        snprintf(k->shared, sizeof k->shared, "%s.%s", d->name, d->split == PLAN_ROWS ? "p_in" : "p_out");
    else
        k->shared[0] = '\0';
    k->shared_numel = sh;
    int64_t pin = d->p_in ? dI * ic : 0, pout = d->p_out ? oc * dO : 0;
    /* a split block owns its A slice; its projection is the shared factor */
    k->own_numel = oc * ic + (d->split == PLAN_ROWS && sh ? 0 : pin) + (d->split == PLAN_COLS && sh ? 0 : pout);
    k->base_bytes = dO * dI * o->base_dtype_bytes;
    k->state_bytes = ADAM_F32 * k->own_numel;
    k->shared_bytes = ADAM_F32 * sh;
    /* project.c: scratch max(W P_in, P_out W) when both sides project, the fp32 copy of a
     * bf16 base slice in use, dP_in|dP_out|dA (a shared factor's part goes to its own
     * gradient: what the block owns); a bf16 slice with bf16 weights goes into the products
     * as stored, and its fp32 right-hand operand (P_in (d_in, d_in'), or with P_in only G
     * (d_out, d_in') too) is rounded into a bf16 copy instead (a slice projected on neither
     * side is still widened) */
    int bf16_base = o->base_dtype_bytes == 2, products16 = bf16_base && o->weights_bf16;
    k->work[0] = d->p_in && d->p_out ? PC_MAX(dO * ic, oc * dI) : 0;
    k->work[1] = bf16_base && !(products16 && (d->p_in || d->p_out)) ? dO * dI : 0;
    k->work[2] = k->own_numel;
    k->work[3] = products16 && d->p_in ? (ic * (d->p_out ? dI : PC_MAX(dI, dO)) + 1) / 2 : 0;
    k->flops = slice_flops((double)dO, (double)dI, (double)oc, (double)ic, d->p_in, d->p_out, &k->grad_flops);
}

/* Bytes of a tensor cut into `pieces`: per piece (own part, shared factor). */
static void piece_bytes(const tensor_desc *d, int pieces, const plan_opts *o, int64_t *own, int64_t *shared) {
    plan_block k;
    memset(&k, 0, sizeof k);
    int64_t n = split_extent(d);
    k.r0 = 0;
    k.r1 = pieces > 1 ? (n / d->granule + pieces - 1) / pieces * d->granule : n;
    if (k.r1 > n) k.r1 = n;
    size_block(d, &k, pieces, o);
    *own = k.base_bytes + k.state_bytes;
    *shared = k.shared_bytes;
}

static int64_t max_pieces(const tensor_desc *d) {
    if (d->norm || d->split == PLAN_WHOLE) return 1;
    return split_extent(d) / d->granule;
}

/* Range i of `pieces` over n elements in granules: multiples of granule, the last range
 * takes the remainder. */
static void piece_range(int64_t n, int64_t granule, int pieces, int i, int64_t *r0, int64_t *r1) {
    int64_t g = n / granule;
    *r0 = g * i / pieces * granule;
    *r1 = i == pieces - 1 ? n : g * (i + 1) / pieces * granule;
}

/* ---- assignment ---- */

static int64_t block_load(const plan_block *b) {
    return b->base_bytes + b->state_bytes + b->shared_bytes;
}

static int cmp_size(const void *x, const void *y) {
    const plan_block *a = *(const plan_block *const *)x, *b = *(const plan_block *const *)y;
    int64_t la = block_load(a), lb = block_load(b);
    if (la != lb) return la > lb ? -1 : 1;
    int c = strcmp(a->name, b->name);
    if (c) return c;
    return a->r0 < b->r0 ? -1 : a->r0 > b->r0;
}

static int cmp_name_blocks(const plan *p, int i, int j) {
    const plan_block *a = &p->blocks[i], *b = &p->blocks[j];
    int c = strcmp(a->name, b->name);
    if (c) return c;
    return a->r0 < b->r0 ? -1 : a->r0 > b->r0;
}

/* Merge sort of block indices by (name, r0): qsort has no context argument in C11. */
static void sort_by_name(const plan *p, int *idx, int *tmp, int n) {
    if (n < 2) return;
    int h = n / 2;
    sort_by_name(p, idx, tmp, h);
    sort_by_name(p, idx + h, tmp, n - h);
    int i = 0, j = h, k = 0;
    while (i < h && j < n) tmp[k++] = cmp_name_blocks(p, idx[i], idx[j]) <= 0 ? idx[i++] : idx[j++];
    while (i < h) tmp[k++] = idx[i++];
    while (j < n) tmp[k++] = idx[j++];
    memcpy(idx, tmp, sizeof(int) * (size_t)n);
}

static int cmp_int(const void *x, const void *y) {
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

/* ---- validation ---- */

static int check_shapes(const llama_config *b, const llama_config *s, int world, const plan_opts *o, pc_err *e) {
    if (world < 1) return pc_errorf(e, "plan: world size %d must be at least 1", world);
    if (!o || o->micro_batch < 1 || o->seq_len < 1)
        return pc_errorf(e, "plan: micro_batch (%d) and seq_len (%d) must be positive", o ? o->micro_batch : 0,
                         o ? o->seq_len : 0);
    if ((o->base_dtype_bytes != 2 && o->base_dtype_bytes != 4) ||
        (o->compute_dtype_bytes != 2 && o->compute_dtype_bytes != 4))
        return pc_errorf(e, "plan: dtype sizes must be 2 or 4 bytes (base %d, compute %d)", o->base_dtype_bytes,
                         o->compute_dtype_bytes);
    if (o->split_bytes < 0) return pc_errorf(e, "plan: split threshold %lld must not be negative",
                                             (long long)o->split_bytes);
    if (hf_config_validate(b, "plan: base model", e) != 0) return -1;
    if (hf_config_validate(s, "plan: compressed model", e) != 0) return -1;
    if (s->n_layers != b->n_layers || s->n_heads != b->n_heads || s->n_kv_heads != b->n_kv_heads ||
        s->head_dim != b->head_dim || s->vocab_size != b->vocab_size)
        return pc_errorf(e, "plan: the compressed model must keep num_hidden_layers, heads, head_dim and vocab_size "
                            "of the base (%d layers, %d/%d heads, head_dim %d, vocab %d)",
                         b->n_layers, b->n_heads, b->n_kv_heads, b->head_dim, b->vocab_size);
    if (s->d_model > b->d_model)
        return pc_errorf(e, "plan: compressed hidden_size %d exceeds the base's %d", s->d_model, b->d_model);
    for (int l = 0; l < b->n_layers; l++)
        if (s->d_ff_layer[l] > b->d_ff_layer[l])
            return pc_errorf(e, "plan: compressed intermediate_size of layer %d (%d) exceeds the base's %d", l,
                             s->d_ff_layer[l], b->d_ff_layer[l]);
    if (s->tie_word_embeddings) return pc_errorf(e, "plan: the compressed model must be untied");
    return 0;
}

/* ---- build ---- */

/* Floats per token of one decoder layer's activations besides its input, as
 * worker/llama.c keeps them: mid, ln1, ln2 d' each, qkv (H+2KV) hd, att H hd, lse H,
 * two rstd, gate|up 2f, h f. */
static int64_t layer_floats(const llama_config *s, int64_t f) {
    int64_t d = s->d_model, H = s->n_heads, KV = s->n_kv_heads, hd = s->head_dim;
    return 3 * d + (H + 2 * KV) * hd + H * hd + H + 2 + 3 * f;
}

static int64_t max_d_ff(const llama_config *s) {
    int64_t f = 0;
    for (int l = 0; l < s->n_layers; l++) f = PC_MAX(f, (int64_t)s->d_ff_layer[l]);
    return f;
}

/* Rows of the logits held at a time: the micro-batch's tokens, or train.logits_chunk. */
static int64_t logits_rows(const plan_opts *o) {
    int64_t N = (int64_t)o->micro_batch * o->seq_len;
    return o->logits_chunk > 0 ? PC_MIN(N, (int64_t)o->logits_chunk) : N;
}

/* Bytes of an (n, width) bf16 buffer (n width values in whole floats). */
#define IN16(n, width) (4 * (((n) * (width) + 1) / 2))

/* Whether the model keeps q, k, v in bf16 only (worker/llama.c, qkv16): attention on
 * bf16 tensor cores on cuda (attn_copies) with a head_dim they take (attn_tc_supported:
 * a multiple of 16 up to 128, and tiles within the device's shared memory a block, which
 * the daemon checks on its device and clears attn_copies for; a dry run assumes an
 * H100's). */
static int qkv16(const llama_config *s, const plan_opts *o) {
    return o->attn_copies && s->head_dim % 16 == 0 && s->head_dim <= 128;
}

/* Activation bytes of one micro-batch on one rank, mirroring what worker/llama.c keeps
 * (N = B*T tokens, all in the compute dtype):
 *   layers:           every layer's input d' and layer_floats (recompute: the inputs and
 *                     one set of layer_floats at the largest d_ff, shared by the layers)
 *   once per token:   final residual d' + lnf d' + rstdf + xent lse
 *                     + logits V (logits_rows of them: train.logits_chunk)
 *                     + backward scratch: dres d' + dln d' + datt H hd
 *                     + dqkv (H+2KV) hd + dh f'max + dgu 2 f'max
 *   attention scores: attn_tt ? the CPU backward's two (T,T) f32 matrices (P and dP, one head at a
 *   time; the forward needs one) : 0
 *   weights_bf16:     the product inputs ln1, ln2 (d' each), h (f) and lnf (d'), and
 *                     the gate|up product's output (2f), in bf16 only (a buffer of n
 *                     values holds ceil(n/2) floats), and the
 *                     backward's bf16 operands: a product's output gradient, rounded once
 *                     for its two backward products, max((H+2KV) hd, d', 2 f'max), and
 *                     the one fp32 product input, att, H hd per token, 2 bytes each; no
 *                     fp32 dgu (swiglu_bwd_16 writes it in bf16 among those operands),
 *                     and dh (f'max) in bf16
 *   qkv16:            each layer's (or with recompute the one set's) q, k, v in bf16 only,
 *                     (H+2KV) hd values per token, and one fp32 qkv shared by the layers;
 *                     with weights_bf16 also att in bf16 only, H hd values per token, and
 *                     then no bf16 operand for att (it is one). */
static int64_t activation_bytes(const llama_config *s, const plan_opts *o) {
    int64_t N = (int64_t)o->micro_batch * o->seq_len, d = s->d_model, H = s->n_heads, KV = s->n_kv_heads,
            hd = s->head_dim, V = s->vocab_size, fmax = max_d_ff(s), C = (H + 2 * KV) * hd;
    int in16 = o->weights_bf16, q16 = qkv16(s, o), att16 = q16 && in16;
    int64_t per_tok = 0, in16_bytes = 0; /* in16: ln1, ln2, h, gu, lnf leave per_tok for in16_bytes */
    int n_sets = o->recompute ? 1 : s->n_layers; /* recompute: one set, at the largest d_ff */
    for (int l = 0; l < n_sets; l++) {
        int64_t f = o->recompute ? fmax : s->d_ff_layer[l];
        per_tok += layer_floats(s, f) - (in16 ? 2 * d + 3 * f : 0) - (q16 ? C : 0) - (att16 ? H * hd : 0);
        if (in16) in16_bytes += 2 * IN16(N, d) + IN16(N, f) + IN16(N, 2 * f);
        if (q16) in16_bytes += IN16(N, C);
        if (att16) in16_bytes += IN16(N, H * hd);
    }
    per_tok += s->n_layers * d;        /* each layer's input */
    per_tok += 2 * d + 2 - (in16 ? d : 0) + (q16 ? C : 0); /* final residual, lnf, rstdf, xent lse; fp32 qkv */
    if (in16) in16_bytes += IN16(N, d);
    per_tok += 2 * d + H * hd + (H + 2 * KV) * hd + (in16 ? 0 : 3) * fmax;
    if (in16) in16_bytes += IN16(N, fmax); /* dh in bf16 */
    int64_t tt = o->attn_tt ? 2 * (int64_t)o->seq_len * o->seq_len * 4 : 0;
    int64_t ops16 = in16 ? PC_MAX(PC_MAX((H + 2 * KV) * hd, d), 2 * fmax) + (att16 ? 0 : H * hd) : 0;
    return (N * per_tok + logits_rows(o) * V) * o->compute_dtype_bytes + tt + 2 * N * ops16 + in16_bytes;
}

/* A distillation teacher held in bf16 (a bf16 base, model.dtype bf16): its matrices in
 * bf16 only, its products from bf16 operands. */
static int bf16_teacher(const plan_opts *o) { return o->teacher && o->base_dtype_bytes == 2; }

/* The widest input of a model's products: max(d, H hd, f). */
static int64_t widest_input(const llama_config *c) {
    return PC_MAX(max_d_ff(c), PC_MAX((int64_t)c->n_heads * c->head_dim, (int64_t)c->d_model));
}

/* The largest decoder-layer matrix as the model multiplies it: q|k|v ((H + 2 KV) hd, d) or
 * gate|up (2 f, d) (o_proj and down_proj are no larger). */
static int64_t widest_layer_matrix(const llama_config *c) {
    return (int64_t)c->d_model * PC_MAX((int64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim, 2 * max_d_ff(c));
}

/* The two bf16 operand copies of the CUDA backend's bf16 products (backend_cuda.h), each
 * as large as the largest operand rounded into it over the run (they only grow), up to
 * gemm_bf16_block elements:
 *   the trained model (weights_bf16): only the attention output (N, H hd) (the other
 *     product inputs are stored in bf16, the output gradients rounded by the model, the
 *     dlogits written in bf16);
 *   the projections: at most a base slice (none in prune);
 *   a teacher with bf16 products: its inputs, N rows of at most max(f, H hd, d), and when
 *     it is held in fp32 (an fp32 base) its matrices too, up to the head (V, d);
 *   activation importance with bf16 products: the base layer run in fp32 (stream.h), its
 *     inputs and its matrices. */
static int64_t gemm_bf16_bytes(const plan *p, const plan_opts *o) {
    if (o->gemm_bf16_block <= 0) return 0;
    const llama_config *s = &p->small, *b = &p->base;
    int64_t N = (int64_t)o->micro_batch * o->seq_len;
    int64_t largest = o->weights_bf16 ? N * s->n_heads * s->head_dim : 0;
    if (bf16_teacher(o) || (o->teacher && o->weights_bf16)) largest = PC_MAX(largest, N * widest_input(b));
    if (o->teacher && o->weights_bf16 && !bf16_teacher(o))
        largest = PC_MAX(largest, PC_MAX((int64_t)b->vocab_size * b->d_model, widest_layer_matrix(b)));
    if (o->importance_act && o->weights_bf16)
        largest = PC_MAX(largest, PC_MAX(N * widest_input(b), widest_layer_matrix(b)));
    for (int i = 0; i < p->n_blocks && !o->prune; i++)
        largest = PC_MAX(largest, p->blocks[i].base_rows * p->blocks[i].base_cols);
    return 2 * 2 * PC_MIN(largest, o->gemm_bf16_block);
}

/* Attention on bf16 tensor cores (attention_tc.h): the backward's bf16 copy of one
 * micro-batch's dO, N H hd values, where the products are not bf16 (with bf16 products
 * dO arrives in bf16: attention_bwd_rope_16); the models keep q, k, v in bf16 themselves
 * (qkv16); a teacher and the streamed base share the trained model's heads and make none. */
static int64_t attn_copies_bytes(const plan *p, const plan_opts *o) {
    const llama_config *s = &p->small;
    if (!qkv16(s, o)) return 0;
    int64_t N = (int64_t)o->micro_batch * o->seq_len, q = N * s->n_heads * s->head_dim;
    if (!o->attn_cudnn) return o->weights_bf16 ? 0 : q * 2;
    /* cuDNN (backend_cuda.cu, attention_cudnn.c): the fp32 dQ accumulator and row sums, and
     * where the products are not bf16 dO's and the output's copies and the bf16 dq | dk |
     * dv before they are widened (with bf16 products dO arrives in bf16 and they go
     * straight into the qkv product's bf16 output gradient: attention_bwd_rope_16); its
     * engines' own workspace is not counted (a few MB) */
    int64_t qkv = N * (s->n_heads + 2 * s->n_kv_heads) * s->head_dim;
    return (o->weights_bf16 ? 0 : q * 2 + q * 2 + qkv * 2) + q * 4 + N * s->n_heads * 4;
}

/* The teacher's weights: fp32, or (bf16_teacher) its matrices in bf16 only and its norm
 * gains in fp32 (LLAMA_BF16_ONLY). */
static int64_t teacher_weight_bytes(const llama_config *b, const plan_opts *o) {
    if (!bf16_teacher(o)) return hf_config_n_params(b) * 4;
    return hf_config_n_params(b) * 2 + hf_config_n_norm_params(b) * 4;
}

/* The forward-only teacher (llama_init_forward_only): one set of layer buffers shared by
 * every layer (its input included), lnf, rstdf, xent lse and logits; no backward scratch. */
static int64_t teacher_activation_bytes(const llama_config *b, const plan_opts *o) {
    int64_t N = (int64_t)o->micro_batch * o->seq_len, d = b->d_model;
    int64_t per_tok = d + layer_floats(b, max_d_ff(b)) + d + 2 + b->vocab_size;
    int64_t tt = o->attn_tt ? (int64_t)o->seq_len * o->seq_len * 4 : 0;
    int64_t q16 = qkv16(b, o) ? IN16(N, (int64_t)(b->n_heads + 2 * b->n_kv_heads) * b->head_dim) : 0;
    return N * per_tok * 4 + tt + q16;
}

/* ---- run.mode prune ---- */

/* Prune trains the small model directly on every rank (METHOD_DIRECT, train.c): its fp32
 * weights and gradient G, AdamW's m and v, and with bf16 products the weights' bf16 copy
 * (LLAMA_BF16_WEIGHTS); the base is only read while its slices are copied into the model,
 * and nothing is projected, exchanged or kept between passes. The ranks' activations,
 * scratch and teacher are the compress plan's (the same small model); G is all-reduced
 * whole each step. send[r]: each rank's ring estimate, replaced. */
static void prune_ranks(plan *p, double *send) {
    const plan_opts *o = &p->opts;
    const int64_t n = p->small_numel;
    double ring = p->world > 1 ? (double)(p->world - 1) / p->world : 0.0;
    p->total_base_bytes = p->total_state_bytes = p->total_shared_bytes = 0;
    p->total_flops = 0;
    p->comm = (plan_comm){.allreduce_bytes = 4 * n};
    for (int r = 0; r < p->world; r++) {
        plan_rank *rk = &p->ranks[r];
        /* the compress plan's work buffers and shared-factor gradients leave the scratch */
        int64_t scratch = p->gemm_bf16_bytes + p->attn_copies_bytes, act = rk->act_bytes;
        memset(rk, 0, sizeof *rk);
        rk->state_bytes = 2 * 4 * n;
        rk->replica_bytes = (4 + 4 + (o->weights_bf16 ? 2 : 0)) * n;
        rk->scratch_bytes = scratch;
        rk->act_bytes = act;
        rk->total_bytes = rk->state_bytes + rk->replica_bytes + rk->scratch_bytes + rk->act_bytes + p->teacher_bytes;
        send[r] = 2.0 * ring * (double)p->comm.allreduce_bytes;
    }
    for (int i = 0; i < p->n_blocks; i++) p->blocks[i].owner = -1; /* held by no rank */
    p->n_shared = 0;
}

/* ---- gradients kept between the two passes of the update ---- */

/* The order compress.store_grads auto keeps a rank's blocks in: gradient FLOPs per kept
 * element, most first (fa / na against fb / nb, cross-multiplied); ties in block order. */
static int cmp_keep(const void *x, const void *y) {
    const plan_block *a = *(const plan_block *const *)x, *b = *(const plan_block *const *)y;
    double fa = a->grad_flops * (double)b->own_numel, fb = b->grad_flops * (double)a->own_numel;
    return fa > fb ? -1 : fa < fb ? 1 : a < b ? -1 : a > b;
}

/* Mark plan_block.kept per opts.store_grads (auto: each block, in cmp_keep's order, that
 * still fits in the capacity less a sixteenth and the rank's total) and add the kept
 * gradients to each rank's grads_bytes and total; recompute_flops sums what the others
 * cost again in the update. */
static void plan_keep_grads(plan *p) {
    const plan_opts *o = &p->opts;
    plan_block **mine = pc_calloc((size_t)(p->n_blocks > 0 ? p->n_blocks : 1), sizeof *mine);
    for (int r = 0; r < p->world; r++) {
        plan_rank *rk = &p->ranks[r];
        int n = 0;
        for (int i = 0; i < p->n_blocks; i++)
            if (p->blocks[i].owner == r) mine[n++] = &p->blocks[i];
        if (o->store_grads == PC_GRADS_KEEP) {
            for (int i = 0; i < n; i++) mine[i]->kept = 1;
        } else if (o->store_grads == PC_GRADS_AUTO && o->capacity > 0) {
            int64_t room = o->capacity - o->capacity / 16 - rk->total_bytes;
            qsort(mine, (size_t)n, sizeof *mine, cmp_keep);
            for (int i = 0; i < n; i++) {
                int64_t need = 4 * mine[i]->own_numel;
                if (mine[i]->grad_flops <= 0 || need > room) continue; /* a norm's gradient is G itself */
                mine[i]->kept = 1;
                room -= need;
            }
        }
        for (int i = 0; i < n; i++) {
            if (mine[i]->kept) {
                rk->n_kept++;
                rk->grads_bytes += 4 * mine[i]->own_numel;
            } else {
                rk->recompute_flops += mine[i]->grad_flops;
            }
        }
        rk->total_bytes += rk->grads_bytes;
    }
    free(mine);
}

int plan_build(plan *p, const llama_config *base, const llama_config *small, int world, const plan_opts *o,
               pc_err *e) {
    memset(p, 0, sizeof *p);
    if (check_shapes(base, small, world, o, e) != 0) return -1;
    p->base = *base;
    p->small = *small;
    p->world = world;
    p->opts = *o;

    int cap = 3 + 9 * base->n_layers;
    tensor_desc *t = pc_calloc((size_t)cap, sizeof *t);
    int nt = enumerate(base, small, t);
    p->n_tensors = nt;

    /* whole-tensor sizes decide the split threshold */
    int64_t total = 0;
    for (int i = 0; i < nt; i++) {
        int64_t own, sh;
        piece_bytes(&t[i], 1, o, &own, &sh);
        total += own + sh;
    }
    /* default threshold: half a rank's mean share, but never below the largest block that
     * cannot be split (cutting below it cannot lower the largest rank load, and every
     * extra piece replicates a shared factor) */
    int64_t max_whole = 0;
    for (int i = 0; i < nt; i++) {
        if (max_pieces(&t[i]) > 1) continue;
        int64_t own, sh;
        piece_bytes(&t[i], 1, o, &own, &sh);
        max_whole = PC_MAX(max_whole, own + sh);
    }
    p->split_bytes = o->split_bytes > 0 ? o->split_bytes : PC_MAX(total / world / 2, max_whole);
    int n_blocks = 0;
    for (int i = 0; i < nt; i++) {
        int64_t own, sh, ths = p->split_bytes;
        piece_bytes(&t[i], 1, o, &own, &sh);
        if (world > 1 && max_pieces(&t[i]) > 1 && own + sh > ths && ths > 0) {
            /* pieces of (own / k + replicated factor) <= threshold where the factor fits */
            int64_t sf = shared_numel_of(&t[i]) * ADAM_F32;
            int64_t k = sf < ths ? (own + (ths - sf) - 1) / (ths - sf) : (own + sh + ths - 1) / ths;
            t[i].pieces = (int)PC_MAX(1, PC_MIN(k, PC_MIN(max_pieces(&t[i]), (int64_t)world)));
        }
        n_blocks += t[i].pieces;
    }
    /* fewer blocks than ranks: cut the largest splittable pieces further, while a piece's
     * own bytes stay at least its replicated shared factor's (so replication at most
     * doubles what a piece costs) */
    while (n_blocks < world) {
        int best = -1;
        int64_t best_own = 0;
        for (int i = 0; i < nt; i++) {
            if (t[i].pieces >= max_pieces(&t[i])) continue;
            int64_t own, sh, own_next, sh_next;
            piece_bytes(&t[i], t[i].pieces, o, &own, &sh);
            piece_bytes(&t[i], t[i].pieces + 1, o, &own_next, &sh_next);
            if (own_next < sh_next) continue;
            if (own > best_own) best_own = own, best = i;
        }
        if (best < 0) break;
        t[best].pieces++;
        n_blocks++;
    }

    p->n_blocks = n_blocks;
    p->blocks = pc_calloc((size_t)n_blocks, sizeof *p->blocks);
    int bi = 0;
    for (int i = 0; i < nt; i++) {
        if (t[i].pieces > 1) p->n_split++;
        for (int j = 0; j < t[i].pieces; j++) {
            plan_block *k = &p->blocks[bi++];
            snprintf(k->name, sizeof k->name, "%s", t[i].name);
            snprintf(k->base_name, sizeof k->base_name, "%s", t[i].base_name);
            k->matrix = i;
            if (t[i].norm) {
                k->r0 = 0;
                k->r1 = t[i].d_out_c;
            } else {
                piece_range(split_extent(&t[i]), t[i].granule, t[i].pieces, j, &k->r0, &k->r1);
            }
            size_block(&t[i], k, t[i].pieces, o);
            k->owner = -1;
            p->total_base_bytes += k->base_bytes;
            p->total_state_bytes += k->state_bytes;
            p->total_flops += k->flops;
        }
    }

    /* greedy: largest first, to the least-loaded rank (bytes, then FLOPs, then id) */
    p->ranks = pc_calloc((size_t)world, sizeof *p->ranks);
    plan_block **order = pc_calloc((size_t)n_blocks, sizeof *order);
    int64_t(*work)[PLAN_WORK_BUFS] = pc_calloc((size_t)world, sizeof *work); /* per rank: the largest of each */
    for (int i = 0; i < n_blocks; i++) order[i] = &p->blocks[i];
    qsort(order, (size_t)n_blocks, sizeof *order, cmp_size);
    for (int i = 0; i < n_blocks; i++) {
        int best = 0;
        for (int r = 1; r < world; r++) {
            const plan_rank *a = &p->ranks[r], *b = &p->ranks[best];
            if (a->load_bytes < b->load_bytes || (a->load_bytes == b->load_bytes && a->flops < b->flops)) best = r;
        }
        plan_block *k = order[i];
        k->owner = best;
        plan_rank *rk = &p->ranks[best];
        rk->load_bytes += block_load(k);
        rk->flops += k->flops;
        rk->n_blocks++;
        rk->base_bytes += k->base_bytes;
        rk->state_bytes += k->state_bytes;
        for (int w = 0; w < PLAN_WORK_BUFS; w++) work[best][w] = PC_MAX(work[best][w], k->work[w]);
    }
    free(order);

    /* shared factors: one replica per distinct owner rank */
    int *owners = pc_calloc((size_t)(n_blocks > 0 ? n_blocks : 1), sizeof *owners);
    p->shared = pc_calloc((size_t)(p->n_split > 0 ? p->n_split : 1), sizeof *p->shared);
    for (int i = 0; i < n_blocks;) {
        int j = i;
        while (j < n_blocks && p->blocks[j].matrix == p->blocks[i].matrix) j++;
        if (p->blocks[i].shared[0]) {
            plan_shared *sf = &p->shared[p->n_shared++];
            snprintf(sf->name, sizeof sf->name, "%s", p->blocks[i].shared);
            sf->numel = p->blocks[i].shared_numel;
            sf->n_blocks = j - i;
            for (int k = i; k < j; k++) owners[k - i] = p->blocks[k].owner;
            qsort(owners, (size_t)(j - i), sizeof *owners, cmp_int);
            for (int k = 0; k < j - i; k++) {
                if (k > 0 && owners[k] == owners[k - 1]) continue;
                sf->n_ranks++;
                p->ranks[owners[k]].shared_bytes += ADAM_F32 * sf->numel;
                p->total_shared_bytes += ADAM_F32 * sf->numel;
            }
        }
        i = j;
    }

    /* every rank's scratch: its work buffers and the gradients of every shared factor
     * (project.c sums each over all ranks) */
    int64_t shared_grads = 0;
    for (int s = 0; s < p->n_shared; s++) shared_grads += p->shared[s].numel;
    for (int r = 0; r < world; r++) {
        int64_t words = shared_grads;
        for (int w = 0; w < PLAN_WORK_BUFS; w++) words += work[r][w];
        p->ranks[r].scratch_bytes = 4 * words;
    }
    free(work);

    /* the exchange buffer (project.c): W_C and G go between ranks straight from the
     * replica, except column blocks, whose rows are strided there: every rank packs them
     * all */
    int64_t xchg = 0;
    for (int i = 0; i < n_blocks && world > 1; i++)
        if (p->blocks[i].kind == PLAN_COLS) xchg += (o->weights_bf16 ? 6 : 4) * p->blocks[i].c_rows * p->blocks[i].c_cols;

    /* replica, activations, totals, comm */
    p->small_numel = hf_config_n_params(small);
    /* the replica: W_C (compute dtype) and G (f32); with bf16 weights W_C is its bf16 copy
     * and only the norm gains are also held in fp32 (LLAMA_BF16_ONLY); with shard_grads G
     * is two windows of the largest stage, and each rank adds the sums of its own blocks */
    int64_t wc_numel = o->weights_bf16 ? hf_config_n_norm_params(small) : p->small_numel;
    p->gwin_bytes = o->shard_grads ? 4 * hf_config_max_stage_params(small) : 0;
    int64_t replica = wc_numel * o->compute_dtype_bytes + p->small_numel * (o->weights_bf16 ? 2 : 0) +
                      (o->shard_grads ? 2 * p->gwin_bytes : 4 * p->small_numel);
    for (int i = 0; i < n_blocks && o->shard_grads; i++)
        p->ranks[p->blocks[i].owner].gsum_bytes += 4 * p->blocks[i].c_rows * p->blocks[i].c_cols;
    int backwards = p->backwards = o->global_batch > 0 ? PC_MAX(1, o->global_batch / (world * o->micro_batch)) : 1;
    int64_t act = activation_bytes(small, o), gemm16 = p->gemm_bf16_bytes = gemm_bf16_bytes(p, o);
    int64_t att16 = p->attn_copies_bytes = attn_copies_bytes(p, o);
    p->teacher_bytes = o->teacher ? teacher_weight_bytes(base, o) + teacher_activation_bytes(base, o) : 0;
    p->comm.gather_bytes = p->small_numel * (o->weights_bf16 ? 2 : o->compute_dtype_bytes);
    p->comm.reduce_bytes = p->small_numel * o->compute_dtype_bytes * (o->shard_grads ? backwards : 1);
    double ring = world > 1 ? (double)(world - 1) / world : 0.0;
    double *send = pc_calloc((size_t)world, sizeof *send);
    for (int r = 0; r < world; r++) {
        plan_rank *rk = &p->ranks[r];
        rk->replica_bytes = replica + rk->gsum_bytes;
        rk->act_bytes = act;
        rk->xchg_bytes = xchg;
        rk->scratch_bytes += gemm16 + att16;
        rk->total_bytes = rk->base_bytes + rk->state_bytes + rk->shared_bytes + rk->replica_bytes + rk->xchg_bytes +
                          rk->scratch_bytes + rk->act_bytes + p->teacher_bytes;
        send[r] = ring * (double)(p->comm.gather_bytes + p->comm.reduce_bytes);
    }
    for (int s = 0; s < p->n_shared; s++) {
        const plan_shared *sf = &p->shared[s];
        if (sf->n_ranks < 2) continue;
        p->comm.n_shared_allreduce++;
        p->comm.shared_bytes += sf->numel * 4;
    }
    /* ring all-reduce: each participant sends 2 (k-1)/k of the payload */
    for (int i = 0; i < n_blocks;) {
        int j = i;
        while (j < n_blocks && p->blocks[j].matrix == p->blocks[i].matrix) j++;
        const plan_block *b0 = &p->blocks[i];
        if (b0->shared[0]) {
            int nr = 0;
            for (int k = i; k < j; k++) owners[k - i] = p->blocks[k].owner;
            qsort(owners, (size_t)(j - i), sizeof *owners, cmp_int);
            for (int k = 0; k < j - i; k++)
                if (k == 0 || owners[k] != owners[k - 1]) owners[nr++] = owners[k];
            if (nr > 1)
                for (int k = 0; k < nr; k++) send[owners[k]] += 2.0 * (nr - 1) / nr * (double)(b0->shared_numel * 4);
        }
        i = j;
    }
    if (o->prune) prune_ranks(p, send);
    plan_keep_grads(p);
    double mx = 0;
    for (int r = 0; r < world; r++) mx = send[r] > mx ? send[r] : mx;
    p->comm.per_rank_bytes = (int64_t)mx;
    free(send);
    free(owners);

    p->by_name = pc_calloc((size_t)(n_blocks > 0 ? n_blocks : 1), sizeof *p->by_name);
    int *tmp = pc_calloc((size_t)(n_blocks > 0 ? n_blocks : 1), sizeof *tmp);
    for (int i = 0; i < n_blocks; i++) p->by_name[i] = i;
    sort_by_name(p, p->by_name, tmp, n_blocks);
    free(tmp);
    free(t);
    return 0;
}

void plan_free(plan *p) {
    free(p->blocks);
    free(p->shared);
    free(p->ranks);
    free(p->by_name);
    memset(p, 0, sizeof *p);
}

int plan_block_count(const plan *p) {
    return p->n_blocks;
}

const plan_block *plan_block_at(const plan *p, int i) {
    return i >= 0 && i < p->n_blocks ? &p->blocks[i] : NULL;
}

int plan_block_of(const plan *p, const char *tensor, int64_t row_or_col) {
    /* first block of `tensor` in by_name order, then its ranges */
    int lo = 0, hi = p->n_blocks;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (strcmp(p->blocks[p->by_name[mid]].name, tensor) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (int i = lo; i < p->n_blocks; i++) {
        const plan_block *b = &p->blocks[p->by_name[i]];
        if (strcmp(b->name, tensor) != 0) break;
        if (b->kind == PLAN_WHOLE || b->kind == PLAN_NORM) return p->by_name[i];
        if (row_or_col >= b->r0 && row_or_col < b->r1) return p->by_name[i];
    }
    return -1;
}

int plan_owner_of(const plan *p, const char *tensor, int64_t row_or_col) {
    int i = plan_block_of(p, tensor, row_or_col);
    return i < 0 ? -1 : p->blocks[i].owner;
}

double plan_balance(const plan *p) {
    if (p->world < 1) return 0;
    int64_t mx = 0, sum = 0;
    for (int r = 0; r < p->world; r++) {
        mx = PC_MAX(mx, p->ranks[r].load_bytes);
        sum += p->ranks[r].load_bytes;
    }
    return sum > 0 ? (double)mx * p->world / (double)sum : 0;
}

/* ---- output ---- */

#define GIB(x) ((double)(x) / 1073741824.0)
#define MIB(x) ((double)(x) / 1048576.0)

static void write_shape(FILE *f, const char *what, const llama_config *c) {
    int uniform = 1;
    for (int l = 1; l < c->n_layers; l++) uniform &= c->d_ff_layer[l] == c->d_ff_layer[0];
    fprintf(f, "# %-6s d_model %d  d_ff %d%s  layers %d  heads %d/%d  head_dim %d  vocab %d  tied %s  params %lld\n",
            what, c->d_model, c->d_ff, uniform ? "" : " (max, per layer)", c->n_layers, c->n_heads, c->n_kv_heads,
            c->head_dim, c->vocab_size, c->tie_word_embeddings ? "yes" : "no", (long long)hf_config_n_params(c));
}

/* The per-rank memory table (GiB) and its max and mean. */
static void write_ranks(const plan *p, FILE *f) {
    fprintf(f, "#\n# %-6s %6s %9s %9s %9s %9s %9s %9s %9s %9s %9s %11s\n", "rank", "blocks", "base", "state",
            "shared", "replica", "xchg", "scratch", "act", "grads", "total", "GFLOP");
    int64_t mx = 0, sum = 0;
    for (int r = 0; r < p->world; r++) {
        const plan_rank *rk = &p->ranks[r];
        fprintf(f, "  %-6d %6d %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %11.3f\n", r, rk->n_blocks,
                GIB(rk->base_bytes), GIB(rk->state_bytes), GIB(rk->shared_bytes), GIB(rk->replica_bytes),
                GIB(rk->xchg_bytes), GIB(rk->scratch_bytes), GIB(rk->act_bytes), GIB(rk->grads_bytes),
                GIB(rk->total_bytes), rk->flops / 1e9);
        mx = PC_MAX(mx, rk->total_bytes);
        sum += rk->total_bytes;
    }
    fprintf(f, "# memory GiB per rank: max %.3f  mean %.3f\n", GIB(mx), GIB(sum) / p->world);
}

/* The distillation teacher's line, when there is one. */
static void write_teacher(const plan *p, FILE *f) {
    if (p->teacher_bytes > 0)
        fprintf(f, "# distill teacher %.3f GiB per rank (%s base + forward activations; in each rank's total)\n",
                GIB(p->teacher_bytes), bf16_teacher(&p->opts) ? "bf16" : "fp32");
}

/* The rest of a prune plan, after the shapes and options: no blocks, no shared factors
 * (prune_ranks). */
static int write_prune(const plan *p, FILE *f) {
    fprintf(f, "# prune: every rank trains the whole small model, %lld parameters (fp32 weights and G in replica, "
               "AdamW m and v in state%s); the base is read only to slice it\n",
            (long long)p->small_numel, p->opts.weights_bf16 ? ", the weights' bf16 copy in replica" : "");
    write_teacher(p, f);
    write_ranks(p, f);
    fprintf(f, "# comm per step: all-reduce G %.3f GiB ; per-rank ring send ~ %.3f GiB\n",
            GIB(p->comm.allreduce_bytes), GIB(p->comm.per_rank_bytes));
    return ferror(f) ? -1 : 0;
}

static const char *store_name(const plan_opts *o) {
    return o->store_grads == PC_GRADS_KEEP ? "true" : o->store_grads == PC_GRADS_AUTO ? "auto" : "false";
}

int plan_idle_ranks(const plan *p, double *busiest_flops) {
    int idle = 0;
    double mx = 0;
    for (int r = 0; r < p->world; r++) {
        idle += p->ranks[r].load_bytes == 0;
        mx = PC_MAX(mx, p->ranks[r].flops);
    }
    if (busiest_flops) *busiest_flops = mx;
    return idle;
}

int plan_write(const plan *p, FILE *f) {
    const plan_opts *o = &p->opts;
    fprintf(f, "# projcompd sharding plan v1\n");
    write_shape(f, "base", &p->base);
    write_shape(f, "small", &p->small);
    fprintf(f,
            "# world %d  micro_batch %d  seq_len %d  base_dtype %dB  compute_dtype %dB  attn_tt %d  recompute %d  "
            "logits_chunk %d  weights_bf16 %d  split_above %.3f GiB\n",
            p->world, o->micro_batch, o->seq_len, o->base_dtype_bytes, o->compute_dtype_bytes, o->attn_tt,
            o->recompute, o->logits_chunk, o->weights_bf16, GIB(p->split_bytes));
    if (o->prune) return write_prune(p, f);
    fprintf(f,
            "# blocks %d  split_matrices %d  base %.3f GiB  state %.3f GiB  shared_replicas %.3f GiB  "
            "projection %.3f TFLOP/step  balance %.3f\n",
            p->n_blocks, p->n_split, GIB(p->total_base_bytes), GIB(p->total_state_bytes), GIB(p->total_shared_bytes),
            p->total_flops / 1e12, plan_balance(p));
    double busiest;
    int idle = plan_idle_ranks(p, &busiest);
    if (idle > 0)
        fprintf(f, "# %d of %d ranks own no block (there are %d): the projection work, %.3f TFLOP/step on the "
                   "busiest rank, no longer shrinks with more ranks (a matrix projected on both sides is never cut); "
                   "the model's forward and backward still do\n",
                idle, p->world, p->n_blocks, busiest / 1e12);
    if (o->shard_grads)
        fprintf(f, "# G sharded: two stage windows of %.3f GiB in each replica, the owned blocks' sums in each rank's; "
                   "reduced after each of %d backwards per step\n",
                GIB(p->gwin_bytes), p->backwards);
    fprintf(f, "# gradients kept between the norm pass and the update: compress.store_grads %s", store_name(o));
    if (o->store_grads == PC_GRADS_AUTO)
        fprintf(f, o->capacity > 0 ? " within %.3f GiB less a sixteenth" : " (no memory size known: none)",
                GIB(o->capacity));
    double recompute = 0;
    for (int r = 0; r < p->world; r++) recompute += p->ranks[r].recompute_flops;
    fprintf(f, "; recomputed %.3f GFLOP/step\n", recompute / 1e9);
    write_teacher(p, f);
    fprintf(f, "#\n# %-54s %-5s %-15s %6s %11s %11s %5s\n", "block", "kind", "range", "owner", "MiB", "GFLOP", "kept");
    for (int i = 0; i < p->n_blocks; i++) {
        const plan_block *b = &p->blocks[i];
        char range[48];
        snprintf(range, sizeof range, "%lld:%lld", (long long)b->r0, (long long)b->r1);
        fprintf(f, "  %-54s %-5s %-15s %6d %11.2f %11.3f %5s\n", b->name, plan_kind_name(b->kind), range, b->owner,
                MIB(block_load(b)), b->flops / 1e9, b->kept ? "yes" : "no");
    }
    write_ranks(p, f);
    fprintf(f, "#\n# shared factors %d (gradients all-reduced among their holders)\n", p->n_shared);
    for (int s = 0; s < p->n_shared; s++)
        fprintf(f, "  shared %-60s %11.2f MiB  blocks %d  ranks %d\n", p->shared[s].name,
                MIB(ADAM_F32 * p->shared[s].numel), p->shared[s].n_blocks, p->shared[s].n_ranks);
    fprintf(f,
            "# comm per step: all-gather W_C %.3f GiB + reduce G %.3f GiB + shared-factor all-reduce %.3f GiB (%d) ; "
            "per-rank ring send ~ %.3f GiB\n",
            GIB(p->comm.gather_bytes), GIB(p->comm.reduce_bytes), GIB(p->comm.shared_bytes),
            p->comm.n_shared_allreduce, GIB(p->comm.per_rank_bytes));
    return ferror(f) ? -1 : 0;
}

int plan_check_fit(const plan *p, int rank, int64_t capacity, const char *device, pc_err *e) {
    const plan_rank *rk = &p->ranks[rank];
    if (rk->total_bytes <= capacity) return 0;
    const plan_opts *o = &p->opts;
    char fix[320] = "";
    size_t n = 0;
    if (!o->recompute) n += (size_t)snprintf(fix + n, sizeof fix - n, "train.activation_checkpointing: true, ");
    if (o->micro_batch > 1) n += (size_t)snprintf(fix + n, sizeof fix - n, "a smaller train.micro_batch, ");
    if (!o->teacher && logits_rows(o) > o->seq_len)
        n += (size_t)snprintf(fix + n, sizeof fix - n, "train.logits_chunk: %d, ", o->seq_len);
    if (o->base_dtype_bytes > 2 && (!o->prune || o->teacher)) /* prune holds no base, only a teacher */
        n += (size_t)snprintf(fix + n, sizeof fix - n, "model.dtype: bf16%s, ",
                              o->prune ? " (the teacher)" : o->teacher ? " (the teacher too)" : "");
    if (!o->weights_bf16 && !o->prune) n += (size_t)snprintf(fix + n, sizeof fix - n, "backend.matmul: bf16, ");
    if (!o->shard_grads && !o->prune) n += (size_t)snprintf(fix + n, sizeof fix - n, "compress.shard_grads: true, ");
    if (o->store_grads == PC_GRADS_KEEP && rk->grads_bytes > 0)
        n += (size_t)snprintf(fix + n, sizeof fix - n, "compress.store_grads: auto, ");
    /* prune holds the whole model on every rank: more ranks do not shrink it */
    snprintf(fix + n, sizeof fix - n, o->prune ? "a device with more memory" : "more ranks");
    char extra[128] = "";
    size_t m = 0;
    if (rk->grads_bytes > 0)
        m += (size_t)snprintf(extra + m, sizeof extra - m, ", kept gradients %.1f", GIB(rk->grads_bytes));
    if (p->teacher_bytes > 0)
        snprintf(extra + m, sizeof extra - m, ", distillation teacher %.1f", GIB(p->teacher_bytes));
    if (o->prune)
        return pc_errorf(e,
                         "rank %d: prune's plan needs %.1f GiB here (activations %.1f, the model's weights + G %.1f, "
                         "AdamW state %.1f%s) but %s has %.1f GiB; try %s (`projcompd --cfg JOB --dry-run` prints "
                         "the plan)",
                         rank, GIB(rk->total_bytes), GIB(rk->act_bytes), GIB(rk->replica_bytes),
                         GIB(rk->state_bytes), extra, device, GIB(capacity), fix);
    return pc_errorf(e,
                     "rank %d: the plan needs %.1f GiB here (activations %.1f, W_C replica + G %.1f, trainable "
                     "state %.1f, base slices %.1f%s) but %s has %.1f GiB; try %s (`projcompd --cfg JOB --dry-run "
                     "-np N` prints the plan)",
                     rank, GIB(rk->total_bytes), GIB(rk->act_bytes), GIB(rk->replica_bytes),
                     GIB(rk->state_bytes + rk->shared_bytes), GIB(rk->base_bytes), extra, device, GIB(capacity),
                     fix);
}

/* ---- from a job config ---- */

int plan_small_config(const pc_config *c, const llama_config *base, llama_config *small, pc_err *e) {
    if (config_check_model(c, base->d_model, base->d_ff_layer, base->n_layers, e) != 0) return -1;
    *small = *base;
    if (c->compress.d_model > 0) small->d_model = c->compress.d_model;
    small->d_ff = 0;
    for (int l = 0; l < base->n_layers; l++) {
        int f = config_d_ff(c, l);
        small->d_ff_layer[l] = f > 0 ? f : base->d_ff_layer[l];
        small->d_ff = PC_MAX(small->d_ff, small->d_ff_layer[l]);
    }
    small->tie_word_embeddings = 0;
    return 0;
}

void plan_opts_set_device(plan_opts *o, int cuda) {
    o->attn_tt = !cuda; /* the CUDA attention never holds a (T,T) matrix */
    o->attn_copies = cuda && o->attn_bf16;
    o->gemm_bf16_block = cuda && (o->weights_bf16 || bf16_teacher(o)) ? (int64_t)BACKEND_CUDA_BF16_BLOCK : 0;
}

void plan_opts_from_config(const pc_config *c, plan_opts *o) {
    plan_opts_default(o);
    o->micro_batch = c->train.micro_batch > 0 ? c->train.micro_batch : 1;
    o->seq_len = c->data.seq_len > 0 ? c->data.seq_len : 1;
    o->compute_dtype_bytes = 4; /* every backend computes in fp32 */
    o->base_dtype_bytes = !strcmp(c->model.dtype, "bf16") ? 2 : 4;
    o->teacher = c->distill.enabled;
    o->importance_act = !strcmp(c->compress.importance, "activation");
    o->recompute = c->train.activation_checkpointing;
    o->logits_chunk = c->train.logits_chunk;
    o->weights_bf16 = !strcmp(c->backend.matmul, "bf16");
    o->attn_bf16 = config_attention_bf16(c);
    o->attn_cudnn = config_attention_may_cudnn(c); /* auto's scratch counted as if it took cuDNN */
    o->shard_grads = c->compress.shard_grads && !strcmp(c->run.mode, "compress"); /* prune ignores it */
    o->global_batch = c->train.global_batch;
    plan_opts_set_device(o, !strcmp(c->backend.device, "cuda"));
    if (c->compress.split_mb > 0) o->split_bytes = (int64_t)(c->compress.split_mb * 1e6);
    o->store_grads = !strcmp(c->run.mode, "compress") ? config_store_grads(c) : PC_GRADS_RECOMPUTE; /* prune's
                                                                                                   * own AdamW */
    o->prune = !strcmp(c->run.mode, "prune");
    o->capacity = (int64_t)(c->backend.memory_gib * 1073741824.0);
}

/* How a mode without a plan (pretrain, importance, eval) holds the model. */
static const char *no_plan_why(const pc_config *c) {
    if (!strcmp(c->run.mode, "pretrain")) return "every rank holds the whole model";
    if (!strcmp(c->run.mode, "importance")) return "it reads the base a layer (activation) or a tensor (magnitude) at a time";
    if (c->eval.stream_layers) return "eval.stream_layers reads the base a layer at a time";
    return "every rank holds the whole model; eval.stream_layers holds a layer";
}

int plan_dry_run(const pc_config *c, int world, double device_gib, FILE *out, int *fits, pc_err *e) {
    if (strcmp(c->run.mode, "compress") && strcmp(c->run.mode, "prune"))
        return pc_errorf(e, "%s: --dry-run lays out compress and prune jobs; run.mode %s has no plan (%s)", c->source,
                         c->run.mode, no_plan_why(c));
    llama_config *cfg = pc_malloc(2 * sizeof *cfg); /* base, small (large per-layer tables) */
    int rc = -1;
    if (c->model.base[0])
        rc = hf_config_load(c->model.base, &cfg[0], e);
    else if (c->model.config[0])
        rc = hf_config_load_file(c->model.config, &cfg[0], e);
    else
        pc_errorf(e, "%s: set model.base (an HF model directory) or model.config (a config.json)", c->source);
    if (rc == 0) rc = plan_small_config(c, &cfg[0], &cfg[1], e);
    if (rc == 0) {
        plan_opts o;
        plan_opts_from_config(c, &o);
        int from_cfg = device_gib <= 0 && c->backend.memory_gib > 0;
        if (from_cfg) device_gib = c->backend.memory_gib;
        if (device_gib > 0) o.capacity = (int64_t)(device_gib * 1073741824.0);
        plan *p = pc_malloc(sizeof *p);
        rc = plan_build(p, &cfg[0], &cfg[1], world, &o, e);
        if (rc == 0) {
            if (plan_write(p, out) != 0) rc = pc_errorf(e, "plan: writing the plan failed");
            if (rc == 0 && device_gib > 0) { /* the largest rank against a device of that size */
                int worst = 0;
                for (int r = 1; r < world; r++)
                    if (p->ranks[r].total_bytes > p->ranks[worst].total_bytes) worst = r;
                char device[64];
                snprintf(device, sizeof device, from_cfg ? "backend.memory_gib (%g GiB)" : "a %g GiB device",
                         device_gib);
                int ok = plan_check_fit(p, worst, (int64_t)(device_gib * 1073741824.0), device, e) == 0;
                if (fits) *fits = ok;
                if (ok)
                    fprintf(out, "# fits %s: the largest rank (%d) needs %.1f GiB\n", device, worst,
                            GIB(p->ranks[worst].total_bytes));
            }
            plan_free(p);
        }
        free(p);
    }
    free(cfg);
    return rc;
}
