/* json: strict recursive-descent JSON parser into a json_val tree, and the json_buf
 * text builder used to write headers, configs and metrics lines. See json.h. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const char *s;
    size_t len, pos;
    int depth;
    int lenient; /* json_parse_lenient: what Python's json module also reads */
    pc_err *e;
} parser;

static int perr(parser *p, const char *what) {
    return pc_errorf(p->e, "JSON: %s at byte %zu", what, p->pos);
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int parse_value(parser *p, json_val *v);

static int lit(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return perr(p, "invalid literal");
    p->pos += n;
    return 0;
}

static int hex4(parser *p, unsigned *out) {
    if (p->len - p->pos < 4) return perr(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + (size_t)i];
        unsigned d;
        if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
        else return perr(p, "invalid hex digit in \\u escape");
        v = v * 16 + d;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static void put_utf8(json_buf *b, unsigned cp) {
    char t[4];
    size_t n;
    if (cp < 0x80) {
        t[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (char)(0xC0 | (cp >> 6));
        t[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | (cp >> 12));
        t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | (cp >> 18));
        t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    json_buf_append(b, t, n);
}

/* Length of the valid UTF-8 sequence starting at s (at most avail bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    size_t n;
    unsigned cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    return n;
}

/* Parses a string starting at the opening quote into a fresh NUL-terminated buffer. */
static int parse_string(parser *p, char **out, size_t *out_len) {
    json_buf b;
    json_buf_init(&b);
    p->pos++; /* opening quote */
    for (;;) {
        if (p->pos >= p->len) {
            json_buf_free(&b);
            return perr(p, "unterminated string");
        }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20) {
            json_buf_free(&b);
            return perr(p, "control character in string");
        }
        if (c == '\\') {
            if (p->pos + 1 >= p->len) {
                json_buf_free(&b);
                return perr(p, "unterminated escape");
            }
            char x = p->s[p->pos + 1];
            p->pos += 2;
            char r;
            switch (x) {
            case '"': r = '"'; break;
            case '\\': r = '\\'; break;
            case '/': r = '/'; break;
            case 'b': r = '\b'; break;
            case 'f': r = '\f'; break;
            case 'n': r = '\n'; break;
            case 'r': r = '\r'; break;
            case 't': r = '\t'; break;
            case 'u': {
                unsigned cp;
                if (hex4(p, &cp) != 0) {
                    json_buf_free(&b);
                    return -1;
                }
                int paired = cp >= 0xD800 && cp <= 0xDBFF && p->len - p->pos >= 6 && p->s[p->pos] == '\\' &&
                             p->s[p->pos + 1] == 'u';
                unsigned lo = 0;
                if (paired) { /* a high surrogate and, it must be, its low one */
                    p->pos += 2;
                    if (hex4(p, &lo) != 0) {
                        json_buf_free(&b);
                        return -1;
                    }
                    paired = lo >= 0xDC00 && lo <= 0xDFFF;
                    if (!paired && !p->lenient) {
                        json_buf_free(&b);
                        return perr(p, "invalid low surrogate in \\u escape");
                    }
                    if (!paired) p->pos -= 6; /* lenient: the next escape is read on its own */
                }
                if (paired) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xD800 && cp <= 0xDFFF) { /* a lone surrogate has no UTF-8 form */
                    if (!p->lenient) {
                        json_buf_free(&b);
                        return perr(p, cp >= 0xDC00 ? "unpaired low surrogate in \\u escape"
                                                    : "unpaired high surrogate in \\u escape");
                    }
                    cp = 0xFFFD; /* the replacement character */
                }
                put_utf8(&b, cp);
                continue;
            }
            default:
                p->pos -= 1;
                json_buf_free(&b);
                return perr(p, "invalid escape in string");
            }
            json_buf_append(&b, &r, 1);
            continue;
        }
        size_t n = utf8_len((const unsigned char *)p->s + p->pos, p->len - p->pos);
        if (n == 0) {
            json_buf_free(&b);
            return perr(p, "invalid UTF-8 in string");
        }
        json_buf_append(&b, p->s + p->pos, n);
        p->pos += n;
    }
    if (b.data == NULL) json_buf_append(&b, "", 0);
    *out = b.data;
    *out_len = b.len;
    return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int parse_number(parser *p, json_val *v) {
    size_t start = p->pos;
    int integral = 1;
    if (p->pos < p->len && p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || !is_digit(p->s[p->pos])) return perr(p, "invalid number");
    if (p->s[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->len && is_digit(p->s[p->pos])) return perr(p, "leading zero in number");
    } else {
        while (p->pos < p->len && is_digit(p->s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && p->s[p->pos] == '.') {
        integral = 0;
        p->pos++;
        if (p->pos >= p->len || !is_digit(p->s[p->pos])) return perr(p, "digit expected after '.'");
        while (p->pos < p->len && is_digit(p->s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        integral = 0;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || !is_digit(p->s[p->pos])) return perr(p, "digit expected in exponent");
        while (p->pos < p->len && is_digit(p->s[p->pos])) p->pos++;
    }
    size_t n = p->pos - start;
    char small[64];
    char *buf = n < sizeof small ? small : pc_malloc(n + 1);
    memcpy(buf, p->s + start, n);
    buf[n] = '\0';
    v->type = JSON_NUMBER;
    v->num = strtod(buf, NULL);
    if (integral) {
        char *end;
        errno = 0;
        long long x = strtoll(buf, &end, 10);
        if (errno == 0 && *end == '\0') {
            v->is_int = 1;
            v->inum = (int64_t)x;
        }
    }
    if (buf != small) free(buf);
    return 0;
}

static int cmp_key_idx(const void *a, const void *b, void *keys) {
    char **k = keys;
    int r = strcmp(k[*(const int *)a], k[*(const int *)b]);
    return r != 0 ? r : (*(const int *)a - *(const int *)b);
}

/* Rejects duplicate member names (O(n log n)); a lenient parse keeps them. */
static int check_dup_keys(parser *p, json_val *v) {
    if (v->n < 2 || p->lenient) return 0;
    int *idx = pc_malloc(sizeof(int) * (size_t)v->n);
    for (int i = 0; i < v->n; i++) idx[i] = i;
    qsort_r(idx, (size_t)v->n, sizeof(int), cmp_key_idx, v->keys);
    int rc = 0;
    for (int i = 1; i < v->n; i++) {
        if (strcmp(v->keys[idx[i - 1]], v->keys[idx[i]]) == 0) {
            rc = pc_errorf(p->e, "JSON: duplicate key '%s' at byte %zu", v->keys[idx[i]], v->items[idx[i]].offset);
            break;
        }
    }
    free(idx);
    return rc;
}

static int parse_container(parser *p, json_val *v, int is_obj) {
    if (++p->depth > JSON_MAX_DEPTH) return perr(p, "nesting deeper than 64 levels");
    v->type = is_obj ? JSON_OBJECT : JSON_ARRAY;
    char close = is_obj ? '}' : ']';
    int cap = 0;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        p->depth--;
        return 0;
    }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? cap * 2 : 4;
            v->items = pc_realloc(v->items, sizeof(json_val) * (size_t)cap);
            if (is_obj) v->keys = pc_realloc(v->keys, sizeof(char *) * (size_t)cap);
        }
        skip_ws(p);
        if (is_obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"') return perr(p, "object key (string) expected");
            size_t klen;
            if (parse_string(p, &v->keys[v->n], &klen) != 0) return -1;
            memset(&v->items[v->n], 0, sizeof(json_val));
            v->n++; /* counted now so the key is freed on a later error */
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') return perr(p, "':' expected after object key");
            p->pos++;
            skip_ws(p);
            if (parse_value(p, &v->items[v->n - 1]) != 0) return -1;
        } else {
            memset(&v->items[v->n], 0, sizeof(json_val));
            v->n++;
            if (parse_value(p, &v->items[v->n - 1]) != 0) return -1;
        }
        skip_ws(p);
        if (p->pos >= p->len) return perr(p, is_obj ? "unterminated object" : "unterminated array");
        char c = p->s[p->pos];
        if (c == ',') {
            p->pos++;
            continue;
        }
        if (c == close) {
            p->pos++;
            break;
        }
        return perr(p, is_obj ? "',' or '}' expected in object" : "',' or ']' expected in array");
    }
    p->depth--;
    return is_obj ? check_dup_keys(p, v) : 0;
}

/* Lenient: NaN, Infinity or -Infinity (Python's json.dumps writes them) as a number. */
static int nonfinite(parser *p, json_val *v) {
    static const char *words[3] = {"NaN", "Infinity", "-Infinity"};
    static const double values[3] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if (p->len - p->pos >= n && !memcmp(p->s + p->pos, words[i], n)) {
            p->pos += n;
            v->type = JSON_NUMBER;
            v->num = values[i];
            return 1;
        }
    }
    return 0;
}

static int parse_value(parser *p, json_val *v) {
    skip_ws(p);
    v->offset = p->pos;
    if (p->pos >= p->len) return perr(p, "value expected");
    char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, v, 1);
    case '[': return parse_container(p, v, 0);
    case '"':
        v->type = JSON_STRING;
        return parse_string(p, &v->str, &v->str_len);
    case 't':
        v->type = JSON_BOOL;
        v->boolean = 1;
        return lit(p, "true");
    case 'f':
        v->type = JSON_BOOL;
        v->boolean = 0;
        return lit(p, "false");
    case 'n':
        v->type = JSON_NULL;
        return lit(p, "null");
    default:
        if (p->lenient && nonfinite(p, v)) return 0;
        if (c == '-' || is_digit(c)) return parse_number(p, v);
        return perr(p, "value expected");
    }
}

static void free_children(json_val *v) {
    if (v->type == JSON_STRING) free(v->str);
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        for (int i = 0; i < v->n; i++) {
            free_children(&v->items[i]);
            if (v->keys) free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
    }
}

static int parse(const char *text, size_t len, int lenient, json_val **root, pc_err *e) {
    parser p = {.s = text, .len = len, .pos = 0, .depth = 0, .lenient = lenient, .e = e};
    json_val *v = pc_calloc(1, sizeof(json_val));
    *root = NULL;
    if (parse_value(&p, v) != 0) {
        free_children(v);
        free(v);
        return -1;
    }
    skip_ws(&p);
    if (p.pos != len) {
        free_children(v);
        free(v);
        return perr(&p, "trailing characters after the JSON value");
    }
    *root = v;
    return 0;
}

int json_parse(const char *text, size_t len, json_val **root, pc_err *e) { return parse(text, len, 0, root, e); }

int json_parse_lenient(const char *text, size_t len, json_val **root, pc_err *e) {
    return parse(text, len, 1, root, e);
}

void json_free(json_val *v) {
    if (!v) return;
    free_children(v);
    free(v);
}

const json_val *json_get(const json_val *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (int i = obj->n - 1; i >= 0; i--) /* the last of duplicates (only a lenient parse keeps them) */
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

int json_len(const json_val *v) {
    return (v && (v->type == JSON_ARRAY || v->type == JSON_OBJECT)) ? v->n : 0;
}

const json_val *json_at(const json_val *v, int i) {
    if (!v || (v->type != JSON_ARRAY && v->type != JSON_OBJECT) || i < 0 || i >= v->n) return NULL;
    return &v->items[i];
}

const char *json_key(const json_val *obj, int i) {
    if (!obj || obj->type != JSON_OBJECT || i < 0 || i >= obj->n) return NULL;
    return obj->keys[i];
}

const char *json_type_name(json_type t) {
    static const char *names[] = {"null", "boolean", "number", "string", "array", "object"};
    return (unsigned)t < PC_ARRAY_LEN(names) ? names[t] : "?";
}

int json_int(const json_val *v, int64_t *out) {
    if (!v || v->type != JSON_NUMBER) return -1;
    if (v->is_int) {
        *out = v->inum;
        return 0;
    }
    if (!isfinite(v->num) || v->num != floor(v->num) || fabs(v->num) > 9007199254740992.0) return -1;
    *out = (int64_t)v->num;
    return 0;
}

int json_num(const json_val *v, double *out) {
    if (!v || v->type != JSON_NUMBER) return -1;
    *out = v->num;
    return 0;
}

int json_bool(const json_val *v, int *out) {
    if (!v || v->type != JSON_BOOL) return -1;
    *out = v->boolean;
    return 0;
}

const char *json_str(const json_val *v) { return (v && v->type == JSON_STRING) ? v->str : NULL; }

int json_is_null(const json_val *v) { return v && v->type == JSON_NULL; }

/* ---- builder ---- */

void json_buf_init(json_buf *b) {
    b->data = NULL;
    b->len = b->cap = 0;
}

void json_buf_free(json_buf *b) {
    free(b->data);
    json_buf_init(b);
}

static void reserve(json_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    b->data = pc_realloc(b->data, cap);
    b->cap = cap;
}

void json_buf_append(json_buf *b, const char *s, size_t n) {
    reserve(b, n);
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void json_buf_puts(json_buf *b, const char *s) { json_buf_append(b, s, strlen(s)); }

void json_buf_printf(json_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

void json_buf_strn(json_buf *b, const char *s, size_t n) {
    json_buf_append(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': json_buf_append(b, "\\\"", 2); break;
        case '\\': json_buf_append(b, "\\\\", 2); break;
        case '\n': json_buf_append(b, "\\n", 2); break;
        case '\r': json_buf_append(b, "\\r", 2); break;
        case '\t': json_buf_append(b, "\\t", 2); break;
        case '\b': json_buf_append(b, "\\b", 2); break;
        case '\f': json_buf_append(b, "\\f", 2); break;
        default:
            if (c < 0x20) json_buf_printf(b, "\\u%04x", c);
            else json_buf_append(b, (const char *)&s[i], 1);
        }
    }
    json_buf_append(b, "\"", 1);
}

void json_buf_str(json_buf *b, const char *s) { json_buf_strn(b, s, strlen(s)); }

void json_buf_num(json_buf *b, double x) {
    if (!isfinite(x)) {
        json_buf_puts(b, "null");
        return;
    }
    if (x == floor(x) && fabs(x) < 1e15) {
        json_buf_printf(b, "%.1f", x);
        return;
    }
    char t[64];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, x);
        if (strtod(t, NULL) == x) break;
    }
    json_buf_puts(b, t);
}

void json_buf_int(json_buf *b, int64_t x) { json_buf_printf(b, "%lld", (long long)x); }

void json_buf_value(json_buf *b, const json_val *v) {
    switch (v->type) {
    case JSON_NULL: json_buf_puts(b, "null"); break;
    case JSON_BOOL: json_buf_puts(b, v->boolean ? "true" : "false"); break;
    case JSON_NUMBER:
        if (v->is_int) json_buf_int(b, v->inum);
        else json_buf_num(b, v->num);
        break;
    case JSON_STRING: json_buf_strn(b, v->str, v->str_len); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        json_buf_append(b, v->type == JSON_ARRAY ? "[" : "{", 1);
        for (int i = 0; i < v->n; i++) {
            if (i) json_buf_append(b, ",", 1);
            if (v->type == JSON_OBJECT) {
                json_buf_str(b, v->keys[i]);
                json_buf_append(b, ":", 1);
            }
            json_buf_value(b, &v->items[i]);
        }
        json_buf_append(b, v->type == JSON_ARRAY ? "]" : "}", 1);
        break;
    }
}

int json_utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len((const unsigned char *)s + i, n - i);
        if (k == 0) return 0;
        i += k;
    }
    return 1;
}
