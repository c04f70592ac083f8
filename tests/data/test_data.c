/* test_data: HDF5 token shards, the sample order and the prefetching loader.
 *
 * Shards are made in a fresh temporary directory, either with data_write_shard or, for
 * malformed ones, directly with the HDF5 C API. Every error case asserts a substring of
 * the message, which must name the file. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <hdf5.h>

#include "data.h"

typedef struct fixture {
    char dir[256];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/pc-test-data-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static const char *fpath(const fixture *f, const char *name) {
    static __thread char buf[4][512];
    static __thread int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", f->dir, name);
    return buf[k];
}

/* Token i of a test stream. */
static uint32_t tok(int64_t i, int vocab) { return (uint32_t)((i * 7919 + 13) % vocab); }

static void write_stream(const char *path, int64_t first, int64_t n, int vocab) {
    uint32_t *t = malloc((size_t)(n ? n : 1) * sizeof *t);
    for (int64_t i = 0; i < n; i++) t[i] = tok(first + i, vocab);
    pc_err e = {{0}};
    int rc = data_write_shard(path, t, n, vocab, 0, "test", &e);
    if (rc) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    free(t);
}

static data_set *open1(const char *glob, int vocab, int64_t min_tokens) {
    pc_err e = {{0}};
    data_set *d = NULL;
    int rc = data_open(&glob, 1, vocab, min_tokens, &d, &e);
    if (rc) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    return d;
}

/* Expect data_open to fail with a message holding `want` (and the file name `name`). */
static void expect_open_error(const char *glob, int vocab, int64_t min_tokens, const char *want, const char *name) {
    pc_err e = {{0}};
    data_set *d = NULL;
    assert_int_equal(data_open(&glob, 1, vocab, min_tokens, &d, &e), -1);
    assert_null(d);
    if (!strstr(e.msg, want) || (name && !strstr(e.msg, name)))
        fail_msg("message '%s' lacks '%s' or '%s'", e.msg, want, name ? name : "");
}

/* A shard made with the raw HDF5 API: dataset `dset` of file type `ftype` with `rank`
 * dims, filled from uint32 values; attributes on the root group, each optional. */
typedef struct raw_shard {
    const char *dset;
    hid_t ftype;
    int rank;
    hsize_t dims[2];
    const uint32_t *values;
    int vocab_size, eos_id; /* < 0: attribute left out */
    const char *tokenizer;  /* NULL: left out */
} raw_shard;

static void write_raw(const char *path, const raw_shard *r) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t sp = H5Screate_simple(r->rank, r->dims, NULL);
    hid_t ds = H5Dcreate2(f, r->dset, r->ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(ds >= 0);
    if (H5Tget_class(r->ftype) == H5T_FLOAT) {
        hsize_t n = r->dims[0] * (r->rank > 1 ? r->dims[1] : 1);
        float *v = calloc(n, sizeof *v);
        assert_true(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
        free(v);
    } else {
        assert_true(H5Dwrite(ds, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, r->values) >= 0);
    }
    H5Dclose(ds);
    H5Sclose(sp);
    hid_t sc = H5Screate(H5S_SCALAR);
    if (r->vocab_size >= 0) {
        hid_t a = H5Acreate2(f, "vocab_size", H5T_STD_I32LE, sc, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT, &r->vocab_size);
        H5Aclose(a);
    }
    if (r->eos_id >= 0) {
        hid_t a = H5Acreate2(f, "eos_id", H5T_STD_I32LE, sc, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT, &r->eos_id);
        H5Aclose(a);
    }
    if (r->tokenizer) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, strlen(r->tokenizer));
        hid_t a = H5Acreate2(f, "tokenizer", t, sc, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, t, r->tokenizer);
        H5Aclose(a);
        H5Tclose(t);
    }
    H5Sclose(sc);
    H5Fclose(f);
}

static const uint32_t small_values[8] = {1, 2, 3, 4, 5, 0, 7, 0};

static raw_shard good_raw(void) {
    raw_shard r = {"tokens", H5T_STD_U16LE, 1, {8, 0}, small_values, 256, 0, "bytes"};
    return r;
}

/* ---------------------------------------------------------------- tests */

static void test_write_read_roundtrip(void **state) {
    fixture *f = *state;
    const int vocabs[2] = {1000, 100000};
    const int bits[2] = {16, 32};
    for (int k = 0; k < 2; k++) {
        const char *p = fpath(f, k ? "big.h5" : "small.h5");
        write_stream(p, 0, 5000, vocabs[k]);
        data_set *d = open1(p, vocabs[k], 2);
        assert_int_equal(data_n_shards(d), 1);
        assert_int_equal(data_n_tokens(d), 5000);
        data_shard_info info;
        data_shard_get_info(d, 0, &info);
        assert_int_equal(info.token_bits, bits[k]);
        assert_int_equal(info.vocab_size, vocabs[k]);
        assert_int_equal(info.eos_id, 0);
        assert_string_equal(info.tokenizer, "test");
        int32_t *buf = malloc(5000 * sizeof *buf);
        pc_err e = {{0}};
        assert_int_equal(data_read(d, 0, 5000, buf, &e), 0);
        for (int64_t i = 0; i < 5000; i++) assert_int_equal(buf[i], (int32_t)tok(i, vocabs[k]));
        assert_int_equal(data_read(d, 4990, 11, buf, &e), -1);
        assert_non_null(strstr(e.msg, "outside"));
        free(buf);
        data_close(d);
        /* No temporary file is left behind. */
        char tmp[600];
        snprintf(tmp, sizeof tmp, "%s.tmp", p);
        assert_int_not_equal(access(tmp, F_OK), 0);
    }
}

static void test_raw_root_attrs(void **state) {
    fixture *f = *state;
    raw_shard r = good_raw();
    r.ftype = H5T_STD_U32LE;
    const char *p = fpath(f, "root-attrs.h5");
    write_raw(p, &r);
    data_set *d = open1(p, 300, 0);
    data_shard_info info;
    data_shard_get_info(d, 0, &info);
    assert_int_equal(info.token_bits, 32);
    assert_int_equal(info.vocab_size, 256);
    assert_string_equal(info.tokenizer, "bytes");
    int32_t buf[8];
    pc_err e = {{0}};
    assert_int_equal(data_read(d, 0, 8, buf, &e), 0);
    for (int i = 0; i < 8; i++) assert_int_equal(buf[i], (int32_t)small_values[i]);
    data_close(d);
}

/* Windows across shard boundaries (including an empty shard) read the concatenated stream. */
static void test_windows_span_shards(void **state) {
    fixture *f = *state;
    const int64_t sizes[4] = {50, 0, 70, 31};
    const char *names[4] = {"span-a.h5", "span-b.h5", "span-c.h5", "span-d.h5"};
    int64_t first = 0;
    for (int k = 0; k < 4; k++) {
        write_stream(fpath(f, names[k]), first, sizes[k], 500);
        first += sizes[k];
    }
    data_set *d = open1(fpath(f, "span-*.h5"), 500, 0);
    assert_int_equal(data_n_shards(d), 4);
    assert_int_equal(data_n_tokens(d), first);
    int32_t buf[151];
    pc_err e = {{0}};
    for (int64_t len = 1; len <= 151; len += 30) {
        for (int64_t off = 0; off + len <= first; off++) {
            assert_int_equal(data_read(d, off, len, buf, &e), 0);
            for (int64_t i = 0; i < len; i++) assert_int_equal(buf[i], (int32_t)tok(off + i, 500));
        }
    }
    data_close(d);
    /* Several globs: concatenated in the order given, each sorted. */
    const char *globs[2] = {fpath(f, "span-[cd].h5"), fpath(f, "span-a.h5")};
    data_set *d2 = NULL;
    assert_int_equal(data_open(globs, 2, 500, 0, &d2, &e), 0);
    assert_int_equal(data_n_tokens(d2), 70 + 31 + 50);
    assert_int_equal(data_read(d2, 0, 1, buf, &e), 0);
    assert_int_equal(buf[0], (int32_t)tok(50, 500));
    assert_int_equal(data_read(d2, 101, 1, buf, &e), 0);
    assert_int_equal(buf[0], (int32_t)tok(0, 500));
    data_close(d2);
}

static void test_sampler(void **state) {
    (void)state;
    const int64_t n = 1000;
    const int T = 100;
    int64_t lo = n, hi = -1;
    int same_as_step0 = 0;
    for (int64_t s = 0; s < 5000; s++) {
        int64_t o = data_sample_offset(42, 3, s, n, T);
        assert_true(o >= 0 && o <= n - T - 1);
        assert_int_equal(o, data_sample_offset(42, 3, s, n, T));
        lo = o < lo ? o : lo;
        hi = o > hi ? o : hi;
        same_as_step0 += o == data_sample_offset(42, 4, s, n, T);
    }
    assert_int_equal(lo, 0);
    assert_int_equal(hi, n - T - 1);
    assert_true(same_as_step0 < 50); /* other steps give other windows */
    int same_seed = 0;
    for (int64_t s = 0; s < 1000; s++) same_seed += data_sample_offset(1, 0, s, n, T) == data_sample_offset(2, 0, s, n, T);
    assert_true(same_seed < 20);
    /* The smallest legal stream has exactly one window. */
    assert_int_equal(data_sample_offset(7, 0, 0, T + 1, T), 0);
    assert_int_equal(data_sample_offset(7, 0, 0, T, T), -1);
    assert_int_equal(data_eval_offset(3, 128), 384);
    assert_int_equal(data_eval_n_windows(129, 128), 1);
    assert_int_equal(data_eval_n_windows(1000, 100), 9);
    assert_int_equal(data_eval_n_windows(100, 100), 0);
}

/* Ranks 1, 2 and 4 split a global batch of 8; the windows read per sample are identical. */
static void test_rank_count_independence(void **state) {
    fixture *f = *state;
    write_stream(fpath(f, "rk-0.h5"), 0, 300, 777);
    write_stream(fpath(f, "rk-1.h5"), 300, 200, 777);
    data_set *d = open1(fpath(f, "rk-*.h5"), 777, 33);
    enum { GB = 8, T = 32, STEPS = 3 };
    static int32_t ref[STEPS][GB][T + 1], got[STEPS][GB][T + 1];
    pc_err e = {{0}};
    for (int step = 0; step < STEPS; step++)
        for (int s = 0; s < GB; s++)
            assert_int_equal(data_read(d, data_sample_offset(9, step, s, 500, T), T + 1, ref[step][s], &e), 0);
    const int ranks[3] = {1, 2, 4};
    for (int k = 0; k < 3; k++) {
        int R = ranks[k], per_rank = GB / R, mb = per_rank >= 2 ? 2 : 1;
        memset(got, 0xff, sizeof got);
        for (int step = 0; step < STEPS; step++)
            for (int r = 0; r < R; r++)
                for (int m = 0; m < per_rank / mb; m++) {
                    int first = r * per_rank + m * mb;
                    assert_int_equal(data_read_batch(d, 9, step, first, T, mb, got[step][first], &e), 0);
                }
        assert_memory_equal(got, ref, sizeof ref);
    }
    data_close(d);
}

/* The loader gives the same batches as synchronous reads, for sequential gets, hinted
 * step changes and unexpected jumps. */
static void test_prefetch_equals_sync(void **state) {
    fixture *f = *state;
    write_stream(fpath(f, "pf-0.h5"), 0, 4000, 3000);
    write_stream(fpath(f, "pf-1.h5"), 4000, 3000, 3000);
    data_set *d = open1(fpath(f, "pf-*.h5"), 3000, 65);
    enum { T = 64, MB = 3 };
    int32_t a[MB * (T + 1)], b[MB * (T + 1)];
    data_loader *dl = NULL;
    pc_err e = {{0}};
    assert_int_equal(data_loader_create(d, 5, T, MB, &dl, &e), 0);
    int64_t gets = 0;
    for (int64_t step = 0; step < 6; step++) {
        for (int m = 0; m < 4; m++) {
            int64_t first = 12 + m * MB;
            if (step == 4 && m == 2) first = 100; /* jump: falls back to a synchronous read */
            assert_int_equal(data_loader_get(dl, step, first, a, &e), 0);
            gets++;
            assert_int_equal(data_read_batch(d, 5, step, first, T, MB, b, &e), 0);
            assert_memory_equal(a, b, sizeof a);
            if (m == 3 && step != 2) data_loader_hint(dl, step + 1, 12);
        }
    }
    /* Misses: the first get, the jump, the get after it, and step 3's first get (no hint). */
    int64_t hits = data_loader_n_prefetch_hits(dl);
    assert_int_equal(hits, gets - 4);
    data_loader_destroy(dl);
    data_close(d);
}

static void test_error_token_out_of_range(void **state) {
    fixture *f = *state;
    uint32_t v[8] = {1, 2, 3, 4, 5, 300, 7, 0};
    raw_shard r = good_raw();
    r.values = v;
    const char *p = fpath(f, "bad-token.h5");
    write_raw(p, &r);
    data_set *d = open1(p, 256, 0);
    int32_t buf[8];
    pc_err e = {{0}};
    assert_int_equal(data_read(d, 0, 5, buf, &e), 0);
    assert_int_equal(data_read(d, 2, 6, buf, &e), -1);
    assert_non_null(strstr(e.msg, "bad-token.h5: token 300 at index 5 >= vocab_size 256"));
    data_close(d);
    /* The writer refuses such a token too. */
    assert_int_equal(data_write_shard(fpath(f, "w.h5"), v, 8, 256, 0, "bytes", &e), -1);
    assert_non_null(strstr(e.msg, "w.h5: token 300 at index 5 >= vocab_size 256"));
    assert_int_not_equal(access(fpath(f, "w.h5"), F_OK), 0);
}

/* A shard cut short while the set is open (HDF5 would read what is gone as zeros, valid
 * tokens): the next read fails naming the file, whether its handles stayed open or not. */
static void test_error_shard_cut_short(void **state) {
    fixture *f = *state;
    const char *p = fpath(f, "cut.h5");
    write_stream(p, 0, 300000, 1000);
    data_set *d = open1(p, 1000, 0);
    int32_t buf[64];
    pc_err e = {{0}};
    assert_int_equal(data_read(d, 250000, 64, buf, &e), 0); /* handles open */
    assert_int_equal(truncate(p, 100000), 0);
    assert_int_equal(data_read(d, 250000, 64, buf, &e), -1);
    assert_non_null(strstr(e.msg, "cut.h5: changed since the run opened it (100000 bytes, was "));
    data_close(d);
}

/* data_fill_fn: token i is i % 251, except at *(int64_t *)ctx, where the fill fails
 * (bad < 0) or writes 300 (an out-of-range token, bad = ~index). */
static int fill_pattern(void *ctx, int64_t at, int64_t len, uint32_t *dst, pc_err *e) {
    int64_t bad = *(const int64_t *)ctx;
    if (bad >= 0 && bad >= at && bad < at + len) return pc_errorf(e, "fill failed at %lld", (long long)bad);
    for (int64_t i = 0; i < len; i++) dst[i] = (at + i) == ~bad ? 300u : (uint32_t)((at + i) % 251);
    return 0;
}

/* A shard written in pieces reads back whole; a fill error or a bad token in a later piece
 * leaves neither the shard nor its temporary file, and names the token's index. */
static void test_write_in_pieces(void **state) {
    fixture *f = *state;
    const int64_t n = ((int64_t)1 << 21) + 7; /* three pieces, the last short */
    const char *p = fpath(f, "pieces.h5");
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    pc_err e = {{0}};
    int64_t fail_at[] = {((int64_t)1 << 20) + 3, ~(((int64_t)1 << 21) + 2)};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(data_write_shard_fill(p, n, fill_pattern, &fail_at[k], 256, 0, "bytes", &e), -1);
        assert_non_null(strstr(e.msg, k == 0 ? "fill failed at 1048579" : "pieces.h5: token 300 at index 2097154"));
        assert_int_not_equal(access(p, F_OK), 0);
        assert_int_not_equal(access(tmp, F_OK), 0);
    }
    int64_t none = n;
    assert_int_equal(data_write_shard_fill(p, n, fill_pattern, &none, 256, 0, "bytes", &e), 0);
    data_set *d = open1(p, 256, 0);
    assert_int_equal(data_n_tokens(d), n);
    int32_t *buf = pc_malloc(sizeof(int32_t) * (size_t)n);
    assert_int_equal(data_read(d, 0, n, buf, &e), 0);
    for (int64_t i = 0; i < n; i++)
        if (buf[i] != (int32_t)(i % 251)) fail_msg("token %lld: %d", (long long)i, buf[i]);
    free(buf);
    data_close(d);
}

static void test_error_missing_tokens(void **state) {
    fixture *f = *state;
    raw_shard r = good_raw();
    r.dset = "ids";
    write_raw(fpath(f, "no-tokens.h5"), &r);
    expect_open_error(fpath(f, "no-tokens.h5"), 256, 0, "no dataset /tokens", "no-tokens.h5");
}

static void test_error_missing_attribute(void **state) {
    fixture *f = *state;
    raw_shard r = good_raw();
    r.eos_id = -1;
    write_raw(fpath(f, "no-eos.h5"), &r);
    expect_open_error(fpath(f, "no-eos.h5"), 256, 0, "missing attribute 'eos_id'", "no-eos.h5");
    r = good_raw();
    r.tokenizer = NULL;
    write_raw(fpath(f, "no-tok.h5"), &r);
    expect_open_error(fpath(f, "no-tok.h5"), 256, 0, "missing attribute 'tokenizer'", "no-tok.h5");
    r = good_raw();
    r.vocab_size = -1;
    write_raw(fpath(f, "no-vocab.h5"), &r);
    expect_open_error(fpath(f, "no-vocab.h5"), 256, 0, "missing attribute 'vocab_size'", "no-vocab.h5");
}

static void test_error_vocab_too_large(void **state) {
    fixture *f = *state;
    raw_shard r = good_raw();
    write_raw(fpath(f, "v256.h5"), &r);
    expect_open_error(fpath(f, "v256.h5"), 200, 0, "vocab_size = 256 exceeds the model's vocab_size 200", "v256.h5");
}

static void test_error_wrong_dtype(void **state) {
    fixture *f = *state;
    raw_shard r = good_raw();
    r.ftype = H5T_IEEE_F32LE;
    write_raw(fpath(f, "float.h5"), &r);
    expect_open_error(fpath(f, "float.h5"), 256, 0, "/tokens has type float32; expected uint16 or uint32", "float.h5");
    r = good_raw();
    r.ftype = H5T_STD_I32LE;
    write_raw(fpath(f, "int32.h5"), &r);
    expect_open_error(fpath(f, "int32.h5"), 256, 0, "/tokens has type int32", "int32.h5");
    r = good_raw();
    r.rank = 2;
    r.dims[0] = 2;
    r.dims[1] = 4;
    write_raw(fpath(f, "twod.h5"), &r);
    expect_open_error(fpath(f, "twod.h5"), 256, 0, "/tokens must be 1-D, has 2 dimensions", "twod.h5");
}

static void test_error_too_short(void **state) {
    fixture *f = *state;
    write_stream(fpath(f, "short-0.h5"), 0, 60, 256);
    write_stream(fpath(f, "short-1.h5"), 60, 40, 256);
    expect_open_error(fpath(f, "short-*.h5"), 256, 129, "shards hold 100 tokens, seq_len 128 needs at least 129",
                      NULL);
    data_set *d = open1(fpath(f, "short-*.h5"), 256, 100);
    data_loader *dl = NULL;
    pc_err e = {{0}};
    assert_int_equal(data_loader_create(d, 1, 100, 1, &dl, &e), -1);
    assert_non_null(strstr(e.msg, "needs at least 101"));
    assert_int_equal(data_loader_create(d, 1, INT_MAX, 1, &dl, &e), -1); /* seq_len + 1 past an int */
    assert_non_null(strstr(e.msg, "seq_len 2147483647 needs at least 2147483648"));
    data_close(d);
}

static void test_error_glob_no_match(void **state) {
    fixture *f = *state;
    expect_open_error(fpath(f, "nothing-*.h5"), 256, 0, "nothing-*.h5: no file matches", NULL);
    /* A later glob that matches nothing is caught too. */
    write_stream(fpath(f, "g.h5"), 0, 10, 256);
    const char *globs[2] = {fpath(f, "g.h5"), fpath(f, "missing.h5")};
    pc_err e = {{0}};
    data_set *d = NULL;
    assert_int_equal(data_open(globs, 2, 256, 0, &d, &e), -1);
    assert_non_null(strstr(e.msg, "missing.h5: no file matches"));
}

static void test_error_not_hdf5(void **state) {
    fixture *f = *state;
    const char *p = fpath(f, "text.h5");
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs("this is not an HDF5 file\n", fp);
    fclose(fp);
    expect_open_error(p, 256, 0, "text.h5: not an HDF5 file", NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_read_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_root_attrs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_windows_span_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sampler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rank_count_independence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_equals_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_token_out_of_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_shard_cut_short, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_missing_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_missing_attribute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_vocab_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_wrong_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_too_short, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_glob_no_match, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_not_hdf5, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_in_pieces, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
