/* hf_config: read and write the config.json of a Hugging Face LlamaForCausalLM.
 *
 * Reading accepts what transformers writes for Llama-family models (GQA, explicit or
 * null head_dim, llama3 rope_scaling, eos lists, tied embeddings), in transformers 5's
 * spelling too (rope_parameters, dtype). Writing produces a config that stock
 * transformers (4 and 5) loads; per-layer FFN widths that differ are written as
 * intermediate_size = max plus "projcomp_intermediate_sizes" (narrower layers are
 * zero-padded to the max by the writer of the weights), which reads back exactly. */
#include "hf_config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

void hf_config_defaults(llama_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 256;
    c->d_model = 64;
    c->d_ff = 172;
    c->n_layers = 2;
    for (int i = 0; i < PC_MAX_LAYERS; i++) c->d_ff_layer[i] = c->d_ff;
    c->n_heads = 4;
    c->n_kv_heads = 4;
    c->head_dim = 16;
    c->max_position_embeddings = 2048;
    c->rms_norm_eps = 1e-6; /* transformers' LlamaConfig defaults, for keys a config.json leaves out */
    c->rope_theta = 10000.0;
    c->rope_scaling_type[0] = '\0';
    c->tie_word_embeddings = 0;
    c->bos_token_id = 1;
    c->eos_token_id = 2;
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "float32");
}

/* Positive int key; absent -> error unless optional (then *out untouched, returns 1). */
static int get_pos_int(const char *file, const json_val *root, const char *key, int optional, int *out, pc_err *e) {
    const json_val *v = json_get(root, key);
    if (!v || (optional && json_is_null(v))) {
        if (optional) return 1;
        return pc_errorf(e, "%s: key '%s' is missing", file, key);
    }
    int64_t x;
    if (json_int(v, &x) != 0 || x <= 0 || x > INT32_MAX)
        return pc_errorf(e, "%s: key '%s' must be a positive integer", file, key);
    *out = (int)x;
    return 0;
}

static int get_pos_num(const char *file, const json_val *root, const char *key, int optional, double *out,
                       pc_err *e) {
    const json_val *v = json_get(root, key);
    if (!v || (optional && json_is_null(v))) {
        if (optional) return 1;
        return pc_errorf(e, "%s: key '%s' is missing", file, key);
    }
    double x;
    if (json_num(v, &x) != 0 || !(x > 0) || !isfinite(x))
        return pc_errorf(e, "%s: key '%s' must be a positive number", file, key);
    *out = x;
    return 0;
}

/* A token id: an int, or a list (its first element); absent -> *out untouched (the
 * default), null or [] -> -1 (none). */
/* A token id key: an int, null (-1) or a list, whose first entry is *out and whose
 * entries go to list[0..*n) when list is given (*n = 0 for an int, and for a list of
 * more than cap, whose first entry alone is then kept). */
static int get_token_id(const char *file, const json_val *root, const char *key, int *out, int *list, int cap,
                        int *n, pc_err *e) {
    const json_val *v = json_get(root, key);
    if (!v) return 0;
    *out = -1;
    if (n) *n = 0;
    if (json_is_null(v)) return 0;
    int is_list = v->type == JSON_ARRAY, count = is_list ? v->n : 1;
    if (is_list && count > cap) list = NULL;
    for (int i = 0; i < count; i++) {
        int64_t x;
        if (json_int(is_list ? json_at(v, i) : v, &x) != 0 || x < 0 || x > INT32_MAX)
            return pc_errorf(e, "%s: key '%s' must be a non-negative integer or a list of them", file, key);
        if (i == 0) *out = (int)x;
        if (is_list && list) list[(*n)++] = (int)x;
    }
    return 0;
}

static int parse_ff_list(const char *file, const char *key, const json_val *v, llama_config *c, pc_err *e) {
    if (v->n != c->n_layers)
        return pc_errorf(e, "%s: key '%s' has %d entries but num_hidden_layers is %d", file, key, v->n, c->n_layers);
    int mx = 0;
    for (int i = 0; i < v->n; i++) {
        int64_t x;
        if (json_int(&v->items[i], &x) != 0 || x <= 0 || x > INT32_MAX)
            return pc_errorf(e, "%s: key '%s'[%d] must be a positive integer", file, key, i);
        c->d_ff_layer[i] = (int)x;
        mx = PC_MAX(mx, (int)x);
    }
    c->d_ff = mx;
    return 0;
}

/* A RoPE scaling object rs found at `key` (rope_scaling, or transformers 5's
 * rope_parameters): rope_type (or type) default or llama3, with llama3's factors. */
static int parse_rope_scaling(const char *file, const char *key, const json_val *rs, llama_config *c, pc_err *e) {
    c->rope_scaling_type[0] = '\0';
    if (!rs || json_is_null(rs)) return 0;
    if (rs->type != JSON_OBJECT) return pc_errorf(e, "%s: key '%s' must be null or an object", file, key);
    const json_val *tv = json_get(rs, "rope_type");
    if (!tv) tv = json_get(rs, "type");
    const char *type = json_str(tv);
    if (!type) return pc_errorf(e, "%s: key '%s.rope_type' must be a string", file, key);
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "llama3") != 0)
        return pc_errorf(e, "%s: key '%s': rope type '%s' is not supported (only default and llama3)", file, key,
                         type);
    snprintf(c->rope_scaling_type, sizeof c->rope_scaling_type, "llama3");
    const char *keys[4] = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
    double vals[4];
    for (int i = 0; i < 4; i++) {
        const json_val *v = json_get(rs, keys[i]);
        if (json_num(v, &vals[i]) != 0 || !(vals[i] > 0) || !isfinite(vals[i]))
            return pc_errorf(e, "%s: key '%s.%s' must be a positive number", file, key, keys[i]);
    }
    c->rope_factor = vals[0];
    c->rope_low_freq_factor = vals[1];
    c->rope_high_freq_factor = vals[2];
    int64_t omax;
    if (json_int(json_get(rs, keys[3]), &omax) != 0 || omax > INT32_MAX)
        return pc_errorf(e, "%s: key '%s.%s' must be a positive integer", file, key, keys[3]);
    c->rope_original_max_pos = (int)omax;
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return pc_errorf(e, "%s: key '%s': high_freq_factor must exceed low_freq_factor", file, key);
    return 0;
}

/* RoPE: older files have rope_theta and rope_scaling at the top; transformers 5 writes one
 * object, rope_parameters {rope_type, rope_theta, the scaling's own keys}. Either is
 * read; a file with both must agree on theta and on the scaling type. */
static int parse_rope(const char *file, const json_val *root, llama_config *c, pc_err *e) {
    const json_val *th = json_get(root, "rope_theta"), *rs = json_get(root, "rope_scaling");
    if (get_pos_num(file, root, "rope_theta", 1, &c->rope_theta, e) < 0) return -1;
    if (parse_rope_scaling(file, "rope_scaling", rs, c, e) != 0) return -1;
    const json_val *rp = json_get(root, "rope_parameters");
    if (!rp || json_is_null(rp)) return 0;
    if (rp->type != JSON_OBJECT) return pc_errorf(e, "%s: key 'rope_parameters' must be null or an object", file);
    double legacy_theta = c->rope_theta;
    int legacy_theta_given = th && !json_is_null(th), legacy_scaling_given = rs && !json_is_null(rs);
    char legacy_type[sizeof c->rope_scaling_type];
    memcpy(legacy_type, c->rope_scaling_type, sizeof legacy_type);
    double theta;
    if (json_num(json_get(rp, "rope_theta"), &theta) != 0 || !(theta > 0) || !isfinite(theta))
        return pc_errorf(e, "%s: key 'rope_parameters.rope_theta' must be a positive number", file);
    if (parse_rope_scaling(file, "rope_parameters", rp, c, e) != 0) return -1;
    if (legacy_theta_given && legacy_theta != theta)
        return pc_errorf(e, "%s: keys 'rope_theta' (%g) and 'rope_parameters.rope_theta' (%g) disagree", file,
                         legacy_theta, theta);
    if (legacy_scaling_given && strcmp(legacy_type, c->rope_scaling_type) != 0)
        return pc_errorf(e, "%s: keys 'rope_scaling' (%s) and 'rope_parameters' (%s) disagree on the rope type", file,
                         legacy_type[0] ? legacy_type : "default",
                         c->rope_scaling_type[0] ? c->rope_scaling_type : "default");
    c->rope_theta = theta;
    return 0;
}

static int parse_config(const char *file, const json_val *root, llama_config *c, pc_err *e) {
    hf_config_defaults(c);
    if (root->type != JSON_OBJECT) return pc_errorf(e, "%s: must hold a JSON object", file);
    const json_val *arch = json_get(root, "architectures");
    if (arch && !json_is_null(arch)) {
        if (arch->type != JSON_ARRAY) return pc_errorf(e, "%s: key 'architectures' must be a list", file);
        int ok = 0;
        for (int i = 0; i < arch->n; i++) {
            const char *a = json_str(&arch->items[i]);
            if (a && strcmp(a, "LlamaForCausalLM") == 0) ok = 1;
        }
        if (!ok) return pc_errorf(e, "%s: key 'architectures' does not contain LlamaForCausalLM", file);
    }
    /* transformers picks the model's class by model_type (a qwen2 or mistral config has
     * biases or a sliding window that a Llama does not compute) */
    const json_val *mt = json_get(root, "model_type");
    if (mt && !json_is_null(mt) && (!json_str(mt) || strcmp(json_str(mt), "llama") != 0))
        return pc_errorf(e, "%s: key 'model_type' is %s%s%s: only Llama models (model_type 'llama') are supported", file,
                         json_str(mt) ? "'" : "", json_str(mt) ? json_str(mt) : "not a string", json_str(mt) ? "'" : "");
    if (get_pos_int(file, root, "hidden_size", 0, &c->d_model, e) != 0 ||
        get_pos_int(file, root, "num_hidden_layers", 0, &c->n_layers, e) != 0 ||
        get_pos_int(file, root, "num_attention_heads", 0, &c->n_heads, e) != 0 ||
        get_pos_int(file, root, "vocab_size", 0, &c->vocab_size, e) != 0)
        return -1;
    if (c->n_layers > PC_MAX_LAYERS)
        return pc_errorf(e, "%s: key 'num_hidden_layers' is %d, more than the supported %d", file, c->n_layers,
                         PC_MAX_LAYERS);
    const json_val *ff = json_get(root, "intermediate_size");
    if (!ff) return pc_errorf(e, "%s: key 'intermediate_size' is missing", file);
    if (ff->type == JSON_ARRAY) {
        if (parse_ff_list(file, "intermediate_size", ff, c, e) != 0) return -1;
    } else {
        if (get_pos_int(file, root, "intermediate_size", 0, &c->d_ff, e) != 0)
            return pc_errorf(e, "%s: key 'intermediate_size' must be a positive integer or a list of them", file);
        for (int i = 0; i < PC_MAX_LAYERS; i++) c->d_ff_layer[i] = c->d_ff;
    }
    const json_val *ffl = json_get(root, "projcomp_intermediate_sizes");
    if (ffl && !json_is_null(ffl)) {
        if (ffl->type != JSON_ARRAY)
            return pc_errorf(e, "%s: key 'projcomp_intermediate_sizes' must be a list of integers", file);
        int declared = c->d_ff;
        if (parse_ff_list(file, "projcomp_intermediate_sizes", ffl, c, e) != 0) return -1;
        if (c->d_ff != declared)
            return pc_errorf(e, "%s: key 'projcomp_intermediate_sizes' has maximum %d but intermediate_size is %d",
                             file, c->d_ff, declared);
    }
    c->n_kv_heads = c->n_heads;
    if (get_pos_int(file, root, "num_key_value_heads", 1, &c->n_kv_heads, e) < 0) return -1;
    c->head_dim = c->d_model / c->n_heads;
    int rc = get_pos_int(file, root, "head_dim", 1, &c->head_dim, e);
    if (rc < 0) return -1;
    if (rc == 1 && c->d_model % c->n_heads != 0)
        return pc_errorf(e, "%s: key 'hidden_size' (%d) is not divisible by num_attention_heads (%d) and no head_dim is "
                         "given",
                         file, c->d_model, c->n_heads);
    if (get_pos_num(file, root, "rms_norm_eps", 1, &c->rms_norm_eps, e) < 0) return -1;
    if (get_pos_int(file, root, "max_position_embeddings", 1, &c->max_position_embeddings, e) < 0) return -1;
    if (parse_rope(file, root, c, e) != 0) return -1;
    const json_val *tie = json_get(root, "tie_word_embeddings");
    c->tie_word_embeddings = 0;
    if (tie && !json_is_null(tie) && json_bool(tie, &c->tie_word_embeddings) != 0)
        return pc_errorf(e, "%s: key 'tie_word_embeddings' must be true or false", file);
    if (get_token_id(file, root, "bos_token_id", &c->bos_token_id, NULL, 0, NULL, e) != 0 ||
        get_token_id(file, root, "eos_token_id", &c->eos_token_id, c->eos_token_ids,
                     (int)PC_ARRAY_LEN(c->eos_token_ids), &c->n_eos_token_ids, e) != 0)
        return -1;
    /* the stored dtype: torch_dtype, or dtype (transformers 5); both must agree */
    const char *dkeys[2] = {"torch_dtype", "dtype"};
    for (int k = 0; k < 2; k++) {
        const json_val *dt = json_get(root, dkeys[k]);
        if (!dt || json_is_null(dt)) continue;
        const char *s = json_str(dt);
        if (!s || (strcmp(s, "float32") != 0 && strcmp(s, "bfloat16") != 0 && strcmp(s, "float16") != 0))
            return pc_errorf(e, "%s: key '%s' must be \"float32\", \"bfloat16\" or \"float16\"", file, dkeys[k]);
        if (k == 1 && json_get(root, dkeys[0]) && !json_is_null(json_get(root, dkeys[0])) &&
            strcmp(s, c->torch_dtype) != 0)
            return pc_errorf(e, "%s: keys 'torch_dtype' (%s) and 'dtype' (%s) disagree", file, c->torch_dtype, s);
        snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", s);
    }
    const json_val *act = json_get(root, "hidden_act");
    if (act && !json_is_null(act) && (!json_str(act) || strcmp(json_str(act), "silu") != 0))
        return pc_errorf(e, "%s: key 'hidden_act' must be \"silu\"", file);
    static const char *bias_keys[2] = {"attention_bias", "mlp_bias"};
    for (int k = 0; k < 2; k++) {
        const json_val *b = json_get(root, bias_keys[k]);
        int flag = 0;
        if (!b || json_is_null(b)) continue;
        if (json_bool(b, &flag) != 0) /* "true" or 1 would be truthy to transformers */
            return pc_errorf(e, "%s: key '%s' must be true or false", file, bias_keys[k]);
        if (flag) return pc_errorf(e, "%s: key '%s' is true; biases are not supported", file, bias_keys[k]);
    }
    return hf_config_validate(c, file, e);
}

int hf_config_load_file(const char *path, llama_config *c, pc_err *e) {
    char *text;
    size_t len;
    if (pc_read_file(path, &text, &len, e) != 0) return -1;
    json_val *root;
    int rc = json_parse(text, len, &root, e);
    free(text);
    if (rc != 0) return pc_error_wrap(e, "%s", path);
    rc = parse_config(path, root, c, e);
    json_free(root);
    return rc;
}

int hf_config_load(const char *dir, llama_config *c, pc_err *e) {
    char path[4096];
    if (pc_path_join(path, sizeof path, dir, "config.json") != 0) return pc_errorf(e, "%s: path too long", dir);
    return hf_config_load_file(path, c, e);
}

int hf_config_validate(const llama_config *c, const char *what, pc_err *e) {
    if (!what) what = "model config";
    if (c->vocab_size <= 0) return pc_errorf(e, "%s: key 'vocab_size' must be a positive integer", what);
    if (c->d_model <= 0) return pc_errorf(e, "%s: key 'hidden_size' must be a positive integer", what);
    if (c->n_layers <= 0 || c->n_layers > PC_MAX_LAYERS)
        return pc_errorf(e, "%s: key 'num_hidden_layers' must be in [1, %d]", what, PC_MAX_LAYERS);
    if (c->n_heads <= 0) return pc_errorf(e, "%s: key 'num_attention_heads' must be a positive integer", what);
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0)
        return pc_errorf(e, "%s: key 'num_key_value_heads' (%d) must divide num_attention_heads (%d)", what,
                         c->n_kv_heads, c->n_heads);
    if (c->head_dim <= 0 || c->head_dim % 2 != 0)
        return pc_errorf(e, "%s: key 'head_dim' (%d) must be a positive even integer", what, c->head_dim);
    int mx = 0;
    for (int i = 0; i < c->n_layers; i++) {
        if (c->d_ff_layer[i] <= 0)
            return pc_errorf(e, "%s: key 'intermediate_size' of layer %d must be positive", what, i);
        mx = PC_MAX(mx, c->d_ff_layer[i]);
    }
    if (mx != c->d_ff)
        return pc_errorf(e, "%s: key 'intermediate_size' (%d) must equal the largest per-layer width (%d)", what,
                         c->d_ff, mx);
    if (!(c->rms_norm_eps > 0)) return pc_errorf(e, "%s: key 'rms_norm_eps' must be positive", what);
    if (!(c->rope_theta > 0)) return pc_errorf(e, "%s: key 'rope_theta' must be positive", what);
    if (c->max_position_embeddings <= 0)
        return pc_errorf(e, "%s: key 'max_position_embeddings' must be a positive integer", what);
    if (c->rope_scaling_type[0] != '\0') {
        if (strcmp(c->rope_scaling_type, "llama3") != 0)
            return pc_errorf(e, "%s: key 'rope_scaling': rope type '%s' is not supported (only default and llama3)",
                             what, c->rope_scaling_type);
        if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) ||
            !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_original_max_pos <= 0)
            return pc_errorf(e, "%s: key 'rope_scaling': llama3 factors are invalid", what);
    }
    return 0;
}

/* "key": id (null when < 0), or the n ids of list as a list when n > 0. */
static void put_token(json_buf *b, const char *key, int id, const int *list, int n) {
    json_buf_printf(b, "  \"%s\": ", key);
    if (n > 0) {
        json_buf_puts(b, "[");
        for (int i = 0; i < n; i++) json_buf_printf(b, "%s%d", i ? ", " : "", list[i]);
        json_buf_puts(b, "]");
    } else if (id < 0) {
        json_buf_puts(b, "null");
    } else {
        json_buf_printf(b, "%d", id);
    }
    json_buf_puts(b, ",\n");
}

int hf_config_save(const char *dir, const llama_config *c, pc_err *e) {
    char path[4096];
    if (pc_path_join(path, sizeof path, dir, "config.json") != 0) return pc_errorf(e, "%s: path too long", dir);
    if (hf_config_validate(c, path, e) != 0) return -1;
    int uneven = 0;
    for (int i = 1; i < c->n_layers; i++)
        if (c->d_ff_layer[i] != c->d_ff_layer[0]) uneven = 1;
    json_buf b;
    json_buf_init(&b);
    json_buf_puts(&b, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n");
    json_buf_puts(&b, "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n  \"mlp_bias\": false,\n");
    json_buf_puts(&b, "  \"hidden_act\": \"silu\",\n  \"initializer_range\": 0.02,\n  \"pretraining_tp\": 1,\n");
    json_buf_puts(&b, "  \"use_cache\": true,\n");
    put_token(&b, "bos_token_id", c->bos_token_id, NULL, 0);
    put_token(&b, "eos_token_id", c->eos_token_id, c->eos_token_ids, c->n_eos_token_ids);
    json_buf_printf(&b, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n",
                    c->vocab_size, c->d_model, c->d_ff);
    if (uneven) {
        json_buf_puts(&b, "  \"projcomp_intermediate_sizes\": [");
        for (int i = 0; i < c->n_layers; i++) json_buf_printf(&b, "%s%d", i ? ", " : "", c->d_ff_layer[i]);
        json_buf_puts(&b, "],\n");
    }
    json_buf_printf(&b,
                    "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n"
                    "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n",
                    c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->max_position_embeddings);
    json_buf_puts(&b, "  \"rms_norm_eps\": ");
    json_buf_num(&b, c->rms_norm_eps);
    json_buf_puts(&b, ",\n  \"rope_theta\": ");
    json_buf_num(&b, c->rope_theta);
    json_buf_puts(&b, ",\n  \"rope_scaling\": ");
    if (c->rope_scaling_type[0] == '\0') {
        json_buf_puts(&b, "null");
    } else {
        json_buf_puts(&b, "{\n    \"rope_type\": ");
        json_buf_str(&b, c->rope_scaling_type);
        json_buf_puts(&b, ",\n    \"factor\": ");
        json_buf_num(&b, c->rope_factor);
        json_buf_puts(&b, ",\n    \"low_freq_factor\": ");
        json_buf_num(&b, c->rope_low_freq_factor);
        json_buf_puts(&b, ",\n    \"high_freq_factor\": ");
        json_buf_num(&b, c->rope_high_freq_factor);
        json_buf_printf(&b, ",\n    \"original_max_position_embeddings\": %d\n  }", c->rope_original_max_pos);
    }
    json_buf_printf(&b, ",\n  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": ",
                    c->tie_word_embeddings ? "true" : "false");
    json_buf_str(&b, c->torch_dtype[0] ? c->torch_dtype : "float32");
    json_buf_puts(&b, "\n}\n");
    int rc = pc_mkdirs(dir, e);
    if (rc == 0) rc = pc_write_file_atomic(path, b.data, b.len, e);
    json_buf_free(&b);
    return rc;
}

/* Decoder layer i's parameters. */
static int64_t layer_params(const llama_config *c, int i) {
    int64_t D = c->d_model, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    return D * q + 2 * D * kv + q * D  /* q, k, v, o projections */
           + 3 * D * c->d_ff_layer[i]  /* gate, up, down */
           + 2 * D;                    /* input and post-attention RMSNorm */
}

int64_t hf_config_n_params(const llama_config *c) {
    int64_t D = c->d_model, V = c->vocab_size;
    int64_t n = V * D; /* embed_tokens */
    for (int i = 0; i < c->n_layers; i++) n += layer_params(c, i);
    n += D; /* final norm */
    if (!c->tie_word_embeddings) n += V * D;
    return n;
}

int64_t hf_config_max_stage_params(const llama_config *c) {
    int64_t most = (int64_t)c->vocab_size * c->d_model + c->d_model; /* the head and the final norm */
    for (int i = 0; i < c->n_layers; i++) most = PC_MAX(most, layer_params(c, i));
    return most;
}

int64_t hf_config_n_norm_params(const llama_config *c) { return (2 * (int64_t)c->n_layers + 1) * c->d_model; }
