/* fuzz_st_index: libFuzzer harness for sharded models (model.safetensors.index.json plus
 * shard files) opened as a directory.
 *
 * Input layout: the index JSON, then up to four shard files, separated by the line
 * "\n--shard--\n"; shard k is written as a.safetensors, b.safetensors, ... in the model
 * directory. Property: st_open fails with a message or every tensor of the weight map
 * is found, readable as f32 when it is a float tensor, and lies in a shard file. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "safetensors.h"

#define SEP "\n--shard--\n"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fuzz_scratch_dir();
    fuzz_part parts[5];
    int n = fuzz_split(data, size, SEP, parts, 5);
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    fuzz_write(path, parts[0].p, parts[0].n);
    for (int k = 1; k < n; k++) {
        snprintf(path, sizeof path, "%s/%c.safetensors", dir, 'a' + k - 1);
        fuzz_write(path, parts[k].p, parts[k].n);
    }
    st_model *m = NULL;
    pc_err e = {{0}};
    if (st_open(dir, &m, &e) != 0) {
        FUZZ_CHECK(m == NULL && e.msg[0] != '\0', "failed st_open left a model or no message");
        return 0;
    }
    for (int i = 0; i < st_count(m); i++) {
        const st_tensor *t = st_get(m, i);
        FUZZ_CHECK(st_find(m, t->name) == t, "tensor '%s' is not found by name", t->name);
        const char *fp = st_file_path(m, t);
        FUZZ_CHECK(fp && strncmp(fp, dir, strlen(dir)) == 0 && strstr(fp, ".safetensors"),
                   "tensor '%s' lies in '%s'", t->name, fp ? fp : "(null)");
        int64_t numel = st_numel(t);
        FUZZ_CHECK(numel >= 0 && (uint64_t)numel * (uint64_t)st_dtype_bits(t->dtype) == 8 * (uint64_t)t->nbytes,
                   "tensor '%s' size", t->name);
        if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
            float *buf = pc_malloc(sizeof(float) * (size_t)(numel + 1));
            FUZZ_CHECK(st_read_f32(m, t->name, buf, (size_t)numel, &e) == 0, "read '%s': %s", t->name, e.msg);
            free(buf);
        }
    }
    st_close(m);
    return 0;
}
