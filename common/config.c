/* config: loads the job YAML into pc_config, driven by the key table in config_keys.h.
 *
 * Order: table defaults, then the file (libyaml document API, so every key keeps its
 * line), then each --set override, then validation of single keys (ranges, required
 * keys per run.mode) and of pairs (micro_batch vs global_batch in the modes that
 * train). Every value records where it came from in c->where[] so later checks (model
 * shape, rank count) can point at the line that set it. Also writes the resolved config
 * and the docs table. */
#include "config.h"
#include "json.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config_keys.h"

_Static_assert(PC_CONFIG_N_KEYS <= PC_CONFIG_MAX_KEYS, "raise PC_CONFIG_MAX_KEYS in config.h");

/* A value as read from YAML (file node or --set text), before it is typed. */
typedef struct cval {
    enum { CV_SCALAR, CV_SEQ, CV_MAP } kind;
    const char *text;   /* CV_SCALAR */
    int quoted;         /* CV_SCALAR: not a plain scalar */
    const char **items; /* CV_SEQ: (n,) scalars */
    int n;
    int bad_item;       /* CV_SEQ holds a non-scalar */
} cval;

static const char *const mode_names[] = {"compress", "prune", "pretrain", "eval", "importance"};

/* ---------- table helpers ---------- */

static void *field_of(pc_config *c, const pc_config_key *k) { return (char *)c + k->offset; }
static const void *cfield_of(const pc_config *c, const pc_config_key *k) { return (const char *)c + k->offset; }
static int *count_of(pc_config *c, const pc_config_key *k) { return (int *)((char *)c + k->count_offset); }
static int ccount_of(const pc_config *c, const pc_config_key *k) {
    return *(const int *)((const char *)c + k->count_offset);
}
static size_t list_cap(const pc_config_key *k) { return k->size / k->elem_size; }

static int key_index(const char *path) {
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++)
        if (!strcmp(pc_config_keys[i].path, path)) return i;
    return -1;
}

/* Length of the section part of a key path. */
static size_t section_len(const char *path) {
    const char *dot = strchr(path, '.');
    return dot ? (size_t)(dot - path) : strlen(path);
}

static int section_known(const char *name) {
    size_t n = strlen(name);
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++)
        if (section_len(pc_config_keys[i].path) == n && !strncmp(pc_config_keys[i].path, name, n)) return 1;
    return 0;
}

/* Where a key's value came from, or the file when it is a default. */
static const char *where_of(const pc_config *c, int k) {
    if (k >= 0 && c->where[k][0]) return c->where[k];
    return c->source[0] ? c->source : "config";
}

static void set_where(pc_config *c, int k, const char *where) {
    snprintf(c->where[k], sizeof c->where[k], "%s", where);
}

static int mode_bit(const char *mode) {
    for (size_t i = 0; i < PC_ARRAY_LEN(mode_names); i++)
        if (!strcmp(mode, mode_names[i])) return 1 << i;
    return 0;
}

/* ---------- suggestions for unknown names ---------- */

static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 120 || lb > 120) return 1000;
    int row[121];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Fill out with "; did you mean 'x'?" when a known key (or section, when sections is
 * set) is within edit distance 2, or a key with the same leaf name exists elsewhere. */
static void suggest(const char *name, int sections, char *out, size_t n) {
    out[0] = '\0';
    int best = 3;
    char cand[128], pick[128] = "";
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
        const char *p = pc_config_keys[i].path;
        if (sections)
            snprintf(cand, sizeof cand, "%.*s", (int)section_len(p), p);
        else
            snprintf(cand, sizeof cand, "%s", p);
        int d = edit_distance(name, cand);
        if (d < best) {
            best = d;
            snprintf(pick, sizeof pick, "%s", cand);
        }
    }
    if (!pick[0] && !sections) {
        const char *leaf = strchr(name, '.');
        for (int i = 0; leaf && i < PC_CONFIG_N_KEYS; i++) {
            const char *p = pc_config_keys[i].path;
            if (!strcmp(strchr(p, '.'), leaf)) {
                snprintf(pick, sizeof pick, "%s", p);
                break;
            }
        }
    }
    if (pick[0]) snprintf(out, n, "; did you mean '%s'?", pick);
}

/* ---------- scalar parsing ---------- */

static int is_null(const cval *v) {
    if (v->kind != CV_SCALAR || v->quoted) return 0;
    return !v->text[0] || !strcmp(v->text, "~") || !strcmp(v->text, "null") || !strcmp(v->text, "Null") ||
           !strcmp(v->text, "NULL");
}

static int parse_i64(const char *s, int64_t *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!isdigit((unsigned char)*p)) return -1;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q)) return -1;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE) return -1;
    *out = (int64_t)v;
    return 0;
}

static int parse_int(const char *s, int *out) {
    int64_t v;
    if (parse_i64(s, &v) || v < INT_MIN || v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    if (!*s || !(isdigit((unsigned char)*s) || strchr("+-.", *s))) return -1;
    if (strchr(s, 'x') || strchr(s, 'X')) return -1; /* no hex floats */
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out) {
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; i < PC_ARRAY_LEN(yes); i++) {
        if (!strcmp(s, yes[i])) return *out = 1, 0;
        if (!strcmp(s, no[i])) return *out = 0, 0;
    }
    return -1;
}

static int choice_ok(const char *choices, const char *s) {
    size_t n = strlen(s);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, s, n)) return 1;
        p += len + (bar != NULL);
    }
    return 0;
}

/* "a|b|c" -> "a, b, c" */
static void choices_list(const char *choices, char *out, size_t n) {
    size_t j = 0;
    for (const char *p = choices; *p && j + 3 < n; p++) {
        if (*p == '|') {
            out[j++] = ',';
            out[j++] = ' ';
        } else {
            out[j++] = *p;
        }
    }
    out[j] = '\0';
}

static const char *kind_name(const cval *v) { return v->kind == CV_SEQ ? "a list" : "a mapping"; }

/* ---------- storing a value into the struct ---------- */

static int store_string(char *dst, size_t cap, const char *s, const pc_config_key *k, const char *where,
                        pc_err *e) {
    size_t n = strlen(s);
    if (n >= cap) return pc_errorf(e, "%s: key '%s' is too long (at most %zu characters)", where, k->path, cap - 1);
    memset(dst, 0, cap);
    memcpy(dst, s, n);
    return 0;
}

/* A path is used as given: the shell's "~" would become a directory named "~" under the
 * working directory. entry < 0: the key's one value. */
static int check_path(const pc_config_key *k, const char *s, int entry, const char *where, pc_err *e) {
    if (!(k->flags & PC_K_PATH) || s[0] != '~') return 0;
    char which[32] = "";
    if (entry >= 0) snprintf(which, sizeof which, " entry %d", entry);
    return pc_errorf(e, "%s: key '%s'%s is '%s': ~ is not expanded in job files: give the full path", where, k->path,
                     which, s);
}

/* A list of paths: an empty entry would only fail once the run has started ("no file
 * matches"), then a path check. entry < 0: the list's one value given as a scalar. */
static int check_path_entry(const pc_config_key *k, const char *s, int entry, const char *where, pc_err *e) {
    if (!(k->flags & PC_K_PATH) || s[0]) return check_path(k, s, entry, where, e);
    if (entry >= 0)
        return pc_errorf(e, "%s: key '%s' entry %d is empty: give a glob, or [] for none", where, k->path, entry);
    return pc_errorf(e, "%s: key '%s' is an empty string: give a glob, or [] for none", where, k->path);
}

static int type_error(const pc_config_key *k, const cval *v, const char *what, const char *where, pc_err *e) {
    if (v->kind == CV_SCALAR) return pc_errorf(e, "%s: key '%s' must be %s, got '%s'", where, k->path, what, v->text);
    return pc_errorf(e, "%s: key '%s' must be %s, got %s", where, k->path, what, kind_name(v));
}

static int apply_value(pc_config *c, int ki, const cval *v, const char *where, pc_err *e) {
    const pc_config_key *k = &pc_config_keys[ki];
    void *f = field_of(c, k);
    switch (k->type) {
    case PC_CT_INT:
    case PC_CT_INT64: {
        int64_t x;
        if (v->kind != CV_SCALAR || parse_i64(v->text, &x)) return type_error(k, v, "an integer", where, e);
        if (k->type == PC_CT_INT) {
            if (x < INT_MIN || x > INT_MAX)
                return pc_errorf(e, "%s: key '%s' is out of range, got '%s'", where, k->path, v->text);
            *(int *)f = (int)x;
        } else {
            *(int64_t *)f = x;
        }
        break;
    }
    case PC_CT_DOUBLE: {
        double x;
        if (v->kind != CV_SCALAR || parse_double(v->text, &x)) return type_error(k, v, "a number", where, e);
        *(double *)f = x;
        break;
    }
    case PC_CT_BOOL: {
        int x;
        if (v->kind != CV_SCALAR || parse_bool(v->text, &x)) return type_error(k, v, "true or false", where, e);
        *(int *)f = x;
        break;
    }
    case PC_CT_STRING:
        if (v->kind != CV_SCALAR) return type_error(k, v, "a string", where, e);
        if (!is_null(v) && check_path(k, v->text, -1, where, e)) return -1;
        if (store_string(f, k->size, is_null(v) ? "" : v->text, k, where, e)) return -1;
        break;
    case PC_CT_ENUM: {
        char list[256];
        choices_list(k->choices, list, sizeof list);
        if (v->kind != CV_SCALAR || !choice_ok(k->choices, v->text)) {
            if (v->kind != CV_SCALAR)
                return pc_errorf(e, "%s: key '%s' must be one of %s, got %s", where, k->path, list, kind_name(v));
            return pc_errorf(e, "%s: key '%s' must be one of %s, got '%s'", where, k->path, list, v->text);
        }
        if (store_string(f, k->size, v->text, k, where, e)) return -1;
        break;
    }
    case PC_CT_STRING_LIST:
    case PC_CT_INT_LIST: {
        int is_int = k->type == PC_CT_INT_LIST;
        const char *what = is_int ? "an integer or a list of integers" : "a string or a list of strings";
        const char *one[1];
        const char **items = one;
        int n = 0;
        /* no value is not a width list: [] keeps the base widths, as compress.d_model 0 is unset */
        if (v->kind == CV_MAP || (v->kind == CV_SEQ && v->bad_item) || (is_int && is_null(v)))
            return type_error(k, v, what, where, e);
        if (v->kind == CV_SEQ) {
            items = v->items;
            n = v->n;
        } else if (!is_null(v)) {
            one[0] = v->text;
            n = 1;
        }
        size_t cap = list_cap(k);
        if ((size_t)n > cap)
            return pc_errorf(e, "%s: key '%s' has %d entries, at most %zu are allowed", where, k->path, n, cap);
        memset(f, 0, k->size);
        *count_of(c, k) = 0;
        for (int i = 0; i < n; i++) {
            if (is_int) {
                if (parse_int(items[i], (int *)f + i)) {
                    memset(f, 0, k->size);
                    if (v->kind == CV_SEQ)
                        return pc_errorf(e, "%s: key '%s' entry %d must be an integer, got '%s'", where, k->path,
                                         i, items[i]);
                    return type_error(k, v, what, where, e);
                }
            } else if (check_path_entry(k, items[i], v->kind == CV_SEQ ? i : -1, where, e) ||
                       store_string((char *)f + (size_t)i * k->elem_size, k->elem_size, items[i], k, where, e)) {
                memset(f, 0, k->size);
                return -1;
            }
        }
        *count_of(c, k) = n;
        break;
    }
    }
    set_where(c, ki, where);
    return 0;
}

/* Setting any distill key turns distillation on (unless distill.enabled says otherwise later). */
static void enable_distill(pc_config *c, const char *where) {
    int k = key_index("distill.enabled");
    c->distill.enabled = 1;
    set_where(c, k, where);
}

static void set_defaults(pc_config *c) {
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
        const pc_config_key *k = &pc_config_keys[i];
        pc_err e;
        cval v = {.kind = CV_SCALAR, .text = k->def};
        const char *empty[1];
        if ((k->type == PC_CT_STRING_LIST || k->type == PC_CT_INT_LIST) && !strcmp(k->def, "[]"))
            v = (cval){.kind = CV_SEQ, .items = empty, .n = 0};
        if (k->type == PC_CT_STRING) v.quoted = 1;
        if (apply_value(c, i, &v, "defaults", &e) != 0) {
            fprintf(stderr, "config_keys.h: bad default: %s\n", e.msg);
            abort();
        }
        c->where[i][0] = '\0';
    }
}

/* ---------- YAML ---------- */

/* View of a document node as a cval; items are allocated (free v->items). */
static void node_value(yaml_document_t *doc, yaml_node_t *node, cval *v) {
    memset(v, 0, sizeof *v);
    if (!node) {
        v->kind = CV_SCALAR;
        v->text = "";
        return;
    }
    if (node->type == YAML_SCALAR_NODE) {
        v->kind = CV_SCALAR;
        v->text = (const char *)node->data.scalar.value;
        v->quoted = node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    } else if (node->type == YAML_SEQUENCE_NODE) {
        v->kind = CV_SEQ;
        int n = (int)(node->data.sequence.items.top - node->data.sequence.items.start);
        v->items = pc_calloc((size_t)n + 1, sizeof *v->items);
        for (int i = 0; i < n; i++) {
            yaml_node_t *it = yaml_document_get_node(doc, node->data.sequence.items.start[i]);
            if (!it || it->type != YAML_SCALAR_NODE) {
                v->bad_item = 1;
                v->items[i] = "";
            } else {
                v->items[i] = (const char *)it->data.scalar.value;
            }
        }
        v->n = n;
    } else {
        v->kind = CV_MAP;
    }
}

/* text (len bytes) is what the parser read: a reader error (a byte that is not UTF-8, a
 * control character) gives a byte offset into it, not a line. */
static int yaml_error(const yaml_parser_t *p, const char *where, const char *text, size_t len, pc_err *e) {
    const char *problem = p->problem ? p->problem : "syntax error";
    if (p->error == YAML_READER_ERROR) {
        size_t line = 1, col = 1, end = PC_MIN(p->problem_offset, len);
        /* libyaml points at the octet that breaks a sequence: point at the sequence's first byte */
        while (p->problem && !strcmp(p->problem, "invalid trailing UTF-8 octet") && end > 0)
            if (((unsigned char)text[--end] & 0xc0) != 0x80) break;
        for (size_t i = 0; i < end; i++) {
            if (text[i] == '\n') {
                line++;
                col = 1;
            } else if (((unsigned char)text[i] & 0xc0) != 0x80) { /* characters, not UTF-8 continuation bytes */
                col++;
            }
        }
        return pc_errorf(e, "%s:%zu: YAML syntax error: %s (column %zu)", where, line, problem, col);
    }
    if (p->context)
        return pc_errorf(e, "%s:%zu: YAML syntax error: %s %s", where, p->problem_mark.line + 1, problem,
                         p->context);
    return pc_errorf(e, "%s:%zu: YAML syntax error: %s", where, p->problem_mark.line + 1, problem);
}

/* "<<: *defaults": YAML 1.1's merge key, which libyaml leaves as a plain key "<<". */
static int is_merge_key(const yaml_node_t *k) {
    return k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !strcmp((const char *)k->data.scalar.value, "<<");
}

static int merge_key_error(const char *path, size_t line, pc_err *e) {
    return pc_errorf(e, "%s:%zu: YAML merge keys ('<<') are not supported: write the keys out (anchors and aliases "
                        "are supported)",
                     path, line);
}

static int load_sections(pc_config *c, yaml_document_t *doc, const char *path, pc_err *e) {
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root) return 0; /* empty file: every key at its default */
    if (root->type == YAML_SCALAR_NODE && !root->data.scalar.length) return 0;
    if (root->type != YAML_MAPPING_NODE)
        return pc_errorf(e, "%s:%zu: the top level must be a mapping of sections (run:, model:, train:, ...)", path,
                         root->start_mark.line + 1);
    int key_line[PC_CONFIG_MAX_KEYS] = {0};
    char seen[32][64];
    int seen_line[32], n_seen = 0;
    char where[PC_CONFIG_WHERE_LEN], hint[160];
    for (yaml_node_pair_t *sp = root->data.mapping.pairs.start; sp < root->data.mapping.pairs.top; sp++) {
        yaml_node_t *sk = yaml_document_get_node(doc, sp->key);
        yaml_node_t *sv = yaml_document_get_node(doc, sp->value);
        size_t line = sk->start_mark.line + 1;
        if (sk->type != YAML_SCALAR_NODE)
            return pc_errorf(e, "%s:%zu: section names must be plain words", path, line);
        const char *sec = (const char *)sk->data.scalar.value;
        if (is_merge_key(sk)) return merge_key_error(path, line, e);
        if (key_index(sec) >= 0) /* "train.lr: 0.1" at the top level */
            return pc_errorf(e, "%s:%zu: unknown section '%s': a key goes under its section ('%.*s:' with '%s:' "
                                "indented below it), or give it as --set %s=VALUE",
                             path, line, sec, (int)section_len(sec), sec, sec + section_len(sec) + 1, sec);
        if (!section_known(sec)) {
            suggest(sec, 1, hint, sizeof hint);
            if (strchr(sec, '.')) suggest(sec, 0, hint, sizeof hint);
            return pc_errorf(e, "%s:%zu: unknown section '%s'%s", path, line, sec, hint);
        }
        for (int i = 0; i < n_seen; i++)
            if (!strcmp(seen[i], sec))
                return pc_errorf(e, "%s:%zu: duplicate section '%s' (first at line %d)", path, line, sec,
                                 seen_line[i]);
        if (n_seen < 32) {
            snprintf(seen[n_seen], sizeof seen[n_seen], "%s", sec);
            seen_line[n_seen++] = (int)line;
        }
        snprintf(where, sizeof where, "%s:%zu", path, line);
        if (!strcmp(sec, "distill")) enable_distill(c, where);
        if (sv->type == YAML_SCALAR_NODE && !sv->data.scalar.length) continue; /* "distill:" alone */
        if (sv->type != YAML_MAPPING_NODE)
            return pc_errorf(e, "%s:%zu: section '%s' must be a mapping of keys", path, line, sec);
        for (yaml_node_pair_t *kp = sv->data.mapping.pairs.start; kp < sv->data.mapping.pairs.top; kp++) {
            yaml_node_t *kk = yaml_document_get_node(doc, kp->key);
            yaml_node_t *kv = yaml_document_get_node(doc, kp->value);
            size_t kline = kk->start_mark.line + 1;
            if (kk->type != YAML_SCALAR_NODE)
                return pc_errorf(e, "%s:%zu: keys in section '%s' must be plain words", path, kline, sec);
            if (is_merge_key(kk)) return merge_key_error(path, kline, e);
            char full[256];
            snprintf(full, sizeof full, "%s.%s", sec, (const char *)kk->data.scalar.value);
            int ki = key_index(full);
            if (ki < 0) {
                suggest(full, 0, hint, sizeof hint);
                return pc_errorf(e, "%s:%zu: unknown key '%s'%s", path, kline, full, hint);
            }
            if (key_line[ki])
                return pc_errorf(e, "%s:%zu: duplicate key '%s' (first at line %d)", path, kline, full,
                                 key_line[ki]);
            key_line[ki] = (int)kline;
            snprintf(where, sizeof where, "%s:%zu", path, kline);
            cval v;
            node_value(doc, kv, &v);
            int rc = apply_value(c, ki, &v, where, e);
            free(v.items);
            if (rc) return -1;
        }
    }
    return 0;
}

static int load_file(pc_config *c, const char *path, pc_err *e) {
    char *text;
    size_t len;
    if (pc_read_file(path, &text, &len, e)) return -1;
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) {
        free(text);
        return pc_errorf(e, "%s: cannot initialise the YAML parser", path);
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int rc = -1;
    if (!yaml_parser_load(&p, &doc)) {
        yaml_error(&p, path, text, len, e);
    } else {
        rc = load_sections(c, &doc, path, e);
        yaml_document_delete(&doc);
        if (rc == 0) {
            /* a second document would be silently ignored otherwise */
            if (!yaml_parser_load(&p, &doc)) {
                rc = yaml_error(&p, path, text, len, e);
            } else {
                yaml_node_t *r2 = yaml_document_get_root_node(&doc);
                if (r2)
                    rc = pc_errorf(e, "%s:%zu: only one YAML document is allowed", path,
                                   r2->start_mark.line + 1);
                yaml_document_delete(&doc);
            }
        }
    }
    yaml_parser_delete(&p);
    free(text);
    return rc;
}

/* Whether YAML read val into root but left some of its text out of the value: a
 * comment ("sweep #1" reads as "sweep"), a "---" before it. */
static int text_dropped(const char *val, const yaml_node_t *root) {
    size_t a = root->start_mark.index, b = root->end_mark.index;
    for (size_t i = 0; val[i]; i++)
        if ((i < a || i >= b) && !isspace((unsigned char)val[i])) return 1;
    return 0;
}

/* One "--set key=value": value is a YAML scalar or flow list. */
static int apply_set(pc_config *c, const char *set, pc_err *e) {
    char where[PC_CONFIG_WHERE_LEN], key[256], hint[160];
    snprintf(where, sizeof where, "--set %s", set);
    const char *eq = strchr(set, '=');
    if (!eq || eq == set)
        return pc_errorf(e, "%s: expected KEY=VALUE, e.g. --set train.lr=1e-4", where);
    snprintf(key, sizeof key, "%.*s", (int)(eq - set), set);
    int ki = key_index(key);
    if (ki < 0) {
        suggest(key, 0, hint, sizeof hint);
        return pc_errorf(e, "%s: unknown key '%s'%s", where, key, hint);
    }
    const pc_config_key *k = &pc_config_keys[ki];
    const char *val = eq + 1;
    if (!json_utf8_valid(val, strlen(val))) return pc_errorf(e, "%s: the value is not valid UTF-8", where);
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) return pc_errorf(e, "%s: cannot initialise the YAML parser", where);
    yaml_parser_set_input_string(&p, (const unsigned char *)val, strlen(val));
    int loaded = yaml_parser_load(&p, &doc);
    cval v;
    int raw = k->type == PC_CT_STRING || k->type == PC_CT_ENUM, text = raw || k->type == PC_CT_STRING_LIST;
    if (loaded) {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        node_value(&doc, root, &v);
        /* a path like "a: b" is still a path, and one YAML reads as nothing ("#out": a
         * comment; "!out": a tag on an empty scalar) or cuts ("sweep #1": a comment) is
         * the text given; quoted strings and flow lists are YAML's reading */
        int nothing = !root || (root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0);
        int quoted_empty = !strcmp(val, "\"\"") || !strcmp(val, "''");
        int cut = root && root->type == YAML_SCALAR_NODE && root->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                  text_dropped(val, root);
        if ((raw && v.kind != CV_SCALAR) || (text && ((nothing && val[0] && !quoted_empty) || cut))) {
            free(v.items);
            v = (cval){.kind = CV_SCALAR, .text = val, .quoted = 1};
        }
    } else if (raw) {
        v = (cval){.kind = CV_SCALAR, .text = val, .quoted = 1};
    } else {
        const char *problem = p.problem ? p.problem : "syntax error";
        yaml_parser_delete(&p);
        return pc_errorf(e, "%s: cannot read the value as YAML: %s", where, problem);
    }
    int rc = apply_value(c, ki, &v, where, e);
    free(v.items);
    if (loaded) yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    if (rc == 0 && !strncmp(k->path, "distill.", 8) && strcmp(k->path, "distill.enabled")) enable_distill(c, where);
    return rc;
}

/* ---------- validation ---------- */

/* Shortest "%.*g" that reads back to the same double; a whole number below a million
 * as such ("600", where the shortest is "6e+02"). */
static void fmt_double(char *out, size_t n, double x) {
    if (x > -1e6 && x < 1e6 && x == (double)(long long)x) { /* the range first: the cast of 1e300 is undefined */
        snprintf(out, n, "%lld", (long long)x);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, x);
        if (strtod(out, NULL) == x) return;
    }
}

static void fmt_range(const pc_config_key *k, char *out, size_t n) {
    char lo[40], hi[40];
    fmt_double(lo, sizeof lo, k->min);
    fmt_double(hi, sizeof hi, k->max);
    int has_min = k->flags & PC_K_MIN, has_max = k->flags & PC_K_MAX;
    if (has_min && has_max)
        snprintf(out, n, "in %s%s, %s%s", k->flags & PC_K_MIN_EXCL ? "(" : "[", lo, hi,
                 k->flags & PC_K_MAX_EXCL ? ")" : "]");
    else if (has_min)
        snprintf(out, n, "%s %s", k->flags & PC_K_MIN_EXCL ? ">" : ">=", lo);
    else if (has_max)
        snprintf(out, n, "%s %s", k->flags & PC_K_MAX_EXCL ? "<" : "<=", hi);
    else
        out[0] = '\0';
}

static int in_range(const pc_config_key *k, double x) {
    if (k->flags & PC_K_MIN) {
        if (k->flags & PC_K_MIN_EXCL ? !(x > k->min) : !(x >= k->min)) return 0;
    }
    if (k->flags & PC_K_MAX) {
        if (k->flags & PC_K_MAX_EXCL ? !(x < k->max) : !(x <= k->max)) return 0;
    }
    return 1;
}

static int check_range(const pc_config *c, int ki, pc_err *e) {
    const pc_config_key *k = &pc_config_keys[ki];
    if (!(k->flags & (PC_K_MIN | PC_K_MAX))) return 0;
    const void *f = cfield_of(c, k);
    char range[96], got[48];
    fmt_range(k, range, sizeof range);
    switch (k->type) {
    case PC_CT_INT:
        if (!in_range(k, *(const int *)f))
            return pc_errorf(e, "%s: key '%s' must be %s, got %d", where_of(c, ki), k->path, range, *(const int *)f);
        break;
    case PC_CT_INT64:
        if (!in_range(k, (double)*(const int64_t *)f))
            return pc_errorf(e, "%s: key '%s' must be %s, got %lld", where_of(c, ki), k->path, range,
                             (long long)*(const int64_t *)f);
        break;
    case PC_CT_DOUBLE:
        if (!in_range(k, *(const double *)f)) {
            fmt_double(got, sizeof got, *(const double *)f);
            return pc_errorf(e, "%s: key '%s' must be %s, got %s", where_of(c, ki), k->path, range, got);
        }
        break;
    case PC_CT_INT_LIST:
        for (int i = 0; i < ccount_of(c, k); i++)
            if (!in_range(k, ((const int *)f)[i]))
                return pc_errorf(e, "%s: key '%s' entry %d must be %s, got %d", where_of(c, ki), k->path, i, range,
                                 ((const int *)f)[i]);
        break;
    default:
        break;
    }
    return 0;
}

static int key_unset(const pc_config *c, const pc_config_key *k) {
    const void *f = cfield_of(c, k);
    switch (k->type) {
    case PC_CT_STRING:
        return !((const char *)f)[0];
    case PC_CT_INT:
        return *(const int *)f == 0;
    case PC_CT_STRING_LIST:
    case PC_CT_INT_LIST:
        return ccount_of(c, k) == 0;
    default:
        return 0;
    }
}

static int validate(const pc_config *c, pc_err *e) {
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++)
        if (check_range(c, i, e)) return -1;
    int mode = mode_bit(c->run.mode);
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
        const pc_config_key *k = &pc_config_keys[i];
        if (!(k->required & mode) || !key_unset(c, k)) continue;
        if (k->alt && !key_unset(c, &pc_config_keys[key_index(k->alt)])) continue;
        char alt[96] = "";
        if (k->alt) snprintf(alt, sizeof alt, " (or '%s')", k->alt);
        if (c->where[i][0])
            return pc_errorf(e, "%s: key '%s'%s must be set (non-empty, non-zero) for run.mode %s", c->where[i],
                             k->path, alt, c->run.mode);
        return pc_errorf(e, "%s: missing required key '%s'%s (needed by run.mode %s)", where_of(c, -1), k->path, alt,
                         c->run.mode);
    }
    if (!c->run.dir[0]) /* "%s/logs" would be /logs */
        return pc_errorf(e, "%s: key 'run.dir' must not be empty (the run's files would go to the filesystem's root)",
                         where_of(c, key_index("run.dir")));
    int gb = key_index("train.global_batch"), mb = key_index("train.micro_batch");
    int trains = config_mode_trains(c->run.mode); /* eval and importance take no optimizer steps */
    if (trains && c->train.micro_batch > c->train.global_batch)
        return pc_errorf(e, "%s: key 'train.micro_batch' (%d) must not exceed train.global_batch (%d)",
                         where_of(c, mb), c->train.micro_batch, c->train.global_batch);
    if (trains && c->train.global_batch % c->train.micro_batch)
        return pc_errorf(e, "%s: key 'train.global_batch' (%d) must be divisible by train.micro_batch (%d)",
                         where_of(c, gb), c->train.global_batch, c->train.micro_batch);
    if (c->train.logits_chunk > 0 && c->distill.enabled)
        return pc_errorf(e, "%s: key 'train.logits_chunk' (%d) does not apply with distillation (distill.enabled): "
                            "the distillation loss reads whole logits; set it to 0",
                         where_of(c, key_index("train.logits_chunk")), c->train.logits_chunk);
    if (c->distill.enabled && !strcmp(c->run.mode, "pretrain"))
        return pc_errorf(e, "%s: distill needs a teacher: use it with run.mode compress or prune (pretrain has none)",
                         where_of(c, key_index("distill.enabled")));
    if (c->eval.stream_layers && strcmp(c->run.mode, "eval"))
        return pc_errorf(e, "%s: key 'eval.stream_layers' applies to run.mode eval only (not %s)",
                         where_of(c, key_index("eval.stream_layers")), c->run.mode);
    int cpu_device = !strcmp(c->backend.device, "cpu") || !strcmp(c->backend.device, "cpu-guarded");
    if (!strcmp(c->backend.comm, "nccl") && cpu_device)
        return pc_errorf(e, "%s: key 'backend.comm' is 'nccl' but backend.device is '%s': NCCL needs the cuda device",
                         where_of(c, key_index("backend.comm")), c->backend.device);
    return 0;
}

/* ---------- public API ---------- */

int config_load(pc_config *c, const char *path, const char *const *sets, int n_sets, pc_err *e) {
    memset(c, 0, sizeof *c);
    set_defaults(c);
    if (path && path[0]) {
        if (strlen(path) >= sizeof c->source) return pc_errorf(e, "%s: config path too long", path);
        snprintf(c->source, sizeof c->source, "%s", path);
        if (load_file(c, path, e)) return -1;
    }
    for (int i = 0; i < n_sets; i++)
        if (apply_set(c, sets[i], e)) return -1;
    return validate(c, e);
}

int config_d_ff(const pc_config *c, int layer) {
    if (c->compress.n_d_ff == 0) return 0;
    if (c->compress.n_d_ff == 1) return c->compress.d_ff[0];
    if (layer < 0 || layer >= c->compress.n_d_ff) return 0;
    return c->compress.d_ff[layer];
}

int config_attention_bf16(const pc_config *c) {
    const char *a = c->backend.attention;
    return !strcmp(a, "bf16") || config_attention_cudnn(c) || (!strcmp(a, "auto") && !strcmp(c->backend.matmul, "bf16"));
}

int config_attention_cudnn(const pc_config *c) { return !strcmp(c->backend.attention, "cudnn"); }

int config_attention_may_cudnn(const pc_config *c) {
    return config_attention_cudnn(c) || (!strcmp(c->backend.attention, "auto") && !strcmp(c->backend.matmul, "bf16"));
}

int config_store_grads(const pc_config *c) {
    const char *s = c->compress.store_grads;
    return !strcmp(s, "true") ? PC_GRADS_KEEP : !strcmp(s, "false") ? PC_GRADS_RECOMPUTE : PC_GRADS_AUTO;
}

int config_check_model(const pc_config *c, int base_d_model, const int *base_d_ff, int n_layers, pc_err *e) {
    int kd = key_index("compress.d_model"), kf = key_index("compress.d_ff");
    if (c->compress.d_model > base_d_model)
        return pc_errorf(e, "%s: key 'compress.d_model' (%d) must not exceed the base model's hidden_size (%d)",
                         where_of(c, kd), c->compress.d_model, base_d_model);
    int n = c->compress.n_d_ff;
    if (n > 1 && n != n_layers)
        return pc_errorf(e, "%s: key 'compress.d_ff' has %d entries but the base model has %d layers (give one "
                            "per layer, or a single int for all)",
                         where_of(c, kf), n, n_layers);
    if (n > 0 && base_d_ff)
        for (int l = 0; l < n_layers; l++)
            if (config_d_ff(c, l) > base_d_ff[l])
                return pc_errorf(e, "%s: key 'compress.d_ff' for layer %d (%d) must not exceed the base model's "
                                    "intermediate_size (%d)",
                                 where_of(c, kf), l, config_d_ff(c, l), base_d_ff[l]);
    return 0;
}

int config_mode_trains(const char *mode) {
    return !strcmp(mode, "pretrain") || !strcmp(mode, "prune") || !strcmp(mode, "compress");
}

int config_check_ranks(const pc_config *c, int world_size, pc_err *e) {
    int gb = key_index("train.global_batch");
    if (world_size < 1) return pc_errorf(e, "config_check_ranks: world size %d < 1", world_size);
    if (!config_mode_trains(c->run.mode)) return 0; /* eval and importance read no training batches */
    long long per = (long long)world_size * c->train.micro_batch;
    if (per <= 0 || c->train.global_batch % per)
        return pc_errorf(e,
                         "%s: key 'train.global_batch' (%d) must be divisible by ranks x train.micro_batch "
                         "(%d x %d = %lld); e.g. %lld",
                         where_of(c, gb), c->train.global_batch, world_size, c->train.micro_batch, per,
                         per > 0 ? (c->train.global_batch + per - 1) / per * per : 0);
    return 0;
}

/* ---------- resolved config ---------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? b->cap * 2 : 4096;
        b->p = pc_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_put(b, tmp, n < (int)sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* YAML double-quoted string that reads back as s: escaped are the characters libyaml
 * refuses raw (C0 and C1 controls, DEL, U+FFFE, U+FFFF) or reads as a line break
 * (U+0085, a C1 control). s is UTF-8 (the loader checks). */
static void sb_quoted(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            sb_put(b, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            sb_printf(b, "\\x%02x", *p);
        } else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) { /* U+0080..U+009F */
            sb_printf(b, "\\x%02x", p[1]);
            p++;
        } else if (*p == 0xef && p[1] == 0xbf && (p[2] == 0xbe || p[2] == 0xbf)) { /* U+FFFE, U+FFFF */
            sb_printf(b, "\\u%s", p[2] == 0xbe ? "fffe" : "ffff");
            p += 2;
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void sb_value(sbuf *b, const pc_config *c, const pc_config_key *k) {
    const void *f = cfield_of(c, k);
    char num[48];
    switch (k->type) {
    case PC_CT_INT:
        sb_printf(b, "%d", *(const int *)f);
        break;
    case PC_CT_INT64:
        sb_printf(b, "%lld", (long long)*(const int64_t *)f);
        break;
    case PC_CT_DOUBLE:
        fmt_double(num, sizeof num, *(const double *)f);
        sb_printf(b, "%s", num);
        break;
    case PC_CT_BOOL:
        sb_printf(b, "%s", *(const int *)f ? "true" : "false");
        break;
    case PC_CT_ENUM:
        sb_printf(b, "%s", (const char *)f);
        break;
    case PC_CT_STRING:
        sb_quoted(b, f);
        break;
    case PC_CT_STRING_LIST:
    case PC_CT_INT_LIST: {
        int n = ccount_of(c, k);
        if (k->type == PC_CT_INT_LIST && n == 1) {
            sb_printf(b, "%d", ((const int *)f)[0]);
            break;
        }
        sb_put(b, "[", 1);
        for (int i = 0; i < n; i++) {
            if (i) sb_put(b, ", ", 2);
            if (k->type == PC_CT_INT_LIST)
                sb_printf(b, "%d", ((const int *)f)[i]);
            else
                sb_quoted(b, (const char *)f + (size_t)i * k->elem_size);
        }
        sb_put(b, "]", 1);
        break;
    }
    }
}

char *config_resolved_text(const pc_config *c) {
    sbuf b = {0};
    sb_printf(&b, "# Resolved job configuration: every key after defaults, the file and --set overrides.\n");
    sb_put(&b, "# source: ", 10);
    for (const char *s = c->source; *s; s++) sb_put(&b, *s == '\n' || *s == '\r' ? " " : s, 1);
    sb_put(&b, "\n", 1);
    const char *prev = NULL;
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
        const pc_config_key *k = &pc_config_keys[i];
        size_t sl = section_len(k->path);
        if (!prev || section_len(prev) != sl || strncmp(prev, k->path, sl))
            sb_printf(&b, "%.*s:\n", (int)sl, k->path);
        prev = k->path;
        sb_printf(&b, "  %s: ", k->path + sl + 1);
        sb_value(&b, c, k);
        sb_put(&b, "\n", 1);
    }
    return b.p;
}

/* The value of "section.key" in a resolved text, or NULL; *n its length. */
static const char *resolved_value(const char *text, const char *path, size_t *n) {
    size_t sl = section_len(path);
    const char *key = path + sl + 1;
    int in_section = 0;
    for (const char *l = text; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l)) {
        size_t len = strcspn(l, "\n");
        if (l[0] != ' ' && l[0] != '#') { /* "section:" */
            in_section = len == sl + 1 && !strncmp(l, path, sl) && l[sl] == ':';
        } else if (in_section && !strncmp(l, "  ", 2) && !strncmp(l + 2, key, strlen(key)) &&
                   !strncmp(l + 2 + strlen(key), ": ", 2)) {
            const char *v = l + 4 + strlen(key);
            *n = len - (size_t)(v - l);
            return v;
        }
    }
    return NULL;
}

/* Two resolved values that are one number spelled two ways ("6e+02", as an earlier
 * version wrote 600, and "600"). */
static int same_number(const char *a, size_t na, const char *b, size_t nb) {
    char x[64], y[64], *ex, *ey;
    if (na >= sizeof x || nb >= sizeof y) return 0;
    memcpy(x, a, na), x[na] = '\0';
    memcpy(y, b, nb), y[nb] = '\0';
    double u = strtod(x, &ex), v = strtod(y, &ey);
    return ex != x && !*ex && ey != y && !*ey && u == v;
}

int config_resolved_diff(const char *old_text, const char *new_text, char *out, size_t cap) {
    int n = 0;
    size_t at = 0;
    if (cap) out[0] = '\0';
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
        const char *path = pc_config_keys[i].path;
        size_t na = 0, nb = 0;
        const char *a = resolved_value(old_text, path, &na), *b = resolved_value(new_text, path, &nb);
        if ((!a && !b) || (a && b && ((na == nb && !memcmp(a, b, na)) || same_number(a, na, b, nb)))) continue;
        n++;
        if (at < cap)
            at += (size_t)snprintf(out + at, cap - at, "%s%s: %.*s -> %.*s", n > 1 ? "; " : "", path,
                                   a ? (int)na : 6, a ? a : "(none)", b ? (int)nb : 6, b ? b : "(none)");
    }
    if (at >= cap && cap > 4) memcpy(out + cap - 4, "...", 4);
    return n;
}

int config_write_resolved(const pc_config *c, const char *path, pc_err *e) {
    char *text = config_resolved_text(c);
    int rc = pc_write_file_atomic(path, text, strlen(text), e);
    free(text);
    return rc;
}

/* ---------- reference doc ---------- */

static const char *type_name(pc_config_type t) {
    switch (t) {
    case PC_CT_INT: return "int";
    case PC_CT_INT64: return "int64";
    case PC_CT_DOUBLE: return "number";
    case PC_CT_STRING: return "string";
    case PC_CT_ENUM: return "enum";
    case PC_CT_BOOL: return "bool";
    case PC_CT_STRING_LIST: return "string list";
    case PC_CT_INT_LIST: return "int or int list";
    }
    return "?";
}

static void modes_of(int bits, char *out, size_t n) {
    size_t j = 0;
    out[0] = '\0';
    for (size_t i = 0; i < PC_ARRAY_LEN(mode_names); i++)
        if (bits & (1 << i)) j += (size_t)snprintf(out + j, n - j, "%s%s", j ? ", " : "", mode_names[i]);
}

void config_print_doc(FILE *f) {
    fprintf(f, "# Job configuration reference\n\n");
    fprintf(f, "<!-- Generated from common/config_keys.h by config-doc; do not edit by hand.\n"
               "     Regenerate with: build/tests/config/config-doc > docs/config.md -->\n\n");
    fprintf(f, "A job is one YAML file of sections (`run:`, `model:`, `train:`, ...), each a mapping of\n"
               "keys. Values are written YAML-style: integers, numbers such as `3e-4`, strings, `true`/`false`,\n"
               "and lists in flow (`[a, b]`) or block (`- a`) form. Any key can be overridden from the command\n"
               "line with `--set section.key=value` (the value is read as a YAML scalar or flow list, e.g.\n"
               "`--set compress.d_ff=[1024,1536]`); overrides apply in order after the file. A string, path or\n"
               "glob that YAML would cut short or read as nothing (`--set \"run.dir=runs/sweep #1\"`, where ` #`\n"
               "starts a YAML comment) is taken as written; a value in YAML quotes is read as YAML reads it.\n\n");
    fprintf(f, "Unknown sections or keys, duplicated keys, values of the wrong type and values out of range\n"
               "are rejected before any work, naming the file and line (or the `--set` option). Checks that\n"
               "need the base model (`compress.d_model` <= hidden_size, one `compress.d_ff` entry per layer)\n"
               "or the rank count (`train.global_batch` divisible by ranks x `train.micro_batch` in the modes\n"
               "that train) run once those are known. The full configuration after defaults and overrides is\n"
               "written to `RUN/config.resolved.yaml`, which loads back to the same values.\n\n");
    fprintf(f, "## Required keys by run.mode\n\n");
    for (size_t m = 0; m < PC_ARRAY_LEN(mode_names); m++) {
        fprintf(f, "- `%s`:", mode_names[m]);
        int any = 0;
        for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
            const pc_config_key *k = &pc_config_keys[i];
            if (!(k->required & (1 << m))) continue;
            fprintf(f, "%s `%s`", any ? "," : "", k->path);
            if (k->alt) fprintf(f, " (or `%s`)", k->alt);
            any = 1;
        }
        fprintf(f, "%s\n", any ? "" : " none");
    }
    fprintf(f, "\n## Keys\n\n| section | key | type | default | doc |\n|---|---|---|---|---|\n");
    for (int i = 0; i < PC_CONFIG_N_KEYS; i++) {
        const pc_config_key *k = &pc_config_keys[i];
        size_t sl = section_len(k->path);
        char extra[512] = "", buf[256];
        size_t j = 0;
        if (k->choices) {
            choices_list(k->choices, buf, sizeof buf);
            j += (size_t)snprintf(extra + j, sizeof extra - j, " One of: %s.", buf);
        }
        fmt_range(k, buf, sizeof buf);
        if (buf[0])
            j += (size_t)snprintf(extra + j, sizeof extra - j, " %s be %s.",
                                  k->type == PC_CT_INT_LIST ? "Each entry must" : "Must", buf);
        if (k->flags & PC_K_PATH)
            j += (size_t)snprintf(extra + j, sizeof extra - j,
                                  " A relative path is relative to the working directory projcompd starts in; "
                                  "`~` is not expanded.");
        if (k->required) {
            modes_of(k->required, buf, sizeof buf);
            snprintf(extra + j, sizeof extra - j, " Required for: %s%s%s%s.", buf, k->alt ? " (or `" : "",
                     k->alt ? k->alt : "", k->alt ? "`)" : "");
        }
        fprintf(f, "| %.*s | `%s` | %s | `%s` | %s%s |\n", (int)sl, k->path, k->path + sl + 1, type_name(k->type),
                k->type == PC_CT_STRING && !k->def[0] ? "\"\"" : k->def, k->doc, extra);
    }
}
