/* fuzz_data_gen: structure-aware libFuzzer harness for the HDF5 token shard checks.
 *
 * Arbitrary bytes mostly exercise libhdf5's own parser, so this harness maps the input
 * to the parameters of a well-formed HDF5 file instead: what /tokens is (dataset, group,
 * dangling link, other name), its type (u8..u64, signed, float, string, big-endian), rank,
 * length, layout (contiguous, chunked, compact) and values, and for each attribute
 * (vocab_size, eos_id, tokenizer) where it lives (missing, /tokens, root, both) and its
 * type (integers of every width, float, fixed/variable string, 2-element array, null
 * dataspace). An optional second, valid shard makes windows span files.
 *
 * Oracle: data_open succeeds exactly when the file is a valid shard by the rules of
 * data.h, and then reports the attributes written; data_read returns the tokens written
 * or fails exactly when one is >= vocab_size; batches equal the windows at
 * data_sample_offset, with and without the prefetching loader. */
#include <hdf5.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "fuzz_util.h"

typedef struct reader {
    const uint8_t *p;
    size_t n, at;
} reader;

static unsigned byte(reader *r) { return r->at < r->n ? r->p[r->at++] : 0; }
static int32_t i32(reader *r) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)byte(r) << (8 * i);
    return (int32_t)v;
}

enum { A_I32, A_I64, A_U64, A_I8, A_F64, A_I32X2, A_FSTR, A_VSTR, A_NULL, A_I32X1, A_KINDS };
enum { T_U16, T_U32, T_U8, T_U64, T_I16, T_I32, T_F32, T_STR, T_U16BE, T_U32BE, T_KINDS };

typedef struct attr_spec {
    int where; /* 0 missing, 1 /tokens, 2 root, 3 both (root holds another value) */
    int kind;
    int32_t value;
} attr_spec;

static int attr_is_int(int kind) { return kind == A_I32 || kind == A_I64 || kind == A_U64 || kind == A_I8 || kind == A_I32X1; }

/* The value data.c should read for an integer attribute (int64). */
static int64_t attr_int_value(int kind, int32_t v) {
    if (kind == A_I8) return (int8_t)v;
    if (kind == A_U64) return (int64_t)(uint32_t)v;
    return v;
}

static int write_attr(hid_t obj, const char *name, int kind, int32_t v) {
    hid_t sp, t;
    hsize_t two = 2, one = 1;
    int rc = -1;
    char str[32];
    snprintf(str, sizeof str, "tok%d", v);
    const char *sp_str = str;
    int64_t i64 = v;
    uint64_t u64 = (uint32_t)v;
    int8_t i8 = (int8_t)v;
    double f = v;
    int32_t arr[2] = {v, v};
    switch (kind) {
        case A_I32X2: sp = H5Screate_simple(1, &two, NULL); break;
        case A_I32X1: sp = H5Screate_simple(1, &one, NULL); break;
        case A_NULL: sp = H5Screate(H5S_NULL); break;
        default: sp = H5Screate(H5S_SCALAR);
    }
    switch (kind) {
        case A_I64: t = H5Tcopy(H5T_STD_I64LE); break;
        case A_U64: t = H5Tcopy(H5T_STD_U64LE); break;
        case A_I8: t = H5Tcopy(H5T_STD_I8LE); break;
        case A_F64: t = H5Tcopy(H5T_IEEE_F64LE); break;
        case A_FSTR: t = H5Tcopy(H5T_C_S1), H5Tset_size(t, strlen(str)); break;
        case A_VSTR: t = H5Tcopy(H5T_C_S1), H5Tset_size(t, H5T_VARIABLE); break;
        default: t = H5Tcopy(H5T_STD_I32LE);
    }
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        switch (kind) {
            case A_I64: rc = H5Awrite(a, H5T_NATIVE_INT64, &i64); break;
            case A_U64: rc = H5Awrite(a, H5T_NATIVE_UINT64, &u64); break;
            case A_I8: rc = H5Awrite(a, H5T_NATIVE_INT8, &i8); break;
            case A_F64: rc = H5Awrite(a, H5T_NATIVE_DOUBLE, &f); break;
            case A_FSTR: rc = H5Awrite(a, t, str); break;
            case A_VSTR: rc = H5Awrite(a, t, &sp_str); break;
            case A_NULL: rc = 0; break;
            default: rc = H5Awrite(a, H5T_NATIVE_INT32, arr);
        }
        H5Aclose(a);
    }
    H5Tclose(t);
    H5Sclose(sp);
    return rc < 0 ? -1 : 0;
}

static hid_t token_type(int kind) {
    switch (kind) {
        case T_U16: return H5T_STD_U16LE;
        case T_U32: return H5T_STD_U32LE;
        case T_U8: return H5T_STD_U8LE;
        case T_U64: return H5T_STD_U64LE;
        case T_I16: return H5T_STD_I16LE;
        case T_I32: return H5T_STD_I32LE;
        case T_F32: return H5T_IEEE_F32LE;
        case T_U16BE: return H5T_STD_U16BE;
        case T_U32BE: return H5T_STD_U32BE;
        default: return -1;
    }
}

typedef struct shard_spec {
    int what;   /* 0 dataset /tokens, 1 group /tokens, 2 dataset /tok, 3 dangling soft link */
    int ttype;  /* T_* */
    int rank;   /* 0 scalar, 1, 2, 3 null dataspace */
    int layout; /* 0 contiguous, 1 chunked, 2 compact */
    hsize_t chunk;
    int64_t n;
    uint32_t *tokens; /* (n,) as stored (already reduced to the type's range) */
    attr_spec vocab, eos, tok;
} shard_spec;

static int write_shard(const char *path, const shard_spec *s) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return -1;
    int rc = 0;
    hid_t obj = -1;
    if (s->what == 1) {
        obj = H5Gcreate2(f, "tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    } else if (s->what == 3) {
        rc = H5Lcreate_soft("/nowhere", f, "tokens", H5P_DEFAULT, H5P_DEFAULT) < 0 ? -1 : 0;
    } else {
        hsize_t dims[2] = {(hsize_t)s->n, 1}, maxd[2] = {H5S_UNLIMITED, 1};
        hid_t sp = s->rank == 0 ? H5Screate(H5S_SCALAR)
                   : s->rank == 3 ? H5Screate(H5S_NULL)
                                  : H5Screate_simple(s->rank, dims, s->layout == 1 ? maxd : NULL);
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
        if (s->layout == 1 && (s->rank == 1 || s->rank == 2)) {
            hsize_t ch[2] = {s->chunk, 1};
            H5Pset_chunk(dcpl, s->rank, ch);
        } else if (s->layout == 2) {
            H5Pset_layout(dcpl, H5D_COMPACT);
        }
        hid_t t = s->ttype == T_STR ? H5Tcopy(H5T_C_S1) : H5Tcopy(token_type(s->ttype));
        if (s->ttype == T_STR) H5Tset_size(t, 4);
        obj = H5Dcreate2(f, s->what == 2 ? "tok" : "tokens", t, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        if (obj >= 0 && s->n > 0 && s->rank != 3) {
            if (s->ttype == T_STR) {
                char *buf = pc_calloc((size_t)s->n * 4 + 4, 1);
                rc = H5Dwrite(obj, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0 ? -1 : 0;
                free(buf);
            } else {
                rc = H5Dwrite(obj, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->tokens) < 0 ? -1 : 0;
            }
        }
        if (obj < 0) rc = -1;
        H5Tclose(t);
        H5Pclose(dcpl);
        H5Sclose(sp);
    }
    const attr_spec *as[3] = {&s->vocab, &s->eos, &s->tok};
    const char *names[3] = {"vocab_size", "eos_id", "tokenizer"};
    for (int i = 0; i < 3 && rc == 0; i++) {
        if ((as[i]->where == 1 || as[i]->where == 3) && obj >= 0 && s->what != 3)
            rc = write_attr(obj, names[i], as[i]->kind, as[i]->value);
        if (rc == 0 && (as[i]->where == 2 || as[i]->where == 3))
            rc = write_attr(f, names[i], as[i]->kind, as[i]->where == 3 ? as[i]->value ^ 0x55 : as[i]->value);
    }
    if (obj >= 0) s->what == 1 ? H5Gclose(obj) : H5Dclose(obj);
    if (H5Fclose(f) < 0) rc = -1;
    return rc;
}

/* The attribute data.c should see: on /tokens when there (and /tokens is an object), else root. */
static int seen(const shard_spec *s, const attr_spec *a, int *kind, int32_t *value) {
    if ((a->where == 1 || a->where == 3) && s->what != 3) return *kind = a->kind, *value = a->value, 1;
    if (a->where == 2 || a->where == 3) return *kind = a->kind, *value = a->where == 3 ? a->value ^ 0x55 : a->value, 1;
    return 0;
}

static void read_spec(reader *r, shard_spec *s) {
    unsigned flags = byte(r);
    s->what = (flags & 7) < 5 ? 0 : (int)(flags & 7) - 4; /* mostly a dataset */
    unsigned tt = byte(r);
    s->ttype = tt < 160 ? (int)(tt & 1) : (int)(tt % T_KINDS);
    unsigned rk = byte(r);
    s->rank = rk < 200 ? 1 : (int)(rk % 4);
    s->layout = (int)(byte(r) % 3);
    s->chunk = 1 + byte(r) % 64;
    s->n = (int64_t)((byte(r) | byte(r) << 8) % 513);
    if (s->layout == 2 && s->rank != 1) s->layout = 0;
    attr_spec *as[3] = {&s->vocab, &s->eos, &s->tok};
    for (int i = 0; i < 3; i++) {
        unsigned w = byte(r), k = byte(r);
        as[i]->where = w < 200 ? 1 + (w & 1) : (int)(w % 4);
        int good = i == 2 ? (k & 1 ? A_VSTR : A_FSTR) : (k & 1 ? A_I64 : A_I32);
        as[i]->kind = k < 180 ? good : (int)(k % A_KINDS);
        as[i]->value = i32(r);
    }
    /* mostly plausible sizes: vocab in [1, 70000], eos below it */
    if (!(flags & 0x80)) {
        s->vocab.value = 1 + (int32_t)((uint32_t)s->vocab.value % 70000);
        s->eos.value = (int32_t)((uint32_t)s->eos.value % (uint32_t)s->vocab.value);
    }
    int valid_only = !(flags & 0x40);
    int64_t vmod = s->vocab.value > 0 ? s->vocab.value : 1;
    s->tokens = pc_calloc((size_t)s->n + 1, sizeof(uint32_t));
    for (int64_t i = 0; i < s->n; i++) {
        uint32_t v = (uint32_t)(byte(r) | byte(r) << 8);
        if (valid_only) v = (uint32_t)(v % (uint64_t)vmod);
        if (s->ttype == T_U8) v &= 0xff;
        if (s->ttype == T_U16 || s->ttype == T_U16BE || s->ttype == T_I16) v &= 0xffff;
        if (s->ttype == T_I16) v &= 0x7fff;
        s->tokens[i] = v;
    }
}

/* Whether data_open must accept the shard (given the model vocab, 0 = any). */
static int expect_valid(const shard_spec *s, int model_vocab, int64_t *vocab, int64_t *eos) {
    if (s->what != 0 || s->rank != 1) return 0;
    if (!(s->ttype == T_U16 || s->ttype == T_U32 || s->ttype == T_U16BE || s->ttype == T_U32BE)) return 0;
    int k;
    int32_t v;
    if (!seen(s, &s->vocab, &k, &v) || !attr_is_int(k)) return 0;
    *vocab = attr_int_value(k, v);
    if (*vocab <= 0 || *vocab > INT_MAX || (model_vocab > 0 && *vocab > model_vocab)) return 0;
    if (!seen(s, &s->eos, &k, &v) || !attr_is_int(k)) return 0;
    *eos = attr_int_value(k, v);
    if (*eos < 0 || *eos >= *vocab) return 0;
    if (!seen(s, &s->tok, &k, &v) || (k != A_FSTR && k != A_VSTR)) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size, 0};
    const char *dir = fuzz_scratch_dir();
    shard_spec s;
    memset(&s, 0, sizeof s);
    unsigned top = byte(&r);
    int two_shards = top & 1;
    int model_vocab = top & 2 ? (int)(byte(&r) | byte(&r) << 8) : 0;
    int seq_len = 1 + (int)(byte(&r) % 16);
    read_spec(&r, &s);
    char p1[700], p2[700], glob[700];
    snprintf(p1, sizeof p1, "%s/shard.h5", dir);
    snprintf(p2, sizeof p2, "%s/shard2.h5", dir);
    snprintf(glob, sizeof glob, "%s/*.h5", dir);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (write_shard(p1, &s) != 0) goto done;
    int64_t vocab = 0, eos = 0;
    int valid = expect_valid(&s, model_vocab, &vocab, &eos);
    /* second shard: a valid copy of the first's vocabulary with 40 tokens */
    shard_spec s2 = {.what = 0, .ttype = T_U32, .rank = 1, .n = 40,
                     .vocab = {1, A_I64, (int32_t)(vocab > 0 ? vocab : 1)}, .eos = {1, A_I64, 0},
                     .tok = {1, A_VSTR, 7}};
    uint32_t t2[40];
    for (int i = 0; i < 40; i++) t2[i] = (uint32_t)(i * 7919 % (vocab > 0 ? vocab : 1));
    s2.tokens = t2;
    if (two_shards && write_shard(p2, &s2) != 0) goto done;
    int64_t n_total = s.n + (two_shards ? s2.n : 0);
    const char *globs[1] = {glob};
    data_set *d = NULL;
    pc_err e = {{0}};
    int rc = data_open(globs, 1, model_vocab, seq_len + 1, &d, &e);
    int expect_ok = valid && n_total >= seq_len + 1;
    FUZZ_CHECK((rc == 0) == expect_ok, "data_open returned %d, expected %s (what %d type %d rank %d n %lld): %s", rc,
               expect_ok ? "success" : "failure", s.what, s.ttype, s.rank, (long long)s.n, e.msg);
    if (rc != 0) {
        FUZZ_CHECK(e.msg[0] != '\0' && d == NULL, "failure without a message");
        goto done;
    }
    FUZZ_CHECK(data_n_tokens(d) == n_total, "n_tokens %lld, wrote %lld", (long long)data_n_tokens(d),
               (long long)n_total);
    FUZZ_CHECK(data_n_shards(d) == 1 + two_shards, "n_shards");
    data_shard_info info;
    data_shard_get_info(d, 0, &info);
    FUZZ_CHECK(info.vocab_size == vocab && info.eos_id == eos && info.n_tokens == s.n, "shard info: vocab %d eos %d",
               info.vocab_size, info.eos_id);
    FUZZ_CHECK(info.token_bits == (s.ttype == T_U16 || s.ttype == T_U16BE ? 16 : 32), "token_bits %d", info.token_bits);

    int all_ok = 1;
    for (int64_t i = 0; i < s.n; i++)
        if (s.tokens[i] >= (uint64_t)vocab) all_ok = 0;
    int32_t *got = pc_calloc((size_t)n_total + 1, sizeof(int32_t));
    rc = data_read(d, 0, n_total, got, &e);
    FUZZ_CHECK((rc == 0) == all_ok, "data_read returned %d with all tokens %s vocab %lld: %s", rc,
               all_ok ? "below" : "not below", (long long)vocab, e.msg);
    if (rc == 0) {
        for (int64_t i = 0; i < n_total; i++) {
            uint32_t want = i < s.n ? s.tokens[i] : t2[i - s.n];
            FUZZ_CHECK((uint32_t)got[i] == want, "token %lld: read %d, wrote %u", (long long)i, got[i], want);
        }
    }
    FUZZ_CHECK(data_read(d, n_total, 1, got, &e) != 0, "read past the end accepted");
    if (all_ok) {
        int mb = 2;
        int32_t *batch = pc_calloc((size_t)mb * (size_t)(seq_len + 1), sizeof(int32_t));
        FUZZ_CHECK(data_read_batch(d, 5, 3, 2, seq_len, mb, batch, &e) == 0, "data_read_batch: %s", e.msg);
        for (int b = 0; b < mb; b++) {
            int64_t off = data_sample_offset(5, 3, 2 + b, n_total, seq_len);
            FUZZ_CHECK(off >= 0 && off + seq_len + 1 <= n_total, "sample offset %lld", (long long)off);
            FUZZ_CHECK(memcmp(batch + b * (seq_len + 1), got + off, sizeof(int32_t) * (size_t)(seq_len + 1)) == 0,
                       "batch row %d differs from the window at %lld", b, (long long)off);
        }
        data_loader *dl = NULL;
        int32_t *lb = pc_calloc((size_t)mb * (size_t)(seq_len + 1), sizeof(int32_t));
        FUZZ_CHECK(data_loader_create(d, 5, seq_len, mb, &dl, &e) == 0, "loader: %s", e.msg);
        FUZZ_CHECK(data_loader_get(dl, 3, 0, lb, &e) == 0, "loader get: %s", e.msg);
        FUZZ_CHECK(data_loader_get(dl, 3, 2, lb, &e) == 0, "loader get: %s", e.msg);
        FUZZ_CHECK(memcmp(lb, batch, sizeof(int32_t) * (size_t)mb * (size_t)(seq_len + 1)) == 0,
                   "the loader's batch differs from data_read_batch");
        data_loader_destroy(dl);
        free(lb);
        free(batch);
    }
    free(got);
    data_close(d);
done:
    free(s.tokens);
    return 0;
}
