/* stream: a base model run one decoder layer at a time (activation importance, streamed
 * evaluation). The hidden states of a rank's windows live on the host; the device holds
 * one decoder layer at a time, read from the safetensors when it is needed, so a base
 * larger than the device can be run. */
#ifndef PC_STREAM_H
#define PC_STREAM_H

#include "run.h"

/* The embedding rows of tokens (n,) -> h (n, d), read row by row from the base (its
 * shape checked against bc: (vocab_size, d_model)); with
 * bf16, rounded to bf16 (nearest even) and widened: what a LLAMA_BF16_ONLY model's
 * lookups give. */
int stream_embed(const st_model *base, const llama_config *bc, const int32_t *tokens, int64_t n, int bf16, float *h,
                 pc_err *e);

/* After layer l ran on `rows` sequences of a micro-batch: the one-layer model m holds
 * their activations (llama_layer_acts, layer 0). Returns 0, or -1 with e set. */
typedef int (*stream_layer_fn)(void *ctx, const llama_model *m, int l, int64_t rows, pc_err *e);

/* h (n_seq, T, d) (host) through every decoder layer of the base (shape bc) in place,
 * one layer at a time on r's backend, in micro-batches of B sequences (a short last one
 * padded; fn sees only its real rows; NULL: no callback). weights: llama_opts.weights of
 * the one-layer model. Collective: every rank calls it, and the ranks agree after each
 * layer that none failed, so that a rank with no sequences (it reads no layer) or one
 * that failed before (failed != 0, e set) waits a layer's reading at a time under the
 * collective watchdog, never the whole base's; a failure anywhere stops every rank. */
int stream_layers(run_ctx *r, const st_model *base, const llama_config *bc, int weights, float *h, int64_t n_seq,
                  int B, int T, stream_layer_fn fn, void *ctx, int failed, pc_err *e);

#endif
