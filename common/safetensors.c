/* safetensors: strict mmap reader and atomic writer of Hugging Face safetensors files.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 * {"__metadata__":{str:str}, name:{"dtype","shape","data_offsets":[begin,end]}},
 * then the data section; offsets are relative to the data section. Every header is
 * validated before any tensor is handed out (see safetensors.h). Writers emit the
 * header padded with spaces so the data section starts 8-byte aligned, and make
 * files appear only complete (temp name, fsync, rename). */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

typedef struct st_file {
    char *path;
    unsigned char *map;
    size_t size;
} st_file;

struct st_model {
    st_file *files;
    int n_files;
    st_tensor *tensors;
    int n_tensors;
    int *by_name; /* tensor indices sorted by name */
    char *source; /* the path given to st_open */
};

static const char *dtype_names[ST_DTYPE_COUNT] = {
    "F32",  "F16",     "BF16",    "I32",     "I64", "U8", "F64",     "I8",      "I16", "U16",
    "U32",  "U64",     "BOOL",    "F8_E4M3", "F8_E5M2", "F8_E8M0", "C64", "F4", "F6_E2M3", "F6_E3M2"};
static const int dtype_bits[ST_DTYPE_COUNT] = {32, 16, 16, 32, 64, 8, 64, 8, 16, 16, 32, 64, 8, 8, 8, 8, 64, 4, 6, 6};
static const size_t dtype_sizes[ST_DTYPE_COUNT] = {4, 2, 2, 4, 8, 1, 8, 1, 2, 2, 4, 8, 1, 1, 1, 1, 8, 0, 0, 0};

size_t st_dtype_size(st_dtype t) { return (unsigned)t < ST_DTYPE_COUNT ? dtype_sizes[t] : 0; }
int st_dtype_bits(st_dtype t) { return (unsigned)t < ST_DTYPE_COUNT ? dtype_bits[t] : 0; }
const char *st_dtype_name(st_dtype t) { return (unsigned)t < ST_DTYPE_COUNT ? dtype_names[t] : "?"; }

int st_dtype_parse(const char *s, st_dtype *out) {
    static const struct {
        const char *name;
        st_dtype t;
    } names[] = {{"f32", ST_F32},  {"float32", ST_F32},  {"fp32", ST_F32},    {"bf16", ST_BF16},
                 {"bfloat16", ST_BF16}, {"f16", ST_F16}, {"float16", ST_F16}, {"fp16", ST_F16}};
    for (size_t i = 0; i < PC_ARRAY_LEN(names); i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].t;
            return 0;
        }
    }
    return -1;
}

int64_t st_numel(const st_tensor *t) {
    /* A zero dimension first: the other dimensions may then be huge (their product is
     * only bounded by the file size when none is zero). */
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] == 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int st_count(const st_model *m) { return m->n_tensors; }
const st_tensor *st_get(const st_model *m, int i) {
    return (i >= 0 && i < m->n_tensors) ? &m->tensors[i] : NULL;
}
const char *st_file_path(const st_model *m, const st_tensor *t) {
    return (t->file >= 0 && t->file < m->n_files) ? m->files[t->file].path : "?";
}

const st_tensor *st_find(const st_model *m, const char *name) {
    int lo = 0, hi = m->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const st_tensor *t = &m->tensors[m->by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

void st_close(st_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_files; i++) {
        if (m->files[i].map) munmap(m->files[i].map, m->files[i].size);
        free(m->files[i].path);
    }
    for (int i = 0; i < m->n_tensors; i++) free(m->tensors[i].name);
    free(m->source);
    free(m->files);
    free(m->tensors);
    free(m->by_name);
    free(m);
}

/* ---------------------------------------------------------------- reading headers */

typedef struct hdr_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;
} hdr_tensor;

static int cmp_hdr_begin(const void *a, const void *b) {
    const hdr_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int parse_u64(const json_val *v, uint64_t *out) {
    int64_t x;
    if (json_int(v, &x) != 0 || x < 0) return -1;
    *out = (uint64_t)x;
    return 0;
}

/* Parse and validate one tensor entry of a header. */
static int parse_entry(const char *path, const char *name, const json_val *v, uint64_t data_size, hdr_tensor *t,
                       pc_err *e) {
    if (!v || v->type != JSON_OBJECT)
        return pc_errorf(e, "%s: tensor '%s': header entry must be an object", path, name);
    for (int i = 0; i < v->n; i++) {
        const char *k = v->keys[i];
        if (strcmp(k, "dtype") != 0 && strcmp(k, "shape") != 0 && strcmp(k, "data_offsets") != 0)
            return pc_errorf(e, "%s: tensor '%s': unknown header field '%s'", path, name, k);
    }
    const char *dt = json_str(json_get(v, "dtype"));
    if (!dt) return pc_errorf(e, "%s: tensor '%s': missing or non-string 'dtype'", path, name);
    int found = 0;
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        if (strcmp(dt, dtype_names[d]) == 0) {
            t->dtype = (st_dtype)d;
            found = 1;
        }
    }
    if (!found)
        return pc_errorf(e, "%s: tensor '%s': unknown dtype '%s' (not a safetensors dtype this build knows)", path,
                         name, dt);
    const json_val *shape = json_get(v, "shape");
    if (!shape || shape->type != JSON_ARRAY)
        return pc_errorf(e, "%s: tensor '%s': missing or non-array 'shape'", path, name);
    if (shape->n > ST_MAX_DIMS)
        return pc_errorf(e, "%s: tensor '%s': %d dimensions, more than the supported %d", path, name, shape->n,
                         ST_MAX_DIMS);
    t->ndim = shape->n;
    uint64_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < shape->n; i++) {
        uint64_t d;
        if (parse_u64(&shape->items[i], &d) != 0 || d > (uint64_t)INT64_MAX)
            return pc_errorf(e, "%s: tensor '%s': shape[%d] must be a non-negative integer", path, name, i);
        t->shape[i] = (int64_t)d;
        if (d != 0 && numel > UINT64_MAX / d) overflow = 1;
        numel *= d;
    }
    const json_val *off = json_get(v, "data_offsets");
    if (!off || off->type != JSON_ARRAY || off->n != 2 || parse_u64(&off->items[0], &t->begin) != 0 ||
        parse_u64(&off->items[1], &t->end) != 0)
        return pc_errorf(e, "%s: tensor '%s': 'data_offsets' must be [begin, end] of non-negative integers", path,
                         name);
    if (t->begin > t->end)
        return pc_errorf(e, "%s: tensor '%s': data_offsets begin %llu > end %llu", path, name,
                         (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_size)
        return pc_errorf(e, "%s: tensor '%s': data_offsets [%llu, %llu] outside the data section of %llu bytes",
                         path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                         (unsigned long long)data_size);
    uint64_t bits = (uint64_t)dtype_bits[t->dtype]; /* the format's rule: a whole number of bytes */
    if (overflow || numel > UINT64_MAX / bits || numel * bits % 8 != 0 || numel * bits / 8 != t->end - t->begin)
        return pc_errorf(e, "%s: tensor '%s': byte length %llu does not match shape x dtype size (%s)", path, name,
                         (unsigned long long)(t->end - t->begin), dt);
    return 0;
}

/* Validates the header of an mmap'd file and returns its tensors (owned names). */
static int parse_header(const char *path, const unsigned char *map, size_t size, hdr_tensor **out, int *n_out,
                        uint64_t *data_start, pc_err *e) {
    *out = NULL;
    *n_out = 0;
    if (size < 8) return pc_errorf(e, "%s: file too short (%zu bytes) to hold a safetensors header", path, size);
    uint64_t hlen;
    memcpy(&hlen, map, 8);
    if (hlen < 2) return pc_errorf(e, "%s: header length %llu is too small", path, (unsigned long long)hlen);
    if (hlen > ST_MAX_HEADER)
        return pc_errorf(e, "%s: header length %llu exceeds the 100 MB limit", path, (unsigned long long)hlen);
    if (hlen > size - 8)
        return pc_errorf(e, "%s: header length %llu exceeds the file size %zu (truncated file?)", path,
                         (unsigned long long)hlen, size);
    json_val *root;
    if (json_parse((const char *)map + 8, (size_t)hlen, &root, e) != 0)
        return pc_error_wrap(e, "%s: header", path);
    if (root->type != JSON_OBJECT) {
        json_free(root);
        return pc_errorf(e, "%s: header must be a JSON object", path);
    }
    uint64_t data_size = size - 8 - hlen;
    hdr_tensor *ts = pc_calloc((size_t)root->n + 1, sizeof(hdr_tensor));
    int n = 0;
    int rc = 0;
    for (int i = 0; i < root->n && rc == 0; i++) {
        const char *k = root->keys[i];
        const json_val *v = &root->items[i];
        if (strcmp(k, "__metadata__") == 0) {
            if (v->type != JSON_OBJECT) {
                rc = pc_errorf(e, "%s: __metadata__ must be an object", path);
                break;
            }
            for (int j = 0; j < v->n; j++) {
                if (v->items[j].type != JSON_STRING) {
                    rc = pc_errorf(e, "%s: __metadata__ value '%s' must be a string", path, v->keys[j]);
                    break;
                }
            }
            continue;
        }
        if (k[0] == '\0') {
            rc = pc_errorf(e, "%s: empty tensor name in header", path);
            break;
        }
        rc = parse_entry(path, k, v, data_size, &ts[n], e);
        if (rc == 0) ts[n++].name = pc_strdup(k);
    }
    json_free(root);
    if (rc == 0 && n > 1) {
        hdr_tensor *sorted = pc_malloc(sizeof(hdr_tensor) * (size_t)n);
        memcpy(sorted, ts, sizeof(hdr_tensor) * (size_t)n);
        qsort(sorted, (size_t)n, sizeof(hdr_tensor), cmp_hdr_begin);
        uint64_t prev_end = 0;
        const char *prev = NULL;
        for (int i = 0; i < n; i++) {
            if (sorted[i].begin == sorted[i].end) continue; /* empty tensors occupy no bytes */
            if (prev && sorted[i].begin < prev_end) {
                rc = pc_errorf(e, "%s: tensors '%s' and '%s' overlap in the data section", path, prev,
                               sorted[i].name);
                break;
            }
            prev = sorted[i].name;
            prev_end = sorted[i].end;
        }
        free(sorted);
    }
    if (rc != 0) {
        for (int i = 0; i < n; i++) free(ts[i].name);
        free(ts);
        return -1;
    }
    *out = ts;
    *n_out = n;
    *data_start = 8 + hlen;
    return 0;
}

static int map_file(const char *path, st_file *f, pc_err *e) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return pc_errorf(e, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return pc_errorf(e, "%s: not a regular file", path);
    }
    f->path = pc_strdup(path);
    f->size = (size_t)sb.st_size;
    f->map = NULL;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            close(fd);
            return pc_errorf(e, "%s: mmap failed: %s", path, strerror(err));
        }
        f->map = p;
    }
    close(fd);
    return 0;
}

static int add_file(st_model *m, const char *path, pc_err *e) {
    m->files = pc_realloc(m->files, sizeof(st_file) * (size_t)(m->n_files + 1));
    st_file *f = &m->files[m->n_files];
    memset(f, 0, sizeof *f);
    if (map_file(path, f, e) != 0) {
        free(f->path);
        return -1;
    }
    m->n_files++;
    return 0;
}

static int cmp_name_idx(const void *a, const void *b, void *arg) {
    const st_tensor *ts = arg;
    return strcmp(ts[*(const int *)a].name, ts[*(const int *)b].name);
}

static void build_name_index(st_model *m) {
    m->by_name = pc_malloc(sizeof(int) * (size_t)(m->n_tensors + 1));
    for (int i = 0; i < m->n_tensors; i++) m->by_name[i] = i;
    qsort_r(m->by_name, (size_t)m->n_tensors, sizeof(int), cmp_name_idx, m->tensors);
}

static void fill_tensor(st_tensor *t, const hdr_tensor *h, const st_file *f, uint64_t data_start, int file) {
    t->name = pc_strdup(h->name);
    t->dtype = h->dtype;
    t->ndim = h->ndim;
    memcpy(t->shape, h->shape, sizeof t->shape);
    t->data = f->map + data_start + h->begin;
    t->nbytes = (size_t)(h->end - h->begin);
    t->file = file;
}

static void free_hdr(hdr_tensor *h, int n) {
    for (int i = 0; i < n; i++) free(h[i].name);
    free(h);
}

static int open_single(st_model *m, const char *path, pc_err *e) {
    if (add_file(m, path, e) != 0) return -1;
    st_file *f = &m->files[0];
    hdr_tensor *h;
    int n;
    uint64_t ds;
    if (parse_header(path, f->map, f->size, &h, &n, &ds, e) != 0) return -1;
    m->tensors = pc_calloc((size_t)n + 1, sizeof(st_tensor));
    for (int i = 0; i < n; i++) fill_tensor(&m->tensors[i], &h[i], f, ds, 0);
    m->n_tensors = n;
    free_hdr(h, n);
    return 0;
}

static int open_index(st_model *m, const char *index_path, pc_err *e) {
    char *text;
    size_t len;
    if (pc_read_file(index_path, &text, &len, e) != 0) return -1;
    json_val *root;
    if (json_parse(text, len, &root, e) != 0) {
        free(text);
        return pc_error_wrap(e, "%s", index_path);
    }
    free(text);
    const json_val *wm = json_get(root, "weight_map");
    if (!wm || wm->type != JSON_OBJECT) {
        json_free(root);
        return pc_errorf(e, "%s: key 'weight_map' must be an object", index_path);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", index_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");

    /* Per shard file (in first-seen order): its parsed header. */
    hdr_tensor **hdrs = pc_calloc((size_t)wm->n + 1, sizeof(hdr_tensor *));
    int *hdr_n = pc_calloc((size_t)wm->n + 1, sizeof(int));
    uint64_t *hdr_ds = pc_calloc((size_t)wm->n + 1, sizeof(uint64_t));
    char **shard_names = pc_calloc((size_t)wm->n + 1, sizeof(char *));
    int n_shards = 0;
    int rc = 0;
    m->tensors = pc_calloc((size_t)wm->n + 1, sizeof(st_tensor));
    for (int i = 0; i < wm->n && rc == 0; i++) {
        const char *tname = wm->keys[i];
        const char *fname = json_str(&wm->items[i]);
        if (!fname) {
            rc = pc_errorf(e, "%s: weight_map entry for tensor '%s' must be a file name string", index_path, tname);
            break;
        }
        if (fname[0] == '\0' || strchr(fname, '/') || strcmp(fname, "..") == 0 || strcmp(fname, ".") == 0) {
            rc = pc_errorf(e, "%s: weight_map entry for tensor '%s' names '%s', which is not a plain file name",
                           index_path, tname, fname);
            break;
        }
        int s = -1;
        for (int j = 0; j < n_shards; j++)
            if (strcmp(shard_names[j], fname) == 0) s = j;
        if (s < 0) {
            char path[4096];
            if (pc_path_join(path, sizeof path, dir, fname) != 0) {
                rc = pc_errorf(e, "%s: shard path too long", index_path);
                break;
            }
            if (access(path, F_OK) != 0) {
                rc = pc_errorf(e, "%s: tensor '%s' is mapped to shard '%s', which does not exist", index_path, tname,
                               path);
                break;
            }
            if (add_file(m, path, e) != 0) {
                rc = -1;
                break;
            }
            s = n_shards++;
            shard_names[s] = pc_strdup(fname);
            st_file *f = &m->files[s];
            if (parse_header(path, f->map, f->size, &hdrs[s], &hdr_n[s], &hdr_ds[s], e) != 0) {
                rc = -1;
                break;
            }
        }
        const hdr_tensor *h = NULL;
        for (int j = 0; j < hdr_n[s]; j++)
            if (strcmp(hdrs[s][j].name, tname) == 0) h = &hdrs[s][j];
        if (!h) {
            rc = pc_errorf(e, "%s: tensor '%s' is mapped to shard '%s', which does not contain it", index_path,
                           tname, m->files[s].path);
            break;
        }
        fill_tensor(&m->tensors[m->n_tensors++], h, &m->files[s], hdr_ds[s], s);
    }
    for (int j = 0; j < n_shards; j++) {
        free_hdr(hdrs[j], hdr_n[j]);
        free(shard_names[j]);
    }
    free(hdrs);
    free(hdr_n);
    free(hdr_ds);
    free(shard_names);
    json_free(root);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int st_open(const char *path, st_model **out, pc_err *e) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    st_model *m = pc_calloc(1, sizeof(st_model));
    m->source = pc_strdup(path);
    int rc;
    if (S_ISDIR(sb.st_mode)) {
        char single[4096], index[4096];
        if (pc_path_join(single, sizeof single, path, ST_SINGLE_NAME) != 0 ||
            pc_path_join(index, sizeof index, path, ST_INDEX_NAME) != 0) {
            free(m);
            return pc_errorf(e, "%s: path too long", path);
        }
        /* Same precedence as transformers: the single file wins over an index. */
        if (access(single, F_OK) == 0) rc = open_single(m, single, e);
        else if (access(index, F_OK) == 0) rc = open_index(m, index, e);
        else rc = pc_errorf(e, "%s: no %s or %s in this directory", path, ST_SINGLE_NAME, ST_INDEX_NAME);
    } else if (ends_with(path, ".index.json")) {
        rc = open_index(m, path, e);
    } else {
        rc = open_single(m, path, e);
    }
    if (rc != 0) {
        st_close(m);
        return -1;
    }
    build_name_index(m);
    for (int i = 1; i < m->n_tensors; i++) {
        const st_tensor *a = &m->tensors[m->by_name[i - 1]], *b = &m->tensors[m->by_name[i]];
        if (strcmp(a->name, b->name) == 0) {
            pc_errorf(e, "%s: tensor '%s' appears twice", path, a->name);
            st_close(m);
            return -1;
        }
    }
    *out = m;
    return 0;
}

/* ---------------------------------------------------------------- reading data */

static void convert_f32(const unsigned char *src, st_dtype dt, float *dst, size_t n) {
    if (dt == ST_F32) {
        memcpy(dst, src, n * 4);
    } else if (dt == ST_BF16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = pc_bf16_to_f32(h);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = pc_f16_to_f32(h);
        }
    }
}

static int find_float(const st_model *m, const char *name, const st_tensor **out, pc_err *e) {
    const st_tensor *t = st_find(m, name);
    if (!t) {
        const char *where = m->n_files > 0 ? m->files[0].path : "?";
        return pc_errorf(e, "%s: tensor '%s' not found", where, name);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return pc_errorf(e, "%s: tensor '%s' has dtype %s, which is not read as f32 (F32, F16 or BF16 are)",
                         st_file_path(m, t), name, dtype_names[t->dtype]);
    *out = t;
    return 0;
}

int st_read_f32(const st_model *m, const char *name, float *dst, size_t n, pc_err *e) {
    const st_tensor *t;
    if (find_float(m, name, &t, e) != 0) return -1;
    if ((int64_t)n != st_numel(t))
        return pc_errorf(e, "%s: tensor '%s' has %lld elements, caller expects %zu", st_file_path(m, t), name,
                         (long long)st_numel(t), n);
    convert_f32(t->data, t->dtype, dst, n);
    return 0;
}

static int check_2d(const st_model *m, const st_tensor *t, const char *what, int64_t start, int64_t count,
                    int64_t dim, pc_err *e) {
    if (t->ndim != 2)
        return pc_errorf(e, "%s: tensor '%s' has %d dimensions; %s slices need 2", st_file_path(m, t), t->name,
                         t->ndim, what);
    if (start < 0 || count < 0 || start > dim || count > dim - start)
        return pc_errorf(e, "%s: tensor '%s': %s [%lld, %lld) outside [0, %lld)", st_file_path(m, t), t->name, what,
                         (long long)start, (long long)(start + count), (long long)dim);
    return 0;
}

int st_read_rows_f32(const st_model *m, const char *name, int64_t row0, int64_t nrows, float *dst, pc_err *e) {
    const st_tensor *t;
    if (find_float(m, name, &t, e) != 0) return -1;
    if (check_2d(m, t, "row", row0, nrows, t->shape[0], e) != 0) return -1;
    int64_t cols = t->shape[1];
    size_t es = dtype_sizes[t->dtype];
    // [R, C] rows [row0, row0+nrows) -> dst [nrows, C]
    convert_f32(t->data + (size_t)(row0 * cols) * es, t->dtype, dst, (size_t)(nrows * cols));
    return 0;
}

int st_read_cols_f32(const st_model *m, const char *name, int64_t col0, int64_t ncols, float *dst, pc_err *e) {
    const st_tensor *t;
    if (find_float(m, name, &t, e) != 0) return -1;
    if (check_2d(m, t, "column", col0, ncols, t->shape[1], e) != 0) return -1;
    int64_t rows = t->shape[0], cols = t->shape[1];
    size_t es = dtype_sizes[t->dtype];
    // [R, C] columns [col0, col0+ncols) -> dst [R, ncols]
    for (int64_t r = 0; r < rows; r++)
        convert_f32(t->data + (size_t)(r * cols + col0) * es, t->dtype, dst + (size_t)(r * ncols), (size_t)ncols);
    return 0;
}

/* ---------------------------------------------------------------- writing */

static int64_t item_numel(const st_item *it) {
    int64_t n = 1;
    for (int i = 0; i < it->ndim; i++) n *= it->shape[i];
    return n;
}

static int check_items(const char *path, const st_item *items, const int *idx, int n, st_dtype dt, pc_err *e) {
    if (dt != ST_F32 && dt != ST_F16 && dt != ST_BF16)
        return pc_errorf(e, "%s: output dtype %s is not a float type", path, st_dtype_name(dt));
    for (int k = 0; k < n; k++) {
        const st_item *it = &items[idx ? idx[k] : k];
        if (!it->name || !it->name[0]) return pc_errorf(e, "%s: tensor %d has an empty name", path, k);
        if (strcmp(it->name, "__metadata__") == 0)
            return pc_errorf(e, "%s: '__metadata__' is reserved and cannot name a tensor", path);
        if (it->ndim < 0 || it->ndim > ST_MAX_DIMS)
            return pc_errorf(e, "%s: tensor '%s': ndim %d outside [0, %d]", path, it->name, it->ndim, ST_MAX_DIMS);
        for (int d = 0; d < it->ndim; d++)
            if (it->shape[d] < 0) return pc_errorf(e, "%s: tensor '%s': negative shape", path, it->name);
        if (item_numel(it) > 0 && !it->data && !it->fill)
            return pc_errorf(e, "%s: tensor '%s': no data", path, it->name);
        for (int j = 0; j < k; j++)
            if (strcmp(items[idx ? idx[j] : j].name, it->name) == 0)
                return pc_errorf(e, "%s: tensor '%s' given twice", path, it->name);
    }
    return 0;
}


/* Writes the complete file (header + data) of items idx[0..n) to tmp and fsyncs it. */
static int write_file_to(const char *tmp, const st_item *items, const int *idx, int n, st_dtype dt, pc_err *e) {
    size_t es = dtype_sizes[dt];
    json_buf h;
    json_buf_init(&h);
    json_buf_puts(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int k = 0; k < n; k++) {
        const st_item *it = &items[idx ? idx[k] : k];
        uint64_t nb = (uint64_t)item_numel(it) * es;
        json_buf_puts(&h, ",");
        json_buf_str(&h, it->name);
        json_buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", dtype_names[dt]);
        for (int d = 0; d < it->ndim; d++) json_buf_printf(&h, "%s%lld", d ? "," : "", (long long)it->shape[d]);
        json_buf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                        (unsigned long long)(off + nb));
        off += nb;
    }
    json_buf_puts(&h, "}");
    while ((8 + h.len) % 8 != 0) json_buf_puts(&h, " ");
    uint64_t hlen = h.len;

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        json_buf_free(&h);
        return pc_errorf(e, "%s: cannot create: %s", tmp, strerror(errno));
    }
    int rc = pc_write_all(fd, &hlen, 8, tmp, e);
    if (rc == 0) rc = pc_write_all(fd, h.data, h.len, tmp, e);
    json_buf_free(&h);
    enum { CHUNK = 1 << 18 };
    uint16_t *buf = dt == ST_F32 ? NULL : pc_malloc(sizeof(uint16_t) * CHUNK);
    float *filled = NULL; /* (CHUNK) a filled item's piece */
    for (int k = 0; k < n && rc == 0; k++) {
        const st_item *it = &items[idx ? idx[k] : k];
        size_t numel = (size_t)item_numel(it);
        if (dt == ST_F32 && it->data) {
            rc = pc_write_all(fd, it->data, numel * 4, tmp, e);
            continue;
        }
        for (size_t i0 = 0; i0 < numel && rc == 0; i0 += CHUNK) {
            size_t m = PC_MIN((size_t)CHUNK, numel - i0);
            const float *src = it->data ? it->data + i0 : NULL;
            if (!src) {
                if (!filled) filled = pc_malloc(sizeof(float) * CHUNK);
                if ((rc = it->fill(it->ctx, (int64_t)i0, (int64_t)m, filled, e)) != 0) break;
                src = filled;
            }
            if (dt == ST_F32) {
                rc = pc_write_all(fd, src, m * 4, tmp, e);
                continue;
            }
            for (size_t i = 0; i < m; i++) buf[i] = dt == ST_BF16 ? pc_f32_to_bf16(src[i]) : pc_f32_to_f16(src[i]);
            rc = pc_write_all(fd, buf, m * 2, tmp, e);
        }
    }
    free(buf);
    free(filled);
    if (rc == 0 && fsync(fd) != 0) rc = pc_errorf(e, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = pc_errorf(e, "%s: close failed: %s", tmp, strerror(errno));
    if (rc != 0) unlink(tmp);
    return rc;
}

static void dir_of(const char *path, char *dir, size_t n) {
    snprintf(dir, n, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, n, ".");
}

static int tmp_name(char *out, size_t n, const char *path) {
    return snprintf(out, n, "%s.tmp.%d", path, (int)getpid()) >= (int)n ? -1 : 0;
}

int st_write(const char *path, const st_item *items, int n, st_dtype out_dtype, pc_err *e) {
    if (check_items(path, items, NULL, n, out_dtype, e) != 0) return -1;
    char tmp[4096], dir[4096];
    if (tmp_name(tmp, sizeof tmp, path) != 0) return pc_errorf(e, "%s: path too long", path);
    if (write_file_to(tmp, items, NULL, n, out_dtype, e) != 0) return -1;
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return pc_errorf(e, "%s: rename failed: %s", path, strerror(err));
    }
    dir_of(path, dir, sizeof dir);
    return pc_fsync_dir(dir, e);
}

/* Removes model files in dir that a new write supersedes: keep_single says whether
 * model.safetensors is part of the new model; n_shards the new shard count (0: none). */
static void remove_stale(const char *dir, int keep_single, int n_shards) {
    char p[4096];
    if (!keep_single && pc_path_join(p, sizeof p, dir, ST_SINGLE_NAME) == 0) unlink(p);
    if (n_shards == 0 && pc_path_join(p, sizeof p, dir, ST_INDEX_NAME) == 0) unlink(p);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int a, b, used = 0;
        if (sscanf(de->d_name, "model-%5d-of-%5d.safetensors%n", &a, &b, &used) == 2 &&
            used == (int)strlen(de->d_name) && b != n_shards && pc_path_join(p, sizeof p, dir, de->d_name) == 0)
            unlink(p);
    }
    closedir(d);
}

int st_write_model(const char *dir, const st_item *items, int n, st_dtype out_dtype, size_t max_shard_bytes,
                   pc_err *e) {
    if (pc_mkdirs(dir, e) != 0) return -1;
    char path[4096];
    if (check_items(dir, items, NULL, n, out_dtype, e) != 0) return -1;
    size_t es = dtype_sizes[out_dtype];
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += (uint64_t)item_numel(&items[i]) * es;
    if (max_shard_bytes == 0 || total <= max_shard_bytes) {
        if (pc_path_join(path, sizeof path, dir, ST_SINGLE_NAME) != 0) return pc_errorf(e, "%s: path too long", dir);
        if (st_write(path, items, n, out_dtype, e) != 0) return -1;
        remove_stale(dir, 1, 0);
        return 0;
    }
    /* Greedy split in item order: a new shard starts when the next tensor would
     * overflow the current one (a tensor larger than the limit gets its own shard). */
    int *shard_of = pc_malloc(sizeof(int) * (size_t)n + 1);
    int n_shards = 0;
    uint64_t cur = 0;
    for (int i = 0; i < n; i++) {
        uint64_t nb = (uint64_t)item_numel(&items[i]) * es;
        if (n_shards == 0 || (cur > 0 && cur + nb > max_shard_bytes)) {
            n_shards++;
            cur = 0;
        }
        shard_of[i] = n_shards - 1;
        cur += nb;
    }
    if (n_shards > 99999) {
        free(shard_of);
        return pc_errorf(e, "%s: %d shards exceed the 5-digit shard naming", dir, n_shards);
    }
    char (*final)[4096] = pc_calloc((size_t)n_shards + 1, sizeof *final);
    char (*tmp)[4096] = pc_calloc((size_t)n_shards + 1, sizeof *tmp);
    int *idx = pc_malloc(sizeof(int) * (size_t)n + 1);
    int rc = 0, written = 0;
    json_buf ix;
    json_buf_init(&ix);
    json_buf_printf(&ix, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {",
                    (unsigned long long)total);
    for (int s = 0; s < n_shards && rc == 0; s++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        if (pc_path_join(final[s], sizeof final[s], dir, name) != 0 || tmp_name(tmp[s], sizeof tmp[s], final[s]) != 0) {
            rc = pc_errorf(e, "%s: path too long", dir);
            break;
        }
        int k = 0;
        for (int i = 0; i < n; i++)
            if (shard_of[i] == s) idx[k++] = i;
        if (write_file_to(tmp[s], items, idx, k, out_dtype, e) != 0) {
            rc = -1;
            break;
        }
        written = s + 1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        json_buf_puts(&ix, i ? ",\n    " : "\n    ");
        json_buf_str(&ix, items[i].name);
        json_buf_puts(&ix, ": ");
        const char *base = strrchr(final[shard_of[i]], '/');
        json_buf_str(&ix, base ? base + 1 : final[shard_of[i]]);
    }
    json_buf_puts(&ix, "\n  }\n}\n");
    char ipath[4096], itmp[4096];
    int have_itmp = 0;
    if (rc == 0) {
        if (pc_path_join(ipath, sizeof ipath, dir, ST_INDEX_NAME) != 0 || tmp_name(itmp, sizeof itmp, ipath) != 0) {
            rc = pc_errorf(e, "%s: path too long", dir);
        } else {
            int fd = open(itmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0) {
                rc = pc_errorf(e, "%s: cannot create: %s", itmp, strerror(errno));
            } else {
                have_itmp = 1;
                rc = pc_write_all(fd, ix.data, ix.len, itmp, e);
                if (rc == 0 && fsync(fd) != 0) rc = pc_errorf(e, "%s: fsync failed: %s", itmp, strerror(errno));
                close(fd);
            }
        }
    }
    json_buf_free(&ix);
    /* Commit: shards first, the index (which makes them visible as a model) last. */
    for (int s = 0; s < n_shards && rc == 0; s++)
        if (rename(tmp[s], final[s]) != 0) rc = pc_errorf(e, "%s: rename failed: %s", final[s], strerror(errno));
    if (rc == 0 && rename(itmp, ipath) != 0) rc = pc_errorf(e, "%s: rename failed: %s", ipath, strerror(errno));
    if (rc != 0) {
        for (int s = 0; s < written; s++) unlink(tmp[s]);
        if (have_itmp) unlink(itmp);
    } else {
        remove_stale(dir, 0, n_shards);
        rc = pc_fsync_dir(dir, e);
    }
    free(final);
    free(tmp);
    free(idx);
    free(shard_of);
    return rc;
}

const char *st_source(const st_model *m) { return m->source; }

int st_check_finite(const st_model *m, const char *name, const float *data, size_t n, pc_err *e) {
    for (size_t j = 0; j < n; j++)
        if (!isfinite(data[j])) {
            const st_tensor *t = st_find(m, name);
            return pc_errorf(e, "%s: tensor %s holds a non-finite value (%g) at element %zu",
                             t ? st_file_path(m, t) : m->source, name, (double)data[j], j);
        }
    return 0;
}
