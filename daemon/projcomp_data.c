/* projcomp-data: make HDF5 token shards from text files, and inspect shards.
 *
 * Byte-level tokenizer (default): token ids 0..255 are the bytes, 256 is eos, 257 is
 * reserved for bos (never written); vocab_size 258, tokenizer "bytes". With --tokenizer,
 * a Hugging Face tokenizer.json encodes each document instead (hf_tokenizer.h); its
 * vocabulary size and eos id go into the shards. Every paragraph (lines up to a blank
 * line) of every input file is one document, written as its tokens followed by eos; with
 * --jsonl, every line is a JSON object and its "text" member (--field) is one document.
 * The last documents (about --valid-fraction of the tokens) go to the validation shards.
 * Memory does not grow with the corpus (see convert). All input is read and checked
 * before any shard is written; output files that already exist are refused before any
 * input is read; the shards appear together at the end (written as .partial, then
 * renamed), and a failure removes what this run wrote, the directories it made too. */
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"
#include "hf_tokenizer.h"
#include "json.h"
#include "util.h"

enum { BYTES_VOCAB = 258, BYTES_EOS = 256, BYTES_BOS = 257 };

static void usage(FILE *f) {
    fprintf(f,
            "usage: projcomp-data --out DIR [--valid-fraction F] [--shard-tokens N] [--name PREFIX]\n"
            "                     [--jsonl [--field NAME]] [--tokenizer tokenizer.json [--eos-token T]\n"
            "                     [--no-bos] [--python PY]] FILE...\n"
            "       projcomp-data --inspect FILE.h5...\n"
            "\n"
            "Converts text files to byte-level HDF5 token shards (vocab_size %d: bytes 0..255,\n"
            "eos %d, %d reserved for bos; tokenizer \"bytes\"). Each paragraph, i.e. lines up to a\n"
            "blank line, is one document followed by eos. Writes DIR/[PREFIX-]train-00000.h5 ...\n"
            "and DIR/[PREFIX-]valid-00000.h5 ..., spooling the tokens in DIR first (4 bytes each,\n"
            "freed when it ends), so memory does not grow with the input.\n"
            "\n"
            "  --out DIR             output directory (created if missing)\n"
            "  --valid-fraction F    share of tokens held out for validation, whole documents\n"
            "                        from the end where possible (default 0.05; 0 = none)\n"
            "  --shard-tokens N      at most N tokens per shard (default 67108864)\n"
            "  --name PREFIX         prefix of the shard file names\n"
            "  --jsonl               inputs are JSON Lines: each line an object whose \"text\"\n"
            "                        member is one document (instead of paragraphs)\n"
            "  --field NAME          with --jsonl, the member that holds the text\n"
            "  FILE                  a text (or --jsonl) file; - reads standard input, so a compressed\n"
            "                        corpus can be piped: zstdcat c.jsonl.zst | projcomp-data ... -\n"
            "  --tokenizer FILE      encode with this Hugging Face tokenizer.json instead of bytes\n"
            "                        (runs projcomp_tokenize.py, installed beside this program)\n"
            "  --eos-token T         the eos token of that tokenizer (default: <|endoftext|>,\n"
            "                        </s>, <|end_of_text|> or <eos>, whichever it has)\n"
            "                        Each document starts as the tokenizer starts a text\n"
            "                        (transformers' tokenizer(text): Llama's bos) and ends with eos\n"
            "  --no-bos              with --tokenizer, documents without that start (text, eos)\n"
            "  --python PY           with --tokenizer, a Python with the 'tokenizers' package\n"
            "                        (default: $PROJCOMP_PYTHON, else python3)\n"
            "  --inspect FILE.h5...  print dtype, token count, attributes, documents (eos\n"
            "                        count) and the first 64 tokens of each shard; an argument\n"
            "                        that is not a file is a glob ('data/*.h5'), as in data.train\n"
            "  --help                this text\n",
            BYTES_VOCAB, BYTES_EOS, BYTES_BOS);
}

/* ---------------------------------------------------------------- convert
 *
 * Two passes, so that memory is one paragraph (with --tokenizer, a batch of them) and one
 * write piece however large the corpus: pass 1 tokenizes every file into two spool files
 * in the output directory (the token stream, and where each document ends); pass 2 picks
 * the validation cut from the document ends and writes the shards from the token spool.
 * The spool files are unlinked as soon as they are made: the kernel frees them however
 * the program ends. They take 4 bytes per token and 8 per document of disk until then. */

/* An unlinked temporary file in dir. */
static FILE *spool_open(const char *dir, pc_err *e) {
    char path[4200];
    if (snprintf(path, sizeof path, "%s/.projcomp-data-XXXXXX", dir) >= (int)sizeof path) {
        pc_errorf(e, "%s: output path too long", dir);
        return NULL;
    }
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "w+b") : NULL;
    if (!f) {
        pc_errorf(e, "%s: cannot create a spool file: %s", dir, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (fd >= 0) unlink(path);
    return f;
}

/* Items [at, at + n) of `size` bytes of a spool (flushed) into dst. */
static int spool_read(FILE *f, const char *dir, int64_t at, int64_t n, size_t size, void *dst, pc_err *e) {
    char what[4200];
    snprintf(what, sizeof what, "%s (a spool file)", dir);
    return pc_pread_all(fileno(f), dst, (size_t)n * size, at * (int64_t)size, what, e);
}

enum { BATCH_DOCS = 4096, BATCH_BYTES = 1 << 20 }; /* a batch for the tokenizer: at most so many documents or bytes */

/* The token stream of pass 1. */
typedef struct stream {
    const char *dir;
    FILE *tok;            /* spool: (n) uint32 tokens */
    FILE *ends;           /* spool: (n_docs) int64, the token index just past each document's eos */
    int64_t n, n_docs;
    uint32_t buf[4096];   /* tokens not yet in the spool */
    int n_buf;
    int failed;           /* a spool write failed (reported at the end of the file) */
    hf_tokenizer *hf;     /* NULL: bytes */
    const char *field;    /* JSON Lines input: each line's string member of this name is a document */
    int vocab_size, eos_id;
    const char *tokenizer; /* the shards' tokenizer attribute */
    char *para;           /* the paragraph being collected (--tokenizer: after the batch's) */
    size_t para_n, para_cap;
    /* --tokenizer: documents wait in para and are encoded a batch at a time */
    int batch_n;                    /* documents waiting */
    int64_t off[BATCH_DOCS + 1];    /* document j is para[off[j], off[j+1]) */
    int64_t counts[BATCH_DOCS];     /* its token count, once encoded */
    uint32_t *ids;                  /* the batch's tokens */
    int64_t ids_cap;
} stream;

static void flush_tokens(stream *s) {
    if (s->n_buf && fwrite(s->buf, sizeof *s->buf, (size_t)s->n_buf, s->tok) != (size_t)s->n_buf) s->failed = 1;
    s->n_buf = 0;
}

static void push(stream *s, uint32_t t) {
    if (s->n_buf == (int)PC_ARRAY_LEN(s->buf)) flush_tokens(s);
    s->buf[s->n_buf++] = t;
    s->n++;
}

static void para_add(stream *s, const char *p, size_t n) {
    if (s->para_n + n > s->para_cap) {
        s->para_cap = PC_MAX(2 * s->para_cap, s->para_n + n + 4096);
        s->para = pc_realloc(s->para, s->para_cap);
    }
    memcpy(s->para + s->para_n, p, n);
    s->para_n += n;
}

/* A document's tokens are in: its eos, and its end. */
static void doc_done(stream *s) {
    push(s, (uint32_t)s->eos_id);
    if (fwrite(&s->n, sizeof s->n, 1, s->ends) != 1) s->failed = 1;
    s->n_docs++;
}

/* The documents waiting in para (--tokenizer), encoded together, into the stream. */
static int flush_batch(stream *s, pc_err *e) {
    if (s->batch_n == 0) return 0;
    if (hf_tokenizer_encode_batch(s->hf, s->para, s->off, s->batch_n, &s->ids, &s->ids_cap, s->counts, e) != 0)
        return -1;
    const uint32_t *id = s->ids;
    for (int j = 0; j < s->batch_n; id += s->counts[j++]) {
        for (int64_t i = 0; i < s->counts[j]; i++) push(s, id[i]);
        doc_done(s);
    }
    s->batch_n = 0;
    s->para_n = 0;
    return 0;
}

/* The collected paragraph as one document: its tokens, then eos (with --tokenizer, when
 * its batch is full or the file ends). */
static int end_doc(stream *s, pc_err *e) {
    if (s->hf) {
        s->off[++s->batch_n] = (int64_t)s->para_n;
        return s->batch_n == BATCH_DOCS || s->para_n >= BATCH_BYTES ? flush_batch(s, e) : 0;
    }
    for (size_t i = 0; i < s->para_n; i++) push(s, (unsigned char)s->para[i]);
    s->para_n = 0;
    doc_done(s);
    return 0;
}

static int is_blank(const char *line, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\f' && line[i] != '\v') return 0;
    return 1;
}

/* One JSON Lines record (line `lineno` of path): its string member s->field is a document
 * (skipped when empty). */
static int add_record(stream *s, const char *path, int64_t lineno, const char *line, size_t len, pc_err *e) {
    json_val *root;
    if (json_parse_lenient(line, len, &root, e) != 0) return pc_error_wrap(e, "%s:%lld: not a JSON line", path, (long long)lineno);
    const json_val *v = json_get(root, s->field);
    int rc = 0;
    if (root->type != JSON_OBJECT) rc = pc_errorf(e, "%s:%lld: not a JSON object", path, (long long)lineno);
    else if (!v || v->type != JSON_STRING)
        rc = pc_errorf(e, "%s:%lld: no string member \"%s\"%s%s", path, (long long)lineno, s->field,
                       v ? "; it is a " : " (--field names another)", v ? json_type_name(v->type) : "");
    else if (v->str_len > 0) {
        para_add(s, v->str, v->str_len);
        rc = end_doc(s, e);
    }
    json_free(root);
    return rc;
}

/* Append the documents of a file, a line at a time (paragraphs of text, or JSON Lines
 * records); returns how many, or -1 (e set) on a read, parse, tokenizer or spool error. */
static int64_t add_file(stream *s, const char *path, pc_err *e) {
    int std_in = !strcmp(path, "-");
    FILE *in = std_in ? stdin : fopen(path, "rb");
    if (std_in) path = "(stdin)";
    if (!in) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    int64_t before = s->n_docs, lineno = 0;
    int in_doc = 0, rc = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while (rc == 0 && (got = getline(&line, &cap, in)) >= 0) {
        size_t len = (size_t)got;
        lineno++;
        if (len > 0 && line[len - 1] == '\n') len--;
        if (len > 0 && line[len - 1] == '\r') len--; /* CRLF */
        if (s->field) {
            const char *rec = line;
            if (lineno == 1 && len >= 3 && !memcmp(rec, "\xEF\xBB\xBF", 3)) /* a UTF-8 BOM, as Python's utf-8-sig */
                rec += 3, len -= 3;
            if (!is_blank(rec, len)) rc = add_record(s, path, lineno, rec, len, e);
        } else if (is_blank(line, len)) {
            if (in_doc) rc = end_doc(s, e);
            in_doc = 0;
        } else {
            if (in_doc) para_add(s, "\n", 1);
            para_add(s, line, len);
            in_doc = 1;
        }
    }
    if (rc == 0 && ferror(in)) rc = pc_errorf(e, "%s: read error: %s", path, strerror(errno));
    if (rc == 0 && in_doc) rc = end_doc(s, e);
    if (rc == 0) rc = flush_batch(s, e);
    free(line);
    if (!std_in) fclose(in);
    flush_tokens(s);
    if (rc == 0 && (s->failed || fflush(s->tok) != 0 || fflush(s->ends) != 0))
        rc = pc_errorf(e, "%s: cannot write the spool files (disk full?): %s", s->dir, strerror(errno));
    return rc ? -1 : s->n_docs - before;
}

/* Where validation starts (*cut, a token index) and how many documents it holds. The cut
 * is the document boundary nearest the target when there are at least two documents,
 * else the target itself; both sides are then non-empty. */
static int split_point(stream *s, double valid_fraction, int64_t *cut, int64_t *valid_docs, pc_err *e) {
    *cut = s->n;
    *valid_docs = 0;
    if (valid_fraction <= 0) return 0;
    if (s->n < 2)
        return pc_errorf(e, "the input holds %lld token(s): too few for a validation split (--valid-fraction 0 keeps "
                            "them for training)", (long long)s->n);
    int64_t n_valid = (int64_t)ceil(valid_fraction * (double)s->n);
    int64_t target = PC_MIN(PC_MAX(s->n - n_valid, 1), s->n - 1);
    if (s->n_docs < 2) {
        *cut = target;
        *valid_docs = s->n_docs;
        return 0;
    }
    enum { BLOCK = 8192 };
    int64_t *ends = pc_malloc(BLOCK * sizeof *ends), best = -1, best_k = 0;
    int rc = 0;
    for (int64_t k0 = 0; rc == 0 && k0 + 1 < s->n_docs; k0 += BLOCK) { /* the last end is n: never the cut */
        int64_t len = PC_MIN((int64_t)BLOCK, s->n_docs - 1 - k0);
        rc = spool_read(s->ends, s->dir, k0, len, sizeof *ends, ends, e);
        for (int64_t k = 0; rc == 0 && k < len; k++)
            if (best < 0 || llabs(ends[k] - target) < llabs(best - target)) best = ends[k], best_k = k0 + k;
    }
    free(ends);
    *cut = best;
    *valid_docs = s->n_docs - 1 - best_k;
    return rc;
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

enum { MAX_SHARDS = 99999 }; /* of a split: names end in 5 digits */

static int n_shards_for(int64_t n, int64_t per_shard) { return n == 0 ? 0 : (int)(1 + (n - 1) / per_shard); }

/* Refuse to mix with shards of an earlier run: the glob train-*.h5 would pick them up. */
static int check_free(const char *dir, const char *prefix, const char *split, pc_err *e) {
    char path[4096];
    if (shard_path(path, sizeof path, dir, prefix, split, 0)) return pc_errorf(e, "%s: output path too long", dir);
    if (access(path, F_OK) == 0)
        return pc_errorf(e, "%s already exists; choose another --out directory or --name", path);
    return 0;
}

/* data_fill_fn of a shard: tokens [first + at, first + at + len) of the token spool. */
typedef struct shard_src {
    stream *s;
    int64_t first;
} shard_src;

static int fill_from_spool(void *ctx, int64_t at, int64_t len, uint32_t *dst, pc_err *e) {
    const shard_src *src = ctx;
    return spool_read(src->s->tok, src->s->dir, src->first + at, len, sizeof *dst, dst, e);
}

/* A shard is written as <its name>.partial and renamed to its name once every shard of
 * the run is written (publish): a run that is killed leaves only .partial files, which the
 * job globs (*.h5) do not match and a rerun replaces. */
#define PARTIAL ".partial"

static void partial_path(char *out, size_t n, const char *path) { snprintf(out, n, "%s" PARTIAL, path); }

/* Tokens [first, first + n) of the stream as the split's shards (.partial). */
static int write_split(stream *s, const char *prefix, const char *split, int64_t first, int64_t n, int64_t per_shard,
                       written *w, pc_err *e) {
    int k = 0;
    for (int64_t at = 0; at < n; at += per_shard, k++) {
        char path[4096], part[4200];
        if (shard_path(path, sizeof path, s->dir, prefix, split, k))
            return pc_errorf(e, "%s: output path too long", s->dir);
        partial_path(part, sizeof part, path);
        w->paths = pc_realloc(w->paths, (size_t)(w->n + 1) * sizeof *w->paths);
        w->paths[w->n++] = pc_strdup(path);
        shard_src src = {s, first + at};
        if (data_write_shard_fill(part, PC_MIN(per_shard, n - at), fill_from_spool, &src, s->vocab_size, s->eos_id,
                                  s->tokenizer, e))
            return -1;
    }
    return 0;
}

/* Every shard of the run under its name, then the directory synced; on failure none is. */
static int publish(const written *w, const char *dir, pc_err *e) {
    int i = 0, rc = 0;
    for (; i < w->n && rc == 0; i++) {
        char part[4200];
        partial_path(part, sizeof part, w->paths[i]);
        if (rename(part, w->paths[i]) != 0)
            rc = pc_errorf(e, "%s: cannot rename %s: %s", w->paths[i], part, strerror(errno));
    }
    if (rc == 0 && pc_fsync_dir(dir, e) == 0) return 0;
    int renamed = rc == 0 ? i : i - 1; /* all of them, or those before the failed rename */
    for (int j = 0; j < renamed; j++) unlink(w->paths[j]);
    return -1;
}

/* Remove the .partial files a run wrote, after a failure (publish removes the shards it
 * had renamed). */
static void unwrite(const written *w) {
    for (int i = 0; i < w->n; i++) {
        char part[4200];
        partial_path(part, sizeof part, w->paths[i]);
        unlink(part);
    }
}

/* .partial shards of this prefix left by a run that was killed: replaced by this one. */
static void remove_stale_partials(const char *dir, const char *prefix, const char *split) {
    char path[4096], pattern[4300];
    if (shard_path(path, sizeof path, dir, prefix, split, 0)) return;
    path[strlen(path) - strlen("00000.h5")] = '\0'; /* the name up to the shard number */
    char *g = pc_glob_escape(path);
    snprintf(pattern, sizeof pattern, "%s[0-9][0-9][0-9][0-9][0-9].h5" PARTIAL, g);
    free(g);
    for (int tmp = 0; tmp < 2; tmp++) { /* NAME.h5.partial, and a killed write's NAME.h5.partial.tmp */
        glob_t gl;
        if (glob(pattern, 0, NULL, &gl) == 0)
            for (size_t i = 0; i < gl.gl_pathc; i++) unlink(gl.gl_pathv[i]);
        globfree(&gl);
        strncat(pattern, ".tmp", sizeof pattern - strlen(pattern) - 1);
    }
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

/* The longest leading part of path that exists (all of it when it does). */
static void existing_part(const char *path, char *out, size_t n) {
    snprintf(out, n, "%s", path);
    while (*out && access(out, F_OK) != 0) {
        char *slash = strrchr(out, '/');
        if (!slash) *out = '\0';
        else if (slash == out) slash[1] = '\0';
        else *slash = '\0';
    }
}

/* Remove the directories of path below `kept` (what existing_part found before they were
 * made), deepest first (one that was never made is passed over); stops at one that is not
 * empty. */
static void remove_made_dirs(const char *path, const char *kept) {
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    while (strlen(p) > strlen(kept) && (rmdir(p) == 0 || errno == ENOENT || errno == ENAMETOOLONG)) {
        char *slash = strrchr(p, '/');
        if (!slash) break;
        *slash = '\0';
    }
}

static int convert(const char *dir, const char *prefix, double valid_fraction, int64_t per_shard, char **files,
                   int n_files, hf_tokenizer *hf, const char *field, pc_err *e) {
    int n_stdin = 0;
    for (int i = 0; i < n_files; i++) { /* before anything is made or read */
        if (!strcmp(files[i], "-")) {
            if (++n_stdin > 1) return pc_errorf(e, "-: standard input can be read once only");
            continue;
        }
        if (access(files[i], R_OK) != 0) return pc_errorf(e, "%s: cannot open: %s", files[i], strerror(errno));
    }
    char kept[4096];
    existing_part(dir, kept, sizeof kept);
    stream s = {.dir = dir, .hf = hf, .field = field};
    s.vocab_size = hf ? hf->vocab_size : BYTES_VOCAB;
    s.eos_id = hf ? hf->eos_id : BYTES_EOS;
    s.tokenizer = hf ? hf->name : "bytes";
    int rc = pc_mkdirs(dir, e);
    if (rc == 0 && (check_free(dir, prefix, "train", e) || check_free(dir, prefix, "valid", e))) rc = -1;
    if (rc == 0 && (!(s.tok = spool_open(dir, e)) || !(s.ends = spool_open(dir, e)))) rc = -1;
    for (int i = 0; i < n_files && rc == 0; i++) {
        int64_t docs = add_file(&s, files[i], e);
        if (docs < 0) rc = -1;
        else if (docs == 0) rc = pc_errorf(e, "%s: empty input (no text to make documents from)", files[i]);
    }
    int64_t cut = 0, valid_docs = 0;
    if (rc == 0) rc = split_point(&s, valid_fraction, &cut, &valid_docs, e);
    /* shard names have 5 digits: more shards would not sort (nor be cleaned up) in order */
    if (rc == 0 && ((cut - 1) / per_shard >= MAX_SHARDS || (s.n - cut - 1) / per_shard >= MAX_SHARDS))
        rc = pc_errorf(e, "--shard-tokens %lld: %lld tokens would make more than %lld shards: raise it",
                       (long long)per_shard, (long long)PC_MAX(cut, s.n - cut), (long long)MAX_SHARDS);
    written w = {0};
    if (rc == 0) {
        remove_stale_partials(dir, prefix, "train");
        remove_stale_partials(dir, prefix, "valid");
        rc = write_split(&s, prefix, "train", 0, cut, per_shard, &w, e);
        if (rc == 0) rc = write_split(&s, prefix, "valid", cut, s.n - cut, per_shard, &w, e);
        if (rc == 0) rc = publish(&w, dir, e);
        if (rc) unwrite(&w);
    }
    if (rc == 0) {
        char bos[48] = ""; /* what each document starts with */
        if (hf) snprintf(bos, sizeof bos, hf->bos_id >= 0 ? ", documents start with %d" : ", no bos", hf->bos_id);
        printf("projcomp-data: %d file%s, %lld documents, %lld tokens (vocab_size %d, eos_id %d%s, tokenizer %s)\n",
               n_files, n_files == 1 ? "" : "s", (long long)s.n_docs, (long long)s.n, s.vocab_size, s.eos_id, bos,
               s.tokenizer);
        print_split("train", dir, prefix, cut, per_shard);
        print_split("valid", dir, prefix, s.n - cut, per_shard);
        printf("  valid holds %lld document%s%s\n", (long long)valid_docs, valid_docs == 1 ? "" : "s",
               s.n_docs < 2 && cut < s.n ? " (split inside the only document)" : "");
        double got = (double)(s.n - cut) / (double)s.n;
        if (valid_fraction > 0 && (got < 0.5 * valid_fraction || got > 2 * valid_fraction))
            fprintf(stderr,
                    "projcomp-data: warning: valid holds %.3g%% of the tokens, not the %.3g%% asked: the split falls "
                    "on the document boundary nearest it, and a long document lies there (split the corpus into "
                    "more documents, or give the validation text as its own input)\n",
                    100 * got, 100 * valid_fraction);
    }
    for (int i = 0; i < w.n; i++) free(w.paths[i]);
    free(w.paths);
    if (s.tok) fclose(s.tok);
    if (s.ends) fclose(s.ends);
    free(s.para);
    free(s.ids);
    if (rc) remove_made_dirs(dir, kept);
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

/* Shard `info` of d, whose tokens start at `start` in d's stream: its attributes, eos count
 * and first tokens. */
static int inspect_shard(data_set *d, int64_t start, const data_shard_info *info, pc_err *e) {
    int64_t n = info->n_tokens, n_eos = 0;
    enum { BLOCK = 1 << 20 };
    int32_t *buf = pc_malloc(BLOCK * sizeof *buf);
    int32_t head[64];
    int64_t n_head = PC_MIN(n, 64);
    int rc = 0;
    for (int64_t at = 0; at < n && rc == 0; at += BLOCK) {
        int64_t len = PC_MIN((int64_t)BLOCK, n - at);
        rc = data_read(d, start + at, len, buf, e);
        for (int64_t i = 0; rc == 0 && i < len; i++) n_eos += buf[i] == info->eos_id;
        if (at == 0 && rc == 0) memcpy(head, buf, (size_t)n_head * sizeof *head);
    }
    free(buf);
    if (rc) return -1;
    printf("%s\n", info->path);
    printf("  dataset: /tokens uint%d, %lld tokens\n", info->token_bits, (long long)n);
    printf("  vocab_size: %d\n  eos_id: %d\n  tokenizer: %s\n", info->vocab_size, info->eos_id, info->tokenizer);
    printf("  documents: %lld (eos count)\n", (long long)n_eos);
    printf("  first %lld tokens:", (long long)n_head);
    for (int64_t i = 0; i < n_head; i++) printf(" %d", head[i]);
    putchar('\n');
    if (strcmp(info->tokenizer, "bytes") == 0) {
        printf("  decoded: ");
        print_decoded(head, n_head, info->eos_id);
    }
    return 0;
}

/* Every shard an --inspect argument names: an existing path is that file (even with * or [
 * in its name); else the argument is a glob, expanded as data.train's are (sorted). */
static int inspect(const char *arg, pc_err *e) {
    struct stat st;
    int exists = stat(arg, &st) == 0;
    if (!exists && !strpbrk(arg, "*?[")) return pc_errorf(e, "%s: cannot open: %s", arg, strerror(errno));
    char *g = exists ? pc_glob_escape(arg) : pc_strdup(arg);
    const char *globs[1] = {g};
    data_set *d = NULL;
    int rc = data_open(globs, 1, 0, 0, &d, e);
    free(g);
    if (rc) return -1;
    int64_t start = 0;
    for (int i = 0; rc == 0 && i < data_n_shards(d); i++) {
        data_shard_info info;
        data_shard_get_info(d, i, &info);
        rc = inspect_shard(d, start, &info, e);
        start += info.n_tokens;
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

/* The long name of the option whose letter is c, or NULL (an unknown option). */
static const char *option_name(const struct option *opts, int c) {
    for (; opts->name; opts++)
        if (opts->val == c) return opts->name;
    return NULL;
}

int main(int argc, char **argv) {
    const char *out_dir = NULL, *prefix = "", *tokenizer = NULL, *eos_token = NULL, *python = NULL, *field = NULL;
    const char *convert_opt = NULL; /* the first option given that only converting takes */
    double valid_fraction = 0.05;
    int64_t shard_tokens = (int64_t)1 << 26;
    int do_inspect = 0, jsonl = 0, no_bos = 0;
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'},          {"valid-fraction", required_argument, NULL, 'v'},
        {"shard-tokens", required_argument, NULL, 's'}, {"name", required_argument, NULL, 'n'},
        {"inspect", no_argument, NULL, 'i'},            {"help", no_argument, NULL, 'h'},
        {"tokenizer", required_argument, NULL, 't'},    {"eos-token", required_argument, NULL, 'E'},
        {"python", required_argument, NULL, 'P'},     {"jsonl", no_argument, NULL, 'j'},
        {"field", required_argument, NULL, 'f'},        {"no-bos", no_argument, NULL, 'B'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "o:v:s:n:iht:E:P:jf:B", opts, NULL)) != -1) {
        char *end = NULL;
        if (!convert_opt && c != 'i' && c != 'h') convert_opt = option_name(opts, c);
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
        case 'j': jsonl = 1; break;
        case 'f': field = optarg; break;
        case 'B': no_bos = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (do_inspect && convert_opt) {
        fprintf(stderr, "projcomp-data: --%s: not with --inspect (it reads shards and writes nothing)\n", convert_opt);
        return 2;
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
    if (field && !jsonl) {
        fprintf(stderr, "projcomp-data: --field %s: only with --jsonl\n", field);
        return 2;
    }
    if ((eos_token || python || no_bos) && !tokenizer) {
        const char *opt = eos_token ? "--eos-token " : python ? "--python " : "--no-bos";
        fprintf(stderr, "projcomp-data: %s%s: only with --tokenizer\n", opt, eos_token ? eos_token : python ? python : "");
        return 2;
    }
    if (!out_dir) {
        fprintf(stderr, "projcomp-data: --out DIR is required\n");
        usage(stderr);
        return 2;
    }
    hf_tokenizer hf;
    if (tokenizer && hf_tokenizer_open(&hf, python, tokenizer, eos_token, !no_bos, &e) != 0) {
        fprintf(stderr, "projcomp-data: %s\n", e.msg);
        return 1;
    }
    int rc = convert(out_dir, prefix, valid_fraction, shard_tokens, argv + optind, n_files, tokenizer ? &hf : NULL,
                     jsonl ? (field ? field : "text") : NULL, &e);
    if (tokenizer) hf_tokenizer_close(&hf);
    if (rc) {
        fprintf(stderr, "projcomp-data: %s\n", e.msg);
        return 1;
    }
    return 0;
}
