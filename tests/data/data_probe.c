/* data_probe: a small command-line face of common/data for the h5py interop tests.
 *
 *   data_probe dump VOCAB GLOB...                 n_tokens on line 1, the tokens on line 2
 *   data_probe write PATH VOCAB EOS TOKENIZER N   token i = (i * 7919 + 13) % VOCAB
 *   data_probe batch VOCAB SEED STEP FIRST SEQ_LEN MICRO_BATCH GLOB...
 *                                                 the window starts, then the batch rows
 *   data_probe tokenizers VOCAB GLOB...           each glob a data set: "same", or the
 *                                                 message of data_tokenizers_differ
 * Errors go to stderr with exit status 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

static int fail(const pc_err *e) {
    fprintf(stderr, "%s\n", e->msg);
    return 1;
}

int main(int argc, char **argv) {
    pc_err e = {{0}};
    if (argc >= 4 && strcmp(argv[1], "dump") == 0) {
        data_set *d = NULL;
        if (data_open((const char *const *)argv + 3, argc - 3, atoi(argv[2]), 0, &d, &e)) return fail(&e);
        int64_t n = data_n_tokens(d);
        int32_t *t = malloc((size_t)(n ? n : 1) * sizeof *t);
        int rc = data_read(d, 0, n, t, &e);
        if (rc == 0) {
            printf("%lld\n", (long long)n);
            for (int64_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", t[i]);
            printf("\n");
        }
        free(t);
        data_close(d);
        return rc ? fail(&e) : 0;
    }
    if (argc == 7 && strcmp(argv[1], "write") == 0) {
        int vocab = atoi(argv[3]);
        int64_t n = atoll(argv[6]);
        uint32_t *t = malloc((size_t)(n ? n : 1) * sizeof *t);
        for (int64_t i = 0; i < n; i++) t[i] = (uint32_t)((i * 7919 + 13) % vocab);
        int rc = data_write_shard(argv[2], t, n, vocab, atoi(argv[4]), argv[5], &e);
        free(t);
        return rc ? fail(&e) : 0;
    }
    if (argc >= 9 && strcmp(argv[1], "batch") == 0) {
        int seq_len = atoi(argv[6]), mb = atoi(argv[7]);
        uint64_t seed = strtoull(argv[3], NULL, 10);
        int64_t step = atoll(argv[4]), first = atoll(argv[5]);
        data_set *d = NULL;
        if (data_open((const char *const *)argv + 8, argc - 8, atoi(argv[2]), seq_len + 1, &d, &e)) return fail(&e);
        for (int m = 0; m < mb; m++)
            printf("%s%lld", m ? " " : "", (long long)data_sample_offset(seed, step, first + m, data_n_tokens(d), seq_len));
        printf("\n");
        int32_t *t = malloc((size_t)mb * (size_t)(seq_len + 1) * sizeof *t);
        int rc = data_read_batch(d, seed, step, first, seq_len, mb, t, &e);
        for (int m = 0; rc == 0 && m < mb; m++) {
            // (micro_batch, seq_len+1): row m
            for (int i = 0; i <= seq_len; i++) printf("%s%d", i ? " " : "", t[(size_t)m * (size_t)(seq_len + 1) + (size_t)i]);
            printf("\n");
        }
        free(t);
        data_close(d);
        return rc ? fail(&e) : 0;
    }
    if (argc >= 4 && argc <= 11 && strcmp(argv[1], "tokenizers") == 0) {
        data_set *sets[8] = {0};
        int n = argc - 3, rc = 0;
        char msg[1024];
        for (int i = 0; i < n && rc == 0; i++)
            rc = data_open((const char *const *)argv + 3 + i, 1, atoi(argv[2]), 0, &sets[i], &e);
        if (rc == 0) printf("%s\n", data_tokenizers_differ((const data_set *const *)sets, n, msg, sizeof msg) ? msg : "same");
        for (int i = 0; i < n; i++) data_close(sets[i]);
        return rc ? fail(&e) : 0;
    }
    fprintf(stderr, "usage: data_probe dump VOCAB GLOB... | write PATH VOCAB EOS TOKENIZER N | "
                    "batch VOCAB SEED STEP FIRST SEQ_LEN MICRO_BATCH GLOB... | tokenizers VOCAB GLOB...\n");
    return 2;
}
