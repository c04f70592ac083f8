/* test_ckpt: units of the checkpoint format (common/ckpt) in one process.
 *
 * XXH64 against published vectors and its streaming form; round trip of blocks, raw
 * files and metadata; a corrupted checksum, a truncated block, a missing or truncated
 * manifest each make ckpt_find fall back to the previous complete checkpoint, and
 * with every checkpoint damaged it fails naming them rather than finding none; `keep`
 * pruning; stale temporaries removed; an unusable directory (its parent is a regular
 * file) and a full disk (RLIMIT_FSIZE makes writes fail with EFBIG) give an error
 * naming the path, remove the temporary directory and leave the previous checkpoint
 * as `latest`. */
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "ckpt.h"

#define NB 3

static char g_root[512]; /* test scratch directory (set once in main) */

static void fill(float *x, int64_t n, float seed) {
    for (int64_t i = 0; i < n; i++) x[i] = seed + 0.001f * (float)i - 1e-7f * (float)(i * i);
}

/* A block of three arrays (param, adam_m, adam_v) of n elements each, values from seed. */
static void make_block(ckpt_block *b, const char *name, float *buf, int64_t n, float seed) {
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->n_arrays = 3;
    const char *an[3] = {"param", "adam_m", "adam_v"};
    for (int k = 0; k < 3; k++) {
        snprintf(b->arrays[k].name, sizeof b->arrays[k].name, "%s", an[k]);
        b->arrays[k].data = buf + k * n;
        b->arrays[k].n = n;
        fill(b->arrays[k].data, n, seed + (float)k);
    }
}

static const char *block_names[NB] = {"model.embed_tokens.weight", "model.layers.0.mlp/odd:name", "lm_head.weight.a"};
static const int64_t block_n[NB] = {1000, 37, 1};

/* Write checkpoint `step` of NB blocks (values depend on step) plus a raw file. */
static int write_ckpt(const char *dir, int64_t step, int keep, pc_err *e) {
    ckpt_writer *w;
    if (ckpt_write_begin(&w, dir, step, NULL, NULL, e) != 0) return -1;
    for (int i = 0; i < NB; i++) {
        float *buf = malloc(sizeof(float) * 3 * (size_t)block_n[i]);
        ckpt_block b;
        make_block(&b, block_names[i], buf, block_n[i], (float)(step * 10 + i));
        ckpt_write_block(w, &b, e);
        free(buf);
    }
    char raw[64];
    snprintf(raw, sizeof raw, "indices of step %lld\n", (long long)step);
    ckpt_write_raw(w, "importance.txt", raw, strlen(raw), e);
    ckpt_kv meta[2] = {{"mode", "compress"}, {"seed", "9"}};
    return ckpt_write_commit(w, meta, 2, keep, e);
}

static void subdir(char *out, size_t n, const char *name) {
    static int counter;
    snprintf(out, n, "%s/%s-%d", g_root, name, counter++);
}

static void ckpt_path(char *out, size_t n, const char *dir, int64_t step) {
    char dn[32];
    ckpt_dir_name(step, dn, sizeof dn);
    snprintf(out, n, "%s/%s", dir, dn);
}

static void block_path(char *out, size_t n, const char *dir, int64_t step, const char *block) {
    char cp[1024], f[256];
    ckpt_path(cp, sizeof cp, dir, step);
    ckpt_file_name(block, CKPT_BLOCK, f, sizeof f);
    snprintf(out, n, "%s/%s", cp, f);
}

static int64_t found_step(const char *dir) {
    int64_t step = -1;
    char path[1024];
    pc_err e = {{0}};
    int f = ckpt_find(dir, NULL, NULL, &step, path, sizeof path, &e);
    return f == 1 ? step : -f - 10; /* 0 found -> -10, error -> -9 */
}

static void read_latest(const char *dir, char *out, size_t n) {
    char p[1024];
    snprintf(p, sizeof p, "%s/latest", dir);
    FILE *f = fopen(p, "r");
    out[0] = '\0';
    if (f) {
        if (!fgets(out, (int)n, f)) out[0] = '\0';
        fclose(f);
    }
}

static int count_entries(const char *dir, const char *contains) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, contains)) n++;
    if (d) closedir(d);
    return n;
}

static void test_xxh64(void **state) {
    (void)state;
    assert_true(ckpt_xxh64("", 0, 0) == 0xEF46DB3751D8E999ull);
    assert_true(ckpt_xxh64("a", 1, 0) == 0xD24EC4F1A98C6E5Bull);
    assert_true(ckpt_xxh64("abc", 3, 0) == 0x44BC2CF5AD770999ull);
    unsigned char buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)(i * 31 + 7);
    uint64_t whole = ckpt_xxh64(buf, sizeof buf, 0);
    size_t cuts[] = {1, 3, 31, 32, 33, 64, 100, 999};
    for (size_t c = 0; c < PC_ARRAY_LEN(cuts); c++) {
        ckpt_hash h;
        ckpt_hash_init(&h, 0);
        for (size_t o = 0; o < sizeof buf; o += cuts[c])
            ckpt_hash_update(&h, buf + o, PC_MIN(cuts[c], sizeof buf - o));
        assert_true(ckpt_hash_final(&h) == whole);
    }
    buf[500] ^= 1;
    assert_true(ckpt_xxh64(buf, sizeof buf, 0) != whole);
}

static void test_round_trip(void **state) {
    (void)state;
    char dir[600];
    subdir(dir, sizeof dir, "rt");
    pc_err e = {{0}};
    assert_int_equal(write_ckpt(dir, 7, 2, &e), 0);
    char latest[64];
    read_latest(dir, latest, sizeof latest);
    assert_string_equal(latest, "step-0000007\n");
    assert_int_equal(found_step(dir), 7);
    char cp[1024];
    ckpt_path(cp, sizeof cp, dir, 7);
    ckpt_manifest m;
    assert_int_equal(ckpt_verify(cp, &m, &e), 0);
    assert_int_equal(m.step, 7);
    assert_int_equal(m.n_entries, NB + 1);
    assert_string_equal(ckpt_meta_get(&m, "mode"), "compress");
    assert_string_equal(ckpt_meta_get(&m, "seed"), "9");
    assert_null(ckpt_meta_get(&m, "absent"));
    for (int i = 0; i < NB; i++) {
        float *want = malloc(sizeof(float) * 3 * (size_t)block_n[i]);
        float *got = calloc(3 * (size_t)block_n[i], sizeof(float));
        ckpt_block ref, b;
        make_block(&ref, block_names[i], want, block_n[i], (float)(7 * 10 + i));
        make_block(&b, block_names[i], got, block_n[i], 0.0f);
        memset(got, 0, sizeof(float) * 3 * (size_t)block_n[i]);
        assert_int_equal(ckpt_read_block(cp, &m, &b, &e), 0);
        assert_memory_equal(got, want, sizeof(float) * 3 * (size_t)block_n[i]);
        /* a reader expecting another shape is refused, naming the file */
        b.arrays[1].n = block_n[i] + 1;
        assert_int_equal(ckpt_read_block(cp, &m, &b, &e), -1);
        assert_non_null(strstr(e.msg, ".blk"));
        free(want);
        free(got);
    }
    /* the odd name was made safe and keeps a distinct file */
    char f[256];
    ckpt_file_name("model.layers.0.mlp/odd:name", CKPT_BLOCK, f, sizeof f);
    assert_null(strchr(f, '/'));
    assert_null(strchr(f, ':'));
    char *raw;
    size_t len;
    assert_int_equal(ckpt_read_raw(cp, &m, "importance.txt", &raw, &len, &e), 0);
    assert_string_equal(raw, "indices of step 7\n");
    free(raw);
    ckpt_manifest_free(&m);
    /* the same step written again replaces it */
    assert_int_equal(write_ckpt(dir, 7, 2, &e), 0);
    assert_int_equal(found_step(dir), 7);
    /* an empty directory has no checkpoint; a missing one neither */
    char empty[600];
    subdir(empty, sizeof empty, "none");
    assert_int_equal(found_step(empty), -10);
}

static void test_bad_names(void **state) {
    (void)state;
    char dir[600];
    subdir(dir, sizeof dir, "names");
    pc_err e = {{0}};
    ckpt_writer *w;
    assert_int_equal(ckpt_write_begin(&w, dir, 1, NULL, NULL, &e), 0);
    float x[3] = {1, 2, 3};
    ckpt_block b = {.name = "bad name", .n_arrays = 1, .arrays = {{"param", x, 3}}};
    assert_int_equal(ckpt_write_block(w, &b, &e), -1);
    assert_non_null(strstr(e.msg, "bad name"));
    assert_int_equal(ckpt_write_commit(w, NULL, 0, 2, &e), -1);
    assert_int_equal(count_entries(dir, "step-"), 0);
}

/* Two checkpoints, the newer damaged by `damage`: find falls back to the older. */
static void fallback_case(void (*damage)(const char *dir)) {
    char dir[600];
    subdir(dir, sizeof dir, "fb");
    pc_err e = {{0}};
    assert_int_equal(write_ckpt(dir, 1, 3, &e), 0);
    assert_int_equal(write_ckpt(dir, 2, 3, &e), 0);
    assert_int_equal(found_step(dir), 2);
    damage(dir);
    assert_int_equal(found_step(dir), 1);
    /* the damaged one does not verify, and says which file */
    char cp[1024];
    ckpt_path(cp, sizeof cp, dir, 2);
    ckpt_manifest m;
    assert_int_equal(ckpt_verify(cp, &m, &e), -1);
    assert_non_null(strstr(e.msg, cp));
    /* writing the next step over a skipped one works and is found */
    assert_int_equal(write_ckpt(dir, 2, 3, &e), 0);
    assert_int_equal(found_step(dir), 2);
}

/* Every checkpoint damaged: an error naming the directory and the newest's fault, not
 * "no checkpoint" (which would start the run over and then prune them). */
static void test_all_damaged(void **state) {
    (void)state;
    char dir[600], p[1400];
    subdir(dir, sizeof dir, "alldmg");
    pc_err e = {{0}};
    assert_int_equal(write_ckpt(dir, 1, 3, &e), 0);
    assert_int_equal(write_ckpt(dir, 2, 3, &e), 0);
    for (int64_t s = 1; s <= 2; s++) {
        block_path(p, sizeof p, dir, s, block_names[0]);
        assert_int_equal(truncate(p, 10), 0);
    }
    int64_t step = -1;
    char path[1024];
    assert_int_equal(ckpt_find(dir, NULL, NULL, &step, path, sizeof path, &e), -1);
    assert_non_null(strstr(e.msg, dir));
    assert_non_null(strstr(e.msg, "none of the 2 checkpoint(s) verifies"));
    assert_non_null(strstr(e.msg, "step-0000002"));
    assert_int_equal(count_entries(dir, "step-"), 2); /* nothing removed */
}

static void flip_byte(const char *dir) {
    char p[1400];
    block_path(p, sizeof p, dir, 2, block_names[0]);
    FILE *f = fopen(p, "r+b");
    assert_non_null(f);
    fseek(f, 2000, SEEK_SET);
    int c = fgetc(f);
    fseek(f, 2000, SEEK_SET);
    fputc(c ^ 0x10, f);
    fclose(f);
}

static void truncate_block(const char *dir) {
    char p[1400];
    block_path(p, sizeof p, dir, 2, block_names[1]);
    assert_int_equal(truncate(p, 50), 0);
}

static void remove_manifest(const char *dir) {
    char p[1400], cp[1024];
    ckpt_path(cp, sizeof cp, dir, 2);
    snprintf(p, sizeof p, "%s/MANIFEST", cp);
    assert_int_equal(unlink(p), 0);
}

static void truncate_manifest(const char *dir) {
    char p[1400], cp[1024];
    ckpt_path(cp, sizeof cp, dir, 2);
    snprintf(p, sizeof p, "%s/MANIFEST", cp);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(truncate(p, st.st_size / 2), 0);
}

static void edit_manifest(const char *dir) { /* a size changed in the text: the manifest's own checksum fails */
    char p[1400], cp[1024];
    ckpt_path(cp, sizeof cp, dir, 2);
    snprintf(p, sizeof p, "%s/MANIFEST", cp);
    char *text;
    size_t len;
    assert_int_equal(pc_read_file(p, &text, &len, NULL), 0);
    char *s = strstr(text, "step 2");
    assert_non_null(s);
    s[5] = '3';
    FILE *f = fopen(p, "wb");
    fwrite(text, 1, len, f);
    fclose(f);
    free(text);
}

static void remove_block(const char *dir) {
    char p[1400];
    block_path(p, sizeof p, dir, 2, block_names[2]);
    assert_int_equal(unlink(p), 0);
}

static void test_corrupt_checksum(void **s) {
    (void)s;
    fallback_case(flip_byte);
}
static void test_truncated_block(void **s) {
    (void)s;
    fallback_case(truncate_block);
}
static void test_missing_manifest(void **s) {
    (void)s;
    fallback_case(remove_manifest);
}
static void test_truncated_manifest(void **s) {
    (void)s;
    fallback_case(truncate_manifest);
}
static void test_edited_manifest(void **s) {
    (void)s;
    fallback_case(edit_manifest);
}
static void test_missing_block(void **s) {
    (void)s;
    fallback_case(remove_block);
}

static void test_keep_and_stale(void **state) {
    (void)state;
    char dir[600], p[1200];
    subdir(dir, sizeof dir, "keep");
    pc_err e = {{0}};
    for (int s = 1; s <= 5; s++) assert_int_equal(write_ckpt(dir, s, 2, &e), 0);
    assert_int_equal(count_entries(dir, "step-"), 2);
    assert_int_equal(count_entries(dir, "step-0000004"), 1);
    assert_int_equal(count_entries(dir, "step-0000005"), 1);
    /* stale temporaries of crashed writers, an incomplete directory */
    snprintf(p, sizeof p, "%s/step-0000009.tmp-4242", dir);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/step-0000009.tmp-4242/x.blk", dir);
    fclose(fopen(p, "w"));
    snprintf(p, sizeof p, "%s/latest.tmp.77", dir);
    fclose(fopen(p, "w"));
    snprintf(p, sizeof p, "%s/step-0000003", dir);
    assert_int_equal(mkdir(p, 0755), 0);
    assert_int_equal(found_step(dir), 5); /* temporaries are never candidates */
    assert_int_equal(write_ckpt(dir, 6, 3, &e), 0);
    assert_int_equal(count_entries(dir, ".tmp"), 0);
    assert_int_equal(count_entries(dir, "step-"), 3); /* 4, 5, 6: the empty step-3 is gone */
    assert_int_equal(count_entries(dir, "step-0000003"), 0);
    /* keep 1 */
    assert_int_equal(write_ckpt(dir, 7, 1, &e), 0);
    assert_int_equal(count_entries(dir, "step-"), 1);
    assert_int_equal(found_step(dir), 7);
}

static void test_unusable_dir(void **state) {
    (void)state;
    char parent[600], dir[700];
    subdir(parent, sizeof parent, "afile");
    fclose(fopen(parent, "w"));
    snprintf(dir, sizeof dir, "%s/checkpoints", parent);
    pc_err e = {{0}};
    ckpt_writer *w = NULL;
    assert_int_equal(ckpt_write_begin(&w, dir, 1, NULL, NULL, &e), -1);
    assert_null(w);
    assert_non_null(strstr(e.msg, parent));
    assert_int_equal(found_step(dir), -9); /* unreadable: an error, not "no checkpoint" */
}

static void test_disk_full(void **state) {
    (void)state;
    char dir[600];
    subdir(dir, sizeof dir, "full");
    pc_err e = {{0}};
    assert_int_equal(write_ckpt(dir, 1, 2, &e), 0);
    /* from now on no file may grow past 2 KB: the first block's files are 12 KB */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 2048;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = write_ckpt(dir, 2, 2, &e);
    setrlimit(RLIMIT_FSIZE, &old);
    assert_int_equal(rc, -1);
    char p[1400];
    block_path(p, sizeof p, dir, 2, block_names[0]);
    char *base = strrchr(p, '/') + 1;
    if (!strstr(e.msg, base)) fprintf(stderr, "message: %s\n", e.msg);
    assert_non_null(strstr(e.msg, base)); /* names the file that could not be written */
    assert_non_null(strstr(e.msg, dir));
    assert_int_equal(count_entries(dir, ".tmp"), 0);
    assert_int_equal(count_entries(dir, "step-0000002"), 0);
    char latest[64];
    read_latest(dir, latest, sizeof latest);
    assert_string_equal(latest, "step-0000001\n");
    assert_int_equal(found_step(dir), 1);
    /* space back: the next checkpoint works */
    assert_int_equal(write_ckpt(dir, 2, 2, &e), 0);
    assert_int_equal(found_step(dir), 2);
}

/* A failure outside the writer (ckpt_write_fail: what a raw file holds could not be read)
 * fails the commit like a failed write: nothing published, the temporaries removed, the
 * previous checkpoint still the latest, and the message the caller's. */
static void test_outside_failure(void **state) {
    (void)state;
    char dir[600];
    subdir(dir, sizeof dir, "outside");
    pc_err e = {{0}};
    assert_int_equal(write_ckpt(dir, 1, 2, &e), 0);
    ckpt_writer *w;
    assert_int_equal(ckpt_write_begin(&w, dir, 2, NULL, NULL, &e), 0);
    float buf[3 * 37];
    ckpt_block b;
    make_block(&b, block_names[1], buf, 37, 2.0f);
    assert_int_equal(ckpt_write_block(w, &b, &e), 0);
    pc_errorf(&e, "RUN/importance.txt: cannot open: No such file or directory");
    assert_int_equal(ckpt_write_fail(w, &e), -1);
    assert_int_equal(ckpt_write_raw(w, "other.txt", "x", 1, &e), -1); /* the writer stays failed */
    ckpt_kv meta[1] = {{"mode", "compress"}};
    pc_err c = {{0}};
    assert_int_equal(ckpt_write_commit(w, meta, 1, 2, &c), -1);
    if (!strstr(c.msg, "importance.txt")) fprintf(stderr, "message: %s\n", c.msg);
    assert_non_null(strstr(c.msg, "importance.txt"));
    assert_int_equal(count_entries(dir, ".tmp"), 0);
    assert_int_equal(count_entries(dir, "step-0000002"), 0);
    assert_int_equal(found_step(dir), 1);
}

int main(void) {
    const char *base = getenv("PC_TMP") ? getenv("PC_TMP") : "/tmp";
    snprintf(g_root, sizeof g_root, "%s/pc-ckpt-unit-XXXXXX", base);
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xxh64),           cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_bad_names),       cmocka_unit_test(test_corrupt_checksum),
        cmocka_unit_test(test_truncated_block), cmocka_unit_test(test_missing_manifest),
        cmocka_unit_test(test_truncated_manifest), cmocka_unit_test(test_edited_manifest),
        cmocka_unit_test(test_missing_block),   cmocka_unit_test(test_keep_and_stale),
        cmocka_unit_test(test_unusable_dir),    cmocka_unit_test(test_disk_full),
        cmocka_unit_test(test_outside_failure), cmocka_unit_test(test_all_damaged),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    if (rc == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_root);
    return rc;
}
