/* data: HDF5 token shards (open, check, read windows, write), the sample order, and a
 * loader that prefetches the next micro-batch in a background thread.
 *
 * HDF5's own error printing is switched off (per thread, as the thread-safe build keeps
 * it per thread) and every failure is reported with the file it concerns. All HDF5 calls
 * go through one process-wide lock, because a serial HDF5 build may not be thread-safe
 * and the loader's thread reads while the caller may read another data set. */
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <hdf5.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* The one piece of process-wide state: serialises HDF5 library calls. */
static pthread_mutex_t data_hdf5_mutex = PTHREAD_MUTEX_INITIALIZER;

static void hdf5_lock(void) {
    static int first = 1;
    pthread_mutex_lock(&data_hdf5_mutex);
    if (first) { /* files are closed here, never by HDF5's exit handler, which would crash on one */
        H5dont_atexit(); /* whose close failed (a full disk) */
        first = 0;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void hdf5_unlock(void) { pthread_mutex_unlock(&data_hdf5_mutex); }

typedef struct data_shard {
    char *path;
    hid_t file, dset; /* -1 while closed (at most max_open shards of a set are open) */
    uint64_t used;    /* when its handles were last used (the set's clock) */
    int64_t bytes;    /* the file's size when the set was opened */
    int64_t n_tokens;
    int64_t start; /* global offset of this shard's first token */
    int token_bits;
    int vocab_size, eos_id;
    char *tokenizer;
} data_shard;

struct data_set {
    data_shard *shards;
    int n_shards;
    int64_t n_tokens;
    int vocab_size; /* the model's; <= 0 when not checked */
    int n_open;     /* shards with open handles */
    int max_open;   /* at most so many (data_max_open) */
    uint64_t clock; /* counts handle uses, for the least recently used */
};

/* Shards of a set kept open at once, the least recently used closed first: a corpus of
 * thousands of shards would otherwise hold a descriptor and HDF5's caches for each.
 * A quarter of the descriptors the process may open, from 16 to 1024 (256 under the
 * usual limit of 1024). Reopening costs about 0.1 ms on a local disk; the loader's
 * thread reads ahead of the step, so little of it is waited for. */
static int data_max_open(void) {
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == RLIM_INFINITY) return 1024;
    return (int)PC_MAX((rlim_t)16, PC_MIN((rlim_t)1024, nofile.rlim_cur / 4));
}

/* A window is read once, from random places: an open dataset caches none of its chunks
 * (HDF5 then reads just the window's bytes of an uncompressed chunk), so an open shard
 * costs a descriptor and HDF5's metadata, not a chunk cache (1 MiB by default). */
enum { DATA_CHUNK_CACHE = 0 };

/* ---------------------------------------------------------------- opening */

/* Attribute `name` on /tokens, else on the root group; returns an open attribute id or < 0. */
static hid_t open_attr(hid_t file, hid_t dset, const char *name) {
    if (H5Aexists(dset, name) > 0) return H5Aopen(dset, name, H5P_DEFAULT);
    if (H5Aexists(file, name) > 0) return H5Aopen(file, name, H5P_DEFAULT);
    return -1;
}

static int attr_n_points(hid_t a) {
    hid_t sp = H5Aget_space(a);
    if (sp < 0) return -1;
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    return (int)n;
}

static int read_int_attr(const char *path, hid_t file, hid_t dset, const char *name, int64_t *out, pc_err *e) {
    hid_t a = open_attr(file, dset, name);
    if (a < 0) return pc_errorf(e, "%s: missing attribute '%s' (on /tokens or the root group)", path, name);
    hid_t t = H5Aget_type(a);
    int rc = 0;
    if (t < 0 || H5Tget_class(t) != H5T_INTEGER || attr_n_points(a) != 1)
        rc = pc_errorf(e, "%s: attribute '%s' must be one integer", path, name);
    else if (H5Aread(a, H5T_NATIVE_INT64, out) < 0)
        rc = pc_errorf(e, "%s: cannot read attribute '%s'", path, name);
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    return rc;
}

static int read_str_attr(const char *path, hid_t file, hid_t dset, const char *name, char **out, pc_err *e) {
    hid_t a = open_attr(file, dset, name);
    if (a < 0) return pc_errorf(e, "%s: missing attribute '%s' (on /tokens or the root group)", path, name);
    hid_t t = H5Aget_type(a);
    int rc = 0;
    if (t < 0 || H5Tget_class(t) != H5T_STRING || attr_n_points(a) != 1) {
        rc = pc_errorf(e, "%s: attribute '%s' must be one string", path, name);
    } else if (H5Tis_variable_str(t) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));
        char *s = NULL;
        if (H5Aread(a, mt, &s) < 0 || !s) {
            rc = pc_errorf(e, "%s: cannot read attribute '%s'", path, name);
        } else {
            *out = pc_strdup(s);
            H5free_memory(s);
        }
        H5Tclose(mt);
    } else {
        size_t n = H5Tget_size(t);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n + 1);
        H5Tset_strpad(mt, H5T_STR_NULLTERM);
        H5Tset_cset(mt, H5Tget_cset(t));
        char *s = pc_calloc(n + 2, 1);
        if (H5Aread(a, mt, s) < 0) {
            free(s);
            rc = pc_errorf(e, "%s: cannot read attribute '%s'", path, name);
        } else {
            *out = s;
        }
        H5Tclose(mt);
    }
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    return rc;
}

static const char *describe_type(hid_t t, char *buf, size_t n) {
    H5T_class_t cls = H5Tget_class(t);
    size_t bits = H5Tget_size(t) * 8;
    if (cls == H5T_INTEGER)
        snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", bits);
    else if (cls == H5T_FLOAT)
        snprintf(buf, n, "float%zu", bits);
    else if (cls == H5T_STRING)
        snprintf(buf, n, "string");
    else
        snprintf(buf, n, "HDF5 type class %d", (int)cls);
    return buf;
}

/* Open s's file and /tokens (HDF5 lock held); on failure the error names the file.
 * first: the file has not been checked yet (a reopen skips what would only say why a
 * file that was a shard is not one). */
static int shard_handles_open(data_shard *s, int first, pc_err *e) {
    errno = 0;
    htri_t is_h5 = first ? H5Fis_hdf5(s->path) : 1;
    if (is_h5 < 0) return pc_errorf(e, "%s: cannot open: %s", s->path, errno ? strerror(errno) : "HDF5 error");
    if (is_h5 == 0) return pc_errorf(e, "%s: not an HDF5 file", s->path);
    errno = 0;
    s->file = H5Fopen(s->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (s->file < 0)
        return errno && !first ? pc_errorf(e, "%s: cannot open: %s", s->path, strerror(errno))
                               : pc_errorf(e, "%s: cannot open as HDF5", s->path);
    if (first && H5Lexists(s->file, "tokens", H5P_DEFAULT) <= 0) return pc_errorf(e, "%s: no dataset /tokens", s->path);
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    H5Pset_chunk_cache(dapl, H5D_CHUNK_CACHE_NSLOTS_DEFAULT, DATA_CHUNK_CACHE, H5D_CHUNK_CACHE_W0_DEFAULT);
    s->dset = H5Dopen2(s->file, "tokens", dapl);
    H5Pclose(dapl);
    if (s->dset < 0) return pc_errorf(e, "%s: /tokens is not a dataset", s->path);
    return 0;
}

static void shard_handles_close(data_shard *s) {
    if (s->dset >= 0) H5Dclose(s->dset);
    if (s->file >= 0) H5Fclose(s->file);
    s->file = s->dset = -1;
}

/* /tokens' length and bytes a token (0: not uint16 or uint32; tbuf describes the type). */
static int tokens_shape(const data_shard *s, int64_t *n, int *tsize, char *tbuf, size_t tn, pc_err *e) {
    hid_t sp = H5Dget_space(s->dset);
    int ndims = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    hsize_t dims[H5S_MAX_RANK] = {0};
    if (ndims == 1) H5Sget_simple_extent_dims(sp, dims, NULL);
    if (sp >= 0) H5Sclose(sp);
    if (ndims != 1) return pc_errorf(e, "%s: /tokens must be 1-D, has %d dimensions", s->path, ndims);
    *n = (int64_t)dims[0];
    hid_t t = H5Dget_type(s->dset);
    if (t < 0) return pc_errorf(e, "%s: cannot read the type of /tokens", s->path);
    describe_type(t, tbuf, tn);
    size_t sz = H5Tget_size(t);
    int ok = H5Tget_class(t) == H5T_INTEGER && H5Tget_sign(t) == H5T_SGN_NONE && (sz == 2 || sz == 4);
    H5Tclose(t);
    *tsize = ok ? (int)sz : 0;
    return 0;
}

/* Every filter /tokens is stored with must be one this HDF5 library can decode (a
 * shard compressed with a plugin filter would otherwise fail at its first read, deep in
 * a run, without saying why). */
static int check_filters(const data_shard *s, pc_err *e) {
    hid_t pl = H5Dget_create_plist(s->dset);
    if (pl < 0) return pc_errorf(e, "%s: cannot read the storage properties of /tokens", s->path);
    int nf = H5Pget_nfilters(pl), rc = 0;
    for (int i = 0; i < nf && rc == 0; i++) {
        unsigned flags = 0, conf = 0;
        size_t nelem = 0;
        char name[64] = "";
        H5Z_filter_t id = H5Pget_filter2(pl, (unsigned)i, &flags, &nelem, NULL, sizeof name, name, &conf);
        if (id < 0 || H5Zfilter_avail(id) <= 0)
            rc = pc_errorf(e,
                           "%s: /tokens is stored with HDF5 filter %d ('%s'), which this HDF5 library cannot "
                           "decode: install its plugin (HDF5_PLUGIN_PATH) or rewrite the shard without it",
                           s->path, (int)id, name);
    }
    H5Pclose(pl);
    return rc;
}

/* Check one shard and read its attributes (HDF5 lock held, its handles open). */
static int shard_check(data_shard *s, int model_vocab, pc_err *e) {
    const char *path = s->path;
    char tbuf[64];
    int tsize;
    if (tokens_shape(s, &s->n_tokens, &tsize, tbuf, sizeof tbuf, e)) return -1;
    if (!tsize) return pc_errorf(e, "%s: /tokens has type %s; expected uint16 or uint32", path, tbuf);
    s->token_bits = tsize * 8;
    if (check_filters(s, e)) return -1;

    int64_t v;
    if (read_int_attr(path, s->file, s->dset, "vocab_size", &v, e)) return -1;
    if (v <= 0 || v > INT_MAX) return pc_errorf(e, "%s: attribute vocab_size = %lld is out of range", path, (long long)v);
    s->vocab_size = (int)v;
    if (model_vocab > 0 && s->vocab_size > model_vocab)
        return pc_errorf(e, "%s: attribute vocab_size = %d exceeds the model's vocab_size %d", path, s->vocab_size,
                         model_vocab);
    if (read_int_attr(path, s->file, s->dset, "eos_id", &v, e)) return -1;
    if (v < 0 || v >= s->vocab_size)
        return pc_errorf(e, "%s: attribute eos_id = %lld is not below vocab_size %d", path, (long long)v, s->vocab_size);
    s->eos_id = (int)v;
    return read_str_attr(path, s->file, s->dset, "tokenizer", &s->tokenizer, e);
}

/* Open and check one shard, then close its handles (reads reopen them); HDF5 lock held. */
static int shard_open(data_shard *s, const char *path, int model_vocab, pc_err *e) {
    memset(s, 0, sizeof *s);
    s->file = s->dset = -1;
    s->path = pc_strdup(path);
    if (access(path, R_OK) != 0) return pc_errorf(e, "%s: cannot read: %s", path, strerror(errno));
    struct stat st;
    if (stat(path, &st) == 0) s->bytes = (int64_t)st.st_size;
    int rc = shard_handles_open(s, 1, e);
    if (rc == 0) rc = shard_check(s, model_vocab, e);
    shard_handles_close(s);
    return rc;
}

/* s's handles open for a read: reopened (closing the set's least recently used shard
 * when max_open are open) and checked to hold what it held when the set was
 * opened. HDF5 lock held. */
static int shard_ready(data_set *d, data_shard *s, pc_err *e) {
    s->used = ++d->clock;
    if (s->dset >= 0) return 0;
    if (d->n_open >= d->max_open) {
        data_shard *lru = NULL;
        for (int i = 0; i < d->n_shards; i++)
            if (d->shards[i].dset >= 0 && (!lru || d->shards[i].used < lru->used)) lru = &d->shards[i];
        shard_handles_close(lru);
        d->n_open--;
    }
    int64_t n;
    int tsize;
    char tbuf[64];
    if (shard_handles_open(s, 0, e) || tokens_shape(s, &n, &tsize, tbuf, sizeof tbuf, e)) {
        shard_handles_close(s);
        return -1;
    }
    if (n != s->n_tokens || tsize * 8 != s->token_bits) {
        shard_handles_close(s);
        return pc_errorf(e, "%s: changed since the run opened it (/tokens is now %lld x %s, was %lld x uint%d)",
                         s->path, (long long)n, tbuf, (long long)s->n_tokens, s->token_bits);
    }
    d->n_open++;
    return 0;
}

static void shard_close(data_shard *s) {
    shard_handles_close(s);
    free(s->path);
    free(s->tokenizer);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int data_open(const char *const *globs, int n_globs, int vocab_size, int64_t min_tokens, data_set **out,
              pc_err *e) {
    *out = NULL;
    if (n_globs <= 0) return pc_errorf(e, "data: no shard globs given");
    /* Expand every glob first, so a typo is reported before any file is opened. */
    char **paths = NULL;
    size_t n_paths = 0;
    int rc = 0;
    for (int g = 0; g < n_globs && rc == 0; g++) {
        glob_t gl;
        int r = glob(globs[g], GLOB_ERR, NULL, &gl);
        if (r == GLOB_NOMATCH || (r == 0 && gl.gl_pathc == 0)) {
            rc = pc_errorf(e, "%s: no file matches", globs[g]);
        } else if (r != 0) {
            rc = r == GLOB_ABORTED ? pc_errorf(e, "%s: no file matches (a directory in the pattern is missing or "
                                                  "unreadable)", globs[g])
                                   : pc_errorf(e, "%s: cannot expand glob (out of memory)", globs[g]);
        } else {
            /* glob(3) sorts by the locale; sort bytewise so the order is the same everywhere. */
            size_t first = n_paths;
            paths = pc_realloc(paths, (n_paths + gl.gl_pathc) * sizeof *paths);
            for (size_t i = 0; i < gl.gl_pathc; i++) paths[n_paths++] = pc_strdup(gl.gl_pathv[i]);
            qsort(paths + first, n_paths - first, sizeof *paths, cmp_str);
        }
        if (r == 0 || r == GLOB_NOMATCH) globfree(&gl);
    }
    data_set *d = pc_calloc(1, sizeof *d);
    d->vocab_size = vocab_size;
    d->max_open = data_max_open();
    if (rc == 0) {
        d->shards = pc_calloc(n_paths, sizeof *d->shards);
        hdf5_lock();
        for (size_t i = 0; i < n_paths; i++) {
            data_shard *s = &d->shards[d->n_shards++];
            if (shard_open(s, paths[i], vocab_size, e)) {
                rc = -1;
                break;
            }
            s->start = d->n_tokens;
            d->n_tokens += s->n_tokens;
        }
        hdf5_unlock();
    }
    if (rc == 0 && d->n_tokens < min_tokens) {
        rc = pc_errorf(e, "%s%s: shards hold %lld tokens, seq_len %lld needs at least %lld", globs[0],
                       n_globs > 1 ? " ..." : "", (long long)d->n_tokens, (long long)(min_tokens - 1),
                       (long long)min_tokens);
    }
    for (size_t i = 0; i < n_paths; i++) free(paths[i]);
    free(paths);
    if (rc) {
        data_close(d);
        return -1;
    }
    *out = d;
    return 0;
}

void data_close(data_set *d) {
    if (!d) return;
    hdf5_lock();
    for (int i = 0; i < d->n_shards; i++) shard_close(&d->shards[i]);
    hdf5_unlock();
    free(d->shards);
    free(d);
}

int64_t data_n_tokens(const data_set *d) { return d->n_tokens; }
int data_n_shards(const data_set *d) { return d->n_shards; }

void data_shard_get_info(const data_set *d, int i, data_shard_info *out) {
    const data_shard *s = &d->shards[i];
    out->path = s->path;
    out->n_tokens = s->n_tokens;
    out->token_bits = s->token_bits;
    out->vocab_size = s->vocab_size;
    out->eos_id = s->eos_id;
    out->tokenizer = s->tokenizer;
}

int data_tokenizers_differ(const data_set *const *sets, int n, char *msg, size_t cap) {
    const data_shard *first = NULL;
    for (int k = 0; k < n; k++) {
        for (int i = 0; sets[k] && i < sets[k]->n_shards; i++) {
            const data_shard *s = &sets[k]->shards[i];
            if (!first) first = s;
            if (s->vocab_size == first->vocab_size && s->eos_id == first->eos_id &&
                !strcmp(s->tokenizer, first->tokenizer))
                continue;
            snprintf(msg, cap,
                     "shards made by different tokenizers: %s (tokenizer \"%s\", vocab_size %d, eos_id %d) and %s "
                     "(tokenizer \"%s\", vocab_size %d, eos_id %d)",
                     first->path, first->tokenizer, first->vocab_size, first->eos_id, s->path, s->tokenizer,
                     s->vocab_size, s->eos_id);
            return 1;
        }
    }
    return 0;
}

typedef struct file_id {
    dev_t dev;
    ino_t ino;
} file_id;

static int cmp_file_id(const void *x, const void *y) {
    const file_id *a = x, *b = y;
    if (a->dev != b->dev) return a->dev < b->dev ? -1 : 1;
    return a->ino < b->ino ? -1 : a->ino > b->ino;
}

const char *data_shared_shard(const data_set *a, const data_set *b) {
    if (!a || !b || a->n_shards == 0) return NULL;
    file_id *ids = pc_malloc(sizeof *ids * (size_t)a->n_shards); /* a's files, sorted: one stat each */
    int n = 0;
    struct stat st;
    for (int i = 0; i < a->n_shards; i++)
        if (stat(a->shards[i].path, &st) == 0) ids[n++] = (file_id){st.st_dev, st.st_ino};
    qsort(ids, (size_t)n, sizeof *ids, cmp_file_id);
    const char *both = NULL;
    for (int j = 0; j < b->n_shards && !both; j++) {
        file_id key;
        if (stat(b->shards[j].path, &st) != 0) continue;
        key = (file_id){st.st_dev, st.st_ino};
        if (bsearch(&key, ids, (size_t)n, sizeof *ids, cmp_file_id)) both = b->shards[j].path;
    }
    free(ids);
    return both;
}

/* ---------------------------------------------------------------- reading */

/* The shard's file still has the size it had when the set was opened: HDF5 reads what a
 * file cut short no longer holds as zeros, valid tokens a run would train on. */
static int check_size(const data_shard *s, pc_err *e) {
    void *handle = NULL;
    struct stat st;
    if (H5Fget_vfd_handle(s->file, H5P_DEFAULT, &handle) < 0 || !handle || fstat(*(int *)handle, &st) != 0)
        return 0; /* a driver without a descriptor: nothing to compare */
    if ((int64_t)st.st_size != s->bytes)
        return pc_errorf(e, "%s: changed since the run opened it (%lld bytes, was %lld)", s->path,
                         (long long)st.st_size, (long long)s->bytes);
    return 0;
}

/* Read n tokens of shard s of d from local index `at` into dst; HDF5 lock held. */
static int shard_read(data_set *d, data_shard *s, int64_t at, int64_t n, int32_t *dst, pc_err *e) {
    if (shard_ready(d, s, e) || check_size(s, e)) return -1;
    hsize_t start = (hsize_t)at, count = (hsize_t)n;
    hid_t fsp = H5Dget_space(s->dset);
    hid_t msp = H5Screate_simple(1, &count, NULL);
    int rc = 0;
    if (fsp < 0 || msp < 0 || H5Sselect_hyperslab(fsp, H5S_SELECT_SET, &start, NULL, &count, NULL) < 0 ||
        H5Dread(s->dset, H5T_NATIVE_UINT32, msp, fsp, H5P_DEFAULT, dst) < 0)
        rc = pc_errorf(e, "%s: cannot read /tokens[%lld:%lld]", s->path, (long long)at, (long long)(at + n));
    if (msp >= 0) H5Sclose(msp);
    if (fsp >= 0) H5Sclose(fsp);
    if (rc) return rc;
    const uint32_t *u = (const uint32_t *)dst;
    for (int64_t i = 0; i < n; i++) {
        if (u[i] >= (uint32_t)s->vocab_size)
            return pc_errorf(e, "%s: token %u at index %lld >= vocab_size %d", s->path, u[i], (long long)(at + i),
                             s->vocab_size);
    }
    return 0;
}

int data_read(data_set *d, int64_t offset, int64_t n, int32_t *dst, pc_err *e) {
    if (offset < 0 || n < 0 || offset > d->n_tokens - n)
        return pc_errorf(e, "data: read of %lld tokens at %lld is outside the %lld tokens held", (long long)n,
                         (long long)offset, (long long)d->n_tokens);
    /* Last shard starting at or before offset (binary search over starts). */
    int lo = 0, hi = d->n_shards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (d->shards[mid].start <= offset) lo = mid;
        else hi = mid - 1;
    }
    int rc = 0;
    hdf5_lock();
    for (int i = lo; n > 0 && i < d->n_shards; i++) {
        data_shard *s = &d->shards[i];
        int64_t at = offset - s->start;
        if (at >= s->n_tokens) continue; /* empty shards */
        int64_t take = PC_MIN(n, s->n_tokens - at);
        if ((rc = shard_read(d, s, at, take, dst, e))) break;
        dst += take;
        offset += take;
        n -= take;
    }
    hdf5_unlock();
    return rc;
}

/* ---------------------------------------------------------------- sample order */

int64_t data_sample_offset(uint64_t seed, int64_t step, int64_t sample, int64_t n_tokens, int seq_len) {
    if (seq_len < 0 || n_tokens <= seq_len) return -1;
    uint64_t range = (uint64_t)(n_tokens - seq_len); /* starts 0 .. n_tokens - seq_len - 1 */
    uint64_t h = pc_hash64(seed, (uint64_t)step, (uint64_t)sample, 0x5a3d1e0f7c2b9486ULL);
    /* Multiply-high maps h to [0, range) with negligible bias. */
    __extension__ typedef unsigned __int128 u128;
    return (int64_t)(((u128)h * range) >> 64);
}

int64_t data_eval_offset(int64_t i, int seq_len) { return i * (int64_t)seq_len; }

int64_t data_eval_n_windows(int64_t n_tokens, int seq_len) {
    if (seq_len <= 0 || n_tokens <= seq_len) return 0;
    return (n_tokens - 1) / seq_len;
}

int data_read_batch(data_set *d, uint64_t seed, int64_t step, int64_t first_sample, int seq_len,
                    int micro_batch, int32_t *tokens, pc_err *e) {
    for (int m = 0; m < micro_batch; m++) {
        int64_t off = data_sample_offset(seed, step, first_sample + m, d->n_tokens, seq_len);
        if (off < 0)
            return pc_errorf(e, "data: %lld tokens cannot hold a window of seq_len %d + 1", (long long)d->n_tokens,
                             seq_len);
        // (micro_batch, seq_len+1): row m
        if (data_read(d, off, (int64_t)seq_len + 1, tokens + (size_t)m * ((size_t)seq_len + 1), e))
            return pc_error_wrap(e, "step %lld sample %lld", (long long)step + 1, /* 1-based, as logs count */
                                 (long long)(first_sample + m));
    }
    return 0;
}

/* ---------------------------------------------------------------- loader */

struct data_loader {
    data_set *d;
    uint64_t seed;
    int seq_len, micro_batch;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    /* The prefetch job: queued (pending) -> running -> done; collected by the next get. */
    int job_pending, job_running, job_done;
    int64_t job_step, job_first;
    int job_rc;
    pc_err job_err;
    int32_t *buf; // (micro_batch, seq_len+1)
    /* A hint that arrived while the job was running: read it next. */
    int redirect;
    int64_t redirect_step, redirect_first;
    int64_t n_hits;
};

static void *loader_main(void *arg) {
    data_loader *dl = arg;
    pthread_mutex_lock(&dl->mu);
    for (;;) {
        while (!dl->stop && !(dl->job_pending && !dl->job_done)) pthread_cond_wait(&dl->cv, &dl->mu);
        if (dl->stop) break;
        int64_t step = dl->job_step, first = dl->job_first;
        dl->job_running = 1;
        pthread_mutex_unlock(&dl->mu);
        pc_err err = {{0}};
        int rc = data_read_batch(dl->d, dl->seed, step, first, dl->seq_len, dl->micro_batch, dl->buf, &err);
        pthread_mutex_lock(&dl->mu);
        dl->job_running = 0;
        if (dl->redirect) {
            dl->redirect = 0;
            dl->job_step = dl->redirect_step;
            dl->job_first = dl->redirect_first;
            continue;
        }
        dl->job_rc = rc;
        dl->job_err = err;
        dl->job_done = 1;
        pthread_cond_broadcast(&dl->cv);
    }
    pthread_mutex_unlock(&dl->mu);
    return NULL;
}

int data_loader_create(data_set *d, uint64_t seed, int seq_len, int micro_batch, data_loader **out, pc_err *e) {
    *out = NULL;
    if (seq_len <= 0 || micro_batch <= 0)
        return pc_errorf(e, "data loader: seq_len %d and micro_batch %d must be positive", seq_len, micro_batch);
    if (d->n_tokens <= seq_len)
        return pc_errorf(e, "data loader: shards hold %lld tokens, seq_len %d needs at least %lld",
                         (long long)d->n_tokens, seq_len, (long long)seq_len + 1);
    data_loader *dl = pc_calloc(1, sizeof *dl);
    dl->d = d;
    dl->seed = seed;
    dl->seq_len = seq_len;
    dl->micro_batch = micro_batch;
    dl->buf = pc_malloc((size_t)micro_batch * ((size_t)seq_len + 1) * sizeof(int32_t));
    pthread_mutex_init(&dl->mu, NULL);
    pthread_cond_init(&dl->cv, NULL);
    int r = pthread_create(&dl->thread, NULL, loader_main, dl);
    if (r != 0) {
        pthread_cond_destroy(&dl->cv);
        pthread_mutex_destroy(&dl->mu);
        free(dl->buf);
        free(dl);
        return pc_errorf(e, "data loader: cannot start the prefetch thread: %s", strerror(r));
    }
    *out = dl;
    return 0;
}

/* Make (step, first_sample) the prefetch target; mutex held. */
static void loader_target(data_loader *dl, int64_t step, int64_t first_sample) {
    if (dl->job_running) {
        dl->redirect = 1;
        dl->redirect_step = step;
        dl->redirect_first = first_sample;
        return;
    }
    dl->job_step = step;
    dl->job_first = first_sample;
    dl->job_pending = 1;
    dl->job_done = 0;
    pthread_cond_broadcast(&dl->cv);
}

int data_loader_get(data_loader *dl, int64_t step, int64_t first_sample, int32_t *tokens, pc_err *e) {
    size_t n = (size_t)dl->micro_batch * ((size_t)dl->seq_len + 1);
    int served = 0, rc = 0;
    pthread_mutex_lock(&dl->mu);
    if (dl->job_pending) {
        while (!dl->job_done) pthread_cond_wait(&dl->cv, &dl->mu);
        if (dl->job_step == step && dl->job_first == first_sample) {
            served = 1;
            rc = dl->job_rc;
            if (rc == 0) memcpy(tokens, dl->buf, n * sizeof *tokens);
            else if (e) *e = dl->job_err;
            dl->n_hits += rc == 0;
        }
        dl->job_pending = 0;
    }
    pthread_mutex_unlock(&dl->mu);
    if (!served) rc = data_read_batch(dl->d, dl->seed, step, first_sample, dl->seq_len, dl->micro_batch, tokens, e);
    if (rc) return rc;
    pthread_mutex_lock(&dl->mu);
    loader_target(dl, step, first_sample + dl->micro_batch);
    pthread_mutex_unlock(&dl->mu);
    return 0;
}

void data_loader_hint(data_loader *dl, int64_t step, int64_t first_sample) {
    pthread_mutex_lock(&dl->mu);
    if (!(dl->job_pending && !dl->redirect && dl->job_step == step && dl->job_first == first_sample))
        loader_target(dl, step, first_sample);
    pthread_mutex_unlock(&dl->mu);
}

int64_t data_loader_n_prefetch_hits(const data_loader *dl) { return dl->n_hits; }

void data_loader_destroy(data_loader *dl) {
    if (!dl) return;
    pthread_mutex_lock(&dl->mu);
    dl->stop = 1;
    pthread_cond_broadcast(&dl->cv);
    pthread_mutex_unlock(&dl->mu);
    pthread_join(dl->thread, NULL);
    pthread_cond_destroy(&dl->cv);
    pthread_mutex_destroy(&dl->mu);
    free(dl->buf);
    free(dl);
}

/* ---------------------------------------------------------------- writing */

static int write_int_attr(hid_t obj, const char *name, int v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int64_t v64 = v;
    int rc = (a < 0 || H5Awrite(a, H5T_NATIVE_INT64, &v64) < 0) ? -1 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc;
}

static int write_str_attr(hid_t obj, const char *name, const char *v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a < 0 || H5Awrite(a, t, &v) < 0) ? -1 : 0;
    if (a >= 0) H5Aclose(a);
    H5Tclose(t);
    H5Sclose(sp);
    return rc;
}

enum { RESERVE_META = 1 << 16 }; /* bytes reserved for a shard's header, chunk index and attributes */

/* Allocate the first `bytes` of the file at path (a shard's chunks and metadata), so
 * that a full disk, a quota or a file size limit fails here, with its reason, rather
 * than in a write HDF5 makes while closing (write_h5 cuts the file back to HDF5's end
 * after). Where the file system cannot preallocate, its free space and the file size
 * limit are checked instead. */
static int reserve(const char *path, int64_t bytes, pc_err *e) {
    if (bytes <= 0) return 0;
    int fd = open(path, O_WRONLY);
    if (fd < 0) return pc_errorf(e, "cannot open %s: %s", path, strerror(errno));
    int err = fallocate(fd, 0, 0, (off_t)bytes) == 0 ? 0 : errno;
    if (err == EOPNOTSUPP || err == ENOSYS || err == EINVAL) { /* no preallocation here: what can be checked */
        struct statvfs fs;
        struct rlimit fsize;
        err = 0;
        if (fstatvfs(fd, &fs) == 0 && (uint64_t)fs.f_bavail * fs.f_frsize < (uint64_t)bytes) err = ENOSPC;
        if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != RLIM_INFINITY &&
            fsize.rlim_cur < (rlim_t)bytes)
            err = EFBIG;
    }
    close(fd);
    if (err == 0) return 0;
    return pc_errorf(e, "cannot allocate %lld bytes for %s: %s", (long long)bytes, path, strerror(err));
}

enum { WRITE_PIECE = 1 << 20 }; /* tokens per H5Dwrite: a multiple of the chunk size */

/* Build the HDF5 file at tmp from fill's pieces, checking every token; HDF5 lock held. */
static int write_h5(const char *tmp, const char *path, int64_t n, data_fill_fn fill, void *ctx, int vocab_size,
                    int eos_id, const char *tokenizer, pc_err *e) {
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return pc_errorf(e, "%s: cannot create %s: %s", path, tmp, strerror(errno));
    int elt = vocab_size <= 65536 ? 2 : 4;                     /* bytes a token in the file */
    hsize_t dims = (hsize_t)n, chunk = (hsize_t)PC_MIN(n, (int64_t)1 << 16);
    int64_t chunks = n > 0 ? (n - 1) / (int64_t)chunk + 1 : 0; /* each written whole */
    if (reserve(tmp, chunks * (int64_t)chunk * elt + RESERVE_META, e) != 0) {
        pc_error_wrap(e, "%s", path);
        H5Fclose(f);
        return -1;
    }
    hid_t sp = H5Screate_simple(1, &dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (n > 0) H5Pset_chunk(dcpl, 1, &chunk);
    hid_t ftype = elt == 2 ? H5T_STD_U16LE : H5T_STD_U32LE;
    hid_t ds = H5Dcreate2(f, "tokens", ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int rc = 0;
    if (ds < 0) rc = pc_errorf(e, "%s: cannot create dataset /tokens", path);
    uint32_t *piece = n > 0 ? pc_malloc(sizeof(uint32_t) * (size_t)PC_MIN(n, (int64_t)WRITE_PIECE)) : NULL;
    for (int64_t at = 0; rc == 0 && at < n; at += WRITE_PIECE) {
        hsize_t off = (hsize_t)at, len = (hsize_t)PC_MIN((int64_t)WRITE_PIECE, n - at);
        if (fill(ctx, at, (int64_t)len, piece, e) != 0) {
            rc = -1;
            break;
        }
        for (hsize_t i = 0; i < len && rc == 0; i++)
            if (piece[i] >= (uint32_t)vocab_size)
                rc = pc_errorf(e, "%s: token %u at index %lld >= vocab_size %d", path, piece[i], (long long)(at + i),
                               vocab_size);
        if (rc) break;
        hid_t mem = H5Screate_simple(1, &len, NULL);
        if (H5Sselect_hyperslab(sp, H5S_SELECT_SET, &off, NULL, &len, NULL) < 0 ||
            H5Dwrite(ds, H5T_NATIVE_UINT32, mem, sp, H5P_DEFAULT, piece) < 0)
            rc = pc_errorf(e, "%s: cannot write tokens %lld..%lld of %lld (disk full?)", path, (long long)at,
                           (long long)(at + (int64_t)len), (long long)n);
        H5Sclose(mem);
    }
    free(piece);
    if (rc == 0 && (write_int_attr(ds, "vocab_size", vocab_size) || write_int_attr(ds, "eos_id", eos_id) ||
                    write_str_attr(ds, "tokenizer", tokenizer)))
        rc = pc_errorf(e, "%s: cannot write the attributes of /tokens", path);
    /* the chunks still cached are written here: a failure is a failed write */
    if (ds >= 0 && H5Dclose(ds) < 0 && rc == 0)
        rc = pc_errorf(e, "%s: cannot write /tokens to %s (disk full?)", path, tmp);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (rc == 0 && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) rc = pc_errorf(e, "%s: cannot flush %s (disk full?)", path, tmp);
    hsize_t size = 0; /* HDF5's end of the file, short of the reservation's */
    if (rc == 0 && H5Fget_filesize(f, &size) < 0) rc = pc_errorf(e, "%s: cannot get the size of %s", path, tmp);
    if (H5Fclose(f) < 0 && rc == 0) rc = pc_errorf(e, "%s: cannot close %s (disk full?)", path, tmp);
    if (rc == 0 && truncate(tmp, (off_t)size) != 0)
        rc = pc_errorf(e, "%s: cannot truncate %s: %s", path, tmp, strerror(errno));
    return rc;
}

/* data_fill_fn of an array in memory (data_write_shard). */
static int fill_from_array(void *ctx, int64_t at, int64_t n, uint32_t *dst, pc_err *e) {
    (void)e;
    memcpy(dst, (const uint32_t *)ctx + at, sizeof(uint32_t) * (size_t)n);
    return 0;
}

int data_write_shard(const char *path, const uint32_t *tokens, int64_t n, int vocab_size, int eos_id,
                     const char *tokenizer, pc_err *e) {
    return data_write_shard_fill(path, n, fill_from_array, (void *)tokens, vocab_size, eos_id, tokenizer, e);
}

int data_write_shard_fill(const char *path, int64_t n, data_fill_fn fill, void *ctx, int vocab_size, int eos_id,
                          const char *tokenizer, pc_err *e) {
    if (vocab_size <= 0 || eos_id < 0 || eos_id >= vocab_size || n < 0)
        return pc_errorf(e, "%s: invalid shard (vocab_size %d, eos_id %d, %lld tokens)", path, vocab_size, eos_id,
                         (long long)n);
    size_t len = strlen(path);
    char *tmp = pc_malloc(len + 5);
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp", 5);
    hdf5_lock();
    int rc = write_h5(tmp, path, n, fill, ctx, vocab_size, eos_id, tokenizer ? tokenizer : "", e);
    hdf5_unlock();
    if (rc == 0) {
        int fd = open(tmp, O_RDONLY);
        if (fd < 0 || fsync(fd) != 0) rc = pc_errorf(e, "%s: cannot fsync %s: %s", path, tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (rc == 0 && rename(tmp, path) != 0) rc = pc_errorf(e, "%s: cannot rename %s: %s", path, tmp, strerror(errno));
    if (rc == 0) rc = pc_fsync_parent(path, e);
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}
