/* backend_guard: the CPU backend's ops on guarded buffers (backend.h), so that code
 * written for device-resident buffers can be checked on a machine without a GPU.
 *
 * Every buffer is its own anonymous mapping, rounded up to whole pages and followed by
 * one guard page, and is kept PROT_NONE: host code that reads or writes a "device"
 * buffer faults at once. Each op looks up the mapping that holds each buffer argument
 * (slices are interior pointers), aborts naming the op and the argument when there is
 * none, opens the mappings it takes (read/write) for the duration of the inner CPU op
 * and closes them again. Upload/download additionally abort when their host side lies
 * in a device buffer. The arithmetic is the CPU backend's own, so results are bitwise
 * those of backend_cpu_create. The mappings are kept in a table sorted by address. */
#include "backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"

typedef struct guard_region {
    char *base;   /* start of the mapping and of the buffer */
    size_t usable; /* bytes of the buffer's pages (the guard page follows) */
} guard_region;

typedef struct guard_impl {
    backend *inner;       /* the CPU backend that does the arithmetic */
    guard_region *regions; /* sorted by base */
    size_t n_regions, cap_regions;
    size_t page;
    size_t live, peak;    /* bytes of the buffers' pages now, and at most (mem_peak) */
} guard_impl;

/* Regions opened by one op call, closed again when it returns. */
#define GUARD_MAX_ARGS 12
typedef struct guard_call {
    guard_impl *g;
    const char *op;
    size_t opened[GUARD_MAX_ARGS];
    int n_opened;
} guard_call;

static guard_impl *gimpl(backend *be) { return be->impl; }

/* Report "guard: <op>: <message>" on stderr and abort. */
__attribute__((format(printf, 2, 3), noreturn)) static void guard_die(const char *op, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "guard: %s: ", op);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}

/* Index of the region with the greatest base <= p, or n_regions when there is none. */
static size_t guard_floor(const guard_impl *g, const char *p)
{
    size_t lo = 0, hi = g->n_regions; /* answer in [lo - 1, hi) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->regions[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == 0 ? g->n_regions : lo - 1;
}

/* Region holding p (its one-past-the-end address included), or n_regions. */
static size_t guard_find(const guard_impl *g, const void *p)
{
    const char *c = p;
    size_t i = guard_floor(g, c);
    if (i < g->n_regions && c <= g->regions[i].base + g->regions[i].usable) return i;
    return g->n_regions;
}

/* 1 when [p, p + bytes) overlaps a region's mapping (guard page included). */
static int guard_overlaps(const guard_impl *g, const void *p, size_t bytes)
{
    const char *lo = p, *hi = lo + (bytes ? bytes : 1);
    size_t i = guard_floor(g, hi - 1);
    return i < g->n_regions && g->regions[i].base + g->regions[i].usable + g->page > lo;
}

static void guard_protect(guard_impl *g, size_t i, int prot, const char *op)
{
    if (mprotect(g->regions[i].base, g->regions[i].usable, prot) != 0)
        guard_die(op, "mprotect of the buffer at %p failed", (void *)g->regions[i].base);
}

static void call_begin(guard_call *k, backend *be, const char *op)
{
    k->g = gimpl(be);
    k->op = op;
    k->n_opened = 0;
}

/* Open the region holding device argument p (NULL is passed through unchecked). */
static void call_arg(guard_call *k, const void *p, const char *name)
{
    if (!p) return;
    size_t i = guard_find(k->g, p);
    if (i == k->g->n_regions) guard_die(k->op, "argument %s is not a device buffer (%p)", name, p);
    for (int j = 0; j < k->n_opened; j++)
        if (k->opened[j] == i) return; /* aliasing arguments share a region */
    guard_protect(k->g, i, PROT_READ | PROT_WRITE, k->op);
    k->opened[k->n_opened++] = i;
}

/* Host argument p of `bytes` bytes must not lie in a device buffer. */
static void call_host(guard_call *k, const void *p, size_t bytes, const char *name)
{
    if (p && guard_overlaps(k->g, p, bytes))
        guard_die(k->op, "host argument %s (%p) is inside a device buffer", name, p);
}

static void call_end(guard_call *k)
{
    for (int j = 0; j < k->n_opened; j++) guard_protect(k->g, k->opened[j], PROT_NONE, k->op);
    k->n_opened = 0;
}

static backend *inner(backend *be) { return gimpl(be)->inner; }

/* ---- memory ---- */

static void *guard_map(backend *be, size_t bytes)
{
    guard_impl *g = gimpl(be);
    size_t usable = ((bytes ? bytes : 1) + g->page - 1) / g->page * g->page;
    char *p = mmap(NULL, usable + g->page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) guard_die("alloc", "mmap of %zu bytes failed", usable + g->page);
    if (g->n_regions == g->cap_regions) {
        g->cap_regions = g->cap_regions ? 2 * g->cap_regions : 64;
        g->regions = pc_realloc(g->regions, g->cap_regions * sizeof *g->regions);
    }
    size_t i = guard_floor(g, p);
    i = i == g->n_regions ? 0 : i + 1; /* insertion point */
    memmove(g->regions + i + 1, g->regions + i, (g->n_regions - i) * sizeof *g->regions);
    g->regions[i] = (guard_region){.base = p, .usable = usable};
    g->n_regions++;
    g->live += usable;
    g->peak = PC_MAX(g->peak, g->live);
    return p; /* anonymous mappings are zero-filled */
}

static float *guard_alloc(backend *be, size_t n) { return guard_map(be, n * sizeof(float)); }

/* The most bytes of buffer pages held at once (guard pages not counted): what a device
 * would have held. */
static size_t guard_mem_peak(backend *be) { return gimpl(be)->peak; }

static int32_t *guard_alloc_i32(backend *be, size_t n) { return guard_map(be, n * sizeof(int32_t)); }

static void guard_free(backend *be, void *p)
{
    if (!p) return;
    guard_impl *g = gimpl(be);
    size_t i = guard_find(g, p);
    if (i == g->n_regions || g->regions[i].base != (char *)p)
        guard_die("free", "pointer %p is not the start of a device buffer", p);
    munmap(g->regions[i].base, g->regions[i].usable + g->page);
    g->live -= g->regions[i].usable;
    memmove(g->regions + i, g->regions + i + 1, (g->n_regions - i - 1) * sizeof *g->regions);
    g->n_regions--;
}

static void guard_zero(backend *be, float *x, size_t n)
{
    guard_call k;
    call_begin(&k, be, "zero");
    call_arg(&k, x, "x");
    inner(be)->ops->zero(inner(be), x, n);
    call_end(&k);
}

static void guard_copy(backend *be, float *dst, const float *src, size_t n)
{
    guard_call k;
    call_begin(&k, be, "copy");
    call_arg(&k, dst, "dst");
    call_arg(&k, src, "src");
    inner(be)->ops->copy(inner(be), dst, src, n);
    call_end(&k);
}

static void guard_upload(backend *be, float *dst, const float *host_src, size_t n)
{
    guard_call k;
    call_begin(&k, be, "upload");
    call_host(&k, host_src, n * sizeof(float), "host_src");
    call_arg(&k, dst, "dst");
    inner(be)->ops->upload(inner(be), dst, host_src, n);
    call_end(&k);
}

static void guard_download(backend *be, float *host_dst, const float *src, size_t n)
{
    guard_call k;
    call_begin(&k, be, "download");
    call_host(&k, host_dst, n * sizeof(float), "host_dst");
    call_arg(&k, src, "src");
    inner(be)->ops->download(inner(be), host_dst, src, n);
    call_end(&k);
}

static void guard_upload_i32(backend *be, int32_t *dst, const int32_t *host_src, size_t n)
{
    guard_call k;
    call_begin(&k, be, "upload_i32");
    call_host(&k, host_src, n * sizeof(int32_t), "host_src");
    call_arg(&k, dst, "dst");
    inner(be)->ops->upload_i32(inner(be), dst, host_src, n);
    call_end(&k);
}

static void guard_upload_raw(backend *be, void *dst, const void *host_src, size_t bytes)
{
    guard_call k;
    call_begin(&k, be, "upload_raw");
    call_host(&k, host_src, bytes, "host_src");
    call_arg(&k, dst, "dst");
    inner(be)->ops->upload_raw(inner(be), dst, host_src, bytes);
    call_end(&k);
}

static void guard_download_raw(backend *be, void *host_dst, const void *src, size_t bytes)
{
    guard_call k;
    call_begin(&k, be, "download_raw");
    call_host(&k, host_dst, bytes, "host_dst");
    call_arg(&k, src, "src");
    inner(be)->ops->download_raw(inner(be), host_dst, src, bytes);
    call_end(&k);
}

static uint16_t *guard_alloc_bf16(backend *be, size_t n) { return guard_map(be, n * sizeof(uint16_t)); }

static void guard_upload_bf16(backend *be, uint16_t *dst, const uint16_t *host_src, size_t n)
{
    guard_call k;
    call_begin(&k, be, "upload_bf16");
    call_host(&k, host_src, n * sizeof(uint16_t), "host_src");
    call_arg(&k, dst, "dst");
    inner(be)->ops->upload_bf16(inner(be), dst, host_src, n);
    call_end(&k);
}

static void guard_widen_bf16(backend *be, float *dst, const uint16_t *src, size_t n)
{
    guard_call k;
    call_begin(&k, be, "widen_bf16");
    call_arg(&k, dst, "dst");
    call_arg(&k, src, "src");
    inner(be)->ops->widen_bf16(inner(be), dst, src, n);
    call_end(&k);
}

static void guard_round_bf16(backend *be, uint16_t *dst, const float *src, size_t n)
{
    guard_call k;
    call_begin(&k, be, "round_bf16");
    call_arg(&k, dst, "dst");
    call_arg(&k, src, "src");
    inner(be)->ops->round_bf16(inner(be), dst, src, n);
    call_end(&k);
}

static void guard_round_bf16_2d(backend *be, uint16_t *dst, int ld_dst, const float *src, int ld_src, int rows,
                                int cols)
{
    guard_call k;
    call_begin(&k, be, "round_bf16_2d");
    call_arg(&k, dst, "dst");
    call_arg(&k, src, "src");
    inner(be)->ops->round_bf16_2d(inner(be), dst, ld_dst, src, ld_src, rows, cols);
    call_end(&k);
}

static void guard_sync(backend *be) { inner(be)->ops->sync(inner(be)); }

static int guard_set_matmul(backend *be, matmul_mode mode)
{
    be->matmul = mode;
    return inner(be)->ops->set_matmul(inner(be), mode);
}

/* ---- matrix products ---- */

static void guard_gemm(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc)
{
    guard_call k;
    call_begin(&k, be, "gemm");
    call_arg(&k, A, "A");
    call_arg(&k, B, "B");
    call_arg(&k, C, "C");
    inner(be)->ops->gemm(inner(be), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    call_end(&k);
}

static void guard_gemm_w16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                           const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    guard_call k;
    call_begin(&k, be, "gemm_w16");
    call_arg(&k, A, "A");
    call_arg(&k, B, "B");
    call_arg(&k, C, "C");
    inner(be)->ops->gemm_w16(inner(be), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    call_end(&k);
}

static void guard_gemm_16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                          const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    guard_call k;
    call_begin(&k, be, "gemm_16");
    call_arg(&k, A, "A");
    call_arg(&k, B, "B");
    call_arg(&k, C, "C");
    inner(be)->ops->gemm_16(inner(be), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    call_end(&k);
}

static void guard_gemm_16_to16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A,
                               int lda, const uint16_t *B, int ldb, uint16_t *C, int ldc)
{
    guard_call k;
    call_begin(&k, be, "gemm_16_to16");
    call_arg(&k, A, "A");
    call_arg(&k, B, "B");
    call_arg(&k, C, "C");
    inner(be)->ops->gemm_16_to16(inner(be), ta, tb, M, N, K, alpha, A, lda, B, ldb, C, ldc);
    call_end(&k);
}

static void guard_gemm_batched(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                               int lda, int64_t sa, const float *B, int ldb, int64_t sb, float beta, float *C, int ldc,
                               int64_t sc, int batch)
{
    guard_call k;
    call_begin(&k, be, "gemm_batched");
    call_arg(&k, A, "A");
    call_arg(&k, B, "B");
    call_arg(&k, C, "C");
    inner(be)->ops->gemm_batched(inner(be), ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
    call_end(&k);
}

/* ---- embedding ---- */

static void guard_embedding_fwd(backend *be, float *out, const float *table, const int32_t *tokens, int N, int d)
{
    guard_call k;
    call_begin(&k, be, "embedding_fwd");
    call_arg(&k, out, "out");
    call_arg(&k, table, "table");
    call_arg(&k, tokens, "tokens");
    inner(be)->ops->embedding_fwd(inner(be), out, table, tokens, N, d);
    call_end(&k);
}

static void guard_embedding_fwd_w16(backend *be, float *out, const uint16_t *table, const int32_t *tokens, int N,
                                    int d)
{
    guard_call k;
    call_begin(&k, be, "embedding_fwd_w16");
    call_arg(&k, out, "out");
    call_arg(&k, table, "table");
    call_arg(&k, tokens, "tokens");
    inner(be)->ops->embedding_fwd_w16(inner(be), out, table, tokens, N, d);
    call_end(&k);
}

static void guard_embedding_bwd(backend *be, float *dtable, const float *dout, const int32_t *tokens, int N, int d)
{
    guard_call k;
    call_begin(&k, be, "embedding_bwd");
    call_arg(&k, dtable, "dtable");
    call_arg(&k, dout, "dout");
    call_arg(&k, tokens, "tokens");
    inner(be)->ops->embedding_bwd(inner(be), dtable, dout, tokens, N, d);
    call_end(&k);
}

/* ---- rmsnorm ---- */

static void guard_rmsnorm_fwd(backend *be, float *out, float *rstd, const float *x, const float *w, int N, int d,
                              float eps)
{
    guard_call k;
    call_begin(&k, be, "rmsnorm_fwd");
    call_arg(&k, out, "out");
    call_arg(&k, rstd, "rstd");
    call_arg(&k, x, "x");
    call_arg(&k, w, "w");
    inner(be)->ops->rmsnorm_fwd(inner(be), out, rstd, x, w, N, d, eps);
    call_end(&k);
}

static void guard_rmsnorm_fwd_16(backend *be, uint16_t *out, float *rstd, const float *x, const float *w, int N, int d,
                                 float eps, float *x_copy)
{
    guard_call k;
    call_begin(&k, be, "rmsnorm_fwd_16");
    call_arg(&k, out, "out");
    call_arg(&k, rstd, "rstd");
    call_arg(&k, x, "x");
    call_arg(&k, w, "w");
    call_arg(&k, x_copy, "x_copy");
    inner(be)->ops->rmsnorm_fwd_16(inner(be), out, rstd, x, w, N, d, eps, x_copy);
    call_end(&k);
}

static void guard_rmsnorm_bwd(backend *be, float *dx, float *dw, const float *dout, const float *x, const float *w,
                              const float *rstd, int N, int d)
{
    guard_call k;
    call_begin(&k, be, "rmsnorm_bwd");
    call_arg(&k, dx, "dx");
    call_arg(&k, dw, "dw");
    call_arg(&k, dout, "dout");
    call_arg(&k, x, "x");
    call_arg(&k, w, "w");
    call_arg(&k, rstd, "rstd");
    inner(be)->ops->rmsnorm_bwd(inner(be), dx, dw, dout, x, w, rstd, N, d);
    call_end(&k);
}

/* ---- rope ---- */

static void guard_rope_fwd(backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                           int hd, int ld)
{
    guard_call k;
    call_begin(&k, be, "rope_fwd");
    call_arg(&k, x, "x");
    call_arg(&k, cos_t, "cos_t");
    call_arg(&k, sin_t, "sin_t");
    inner(be)->ops->rope_fwd(inner(be), x, cos_t, sin_t, B, T, n_heads, hd, ld);
    call_end(&k);
}

static void guard_rope_bwd(backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                           int hd, int ld)
{
    guard_call k;
    call_begin(&k, be, "rope_bwd");
    call_arg(&k, dx, "dx");
    call_arg(&k, cos_t, "cos_t");
    call_arg(&k, sin_t, "sin_t");
    inner(be)->ops->rope_bwd(inner(be), dx, cos_t, sin_t, B, T, n_heads, hd, ld);
    call_end(&k);
}

/* ---- attention ---- */

static void guard_attention_fwd(backend *be, float *out, float *lse, const float *q, const float *kk, const float *v,
                                int B, int T, int H, int KV, int hd, int ld)
{
    guard_call k;
    call_begin(&k, be, "attention_fwd");
    call_arg(&k, out, "out");
    call_arg(&k, lse, "lse");
    call_arg(&k, q, "q");
    call_arg(&k, kk, "k");
    call_arg(&k, v, "v");
    inner(be)->ops->attention_fwd(inner(be), out, lse, q, kk, v, B, T, H, KV, hd, ld);
    call_end(&k);
}

static void guard_attention_bwd(backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *lse, const float *q, const float *kk, const float *v, int B, int T, int H,
                                int KV, int hd, int ld)
{
    guard_call k;
    call_begin(&k, be, "attention_bwd");
    call_arg(&k, dq, "dq");
    call_arg(&k, dk, "dk");
    call_arg(&k, dv, "dv");
    call_arg(&k, dout, "dout");
    call_arg(&k, out, "out");
    call_arg(&k, lse, "lse");
    call_arg(&k, q, "q");
    call_arg(&k, kk, "k");
    call_arg(&k, v, "v");
    inner(be)->ops->attention_bwd(inner(be), dq, dk, dv, dout, out, lse, q, kk, v, B, T, H, KV, hd, ld);
    call_end(&k);
}

/* ---- swiglu ---- */

static void guard_swiglu_fwd(backend *be, float *out, const float *gate, const float *up, int N, int f, int ld_in,
                             int round_in)
{
    guard_call k;
    call_begin(&k, be, "swiglu_fwd");
    call_arg(&k, out, "out");
    call_arg(&k, gate, "gate");
    call_arg(&k, up, "up");
    inner(be)->ops->swiglu_fwd(inner(be), out, gate, up, N, f, ld_in, round_in);
    call_end(&k);
}

static void guard_swiglu_fwd_16(backend *be, uint16_t *out, const uint16_t *gate, const uint16_t *up, int N, int f,
                                int ld_in)
{
    guard_call k;
    call_begin(&k, be, "swiglu_fwd_16");
    call_arg(&k, out, "out");
    call_arg(&k, gate, "gate");
    call_arg(&k, up, "up");
    inner(be)->ops->swiglu_fwd_16(inner(be), out, gate, up, N, f, ld_in);
    call_end(&k);
}

static void guard_swiglu_bwd(backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                             const float *up, int N, int f, int ld_in, int round_in)
{
    guard_call k;
    call_begin(&k, be, "swiglu_bwd");
    call_arg(&k, dgate, "dgate");
    call_arg(&k, dup, "dup");
    call_arg(&k, dout, "dout");
    call_arg(&k, gate, "gate");
    call_arg(&k, up, "up");
    inner(be)->ops->swiglu_bwd(inner(be), dgate, dup, dout, gate, up, N, f, ld_in, round_in);
    call_end(&k);
}

static void guard_swiglu_bwd_16(backend *be, uint16_t *dgate, uint16_t *dup, const uint16_t *dout,
                                const uint16_t *gate, const uint16_t *up, int N, int f, int ld_in)
{
    guard_call k;
    call_begin(&k, be, "swiglu_bwd_16");
    call_arg(&k, dgate, "dgate");
    call_arg(&k, dup, "dup");
    call_arg(&k, dout, "dout");
    call_arg(&k, gate, "gate");
    call_arg(&k, up, "up");
    inner(be)->ops->swiglu_bwd_16(inner(be), dgate, dup, dout, gate, up, N, f, ld_in);
    call_end(&k);
}

/* ---- cross-entropy and distillation ---- */

static double guard_xent_fwd(backend *be, float *lse, const float *logits, const int32_t *targets, int N, int V,
                             int64_t *n_valid)
{
    guard_call k;
    call_begin(&k, be, "xent_fwd");
    call_host(&k, n_valid, sizeof *n_valid, "n_valid");
    call_arg(&k, lse, "lse");
    call_arg(&k, logits, "logits");
    call_arg(&k, targets, "targets");
    double r = inner(be)->ops->xent_fwd(inner(be), lse, logits, targets, N, V, n_valid);
    call_end(&k);
    return r;
}

static void guard_xent_bwd(backend *be, float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                           int N, int V, float scale)
{
    guard_call k;
    call_begin(&k, be, "xent_bwd");
    call_arg(&k, dlogits, "dlogits");
    call_arg(&k, logits, "logits");
    call_arg(&k, lse, "lse");
    call_arg(&k, targets, "targets");
    inner(be)->ops->xent_bwd(inner(be), dlogits, logits, lse, targets, N, V, scale);
    call_end(&k);
}

static void guard_xent_bwd_16(backend *be, float *logits, const float *lse, const int32_t *targets, int N, int V,
                              float scale)
{
    guard_call k;
    call_begin(&k, be, "xent_bwd_16");
    call_arg(&k, logits, "logits");
    call_arg(&k, lse, "lse");
    call_arg(&k, targets, "targets");
    inner(be)->ops->xent_bwd_16(inner(be), logits, lse, targets, N, V, scale);
    call_end(&k);
}

static double guard_distill(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                            float alpha, float temperature, float scale)
{
    guard_call k;
    call_begin(&k, be, "distill");
    call_arg(&k, logits, "logits");
    call_arg(&k, teacher, "teacher");
    call_arg(&k, targets, "targets");
    double r = inner(be)->ops->distill(inner(be), logits, teacher, targets, N, V, alpha, temperature, scale);
    call_end(&k);
    return r;
}

static double guard_distill_16(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                               float alpha, float temperature, float scale)
{
    guard_call k;
    call_begin(&k, be, "distill_16");
    call_arg(&k, logits, "logits");
    call_arg(&k, teacher, "teacher");
    call_arg(&k, targets, "targets");
    double r = inner(be)->ops->distill_16(inner(be), logits, teacher, targets, N, V, alpha, temperature, scale);
    call_end(&k);
    return r;
}

/* ---- strided and elementwise ---- */

static void guard_add2d(backend *be, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols,
                        float beta)
{
    guard_call k;
    call_begin(&k, be, "add2d");
    call_arg(&k, dst, "dst");
    call_arg(&k, src, "src");
    inner(be)->ops->add2d(inner(be), dst, ld_dst, src, ld_src, rows, cols, beta);
    call_end(&k);
}

static void guard_add(backend *be, float *y, const float *a, const float *b, size_t n)
{
    guard_call k;
    call_begin(&k, be, "add");
    call_arg(&k, y, "y");
    call_arg(&k, a, "a");
    call_arg(&k, b, "b");
    inner(be)->ops->add(inner(be), y, a, b, n);
    call_end(&k);
}

static void guard_scale(backend *be, float *x, float s, size_t n)
{
    guard_call k;
    call_begin(&k, be, "scale");
    call_arg(&k, x, "x");
    inner(be)->ops->scale(inner(be), x, s, n);
    call_end(&k);
}

static void guard_axpy(backend *be, float *y, float alpha, const float *x, size_t n)
{
    guard_call k;
    call_begin(&k, be, "axpy");
    call_arg(&k, y, "y");
    call_arg(&k, x, "x");
    inner(be)->ops->axpy(inner(be), y, alpha, x, n);
    call_end(&k);
}

static double guard_sumsq(backend *be, const float *x, size_t n)
{
    guard_call k;
    call_begin(&k, be, "sumsq");
    call_arg(&k, x, "x");
    double r = inner(be)->ops->sumsq(inner(be), x, n);
    call_end(&k);
    return r;
}

static void guard_adamw(backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                        float beta2, float eps, float weight_decay, float grad_scale, int64_t step)
{
    guard_call k;
    call_begin(&k, be, "adamw");
    call_arg(&k, p, "p");
    call_arg(&k, g, "g");
    call_arg(&k, m, "m");
    call_arg(&k, v, "v");
    inner(be)->ops->adamw(inner(be), p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    call_end(&k);
}

static void guard_destroy(backend *be)
{
    guard_impl *g = gimpl(be);
    for (size_t i = 0; i < g->n_regions; i++) munmap(g->regions[i].base, g->regions[i].usable + g->page);
    free(g->regions);
    backend_destroy(g->inner);
    free(g);
    free(be);
}

static const backend_ops guard_ops = {
    .name = "cpu-guarded",
    .destroy = guard_destroy,
    .alloc = guard_alloc,
    .mem_peak = guard_mem_peak,
    .alloc_i32 = guard_alloc_i32,
    .free = guard_free,
    .zero = guard_zero,
    .copy = guard_copy,
    .upload = guard_upload,
    .download = guard_download,
    .upload_i32 = guard_upload_i32,
    .upload_raw = guard_upload_raw,
    .download_raw = guard_download_raw,
    .alloc_bf16 = guard_alloc_bf16,
    .upload_bf16 = guard_upload_bf16,
    .widen_bf16 = guard_widen_bf16,
    .round_bf16 = guard_round_bf16,
    .round_bf16_2d = guard_round_bf16_2d,
    .sync = guard_sync,
    .set_matmul = guard_set_matmul,
    .gemm = guard_gemm,
    .gemm_w16 = guard_gemm_w16,
    .gemm_16 = guard_gemm_16,
    .gemm_16_to16 = guard_gemm_16_to16,
    .gemm_batched = guard_gemm_batched,
    .embedding_fwd = guard_embedding_fwd,
    .embedding_fwd_w16 = guard_embedding_fwd_w16,
    .embedding_bwd = guard_embedding_bwd,
    .rmsnorm_fwd = guard_rmsnorm_fwd,
    .rmsnorm_fwd_16 = guard_rmsnorm_fwd_16,
    .rmsnorm_bwd = guard_rmsnorm_bwd,
    .rope_fwd = guard_rope_fwd,
    .rope_bwd = guard_rope_bwd,
    .attention_fwd = guard_attention_fwd,
    .attention_bwd = guard_attention_bwd,
    .swiglu_fwd = guard_swiglu_fwd,
    .swiglu_fwd_16 = guard_swiglu_fwd_16,
    .swiglu_bwd = guard_swiglu_bwd,
    .swiglu_bwd_16 = guard_swiglu_bwd_16,
    .xent_fwd = guard_xent_fwd,
    .xent_bwd = guard_xent_bwd,
    .xent_bwd_16 = guard_xent_bwd_16,
    .distill = guard_distill,
    .distill_16 = guard_distill_16,
    .add2d = guard_add2d,
    .add = guard_add,
    .scale = guard_scale,
    .axpy = guard_axpy,
    .sumsq = guard_sumsq,
    .adamw = guard_adamw,
};

backend *backend_guard_create(int threads)
{
    backend *be = pc_calloc(1, sizeof(*be));
    guard_impl *g = pc_calloc(1, sizeof(*g));
    g->inner = backend_cpu_create(threads);
    long page = sysconf(_SC_PAGESIZE);
    g->page = page > 0 ? (size_t)page : 4096;
    be->ops = &guard_ops;
    be->impl = g;
    be->host_memory = 0;
    be->threads = g->inner->threads;
    snprintf(be->info, sizeof(be->info), "guarded CPU buffers, %.100s", g->inner->info);
    return be;
}
