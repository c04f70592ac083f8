/* st_tool: command-line access to the safetensors and hf_config modules, used by the
 * Python reference tests to compare projcompd's reading and writing with the
 * safetensors and transformers libraries.
 *
 *   st_tool dump PATH [--values]        name dtype shape fnv64(f32 bytes) [values]
 *   st_tool slice PATH NAME rows|cols START COUNT   f32 values of a 2-D slice
 *   st_tool roundtrip IN OUT DTYPE      read every float tensor, write one file
 *   st_tool write-model IN DIR DTYPE MAX_SHARD_BYTES   same via st_write_model
 *   st_tool config-dump DIR             parsed config.json as key=value lines
 *   st_tool config-roundtrip IN_DIR OUT_DIR [FF0,FF1,...]   load, optionally set
 *                                       per-layer widths, save
 * Exits 1 with the error message on stderr on any failure. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"
#include "safetensors.h"

static uint64_t fnv64(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int fail(const pc_err *e) {
    fprintf(stderr, "st_tool: %s\n", e->msg);
    return 1;
}

static int is_float(st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16; }

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

static int cmd_dump(const char *path, int values) {
    pc_err e = {{0}};
    st_model *m;
    if (st_open(path, &m, &e) != 0) return fail(&e);
    int n = st_count(m);
    const st_tensor **ts = pc_malloc(sizeof(*ts) * (size_t)(n + 1));
    for (int i = 0; i < n; i++) ts[i] = st_get(m, i);
    qsort(ts, (size_t)n, sizeof(*ts), cmp_name);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const st_tensor *t = ts[i];
        printf("%s %s ", t->name, st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) printf("%s%" PRId64, d ? "," : "", t->shape[d]);
        if (t->ndim == 0) printf("-");
        if (!is_float(t->dtype)) {
            printf(" %016" PRIx64 "\n", fnv64(t->data, t->nbytes));
            continue;
        }
        size_t numel = (size_t)st_numel(t);
        float *buf = pc_alloc_f32(numel + 1);
        if (st_read_f32(m, t->name, buf, numel, &e) != 0) {
            rc = fail(&e);
        } else {
            printf(" %016" PRIx64 "\n", fnv64(buf, numel * sizeof(float)));
            if (values) {
                for (size_t k = 0; k < numel; k++) printf("%s%.9g", k ? " " : "", (double)buf[k]);
                printf("\n");
            }
        }
        free(buf);
    }
    free(ts);
    st_close(m);
    return rc;
}

static int cmd_slice(const char *path, const char *name, const char *kind, int64_t start, int64_t count) {
    pc_err e = {{0}};
    st_model *m;
    if (st_open(path, &m, &e) != 0) return fail(&e);
    const st_tensor *t = st_find(m, name);
    int rc = 0;
    if (!t || t->ndim != 2) {
        fprintf(stderr, "st_tool: %s: no 2-D tensor '%s'\n", path, name);
        st_close(m);
        return 1;
    }
    int64_t other = strcmp(kind, "rows") == 0 ? t->shape[1] : t->shape[0];
    size_t n = (size_t)(count > 0 ? count : 0) * (size_t)other;
    float *buf = pc_alloc_f32(n + 1);
    int r = strcmp(kind, "rows") == 0 ? st_read_rows_f32(m, name, start, count, buf, &e)
                                      : st_read_cols_f32(m, name, start, count, buf, &e);
    if (r != 0) {
        rc = fail(&e);
    } else {
        for (size_t k = 0; k < n; k++) printf("%s%.9g", k ? " " : "", (double)buf[k]);
        printf("\n");
    }
    free(buf);
    st_close(m);
    return rc;
}

/* Reads every float tensor of IN as f32 into items (caller frees data and items). */
static int load_items(const char *in, st_item **out, int *n_out, pc_err *e) {
    st_model *m;
    if (st_open(in, &m, e) != 0) return -1;
    int n = st_count(m), k = 0;
    st_item *items = pc_calloc((size_t)n + 1, sizeof(st_item));
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_get(m, i);
        if (!is_float(t->dtype)) continue;
        size_t numel = (size_t)st_numel(t);
        float *buf = pc_alloc_f32(numel + 1);
        if (st_read_f32(m, t->name, buf, numel, e) != 0) {
            free(buf);
            for (int j = 0; j < k; j++) {
                free((void *)items[j].data);
                free((void *)items[j].name);
            }
            free(items);
            st_close(m);
            return -1;
        }
        items[k].name = pc_strdup(t->name);
        items[k].ndim = t->ndim;
        memcpy(items[k].shape, t->shape, sizeof items[k].shape);
        items[k].data = buf;
        k++;
    }
    st_close(m);
    *out = items;
    *n_out = k;
    return 0;
}

static void free_items(st_item *items, int n) {
    for (int j = 0; j < n; j++) {
        free((void *)items[j].data);
        free((void *)items[j].name);
    }
    free(items);
}

static int cmd_write(const char *in, const char *out, const char *dtype, const char *max_shard) {
    pc_err e = {{0}};
    st_dtype dt;
    if (st_dtype_parse(dtype, &dt) != 0) {
        fprintf(stderr, "st_tool: unknown dtype '%s'\n", dtype);
        return 1;
    }
    st_item *items;
    int n;
    if (load_items(in, &items, &n, &e) != 0) return fail(&e);
    int r = max_shard ? st_write_model(out, items, n, dt, (size_t)strtoull(max_shard, NULL, 10), &e)
                      : st_write(out, items, n, dt, &e);
    free_items(items, n);
    return r != 0 ? fail(&e) : 0;
}

static int cmd_config_dump(const char *dir) {
    pc_err e = {{0}};
    static llama_config c;
    if (hf_config_load(dir, &c, &e) != 0) return fail(&e);
    printf("vocab_size=%d\nhidden_size=%d\nintermediate_size=%d\n", c.vocab_size, c.d_model, c.d_ff);
    printf("d_ff_layer=");
    for (int i = 0; i < c.n_layers; i++) printf("%s%d", i ? "," : "", c.d_ff_layer[i]);
    printf("\nnum_hidden_layers=%d\nnum_attention_heads=%d\nnum_key_value_heads=%d\nhead_dim=%d\n", c.n_layers,
           c.n_heads, c.n_kv_heads, c.head_dim);
    printf("max_position_embeddings=%d\nrms_norm_eps=%.17g\nrope_theta=%.17g\n", c.max_position_embeddings,
           c.rms_norm_eps, c.rope_theta);
    printf("rope_type=%s\nrope_factor=%.17g\nrope_low_freq_factor=%.17g\nrope_high_freq_factor=%.17g\n"
           "rope_original_max_position_embeddings=%d\n",
           c.rope_scaling_type, c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor,
           c.rope_original_max_pos);
    printf("tie_word_embeddings=%d\nbos_token_id=%d\neos_token_id=%d\ntorch_dtype=%s\nn_params=%" PRId64 "\n",
           c.tie_word_embeddings, c.bos_token_id, c.eos_token_id, c.torch_dtype, hf_config_n_params(&c));
    return 0;
}

static int cmd_config_roundtrip(const char *in, const char *out, const char *ffs) {
    pc_err e = {{0}};
    static llama_config c;
    if (hf_config_load(in, &c, &e) != 0) return fail(&e);
    if (ffs) {
        char *s = pc_strdup(ffs), *save = NULL;
        int i = 0, mx = 0;
        for (char *tok = strtok_r(s, ",", &save); tok && i < PC_MAX_LAYERS; tok = strtok_r(NULL, ",", &save)) {
            c.d_ff_layer[i] = atoi(tok);
            mx = PC_MAX(mx, c.d_ff_layer[i]);
            i++;
        }
        free(s);
        if (i != c.n_layers) {
            fprintf(stderr, "st_tool: %d widths given for %d layers\n", i, c.n_layers);
            return 1;
        }
        c.d_ff = mx;
    }
    if (hf_config_save(out, &c, &e) != 0) return fail(&e);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "dump") == 0)
        return cmd_dump(argv[2], argc >= 4 && strcmp(argv[3], "--values") == 0);
    if (argc == 7 && strcmp(argv[1], "slice") == 0 && (strcmp(argv[4], "rows") == 0 || strcmp(argv[4], "cols") == 0))
        return cmd_slice(argv[2], argv[3], argv[4], strtoll(argv[5], NULL, 10), strtoll(argv[6], NULL, 10));
    if (argc == 5 && strcmp(argv[1], "roundtrip") == 0) return cmd_write(argv[2], argv[3], argv[4], NULL);
    if (argc == 6 && strcmp(argv[1], "write-model") == 0) return cmd_write(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 3 && strcmp(argv[1], "config-dump") == 0) return cmd_config_dump(argv[2]);
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "config-roundtrip") == 0)
        return cmd_config_roundtrip(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
    fprintf(stderr,
            "usage: st_tool dump PATH [--values] | slice PATH NAME rows|cols START COUNT |\n"
            "       roundtrip IN OUT DTYPE | write-model IN DIR DTYPE MAX_SHARD_BYTES |\n"
            "       config-dump DIR | config-roundtrip IN_DIR OUT_DIR [FF0,FF1,...]\n");
    return 2;
}
