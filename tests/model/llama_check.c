/* llama_check: run the Llama model of a Hugging Face directory forward and backward on
 * given tokens and write logits, loss and every parameter gradient to a safetensors
 * file, for comparison with transformers in test_llama.py.
 *
 *   llama_check MODEL_DIR TOKENS.i32 B T OUT.safetensors [--micro K] [--threads N] [--save DIR]
 *               [--matmul fp32|bf16|bf16w|bf16only] [--logits-chunk N] [--no-run]
 *
 * TOKENS.i32 holds 2*B*T little-endian int32: tokens (B,T) then targets (B,T), -1 =
 * ignored. With --micro K the batch is split into K micro-batches of B/K rows whose
 * gradients accumulate with loss scale 1/K (the loss written is then the mean of the
 * micro-batch losses). --save DIR writes the loaded model back out with
 * llama_save_safetensors (f32) before running and prints the save's peak RSS over the RSS
 * before it; --no-run stops after loading (and saving), writing nothing else. --matmul bf16 rounds every gemm input to
 * bf16; bf16w does the same with the weights read from the model's bf16 copy
 * (llama_use_bf16_weights); bf16only loads a forward-only model that holds its matrices
 * in bf16 only (LLAMA_BF16_ONLY, a bf16 distillation teacher) and writes no gradients.
 * --logits-chunk N runs the head and loss N tokens at a time (llama_opts.logits_chunk;
 * no "logits" output then: they are never whole). Output tensors: "logits" (B,T,V),
 * "loss" (1), "grad.<name>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "hf_config.h"
#include "llama.h"
#include "safetensors.h"

/* A "Vm...:" line of /proc/self/status, in MiB (-1 if absent). */
static double proc_status_mib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0) kib = atof(line + strlen(key));
    if (f) fclose(f);
    return kib < 0 ? -1 : kib / 1024.0;
}

static int fail(const pc_err *e)
{
    fprintf(stderr, "llama_check: %s\n", e->msg);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: llama_check MODEL_DIR TOKENS.i32 B T OUT.safetensors [--micro K] [--threads N] [--save DIR]\n");
        return 2;
    }
    const char *dir = argv[1], *tok_path = argv[2], *out_path = argv[5];
    int B = atoi(argv[3]), T = atoi(argv[4]), micro = 1, threads = 1, chunk = 0, no_run = 0;
    const char *save_dir = NULL, *matmul = "fp32";
    for (int i = 6; i < argc; i += 2) {
        if (strcmp(argv[i], "--no-run") == 0) {
            no_run = 1, i--; /* takes no value */
            continue;
        }
        if (i + 1 >= argc) break;
        if (strcmp(argv[i], "--micro") == 0) micro = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--save") == 0) save_dir = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--matmul") == 0) matmul = argv[i + 1];
        else if (strcmp(argv[i], "--logits-chunk") == 0) chunk = atoi(argv[i + 1]);
    }
    pc_err e = {{0}};
    if (B <= 0 || T <= 0 || micro <= 0 || B % micro != 0) {
        fprintf(stderr, "llama_check: bad B=%d T=%d micro=%d\n", B, T, micro);
        return 2;
    }
    char *raw = NULL;
    size_t len = 0;
    if (pc_read_file(tok_path, &raw, &len, &e)) return fail(&e);
    size_t NT = (size_t)B * T;
    if (len != 2 * NT * sizeof(int32_t)) {
        fprintf(stderr, "llama_check: %s holds %zu bytes, expected %zu\n", tok_path, len, 2 * NT * sizeof(int32_t));
        return 2;
    }
    int32_t *tokens = pc_malloc(2 * NT * sizeof(int32_t));
    memcpy(tokens, raw, 2 * NT * sizeof(int32_t));
    free(raw);
    const int32_t *targets = tokens + NT;

    llama_config cfg;
    if (hf_config_load(dir, &cfg, &e)) return fail(&e);
    backend *be = backend_cpu_create(threads);
    int w16 = strcmp(matmul, "bf16w") == 0; /* bf16 products reading the model's bf16 weight copy */
    int only16 = strcmp(matmul, "bf16only") == 0; /* forward only, matrices in bf16 only */
    be->ops->set_matmul(be, w16 || only16 || strcmp(matmul, "bf16") == 0 ? MATMUL_BF16 : MATMUL_FP32);
    llama_model m;
    int Bm = B / micro;
    llama_opts opts = {.logits_chunk = chunk, .forward_only = only16, .weights = only16 ? LLAMA_BF16_ONLY : LLAMA_F32};
    if (llama_init_opts(&m, &cfg, be, Bm, T, &opts, &e)) return fail(&e);
    if (llama_load_safetensors(&m, dir, &e)) return fail(&e);
    if (w16) {
        llama_use_bf16_weights(&m);
        llama_refresh_w16(&m);
    }
    if (save_dir) {
        /* the save's own memory: the peak RSS reset (clear_refs 5) before it, read after it */
        FILE *cr = fopen("/proc/self/clear_refs", "w");
        int reset = cr && fputs("5", cr) >= 0;
        if (cr && fclose(cr) != 0) reset = 0;
        double before = proc_status_mib("VmRSS:");
        if (llama_save_safetensors(&m, save_dir, ST_F32, &e)) return fail(&e);
        if (reset) printf("save peak RSS %.1f MiB over %.1f MiB before\n", proc_status_mib("VmHWM:") - before, before);
    }
    if (no_run) {
        llama_free(&m);
        backend_destroy(be);
        free(tokens);
        return 0;
    }

    size_t V = (size_t)cfg.vocab_size, per = (size_t)Bm * T;
    float *logits = pc_alloc_f32(NT * V);
    double loss = 0.0;
    llama_zero_grad(&m);
    llama_set_loss_scale(&m, 1.0f / (float)micro);
    for (int k = 0; k < micro; k++) {
        loss += llama_forward(&m, tokens + k * per, targets + k * per);
        if (!m.logits_chunk) be_download(be, logits + k * per * V, m.logits, per * V); // (Bm,T,V)
        if (!only16) llama_backward(&m);
    }
    float loss_f = (float)(loss / micro);

    float *grads = pc_alloc_f32((size_t)m.n_params);
    if (!only16) be_download(be, grads, m.grads, (size_t)m.n_params);
    int n_items = 2 + (only16 ? 0 : m.n_tensors);
    st_item *items = pc_calloc((size_t)n_items, sizeof(st_item));
    char (*names)[LLAMA_NAME_MAX + 8] = pc_calloc((size_t)m.n_tensors, sizeof(*names));
    items[0] = (st_item){.name = "logits", .ndim = 3, .shape = {B, T, (int64_t)V}, .data = logits};
    items[1] = (st_item){.name = "loss", .ndim = 1, .shape = {1}, .data = &loss_f};
    for (int i = 0; i < n_items - 2; i++) {
        const llama_tensor *t = llama_tensor_at(&m, i);
        snprintf(names[i], sizeof(names[i]), "grad.%s", t->name);
        st_item *it = &items[2 + i];
        it->name = names[i];
        it->ndim = t->ndim;
        it->shape[0] = t->shape[0];
        it->shape[1] = t->shape[1];
        it->data = grads + t->offset;
    }
    int skip = m.logits_chunk ? 1 : 0; /* no whole logits to write */
    if (st_write(out_path, items + skip, n_items - skip, ST_F32, &e)) return fail(&e);
    printf("loss %.7f n_params %lld\n", (double)loss_f, (long long)m.n_params);

    free(names);
    free(items);
    free(grads);
    free(logits);
    free(tokens);
    llama_free(&m);
    backend_destroy(be);
    return 0;
}
