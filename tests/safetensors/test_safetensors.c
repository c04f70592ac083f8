/* Unit tests of the safetensors reader and writer: round trips in every float dtype,
 * row/column slices, strict header validation on hand-made files (truncation, lying
 * header length, offsets outside, overlap, wrong byte length, unknown dtype, bad
 * JSON), sharded models with their index, and atomic replacement of outputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "json.h"
#include "safetensors.h"

typedef struct fixture {
    char dir[256];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (test_mkdtemp(f->dir, sizeof f->dir, "st") != 0) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (test_rmtree(f->dir) != 0) return -1;
    free(f);
    return 0;
}

static void path_in(const fixture *f, const char *name, char *out, size_t n) {
    snprintf(out, n, "%s/%s", f->dir, name);
}

/* Writes u64 hlen, then header text, then data_len bytes 0..255 repeating. */
static void write_raw(const char *path, uint64_t hlen, const char *header, size_t data_len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fwrite(&hlen, 8, 1, fp);
    fwrite(header, 1, strlen(header), fp);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xFF), fp);
    fclose(fp);
}

static void write_hdr(const char *path, const char *header, size_t data_len) {
    write_raw(path, strlen(header), header, data_len);
}

static void expect_open_fail(const char *path, const char *s1, const char *s2) {
    st_model *m = (st_model *)0x1;
    pc_err e = {{0}};
    assert_int_equal(st_open(path, &m, &e), -1);
    assert_null(m);
    if (!strstr(e.msg, s1) || (s2 && !strstr(e.msg, s2)))
        fail_msg("error '%s' lacks '%s' / '%s'", e.msg, s1, s2 ? s2 : "");
}

static st_model *open_ok(const char *path) {
    st_model *m = NULL;
    pc_err e = {{0}};
    if (st_open(path, &m, &e) != 0) fail_msg("st_open %s: %s", path, e.msg);
    return m;
}

static float *ramp(size_t n, float scale) {
    float *x = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = scale * ((float)i - (float)n / 3.0f) + 0.125f;
    return x;
}

static void test_roundtrip(void **state) {
    fixture *f = *state;
    const st_dtype dts[] = {ST_F32, ST_BF16, ST_F16};
    float *a = ramp(6 * 5, 0.37f), *b = ramp(7, -1.5f), s = 3.25f;
    for (size_t k = 0; k < PC_ARRAY_LEN(dts); k++) {
        char path[512];
        path_in(f, "rt.safetensors", path, sizeof path);
        st_item items[3] = {
            {.name = "layer.weight", .ndim = 2, .shape = {6, 5}, .data = a},
            {.name = "bias", .ndim = 1, .shape = {7}, .data = b},
            {.name = "scalar", .ndim = 0, .data = &s},
        };
        pc_err e = {{0}};
        assert_int_equal(st_write(path, items, 3, dts[k], &e), 0);
        /* data section 8-byte aligned, metadata present */
        FILE *fp = fopen(path, "rb");
        uint64_t hlen;
        assert_int_equal(fread(&hlen, 8, 1, fp), 1);
        char *hdr = calloc(1, hlen + 1);
        assert_int_equal(fread(hdr, 1, hlen, fp), hlen);
        fclose(fp);
        assert_int_equal((8 + hlen) % 8, 0);
        assert_non_null(strstr(hdr, "\"__metadata__\":{\"format\":\"pt\"}"));
        free(hdr);

        st_model *m = open_ok(path);
        assert_int_equal(st_count(m), 3);
        const st_tensor *t = st_find(m, "layer.weight");
        assert_non_null(t);
        assert_int_equal(t->dtype, dts[k]);
        assert_int_equal(t->ndim, 2);
        assert_int_equal(t->shape[0], 6);
        assert_int_equal(t->shape[1], 5);
        assert_int_equal(t->nbytes, 30 * st_dtype_size(dts[k]));
        assert_null(st_find(m, "nope"));
        float got[30];
        assert_int_equal(st_read_f32(m, "layer.weight", got, 30, &e), 0);
        for (int i = 0; i < 30; i++) {
            float want = dts[k] == ST_F32    ? a[i]
                         : dts[k] == ST_BF16 ? pc_bf16_to_f32(pc_f32_to_bf16(a[i]))
                                             : pc_f16_to_f32(pc_f32_to_f16(a[i]));
            assert_true(got[i] == want);
        }
        float sc;
        assert_int_equal(st_read_f32(m, "scalar", &sc, 1, &e), 0);
        assert_true(sc == 3.25f);
        /* wrong element count */
        assert_int_equal(st_read_f32(m, "bias", got, 6, &e), -1);
        assert_non_null(strstr(e.msg, "'bias'"));
        assert_int_equal(st_read_f32(m, "absent", got, 6, &e), -1);
        assert_non_null(strstr(e.msg, "'absent' not found"));
        st_close(m);
        /* no temp file left behind */
        DIR *d = opendir(f->dir);
        struct dirent *de;
        while ((de = readdir(d)) != NULL) assert_null(strstr(de->d_name, ".tmp"));
        closedir(d);
    }
    free(a);
    free(b);
}

static void test_slices(void **state) {
    fixture *f = *state;
    const int R = 9, C = 7;
    float *a = ramp((size_t)(R * C), 0.731f);
    const st_dtype dts[] = {ST_F32, ST_BF16, ST_F16};
    for (size_t k = 0; k < PC_ARRAY_LEN(dts); k++) {
        char path[512];
        path_in(f, "sl.safetensors", path, sizeof path);
        st_item items[2] = {{.name = "w", .ndim = 2, .shape = {R, C}, .data = a},
                            {.name = "v", .ndim = 1, .shape = {C}, .data = a}};
        pc_err e = {{0}};
        assert_int_equal(st_write(path, items, 2, dts[k], &e), 0);
        st_model *m = open_ok(path);
        float full[63], part[63];
        assert_int_equal(st_read_f32(m, "w", full, (size_t)(R * C), &e), 0);
        // rows [2, 6) of [9, 7] -> [4, 7]
        assert_int_equal(st_read_rows_f32(m, "w", 2, 4, part, &e), 0);
        for (int i = 0; i < 4 * C; i++) assert_true(part[i] == full[2 * C + i]);
        // cols [3, 5) of [9, 7] -> [9, 2]
        assert_int_equal(st_read_cols_f32(m, "w", 3, 2, part, &e), 0);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 2; c++) assert_true(part[r * 2 + c] == full[r * C + 3 + c]);
        /* empty slices at the edge are fine; out of range ones are not */
        assert_int_equal(st_read_rows_f32(m, "w", R, 0, part, &e), 0);
        assert_int_equal(st_read_rows_f32(m, "w", 7, 3, part, &e), -1);
        assert_non_null(strstr(e.msg, "'w'"));
        assert_int_equal(st_read_rows_f32(m, "w", -1, 1, part, &e), -1);
        assert_int_equal(st_read_cols_f32(m, "w", 6, 2, part, &e), -1);
        assert_int_equal(st_read_cols_f32(m, "w", 0, -1, part, &e), -1);
        assert_int_equal(st_read_cols_f32(m, "v", 0, 1, part, &e), -1);
        assert_non_null(strstr(e.msg, "2"));
        st_close(m);
    }
    free(a);
}

static void test_header_errors(void **state) {
    fixture *f = *state;
    char p[512];
    path_in(f, "bad.safetensors", p, sizeof p);
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    /* the valid reference opens */
    write_hdr(p, ok, 8);
    st_close(open_ok(p));

    FILE *fp = fopen(p, "wb");
    fwrite("abc", 1, 3, fp);
    fclose(fp);
    expect_open_fail(p, "bad.safetensors", "too short");

    fp = fopen(p, "wb");
    fclose(fp);
    expect_open_fail(p, "bad.safetensors", "too short");

    write_raw(p, strlen(ok) + 100, ok, 8); /* header length lying (beyond the file) */
    expect_open_fail(p, "bad.safetensors", "exceeds the file size");
    write_raw(p, 1, ok, 8);
    expect_open_fail(p, "bad.safetensors", "too small");
    write_raw(p, (uint64_t)200 * 1000 * 1000, ok, 8);
    expect_open_fail(p, "bad.safetensors", "100 MB");
    write_raw(p, UINT64_MAX, ok, 8);
    expect_open_fail(p, "bad.safetensors", "header length");

    write_hdr(p, ok, 7); /* data truncated */
    expect_open_fail(p, "'a'", "outside the data section");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]} ", 8);
    expect_open_fail(p, "bad.safetensors", "JSON");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}x", 8);
    expect_open_fail(p, "bad.safetensors", "trailing");
    write_hdr(p, "[1,2]", 8);
    expect_open_fail(p, "bad.safetensors", "JSON object");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8);
    expect_open_fail(p, "'a'", "outside the data section");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8);
    expect_open_fail(p, "'a'", "begin 8 > end 0");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 12);
    expect_open_fail(p, "'a'", "byte length 8");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[6,10]}}",
              16);
    expect_open_fail(p, "overlap", "'b'");
    write_hdr(p, "{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16);
    expect_open_fail(p, "'a'", "unknown dtype 'F128'");
    /* every dtype of the format opens, packed ones by bits (a whole number of bytes) */
    write_hdr(p, "{\"a\":{\"dtype\":\"C64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                 "\"b\":{\"dtype\":\"F8_E8M0\",\"shape\":[3],\"data_offsets\":[16,19]},"
                 "\"c\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[19,22]},"
                 "\"d\":{\"dtype\":\"F6_E3M2\",\"shape\":[4],\"data_offsets\":[22,25]}}",
              25);
    st_model *m = open_ok(p);
    assert_int_equal(st_find(m, "c")->dtype, ST_F4);
    float vals[6];
    pc_err e = {{0}};
    assert_int_equal(st_read_f32(m, "c", vals, 6, &e), -1); /* opened, not read as values */
    assert_non_null(strstr(e.msg, "has dtype F4"));
    st_close(m);
    write_hdr(p, "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2);
    expect_open_fail(p, "'a'", "byte length 2"); /* 12 bits: not whole bytes */
    write_hdr(p, "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_open_fail(p, "'a'", "dtype");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8);
    expect_open_fail(p, "'a'", "shape");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
    expect_open_fail(p, "'a'", "data_offsets");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8);
    expect_open_fail(p, "'a'", "data_offsets");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
    expect_open_fail(p, "'a'", "shape[0]");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8);
    expect_open_fail(p, "'a'", "shape[0]");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}", 8);
    expect_open_fail(p, "'a'", "byte length");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8);
    expect_open_fail(p, "'a'", "unknown header field 'x'");
    write_hdr(p, "{\"a\":[1]}", 8);
    expect_open_fail(p, "'a'", "object");
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
              8);
    expect_open_fail(p, "bad.safetensors", "duplicate key 'a'");
    write_hdr(p, "{\"__metadata__\":{\"format\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
              8);
    expect_open_fail(p, "__metadata__", "'format'");
    write_hdr(p, "{\"__metadata__\":[],\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_open_fail(p, "__metadata__", "object");

    path_in(f, "missing.safetensors", p, sizeof p);
    expect_open_fail(p, "missing.safetensors", "cannot open");
}

static void test_header_accepts(void **state) {
    fixture *f = *state;
    char p[512];
    path_in(f, "ok.safetensors", p, sizeof p);
    /* metadata with strings, empty tensor anywhere, integer dtypes, holes between tensors,
     * unaligned data start */
    write_hdr(p, "{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"},"
                 "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                 "\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                 "\"u\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[10,12]},"
                 "\"h\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[12,16]},"
                 "\"k\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[16,20]}}",
              21);
    st_model *m = open_ok(p);
    assert_int_equal(st_count(m), 5);
    const st_tensor *t = st_find(m, "u");
    assert_non_null(t);
    assert_int_equal(t->data[0], 10);
    assert_int_equal(st_numel(st_find(m, "e")), 0);
    assert_int_equal(st_numel(st_find(m, "k")), 1);
    float x[2];
    pc_err e = {{0}};
    assert_int_equal(st_read_f32(m, "i", x, 1, &e), -1);
    assert_non_null(strstr(e.msg, "'i'"));
    assert_non_null(strstr(e.msg, "I64"));
    assert_int_equal(st_read_f32(m, "e", x, 0, &e), 0);
    assert_int_equal(st_read_rows_f32(m, "h", 0, 1, x, &e), 0);
    assert_true(x[0] == pc_bf16_to_f32((uint16_t)(12 | (13 << 8))));
    assert_string_equal(st_file_path(m, t), p);
    st_close(m);
}

static void test_dtype_parse(void **state) {
    (void)state;
    st_dtype d;
    assert_int_equal(st_dtype_parse("bf16", &d), 0);
    assert_int_equal(d, ST_BF16);
    assert_int_equal(st_dtype_parse("float32", &d), 0);
    assert_int_equal(d, ST_F32);
    assert_int_equal(st_dtype_parse("float16", &d), 0);
    assert_int_equal(d, ST_F16);
    assert_int_equal(st_dtype_parse("int8", &d), -1);
    assert_string_equal(st_dtype_name(ST_BF16), "BF16");
    assert_int_equal(st_dtype_size(ST_I64), 8);
}

static int count_files(const char *dir, const char *substr) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, substr)) n++;
    closedir(d);
    return n;
}

static void test_sharded(void **state) {
    fixture *f = *state;
    char dir[512], p[600];
    path_in(f, "model", dir, sizeof dir);
    float *a = ramp(100, 0.01f);
    st_item items[5];
    char names[5][32];
    for (int i = 0; i < 5; i++) {
        snprintf(names[i], sizeof names[i], "t%d", i);
        items[i] = (st_item){.name = names[i], .ndim = 2, .shape = {10, 10}, .data = a};
    }
    pc_err e = {{0}};
    /* 400 bytes each in f32; 900-byte shards hold two -> 3 shards */
    assert_int_equal(st_write_model(dir, items, 5, ST_F32, 900, &e), 0);
    assert_int_equal(count_files(dir, "-of-00003.safetensors"), 3);
    assert_int_equal(count_files(dir, "model.safetensors.index.json"), 1);
    assert_int_equal(count_files(dir, ".tmp"), 0);
    st_model *m = open_ok(dir);
    assert_int_equal(st_count(m), 5);
    float got[100];
    for (int i = 0; i < 5; i++) {
        assert_int_equal(st_read_f32(m, names[i], got, 100, &e), 0);
        assert_memory_equal(got, a, sizeof got);
    }
    assert_non_null(strstr(st_file_path(m, st_find(m, "t4")), "model-00003-of-00003.safetensors"));
    st_close(m);
    /* the index file itself can be opened */
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    st_close(open_ok(p));
    char *text;
    size_t len;
    assert_int_equal(pc_read_file(p, &text, &len, &e), 0);
    json_val *root;
    assert_int_equal(json_parse(text, len, &root, &e), 0);
    int64_t total;
    assert_int_equal(json_int(json_get(json_get(root, "metadata"), "total_size"), &total), 0);
    assert_int_equal(total, 2000);
    assert_string_equal(json_str(json_get(json_get(root, "weight_map"), "t2")), "model-00002-of-00003.safetensors");
    json_free(root);
    free(text);

    /* rewriting as 2 shards removes the stale 3-shard files */
    assert_int_equal(st_write_model(dir, items, 5, ST_BF16, 600, &e), 0);
    assert_int_equal(count_files(dir, "-of-00003."), 0);
    assert_int_equal(count_files(dir, "-of-00002."), 2);
    /* rewriting as one file removes shards and index */
    assert_int_equal(st_write_model(dir, items, 5, ST_F32, 0, &e), 0);
    assert_int_equal(count_files(dir, "-of-"), 0);
    assert_int_equal(count_files(dir, "index.json"), 0);
    assert_int_equal(count_files(dir, "model.safetensors"), 1);
    /* a failed write (duplicate names) leaves the existing model untouched */
    items[1].name = "t0";
    assert_int_equal(st_write_model(dir, items, 5, ST_F32, 900, &e), -1);
    assert_non_null(strstr(e.msg, "'t0'"));
    items[1].name = names[1];
    assert_int_equal(count_files(dir, "-of-"), 0);
    assert_int_equal(count_files(dir, ".tmp"), 0);
    m = open_ok(dir);
    assert_int_equal(st_count(m), 5);
    st_close(m);
    /* back to shards: the single file must go, or transformers would load it */
    assert_int_equal(st_write_model(dir, items, 5, ST_F32, 900, &e), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(access(p, F_OK), -1);
    free(a);
}

static void test_index_errors(void **state) {
    fixture *f = *state;
    char dir[512], p[600];
    path_in(f, "idx", dir, sizeof dir);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/s1.safetensors", dir);
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"extra\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
              12);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    pc_err e = {{0}};
    const char *good = "{\"metadata\":{\"total_size\":8},\"weight_map\":{\"a\":\"s1.safetensors\"}}";
    assert_int_equal(pc_write_file_atomic(p, good, strlen(good), &e), 0);
    st_model *m = open_ok(dir); /* 'extra' in the shard but not the index is fine */
    assert_int_equal(st_count(m), 1);
    assert_non_null(st_find(m, "a"));
    st_close(m);

    const char *missing = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}";
    assert_int_equal(pc_write_file_atomic(p, missing, strlen(missing), &e), 0);
    expect_open_fail(dir, "s2.safetensors", "does not exist");
    const char *absent = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"zz\":\"s1.safetensors\"}}";
    assert_int_equal(pc_write_file_atomic(p, absent, strlen(absent), &e), 0);
    expect_open_fail(dir, "'zz'", "does not contain");
    const char *notobj = "{\"weight_map\":[]}";
    assert_int_equal(pc_write_file_atomic(p, notobj, strlen(notobj), &e), 0);
    expect_open_fail(dir, "index.json", "weight_map");
    const char *escape = "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}";
    assert_int_equal(pc_write_file_atomic(p, escape, strlen(escape), &e), 0);
    expect_open_fail(dir, "'a'", "plain file name");
    const char *badjson = "{\"weight_map\":{\"a\":\"s1.safetensors\"}";
    assert_int_equal(pc_write_file_atomic(p, badjson, strlen(badjson), &e), 0);
    expect_open_fail(dir, "index.json", "JSON");
    /* a shard with a corrupt header is named */
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    assert_int_equal(pc_write_file_atomic(p, good, strlen(good), &e), 0);
    snprintf(p, sizeof p, "%s/s1.safetensors", dir);
    write_hdr(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4);
    expect_open_fail(dir, "s1.safetensors", "outside the data section");

    char empty[512];
    path_in(f, "empty", empty, sizeof empty);
    mkdir(empty, 0755);
    expect_open_fail(empty, "empty", "no model.safetensors");
}

/* Byte mutations of a valid file: st_open never crashes, and whatever it accepts can be
 * read completely (every tensor lies inside the mapping). */
static void test_fuzz_header(void **state) {
    fixture *f = *state;
    char p[512];
    path_in(f, "fz.safetensors", p, sizeof p);
    float *a = ramp(24, 0.5f);
    st_item items[3] = {{.name = "x", .ndim = 2, .shape = {4, 3}, .data = a},
                        {.name = "y", .ndim = 1, .shape = {8}, .data = a},
                        {.name = "z", .ndim = 0, .data = a}};
    pc_err e = {{0}};
    assert_int_equal(st_write(p, items, 3, ST_BF16, &e), 0);
    char *orig;
    size_t len;
    assert_int_equal(pc_read_file(p, &orig, &len, &e), 0);
    unsigned char *buf = malloc(len);
    pc_rng rng;
    pc_rng_seed(&rng, 99);
    int accepted = 0, rejected = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, orig, len);
        size_t n = len;
        int k = 1 + (int)(pc_rng_u64(&rng) % 3);
        for (int j = 0; j < k; j++) {
            size_t pos = pc_rng_u64(&rng) % PC_MIN(len, (size_t)200);
            static const char alphabet[] = "0123456789,[]{}\" ";
            uint64_t r = pc_rng_u64(&rng);
            buf[pos] = r % 4 == 0 ? (unsigned char)(r >> 8) : (unsigned char)alphabet[(r >> 8) % (sizeof alphabet - 1)];
        }
        if (pc_rng_u64(&rng) % 8 == 0) n -= pc_rng_u64(&rng) % n;
        FILE *fp = fopen(p, "wb");
        fwrite(buf, 1, n, fp);
        fclose(fp);
        st_model *m;
        if (st_open(p, &m, &e) != 0) {
            rejected++;
            assert_true(e.msg[0] != '\0');
            continue;
        }
        accepted++;
        for (int i = 0; i < st_count(m); i++) {
            const st_tensor *t = st_get(m, i);
            unsigned sum = 0;
            for (size_t b = 0; b < t->nbytes; b++) sum += t->data[b];
            (void)sum;
            if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
                size_t ne = (size_t)st_numel(t);
                float *dst = malloc(sizeof(float) * (ne + 1));
                assert_int_equal(st_read_f32(m, t->name, dst, ne, &e), 0);
                free(dst);
            }
        }
        st_close(m);
    }
    assert_true(rejected > 0);
    assert_true(accepted > 0);
    free(buf);
    free(orig);
    free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_accepts, setup, teardown),
        cmocka_unit_test(test_dtype_parse),
        cmocka_unit_test_setup_teardown(test_sharded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fuzz_header, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
