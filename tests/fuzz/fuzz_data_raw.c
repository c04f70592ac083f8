/* fuzz_data_raw: libFuzzer harness for the HDF5 token shard checks on arbitrary bytes.
 *
 * The input is written as shard.h5 and opened with data_open; when it opens, every token
 * is read (ids are checked against the shard's vocab_size on read). Arbitrary bytes reach
 * libhdf5's own file-format parser, which this harness exercises as a side effect; the
 * structured variant, fuzz_data_gen, maps the input to parameters of valid files. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[700];
    snprintf(path, sizeof path, "%s/shard.h5", fuzz_scratch_dir());
    fuzz_write(path, data, size);
    const char *globs[1] = {path};
    data_set *d = NULL;
    pc_err e = {{0}};
    if (data_open(globs, 1, 0, 1, &d, &e) != 0) {
        FUZZ_CHECK(d == NULL && e.msg[0] != '\0', "failed data_open left a data set or no message");
        return 0;
    }
    int64_t n = data_n_tokens(d);
    FUZZ_CHECK(n >= 1, "n_tokens %lld", (long long)n);
    if (n > 1 << 16) n = 1 << 16;
    int32_t *buf = pc_malloc(sizeof(int32_t) * (size_t)n);
    (void)data_read(d, 0, n, buf, &e);
    free(buf);
    data_close(d);
    return 0;
}
