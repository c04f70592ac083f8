/* ckpt: checkpoint directories of named f32 blocks with a checksummed manifest, written
 * atomically (temporary directory, fsync, rename, `latest` last) by one or many ranks,
 * and read back by name after verification. The format is described in ckpt.h. */
#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK_MAGIC "PCCKBLK1"
#define MANIFEST_MAGIC "projcompd-checkpoint"

/* ---- XXH64 ---- */

static const uint64_t P1 = 11400714785074694791ull, P2 = 14029467366897019727ull, P3 = 1609587929392839161ull,
                      P4 = 9650029242287828579ull, P5 = 2870177450012600261ull;

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static uint64_t rd64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t rd32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t xround(uint64_t acc, uint64_t in) { return rotl64(acc + in * P2, 31) * P1; }
static uint64_t xmerge(uint64_t acc, uint64_t v) { return (acc ^ xround(0, v)) * P1 + P4; }

void ckpt_hash_init(ckpt_hash *h, uint64_t seed) {
    memset(h, 0, sizeof *h);
    h->seed = seed;
    h->v[0] = seed + P1 + P2;
    h->v[1] = seed + P2;
    h->v[2] = seed;
    h->v[3] = seed - P1;
}

void ckpt_hash_update(ckpt_hash *h, const void *data, size_t len) {
    const unsigned char *p = data;
    h->total += len;
    if (h->nbuf + len < 32) {
        memcpy(h->buf + h->nbuf, p, len);
        h->nbuf += len;
        return;
    }
    if (h->nbuf) {
        size_t take = 32 - h->nbuf;
        memcpy(h->buf + h->nbuf, p, take);
        for (int i = 0; i < 4; i++) h->v[i] = xround(h->v[i], rd64(h->buf + 8 * i));
        p += take;
        len -= take;
        h->nbuf = 0;
    }
    uint64_t v0 = h->v[0], v1 = h->v[1], v2 = h->v[2], v3 = h->v[3];
    while (len >= 32) {
        v0 = xround(v0, rd64(p));
        v1 = xround(v1, rd64(p + 8));
        v2 = xround(v2, rd64(p + 16));
        v3 = xround(v3, rd64(p + 24));
        p += 32;
        len -= 32;
    }
    h->v[0] = v0, h->v[1] = v1, h->v[2] = v2, h->v[3] = v3;
    memcpy(h->buf, p, len);
    h->nbuf = len;
}

uint64_t ckpt_hash_final(const ckpt_hash *h) {
    uint64_t acc;
    if (h->total >= 32) {
        acc = rotl64(h->v[0], 1) + rotl64(h->v[1], 7) + rotl64(h->v[2], 12) + rotl64(h->v[3], 18);
        for (int i = 0; i < 4; i++) acc = xmerge(acc, h->v[i]);
    } else {
        acc = h->seed + P5;
    }
    acc += h->total;
    const unsigned char *p = h->buf;
    size_t len = h->nbuf;
    for (; len >= 8; p += 8, len -= 8) acc = rotl64(acc ^ xround(0, rd64(p)), 27) * P1 + P4;
    if (len >= 4) {
        acc = rotl64(acc ^ ((uint64_t)rd32(p) * P1), 23) * P2 + P3;
        p += 4;
        len -= 4;
    }
    for (; len > 0; p++, len--) acc = rotl64(acc ^ (*p * P5), 11) * P1;
    acc ^= acc >> 33;
    acc *= P2;
    acc ^= acc >> 29;
    acc *= P3;
    acc ^= acc >> 32;
    return acc;
}

uint64_t ckpt_xxh64(const void *data, size_t len, uint64_t seed) {
    ckpt_hash h;
    ckpt_hash_init(&h, seed);
    ckpt_hash_update(&h, data, len);
    return ckpt_hash_final(&h);
}

/* ---- names ---- */

void ckpt_dir_name(int64_t step, char *out, size_t n) { snprintf(out, n, "step-%07lld", (long long)step); }

static int safe_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

void ckpt_file_name(const char *name, ckpt_kind kind, char *out, size_t n) {
    char safe[CKPT_NAME_MAX];
    size_t k = 0;
    int replaced = 0;
    for (const char *p = name; *p && k + 1 < sizeof safe; p++) {
        int ok = safe_char(*p) && !(k == 0 && *p == '.');
        safe[k++] = ok ? *p : '_';
        replaced |= !ok;
    }
    safe[k] = '\0';
    const char *ext = kind == CKPT_BLOCK ? ".blk" : ".raw";
    if (replaced)
        snprintf(out, n, "%s-%016" PRIx64 "%s", safe, ckpt_xxh64(name, strlen(name), 0), ext);
    else
        snprintf(out, n, "%s%s", safe, ext);
}

/* Names and metadata travel in a line-oriented manifest: no whitespace or controls. */
static int check_name(const char *what, const char *name, pc_err *e) {
    size_t n = strlen(name);
    if (n == 0 || n >= CKPT_NAME_MAX) return pc_errorf(e, "checkpoint: %s name '%s' is empty or too long", what, name);
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return pc_errorf(e, "checkpoint: %s name '%s' contains whitespace or control characters", what, name);
    return 0;
}

/* ---- small file helpers ---- */


static int write_all(int fd, const void *buf, size_t len, ckpt_hash *h, const char *path, pc_err *e) {
    if (h) ckpt_hash_update(h, buf, len);
    return pc_write_all(fd, buf, len, path, e);
}

static void warn(pc_log *log, const char *fmt, const char *a, const char *b) {
    if (log)
        LOGW(log, fmt, a, b);
    else {
        fprintf(stderr, fmt, a, b);
        fputc('\n', stderr);
    }
}

/* ---- writing ---- */

struct ckpt_writer {
    char dir[2048], tmp[2304], final[2304];
    int64_t step;
    comm *comm;
    int rank, world;
    pc_log *log;
    int failed;
    pc_err first; /* the first failure of this rank, reported by the commit */
    int n, cap;
    ckpt_entry *entries;
};

static int add_entry(ckpt_writer *w, const char *name, ckpt_kind kind, const char *file, int64_t size, uint64_t h,
                     pc_err *e) {
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->entries[i].name, name)) return pc_errorf(e, "checkpoint: entry '%s' written twice", name);
    if (w->n == w->cap) w->entries = pc_realloc(w->entries, sizeof(ckpt_entry) * (size_t)(w->cap = w->cap * 2 + 16));
    ckpt_entry *en = &w->entries[w->n++];
    memset(en, 0, sizeof *en);
    snprintf(en->name, sizeof en->name, "%s", name);
    snprintf(en->file, sizeof en->file, "%s", file);
    en->kind = kind;
    en->size = size;
    en->hash = h;
    return 0;
}

int ckpt_write_begin(ckpt_writer **out, const char *ckpt_dir, int64_t step, comm *c, pc_log *log, pc_err *e) {
    ckpt_writer *w = pc_calloc(1, sizeof *w);
    w->comm = c;
    w->rank = c ? c->rank : 0;
    w->world = c ? c->size : 1;
    w->log = log;
    w->step = step;
    snprintf(w->dir, sizeof w->dir, "%s", ckpt_dir);
    char dn[32];
    ckpt_dir_name(step, dn, sizeof dn);
    snprintf(w->final, sizeof w->final, "%s/%s", ckpt_dir, dn);
    int64_t hdr[2] = {0, (int64_t)getpid()}; /* rank 0's status and pid */
    if (w->rank == 0) {
        snprintf(w->tmp, sizeof w->tmp, "%s/%s.tmp-%lld", ckpt_dir, dn, (long long)hdr[1]);
        if (pc_mkdirs(ckpt_dir, e) != 0) {
            hdr[0] = -1;
        } else {
            pc_rm_rf(w->tmp); /* left by an earlier process with the same pid */
            if (mkdir(w->tmp, 0755) != 0) {
                pc_errorf(e, "%s: cannot create checkpoint directory: %s", w->tmp, strerror(errno));
                hdr[0] = -1;
            }
        }
    }
    if (c) {
        pc_err ce = {{0}};
        if (comm_broadcast(c, hdr, 2, COMM_I64, 0, &ce) != 0) {
            if (hdr[0] == 0) *e = ce;
            hdr[0] = -1;
        }
    }
    if (hdr[0] != 0) {
        if (w->rank != 0 && !e->msg[0])
            pc_errorf(e, "rank 0 could not create the checkpoint of step %lld under %s", (long long)step,
                      ckpt_dir);
        free(w);
        *out = NULL;
        return -1;
    }
    snprintf(w->tmp, sizeof w->tmp, "%s/%s.tmp-%lld", ckpt_dir, dn, (long long)hdr[1]);
    *out = w;
    return 0;
}

/* Create tmp/file for writing. */
static int open_entry(ckpt_writer *w, const char *file, char *path, size_t n, int *fd, pc_err *e) {
    snprintf(path, n, "%s/%s", w->tmp, file);
    *fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (*fd < 0) return pc_errorf(e, "%s: cannot create: %s", path, strerror(errno));
    return 0;
}

/* fsync and close a written entry; on failure unlink it. */
static int close_entry(int fd, const char *path, int rc, pc_err *e) {
    if (rc == 0 && fsync(fd) != 0) rc = pc_errorf(e, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = pc_errorf(e, "%s: close failed: %s", path, strerror(errno));
    if (rc != 0) {
        unlink(path);
    }
    return rc;
}

static int fail(ckpt_writer *w, pc_err *e) {
    if (!w->failed) w->first = *e;
    w->failed = 1;
    return -1;
}

int ckpt_write_fail(ckpt_writer *w, pc_err *e) { return fail(w, e); }

static int write_block(ckpt_writer *w, const ckpt_block *b, pc_err *e);
static int write_raw(ckpt_writer *w, const char *name, const void *buf, size_t len, pc_err *e);

int ckpt_write_block(ckpt_writer *w, const ckpt_block *b, pc_err *e) {
    if (w->failed) {
        *e = w->first;
        return -1;
    }
    return write_block(w, b, e) == 0 ? 0 : fail(w, e);
}

int ckpt_write_raw(ckpt_writer *w, const char *name, const void *buf, size_t len, pc_err *e) {
    if (w->failed) {
        *e = w->first;
        return -1;
    }
    return write_raw(w, name, buf, len, e) == 0 ? 0 : fail(w, e);
}

static int write_block(ckpt_writer *w, const ckpt_block *b, pc_err *e) {
    if (check_name("block", b->name, e) != 0) return -1;
    if (b->n_arrays < 1 || b->n_arrays > CKPT_MAX_ARRAYS)
        return pc_errorf(e, "checkpoint: block '%s' has %d arrays", b->name, b->n_arrays);
    char file[CKPT_NAME_MAX + 24], path[2600];
    ckpt_file_name(b->name, CKPT_BLOCK, file, sizeof file);
    int fd;
    if (open_entry(w, file, path, sizeof path, &fd, e) != 0) return -1;
    ckpt_hash h;
    ckpt_hash_init(&h, 0);
    uint32_t hdr[2] = {(uint32_t)strlen(b->name), (uint32_t)b->n_arrays};
    int rc = write_all(fd, BLOCK_MAGIC, 8, &h, path, e);
    if (rc == 0) rc = write_all(fd, hdr, sizeof hdr, &h, path, e);
    if (rc == 0) rc = write_all(fd, b->name, hdr[0], &h, path, e);
    int64_t size = 8 + (int64_t)sizeof hdr + hdr[0];
    for (int i = 0; rc == 0 && i < b->n_arrays; i++) {
        uint32_t nl = (uint32_t)strlen(b->arrays[i].name);
        int64_t cnt = b->arrays[i].n;
        rc = write_all(fd, &nl, 4, &h, path, e);
        if (rc == 0) rc = write_all(fd, b->arrays[i].name, nl, &h, path, e);
        if (rc == 0) rc = write_all(fd, &cnt, 8, &h, path, e);
        size += 12 + nl;
    }
    for (int i = 0; rc == 0 && i < b->n_arrays; i++) {
        rc = write_all(fd, b->arrays[i].data, sizeof(float) * (size_t)b->arrays[i].n, &h, path, e);
        size += (int64_t)sizeof(float) * b->arrays[i].n;
    }
    if (close_entry(fd, path, rc, e) != 0) return -1;
    if (add_entry(w, b->name, CKPT_BLOCK, file, size, ckpt_hash_final(&h), e) != 0) return -1;
    return 0;
}

static int write_raw(ckpt_writer *w, const char *name, const void *buf, size_t len, pc_err *e) {
    if (check_name("raw file", name, e) != 0) return -1;
    char file[CKPT_NAME_MAX + 24], path[2600];
    ckpt_file_name(name, CKPT_RAW, file, sizeof file);
    int fd;
    if (open_entry(w, file, path, sizeof path, &fd, e) != 0) return -1;
    ckpt_hash h;
    ckpt_hash_init(&h, 0);
    int rc = write_all(fd, buf, len, &h, path, e);
    if (close_entry(fd, path, rc, e) != 0) return -1;
    if (add_entry(w, name, CKPT_RAW, file, (int64_t)len, ckpt_hash_final(&h), e) != 0) return -1;
    return 0;
}

typedef struct strbuf {
    char *p;
    size_t n, cap;
} strbuf;

static void sb_printf(strbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *s, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(s->p ? s->p + s->n : NULL, s->p ? s->cap - s->n : 0, fmt, ap);
        va_end(ap);
        if (k >= 0 && s->p && s->n + (size_t)k < s->cap) {
            s->n += (size_t)k;
            return;
        }
        s->cap = s->cap * 2 + (size_t)(k > 0 ? k : 0) + 256;
        s->p = pc_realloc(s->p, s->cap);
    }
}

static int step_of(const char *name, int64_t *step) {
    if (strncmp(name, "step-", 5) != 0 || !name[5]) return 0;
    int64_t s = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9' || s > INT64_MAX / 10 - 10) return 0;
        s = s * 10 + (*p - '0');
    }
    *step = s;
    return 1;
}

static int cmp_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Delete checkpoints older than the `keep` newest complete ones (the new one included),
 * those newer than the new one (they failed verification at resume: a run only resumes
 * from the newest valid one), incomplete ones and stale temporaries. */
static void prune(const char *dir, int64_t now, int keep, pc_log *log) {
    DIR *d = opendir(dir);
    if (!d) return;
    int64_t *older = NULL;
    int n_older = 0, cap = 0;
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        int64_t s;
        if (snprintf(path, sizeof path, "%s/%s", dir, nm) >= (int)sizeof path) continue;
        if (step_of(nm, &s)) {
            if (s == now) continue;
            char man[4200];
            struct stat st;
            snprintf(man, sizeof man, "%s/MANIFEST", path);
            if (s > now) {
                warn(log, "removing %s%s: newer than the checkpoint just written (it was skipped at resume)", path, "");
                pc_rm_rf(path);
            } else if (stat(man, &st) != 0) {
                pc_rm_rf(path);
            } else {
                if (n_older == cap) older = pc_realloc(older, sizeof(int64_t) * (size_t)(cap = cap * 2 + 8));
                older[n_older++] = s;
            }
        } else if (!strncmp(nm, "step-", 5) && (strstr(nm, ".tmp-") || strstr(nm, ".old-"))) {
            pc_rm_rf(path);
        } else if (!strncmp(nm, "latest.tmp.", 11)) {
            unlink(path);
        }
    }
    closedir(d);
    if (n_older > 0) qsort(older, (size_t)n_older, sizeof(int64_t), cmp_desc);
    for (int i = keep - 1; i < n_older; i++) {
        if (i < 0) continue;
        char dn[32];
        ckpt_dir_name(older[i], dn, sizeof dn);
        snprintf(path, sizeof path, "%s/%s", dir, dn);
        pc_rm_rf(path);
    }
    free(older);
}

/* Rank 0: MANIFEST, fsync, rename into place, `latest`, prune. */
static int publish(ckpt_writer *w, const ckpt_entry *all, int n_all, const ckpt_kv *meta, int n_meta, int keep,
                   pc_err *e) {
    for (int i = 0; i < n_all; i++)
        for (int j = i + 1; j < n_all; j++)
            if (!strcmp(all[i].name, all[j].name))
                return pc_errorf(e, "checkpoint of step %lld: entry '%s' written by two ranks", (long long)w->step,
                                 all[i].name);
    strbuf s = {0};
    sb_printf(&s, "%s %d\nstep %lld\nranks %d\n", MANIFEST_MAGIC, CKPT_FORMAT_VERSION, (long long)w->step, w->world);
    for (int i = 0; i < n_meta; i++) {
        if (check_name("metadata key", meta[i].key, e) != 0 || strpbrk(meta[i].value, "\r\n")) {
            free(s.p);
            return pc_errorf(e, "checkpoint: metadata '%s' has a bad key or a line break in its value", meta[i].key);
        }
        sb_printf(&s, "meta %s %s\n", meta[i].key, meta[i].value);
    }
    for (int i = 0; i < n_all; i++)
        sb_printf(&s, "file %s %s %s %lld %016" PRIx64 "\n", all[i].kind == CKPT_BLOCK ? "block" : "raw",
                  all[i].name, all[i].file, (long long)all[i].size, all[i].hash);
    uint64_t mh = ckpt_xxh64(s.p, s.n, 0);
    sb_printf(&s, "end %d %016" PRIx64 "\n", n_all, mh);
    char path[2600];
    snprintf(path, sizeof path, "%s/MANIFEST", w->tmp);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = fd < 0 ? pc_errorf(e, "%s: cannot create: %s", path, strerror(errno)) : 0;
    if (rc == 0) {
        rc = write_all(fd, s.p, s.n, NULL, path, e);
        if (rc == 0 && fsync(fd) != 0) rc = pc_errorf(e, "%s: fsync failed: %s", path, strerror(errno));
        if (close(fd) != 0 && rc == 0) rc = pc_errorf(e, "%s: close failed: %s", path, strerror(errno));
    }
    free(s.p);
    if (rc == 0) rc = pc_fsync_dir(w->tmp, e);
    if (rc != 0) return -1;
    struct stat st;
    if (stat(w->final, &st) == 0) { /* a checkpoint of this step from an abandoned attempt */
        char old[2400];
        snprintf(old, sizeof old, "%s.old-%d", w->final, (int)getpid());
        pc_rm_rf(old);
        if (rename(w->final, old) != 0)
            return pc_errorf(e, "%s: cannot move the existing checkpoint aside: %s", w->final, strerror(errno));
        pc_rm_rf(old);
    }
    if (rename(w->tmp, w->final) != 0)
        return pc_errorf(e, "%s: cannot rename to %s: %s", w->tmp, w->final, strerror(errno));
    if (pc_fsync_dir(w->dir, e) != 0) return -1;
    char latest[2200], dn[40];
    ckpt_dir_name(w->step, dn, sizeof dn - 1);
    strcat(dn, "\n");
    snprintf(latest, sizeof latest, "%s/latest", w->dir);
    if (pc_write_file_atomic(latest, dn, strlen(dn), e) != 0) return -1;
    prune(w->dir, w->step, keep, w->log);
    return 0;
}

int ckpt_write_commit(ckpt_writer *w, const ckpt_kv *meta, int n_meta, int keep, pc_err *e) {
    int fail = w->failed, any = fail, rc = -1;
    pc_err ce = {{0}};
    ckpt_entry *all = NULL;
    size_t *counts = NULL, *displs = NULL;
    int lost = 0; /* the agreement itself failed (a rank died or hangs: the watchdog's message says) */
    if (w->comm && comm_all_reduce(w->comm, &fail, &any, 1, COMM_I32, COMM_MAX, &ce) != 0) {
        if (!fail) *e = ce;
        any = lost = 1;
    }
    if (fail) *e = w->first;
    if (any) {
        if (!fail && !lost) pc_errorf(e, "another rank failed to write its blocks (see its log)");
        goto fail;
    }
    int n_all = w->n;
    if (w->comm) { /* every rank's entry list, rank 0 publishes */
        int64_t mine = w->n, *ns = pc_malloc(sizeof(int64_t) * (size_t)w->world);
        if (comm_all_gather(w->comm, &mine, ns, 1, COMM_I64, e) != 0) {
            free(ns);
            goto fail;
        }
        counts = pc_malloc(sizeof(size_t) * (size_t)w->world);
        displs = pc_malloc(sizeof(size_t) * (size_t)w->world);
        size_t tot = 0;
        for (int r = 0; r < w->world; r++) {
            counts[r] = (size_t)ns[r] * sizeof(ckpt_entry);
            displs[r] = tot;
            tot += counts[r];
        }
        free(ns);
        n_all = (int)(tot / sizeof(ckpt_entry));
        all = pc_malloc(tot ? tot : 1);
        if (comm_all_gatherv(w->comm, w->entries, (size_t)w->n * sizeof(ckpt_entry), all, counts, displs, COMM_U8,
                             e) != 0)
            goto fail;
    } else {
        all = pc_malloc(sizeof(ckpt_entry) * (size_t)(w->n ? w->n : 1));
        memcpy(all, w->entries, sizeof(ckpt_entry) * (size_t)w->n);
    }
    int32_t st = 0;
    if (w->rank == 0) st = publish(w, all, n_all, meta, n_meta, keep, e) == 0 ? 0 : -1;
    if (w->comm && comm_broadcast(w->comm, &st, 1, COMM_I32, 0, &ce) != 0) {
        if (st == 0) *e = ce;
        st = -1;
    }
    if (st != 0) {
        if (w->rank != 0 && !e->msg[0])
            pc_errorf(e, "rank 0 failed to publish it (see its log)");
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    if (w->rank == 0) pc_rm_rf(w->tmp);
done:
    free(all);
    free(counts);
    free(displs);
    free(w->entries);
    free(w);
    return rc;
}

/* ---- reading ---- */

void ckpt_manifest_free(ckpt_manifest *m) {
    free(m->meta);
    free(m->entries);
    memset(m, 0, sizeof *m);
}

const char *ckpt_meta_get(const ckpt_manifest *m, const char *key) {
    for (int i = 0; i < m->n_meta; i++)
        if (!strcmp(m->meta[i].key, key)) return m->meta[i].value;
    return NULL;
}

const ckpt_entry *ckpt_entry_find(const ckpt_manifest *m, const char *name) {
    for (int i = 0; i < m->n_entries; i++)
        if (!strcmp(m->entries[i].name, name)) return &m->entries[i];
    return NULL;
}

int ckpt_manifest_read(const char *ckpt_path, ckpt_manifest *m, pc_err *e) {
    memset(m, 0, sizeof *m);
    char path[2600];
    snprintf(path, sizeof path, "%s/MANIFEST", ckpt_path);
    char *text;
    size_t len;
    if (pc_read_file(path, &text, &len, e) != 0) return -1;
    int rc = -1, line_no = 0, ended = 0, cap_m = 0, cap_e = 0;
    char *save = NULL;
    char *p = text;
    /* the end line's checksum covers every byte before it, as written (before tokenising) */
    char *last_end = strstr(text, "\nend ");
    for (char *q = last_end; q; q = strstr(q + 1, "\nend ")) last_end = q;
    size_t end_off = last_end ? (size_t)(last_end + 1 - text) : len;
    uint64_t end_hash = ckpt_xxh64(text, end_off, 0);
    m->version = -1;
    m->step = -1;
    while (*p) {
        char *nl = strchr(p, '\n');
        if (!nl) {
            pc_errorf(e, "%s: truncated (last line has no newline)", path);
            goto out;
        }
        *nl = '\0';
        line_no++;
        char *line = p;
        size_t off = (size_t)(p - text);
        p = nl + 1;
        if (ended) {
            pc_errorf(e, "%s:%d: text after the end line", path, line_no);
            goto out;
        }
        if (line_no == 1) {
            if (sscanf(line, MANIFEST_MAGIC " %d", &m->version) != 1 || m->version != CKPT_FORMAT_VERSION) {
                pc_errorf(e, "%s: not a version %d checkpoint manifest", path, CKPT_FORMAT_VERSION);
                goto out;
            }
            continue;
        }
        char *kw = strtok_r(line, " ", &save);
        if (!kw) {
            pc_errorf(e, "%s:%d: empty line", path, line_no);
            goto out;
        }
        if (!strcmp(kw, "step") || !strcmp(kw, "ranks")) {
            char *v = strtok_r(NULL, " ", &save), *end = NULL;
            long long x = v ? strtoll(v, &end, 10) : -1;
            if (!v || *end || x < 0) {
                pc_errorf(e, "%s:%d: bad %s", path, line_no, kw);
                goto out;
            }
            if (!strcmp(kw, "step")) m->step = x;
        } else if (!strcmp(kw, "meta")) {
            char *k = strtok_r(NULL, " ", &save);
            char *v = k ? k + strlen(k) + 1 : NULL;
            if (!k) {
                pc_errorf(e, "%s:%d: bad meta line", path, line_no);
                goto out;
            }
            if (v > nl) v = nl; /* empty value */
            if (m->n_meta == cap_m) m->meta = pc_realloc(m->meta, sizeof(ckpt_kv) * (size_t)(cap_m = cap_m * 2 + 8));
            ckpt_kv *kv = &m->meta[m->n_meta++];
            snprintf(kv->key, sizeof kv->key, "%s", k);
            snprintf(kv->value, sizeof kv->value, "%s", v);
        } else if (!strcmp(kw, "file")) {
            char *kind = strtok_r(NULL, " ", &save), *name = strtok_r(NULL, " ", &save);
            char *file = strtok_r(NULL, " ", &save), *size = strtok_r(NULL, " ", &save);
            char *hash = strtok_r(NULL, " ", &save);
            char *end1 = NULL, *end2 = NULL;
            if (!hash || strtok_r(NULL, " ", &save) || (strcmp(kind, "block") && strcmp(kind, "raw"))) {
                pc_errorf(e, "%s:%d: bad file line", path, line_no);
                goto out;
            }
            if (m->n_entries == cap_e)
                m->entries = pc_realloc(m->entries, sizeof(ckpt_entry) * (size_t)(cap_e = cap_e * 2 + 16));
            ckpt_entry *en = &m->entries[m->n_entries];
            memset(en, 0, sizeof *en);
            en->kind = !strcmp(kind, "block") ? CKPT_BLOCK : CKPT_RAW;
            snprintf(en->name, sizeof en->name, "%s", name);
            en->size = strtoll(size, &end1, 10);
            en->hash = strtoull(hash, &end2, 16);
            char expect[sizeof en->file];
            ckpt_file_name(name, (ckpt_kind)en->kind, expect, sizeof expect);
            if (*end1 || *end2 || en->size < 0 || strlen(name) >= CKPT_NAME_MAX || strcmp(expect, file)) {
                pc_errorf(e, "%s:%d: bad file line for '%s'", path, line_no, name);
                goto out;
            }
            snprintf(en->file, sizeof en->file, "%s", file);
            m->n_entries++;
        } else if (!strcmp(kw, "end")) {
            char *n = strtok_r(NULL, " ", &save), *h = strtok_r(NULL, " ", &save);
            uint64_t want = h ? strtoull(h, NULL, 16) : 0;
            if (!n || !h || atoi(n) != m->n_entries || off != end_off || want != end_hash) {
                pc_errorf(e, "%s: manifest checksum or file count does not match its content", path);
                goto out;
            }
            ended = 1;
        } else {
            pc_errorf(e, "%s:%d: unknown line '%s'", path, line_no, kw);
            goto out;
        }
    }
    if (!ended) {
        pc_errorf(e, "%s: incomplete (no end line)", path);
        goto out;
    }
    if (m->step < 0) {
        pc_errorf(e, "%s: no step line", path);
        goto out;
    }
    rc = 0;
out:
    free(text);
    if (rc != 0) ckpt_manifest_free(m);
    return rc;
}

/* Size and checksum of one entry's file. */
static int verify_entry(const char *ckpt_path, const ckpt_entry *en, pc_err *e) {
    char path[2600];
    snprintf(path, sizeof path, "%s/%s", ckpt_path, en->file);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != en->size) {
        close(fd);
        return pc_errorf(e, "%s: %lld bytes, the manifest says %lld", path, (long long)st.st_size,
                         (long long)en->size);
    }
    size_t cap = 1 << 22;
    char *buf = pc_malloc(cap);
    ckpt_hash h;
    ckpt_hash_init(&h, 0);
    int64_t left = en->size;
    int rc = 0;
    while (left > 0 && rc == 0) {
        size_t k = (size_t)PC_MIN((int64_t)cap, left);
        rc = pc_read_all(fd, buf, k, path, e);
        ckpt_hash_update(&h, buf, k);
        left -= (int64_t)k;
    }
    free(buf);
    close(fd);
    if (rc == 0 && ckpt_hash_final(&h) != en->hash)
        rc = pc_errorf(e, "%s: checksum mismatch (manifest %016" PRIx64 ", content %016" PRIx64 ")", path, en->hash,
                       ckpt_hash_final(&h));
    return rc;
}

/* The step-NNNNNNN names under ckpt_dir, newest first (*steps malloc'd): how many, 0
 * when the directory does not exist, -1 (e set) when it cannot be read. */
static int list_steps(const char *ckpt_dir, int64_t **steps, pc_err *e) {
    *steps = NULL;
    DIR *d = opendir(ckpt_dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return pc_errorf(e, "%s: cannot read the checkpoint directory: %s", ckpt_dir, strerror(errno));
    }
    int ns = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int64_t s;
        if (!step_of(de->d_name, &s)) continue;
        if (ns == cap) *steps = pc_realloc(*steps, sizeof(int64_t) * (size_t)(cap = cap * 2 + 8));
        (*steps)[ns++] = s;
    }
    closedir(d);
    if (ns > 0) qsort(*steps, (size_t)ns, sizeof(int64_t), cmp_desc);
    return ns;
}

/* This rank's share of checkpoint `path` verified: its manifest (every rank reads it) and
 * the entries dealt to this rank by size (pc_deal), so that the ranks read the checkpoint
 * once between them, in parallel, each a share. */
static int verify_share(const char *path, int rank, int ranks, ckpt_manifest *m, pc_err *e) {
    if (ckpt_manifest_read(path, m, e) != 0) return -1;
    int n = m->n_entries;
    int64_t *sizes = pc_malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    int *owner = pc_malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    for (int i = 0; i < n; i++) sizes[i] = m->entries[i].size;
    pc_deal(sizes, n, ranks, owner);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if (owner[i] == rank) rc = verify_entry(path, &m->entries[i], e);
    free(sizes);
    free(owner);
    return rc;
}

int ckpt_verify(const char *ckpt_path, ckpt_manifest *m, pc_err *e) {
    if (verify_share(ckpt_path, 0, 1, m, e) == 0) return 0; /* one rank's share: every file */
    ckpt_manifest_free(m);
    return -1;
}

/* Whether every rank's share verified: the lowest rank with a fault puts its reason in
 * why (every rank's copy) and the answer is that rank, else c's size (all good). */
static int agree_fault(comm *c, int rank, int ranks, int bad, pc_err *why, pc_err *e) {
    if (!c) return bad ? 0 : 1;
    int mine = bad ? rank : ranks, first = ranks;
    if (comm_all_reduce(c, &mine, &first, 1, COMM_I32, COMM_MIN, e) != 0) return -1;
    if (first < ranks && comm_broadcast(c, why->msg, sizeof why->msg, COMM_U8, first, e) != 0) return -1;
    return first;
}

int ckpt_find(const char *ckpt_dir, comm *c, pc_log *log, int64_t *step, char *path_out, size_t n, pc_err *e) {
    const int rank = c ? c->rank : 0, ranks = c ? c->size : 1;
    int64_t *steps = NULL;
    int64_t ns = 0; /* rank 0 lists the directory; every rank takes its list */
    pc_err le = {{0}};
    if (rank == 0) ns = list_steps(ckpt_dir, &steps, &le);
    if (c && (comm_broadcast(c, &ns, 1, COMM_I64, 0, e) != 0 ||
              comm_broadcast(c, le.msg, sizeof le.msg, COMM_U8, 0, e) != 0)) {
        free(steps);
        return -1;
    }
    if (ns < 0) {
        snprintf(e->msg, sizeof e->msg, "%s", le.msg);
        return -1;
    }
    if (rank != 0) steps = pc_malloc(sizeof(int64_t) * (size_t)(ns > 0 ? ns : 1));
    if (c && ns > 0 && comm_broadcast(c, steps, (size_t)ns, COMM_I64, 0, e) != 0) {
        free(steps);
        return -1;
    }
    int found = 0;
    pc_err first = {{0}}; /* why the newest was skipped */
    for (int64_t i = 0; i < ns && !found; i++) {
        char dn[32], path[2600];
        ckpt_dir_name(steps[i], dn, sizeof dn);
        snprintf(path, sizeof path, "%s/%s", ckpt_dir, dn);
        ckpt_manifest m = {0};
        pc_err ve = {{0}};
        int bad = verify_share(path, rank, ranks, &m, &ve) != 0;
        if (!bad && m.step != steps[i]) {
            bad = 1;
            snprintf(ve.msg, sizeof ve.msg, "%.900s: its MANIFEST is of another step", path);
        }
        int who = agree_fault(c, rank, ranks, bad, &ve, e);
        ckpt_manifest_free(&m);
        if (who < 0) {
            free(steps);
            return -1;
        }
        if (who < ranks) { /* skipped on every rank, for the reason the lowest faulty rank found */
            if (rank == 0) {
                char why[sizeof ve.msg + 48];
                snprintf(why, sizeof why, c ? "%s (found by rank %d)" : "%s", ve.msg, who);
                warn(log, "checkpoint %s skipped: %s", path, why);
            }
            if (!first.msg[0]) snprintf(first.msg, sizeof first.msg, "%s", ve.msg);
            continue;
        }
        *step = steps[i];
        snprintf(path_out, n, "%s", path);
        found = 1;
    }
    free(steps);
    /* checkpoints were written but none is usable: starting over would discard them */
    if (ns > 0 && !found)
        return pc_errorf(e, "%s: none of the %lld checkpoint(s) verifies (the newest: %.700s): restore one, or move "
                            "the directory away to start over",
                         ckpt_dir, (long long)ns, first.msg);
    return found;
}

int ckpt_read_block(const char *ckpt_path, const ckpt_manifest *m, ckpt_block *b, pc_err *e) {
    const ckpt_entry *en = ckpt_entry_find(m, b->name);
    if (!en || en->kind != CKPT_BLOCK) return pc_errorf(e, "%s: no block '%s' in this checkpoint", ckpt_path, b->name);
    char path[2600];
    snprintf(path, sizeof path, "%s/%s", ckpt_path, en->file);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    ckpt_hash h;
    ckpt_hash_init(&h, 0);
    char magic[8], name[CKPT_NAME_MAX], an[64];
    uint32_t hdr[2];
    int64_t size = 0;
    int rc = pc_read_all(fd, magic, 8, path, e);
    if (rc == 0) rc = pc_read_all(fd, hdr, sizeof hdr, path, e);
    if (rc == 0 && (memcmp(magic, BLOCK_MAGIC, 8) || hdr[0] >= sizeof name || (int)hdr[1] != b->n_arrays))
        rc = pc_errorf(e, "%s: not a block file of %d arrays", path, b->n_arrays);
    if (rc == 0) rc = pc_read_all(fd, name, hdr[0], path, e);
    if (rc == 0) {
        name[hdr[0]] = '\0';
        if (strlen(name) != hdr[0]) rc = pc_errorf(e, "%s: the block name holds a NUL byte", path);
        else if (strcmp(name, b->name)) rc = pc_errorf(e, "%s: holds block '%s', expected '%s'", path, name, b->name);
        ckpt_hash_update(&h, magic, 8);
        ckpt_hash_update(&h, hdr, sizeof hdr);
        ckpt_hash_update(&h, name, hdr[0]);
        size = 8 + (int64_t)sizeof hdr + hdr[0];
    }
    for (int i = 0; rc == 0 && i < b->n_arrays; i++) {
        uint32_t nl;
        int64_t cnt;
        rc = pc_read_all(fd, &nl, 4, path, e);
        if (rc == 0 && nl >= sizeof an) rc = pc_errorf(e, "%s: bad array header", path);
        if (rc == 0) rc = pc_read_all(fd, an, nl, path, e);
        if (rc == 0) rc = pc_read_all(fd, &cnt, 8, path, e);
        if (rc != 0) break;
        an[nl] = '\0';
        if (strlen(an) != nl)
            rc = pc_errorf(e, "%s: array %d's name holds a NUL byte", path, i);
        else if (strcmp(an, b->arrays[i].name) || cnt != b->arrays[i].n)
            rc = pc_errorf(e, "%s: array %d is '%s' of %lld elements, expected '%s' of %lld", path, i, an,
                           (long long)cnt, b->arrays[i].name, (long long)b->arrays[i].n);
        ckpt_hash_update(&h, &nl, 4);
        ckpt_hash_update(&h, an, nl);
        ckpt_hash_update(&h, &cnt, 8);
        size += 12 + nl;
    }
    for (int i = 0; rc == 0 && i < b->n_arrays; i++) {
        size_t bytes = sizeof(float) * (size_t)b->arrays[i].n;
        rc = pc_read_all(fd, b->arrays[i].data, bytes, path, e);
        if (rc == 0) ckpt_hash_update(&h, b->arrays[i].data, bytes);
        size += (int64_t)bytes;
    }
    char extra;
    if (rc == 0 && read(fd, &extra, 1) != 0) rc = pc_errorf(e, "%s: longer than its block", path);
    close(fd);
    if (rc == 0 && (size != en->size || ckpt_hash_final(&h) != en->hash))
        rc = pc_errorf(e, "%s: checksum mismatch with the manifest", path);
    return rc;
}

int ckpt_read_raw(const char *ckpt_path, const ckpt_manifest *m, const char *name, char **buf, size_t *len,
                  pc_err *e) {
    const ckpt_entry *en = ckpt_entry_find(m, name);
    if (!en || en->kind != CKPT_RAW) return pc_errorf(e, "%s: no file '%s' in this checkpoint", ckpt_path, name);
    char path[2600];
    snprintf(path, sizeof path, "%s/%s", ckpt_path, en->file);
    size_t n;
    if (pc_read_file(path, buf, &n, e) != 0) return -1;
    if ((int64_t)n != en->size || ckpt_xxh64(*buf, n, 0) != en->hash) {
        free(*buf);
        *buf = NULL;
        return pc_errorf(e, "%s: checksum mismatch with the manifest", path);
    }
    if (len) *len = n;
    return 0;
}
