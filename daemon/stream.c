/* stream: a base model run one decoder layer at a time (stream.h). */
#include "stream.h"

#include <stdlib.h>
#include <string.h>

int stream_embed(const st_model *base, const llama_config *bc, const int32_t *tokens, int64_t n, int bf16, float *h,
                 pc_err *e) {
    const char *name = "model.embed_tokens.weight";
    int64_t d = bc->d_model, shape[2] = {bc->vocab_size, d};
    int padded;
    if (!llama_stored_tensor(base, name, 2, shape, bc->d_ff, &padded, e)) return -1;
    for (int64_t i = 0; i < n; i++)
        if (st_read_rows_f32(base, name, tokens[i], 1, h + i * d, e) != 0) return -1;
    if (st_check_finite(base, name, h, (size_t)(n * d), e) != 0) return -1;
    for (int64_t j = 0; bf16 && j < n * d; j++) h[j] = pc_bf16_to_f32(pc_f32_to_bf16(h[j]));
    return 0;
}

/* Base layer l's tensors into layer 0 of the one-layer model m; buf holds the largest. */
static int load_layer(const st_model *base, int l, llama_model *m, float *buf, pc_err *e) {
    for (int i = 0; i < llama_n_tensors(m); i++) {
        const char *name = llama_tensor_name(m, i);
        if (strncmp(name, "model.layers.0.", 15) != 0) continue;
        char full[LLAMA_NAME_MAX + 16];
        snprintf(full, sizeof full, "model.layers.%d.%s", l, name + 15);
        if (llama_load_tensor(m, i, base, full, buf, e) != 0) return -1;
    }
    return 0;
}

/* Layer l on this rank: read from the base and run over the n_seq sequences of h. */
static int run_layer(run_ctx *r, const st_model *base, const llama_config *bc, int l, int weights, float *h,
                     int64_t n_seq, int B, int T, float *x, float *y, stream_layer_fn fn, void *ctx, pc_err *e) {
    int d = bc->d_model;
    llama_config lc = *bc; /* one decoder layer; no vocabulary to speak of */
    lc.n_layers = 1;
    lc.vocab_size = 1;
    lc.tie_word_embeddings = 0;
    lc.d_ff_layer[0] = bc->d_ff_layer[l]; /* d_ff stays the widest: a narrower layer is stored padded to it */
    llama_opts o = {.forward_only = 1, .weights = weights};
    llama_model m;
    memset(&m, 0, sizeof m);
    if (llama_init_opts(&m, &lc, r->be, B, T, &o, e) != 0) return -1;
    int64_t most = 0;
    for (int i = 0; i < llama_n_tensors(&m); i++) most = PC_MAX(most, llama_tensor_numel(&m, i));
    float *buf = pc_alloc_f32((size_t)most);
    int rc = load_layer(base, l, &m, buf, e);
    free(buf);
    for (int64_t j0 = 0; rc == 0 && j0 < n_seq; j0 += B) {
        int64_t rows = PC_MIN((int64_t)B, n_seq - j0); /* a short last batch: padded */
        be_upload(r->be, x, h + j0 * T * d, (size_t)(rows * T * d));
        llama_layers_forward(&m, x, y);
        if (fn) rc = fn(ctx, &m, l, rows, e);
        be_download(r->be, h + j0 * T * d, y, (size_t)(rows * T * d));
    }
    llama_free(&m);
    return rc;
}

int stream_layers(run_ctx *r, const st_model *base, const llama_config *bc, int weights, float *h, int64_t n_seq,
                  int B, int T, stream_layer_fn fn, void *ctx, int failed, pc_err *e) {
    size_t n = (size_t)B * T * bc->d_model;
    float *x = n_seq > 0 ? be_alloc(r->be, n) : NULL, *y = n_seq > 0 ? be_alloc(r->be, n) : NULL; /* (B, T, d) */
    int rc = failed ? -1 : 0;
    for (int l = 0; l < bc->n_layers; l++) {
        if (rc == 0 && n_seq > 0) rc = run_layer(r, base, bc, l, weights, h, n_seq, B, T, x, y, fn, ctx, e);
        /* every rank at every layer: a wait is a layer's reading at most */
        if (run_agree(r, rc, e, "layer %d of the base: another rank failed (see its log)", l) != 0) {
            rc = -1;
            break;
        }
    }
    if (x) be_free(r->be, x);
    if (y) be_free(r->be, y);
    return rc;
}
