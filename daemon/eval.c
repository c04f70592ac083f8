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

int eval_valid(run_ctx *r, llama_model *m, data_set *valid, double *loss_out, pc_err *e) {
    const pc_config *c = &r->cfg;
    int B = c->train.micro_batch, T = c->data.seq_len;
    int64_t n_win = (int64_t)c->eval.batches * B;
    int64_t avail = data_eval_n_windows(data_n_tokens(valid), T);
    if (n_win > avail) n_win = avail;
    int64_t mine = n_win > r->rank ? (n_win - r->rank + r->world - 1) / r->world : 0;
    int64_t n_batches = (mine + B - 1) / B;

    int32_t *buf = pc_malloc(sizeof(int32_t) * (size_t)(T + 1));
    int32_t *tokens = pc_malloc(sizeof(int32_t) * (size_t)B * T);  /* (B,T) */
    int32_t *targets = pc_malloc(sizeof(int32_t) * (size_t)B * T); /* (B,T) */
    double sums[2] = {0.0, 0.0};                                    /* loss sum, token count */
    int rc = 0;
    for (int64_t bi = 0; bi < n_batches && rc == 0; bi++) {
        int64_t valid_rows = 0;
        for (int b = 0; b < B; b++) {
            int64_t j = bi * B + b; /* j-th window of this rank */
            if (j >= mine) {
                memset(tokens + (size_t)b * T, 0, sizeof(int32_t) * (size_t)T);
                for (int t = 0; t < T; t++) targets[(size_t)b * T + t] = -1;
                continue;
            }
            int64_t w = r->rank + j * r->world;
            if (data_read(valid, data_eval_offset(w, T), T + 1, buf, e) != 0) {
                rc = -1;
                break;
            }
            memcpy(tokens + (size_t)b * T, buf, sizeof(int32_t) * (size_t)T);
            memcpy(targets + (size_t)b * T, buf + 1, sizeof(int32_t) * (size_t)T);
            valid_rows++;
        }
        if (rc != 0) break;
        double mean = llama_loss(m, tokens, targets);
        sums[0] += mean * (double)(valid_rows * T);
        sums[1] += (double)(valid_rows * T);
    }
    free(buf);
    free(tokens);
    free(targets);
    /* every rank joins the reduction even after a local failure, so nobody hangs */
    double fail = rc != 0, any_fail = 0;
    if (comm_all_reduce(r->comm, &fail, &any_fail, 1, COMM_F64, COMM_MAX, e) != 0) return -1;
    if (rc != 0) return -1;
    if (any_fail) return pc_errorf(e, "eval: another rank failed reading the validation data");
    double tot[2];
    if (comm_all_reduce(r->comm, sums, tot, 2, COMM_F64, COMM_SUM, e) != 0) return -1;
    if (tot[1] <= 0) return pc_errorf(e, "data.valid: no validation windows of seq_len %d", T);
    *loss_out = tot[0] / tot[1];
    return 0;
}

int open_valid(run_ctx *r, int vocab_size, data_set **out, pc_err *e) {
    const pc_config *c = &r->cfg;
    const char *globs[PC_CONFIG_MAX_GLOBS];
    for (int i = 0; i < c->data.n_valid; i++) globs[i] = c->data.valid[i];
    if (data_open(globs, c->data.n_valid, vocab_size, c->data.seq_len + 1, out, e) != 0)
        return pc_error_wrap(e, "data.valid");
    return 0;
}

void log_eval(run_ctx *r, long step, double val_loss, int64_t n_params) {
    LOGI(&r->log, "eval step %ld: val_loss %.4f ppl %.3f", step, val_loss, exp(val_loss));
    char line[256];
    snprintf(line, sizeof line, "{\"step\": %ld, \"val_loss\": %.8f, \"val_ppl\": %.6f, \"params\": %lld}", step,
             val_loss, exp(val_loss), (long long)n_params);
    run_metrics(r, line);
}

int mode_eval(run_ctx *r, pc_err *e) {
    llama_model m;
    data_set *valid = NULL;
    if (run_model(r, &m, r->cfg.train.micro_batch, RUN_EVALUATED, e) != 0) return -1;
    if (open_valid(r, m.cfg.vocab_size, &valid, e) != 0) return -1;
    double loss = 0;
    int rc = eval_valid(r, &m, valid, &loss, e);
    if (rc == 0) log_eval(r, 0, loss, hf_config_n_params(&m.cfg));
    if (rc == 0 && r->rank == 0) printf("val_loss %.6f ppl %.4f\n", loss, exp(loss));
    data_close(valid);
    llama_free(&m);
    return rc;
}
