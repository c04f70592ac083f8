/* Unit tests of hf_config: parsing of Llama config.json variants (GQA, null head_dim,
 * eos lists, llama3 rope_scaling, per-layer widths), errors that name file and key,
 * save/load round trips and the parameter count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"

static char g_dir[256];

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/pc-hfc-test-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void put_config(const char *text) {
    char p[512];
    pc_err e = {{0}};
    snprintf(p, sizeof p, "%s/config.json", g_dir);
    assert_int_equal(pc_write_file_atomic(p, text, strlen(text), &e), 0);
}

#define BASE                                                                                                    \
    "\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":176,"                  \
    "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":300"

static void load_fail(const char *text, const char *s1, const char *s2) {
    static llama_config c;
    pc_err e = {{0}};
    put_config(text);
    assert_int_equal(hf_config_load(g_dir, &c, &e), -1);
    if (!strstr(e.msg, "config.json") || !strstr(e.msg, s1) || (s2 && !strstr(e.msg, s2)))
        fail_msg("error '%s' lacks config.json / '%s' / '%s'", e.msg, s1, s2 ? s2 : "");
}

static void test_minimal_and_defaults(void **state) {
    (void)state;
    static llama_config c;
    pc_err e = {{0}};
    put_config("{" BASE "}");
    assert_int_equal(hf_config_load(g_dir, &c, &e), 0);
    assert_int_equal(c.d_model, 64);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.d_ff, 176);
    for (int i = 0; i < 3; i++) assert_int_equal(c.d_ff_layer[i], 176);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.rope_scaling_type[0], '\0');
    /* keys left out: transformers' LlamaConfig defaults, as it loads the same file */
    assert_true(c.rms_norm_eps == 1e-6);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.eos_token_id, 2);
    assert_string_equal(c.torch_dtype, "float32");
    /* null (or an empty list): no such token */
    put_config("{" BASE ",\"bos_token_id\":null,\"eos_token_id\":[]}");
    assert_int_equal(hf_config_load(g_dir, &c, &e), 0);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
}

static void test_full(void **state) {
    (void)state;
    static llama_config c;
    pc_err e = {{0}};
    put_config("{" BASE ",\"num_key_value_heads\":2,\"head_dim\":32,\"rms_norm_eps\":1e-06,\"rope_theta\":500000.0,"
               "\"rope_scaling\":{\"factor\":32.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
               "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},"
               "\"tie_word_embeddings\":true,\"bos_token_id\":5,\"eos_token_id\":[7,8],"
               "\"max_position_embeddings\":131072,\"torch_dtype\":\"bfloat16\",\"head_dim_extra\":null}");
    assert_int_equal(hf_config_load(g_dir, &c, &e), 0);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 32);
    assert_true(c.rms_norm_eps == 1e-6);
    assert_true(c.rope_theta == 500000.0);
    assert_string_equal(c.rope_scaling_type, "llama3");
    assert_true(c.rope_factor == 32.0);
    assert_true(c.rope_low_freq_factor == 1.0);
    assert_true(c.rope_high_freq_factor == 4.0);
    assert_int_equal(c.rope_original_max_pos, 8192);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.bos_token_id, 5);
    assert_int_equal(c.eos_token_id, 7);
    assert_int_equal(c.max_position_embeddings, 131072);
    assert_string_equal(c.torch_dtype, "bfloat16");

    /* save and load again: identical */
    static llama_config c2;
    char out[512];
    snprintf(out, sizeof out, "%s/out", g_dir);
    assert_int_equal(hf_config_save(out, &c, &e), 0);
    assert_int_equal(hf_config_load(out, &c2, &e), 0);
    assert_memory_equal(&c, &c2, sizeof c);

    /* per-layer widths survive a round trip */
    c.d_ff_layer[0] = 96;
    c.d_ff_layer[1] = 176;
    c.d_ff_layer[2] = 40;
    c.d_ff = 176;
    assert_int_equal(hf_config_save(out, &c, &e), 0);
    assert_int_equal(hf_config_load(out, &c2, &e), 0);
    assert_int_equal(c2.d_ff, 176);
    assert_int_equal(c2.d_ff_layer[0], 96);
    assert_int_equal(c2.d_ff_layer[2], 40);
    /* max of the list must be the declared intermediate_size */
    c.d_ff = 100;
    assert_int_equal(hf_config_save(out, &c, &e), -1);
    assert_non_null(strstr(e.msg, "intermediate_size"));
}

static void test_variants(void **state) {
    (void)state;
    static llama_config c;
    pc_err e = {{0}};
    put_config("{" BASE ",\"head_dim\":null,\"num_key_value_heads\":null,\"rope_scaling\":null,"
               "\"eos_token_id\":2}");
    assert_int_equal(hf_config_load(g_dir, &c, &e), 0);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.eos_token_id, 2);
    put_config("{\"hidden_size\":64,\"intermediate_size\":[10,20,30],\"num_hidden_layers\":3,"
               "\"num_attention_heads\":4,\"vocab_size\":300,\"architectures\":null,"
               "\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,"
               "\"original_max_position_embeddings\":8192}}");
    assert_int_equal(hf_config_load(g_dir, &c, &e), 0);
    assert_int_equal(c.d_ff, 30);
    assert_int_equal(c.d_ff_layer[1], 20);
    assert_string_equal(c.rope_scaling_type, "llama3");
}

/* transformers 5 writes RoPE as rope_parameters and the dtype as dtype: read as the
 * older spelling is (the same config), and a file holding both must agree. */
static void test_transformers5(void **state) {
    (void)state;
    static llama_config old, v5;
    pc_err e = {{0}};
    put_config("{" BASE ",\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":32.0,\"high_freq_factor\":4.0,"
               "\"low_freq_factor\":1.0,\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},"
               "\"torch_dtype\":\"bfloat16\"}");
    assert_int_equal(hf_config_load(g_dir, &old, &e), 0);
    put_config("{" BASE ",\"rope_parameters\":{\"factor\":32.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
               "\"original_max_position_embeddings\":8192,\"rope_theta\":500000.0,\"rope_type\":\"llama3\"},"
               "\"dtype\":\"bfloat16\"}");
    assert_int_equal(hf_config_load(g_dir, &v5, &e), 0);
    assert_memory_equal(&old, &v5, sizeof old);
    assert_true(v5.rope_theta == 500000.0 && v5.rope_factor == 32.0 && v5.rope_original_max_pos == 8192);
    /* default RoPE at another theta; both spellings, agreeing */
    put_config("{" BASE ",\"rope_theta\":123.0,\"rope_scaling\":null,\"rope_parameters\":{\"rope_theta\":123.0,"
               "\"rope_type\":\"default\"},\"torch_dtype\":\"float32\",\"dtype\":\"float32\"}");
    assert_int_equal(hf_config_load(g_dir, &v5, &e), 0);
    assert_true(v5.rope_theta == 123.0);
    assert_int_equal(v5.rope_scaling_type[0], '\0');
    load_fail("{" BASE ",\"rope_theta\":10000.0,\"rope_parameters\":{\"rope_theta\":500000.0,\"rope_type\":"
              "\"default\"}}",
              "'rope_theta' (10000)", "'rope_parameters.rope_theta' (500000) disagree");
    load_fail("{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
              "\"high_freq_factor\":4,\"original_max_position_embeddings\":8192},\"rope_parameters\":{\"rope_theta\":"
              "10000.0,\"rope_type\":\"default\"}}",
              "'rope_scaling' (llama3)", "'rope_parameters' (default) disagree");
    load_fail("{" BASE ",\"rope_parameters\":{\"rope_type\":\"default\"}}", "'rope_parameters.rope_theta'", NULL);
    load_fail("{" BASE ",\"rope_parameters\":{\"rope_theta\":1e4,\"rope_type\":\"yarn\"}}", "'rope_parameters'",
              "'yarn'");
    load_fail("{" BASE ",\"rope_parameters\":{\"rope_theta\":1e4,\"rope_type\":\"llama3\",\"factor\":8}}",
              "'rope_parameters.low_freq_factor'", NULL);
    load_fail("{" BASE ",\"rope_parameters\":[1]}", "'rope_parameters'", "object");
    load_fail("{" BASE ",\"torch_dtype\":\"float32\",\"dtype\":\"bfloat16\"}", "'torch_dtype' (float32)",
              "'dtype' (bfloat16) disagree");
    load_fail("{" BASE ",\"dtype\":\"int8\"}", "'dtype'", NULL);

    /* Llama-3.2-1B's config.json as its repository has it, and as transformers 5.17
     * re-saves it (data/llama-3.2-1b-transformers5.json): the same config */
    const char *src = getenv("PC_SRC");
    char path[1024];
    snprintf(path, sizeof path, "%s/configs/models/llama-3.2-1b/config.json", src ? src : ".");
    assert_int_equal(hf_config_load_file(path, &old, &e), 0);
    snprintf(path, sizeof path, "%s/tests/safetensors/data/llama-3.2-1b-transformers5.json", src ? src : ".");
    assert_int_equal(hf_config_load_file(path, &v5, &e), 0);
    assert_memory_equal(&old, &v5, sizeof old);
    assert_true(v5.rope_theta == 500000.0);
    assert_string_equal(v5.rope_scaling_type, "llama3");
}

static void test_errors(void **state) {
    (void)state;
    load_fail("{\"hidden_size\":0}", "'hidden_size'", "positive integer");
    load_fail("{" BASE ",\"hidden_size\":\"64\"}", "duplicate key 'hidden_size'", NULL);
    load_fail("{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":64}", "'architectures'",
              "LlamaForCausalLM");
    load_fail("{\"hidden_size\":64.5,\"intermediate_size\":176,\"num_hidden_layers\":3,\"num_attention_heads\":4,"
              "\"vocab_size\":300}",
              "'hidden_size'", "positive integer");
    load_fail("{\"hidden_size\":64,\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":300}",
              "'intermediate_size'", "missing");
    load_fail("{\"hidden_size\":64,\"intermediate_size\":[1,2],\"num_hidden_layers\":3,\"num_attention_heads\":4,"
              "\"vocab_size\":300}",
              "'intermediate_size'", "2 entries");
    load_fail("{" BASE ",\"num_key_value_heads\":3}", "'num_key_value_heads'", NULL);
    load_fail("{" BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "'rope_scaling'", "'yarn'");
    load_fail("{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":4}}", "'rope_scaling.low_freq_factor'",
              NULL);
    load_fail("{" BASE ",\"tie_word_embeddings\":1}", "'tie_word_embeddings'", NULL);
    load_fail("{" BASE ",\"torch_dtype\":\"int8\"}", "'torch_dtype'", NULL);
    load_fail("{" BASE ",\"rms_norm_eps\":-1}", "'rms_norm_eps'", NULL);
    load_fail("{" BASE ",\"attention_bias\":true}", "'attention_bias'", NULL);
    load_fail("{" BASE ",\"mlp_bias\":true}", "'mlp_bias'", "not supported");
    load_fail("{" BASE ",\"attention_bias\":\"true\"}", "'attention_bias'", "true or false");
    load_fail("{" BASE ",\"mlp_bias\":1}", "'mlp_bias'", "true or false");
    load_fail("{" BASE ",}", "JSON", NULL);
    load_fail("{\"hidden_size\":66,\"intermediate_size\":176,\"num_hidden_layers\":3,\"num_attention_heads\":4,"
              "\"vocab_size\":300}",
              "'hidden_size'", "divisible");
}

static void test_n_params(void **state) {
    (void)state;
    /* SmolLM-135M: 134,515,008 parameters (tied embeddings) */
    static llama_config c;
    hf_config_defaults(&c);
    c.vocab_size = 49152;
    c.d_model = 576;
    c.d_ff = 1536;
    c.n_layers = 30;
    for (int i = 0; i < 30; i++) c.d_ff_layer[i] = 1536;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.tie_word_embeddings = 1;
    pc_err e = {{0}};
    assert_int_equal(hf_config_validate(&c, "smollm", &e), 0);
    assert_int_equal(hf_config_n_params(&c), 134515008);
    c.tie_word_embeddings = 0;
    assert_int_equal(hf_config_n_params(&c), 134515008 + 49152 * 576);
    hf_config_defaults(&c);
    assert_int_equal(hf_config_validate(&c, "defaults", &e), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_and_defaults), cmocka_unit_test(test_full), cmocka_unit_test(test_variants),
        cmocka_unit_test(test_transformers5),        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_n_params),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
