/* config-check: loads a job YAML the way projcompd does and prints the first error.
 * Used by run_bad.sh over tests/config/bad/ (each file names the error it must give).
 *
 * usage: config-check FILE [--set KEY=VALUE]... [--model D_MODEL D_FF N_LAYERS] [--ranks N]
 * exit: 0 valid (prints "ok"), 1 rejected (message on stderr), 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define MAX_SETS 64

int main(int argc, char **argv) {
    const char *sets[MAX_SETS] = {0};
    int n_sets = 0, d_model = 0, d_ff = 0, n_layers = 0, ranks = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: config-check FILE [--set K=V]... [--model D_MODEL D_FF N_LAYERS] [--ranks N]\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--set") && i + 1 < argc && n_sets < MAX_SETS) {
            sets[n_sets++] = argv[++i];
        } else if (!strcmp(argv[i], "--model") && i + 3 < argc) {
            d_model = atoi(argv[++i]);
            d_ff = atoi(argv[++i]);
            n_layers = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--ranks") && i + 1 < argc) {
            ranks = atoi(argv[++i]);
        } else {
            fprintf(stderr, "config-check: bad argument '%s'\n", argv[i]);
            return 2;
        }
    }
    static pc_config c; /* ~100 KiB */
    pc_err e = {{0}};
    int rc = config_load(&c, argv[1], sets, n_sets, &e);
    if (rc == 0 && n_layers > 0) {
        int *base_d_ff = pc_calloc((size_t)n_layers, sizeof *base_d_ff); // (n_layers,)
        for (int l = 0; l < n_layers; l++) base_d_ff[l] = d_ff;
        rc = config_check_model(&c, d_model, base_d_ff, n_layers, &e);
        free(base_d_ff);
    }
    if (rc == 0 && ranks > 0) rc = config_check_ranks(&c, ranks, &e);
    if (rc != 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    printf("ok\n");
    return 0;
}
