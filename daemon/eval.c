/* eval: validation loss of the current model on the held-out shards, and the eval mode.
 *
 * Window w (w < eval.batches x train.micro_batch, capped by what the shards hold) is
 * data_eval_offset(w); rank r takes windows r, r+R, r+2R, ... in micro-batches, padding
 * a short last micro-batch with ignored targets. The loss is the sum over every
 * predicted token divided by their count, reduced over ranks: independent of the rank
 * count up to fp32 summation order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "run.h"
#include "stream.h"

/* This rank's evaluation windows: how many (*mine) and in how many micro-batches of B. */
static int64_t my_windows(const run_ctx *r, data_set *valid, int64_t *mine) {
    const pc_config *c = &r->cfg;
    int B = c->train.micro_batch;
    int64_t n_win = (int64_t)c->eval.batches * B;
    int64_t avail = data_eval_n_windows(data_n_tokens(valid), c->data.seq_len);
    if (n_win > avail) n_win = avail;
    *mine = n_win > r->rank ? (n_win - r->rank + r->world - 1) / r->world : 0;
    return (*mine + B - 1) / B;
}

/* Micro-batch bi of this rank's `mine` windows into tokens, targets (B,T) (a short last
 * one padded with token 0 and ignored targets); *rows: its real windows. */
static int read_batch(const run_ctx *r, data_set *valid, int64_t bi, int64_t mine, int32_t *buf, int32_t *tokens,
                      int32_t *targets, int64_t *rows, pc_err *e) {
    int B = r->cfg.train.micro_batch, T = r->cfg.data.seq_len;
    *rows = 0;
    for (int b = 0; b < B; b++) {
        int64_t j = bi * B + b; /* j-th window of this rank */
        if (j >= mine) {
            memset(tokens + (size_t)b * T, 0, sizeof(int32_t) * (size_t)T);
            for (int t = 0; t < T; t++) targets[(size_t)b * T + t] = -1;
            continue;
        }
        int64_t w = r->rank + j * r->world;
        if (data_read(valid, data_eval_offset(w, T), (int64_t)T + 1, buf, e) != 0) return -1;
        memcpy(tokens + (size_t)b * T, buf, sizeof(int32_t) * (size_t)T);
        memcpy(targets + (size_t)b * T, buf + 1, sizeof(int32_t) * (size_t)T);
        (*rows)++;
    }
    return 0;
}

/* The loss over every rank's windows from this rank's sums (loss sum, token count) and
 * its status rc: every rank joins the reductions even after a local failure, so nobody
 * hangs. */
static int reduce_sums(run_ctx *r, int rc, const double sums[2], double *loss_out, pc_err *e) {
    if (run_agree(r, rc, e, "eval: another rank failed (see its log)") != 0) return -1;
    double tot[2];
    if (comm_all_reduce(r->comm, sums, tot, 2, COMM_F64, COMM_SUM, e) != 0) return -1;
    if (tot[1] <= 0) return pc_errorf(e, "data.valid: no validation windows of seq_len %d", r->cfg.data.seq_len);
    *loss_out = tot[0] / tot[1];
    return 0;
}

int eval_valid(run_ctx *r, llama_model *m, data_set *valid, double *loss_out, pc_err *e) {
    const pc_config *c = &r->cfg;
    int B = c->train.micro_batch, T = c->data.seq_len;
    int64_t mine, n_batches = my_windows(r, valid, &mine), rows;
    int32_t *buf = pc_malloc(sizeof(int32_t) * ((size_t)T + 1));
    int32_t *tokens = pc_malloc(sizeof(int32_t) * (size_t)B * T);  /* (B,T) */
    int32_t *targets = pc_malloc(sizeof(int32_t) * (size_t)B * T); /* (B,T) */
    double sums[2] = {0.0, 0.0};                                    /* loss sum, token count */
    int rc = 0;
    for (int64_t bi = 0; bi < n_batches && rc == 0; bi++) {
        rc = read_batch(r, valid, bi, mine, buf, tokens, targets, &rows, e);
        if (rc != 0) break;
        double mean = llama_loss(m, tokens, targets);
        sums[0] += mean * (double)(rows * T);
        sums[1] += (double)(rows * T);
    }
    free(buf);
    free(tokens);
    free(targets);
    return reduce_sums(r, rc, sums, loss_out, e);
}

/* The final norm and the head of the base (shape lc) in a model of one token-wide layer
 * whose embedding slot holds the head (tied), for llama_loss_hidden. */
static int tail_model(run_ctx *r, const st_model *base, const llama_config *lc, int weights, llama_model *tm,
                      pc_err *e) {
    llama_config tc = *lc;
    tc.n_layers = 1;
    tc.d_ff = tc.d_ff_layer[0] = 1;
    tc.tie_word_embeddings = 1;
    llama_opts o = {.forward_only = 1, .weights = weights};
    if (llama_init_opts(tm, &tc, r->be, r->cfg.train.micro_batch, r->cfg.data.seq_len, &o, e) != 0) return -1;
    float *buf = pc_alloc_f32((size_t)llama_tensor_numel(tm, 0));
    const char *head = lc->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    int rc = llama_load_tensor(tm, 0, base, head, buf, e);
    int norm = llama_tensor_index(tm, "model.norm.weight");
    if (rc == 0) rc = llama_load_tensor(tm, norm, base, "model.norm.weight", buf, e);
    free(buf);
    return rc;
}

/* eval.stream_layers: eval_valid's windows and sums with model.base (shape lc) read one
 * decoder layer at a time (stream.h): the embedding rows on the host, each layer over
 * every window's hidden states, then the final norm, head and loss per micro-batch. */
static int eval_streamed(run_ctx *r, const st_model *base, const llama_config *lc, data_set *valid,
                         double *loss_out, pc_err *e) {
    const pc_config *c = &r->cfg;
    int B = c->train.micro_batch, T = c->data.seq_len, d = lc->d_model;
    int weights = run_model_weights(r, RUN_EVALUATED);
    int64_t mine, n_batches = my_windows(r, valid, &mine);
    size_t bt = (size_t)B * T, n_tok = (size_t)n_batches * bt;
    int32_t *buf = pc_malloc(sizeof(int32_t) * ((size_t)T + 1));
    int32_t *tokens = pc_malloc(sizeof(int32_t) * (n_tok ? n_tok : 1));  /* (n_batches * B, T) */
    int32_t *targets = pc_malloc(sizeof(int32_t) * (n_tok ? n_tok : 1)); /* (n_batches * B, T) */
    int64_t *real = pc_calloc((size_t)(n_batches ? n_batches : 1), sizeof *real);
    float *h = pc_alloc_f32(n_tok * (size_t)d); /* (n_batches * B, T, d) */
    double sums[2] = {0.0, 0.0};
    int rc = 0;
    for (int64_t bi = 0; bi < n_batches && rc == 0; bi++)
        rc = read_batch(r, valid, bi, mine, buf, tokens + bi * bt, targets + bi * bt, &real[bi], e);
    int run = rc == 0 && n_batches > 0; /* a rank without windows reads nothing, but joins each layer */
    if (run) rc = stream_embed(base, lc, tokens, (int64_t)n_tok, weights == LLAMA_BF16_ONLY, h, e);
    rc = stream_layers(r, base, lc, weights, h, run ? n_batches * B : 0, B, T, NULL, NULL, rc != 0, e);
    llama_model tm;
    memset(&tm, 0, sizeof tm);
    if (run && rc == 0) rc = tail_model(r, base, lc, weights, &tm, e);
    float *x = run && rc == 0 ? be_alloc(r->be, bt * (size_t)d) : NULL; /* (B, T, d) */
    for (int64_t bi = 0; bi < n_batches && rc == 0; bi++) {
        be_upload(r->be, x, h + bi * bt * (size_t)d, bt * (size_t)d);
        double mean = llama_loss_hidden(&tm, x, targets + bi * bt);
        sums[0] += mean * (double)(real[bi] * T);
        sums[1] += (double)(real[bi] * T);
    }
    if (x) be_free(r->be, x);
    if (tm.tensors) llama_free(&tm);
    free(buf);
    free(tokens);
    free(targets);
    free(real);
    free(h);
    return reduce_sums(r, rc, sums, loss_out, e);
}

int open_valid(run_ctx *r, int vocab_size, data_set **out, pc_err *e) {
    const pc_config *c = &r->cfg;
    const char *globs[PC_CONFIG_MAX_GLOBS];
    for (int i = 0; i < c->data.n_valid; i++) globs[i] = c->data.valid[i];
    if (data_open(globs, c->data.n_valid, vocab_size, (int64_t)c->data.seq_len + 1, out, e) != 0)
        return pc_error_wrap(e, "data.valid");
    return 0;
}

void warn_data_sets(run_ctx *r, const data_set *train, const data_set *valid) {
    const data_set *sets[] = {train, valid};
    char msg[1024];
    if (r->rank != 0) return;
    if (data_tokenizers_differ(sets, 2, msg, sizeof msg))
        LOGW(&r->log, "%s: their token ids likely mean different things", msg);
    const char *both = data_shared_shard(train, valid);
    if (both)
        LOGW(&r->log, "data.valid: %s is also in data.train: the validation loss is measured on trained data", both);
}

void log_eval(run_ctx *r, long step, double val_loss, int64_t n_params) {
    LOGI(&r->log, "eval step %ld: val_loss %.4f ppl %.3f", step, val_loss, exp(val_loss));
    char line[256], loss_s[48], ppl_s[48]; /* null where not finite (a diverged model; exp overflows) */
    snprintf(line, sizeof line, "{\"step\": %ld, \"val_loss\": %s, \"val_ppl\": %s, \"params\": %lld}", step,
             run_json_number(loss_s, sizeof loss_s, "%.8f", val_loss),
             run_json_number(ppl_s, sizeof ppl_s, "%.6f", exp(val_loss)), (long long)n_params);
    run_metrics(r, line);
}

/* eval.stream_layers: model.base evaluated one decoder layer at a time. */
static int mode_eval_streamed(run_ctx *r, double *loss, int64_t *n_params, pc_err *e) {
    const pc_config *c = &r->cfg;
    llama_config lc;
    if (run_model_config(r, &lc, e) != 0 || hf_config_validate(&lc, c->model.base, e) != 0) return -1;
    run_warn_seq_len(r, &lc);
    if (!r->be && run_backend(r, e) != 0) return -1;
    st_model *base = NULL;
    data_set *valid = NULL;
    if (st_open(c->model.base, &base, e) != 0) return -1;
    if (llama_check_tied_head(base, &lc, e) != 0) {
        st_close(base);
        return -1;
    }
    int rc = open_valid(r, lc.vocab_size, &valid, e);
    if (rc == 0) {
        warn_data_sets(r, NULL, valid);
        LOGI(&r->log, "evaluating %s one decoder layer at a time (eval.stream_layers)", c->model.base);
        rc = eval_streamed(r, base, &lc, valid, loss, e);
    }
    *n_params = hf_config_n_params(&lc);
    if (valid) data_close(valid);
    st_close(base);
    return rc;
}

int mode_eval(run_ctx *r, pc_err *e) {
    double loss = 0;
    int64_t n_params = 0;
    int rc;
    if (r->cfg.eval.stream_layers) {
        rc = mode_eval_streamed(r, &loss, &n_params, e);
    } else {
        llama_model m;
        data_set *valid = NULL;
        if (run_model(r, &m, r->cfg.train.micro_batch, RUN_EVALUATED, e) != 0) return -1;
        if (open_valid(r, m.cfg.vocab_size, &valid, e) != 0) return -1;
        warn_data_sets(r, NULL, valid);
        rc = eval_valid(r, &m, valid, &loss, e);
        n_params = hf_config_n_params(&m.cfg);
        data_close(valid);
        llama_free(&m);
    }
    if (rc == 0) log_eval(r, 0, loss, n_params);
    if (rc == 0 && r->rank == 0) printf("val_loss %.6f ppl %.4f\n", loss, exp(loss));
    return rc == 0 ? run_report_memory(r, e) : rc;
}
