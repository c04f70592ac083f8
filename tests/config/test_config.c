/* test_config: units for the job-config loader: defaults, value forms (flow and block
 * lists, per-layer d_ff), --set overrides and their errors, the line of an encoding
 * error, the distill section rule, model and rank checks, the resolved-config round
 * trip, and the generated docs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include "config.h"
#include "config_keys.h"

static int key_index_for_test(const char *path) {
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++)
        if (!strcmp(pc_config_keys[i].path, path)) return i;
    fail_msg("no key %s", path);
    return -1;
}

typedef struct fixture {
    char dir[256];
    pc_config a, b; /* large: kept off the stack */
} fixture;

static int setup(void **state) {
    fixture *f = pc_calloc(1, sizeof *f);
    if (test_mkdtemp(f->dir, sizeof f->dir, "config") != 0) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (test_rmtree(f->dir) != 0) return -1;
    free(f);
    return 0;
}

/* Write text to DIR/name and return the path (static buffer per call site is enough). */
static const char *write_yaml(fixture *f, const char *name, const char *text, char *path, size_t n) {
    snprintf(path, n, "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return path;
}

static const char *minimal =
    "run:\n"
    "  mode: compress\n"
    "model:\n"
    "  base: /models/smollm\n"
    "compress:\n"
    "  d_model: 256\n"
    "data:\n"
    "  train: shards/*.h5\n";

static void test_defaults(void **state) {
    fixture *f = *state;
    char path[512];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    assert_int_equal(config_load(c, write_yaml(f, "job.yaml", minimal, path, sizeof path), NULL, 0, &e), 0);
    assert_string_equal(c->source, path);
    assert_string_equal(c->run.dir, "run");
    assert_string_equal(c->run.mode, "compress");
    assert_int_equal(c->run.seed, 1234);
    assert_string_equal(c->model.base, "/models/smollm");
    assert_string_equal(c->model.config, "");
    assert_string_equal(c->model.dtype, "f32");
    assert_int_equal(c->compress.d_model, 256);
    assert_int_equal(c->compress.n_d_ff, 0);
    assert_int_equal(config_d_ff(c, 0), 0);
    assert_string_equal(c->compress.importance, "activation");
    assert_int_equal(c->compress.calibration_sequences, 64);
    assert_int_equal(c->distill.enabled, 0);
    assert_true(c->distill.alpha == 0.5);
    assert_true(c->distill.temperature == 1.0);
    assert_int_equal(c->data.n_train, 1);
    assert_string_equal(c->data.train[0], "shards/*.h5");
    assert_int_equal(c->data.n_valid, 0);
    assert_int_equal(c->data.seq_len, 256);
    assert_int_equal(c->train.steps, 100);
    assert_int_equal(c->train.global_batch, 8);
    assert_int_equal(c->train.micro_batch, 1);
    assert_true(c->train.lr == 3e-4);
    assert_true(c->train.min_lr_ratio == 0.1);
    assert_int_equal(c->train.warmup_steps, 10);
    assert_true(c->train.weight_decay == 0.1);
    assert_true(c->train.grad_clip == 1.0);
    assert_true(c->train.beta1 == 0.9);
    assert_true(c->train.beta2 == 0.95);
    assert_int_equal(c->checkpoint.every_steps, 100);
    assert_int_equal(c->checkpoint.keep, 2);
    assert_int_equal(c->checkpoint.at_end, 1);
    assert_int_equal(c->eval.every_steps, 0);
    assert_int_equal(c->eval.batches, 8);
    assert_string_equal(c->backend.device, "auto");
    assert_string_equal(c->backend.comm, "auto");
    assert_int_equal(c->backend.threads, 0);
    assert_string_equal(c->output.dir, "");
    assert_string_equal(c->output.dtype, "f32");
    /* origins: file lines for set keys, empty for defaults */
    char want[600];
    snprintf(want, sizeof want, "%s:6", path);
    assert_string_equal(c->where[key_index_for_test("compress.d_model")], want);
    assert_string_equal(c->where[key_index_for_test("train.lr")], "");
}

static void test_values_and_lists(void **state) {
    fixture *f = *state;
    char path[512];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    const char *text =
        "run: {dir: /scratch/run1, mode: prune, seed: 7}\n"
        "model:\n"
        "  base: \"/models/with: colon\"\n"
        "  dtype: bf16\n"
        "compress:\n"
        "  d_model: 384\n"
        "  d_ff:\n"
        "    - 1024\n"
        "    - 768\n"
        "    - 512\n"
        "  importance: magnitude\n"
        "  calibration_sequences: 16\n"
        "data:\n"
        "  train:\n"
        "    - a/*.h5\n"
        "    - 'b/shard-*.h5'\n"
        "  valid: [v1.h5, v2.h5, v3.h5]\n"
        "  seq_len: 2048\n"
        "train:\n"
        "  steps: 0\n"
        "  global_batch: 64\n"
        "  micro_batch: 4\n"
        "  lr: 1E-3\n"
        "  min_lr_ratio: 0\n"
        "  warmup_steps: +5\n"
        "  weight_decay: 0.0\n"
        "  grad_clip: .5\n"
        "  beta1: 0\n"
        "  beta2: 0.999\n"
        "checkpoint: {every_steps: 0, keep: 5, at_end: false}\n"
        "eval: {every_steps: 50, batches: 2}\n"
        "backend: {device: cpu, comm: mpi, threads: 2}\n"
        "output: {dir: out, dtype: bf16}\n";
    assert_int_equal(config_load(c, write_yaml(f, "job.yaml", text, path, sizeof path), NULL, 0, &e), 0);
    assert_string_equal(c->run.dir, "/scratch/run1");
    assert_string_equal(c->run.mode, "prune");
    assert_int_equal(c->run.seed, 7);
    assert_string_equal(c->model.base, "/models/with: colon");
    assert_string_equal(c->model.dtype, "bf16");
    assert_int_equal(c->compress.n_d_ff, 3);
    assert_int_equal(c->compress.d_ff[0], 1024);
    assert_int_equal(c->compress.d_ff[1], 768);
    assert_int_equal(c->compress.d_ff[2], 512);
    assert_int_equal(config_d_ff(c, 1), 768);
    assert_int_equal(config_d_ff(c, 3), 0);
    assert_string_equal(c->compress.importance, "magnitude");
    assert_int_equal(c->data.n_train, 2);
    assert_string_equal(c->data.train[1], "b/shard-*.h5");
    assert_int_equal(c->data.n_valid, 3);
    assert_string_equal(c->data.valid[2], "v3.h5");
    assert_int_equal(c->data.seq_len, 2048);
    assert_int_equal(c->train.steps, 0);
    assert_int_equal(c->train.global_batch, 64);
    assert_int_equal(c->train.micro_batch, 4);
    assert_true(c->train.lr == 1e-3);
    assert_true(c->train.min_lr_ratio == 0.0);
    assert_int_equal(c->train.warmup_steps, 5);
    assert_true(c->train.grad_clip == 0.5);
    assert_true(c->train.beta2 == 0.999);
    assert_int_equal(c->checkpoint.keep, 5);
    assert_int_equal(c->checkpoint.at_end, 0);
    assert_int_equal(c->eval.every_steps, 50);
    assert_string_equal(c->backend.comm, "mpi");
    assert_int_equal(c->backend.threads, 2);
    assert_string_equal(c->output.dir, "out");
    /* lines of keys inside a block list and a flow mapping */
    char want[600];
    snprintf(want, sizeof want, "%s:7", path);
    assert_string_equal(c->where[key_index_for_test("compress.d_ff")], want);
    snprintf(want, sizeof want, "%s:31", path);
    assert_string_equal(c->where[key_index_for_test("eval.batches")], want);
}

static void test_uniform_d_ff(void **state) {
    fixture *f = *state;
    char path[512];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    const char *sets[] = {"compress.d_ff=1536"};
    assert_int_equal(config_load(c, write_yaml(f, "job.yaml", minimal, path, sizeof path), sets, 1, &e), 0);
    assert_int_equal(c->compress.n_d_ff, 1);
    for (int l = 0; l < 30; l++) assert_int_equal(config_d_ff(c, l), 1536);
    int base_d_ff[30];
    for (int l = 0; l < 30; l++) base_d_ff[l] = 1536;
    assert_int_equal(config_check_model(c, 576, base_d_ff, 30, &e), 0);
    base_d_ff[29] = 1535;
    assert_int_equal(config_check_model(c, 576, base_d_ff, 30, &e), -1);
    assert_non_null(strstr(e.msg, "--set compress.d_ff=1536: key 'compress.d_ff' for layer 29 (1536)"));
}

static void test_overrides(void **state) {
    fixture *f = *state;
    char path[512];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    const char *sets[] = {
        "train.lr=1e-3",
        "train.lr=2e-3", /* later wins */
        "compress.d_ff=[1024, 768,512]",
        "data.train=[x/*.h5, \"y z.h5\"]",
        "data.valid=v.h5",
        "train.steps=0",
        "model.base=/m/a: b", /* not YAML scalar: taken as written */
        "output.dir=",
        "run.seed=-0",
        "backend.device=cpu",
        "run.dir=#runs/a", /* YAML reads nothing (a comment, an empty tagged scalar): the text given */
        "model.config=!cfg.json",
        "output.dir=''", /* a quoted empty string is empty */
    };
    assert_int_equal(config_load(c, write_yaml(f, "job.yaml", minimal, path, sizeof path), sets,
                                 (int)PC_ARRAY_LEN(sets), &e),
                     0);
    assert_true(c->train.lr == 2e-3);
    assert_string_equal(c->where[key_index_for_test("train.lr")], "--set train.lr=2e-3");
    assert_int_equal(c->compress.n_d_ff, 3);
    assert_int_equal(c->compress.d_ff[2], 512);
    assert_int_equal(c->data.n_train, 2);
    assert_string_equal(c->data.train[0], "x/*.h5");
    assert_string_equal(c->data.train[1], "y z.h5");
    assert_int_equal(c->data.n_valid, 1);
    assert_string_equal(c->data.valid[0], "v.h5");
    assert_int_equal(c->train.steps, 0);
    assert_string_equal(c->model.base, "/m/a: b");
    assert_string_equal(c->output.dir, "");
    assert_string_equal(c->run.dir, "#runs/a");
    assert_string_equal(c->model.config, "!cfg.json");
    assert_int_equal(c->run.seed, 0);
    assert_string_equal(c->backend.device, "cpu");
    assert_int_equal(c->distill.enabled, 0);

    /* a " #" comment YAML would cut off a plain value: a path keeps it; quoted strings,
     * flow lists and numbers are read as YAML reads them */
    const char *hash[] = {
        "run.dir=runs/sweep #1",
        "output.dir=--- out",
        "data.train=a #1.h5",
        "data.valid=[v.h5, w.h5] # two",
        "model.config=\"c.json\" # quoted",
        "model.base= /m/spaced ",
        "train.steps=7 # seven",
    };
    assert_int_equal(config_load(c, path, hash, (int)PC_ARRAY_LEN(hash), &e), 0);
    assert_string_equal(c->run.dir, "runs/sweep #1");
    assert_string_equal(c->output.dir, "--- out");
    assert_int_equal(c->data.n_train, 1);
    assert_string_equal(c->data.train[0], "a #1.h5");
    assert_int_equal(c->data.n_valid, 2);
    assert_string_equal(c->data.valid[1], "w.h5");
    assert_string_equal(c->model.config, "c.json");
    assert_string_equal(c->model.base, "/m/spaced");
    assert_int_equal(c->train.steps, 7);
    const char *enum_hash[] = {"backend.device=cpu #gpu"};
    assert_int_equal(config_load(c, path, enum_hash, 1, &e), -1);
    assert_string_equal(e.msg, "--set backend.device=cpu #gpu: key 'backend.device' must be one of auto, cpu, cuda, "
                               "cpu-guarded, got 'cpu #gpu'");
}

/* backend.attention auto follows backend.matmul: bf16 tensor-core attention with bf16
   products only; an explicit fp32 or bf16 wins over the products' precision. */
static void test_attention_follows_matmul(void **state) {
    fixture *f = *state;
    char path[512];
    pc_err e = {{0}};
    static const struct {
        const char *attention, *matmul;
        int bf16, cudnn;
    } cases[] = {{NULL, NULL, 0, 0},      {NULL, "bf16", 1, 0},     {NULL, "tf32", 0, 0},
                 {"auto", "fp32", 0, 0},  {"auto", "bf16", 1, 0},   {"fp32", "bf16", 0, 0},
                 {"bf16", "fp32", 1, 0},  {"bf16", "tf32", 1, 0},   {"cudnn", "fp32", 1, 1},
                 {"cudnn", "bf16", 1, 1}};
    write_yaml(f, "job.yaml", minimal, path, sizeof path);
    for (size_t i = 0; i < PC_ARRAY_LEN(cases); i++) {
        char a[64], m[64];
        const char *sets[2];
        int n = 0;
        if (cases[i].attention) snprintf(a, sizeof a, "backend.attention=%s", cases[i].attention), sets[n++] = a;
        if (cases[i].matmul) snprintf(m, sizeof m, "backend.matmul=%s", cases[i].matmul), sets[n++] = m;
        assert_int_equal(config_load(&f->a, path, sets, n, &e), 0);
        if (config_attention_bf16(&f->a) != cases[i].bf16 || config_attention_cudnn(&f->a) != cases[i].cudnn)
            fail_msg("attention %s, matmul %s: bf16 %d cudnn %d, want %d %d", f->a.backend.attention,
                     f->a.backend.matmul, config_attention_bf16(&f->a), config_attention_cudnn(&f->a),
                     cases[i].bf16, cases[i].cudnn);
    }
    const char *bad[] = {"backend.attention=tf32"};
    assert_int_not_equal(config_load(&f->a, path, bad, 1, &e), 0);
    assert_non_null(strstr(e.msg, "backend.attention"));
}

static void test_override_fixes_file(void **state) {
    fixture *f = *state;
    char path[512], text[1024];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    snprintf(text, sizeof text, "%strain:\n  lr: -1\n  micro_batch: 16\n", minimal);
    write_yaml(f, "job.yaml", text, path, sizeof path);
    assert_int_equal(config_load(c, path, NULL, 0, &e), -1);
    char want[600];
    snprintf(want, sizeof want, "%s:10: key 'train.lr' must be > 0, got -1", path);
    assert_string_equal(e.msg, want);
    const char *sets[] = {"train.lr=1e-4", "train.micro_batch=2"};
    assert_int_equal(config_load(c, path, sets, 2, &e), 0);
    assert_true(c->train.lr == 1e-4);
    /* a longer string shortened by --set leaves no stale bytes behind */
    const char *s2[] = {"train.lr=1e-4", "train.micro_batch=2", "model.base=/x"};
    assert_int_equal(config_load(c, path, s2, 3, &e), 0);
    assert_string_equal(c->model.base, "/x");
    for (size_t i = 2; i < sizeof c->model.base; i++) assert_int_equal(c->model.base[i], 0);
}

static void test_set_errors(void **state) {
    fixture *f = *state;
    char path[512];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    write_yaml(f, "job.yaml", minimal, path, sizeof path);
    const char *s1[] = {"train.lr=abc"};
    assert_int_equal(config_load(c, path, s1, 1, &e), -1);
    assert_string_equal(e.msg, "--set train.lr=abc: key 'train.lr' must be a number, got 'abc'");
    const char *s2[] = {"train.stepz=3"};
    assert_int_equal(config_load(c, path, s2, 1, &e), -1);
    assert_string_equal(e.msg, "--set train.stepz=3: unknown key 'train.stepz'; did you mean 'train.steps'?");
    const char *s3[] = {"train.global_batch=6", "train.micro_batch=4"};
    assert_int_equal(config_load(c, path, s3, 2, &e), -1);
    assert_string_equal(e.msg, "--set train.global_batch=6: key 'train.global_batch' (6) must be divisible by "
                               "train.micro_batch (4)");
    /* eval and importance take no optimizer steps: train.global_batch does not bound micro_batch */
    const char *s3e[] = {"run.mode=eval", "data.valid=v.h5", "train.global_batch=4", "train.micro_batch=16"};
    assert_int_equal(config_load(c, path, s3e, 4, &e), 0);
    const char *s3i[] = {"run.mode=importance", "train.global_batch=4", "train.micro_batch=3"};
    assert_int_equal(config_load(c, path, s3i, 3, &e), 0);
    const char *s3p[] = {"run.mode=pretrain", "model.config=c.json", "train.global_batch=4", "train.micro_batch=16"};
    assert_int_equal(config_load(c, path, s3p, 4, &e), -1);
    assert_string_equal(e.msg, "--set train.micro_batch=16: key 'train.micro_batch' (16) must not exceed "
                               "train.global_batch (4)");
    const char *s4[] = {"=3"};
    assert_int_equal(config_load(c, path, s4, 1, &e), -1);
    assert_non_null(strstr(e.msg, "--set =3: expected KEY=VALUE"));
    const char *s5[] = {"train.steps=[1, 2"};
    assert_int_equal(config_load(c, path, s5, 1, &e), -1);
    assert_non_null(strstr(e.msg, "--set train.steps=[1, 2: cannot read the value as YAML"));
    const char *s6[] = {"run.mode=eval"}; /* eval needs data.valid */
    assert_int_equal(config_load(c, path, s6, 1, &e), -1);
    char want[600];
    snprintf(want, sizeof want, "%s: missing required key 'data.valid' (needed by run.mode eval)", path);
    assert_string_equal(e.msg, want);
}

static void test_distill_section(void **state) {
    fixture *f = *state;
    char path[512], text[1024];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    snprintf(text, sizeof text, "%sdistill:\n", minimal);
    assert_int_equal(config_load(c, write_yaml(f, "d1.yaml", text, path, sizeof path), NULL, 0, &e), 0);
    assert_int_equal(c->distill.enabled, 1);
    assert_true(c->distill.alpha == 0.5);
    snprintf(text, sizeof text, "%sdistill: {alpha: 0.25, temperature: 2}\n", minimal);
    assert_int_equal(config_load(c, write_yaml(f, "d2.yaml", text, path, sizeof path), NULL, 0, &e), 0);
    assert_int_equal(c->distill.enabled, 1);
    assert_true(c->distill.alpha == 0.25);
    assert_true(c->distill.temperature == 2.0);
    snprintf(text, sizeof text, "%sdistill: {enabled: false, alpha: 0.25}\n", minimal);
    assert_int_equal(config_load(c, write_yaml(f, "d3.yaml", text, path, sizeof path), NULL, 0, &e), 0);
    assert_int_equal(c->distill.enabled, 0);
    const char *sets[] = {"distill.temperature=3"};
    assert_int_equal(config_load(c, write_yaml(f, "d4.yaml", minimal, path, sizeof path), sets, 1, &e), 0);
    assert_int_equal(c->distill.enabled, 1);
    assert_true(c->distill.temperature == 3.0);
}

static void test_required_by_mode(void **state) {
    fixture *f = *state;
    char path[512];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    /* pretrain: model.config, or model.base instead */
    const char *pre = "run: {mode: pretrain}\ndata: {train: a.h5}\nmodel: {config: tiny/config.json}\n";
    assert_int_equal(config_load(c, write_yaml(f, "p1.yaml", pre, path, sizeof path), NULL, 0, &e), 0);
    const char *pre2 = "run: {mode: pretrain}\ndata: {train: a.h5}\nmodel: {base: /m}\n";
    assert_int_equal(config_load(c, write_yaml(f, "p2.yaml", pre2, path, sizeof path), NULL, 0, &e), 0);
    /* eval: model.base and data.valid; compress.d_model and data.train not needed */
    const char *ev = "run: {mode: eval}\nmodel: {base: /m}\ndata: {valid: [v.h5]}\n";
    assert_int_equal(config_load(c, write_yaml(f, "e.yaml", ev, path, sizeof path), NULL, 0, &e), 0);
    /* empty file: compress by default, first missing key named */
    assert_int_equal(config_load(c, write_yaml(f, "empty.yaml", "", path, sizeof path), NULL, 0, &e), -1);
    char want[600];
    snprintf(want, sizeof want, "%s: missing required key 'model.base' (needed by run.mode compress)", path);
    assert_string_equal(e.msg, want);
    /* missing file */
    assert_int_equal(config_load(c, "/nonexistent/job.yaml", NULL, 0, &e), -1);
    assert_non_null(strstr(e.msg, "/nonexistent/job.yaml"));
    /* a directory: the reason, not just "read error" */
    assert_int_equal(config_load(c, f->dir, NULL, 0, &e), -1);
    snprintf(want, sizeof want, "%s: read error: Is a directory", f->dir);
    assert_string_equal(e.msg, want);
}

/* Encoding errors (libyaml's reader: a byte offset, no line) name the line and column
 * they are on, not line 1. */
static void test_reader_error_line(void **state) {
    fixture *f = *state;
    char path[512], text[1024], want[700];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    static const struct {
        const char *line9, *problem;
        int column;
    } cases[] = {
        {"  seq_len: 8  # caf\xe9 (latin-1)\n", "invalid trailing UTF-8 octet", 20},
        {"  seq_len: 8  # \xc3\xa9t\xc3\xa9 \x07\n", "control characters are not allowed", 21},
        {"  seq_len: 8  # \xff\n", "invalid leading UTF-8 octet", 17},
    };
    for (size_t i = 0; i < PC_ARRAY_LEN(cases); i++) {
        snprintf(text, sizeof text, "%s%s", minimal, cases[i].line9);
        assert_int_equal(config_load(c, write_yaml(f, "enc.yaml", text, path, sizeof path), NULL, 0, &e), -1);
        snprintf(want, sizeof want, "%s:9: YAML syntax error: %s (column %d)", path, cases[i].problem,
                 cases[i].column);
        assert_string_equal(e.msg, want);
    }
}

static void test_check_model_and_ranks(void **state) {
    fixture *f = *state;
    char path[512], text[1024], want[700];
    pc_err e = {{0}};
    pc_config *c = &f->a;
    snprintf(text, sizeof text,
             "%s  d_ff: [1024, 512]\ntrain:\n  global_batch: 12\n  micro_batch: 2\n", minimal); /* lines 9.. */
    assert_int_equal(config_load(c, write_yaml(f, "job.yaml", text, path, sizeof path), NULL, 0, &e), -1);
    /* d_ff landed under data: (the last section); it is not a data key */
    snprintf(want, sizeof want, "%s:9: unknown key 'data.d_ff'; did you mean 'compress.d_ff'?", path);
    assert_string_equal(e.msg, want);
    snprintf(text, sizeof text,
             "run: {mode: compress}\nmodel: {base: /m}\ncompress:\n  d_model: 512\n  d_ff: [1024, 512]\n"
             "data: {train: a.h5}\ntrain:\n  global_batch: 12\n  micro_batch: 2\n");
    assert_int_equal(config_load(c, write_yaml(f, "job.yaml", text, path, sizeof path), NULL, 0, &e), 0);
    int base_d_ff[3] = {1536, 1536, 1536};
    assert_int_equal(config_check_model(c, 576, base_d_ff, 2, &e), 0);
    assert_int_equal(config_check_model(c, 512, base_d_ff, 2, &e), 0); /* equal widths are fine */
    assert_int_equal(config_check_model(c, 511, base_d_ff, 2, &e), -1);
    snprintf(want, sizeof want,
             "%s:4: key 'compress.d_model' (512) must not exceed the base model's hidden_size (511)", path);
    assert_string_equal(e.msg, want);
    assert_int_equal(config_check_model(c, 576, base_d_ff, 3, &e), -1);
    snprintf(want, sizeof want, "%s:5: key 'compress.d_ff' has 2 entries but the base model has 3 layers", path);
    assert_non_null(strstr(e.msg, want));
    base_d_ff[0] = 1000;
    assert_int_equal(config_check_model(c, 576, base_d_ff, 2, &e), -1);
    snprintf(want, sizeof want,
             "%s:5: key 'compress.d_ff' for layer 0 (1024) must not exceed the base model's intermediate_size (1000)",
             path);
    assert_string_equal(e.msg, want);

    assert_int_equal(config_check_ranks(c, 1, &e), 0);
    assert_int_equal(config_check_ranks(c, 2, &e), 0);
    assert_int_equal(config_check_ranks(c, 3, &e), 0);
    assert_int_equal(config_check_ranks(c, 6, &e), 0);
    assert_int_equal(config_check_ranks(c, 4, &e), -1);
    snprintf(want, sizeof want,
             "%s:8: key 'train.global_batch' (12) must be divisible by ranks x train.micro_batch (4 x 2 = 8)", path);
    assert_non_null(strstr(e.msg, want));
    assert_int_equal(config_check_ranks(c, 0, &e), -1);
    /* eval and importance read no training batches: any rank count */
    snprintf(c->run.mode, sizeof c->run.mode, "eval");
    assert_int_equal(config_check_ranks(c, 4, &e), 0);
    snprintf(c->run.mode, sizeof c->run.mode, "importance");
    assert_int_equal(config_check_ranks(c, 4, &e), 0);
    snprintf(c->run.mode, sizeof c->run.mode, "pretrain");
    assert_int_equal(config_check_ranks(c, 4, &e), -1);
}

static void test_round_trip(void **state) {
    fixture *f = *state;
    char path[512], out[600], out2[600];
    pc_err e = {{0}};
    const char *text =
        "run: {dir: \"/scratch/a \\\"quoted\\\" dir\", mode: compress, seed: 99}\n"
        "model: {base: 'm: with colon # and hash', dtype: bf16}\n"
        "compress: {d_model: 320, d_ff: [1, 2, 3, 4, 5], importance: random, calibration_sequences: 3}\n"
        "distill: {alpha: 0.1, temperature: 1.7}\n"
        "data: {train: [\"a,b.h5\", '[x].h5', \"tab\\there\"], valid: [], seq_len: 17}\n"
        "train: {steps: 123456789012, global_batch: 6, micro_batch: 3, lr: 0.1, min_lr_ratio: 0.3333333333333333,\n"
        "        warmup_steps: 0, weight_decay: 1e-300, grad_clip: 0, beta1: 0.123456789, beta2: 0.999999}\n"
        "checkpoint: {every_steps: 7, keep: 1}\n"
        "eval: {every_steps: 3, batches: 1}\n"
        "backend: {device: cuda, comm: nccl, threads: 16}\n"
        "output: {dir: '', dtype: bf16}\n";
    const char *sets[] = {"train.lr=3e-4", "output.dir=final dir", "run.dir=#r", "model.config=!c.json"};
    assert_int_equal(config_load(&f->a, write_yaml(f, "job.yaml", text, path, sizeof path), sets, 4, &e), 0);
    snprintf(out, sizeof out, "%s/config.resolved.yaml", f->dir);
    assert_int_equal(config_write_resolved(&f->a, out, &e), 0);
    assert_int_equal(config_load(&f->b, out, NULL, 0, &e), 0);
    size_t lo = offsetof(pc_config, run), hi = offsetof(pc_config, where);
    assert_memory_equal((char *)&f->a + lo, (char *)&f->b + lo, hi - lo);
    assert_string_equal(f->b.data.train[2], "tab\there");
    assert_int_equal(f->b.train.steps, 123456789012LL);
    assert_int_equal(f->b.distill.enabled, 1);
    /* writing the reloaded struct gives the same file apart from the source line */
    snprintf(out2, sizeof out2, "%s/again.yaml", f->dir);
    assert_int_equal(config_write_resolved(&f->b, out2, &e), 0);
    char *t1, *t2;
    assert_int_equal(pc_read_file(out, &t1, NULL, &e), 0);
    assert_int_equal(pc_read_file(out2, &t2, NULL, &e), 0);
    assert_string_equal(strstr(t1, "\nrun:"), strstr(t2, "\nrun:"));
    free(t1);
    free(t2);
    /* no temporary file left behind */
    char tmp_glob[700];
    snprintf(tmp_glob, sizeof tmp_glob, "ls '%s' | grep -q tmp", f->dir);
    assert_int_not_equal(system(tmp_glob), 0);

    /* defaults-only config with distillation off and d_ff unset also round-trips */
    const char *ev = "run: {mode: eval}\nmodel: {base: /m}\ndata: {valid: [v.h5]}\n";
    assert_int_equal(config_load(&f->a, write_yaml(f, "ev.yaml", ev, path, sizeof path), NULL, 0, &e), 0);
    assert_int_equal(config_write_resolved(&f->a, out, &e), 0);
    assert_int_equal(config_load(&f->b, out, NULL, 0, &e), 0);
    assert_memory_equal((char *)&f->a + lo, (char *)&f->b + lo, hi - lo);
    assert_int_equal(f->b.distill.enabled, 0);
    assert_int_equal(f->b.compress.n_d_ff, 0);

    /* characters YAML refuses raw or reads as a line break: C1 controls (NEL among them),
     * U+FFFE/FFFF, given raw (--set) or as escapes (a list entry); U+2028, U+FEFF and
     * U+00A0 go out as they are */
    const char *odd = "o\xc2\x80\xc2\x85\xc2\x9f\xe2\x80\xa8\xe2\x80\xa9\xef\xbb\xbf\xef\xbf\xbe\xef\xbf\xbf\xc2\xa0\xc3\xa9x";
    char set_odd[128];
    snprintf(set_odd, sizeof set_odd, "output.dir=%s", odd);
    const char *sets_odd[] = {set_odd, "data.valid=[\"v\\x85\\u2028\\x80.h5\", plain.h5]"};
    assert_int_equal(config_load(&f->a, write_yaml(f, "odd.yaml", minimal, path, sizeof path), sets_odd, 2, &e), 0);
    assert_string_equal(f->a.output.dir, odd);
    assert_string_equal(f->a.data.valid[0], "v\xc2\x85\xe2\x80\xa8\xc2\x80.h5");
    assert_int_equal(config_write_resolved(&f->a, out, &e), 0);
    assert_int_equal(config_load(&f->b, out, NULL, 0, &e), 0);
    assert_memory_equal((char *)&f->a + lo, (char *)&f->b + lo, hi - lo);
}

/* The keys that changed between two resolved configs, by name, old -> new; the source
 * line (another job file path) is not a change. */
static void test_resolved_diff(void **state) {
    fixture *f = *state;
    char path[512], diff[512];
    pc_err e = {{0}};
    const char *sets_b[] = {"train.steps=12", "run.dir=/moved", "data.valid=[v.h5, w.h5]"};
    assert_int_equal(config_load(&f->a, write_yaml(f, "a.yaml", minimal, path, sizeof path), NULL, 0, &e), 0);
    assert_int_equal(config_load(&f->b, write_yaml(f, "b.yaml", minimal, path, sizeof path), sets_b, 3, &e), 0);
    char *ta = config_resolved_text(&f->a), *tb = config_resolved_text(&f->b);
    assert_non_null(strstr(ta, "  collective_timeout: 600\n")); /* a whole number as such, not 6e+02 */
    assert_int_equal(config_resolved_diff(ta, ta, diff, sizeof diff), 0);
    assert_string_equal(diff, "");
    assert_int_equal(config_load(&f->b, write_yaml(f, "c.yaml", minimal, path, sizeof path), NULL, 0, &e), 0);
    char *tc = config_resolved_text(&f->b); /* the same job from another file */
    assert_int_equal(config_resolved_diff(ta, tc, diff, sizeof diff), 0);
    assert_int_equal(config_resolved_diff(ta, tb, diff, sizeof diff), 3);
    char want[1200]; /* strings as the resolved text writes them: quoted */
    snprintf(want, sizeof want,
             "run.dir: \"%s\" -> \"/moved\"; data.valid: [] -> [\"v.h5\", \"w.h5\"]; train.steps: %lld -> 12",
             f->a.run.dir, (long long)f->a.train.steps);
    assert_string_equal(diff, want);
    /* a key one side lacks (an older version's text), and a cut message */
    assert_int_equal(config_resolved_diff("train:\n  steps: 5\n", "train:\n  lr: 0.1\n", diff, sizeof diff), 2);
    assert_string_equal(diff, "train.steps: 5 -> (none); train.lr: (none) -> 0.1");
    /* one number spelled two ways (an earlier version wrote 600 as 6e+02) is no change */
    assert_int_equal(config_resolved_diff("run:\n  collective_timeout: 6e+02\n",
                                          "run:\n  collective_timeout: 600\n", diff, sizeof diff), 0);
    assert_int_equal(config_resolved_diff(ta, tb, diff, 20), 3);
    assert_int_equal(strlen(diff), 19);
    assert_string_equal(diff + 16, "...");
    free(ta);
    free(tb);
    free(tc);
}

static void test_doc(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    assert_non_null(m);
    config_print_doc(m);
    fclose(m);
    assert_non_null(strstr(buf, "| section | key | type | default | doc |"));
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
        const char *p = pc_config_keys[i].path;
        char row[160];
        snprintf(row, sizeof row, "| %.*s | `%s` |", (int)(strchr(p, '.') - p), p, strchr(p, '.') + 1);
        if (!strstr(buf, row)) fail_msg("doc lacks a row for %s", p);
    }
    assert_non_null(strstr(buf, "| `lr` | number | `3e-4` |"));
    assert_non_null(strstr(buf, "One of: compress, prune, pretrain, eval, importance."));
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_and_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uniform_d_ff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overrides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_follows_matmul, setup, teardown),
        cmocka_unit_test_setup_teardown(test_override_fixes_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_distill_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_required_by_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reader_error_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_model_and_ranks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resolved_diff, setup, teardown),
        cmocka_unit_test(test_doc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
