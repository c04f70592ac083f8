/* importance: which d_model and d_ff dimensions survive compression.
 *
 * Scores (docs/guide.md, Concepts): `activation` sums |RMSNorm output| of both pre-norms of every layer
 * (d_model) and |gate| + |up| pre-activations per layer (d_ff) over calibration tokens;
 * `magnitude` sums L2 norms of the d_model columns/rows and d_ff rows/columns of the
 * weights; `random` draws scores from the seed. The kept indices are the top-k by score
 * (ties to the lower index), in ascending order. */
#ifndef PC_IMPORTANCE_H
#define PC_IMPORTANCE_H

#include "llama.h"
#include "project.h"

typedef struct importance_scores {
    int d_model, n_layers;
    int d_ff[PC_MAX_LAYERS];      /* base width of layer i */
    double *d;                    /* (d_model) */
    double *ff[PC_MAX_LAYERS];    /* (d_ff_layer[i]) */
} importance_scores;

void importance_alloc(importance_scores *s, const llama_config *c);
void importance_free(importance_scores *s);

/* Add the activation scores of layer ml of model m's last forward (its first `rows`
 * sequences) to the scores of base layer sl (the d_model scores are shared). */
void importance_accumulate_layer(importance_scores *s, const llama_model *m, int ml, int sl, int64_t rows);
/* Weight-magnitude scores of layers rank, rank + ranks, ... (every layer: 0, 1), reading
 * the base tensors one at a time: each layer's d_ff scores into s, its share of the
 * d_model scores into d_layer (n_layers, d_model), zeroed by the caller; the ranks' sums
 * of both (each entry from one rank, so exact), then importance_sum_layers, give every
 * rank the same scores whatever their number. */
int importance_magnitude(importance_scores *s, const llama_config *c, const st_model *base, int rank, int ranks,
                         double *d_layer, pc_err *e);
/* s's d_model scores += the layers' shares, layer by layer in order. */
void importance_sum_layers(importance_scores *s, const double *d_layer);
/* Random scores (ablation). */
void importance_random(importance_scores *s, uint64_t seed);

/* Top-k selection: idx gets d_model_c indices and d_ff_c[i] per layer. */
void importance_select(const importance_scores *s, int d_model_c, const int *d_ff_c, proj_indices *idx);

/* RUN/importance.txt: the scores and chosen indices, one line per set. */
int importance_save(const importance_scores *s, const proj_indices *idx, const char *path, pc_err *e);
/* The kept indices from importance.txt's text (a checkpoint's copy, already read and
 * verified, on a resume; path: what messages name). */
int importance_parse_indices(const char *text, const char *path, const llama_config *base_cfg, int d_model_c,
                             const int *d_ff_c, proj_indices *idx, pc_err *e);

#endif
