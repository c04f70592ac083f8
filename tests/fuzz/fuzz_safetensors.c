/* fuzz_safetensors: libFuzzer harness for the safetensors header parser and readers.
 *
 * The input is written as one .safetensors file and opened with st_open. When it opens,
 * every tensor is looked up by name and every float tensor read whole, by rows and by
 * columns; the properties checked are that st_open's invariants hold (byte length =
 * element count x dtype size, names unique and found) and that sanitizers stay quiet. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "safetensors.h"

static void read_tensor(const st_model *m, const st_tensor *t) {
    pc_err e = {{0}};
    int64_t numel = st_numel(t);
    FUZZ_CHECK(numel >= 0, "tensor '%s': negative element count %lld", t->name, (long long)numel);
    FUZZ_CHECK((uint64_t)numel * (uint64_t)st_dtype_bits(t->dtype) == 8 * (uint64_t)t->nbytes,
               "tensor '%s': %lld elements x %d bits != %zu bytes", t->name, (long long)numel,
               st_dtype_bits(t->dtype), t->nbytes);
    int is_float = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
    float *buf = pc_malloc(sizeof(float) * (size_t)(numel + 1));
    int rc = st_read_f32(m, t->name, buf, (size_t)numel, &e);
    FUZZ_CHECK((rc == 0) == is_float, "tensor '%s' (%s): st_read_f32 returned %d: %s", t->name,
               st_dtype_name(t->dtype), rc, e.msg);
    if (is_float && t->ndim == 2 && numel > 0) {
        int64_t rows = t->shape[0], cols = t->shape[1];
        // [R, C] rows [R/2, R) -> [R - R/2, C]
        FUZZ_CHECK(st_read_rows_f32(m, t->name, rows / 2, rows - rows / 2, buf, &e) == 0, "rows: %s", e.msg);
        // [R, C] columns [C/2, C) -> [R, C - C/2]
        FUZZ_CHECK(st_read_cols_f32(m, t->name, cols / 2, cols - cols / 2, buf, &e) == 0, "cols: %s", e.msg);
        FUZZ_CHECK(st_read_rows_f32(m, t->name, rows, 1, buf, &e) != 0, "row past the end accepted");
        FUZZ_CHECK(st_read_cols_f32(m, t->name, -1, 1, buf, &e) != 0, "negative column accepted");
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600];
    snprintf(path, sizeof path, "%s/x.safetensors", fuzz_scratch_dir());
    fuzz_write(path, data, size);
    st_model *m = NULL;
    pc_err e = {{0}};
    if (st_open(path, &m, &e) != 0) {
        FUZZ_CHECK(m == NULL && e.msg[0] != '\0', "failed st_open left a model or no message");
        return 0;
    }
    for (int i = 0; i < st_count(m); i++) {
        const st_tensor *t = st_get(m, i);
        FUZZ_CHECK(st_find(m, t->name) == t, "tensor '%s' is not found by name", t->name);
        FUZZ_CHECK(strcmp(st_file_path(m, t), path) == 0, "tensor '%s' names another file", t->name);
        read_tensor(m, t);
    }
    FUZZ_CHECK(st_find(m, "\x01no such tensor") == NULL, "absent name found");
    st_close(m);
    return 0;
}
