/* importance: scores of d_model / d_ff dimensions and top-k selection (see importance.h). */
#include "importance.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void importance_alloc(importance_scores *s, const llama_config *c) {
    memset(s, 0, sizeof *s);
    s->d_model = c->d_model;
    s->n_layers = c->n_layers;
    s->d = pc_calloc((size_t)c->d_model, sizeof(double));
    for (int l = 0; l < c->n_layers; l++) {
        s->d_ff[l] = c->d_ff_layer[l];
        s->ff[l] = pc_calloc((size_t)c->d_ff_layer[l], sizeof(double));
    }
}

void importance_free(importance_scores *s) {
    free(s->d);
    for (int l = 0; l < s->n_layers; l++) free(s->ff[l]);
    memset(s, 0, sizeof *s);
}

/* score[j] += sum_n |x[n, col0 + j]|   x: (N, ld) */
static void add_abs_cols(double *score, const float *x, int64_t N, int ld, int col0, int ncols) {
    for (int64_t n = 0; n < N; n++) {
        const float *row = x + n * ld + col0;
        for (int j = 0; j < ncols; j++) score[j] += fabsf(row[j]);
    }
}

/* A host view of n elements of device buffer p: p itself on a host-memory backend,
 * else a download into *stage (grown as needed). */
static const float *host_view(backend *be, const float *p, size_t n, float **stage, size_t *have) {
    if (be->host_memory) return p;
    if (*have < n) {
        free(*stage);
        *stage = pc_alloc_f32(n);
        *have = n;
    }
    be_download(be, *stage, p, n);
    return *stage;
}

void importance_accumulate_layer(importance_scores *s, const llama_model *m, int ml, int sl, int64_t rows) {
    const llama_config *c = &m->cfg;
    int64_t N = rows * m->T;
    const float *ln1, *ln2, *gu;
    llama_layer_acts(m, ml, &ln1, &ln2, &gu);
    int f = c->d_ff_layer[ml];
    float *stage = NULL;
    size_t have = 0;
    add_abs_cols(s->d, host_view(m->be, ln1, (size_t)(N * c->d_model), &stage, &have), N, c->d_model, 0,
                 c->d_model); /* (N,d) */
    add_abs_cols(s->d, host_view(m->be, ln2, (size_t)(N * c->d_model), &stage, &have), N, c->d_model, 0,
                 c->d_model);
    const float *h = host_view(m->be, gu, (size_t)(N * 2 * f), &stage, &have); /* (N, 2f) */
    add_abs_cols(s->ff[sl], h, N, 2 * f, 0, f); /* gate part */
    add_abs_cols(s->ff[sl], h, N, 2 * f, f, f); /* up part */
    free(stage);
}

/* score[j] += ||W[:, j]||  W: (R, C) */
static void add_col_norms(double *score, const float *w, int64_t R, int64_t C) {
    double *acc = pc_calloc((size_t)C, sizeof(double));
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < C; j++) acc[j] += (double)w[r * C + j] * w[r * C + j];
    for (int64_t j = 0; j < C; j++) score[j] += sqrt(acc[j]);
    free(acc);
}

/* score[r] += ||W[r, :]|| */
static void add_row_norms(double *score, const float *w, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++) {
        double acc = 0;
        for (int64_t j = 0; j < C; j++) acc += (double)w[r * C + j] * w[r * C + j];
        score[r] += sqrt(acc);
    }
}

/* Base tensor `name` as f32 at the config's shape (R, C) (the real part of a narrower
 * layer's padded MLP matrix); the caller frees it. */
static float *read_weight(const st_model *base, const llama_config *c, const char *name, int64_t R, int64_t C,
                          pc_err *e) {
    int64_t shape[2] = {R, C};
    float *w = pc_alloc_f32((size_t)(R * C));
    if (llama_read_stored(base, name, 2, shape, c->d_ff, w, e) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

int importance_magnitude(importance_scores *s, const llama_config *c, const st_model *base, int rank, int ranks,
                         double *d_layer, pc_err *e) {
    static const char *d_cols[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
                                   "mlp.up_proj"};
    static const char *d_rows[] = {"self_attn.o_proj", "mlp.down_proj"};
    char name[LLAMA_NAME_MAX];
    int64_t d = c->d_model, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    for (int l = rank; l < s->n_layers; l += ranks) {
        int64_t f = c->d_ff_layer[l];
        double *sd = d_layer + (size_t)l * (size_t)d; /* this layer's share of the d_model scores */
        int64_t rows[] = {q, kv, kv, f, f}; /* of d_cols' matrices, whose columns are d */
        int64_t cols[] = {q, f};            /* of d_rows' matrices, whose rows are d */
        for (size_t k = 0; k < PC_ARRAY_LEN(d_cols); k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, d_cols[k]);
            float *w = read_weight(base, c, name, rows[k], d, e);
            if (!w) return -1;
            add_col_norms(sd, w, rows[k], d);
            if (k >= 3) add_row_norms(s->ff[l], w, f, d); /* gate, up: (f, d) rows are d_ff */
            free(w);
        }
        for (size_t k = 0; k < PC_ARRAY_LEN(d_rows); k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, d_rows[k]);
            float *w = read_weight(base, c, name, d, cols[k], e);
            if (!w) return -1;
            add_row_norms(sd, w, d, cols[k]);
            if (k == 1) add_col_norms(s->ff[l], w, d, f); /* down: (d, f) columns are d_ff */
            free(w);
        }
    }
    return 0;
}

void importance_sum_layers(importance_scores *s, const double *d_layer) {
    for (int l = 0; l < s->n_layers; l++)
        for (int j = 0; j < s->d_model; j++) s->d[j] += d_layer[(size_t)l * (size_t)s->d_model + (size_t)j];
}

void importance_random(importance_scores *s, uint64_t seed) {
    pc_rng r;
    pc_rng_seed(&r, pc_hash64(seed, 0x1a2b, 0, 0));
    for (int j = 0; j < s->d_model; j++) s->d[j] = pc_rng_uniform(&r);
    for (int l = 0; l < s->n_layers; l++)
        for (int j = 0; j < s->d_ff[l]; j++) s->ff[l][j] = pc_rng_uniform(&r);
}

typedef struct scored {
    double score;
    int index;
} scored;

static int by_score_desc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->index - y->index;
}

static int by_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static int *top_k(const double *score, int n, int k) {
    scored *s = pc_malloc(sizeof(scored) * (size_t)n);
    for (int i = 0; i < n; i++) s[i] = (scored){score[i], i};
    qsort(s, (size_t)n, sizeof *s, by_score_desc);
    int *idx = pc_malloc(sizeof(int) * (size_t)k);
    for (int i = 0; i < k; i++) idx[i] = s[i].index;
    qsort(idx, (size_t)k, sizeof(int), by_int);
    free(s);
    return idx;
}

void importance_select(const importance_scores *s, int d_model_c, const int *d_ff_c, proj_indices *idx) {
    memset(idx, 0, sizeof *idx);
    idx->d_model_c = d_model_c;
    idx->idx_d = top_k(s->d, s->d_model, d_model_c);
    for (int l = 0; l < s->n_layers; l++) {
        idx->d_ff_c[l] = d_ff_c[l];
        idx->idx_ff[l] = top_k(s->ff[l], s->d_ff[l], d_ff_c[l]);
    }
}

static void write_set(FILE *f, const char *name, const double *score, int n, const int *idx, int k) {
    fprintf(f, "%s.scores", name);
    for (int j = 0; j < n; j++) fprintf(f, " %.9g", score[j]);
    fprintf(f, "\n%s.kept", name);
    for (int j = 0; j < k; j++) fprintf(f, " %d", idx[j]);
    fprintf(f, "\n");
}

int importance_save(const importance_scores *s, const proj_indices *idx, const char *path, pc_err *e) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return pc_errorf(e, "%s: out of memory", path);
    fprintf(f, "# projcompd importance: per set, the score of every base dimension and the kept indices\n");
    write_set(f, "d_model", s->d, s->d_model, idx->idx_d, idx->d_model_c);
    for (int l = 0; l < s->n_layers; l++) {
        char name[32];
        snprintf(name, sizeof name, "d_ff.%d", l);
        write_set(f, name, s->ff[l], s->d_ff[l], idx->idx_ff[l], idx->d_ff_c[l]);
    }
    fclose(f);
    int rc = pc_write_file_atomic(path, buf, len, e);
    free(buf);
    return rc;
}

/* Parse "<name>.kept i0 i1 ..." into a fresh array of exactly k ascending indices < n. */
/* The line '<name>.kept' of text: looked for from *from on (the sets come in order, so a
 * whole file is scanned once, not once a layer), else from the start; *from then points
 * past it. */
static int parse_kept(const char *text, const char **from, const char *path, const char *name, int n, int k,
                      int **out, pc_err *e) {
    char key[48];
    snprintf(key, sizeof key, "\n%s.kept", name);
    const char *p = strstr(*from, key);
    if (!p) p = strstr(text, key);
    if (!p) return pc_errorf(e, "%s: no line '%s.kept'", path, name);
    p += strlen(key);
    int *idx = pc_malloc(sizeof(int) * (size_t)(k > 0 ? k : 1));
    int count = 0;
    for (;;) {
        while (*p == ' ') p++;
        if (*p == '\n' || *p == '\0') break;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v >= n || count >= k || (count > 0 && v <= idx[count - 1])) {
            free(idx);
            return pc_errorf(e, "%s: line '%s.kept' must hold %d ascending indices below %d", path, name, k, n);
        }
        idx[count++] = (int)v;
        p = end;
    }
    if (count != k) {
        free(idx);
        return pc_errorf(e, "%s: line '%s.kept' holds %d indices, the config asks for %d", path, name, count, k);
    }
    *out = idx;
    *from = p;
    return 0;
}

int importance_parse_indices(const char *text, const char *path, const llama_config *base_cfg, int d_model_c,
                             const int *d_ff_c, proj_indices *idx, pc_err *e) {
    memset(idx, 0, sizeof *idx);
    idx->d_model_c = d_model_c;
    const char *from = text;
    int rc = parse_kept(text, &from, path, "d_model", base_cfg->d_model, d_model_c, &idx->idx_d, e);
    for (int l = 0; rc == 0 && l < base_cfg->n_layers; l++) {
        char name[32];
        snprintf(name, sizeof name, "d_ff.%d", l);
        idx->d_ff_c[l] = d_ff_c[l];
        rc = parse_kept(text, &from, path, name, base_cfg->d_ff_layer[l], d_ff_c[l], &idx->idx_ff[l], e);
    }
    if (rc != 0) proj_indices_free(idx, base_cfg->n_layers);
    return rc;
}

