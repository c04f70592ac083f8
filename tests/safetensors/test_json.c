/* Unit tests of the strict JSON parser and the json_buf builder: accepted documents,
 * rejected ones with byte offsets, escapes, depth limit, duplicate keys, round trips;
 * the lenient parse (what Python's json module reads). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static json_val *parse_ok(const char *s) {
    json_val *v = NULL;
    pc_err e = {{0}};
    int rc = json_parse(s, strlen(s), &v, &e);
    if (rc != 0) fail_msg("parse of %s failed: %s", s, e.msg);
    assert_non_null(v);
    return v;
}

static void parse_bad(const char *s, size_t len, const char *substr) {
    json_val *v = (json_val *)0x1;
    pc_err e = {{0}};
    assert_int_equal(json_parse(s, len, &v, &e), -1);
    assert_null(v);
    if (!strstr(e.msg, substr)) fail_msg("error for %s is '%s', expected to contain '%s'", s, e.msg, substr);
}

static void test_scalars(void **state) {
    (void)state;
    json_val *v = parse_ok(" 42 ");
    int64_t i;
    double d;
    assert_int_equal(json_int(v, &i), 0);
    assert_int_equal(i, 42);
    json_free(v);
    v = parse_ok("-9223372036854775808");
    assert_int_equal(json_int(v, &i), 0);
    assert_true(i == INT64_MIN);
    json_free(v);
    v = parse_ok("1.5e-3");
    assert_int_equal(json_num(v, &d), 0);
    assert_true(d == 1.5e-3);
    assert_int_equal(json_int(v, &i), -1);
    json_free(v);
    v = parse_ok("1e3");
    assert_int_equal(json_int(v, &i), 0);
    assert_int_equal(i, 1000);
    json_free(v);
    v = parse_ok("true");
    int b = 0;
    assert_int_equal(json_bool(v, &b), 0);
    assert_int_equal(b, 1);
    assert_null(json_str(v));
    json_free(v);
    v = parse_ok("null");
    assert_true(json_is_null(v));
    json_free(v);
}

static void test_strings(void **state) {
    (void)state;
    json_val *v = parse_ok("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\u20AC\\ud83d\\ude00\"");
    const char *want = "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_string_equal(json_str(v), want);
    assert_int_equal(v->str_len, strlen(want));
    json_free(v);
    v = parse_ok("\"x\\u0000y\"");
    assert_int_equal(v->str_len, 3);
    json_free(v);
    v = parse_ok("\"\xe6\x97\xa5\"");
    assert_string_equal(json_str(v), "\xe6\x97\xa5");
    json_free(v);
}

static void test_containers(void **state) {
    (void)state;
    json_val *v = parse_ok("{\"a\": [1, 2, {\"b\": null}], \"c\": {}, \"d\": [], \"e\": \"s\"}");
    assert_int_equal(v->type, JSON_OBJECT);
    assert_int_equal(json_len(v), 4);
    const json_val *a = json_get(v, "a");
    assert_non_null(a);
    assert_int_equal(json_len(a), 3);
    int64_t i;
    assert_int_equal(json_int(json_at(a, 1), &i), 0);
    assert_int_equal(i, 2);
    assert_true(json_is_null(json_get(json_at(a, 2), "b")));
    assert_null(json_get(v, "missing"));
    assert_null(json_get(a, "a"));
    assert_null(json_at(a, 3));
    assert_string_equal(json_key(v, 3), "e");
    assert_int_equal(json_len(json_get(v, "c")), 0);
    assert_int_equal(json_get(v, "d")->type, JSON_ARRAY);
    json_free(v);
}

static void test_rejects(void **state) {
    (void)state;
    parse_bad("", 0, "value expected");
    parse_bad("   ", 3, "value expected");
    parse_bad("{} x", 4, "trailing characters");
    parse_bad("1 2", 3, "trailing");
    parse_bad("{\"a\":1,}", 8, "object key");
    parse_bad("[1,]", 4, "value expected");
    parse_bad("[1 2]", 5, "',' or ']'");
    parse_bad("{\"a\" 1}", 7, "':'");
    parse_bad("{\"a\":1,\"a\":2}", 13, "duplicate key 'a'");
    parse_bad("{a:1}", 5, "object key");
    parse_bad("01", 2, "leading zero");
    parse_bad("1.", 2, "after '.'");
    parse_bad("1e", 2, "exponent");
    parse_bad("-", 1, "invalid number");
    parse_bad("+1", 2, "value expected");
    parse_bad(".5", 2, "value expected");
    parse_bad("NaN", 3, "value expected");
    parse_bad("tru", 3, "invalid literal");
    parse_bad("nul", 3, "invalid literal");
    parse_bad("\"abc", 4, "unterminated string");
    parse_bad("\"a\x01\"", 4, "control character");
    parse_bad("\"\\x\"", 4, "invalid escape");
    parse_bad("\"\\u12G4\"", 8, "hex digit");
    parse_bad("\"\\ud83d\"", 8, "unpaired high surrogate");
    parse_bad("\"\\ude00\"", 8, "unpaired low surrogate");
    parse_bad("\"\xff\"", 3, "invalid UTF-8");
    parse_bad("\"\xc0\xaf\"", 4, "invalid UTF-8");
    parse_bad("\"\xed\xa0\x80\"", 5, "invalid UTF-8");
    parse_bad("[1", 2, "unterminated array");
    parse_bad("{\"a\":1", 6, "unterminated object");
    /* explicit length: the NUL byte and what follows are part of the text */
    parse_bad("{}\0{}", 5, "trailing");
    /* byte offset is reported */
    parse_bad("[1, x]", 6, "at byte 4");
}

/* What Python's json module also reads: NaN and infinities, duplicate keys (the last
 * wins), lone surrogate escapes (U+FFFD); what it rejects is still rejected. */
static void test_lenient(void **state) {
    (void)state;
    const char *s = "{\"a\": NaN, \"b\": [Infinity, -Infinity], \"k\": 1, \"k\": 2, "
                    "\"t\": \"x\\ud83d\\u0041\\ude00\\ud83d\\ude00\\ud83d\"}";
    json_val *v = NULL;
    pc_err e = {{0}};
    assert_int_equal(json_parse(s, strlen(s), &v, &e), -1); /* strict */
    assert_int_equal(json_parse_lenient(s, strlen(s), &v, &e), 0);
    double x;
    assert_int_equal(json_num(json_get(v, "a"), &x), 0);
    assert_true(isnan(x));
    assert_int_equal(json_num(json_at(json_get(v, "b"), 0), &x), 0);
    assert_true(isinf(x) && x > 0);
    assert_int_equal(json_num(json_at(json_get(v, "b"), 1), &x), 0);
    assert_true(isinf(x) && x < 0);
    int64_t k;
    assert_int_equal(json_int(json_get(v, "k"), &k), 0);
    assert_int_equal(k, 2);
    /* x, U+FFFD, A, U+FFFD, U+1F600 (a pair), U+FFFD */
    assert_string_equal(json_str(json_get(v, "t")), "x\xef\xbf\xbd" "A\xef\xbf\xbd\xf0\x9f\x98\x80\xef\xbf\xbd");
    json_free(v);
    const char *bad[] = {"nan", "Infinit", "[1,]", "\"\\x\"", "\"\xff\"", "+Infinity"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        v = (json_val *)0x1;
        if (json_parse_lenient(bad[i], strlen(bad[i]), &v, &e) != -1) fail_msg("lenient parse accepted %s", bad[i]);
    }
}

static void test_depth(void **state) {
    (void)state;
    char buf[300];
    int d = 64;
    for (int i = 0; i < d; i++) buf[i] = '[';
    for (int i = 0; i < d; i++) buf[d + i] = ']';
    json_val *v = NULL;
    pc_err e = {{0}};
    assert_int_equal(json_parse(buf, (size_t)(2 * d), &v, &e), 0);
    json_free(v);
    d = 65;
    for (int i = 0; i < d; i++) buf[i] = '[';
    for (int i = 0; i < d; i++) buf[d + i] = ']';
    parse_bad(buf, (size_t)(2 * d), "deeper than 64");
}

static void test_many_keys(void **state) {
    (void)state;
    json_buf b;
    json_buf_init(&b);
    json_buf_puts(&b, "{");
    for (int i = 0; i < 5000; i++) json_buf_printf(&b, "%s\"k%d\":%d", i ? "," : "", i, i);
    json_buf_puts(&b, "}");
    json_val *v = parse_ok(b.data);
    int64_t x;
    assert_int_equal(json_int(json_get(v, "k4321"), &x), 0);
    assert_int_equal(x, 4321);
    json_free(v);
    /* the same with one duplicate far from its twin */
    json_buf_puts(&b, "");
    b.data[b.len - 1] = ',';
    json_buf_puts(&b, "\"k17\":1}");
    parse_bad(b.data, b.len, "duplicate key 'k17'");
    json_buf_free(&b);
}

static void test_builder(void **state) {
    (void)state;
    json_buf b;
    json_buf_init(&b);
    json_buf_puts(&b, "[");
    json_buf_str(&b, "q\"\\\n\t\x01\xc3\xa9");
    json_buf_puts(&b, ",");
    json_buf_num(&b, 1e-5);
    json_buf_puts(&b, ",");
    json_buf_num(&b, 500000.0);
    json_buf_puts(&b, ",");
    json_buf_num(&b, 0.1);
    json_buf_puts(&b, ",");
    json_buf_int(&b, -7);
    json_buf_puts(&b, ",");
    json_buf_num(&b, 1.0 / 3.0);
    json_buf_puts(&b, "]");
    assert_string_equal(b.data, "[\"q\\\"\\\\\\n\\t\\u0001\xc3\xa9\",1e-05,500000.0,0.1,-7,0.3333333333333333]");
    json_val *v = parse_ok(b.data);
    assert_string_equal(json_str(json_at(v, 0)), "q\"\\\n\t\x01\xc3\xa9");
    double d;
    json_num(json_at(v, 5), &d);
    assert_true(d == 1.0 / 3.0);
    json_buf r;
    json_buf_init(&r);
    json_buf_value(&r, v);
    json_val *v2 = parse_ok(r.data);
    json_buf r2;
    json_buf_init(&r2);
    json_buf_value(&r2, v2);
    assert_string_equal(r.data, r2.data);
    json_free(v);
    json_free(v2);
    json_buf_free(&b);
    json_buf_free(&r);
    json_buf_free(&r2);
}

/* Random mutations of a valid header must never crash and either parse or fail cleanly. */
static void test_mutations(void **state) {
    (void)state;
    const char *base = "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                       "\"data_offsets\":[0,24]},\"s\":\"\\u00e9\\n\",\"n\":[-1.5e+3,0,true,false,null]}";
    size_t n = strlen(base);
    char *buf = malloc(n + 1);
    pc_rng rng;
    pc_rng_seed(&rng, 1234);
    int ok = 0, bad = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, base, n + 1);
        int k = 1 + (int)(pc_rng_u64(&rng) % 3);
        for (int j = 0; j < k; j++) buf[pc_rng_u64(&rng) % n] = (char)(pc_rng_u64(&rng) & 0xFF);
        size_t len = n - (size_t)(pc_rng_u64(&rng) % 4);
        json_val *v = NULL;
        pc_err e = {{0}};
        if (json_parse(buf, len, &v, &e) == 0) {
            ok++;
            json_free(v);
        } else {
            bad++;
            assert_non_null(strstr(e.msg, "at byte"));
        }
    }
    assert_true(bad > 0);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),    cmocka_unit_test(test_strings), cmocka_unit_test(test_containers),
        cmocka_unit_test(test_rejects),    cmocka_unit_test(test_depth),   cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_builder),    cmocka_unit_test(test_mutations), cmocka_unit_test(test_lenient),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
