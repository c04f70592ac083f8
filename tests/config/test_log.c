/* test_log: per-rank log files (RUN/logs/rank-NNNNN.log created, appended, flushed per
 * line), the line format, and which lines are echoed on stderr for which rank. */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include "log.h"

typedef struct fixture {
    char dir[256];
    char run[300];
} fixture;

static int setup(void **state) {
    fixture *f = pc_calloc(1, sizeof *f);
    if (test_mkdtemp(f->dir, sizeof f->dir, "log") != 0) return -1;
    snprintf(f->run, sizeof f->run, "%s/deep/run", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (test_rmtree(f->dir) != 0) return -1;
    free(f);
    return 0;
}

static char *read_all(const char *path) {
    char *t = NULL;
    pc_err e;
    if (pc_read_file(path, &t, NULL, &e) != 0) fail_msg("%s", e.msg);
    return t;
}

static int count_lines(const char *t) {
    int n = 0;
    for (; *t; t++) n += *t == '\n';
    return n;
}

static void assert_matches(const char *line, const char *pattern) {
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB | REG_NEWLINE), 0);
    int rc = regexec(&re, line, 0, NULL, 0);
    regfree(&re);
    if (rc != 0) fail_msg("'%s' does not match /%s/", line, pattern);
}

static void test_file_and_format(void **state) {
    fixture *f = *state;
    pc_log l;
    pc_err e = {{0}};
    log_init(&l, 3);
    assert_int_equal(l.step, -1);
    assert_int_equal(l.stderr_level, LOG_INFO);
    assert_true(l.host[0] != '\0');
    LOGI(&l, "before open is harmless"); /* no file yet: rank 3 INFO goes nowhere */
    assert_int_equal(log_open(&l, f->run, &e), 0);
    LOGI(&l, "hello %d", 42);
    char path[512];
    snprintf(path, sizeof path, "%s/logs/rank-00003.log", f->run);
    /* flushed per line: readable before close */
    char *t = read_all(path);
    assert_int_equal(count_lines(t), 1);
    char pattern[256];
    snprintf(pattern, sizeof pattern,
             "^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\\.[0-9]{3}Z rank 00003 %s step - "
             "INFO hello 42\n$",
             l.host);
    assert_matches(t, pattern);
    free(t);
    l.step = 12;
    LOGW(&l, "trailing newline is not doubled\n");
    LOGD(&l, "debug stays out of the file at the default level");
    log_close(&l);
    /* append on reopen */
    log_init(&l, 3);
    assert_int_equal(log_open(&l, f->run, &e), 0);
    l.step = 0;
    LOGE(&l, "after reopen");
    l.stderr_level = LOG_DEBUG;
    LOGD(&l, "debug now kept");
    log_close(&l);
    t = read_all(path);
    assert_int_equal(count_lines(t), 4);
    assert_non_null(strstr(t, "INFO hello 42\n"));
    assert_non_null(strstr(t, " step 12 WARN trailing newline is not doubled\n"));
    assert_null(strstr(t, "debug stays out"));
    assert_non_null(strstr(t, " step 0 ERROR after reopen\n"));
    assert_non_null(strstr(t, " step 0 DEBUG debug now kept\n"));
    free(t);
}

static void test_bad_dir(void **state) {
    fixture *f = *state;
    char blocker[512];
    snprintf(blocker, sizeof blocker, "%s/file", f->dir);
    FILE *fp = fopen(blocker, "w");
    assert_non_null(fp);
    fclose(fp);
    pc_log l;
    pc_err e = {{0}};
    log_init(&l, 0);
    assert_int_equal(log_open(&l, blocker, &e), -1); /* RUN is a regular file */
    assert_true(e.msg[0] != '\0');
    assert_null(l.file);
}

/* Run one log_msg with stderr redirected to a file; return what reached stderr. */
static char *capture(fixture *f, pc_log *l, log_level lv, const char *msg) {
    char path[512];
    snprintf(path, sizeof path, "%s/stderr.txt", f->dir);
    fflush(stderr);
    int saved = dup(2);
    FILE *cap = fopen(path, "w");
    assert_non_null(cap);
    dup2(fileno(cap), 2);
    log_msg(l, lv, "%s", msg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(cap);
    return read_all(path);
}

static void test_stderr_rules(void **state) {
    fixture *f = *state;
    pc_log r0, r1;
    log_init(&r0, 0);
    log_init(&r1, 1);
    char *t;
    struct {
        pc_log *l;
        log_level lv;
        int all, level, echoed;
    } cases[] = {
        {&r0, LOG_INFO, 0, LOG_INFO, 1},  {&r0, LOG_DEBUG, 0, LOG_INFO, 0}, {&r0, LOG_DEBUG, 0, LOG_DEBUG, 1},
        {&r0, LOG_INFO, 0, LOG_WARN, 0},  {&r1, LOG_INFO, 0, LOG_INFO, 0},  {&r1, LOG_WARN, 0, LOG_INFO, 1},
        {&r1, LOG_ERROR, 0, LOG_INFO, 1}, {&r1, LOG_INFO, 1, LOG_INFO, 1},  {&r1, LOG_DEBUG, 1, LOG_INFO, 0},
        {&r1, LOG_WARN, 0, LOG_ERROR, 1},
    };
    for (size_t i = 0; i < PC_ARRAY_LEN(cases); i++) {
        cases[i].l->all_ranks_stderr = cases[i].all;
        cases[i].l->stderr_level = (log_level)cases[i].level;
        t = capture(f, cases[i].l, cases[i].lv, "echo?");
        int got = strstr(t, "echo?") != NULL;
        if (got != cases[i].echoed)
            fail_msg("case %zu: rank %d level %d all %d min %d: echoed %d, want %d", i, cases[i].l->rank,
                     cases[i].lv, cases[i].all, cases[i].level, got, cases[i].echoed);
        if (got) {
            char want[64];
            snprintf(want, sizeof want, "rank %05d ", cases[i].l->rank);
            assert_non_null(strstr(t, want));
        }
        free(t);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_file_and_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stderr_rules, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
