/* hf_config: the LlamaForCausalLM config.json of a Hugging Face model directory.
 *
 * d_ff may differ per layer (compressed outputs with uneven widths); d_ff_layer[i]
 * holds layer i's width and d_ff the maximum. */
#ifndef PC_HF_CONFIG_H
#define PC_HF_CONFIG_H

#include "util.h"

#define PC_MAX_LAYERS 1024

typedef struct llama_config {
    int vocab_size;
    int d_model;          /* hidden_size */
    int d_ff;             /* intermediate_size (max over layers) */
    int d_ff_layer[PC_MAX_LAYERS];
    int n_layers;         /* num_hidden_layers */
    int n_heads;          /* num_attention_heads */
    int n_kv_heads;       /* num_key_value_heads */
    int head_dim;         /* explicit, or hidden_size / num_attention_heads */
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    /* llama3-style rope_scaling; rope_scaling_type[0] == '\0' when absent */
    char rope_scaling_type[32];
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    int tie_word_embeddings;
    int bos_token_id, eos_token_id; /* -1: null (eos: a list's first entry) */
    int eos_token_ids[16], n_eos_token_ids; /* a list eos_token_id (Llama 3's, up to 16), kept for the output */
    char torch_dtype[16];  /* "float32", "bfloat16", "float16" */
} llama_config;

/* Fill defaults for every field (a tiny valid model) so callers can set a few keys. */
void hf_config_defaults(llama_config *c);
/* Parse dir/config.json; errors name the file and the key. */
int hf_config_load(const char *dir, llama_config *c, pc_err *e);
/* Parse a config.json given by path (file, not directory). */
int hf_config_load_file(const char *path, llama_config *c, pc_err *e);
/* Write dir/config.json (atomically) that stock transformers loads as LlamaForCausalLM. */
int hf_config_save(const char *dir, const llama_config *c, pc_err *e);
/* Check internal consistency (heads divide, positive sizes); error names the key. */
int hf_config_validate(const llama_config *c, const char *what, pc_err *e);
/* Parameter count of the model (embedding, layers, norms, head if untied). */
int64_t hf_config_n_params(const llama_config *c);
/* Of those, the norm gains'. */
int64_t hf_config_n_norm_params(const llama_config *c);
/* The most parameters of one stage of the backward of an untied model (llama_grad_stage):
 * the head with the final norm, one decoder layer, or the embedding (never the most). */
int64_t hf_config_max_stage_params(const llama_config *c);

#endif
