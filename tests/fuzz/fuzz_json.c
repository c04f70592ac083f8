/* fuzz_json: libFuzzer harness for the strict JSON parser and the serialiser.
 *
 * Property: any text that parses serialises to text that parses again and serialises to
 * the same bytes (print(parse(print(parse(x)))) == print(parse(x))); the accessors agree
 * with the node types. The lenient parse never fails where the strict one passes, and
 * then gives the same tree (the same printed bytes); what it alone reads it reads without
 * fault (sanitizers). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "json.h"

static void walk(const json_val *v, int depth) {
    FUZZ_CHECK(depth <= JSON_MAX_DEPTH + 1, "tree deeper than JSON_MAX_DEPTH");
    int64_t i64;
    double d;
    int b;
    FUZZ_CHECK((json_str(v) != NULL) == (v->type == JSON_STRING), "json_str disagrees with the type");
    FUZZ_CHECK((json_bool(v, &b) == 0) == (v->type == JSON_BOOL), "json_bool disagrees with the type");
    FUZZ_CHECK((json_num(v, &d) == 0) == (v->type == JSON_NUMBER), "json_num disagrees with the type");
    if (json_int(v, &i64) == 0) FUZZ_CHECK(v->type == JSON_NUMBER, "json_int on a non-number");
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        FUZZ_CHECK(json_len(v) == v->n, "json_len");
        for (int i = 0; i < v->n; i++) {
            walk(json_at(v, i), depth + 1);
            if (v->type == JSON_OBJECT) FUZZ_CHECK(json_get(v, json_key(v, i)) == json_at(v, i), "json_get by key");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_val *root = NULL, *loose = NULL;
    pc_err e = {{0}}, le = {{0}};
    int lrc = json_parse_lenient((const char *)data, size, &loose, &le);
    FUZZ_CHECK(lrc == 0 || le.msg[0] != '\0', "lenient parse failed without a message");
    if (json_parse((const char *)data, size, &root, &e) != 0) {
        FUZZ_CHECK(e.msg[0] != '\0', "parse failed without a message");
        json_free(loose);
        return 0;
    }
    FUZZ_CHECK(lrc == 0, "the lenient parse fails where the strict one passes: %s", le.msg);
    json_buf l;
    json_buf_init(&l);
    json_buf_value(&l, loose);
    json_free(loose);
    walk(root, 0);
    json_buf a, b;
    json_buf_init(&a);
    json_buf_init(&b);
    json_buf_value(&a, root);
    json_val *again = NULL;
    int rc = json_parse(a.data, a.len, &again, &e);
    FUZZ_CHECK(rc == 0, "serialised text does not parse: %s\n  text: %.200s", e.msg, a.data);
    json_buf_value(&b, again);
    FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0, "round trip differs:\n  %.200s\n  %.200s",
               a.data, b.data);
    FUZZ_CHECK(a.len == l.len && memcmp(a.data, l.data, a.len) == 0, "the lenient parse's tree differs:\n  %.200s\n"
               "  %.200s", a.data, l.data);
    json_buf_free(&l);
    json_free(again);
    json_free(root);
    json_buf_free(&a);
    json_buf_free(&b);
    return 0;
}
