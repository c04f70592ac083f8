/* util: errors, allocation, atomic file writes, RNG and float conversions. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int pc_errorf(pc_err *e, const char *fmt, ...) {
    if (!e) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int pc_error_wrap(pc_err *e, const char *fmt, ...) {
    if (!e) return -1;
    char prefix[512], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof e->msg - 3) n = sizeof e->msg - 3;
    memcpy(e->msg, prefix, n);
    memcpy(e->msg + n, ": ", 2);
    size_t room = sizeof e->msg - n - 3, ol = strlen(old);
    if (ol > room) ol = room;
    memcpy(e->msg + n + 2, old, ol);
    e->msg[n + 2 + ol] = '\0';
    return -1;
}

static void oom(size_t n) {
    fprintf(stderr, "projcompd: out of memory allocating %zu bytes\n", n);
    abort();
}

void *pc_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *pc_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) oom(count * size);
    return p;
}

void *pc_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *pc_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = pc_malloc(n);
    memcpy(d, s, n);
    return d;
}

float *pc_alloc_f32(size_t n) {
    size_t bytes = (n ? n : 1) * sizeof(float);
    bytes = (bytes + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (!p) oom(bytes);
    memset(p, 0, bytes);
    return p;
}

double pc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int pc_read_file(const char *path, char **out, size_t *len, pc_err *e) {
    FILE *f = fopen(path, "rb");
    if (!f) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = pc_malloc(cap);
    errno = 0;
    for (;;) {
        if (n + 1 >= cap) buf = pc_realloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f), err = errno; /* e.g. EISDIR: fopen opens a directory, reading it fails */
    fclose(f);
    if (bad) {
        free(buf);
        return pc_errorf(e, "%s: read error: %s", path, err ? strerror(err) : "unknown error");
    }
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return 0;
}

int pc_fsync_dir(const char *dir, pc_err *e) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return pc_errorf(e, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0 && errno != EINVAL) return pc_errorf(e, "%s: fsync: %s", dir, strerror(errno));
    return 0;
}

int pc_write_all(int fd, const void *buf, size_t len, const char *path, pc_err *e) {
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return pc_errorf(e, "%s: write failed: %s", path, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* pc_read_all (off < 0: from the file position) and pc_pread_all (at off). */
static int read_exactly(int fd, void *buf, size_t len, int64_t off, const char *path, pc_err *e) {
    char *p = buf;
    while (len > 0) {
        size_t n = len > (1u << 30) ? (1u << 30) : len;
        ssize_t r = off < 0 ? read(fd, p, n) : pread(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return pc_errorf(e, "%s: read failed: %s", path, strerror(errno));
        }
        if (r == 0) return pc_errorf(e, "%s: truncated (ends early)", path);
        p += r;
        if (off >= 0) off += r;
        len -= (size_t)r;
    }
    return 0;
}

int pc_read_all(int fd, void *buf, size_t len, const char *path, pc_err *e) {
    return read_exactly(fd, buf, len, -1, path, e);
}

int pc_pread_all(int fd, void *buf, size_t len, int64_t off, const char *path, pc_err *e) {
    if (off < 0) return pc_errorf(e, "%s: read at negative offset %lld", path, (long long)off);
    return read_exactly(fd, buf, len, off, path, e);
}

int pc_write_file_atomic(const char *path, const void *buf, size_t len, pc_err *e) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return pc_errorf(e, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return pc_errorf(e, "%s: cannot create: %s", tmp, strerror(errno));
    if (pc_write_all(fd, buf, len, tmp, e) != 0) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        unlink(tmp);
        return pc_errorf(e, "%s: fsync failed: %s", tmp, strerror(err));
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return pc_errorf(e, "%s: rename failed: %s", path, strerror(err));
    }
    return pc_fsync_parent(path, e);
}

int pc_fsync_parent(const char *path, pc_err *e) {
    char *dir = pc_strdup(path);
    int rc = pc_fsync_dir(dirname(dir), e);
    free(dir);
    return rc;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void pc_rm_rf(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

int pc_mkdirs(const char *path, pc_err *e) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return pc_errorf(e, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return pc_errorf(e, "%s: cannot create directory: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return pc_errorf(e, "%s: not a directory", path);
    return 0;
}

int pc_path_join(char *out, size_t n, const char *dir, const char *name) {
    int w = snprintf(out, n, "%s/%s", dir, name);
    return (w < 0 || (size_t)w >= n) ? -1 : 0;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void pc_rng_seed(pc_rng *r, uint64_t seed) { r->s = seed; }
uint64_t pc_rng_u64(pc_rng *r) { return splitmix64(&r->s); }
double pc_rng_uniform(pc_rng *r) { return (double)(pc_rng_u64(r) >> 11) * 0x1.0p-53; }

float pc_rng_normal(pc_rng *r) {
    double u1 = pc_rng_uniform(r), u2 = pc_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t pc_hash64(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    uint64_t x = a;
    uint64_t h = splitmix64(&x);
    x = h ^ b;
    h = splitmix64(&x);
    x = h ^ c;
    h = splitmix64(&x);
    x = h ^ d;
    return splitmix64(&x);
}

float pc_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t pc_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float pc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t pc_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;
    if (a >= 0x477ff000u) return sign | 0x7c00u; /* overflow -> inf */
    if (a < 0x38800000u) {                       /* subnormal or zero */
        float af;
        memcpy(&af, &a, 4);
        return sign | (uint16_t)lrintf(af * 16777216.0f); /* 2^24 */
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - ((127u - 15u) << 23);
    return sign | (uint16_t)(r >> 13);
}

char *pc_glob_escape(const char *path) {
    char *g = pc_malloc(2 * strlen(path) + 1), *o = g;
    for (const char *p = path; *p; p++) {
        if (strchr("*?[]\\", *p)) *o++ = '\\';
        *o++ = *p;
    }
    *o = '\0';
    return g;
}

/* p made absolute (against the working directory), with repeated slashes, "." and ".."
 * taken out lexically. */
static int abs_norm(const char *p, char *out, size_t n) {
    char buf[2 * PATH_MAX], cwd[PATH_MAX];
    if (p[0] != '/' && !getcwd(cwd, sizeof cwd)) return -1;
    if ((size_t)snprintf(buf, sizeof buf, "%s/%s", p[0] == '/' ? "" : cwd, p) >= sizeof buf) return -1;
    size_t o = 0;
    for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!strcmp(c, ".")) continue;
        if (!strcmp(c, "..")) {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--;
            continue;
        }
        size_t len = strlen(c);
        if (o + 1 + len + 1 > n) return -1;
        out[o++] = '/';
        memcpy(out + o, c, len);
        o += len;
    }
    if (o == 0) out[o++] = '/';
    out[o] = '\0';
    return 0;
}

/* p's canonical path: its longest prefix that exists resolved by realpath (symbolic
 * links and "..", as the kernel follows them), the rest, which does not exist yet,
 * normalised lexically. */
int pc_path_canon(const char *p, char *out, size_t n) {
    char a[PATH_MAX], cwd[PATH_MAX];
    if (p[0] != '/' && !getcwd(cwd, sizeof cwd)) return -1;
    if ((size_t)snprintf(a, sizeof a, "%s/%s", p[0] == '/' ? "" : cwd, p) >= sizeof a) return -1;
    for (size_t cut = strlen(a);;) {
        char head[PATH_MAX], r[PATH_MAX], joined[2 * PATH_MAX + 2];
        memcpy(head, a, cut);
        head[cut] = '\0';
        if (realpath(cut ? head : "/", r)) {
            snprintf(joined, sizeof joined, "%s/%s", r, a + cut);
            return abs_norm(joined, out, n);
        }
        if (cut == 0) return -1;
        while (cut > 0 && a[cut - 1] != '/') cut--; /* "/x/y" and the rest "/z" */
        while (cut > 0 && a[cut - 1] == '/') cut--;
    }
}

/* 1 when the existing directory outer is canonical path inner or one above it, by
 * device and inode: another name of it (a bind mount) that no path comparison sees. */
int pc_path_holds_inode(const char *outer, const char *inner) {
    struct stat so, s, up;
    char p[PATH_MAX];
    if (stat(outer, &so) != 0 || !S_ISDIR(so.st_mode) || (size_t)snprintf(p, sizeof p, "%s", inner) >= sizeof p)
        return 0;
    while (stat(p, &s) != 0) { /* up to the part of inner that exists */
        char *slash = strrchr(p, '/');
        if (!slash || slash == p) return 0;
        *slash = '\0';
    }
    for (int depth = 0; depth < 256; depth++) {
        if (s.st_dev == so.st_dev && s.st_ino == so.st_ino) return 1;
        size_t len = strlen(p);
        if (len + 4 > sizeof p) return 0;
        memcpy(p + len, "/..", 4);
        if (stat(p, &up) != 0 || (up.st_dev == s.st_dev && up.st_ino == s.st_ino)) return 0; /* the root */
        s = up;
    }
    return 0;
}

/* 1 when canonical path outer is inner or a directory above it. */
int pc_path_holds(const char *outer, const char *inner) {
    size_t n = strlen(outer);
    if (!strcmp(outer, "/")) return 1;
    return strncmp(inner, outer, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

typedef struct deal_item {
    int64_t size;
    int index;
} deal_item;

static int deal_larger_first(const void *a, const void *b) {
    const deal_item *x = a, *y = b;
    return x->size != y->size ? (x->size < y->size) - (x->size > y->size) : x->index - y->index;
}

void pc_deal(const int64_t *sizes, int n, int bins, int *owner) {
    deal_item *it = pc_malloc(sizeof *it * (size_t)(n > 0 ? n : 1));
    int64_t *load = pc_calloc((size_t)bins, sizeof *load);
    for (int i = 0; i < n; i++) it[i] = (deal_item){sizes[i], i};
    qsort(it, (size_t)n, sizeof *it, deal_larger_first);
    for (int k = 0; k < n; k++) {
        int least = 0;
        for (int q = 1; q < bins; q++)
            if (load[q] < load[least]) least = q;
        owner[it[k].index] = least;
        load[least] += it[k].size;
    }
    free(it);
    free(load);
}
