/* projcomp-data: make HDF5 token shards from text files, and inspect shards.
 *
 * Byte-level tokenizer (default): token ids 0..255 are the bytes, 256 is eos, 257 is
 * reserved for bos (never written); vocab_size 258, tokenizer "bytes". With --tokenizer,
 * a Hugging Face tokenizer.json encodes each document instead (hf_tokenizer.h); its
 * vocabulary size and eos id go into the shards. Every paragraph (lines up to a blank
 * line) of every input file is one document, written as its tokens followed by eos.
 * The last documents (about --valid-fraction of the tokens) go to the validation shards.
 * All input is read and checked before anything is written; output files that already
 * exist are refused, and a failed write removes what this run wrote. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "hf_tokenizer.h"
#include "util.h"

enum { BYTES_VOCAB = 258, BYTES_EOS = 256, BYTES_BOS = 257 };

static void usage(FILE *f) {
    fprintf(f,
            "usage: projcomp-data --out DIR [--valid-fraction F] [--shard-tokens N] [--name PREFIX]\n"
            "                     [--tokenizer tokenizer.json [--eos-token T] [--python PY]] FILE...\n"
            "       projcomp-data --inspect FILE.h5...\n"
            "\n"
            "Converts text files to byte-level HDF5 token shards (vocab_size %d: bytes 0..255,\n"
            "eos %d, %d reserved for bos; tokenizer \"bytes\"). Each paragraph, i.e. lines up to a\n"
            "blank line, is one document followed by eos. Writes DIR/[PREFIX-]train-00000.h5 ...\n"
            "and DIR/[PREFIX-]valid-00000.h5 ...\n"
            "\n"
            "  --out DIR             output directory (created if missing)\n"
            "  --valid-fraction F    share of tokens held out for validation, whole documents\n"
            "                        from the end where possible (default 0.05; 0 = none)\n"
            "  --shard-tokens N      at most N tokens per shard (default 67108864)\n"
            "  --name PREFIX         prefix of the shard file names\n"
            "  --tokenizer FILE      encode with this Hugging Face tokenizer.json instead of bytes\n"
            "                        (runs projcomp_tokenize.py, installed beside this program)\n"
            "  --eos-token T         the eos token of that tokenizer (default: <|endoftext|>,\n"
            "                        </s>, <|end_of_text|> or <eos>, whichever it has)\n"
            "  --python PY           Python with the 'tokenizers' package (default:\n"
            "                        $PROJCOMP_PYTHON, else python3)\n"
            "  --inspect FILE.h5...  print dtype, token count, attributes, documents (eos\n"
            "                        count) and the first 64 tokens of each shard\n"
            "  --help                this text\n",
            BYTES_VOCAB, BYTES_EOS, BYTES_BOS);
}

/* Growable token stream. */
typedef struct stream {
    uint32_t *tok;
    int64_t n, cap;
    int64_t *doc_end; /* token index just past each document's eos */
    int64_t n_docs, docs_cap;
    hf_tokenizer *hf; /* NULL: bytes */
    int vocab_size, eos_id;
    const char *tokenizer; /* the shards' tokenizer attribute */
    char *para;           /* the paragraph being collected */
    size_t para_n, para_cap;
} stream;

static void push(stream *s, uint32_t t) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4096;
        s->tok = pc_realloc(s->tok, (size_t)s->cap * sizeof *s->tok);
    }
    s->tok[s->n++] = t;
}

static void para_add(stream *s, const char *p, size_t n) {
    if (s->para_n + n > s->para_cap) {
        s->para_cap = PC_MAX(2 * s->para_cap, s->para_n + n + 4096);
        s->para = pc_realloc(s->para, s->para_cap);
    }
    memcpy(s->para + s->para_n, p, n);
    s->para_n += n;
}

/* The collected paragraph as one document: its tokens, then eos. */
static int end_doc(stream *s, pc_err *e) {
    if (s->hf) {
        uint32_t *ids;
        int64_t n;
        if (hf_tokenizer_encode(s->hf, s->para, s->para_n, &ids, &n, e) != 0) return -1;
        for (int64_t i = 0; i < n; i++) push(s, ids[i]);
        free(ids);
    } else {
        for (size_t i = 0; i < s->para_n; i++) push(s, (unsigned char)s->para[i]);
    }
    s->para_n = 0;
    push(s, (uint32_t)s->eos_id);
    if (s->n_docs == s->docs_cap) {
        s->docs_cap = s->docs_cap ? 2 * s->docs_cap : 256;
        s->doc_end = pc_realloc(s->doc_end, (size_t)s->docs_cap * sizeof *s->doc_end);
    }
    s->doc_end[s->n_docs++] = s->n;
    return 0;
}

static int is_blank(const char *line, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\f' && line[i] != '\v') return 0;
    return 1;
}

/* Append the paragraphs of buf as documents; returns how many, -1 on a tokenizer error. */
static int64_t add_text(stream *s, const char *buf, size_t len, pc_err *e) {
    int64_t before = s->n_docs;
    int in_doc = 0;
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(buf + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - buf) : len;
        size_t line_len = end - i;
        if (line_len > 0 && buf[end - 1] == '\r') line_len--; /* CRLF */
        if (is_blank(buf + i, line_len)) {
            if (in_doc && end_doc(s, e) != 0) return -1;
            in_doc = 0;
        } else {
            if (in_doc) para_add(s, "\n", 1);
            para_add(s, buf + i, line_len);
            in_doc = 1;
        }
        i = end + 1;
    }
    if (in_doc && end_doc(s, e) != 0) return -1;
    return s->n_docs - before;
}

/* Token index where validation starts: a document boundary near the target when there
 * are at least two documents, else the target itself. Both sides are non-empty. */
static int64_t split_point(const stream *s, double valid_fraction) {
    if (valid_fraction <= 0) return s->n;
    int64_t n_valid = (int64_t)ceil(valid_fraction * (double)s->n);
    int64_t target = PC_MIN(PC_MAX(s->n - n_valid, 1), s->n - 1);
    if (s->n_docs < 2) return target;
    int64_t best = s->doc_end[0];
    for (int64_t k = 0; k + 1 < s->n_docs; k++) /* doc_end[n_docs-1] == n: never the cut */
        if (llabs(s->doc_end[k] - target) < llabs(best - target)) best = s->doc_end[k];
    return best;
}

typedef struct written {
    char **paths;
    int n;
} written;

static int shard_path(char *out, size_t n, const char *dir, const char *prefix, const char *split, int k) {
    char name[512];
    int len = snprintf(name, sizeof name, "%s%s%s-%05d.h5", prefix, *prefix ? "-" : "", split, k);
    if (len < 0 || (size_t)len >= sizeof name) return -1;
    return pc_path_join(out, n, dir, name);
}

static int n_shards_for(int64_t n, int64_t per_shard) { return n == 0 ? 0 : (int)((n + per_shard - 1) / per_shard); }

/* Refuse to mix with shards of an earlier run: the glob train-*.h5 would pick them up. */
static int check_free(const char *dir, const char *prefix, const char *split, pc_err *e) {
    char path[4096];
    if (shard_path(path, sizeof path, dir, prefix, split, 0)) return pc_errorf(e, "%s: output path too long", dir);
    if (access(path, F_OK) == 0)
        return pc_errorf(e, "%s already exists; choose another --out directory or --name", path);
    return 0;
}

static int write_split(const stream *s, const char *dir, const char *prefix, const char *split, const uint32_t *tok,
                       int64_t n, int64_t per_shard, written *w, pc_err *e) {
    int k = 0;
    for (int64_t at = 0; at < n; at += per_shard, k++) {
        char path[4096];
        if (shard_path(path, sizeof path, dir, prefix, split, k)) return pc_errorf(e, "%s: output path too long", dir);
        int64_t len = PC_MIN(per_shard, n - at);
        if (data_write_shard(path, tok + at, len, s->vocab_size, s->eos_id, s->tokenizer, e)) return -1;
        w->paths = pc_realloc(w->paths, (size_t)(w->n + 1) * sizeof *w->paths);
        w->paths[w->n++] = pc_strdup(path);
    }
    return 0;
}

static void print_split(const char *split, const char *dir, const char *prefix, int64_t n, int64_t per_shard) {
    int k = n_shards_for(n, per_shard);
    char first[4096] = "", last[4096] = "";
    if (k > 0) {
        shard_path(first, sizeof first, dir, prefix, split, 0);
        shard_path(last, sizeof last, dir, prefix, split, k - 1);
    }
    printf("  %s: %lld tokens in %d shard%s%s%s%s%s\n", split, (long long)n, k, k == 1 ? "" : "s", k ? ": " : "",
           first, k > 1 ? " .. " : "", k > 1 ? last : "");
}

static int convert(const char *dir, const char *prefix, double valid_fraction, int64_t per_shard, char **files,
                   int n_files, hf_tokenizer *hf, pc_err *e) {
    stream s = {0};
    s.hf = hf;
    s.vocab_size = hf ? hf->vocab_size : BYTES_VOCAB;
    s.eos_id = hf ? hf->eos_id : BYTES_EOS;
    s.tokenizer = hf ? hf->name : "bytes";
    int rc = 0;
    for (int i = 0; i < n_files && rc == 0; i++) {
        char *buf = NULL;
        size_t len = 0;
        if (pc_read_file(files[i], &buf, &len, e)) {
            rc = -1;
            break;
        }
        int64_t docs = add_text(&s, buf, len, e);
        if (docs < 0) rc = -1;
        else if (docs == 0) rc = pc_errorf(e, "%s: empty input (no text to make documents from)", files[i]);
        free(buf);
    }
    int64_t cut = rc == 0 ? split_point(&s, valid_fraction) : 0;
    if (rc == 0 && pc_mkdirs(dir, e)) rc = -1;
    if (rc == 0 && (check_free(dir, prefix, "train", e) || check_free(dir, prefix, "valid", e))) rc = -1;
    written w = {0};
    if (rc == 0) {
        rc = write_split(&s, dir, prefix, "train", s.tok, cut, per_shard, &w, e);
        if (rc == 0) rc = write_split(&s, dir, prefix, "valid", s.tok + cut, s.n - cut, per_shard, &w, e);
        if (rc) {
            for (int i = 0; i < w.n; i++) unlink(w.paths[i]);
        }
    }
    if (rc == 0) {
        int64_t valid_docs = 0;
        for (int64_t k = 0; k < s.n_docs; k++) valid_docs += s.doc_end[k] > cut;
        printf("projcomp-data: %d file%s, %lld documents, %lld tokens (vocab_size %d, eos_id %d, tokenizer %s)\n",
               n_files, n_files == 1 ? "" : "s", (long long)s.n_docs, (long long)s.n, s.vocab_size, s.eos_id,
               s.tokenizer);
        print_split("train", dir, prefix, cut, per_shard);
        print_split("valid", dir, prefix, s.n - cut, per_shard);
        printf("  valid holds %lld document%s%s\n", (long long)valid_docs, valid_docs == 1 ? "" : "s",
               s.n_docs < 2 && cut < s.n ? " (split inside the only document)" : "");
    }
    for (int i = 0; i < w.n; i++) free(w.paths[i]);
    free(w.paths);
    free(s.tok);
    free(s.doc_end);
    free(s.para);
    return rc;
}

/* ---------------------------------------------------------------- inspect */

static void print_decoded(const int32_t *t, int64_t n, int eos_id) {
    putchar('"');
    for (int64_t i = 0; i < n; i++) {
        int v = t[i];
        if (v == eos_id) fputs("<eos>", stdout);
        else if (v == BYTES_BOS) fputs("<bos>", stdout);
        else if (v > 255) printf("<%d>", v);
        else if (v == '\n') fputs("\\n", stdout);
        else if (v == '\t') fputs("\\t", stdout);
        else if (v == '"' || v == '\\') printf("\\%c", v);
        else if (v >= 32 && v < 127) putchar(v);
        else printf("\\x%02x", v);
    }
    puts("\"");
}

/* The path as a glob matching exactly itself. */
static char *glob_escape(const char *path) {
    char *g = pc_malloc(2 * strlen(path) + 1), *o = g;
    for (const char *p = path; *p; p++) {
        if (strchr("*?[]\\", *p)) *o++ = '\\';
        *o++ = *p;
    }
    *o = '\0';
    return g;
}

static int inspect(const char *path, pc_err *e) {
    char *g = glob_escape(path);
    const char *globs[1] = {g};
    data_set *d = NULL;
    int rc = data_open(globs, 1, 0, 0, &d, e);
    free(g);
    if (rc) return -1;
    data_shard_info info;
    data_shard_get_info(d, 0, &info);
    int64_t n = data_n_tokens(d), n_eos = 0;
    enum { BLOCK = 1 << 20 };
    int32_t *buf = pc_malloc(BLOCK * sizeof *buf);
    int32_t head[64];
    int64_t n_head = PC_MIN(n, 64);
    for (int64_t at = 0; at < n && rc == 0; at += BLOCK) {
        int64_t len = PC_MIN((int64_t)BLOCK, n - at);
        rc = data_read(d, at, len, buf, e);
        for (int64_t i = 0; rc == 0 && i < len; i++) n_eos += buf[i] == info.eos_id;
        if (at == 0 && rc == 0) memcpy(head, buf, (size_t)n_head * sizeof *head);
    }
    free(buf);
    if (rc == 0) {
        printf("%s\n", path);
        printf("  dataset: /tokens uint%d, %lld tokens\n", info.token_bits, (long long)n);
        printf("  vocab_size: %d\n  eos_id: %d\n  tokenizer: %s\n", info.vocab_size, info.eos_id, info.tokenizer);
        printf("  documents: %lld (eos count)\n", (long long)n_eos);
        printf("  first %lld tokens:", (long long)n_head);
        for (int64_t i = 0; i < n_head; i++) printf(" %d", head[i]);
        putchar('\n');
        if (strcmp(info.tokenizer, "bytes") == 0) {
            printf("  decoded: ");
            print_decoded(head, n_head, info.eos_id);
        }
    }
    data_close(d);
    return rc;
}

/* ---------------------------------------------------------------- main */

static int parse_i64(const char *s, int64_t *out) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    const char *out_dir = NULL, *prefix = "", *tokenizer = NULL, *eos_token = NULL, *python = NULL;
    double valid_fraction = 0.05;
    int64_t shard_tokens = (int64_t)1 << 26;
    int do_inspect = 0;
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'},          {"valid-fraction", required_argument, NULL, 'v'},
        {"shard-tokens", required_argument, NULL, 's'}, {"name", required_argument, NULL, 'n'},
        {"inspect", no_argument, NULL, 'i'},            {"help", no_argument, NULL, 'h'},
        {"tokenizer", required_argument, NULL, 't'},    {"eos-token", required_argument, NULL, 'E'},
        {"python", required_argument, NULL, 'P'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "o:v:s:n:iht:E:P:", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'o': out_dir = optarg; break;
        case 'v':
            valid_fraction = strtod(optarg, &end);
            if (end == optarg || *end || !(valid_fraction >= 0 && valid_fraction < 1)) {
                fprintf(stderr, "projcomp-data: --valid-fraction %s: expected a number in [0, 1)\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (parse_i64(optarg, &shard_tokens) || shard_tokens <= 0) {
                fprintf(stderr, "projcomp-data: --shard-tokens %s: expected a positive integer\n", optarg);
                return 2;
            }
            break;
        case 'n':
            prefix = optarg;
            if (strchr(prefix, '/')) {
                fprintf(stderr, "projcomp-data: --name %s: must not contain '/'\n", prefix);
                return 2;
            }
            break;
        case 'i': do_inspect = 1; break;
        case 't': tokenizer = optarg; break;
        case 'E': eos_token = optarg; break;
        case 'P': python = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int n_files = argc - optind;
    if (n_files == 0) {
        fprintf(stderr, "projcomp-data: no input files\n");
        usage(stderr);
        return 2;
    }
    pc_err e = {{0}};
    if (do_inspect) {
        int failed = 0;
        for (int i = optind; i < argc; i++) {
            if (inspect(argv[i], &e)) {
                fprintf(stderr, "projcomp-data: %s\n", e.msg);
                failed = 1;
            }
        }
        return failed;
    }
    if (!out_dir) {
        fprintf(stderr, "projcomp-data: --out DIR is required\n");
        usage(stderr);
        return 2;
    }
    hf_tokenizer hf;
    if (tokenizer && hf_tokenizer_open(&hf, python, tokenizer, eos_token, &e) != 0) {
        fprintf(stderr, "projcomp-data: %s\n", e.msg);
        return 1;
    }
    int rc = convert(out_dir, prefix, valid_fraction, shard_tokens, argv + optind, n_files, tokenizer ? &hf : NULL, &e);
    if (tokenizer) hf_tokenizer_close(&hf);
    if (rc) {
        fprintf(stderr, "projcomp-data: %s\n", e.msg);
        return 1;
    }
    return 0;
}
