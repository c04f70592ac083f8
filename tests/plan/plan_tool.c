/* plan-tool: print the sharding plan of compressing a model (config.json only, no
 * weights) to D_MODEL_C / D_FF_C on WORLD ranks.
 *
 * usage: plan-tool CONFIG.json D_MODEL_C D_FF_C WORLD [MICRO_BATCH SEQ_LEN] [--cpu] [--split BYTES]
 *                  [--store-grads false|true|auto] [--capacity BYTES] [--prune] [--time]
 *   default: bf16 base and compute, fused attention (a GPU run); --cpu: f32 for both and
 *   one (T,T) score matrix at a time; --split overrides the split threshold;
 *   --store-grads (default false) and --capacity (bytes per rank, default unknown) as
 *   compress.store_grads and backend.memory_gib; --prune plans run.mode prune; --time
 *   prints the build time on stderr.
 *   exit: 0 ok, 1 planner error, 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

static int usage(void) {
    fprintf(stderr, "usage: plan-tool CONFIG.json D_MODEL_C D_FF_C WORLD [MICRO_BATCH SEQ_LEN] [--cpu] "
                    "[--split BYTES] [--store-grads false|true|auto] [--capacity BYTES] [--prune] [--time]\n");
    return 2;
}

static int parse_pos(const char *s, long long *out) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    const char *pos[6];
    int n_pos = 0, cpu = 0, timing = 0, prune = 0, store = PC_GRADS_RECOMPUTE;
    long long split = 0, capacity = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cpu")) {
            cpu = 1;
        } else if (!strcmp(argv[i], "--time")) {
            timing = 1;
        } else if (!strcmp(argv[i], "--prune")) {
            prune = 1;
        } else if (!strcmp(argv[i], "--split") && i + 1 < argc) {
            if (parse_pos(argv[++i], &split) != 0) return usage();
        } else if (!strcmp(argv[i], "--capacity") && i + 1 < argc) {
            if (parse_pos(argv[++i], &capacity) != 0) return usage();
        } else if (!strcmp(argv[i], "--store-grads") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "true"))
                store = PC_GRADS_KEEP;
            else if (!strcmp(v, "auto"))
                store = PC_GRADS_AUTO;
            else if (strcmp(v, "false"))
                return usage();
        } else if (n_pos < 6 && argv[i][0] != '-') {
            pos[n_pos++] = argv[i];
        } else {
            return usage();
        }
    }
    if (n_pos != 4 && n_pos != 6) return usage();
    long long v[5] = {0, 0, 0, 1, 2048};
    for (int i = 1; i < n_pos; i++)
        if (parse_pos(pos[i], &v[i - 1]) != 0 || v[i - 1] > 1 << 30) return usage();

    static llama_config base, small;
    pc_err e = {{0}};
    double t0 = pc_now();
    if (hf_config_load_file(pos[0], &base, &e) != 0) {
        fprintf(stderr, "plan-tool: %s\n", e.msg);
        return 1;
    }
    small = base;
    small.d_model = (int)v[0];
    small.d_ff = (int)v[1];
    for (int l = 0; l < base.n_layers; l++) small.d_ff_layer[l] = (int)v[1];
    small.tie_word_embeddings = 0;

    plan_opts o;
    plan_opts_default(&o);
    o.micro_batch = (int)v[3];
    o.seq_len = (int)v[4];
    o.base_dtype_bytes = cpu ? 4 : 2;
    o.compute_dtype_bytes = cpu ? 4 : 2;
    o.attn_tt = cpu;
    o.split_bytes = split;
    o.store_grads = store;
    o.capacity = capacity;
    o.prune = prune;
    plan p;
    if (plan_build(&p, &base, &small, (int)v[2], &o, &e) != 0) {
        fprintf(stderr, "plan-tool: %s\n", e.msg);
        return 1;
    }
    double t1 = pc_now();
    int rc = plan_write(&p, stdout);
    if (timing) fprintf(stderr, "plan-tool: built in %.4f s, written in %.4f s\n", t1 - t0, pc_now() - t1);
    plan_free(&p);
    return rc == 0 ? 0 : 1;
}
