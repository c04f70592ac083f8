/* json: a small strict JSON (RFC 8259) parser into a tree, and a text builder.
 *
 * The parser accepts exactly one value surrounded by optional whitespace, valid
 * UTF-8, strings with every escape including \uXXXX surrogate pairs, and numbers in
 * JSON grammar only. It rejects trailing garbage, duplicate object keys, control
 * characters inside strings and nesting deeper than JSON_MAX_DEPTH; errors give the
 * byte offset. The builder appends JSON text to a growable buffer. */
#ifndef PC_JSON_H
#define PC_JSON_H

#include <stdint.h>

#include "util.h"

#define JSON_MAX_DEPTH 64

typedef enum { JSON_NULL = 0, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_val json_val;
struct json_val {
    json_type type;
    size_t offset;    /* byte offset of the value in the parsed text */
    int boolean;      /* JSON_BOOL */
    double num;       /* JSON_NUMBER */
    int is_int;       /* JSON_NUMBER written without fraction/exponent and fitting int64 */
    int64_t inum;     /* JSON_NUMBER when is_int */
    char *str;        /* JSON_STRING: NUL-terminated UTF-8 (may hold embedded NULs) */
    size_t str_len;   /* JSON_STRING: bytes, excluding the terminating NUL */
    int n;            /* JSON_ARRAY / JSON_OBJECT: number of elements / members */
    json_val *items;  /* elements, or member values (n of them) */
    char **keys;      /* JSON_OBJECT: member names (n of them) */
};

/* Parse text[0, len) into a new tree (*root, free with json_free). On error the
 * message gives the byte offset and what was expected. */
int json_parse(const char *text, size_t len, json_val **root, pc_err *e);
/* The same, reading also what Python's json module reads and writes by default: NaN,
 * Infinity and -Infinity as numbers, duplicate keys (json_get finds the last), and an
 * unpaired surrogate escape, which has no UTF-8 form, as U+FFFD. */
int json_parse_lenient(const char *text, size_t len, json_val **root, pc_err *e);
void json_free(json_val *v);

/* Member of an object; NULL when v is not an object or has no such key. */
const json_val *json_get(const json_val *obj, const char *key);
/* Number of elements/members (0 for scalars); element/member i; name of member i. */
int json_len(const json_val *v);
const json_val *json_at(const json_val *v, int i);
const char *json_key(const json_val *obj, int i);
/* "null", "boolean", "number", "string", "array", "object". */
const char *json_type_name(json_type t);
/* Typed accessors: 0 on success, -1 (out untouched) when v is NULL or of another type.
 * json_int accepts integral numbers only (1.0 and 1e3 count; 1.5 does not). */
int json_int(const json_val *v, int64_t *out);
int json_num(const json_val *v, double *out);
int json_bool(const json_val *v, int *out);
/* String value or NULL when v is not a string. */
const char *json_str(const json_val *v);
int json_is_null(const json_val *v);

/* Growable text buffer for building JSON; data is always NUL-terminated. */
typedef struct json_buf {
    char *data;
    size_t len, cap;
} json_buf;

void json_buf_init(json_buf *b);
void json_buf_free(json_buf *b);
void json_buf_append(json_buf *b, const char *s, size_t n);
void json_buf_puts(json_buf *b, const char *s);
void json_buf_printf(json_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A quoted, escaped JSON string (s treated as n bytes of UTF-8). */
void json_buf_strn(json_buf *b, const char *s, size_t n);
void json_buf_str(json_buf *b, const char *s);
/* A number that reads back to the same double; integral values keep a ".0". Non-finite
 * values (not representable in JSON) are written as null. */
void json_buf_num(json_buf *b, double x);
void json_buf_int(json_buf *b, int64_t x);
/* Serialise a parsed tree (compact). */
void json_buf_value(json_buf *b, const json_val *v);

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
int json_utf8_valid(const char *s, size_t n);

#endif
