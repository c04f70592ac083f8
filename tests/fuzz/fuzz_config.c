/* fuzz_config: libFuzzer harness for the job config loader with --set overrides.
 *
 * Input layout: the YAML job file, then the separator line "\n@@\n", then one --set
 * value per line (at most 16). Properties: a failure carries a message; a config that
 * loads writes a resolved YAML that loads again to the same resolved text (defaults,
 * overrides and the writer agree), and the model/rank checks run without UB. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_util.h"

#define MAX_SETS 16

/* The resolved text without its first two comment lines (the second names the source). */
static const char *body(const char *text) {
    const char *p = text;
    for (int i = 0; i < 2 && p; i++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    return p ? p : "";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fuzz_scratch_dir();
    fuzz_part top[2];
    int n_top = fuzz_split(data, size, "\n@@\n", top, 2);
    char path[700];
    snprintf(path, sizeof path, "%s/job.yaml", dir);
    fuzz_write(path, top[0].p, top[0].n);
    char *sets[MAX_SETS];
    int n_sets = 0;
    if (n_top == 2) {
        fuzz_part lines[MAX_SETS];
        n_sets = fuzz_split(top[1].p, top[1].n, "\n", lines, MAX_SETS);
        for (int i = 0; i < n_sets; i++) sets[i] = fuzz_strndup(&lines[i]);
    }
    pc_config *c = pc_malloc(sizeof *c), *r = pc_malloc(sizeof *r);
    pc_err e = {{0}};
    if (config_load(c, path, (const char *const *)sets, n_sets, &e) != 0) {
        FUZZ_CHECK(e.msg[0] != '\0', "load failed without a message");
        goto done;
    }
    for (int w = 1; w <= 3; w++) (void)config_check_ranks(c, w, &e);
    int base_d_ff[4] = {64, 128, 256, 512};
    (void)config_check_model(c, 128, base_d_ff, 4, &e);
    for (int l = -1; l <= PC_CONFIG_MAX_LAYERS; l++) (void)config_d_ff(c, l);
    char *text = config_resolved_text(c);
    char rpath[800];
    snprintf(rpath, sizeof rpath, "%s/resolved.yaml", dir);
    FUZZ_CHECK(config_write_resolved(c, rpath, &e) == 0, "%s", e.msg);
    FUZZ_CHECK(config_load(r, rpath, NULL, 0, &e) == 0, "the resolved config does not load: %s\n--- resolved:\n%s", e.msg,
               text);
    char *again = config_resolved_text(r);
    FUZZ_CHECK(strcmp(body(text), body(again)) == 0, "resolved text changes on reload:\n--- first:\n%s\n--- reloaded:\n%s",
               text, again);
    free(text);
    free(again);
done:
    for (int i = 0; i < n_sets; i++) free(sets[i]);
    free(c);
    free(r);
    return 0;
}
