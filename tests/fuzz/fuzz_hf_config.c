/* fuzz_hf_config: libFuzzer harness for the Hugging Face config.json reader.
 *
 * The input is written as config.json and read with hf_config_load_file. A config that
 * loads and validates is saved with hf_config_save and loaded again: every field must
 * survive the round trip (the writer and the reader agree). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "hf_config.h"

static int same_num(double a, double b) { return a == b || (isnan(a) && isnan(b)); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fuzz_scratch_dir();
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", dir);
    fuzz_write(path, data, size);
    llama_config *c = pc_malloc(sizeof *c), *r = pc_malloc(sizeof *r);
    pc_err e = {{0}};
    if (hf_config_load_file(path, c, &e) != 0) {
        FUZZ_CHECK(e.msg[0] != '\0', "load failed without a message");
        goto done;
    }
    FUZZ_CHECK(c->n_layers >= 0 && c->n_layers <= PC_MAX_LAYERS, "n_layers %d", c->n_layers);
    if (hf_config_validate(c, path, &e) != 0) goto done;
    (void)hf_config_n_params(c);
    char out[700];
    snprintf(out, sizeof out, "%s/out", dir);
    FUZZ_CHECK(pc_mkdirs(out, &e) == 0, "%s", e.msg);
    FUZZ_CHECK(hf_config_save(out, c, &e) == 0, "a valid config does not save: %s", e.msg);
    char saved[800];
    snprintf(saved, sizeof saved, "%s/config.json", out);
    FUZZ_CHECK(hf_config_load_file(saved, r, &e) == 0, "the saved config does not load: %s", e.msg);
    FUZZ_CHECK(r->vocab_size == c->vocab_size && r->d_model == c->d_model && r->d_ff == c->d_ff &&
                   r->n_layers == c->n_layers && r->n_heads == c->n_heads && r->n_kv_heads == c->n_kv_heads &&
                   r->head_dim == c->head_dim && r->max_position_embeddings == c->max_position_embeddings &&
                   r->tie_word_embeddings == c->tie_word_embeddings && r->bos_token_id == c->bos_token_id &&
                   r->eos_token_id == c->eos_token_id,
               "integer fields differ after save/load");
    for (int i = 0; i < c->n_layers; i++)
        FUZZ_CHECK(r->d_ff_layer[i] == c->d_ff_layer[i], "d_ff_layer[%d]: %d -> %d", i, c->d_ff_layer[i],
                   r->d_ff_layer[i]);
    FUZZ_CHECK(same_num(r->rms_norm_eps, c->rms_norm_eps) && same_num(r->rope_theta, c->rope_theta),
               "rms_norm_eps/rope_theta differ after save/load");
    FUZZ_CHECK(strcmp(r->rope_scaling_type, c->rope_scaling_type) == 0, "rope_scaling type '%s' -> '%s'",
               c->rope_scaling_type, r->rope_scaling_type);
    if (c->rope_scaling_type[0])
        FUZZ_CHECK(same_num(r->rope_factor, c->rope_factor) && same_num(r->rope_low_freq_factor, c->rope_low_freq_factor) &&
                       same_num(r->rope_high_freq_factor, c->rope_high_freq_factor) &&
                       r->rope_original_max_pos == c->rope_original_max_pos,
                   "rope_scaling fields differ after save/load");
done:
    free(c);
    free(r);
    return 0;
}
