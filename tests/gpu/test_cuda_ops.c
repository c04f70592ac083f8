/* test_cuda_ops: every op of the CUDA backend against the CPU backend on random inputs.
 *
 * Each check runs the same op on both backends from the same host inputs and compares
 * the results as max|cuda - cpu| / max|cpu| (relative to the largest reference value,
 * so near-zero elements do not dominate). Tolerances: 1e-5 for the fp32 ops; 3e-3 for
 * gemm with TF32 tensor cores (10-bit mantissa inputs: about 1e-3 per product, and
 * coherent when the hardware truncates instead of rounding); 1e-2 for attention on bf16
 * tensor cores (backend_cuda_set_attention: bf16 q, k, v, dO and probabilities) against
 * the CPU's fp32; 1e-6 relative for the double sums that ops return.
 * Strided views (a column slice of a wider buffer, as the model uses them) are checked
 * and the elements outside the slice must be left untouched. Exit 77 without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "attention_tc.h"
#include "backend_cuda.h"
#include "device.h"
#include "testutil.h"
#include "util.h"

#define TOL_F32 1e-5
#define TOL_TF32 3e-3
#define TOL_SUM 1e-6
#define TOL_ATT_BF16 1e-2

typedef struct ctx {
    backend *cpu, *gpu;
    pc_rng rng;
    int failures, checks;
} ctx;

static float *host_randn(ctx *x, size_t n, float scale)
{
    float *h = pc_alloc_f32(n ? n : 1);
    for (size_t i = 0; i < n; i++) h[i] = scale * pc_rng_normal(&x->rng);
    return h;
}

/* A buffer of n floats on each backend, both holding host values h. */
typedef struct pair {
    float *c, *g;
    size_t n;
} pair;

static pair pair_from(ctx *x, const float *h, size_t n)
{
    pair p = {be_alloc(x->cpu, n), be_alloc(x->gpu, n), n};
    be_upload(x->cpu, p.c, h, n);
    be_upload(x->gpu, p.g, h, n);
    return p;
}

static pair pair_randn(ctx *x, size_t n, float scale)
{
    float *h = host_randn(x, n, scale);
    pair p = pair_from(x, h, n);
    free(h);
    return p;
}

static void pair_free(ctx *x, pair *p)
{
    be_free(x->cpu, p->c);
    be_free(x->gpu, p->g);
}

typedef struct ipair {
    int32_t *c, *g;
} ipair;

static ipair ipair_from(ctx *x, const int32_t *h, size_t n)
{
    ipair p = {be_alloc_i32(x->cpu, n), be_alloc_i32(x->gpu, n)};
    x->cpu->ops->upload_i32(x->cpu, p.c, h, n);
    x->gpu->ops->upload_i32(x->gpu, p.g, h, n);
    return p;
}

static void ipair_free(ctx *x, ipair *p)
{
    be_free(x->cpu, p->c);
    be_free(x->gpu, p->g);
}

static void report(ctx *x, const char *what, double err, double tol)
{
    x->checks++;
    int ok = err <= tol && !isnan(err);
    if (!ok) x->failures++;
    printf("%-4s %-58s err %.3e (tol %.0e)\n", ok ? "ok" : "FAIL", what, err, tol);
}

static void check_pair(ctx *x, const char *what, const pair *p, double tol)
{
    float *hc = pc_alloc_f32(p->n), *hg = pc_alloc_f32(p->n);
    be_download(x->cpu, hc, p->c, p->n);
    be_download(x->gpu, hg, p->g, p->n);
    report(x, what, test_rel_max_err(hc, hg, p->n), tol);
    free(hc);
    free(hg);
}

static void check_scalar(ctx *x, const char *what, double ref, double got, double tol)
{
    double err = fabs(ref - got) / fmax(fabs(ref), 1e-30);
    if (ref == got) err = 0.0;
    report(x, what, err, tol);
}

/* ---------------------------------------------------------------- memory */

static void test_memory(ctx *x)
{
    size_t n = 1000;
    float *z = be_alloc(x->gpu, n), *h = pc_alloc_f32(n);
    be_download(x->gpu, h, z, n);
    double nz = 0.0;
    for (size_t i = 0; i < n; i++) nz += fabs(h[i]);
    report(x, "alloc returns zeroed memory", nz, 0.0);
    float *src = host_randn(x, n, 1.0f);
    be_upload(x->gpu, z, src, n);
    be_download(x->gpu, h, z, n);
    report(x, "upload/download round trip", test_rel_max_err(src, h, n), 0.0);
    float *w = be_alloc(x->gpu, n);
    be_copy(x->gpu, w, z, n);
    be_download(x->gpu, h, w, n);
    report(x, "copy", test_rel_max_err(src, h, n), 0.0);
    be_copy(x->gpu, z + 10, z, n - 10); /* overlapping, memmove semantics */
    be_download(x->gpu, h, z, n);
    float *want = pc_alloc_f32(n);
    memcpy(want, src, n * sizeof(float));
    memmove(want + 10, want, (n - 10) * sizeof(float));
    report(x, "copy of overlapping ranges", test_rel_max_err(want, h, n), 0.0);
    be_zero(x->gpu, z + 5, 20);
    be_download(x->gpu, h, z, n);
    memset(want + 5, 0, 20 * sizeof(float));
    report(x, "zero of a sub-range", test_rel_max_err(want, h, n), 0.0);
    int32_t ih[7] = {3, -1, 0, 7, 2147483647, -2147483647, 5}, *id = be_alloc_i32(x->gpu, 7);
    x->gpu->ops->upload_i32(x->gpu, id, ih, 7);
    int32_t back[7];
    /* an int32 buffer read back through the float download: the bits must survive */
    be_download(x->gpu, (float *)back, (const float *)id, 7);
    report(x, "upload_i32", memcmp(ih, back, sizeof ih) == 0 ? 0.0 : 1.0, 0.0);
    x->gpu->ops->sync(x->gpu);
    be_free(x->gpu, id);
    be_free(x->gpu, z);
    be_free(x->gpu, w);
    free(h);
    free(src);
    free(want);
}

/* ---------------------------------------------------------------- gemm */

/* Both backends in matmul mode `mode` (the CPU emulates bf16 by rounding its inputs, and
 * computes fp32 for tf32): bf16 products agree to fp32 summation order. */
static void check_out16(ctx *x, const char *what, const void *o16, size_t rows, size_t ld16, const pair *out);
static void check_out16_n(ctx *x, const char *what, const void *o16, size_t rows, size_t ld16, const pair *out,
                          size_t max_differ);

static void test_gemm(ctx *x, matmul_mode mode)
{
    static const char *label[] = {"", " tf32", " bf16"};
    x->gpu->ops->set_matmul(x->gpu, mode);
    x->cpu->ops->set_matmul(x->cpu, mode);
    int tf32 = mode == MATMUL_TF32;
    double tol = tf32 ? TOL_TF32 : TOL_F32;
    const int M = 37, N = 53, K = 129, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            pair A = pair_randn(x, (size_t)(ta ? K : M) * lda, 1.0f);
            pair B = pair_randn(x, (size_t)(tb ? N : K) * ldb, 1.0f);
            pair C = pair_randn(x, (size_t)M * ldc, 1.0f);
            x->cpu->ops->gemm(x->cpu, ta, tb, M, N, K, 0.7f, A.c, lda, B.c, ldb, 0.3f, C.c, ldc);
            x->gpu->ops->gemm(x->gpu, ta, tb, M, N, K, 0.7f, A.g, lda, B.g, ldb, 0.3f, C.g, ldc);
            char what[96];
            snprintf(what, sizeof what, "gemm%s ta=%d tb=%d (%dx%dx%d, padded ld, beta 0.3)", label[mode], ta, tb,
                     M, N, K);
            check_pair(x, what, &C, tol);
            if (mode == MATMUL_BF16) { /* the same products with B given as its bf16 copy */
                uint16_t *bc = x->cpu->ops->alloc_bf16(x->cpu, B.n), *bg = x->gpu->ops->alloc_bf16(x->gpu, B.n);
                x->cpu->ops->round_bf16(x->cpu, bc, B.c, B.n);
                x->gpu->ops->round_bf16(x->gpu, bg, B.g, B.n);
                pair W = pair_randn(x, C.n, 1.0f);
                x->cpu->ops->gemm_w16(x->cpu, ta, tb, M, N, K, 0.7f, A.c, lda, bc, ldb, 0.3f, W.c, ldc);
                x->gpu->ops->gemm_w16(x->gpu, ta, tb, M, N, K, 0.7f, A.g, lda, bg, ldb, 0.3f, W.g, ldc);
                snprintf(what, sizeof what, "gemm_w16 ta=%d tb=%d (B in bf16)", ta, tb);
                check_pair(x, what, &W, tol);
                /* and with A given in bf16 too */
                uint16_t *ac = x->cpu->ops->alloc_bf16(x->cpu, A.n), *ag = x->gpu->ops->alloc_bf16(x->gpu, A.n);
                x->cpu->ops->round_bf16(x->cpu, ac, A.c, A.n);
                x->gpu->ops->round_bf16(x->gpu, ag, A.g, A.n);
                x->cpu->ops->gemm_16(x->cpu, ta, tb, M, N, K, 0.7f, ac, lda, bc, ldb, 0.3f, W.c, ldc);
                x->gpu->ops->gemm_16(x->gpu, ta, tb, M, N, K, 0.7f, ag, lda, bg, ldb, 0.3f, W.g, ldc);
                snprintf(what, sizeof what, "gemm_16 ta=%d tb=%d (A and B in bf16)", ta, tb);
                check_pair(x, what, &W, tol);
                /* and C in bf16: gemm_16's sums (beta 0) rounded; the padding left alone. On a GPU
                 * cuBLAS may sum in another order for a bf16 C than for an fp32 one */
                pair W0 = pair_randn(x, C.n, 0.0f); /* +-0: zeroed, so that the padding rounds to c16's */
                be_zero(x->cpu, W0.c, W0.n);
                be_zero(x->gpu, W0.g, W0.n);
                uint16_t *c16 = x->gpu->ops->alloc_bf16(x->gpu, C.n);
                x->cpu->ops->gemm_16(x->cpu, ta, tb, M, N, K, 0.7f, ac, lda, bc, ldb, 0.0f, W0.c, ldc);
                x->gpu->ops->gemm_16(x->gpu, ta, tb, M, N, K, 0.7f, ag, lda, bg, ldb, 0.0f, W0.g, ldc);
                x->gpu->ops->gemm_16_to16(x->gpu, ta, tb, M, N, K, 0.7f, ag, lda, bg, ldb, c16, ldc);
                snprintf(what, sizeof what, "gemm_16_to16 ta=%d tb=%d", ta, tb);
#ifdef PC_TEST_EMU
                check_out16(x, what, c16, 1, C.n, &W0);
#else
                check_out16_n(x, what, c16, 1, C.n, &W0, C.n);
#endif
                be_free(x->gpu, c16);
                pair_free(x, &W0);
                pair_free(x, &W);
                be_free(x->cpu, bc);
                be_free(x->gpu, bg);
                be_free(x->cpu, ac);
                be_free(x->gpu, ag);
            }
            if (mode == MATMUL_BF16 && ta == 0 && tb == 0) { /* the GPU really rounds: it differs from fp32 */
                pair D = pair_randn(x, C.n, 0.0f);
                x->cpu->ops->set_matmul(x->cpu, MATMUL_FP32);
                x->cpu->ops->gemm(x->cpu, 0, 0, M, N, K, 1.0f, A.c, lda, B.c, ldb, 0.0f, D.c, ldc);
                x->gpu->ops->gemm(x->gpu, 0, 0, M, N, K, 1.0f, A.g, lda, B.g, ldb, 0.0f, D.g, ldc);
                x->cpu->ops->set_matmul(x->cpu, MATMUL_BF16);
                float *r = pc_alloc_f32(D.n), *g = pc_alloc_f32(D.n);
                be_download(x->cpu, r, D.c, D.n);
                be_download(x->gpu, g, D.g, D.n);
                double err = test_rel_max_err(r, g, D.n);
                x->checks++;
                if (!(err > 1e-4)) x->failures++;
                printf("%-4s gemm bf16 differs from the fp32 product (rounded inputs): %.3e > 1e-4\n",
                       err > 1e-4 ? "ok" : "FAIL", err);
                free(r), free(g);
                pair_free(x, &D);
            }
            pair_free(x, &A);
            pair_free(x, &B);
            pair_free(x, &C);
        }
    /* batched, with strides larger than one matrix */
    const int batch = 5;
    int64_t sa = (int64_t)M * K + 11, sb = (int64_t)N * K + 7, sc = (int64_t)M * N + 5;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = ta ? M : K, ldb = tb ? K : N;
            pair A = pair_randn(x, (size_t)(sa * batch), 1.0f);
            pair B = pair_randn(x, (size_t)(sb * batch), 1.0f);
            pair C = pair_randn(x, (size_t)(sc * batch), 1.0f);
            x->cpu->ops->gemm_batched(x->cpu, ta, tb, M, N, K, 1.0f, A.c, lda, sa, B.c, ldb, sb, 0.5f, C.c, N, sc,
                                      batch);
            x->gpu->ops->gemm_batched(x->gpu, ta, tb, M, N, K, 1.0f, A.g, lda, sa, B.g, ldb, sb, 0.5f, C.g, N, sc,
                                      batch);
            char what[96];
            snprintf(what, sizeof what, "gemm_batched%s ta=%d tb=%d (x%d, strided)", label[mode], ta, tb, batch);
            check_pair(x, what, &C, tol);
            pair_free(x, &A);
            pair_free(x, &B);
            pair_free(x, &C);
        }
    x->gpu->ops->set_matmul(x->gpu, MATMUL_FP32);
    x->cpu->ops->set_matmul(x->cpu, MATMUL_FP32);
}

/* Products whose operands would span the cuBLAS bound (backend_cuda_set_gemm_span) run in
 * pieces of rows of C, columns of C and of K: the same result as the whole product, in
 * fp32, bf16 and bf16-operand modes (an fp32 C to TOL_F32: K pieces sum in another
 * order; a bf16 C, split by rows and columns only, to one bf16 unit). Bounds of a few rows
 * a piece, and of one row, column or k a piece. */
static void test_gemm_span(ctx *x)
{
    const int M = 37, N = 53, K = 129, pad = 3;
    const int64_t spans[] = {300, 2};
    for (int mode = 0; mode < 3; mode++) /* gemm fp32, gemm bf16 (fp32 operands), gemm_16 / gemm_16_to16 */
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (size_t s = 0; s < PC_ARRAY_LEN(spans); s++) {
                    const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
                    const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
                                 nc = (size_t)M * ldc;
                    pair A = pair_randn(x, na, 1.0f), B = pair_randn(x, nb, 1.0f), C = pair_randn(x, nc, 1.0f);
                    x->gpu->ops->set_matmul(x->gpu, mode == 0 ? MATMUL_FP32 : MATMUL_BF16);
                    uint16_t *a16 = x->gpu->ops->alloc_bf16(x->gpu, na), *b16 = x->gpu->ops->alloc_bf16(x->gpu, nb);
                    x->gpu->ops->round_bf16(x->gpu, a16, A.g, na);
                    x->gpu->ops->round_bf16(x->gpu, b16, B.g, nb);
                    float *out[2], *h[2];
                    uint16_t *o16[2], *h16[2];
                    uint64_t calls[2];
                    for (int split = 0; split < 2; split++) {
                        backend_cuda_set_gemm_span(x->gpu, split ? spans[s] : BACKEND_CUDA_GEMM_SPAN);
                        calls[split] = backend_cuda_gemm_calls(x->gpu);
                        out[split] = be_alloc(x->gpu, nc);
                        be_copy(x->gpu, out[split], C.g, nc);
                        o16[split] = x->gpu->ops->alloc_bf16(x->gpu, nc);
                        if (mode < 2)
                            x->gpu->ops->gemm(x->gpu, ta, tb, M, N, K, 0.7f, A.g, lda, B.g, ldb, 0.3f, out[split],
                                              ldc);
                        else {
                            x->gpu->ops->gemm_16(x->gpu, ta, tb, M, N, K, 0.7f, a16, lda, b16, ldb, 0.3f,
                                                 out[split], ldc);
                            x->gpu->ops->gemm_16_to16(x->gpu, ta, tb, M, N, K, 0.7f, a16, lda, b16, ldb, o16[split],
                                                      ldc);
                        }
                        calls[split] = backend_cuda_gemm_calls(x->gpu) - calls[split];
                        h[split] = pc_alloc_f32(nc);
                        be_download(x->gpu, h[split], out[split], nc);
                        h16[split] = pc_malloc(2 * nc);
                        if (mode == 2) x->gpu->ops->download_raw(x->gpu, h16[split], o16[split], 2 * nc);
                    }
                    static const char *const name[] = {"gemm fp32", "gemm bf16", "gemm_16"};
                    char what[128];
                    snprintf(what, sizeof what, "%s in pieces spanning < %lld elements ta=%d tb=%d (%dx%dx%d)",
                             name[mode], (long long)spans[s], ta, tb, M, N, K);
                    report(x, what, test_rel_max_err(h[0], h[1], nc), TOL_F32);
                    x->checks++; /* it was split: more cuBLAS calls than the whole product's */
                    if (!(calls[1] > calls[0])) {
                        x->failures++;
                        printf("FAIL %s: %llu cuBLAS calls, the whole product %llu\n", what,
                               (unsigned long long)calls[1], (unsigned long long)calls[0]);
                    }
                    if (mode == 2) { /* the bf16 C: rows of M, N columns of it compared (not the padding) */
                        float *f[2] = {pc_alloc_f32(nc), pc_alloc_f32(nc)};
                        for (int k = 0; k < 2; k++)
                            for (size_t i = 0; i < nc; i++) {
                                uint32_t u = (uint32_t)h16[k][i] << 16;
                                memcpy(&f[k][i], &u, 4);
                                if ((int)(i % (size_t)ldc) >= N) f[k][i] = 0.0f;
                            }
                        snprintf(what, sizeof what, "gemm_16_to16 in pieces spanning < %lld elements ta=%d tb=%d",
                                 (long long)spans[s], ta, tb);
                        report(x, what, test_rel_max_err(f[0], f[1], nc), 8e-3);
                        free(f[0]), free(f[1]);
                    }
                    for (int k = 0; k < 2; k++) {
                        free(h[k]), free(h16[k]);
                        be_free(x->gpu, out[k]);
                        be_free(x->gpu, o16[k]);
                    }
                    be_free(x->gpu, a16);
                    be_free(x->gpu, b16);
                    pair_free(x, &A);
                    pair_free(x, &B);
                    pair_free(x, &C);
                }
    backend_cuda_set_gemm_span(x->gpu, BACKEND_CUDA_GEMM_SPAN);
    x->gpu->ops->set_matmul(x->gpu, MATMUL_FP32);
}

/* bf16 products whose operands exceed the scratch bound (backend_cuda_set_bf16_block) run
 * in blocks of rows of A and columns of B: the same result as the whole product (each dot
 * product is whole; on a GPU cuBLAS may pick another kernel per block shape: TOL_F32).
 * Bounds below 64 rows, 64-row multiples, and a bound below one row's K. */
static void test_gemm_bf16_blocks(ctx *x)
{
    static const struct {
        int M, N, K;
        size_t cap;
    } cases[] = {{200, 150, 33, 100 * 33}, {37, 53, 129, 5 * 129}, {7, 5, 129, 64}};
    x->gpu->ops->set_matmul(x->gpu, MATMUL_BF16);
    for (size_t t = 0; t < sizeof cases / sizeof *cases; t++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int w16 = 0; w16 < 2; w16++) {
                    const int M = cases[t].M, N = cases[t].N, K = cases[t].K, pad = 2;
                    const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
                    const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
                                 nc = (size_t)M * ldc;
                    pair A = pair_randn(x, na, 1.0f), B = pair_randn(x, nb, 1.0f), C = pair_randn(x, nc, 1.0f);
                    uint16_t *b16 = x->gpu->ops->alloc_bf16(x->gpu, nb);
                    x->gpu->ops->round_bf16(x->gpu, b16, B.g, nb);
                    float *out[2];
                    for (int blocked = 0; blocked < 2; blocked++) {
                        backend_cuda_set_bf16_block(x->gpu, blocked ? cases[t].cap : BACKEND_CUDA_BF16_BLOCK);
                        out[blocked] = be_alloc(x->gpu, nc);
                        be_copy(x->gpu, out[blocked], C.g, nc);
                        if (w16)
                            x->gpu->ops->gemm_w16(x->gpu, ta, tb, M, N, K, 0.7f, A.g, lda, b16, ldb, 0.3f,
                                                  out[blocked], ldc);
                        else
                            x->gpu->ops->gemm(x->gpu, ta, tb, M, N, K, 0.7f, A.g, lda, B.g, ldb, 0.3f, out[blocked],
                                              ldc);
                    }
                    float *h0 = pc_alloc_f32(nc), *h1 = pc_alloc_f32(nc);
                    be_download(x->gpu, h0, out[0], nc);
                    be_download(x->gpu, h1, out[1], nc);
                    char what[112];
                    snprintf(what, sizeof what, "%s bf16 in blocks of <= %zu elements ta=%d tb=%d (%dx%dx%d)",
                             w16 ? "gemm_w16" : "gemm", cases[t].cap, ta, tb, M, N, K);
                    report(x, what, test_rel_max_err(h0, h1, nc), TOL_F32);
                    free(h0), free(h1);
                    be_free(x->gpu, out[0]);
                    be_free(x->gpu, out[1]);
                    be_free(x->gpu, b16);
                    pair_free(x, &A);
                    pair_free(x, &B);
                    pair_free(x, &C);
                }
    backend_cuda_set_bf16_block(x->gpu, BACKEND_CUDA_BF16_BLOCK);
    x->gpu->ops->set_matmul(x->gpu, MATMUL_FP32);
}

/* ---------------------------------------------------------------- row ops */

/* The block order the emulator runs the next kernels in (PC_EMU_BLOCK_ORDER: NULL index
 * order, "reverse", "shuffle"); a GPU runs them in its own. Synchronises first, since the
 * emulator runs a stream's kernels when it is synchronised. */
static void block_order(ctx *x, const char *order)
{
    x->gpu->ops->sync(x->gpu);
    if (order)
        setenv("PC_EMU_BLOCK_ORDER", order, 1);
    else
        unsetenv("PC_EMU_BLOCK_ORDER");
}

/* embedding_bwd bit for bit the CPU's (each token's rows added in position order) with the
 * blocks run in index order, reversed and shuffled: N positions of tokens below `few`
 * (many repeats), one of V - 1 first and last, and of V - 2 only past the first scan of
 * 1024 positions */
static void test_embedding_bwd_case(ctx *x, int V, int d, int N, int few)
{
    int32_t *tok = pc_malloc((size_t)N * sizeof *tok);
    for (int n = 0; n < N; n++) tok[n] = (int32_t)(pc_rng_u64(&x->rng) % (uint64_t)few);
    tok[0] = tok[N - 1] = V - 1;
    if (N > 1100) tok[1100] = tok[N - 2] = V - 2;
    ipair t = ipair_from(x, tok, N);
    pair dout = pair_randn(x, (size_t)N * d, 1.0f), dtable = pair_randn(x, (size_t)V * d, 1.0f);
    float *start = be_alloc(x->gpu, dtable.n);
    be_copy(x->gpu, start, dtable.g, dtable.n);
    x->cpu->ops->embedding_bwd(x->cpu, dtable.c, dout.c, t.c, N, d);
    const char *orders[] = {NULL, "reverse", "shuffle"};
    for (size_t k = 0; k < PC_ARRAY_LEN(orders); k++) {
        be_copy(x->gpu, dtable.g, start, dtable.n);
        block_order(x, orders[k]);
        x->gpu->ops->embedding_bwd(x->gpu, dtable.g, dout.g, t.g, N, d);
        block_order(x, NULL);
        char what[128];
        snprintf(what, sizeof what, "embedding_bwd bitwise the cpu's (d=%d, N=%d, blocks in %s order)", d, N,
                 orders[k] ? orders[k] : "index");
        check_pair(x, what, &dtable, 0.0);
    }
    be_free(x->gpu, start);
    pair_free(x, &dout);
    pair_free(x, &dtable);
    ipair_free(x, &t);
    free(tok);
}

static void test_embedding(ctx *x)
{
    const int V = 50, d = 300, N = 77;
    int32_t tok[77];
    for (int n = 0; n < N; n++) tok[n] = (int32_t)(pc_rng_u64(&x->rng) % 10); /* many repeats */
    tok[0] = V - 1;
    ipair t = ipair_from(x, tok, N);
    pair table = pair_randn(x, (size_t)V * d, 1.0f), out = pair_randn(x, (size_t)N * d, 1.0f);
    x->cpu->ops->embedding_fwd(x->cpu, out.c, table.c, t.c, N, d);
    x->gpu->ops->embedding_fwd(x->gpu, out.g, table.g, t.g, N, d);
    check_pair(x, "embedding_fwd", &out, 0.0);
    uint16_t *tc = x->cpu->ops->alloc_bf16(x->cpu, table.n), *tg = x->gpu->ops->alloc_bf16(x->gpu, table.n);
    x->cpu->ops->round_bf16(x->cpu, tc, table.c, table.n);
    x->gpu->ops->round_bf16(x->gpu, tg, table.g, table.n);
    x->cpu->ops->embedding_fwd_w16(x->cpu, out.c, tc, t.c, N, d);
    x->gpu->ops->embedding_fwd_w16(x->gpu, out.g, tg, t.g, N, d);
    check_pair(x, "embedding_fwd_w16 (bf16 table, exact)", &out, 0.0);
    be_free(x->cpu, tc);
    be_free(x->gpu, tg);
    pair_free(x, &table);
    pair_free(x, &out);
    ipair_free(x, &t);
    test_embedding_bwd_case(x, 50, 300, 77, 10); /* 4 columns a thread */
    test_embedding_bwd_case(x, 50, 7, 77, 3);    /* one */
    test_embedding_bwd_case(x, 40, 12, 2600, 30); /* three scans of 1024 positions */
}

/* A bf16 output o16 (rows, n / rows) with row stride ld16 of the GPU's *_16 op against
 * the outputs of the fp32 op in out (n values): bitwise the GPU's own fp32 values rounded
 * by its round_bf16 (at most max_differ values not), and within a bf16 rounding (2^-8 of
 * the largest) of the CPU's. */
static void check_out16_n(ctx *x, const char *what, const void *o16, size_t rows, size_t ld16, const pair *out,
                          size_t max_differ)
{
    size_t n = out->n, cols = n / rows, differ = 0;
    uint16_t *got = pc_malloc(2 * n), *want = pc_malloc(2 * n), *all = pc_malloc(2 * rows * ld16);
    uint16_t *r16 = x->gpu->ops->alloc_bf16(x->gpu, n);
    x->gpu->ops->round_bf16(x->gpu, r16, out->g, n);
    x->gpu->ops->download_raw(x->gpu, want, r16, 2 * n);
    x->gpu->ops->download_raw(x->gpu, all, o16, 2 * ((rows - 1) * ld16 + cols));
    for (size_t r = 0; r < rows; r++) memcpy(got + r * cols, all + r * ld16, 2 * cols);
    for (size_t i = 0; i < n; i++) differ += got[i] != want[i];
    char line[128];
    snprintf(line, sizeof line, "%s bf16 == round_bf16(fp32 op) (values differing)", what);
    report(x, line, (double)differ, (double)max_differ);
    float *ref = pc_alloc_f32(n), *wide = pc_alloc_f32(n);
    be_download(x->cpu, ref, out->c, n);
    for (size_t i = 0; i < n; i++) wide[i] = pc_bf16_to_f32(got[i]);
    snprintf(line, sizeof line, "%s bf16 vs the CPU's fp32", what);
    report(x, line, test_rel_max_err(ref, wide, n), 4e-3);
    be_free(x->gpu, r16);
    free(got), free(want), free(all), free(ref), free(wide);
}

static void check_out16(ctx *x, const char *what, const void *o16, size_t rows, size_t ld16, const pair *out)
{
    check_out16_n(x, what, o16, rows, ld16, out, 0);
}

static void same_bits(ctx *x, const char *what, const float *a, const float *b, size_t n);

/* rmsnorm_bwd_16 beside rmsnorm_bwd on the same inputs, each adding to a copy of dx (the
 * GPU's, as rmsnorm_bwd left it) and to a zeroed dw, rmsnorm_bwd_16's blocks shuffled:
 * dx bit for bit rmsnorm_bwd's, dx16 bit for bit round_bf16 of that dx, dw bit for bit
 * (its partials are summed in a fixed order). */
static void test_rmsnorm_bwd16(ctx *x, const pair *dx, const pair *dout, const pair *xin, const pair *w,
                               const pair *rstd, int N, int d)
{
    const size_t n = (size_t)N * d;
    float *dx_a = be_alloc(x->gpu, n), *dx_b = be_alloc(x->gpu, n), *dw_a = be_alloc(x->gpu, (size_t)d),
          *dw_b = be_alloc(x->gpu, (size_t)d);
    be_copy(x->gpu, dx_a, dx->g, n), be_copy(x->gpu, dx_b, dx->g, n);
    be_zero(x->gpu, dw_a, (size_t)d), be_zero(x->gpu, dw_b, (size_t)d);
    uint16_t *d16 = x->gpu->ops->alloc_bf16(x->gpu, n), *r16 = x->gpu->ops->alloc_bf16(x->gpu, n);
    x->gpu->ops->rmsnorm_bwd(x->gpu, dx_a, dw_a, dout->g, xin->g, w->g, rstd->g, N, d);
    block_order(x, "shuffle");
    x->gpu->ops->rmsnorm_bwd_16(x->gpu, dx_b, d16, dw_b, dout->g, xin->g, w->g, rstd->g, N, d);
    block_order(x, NULL);
    x->gpu->ops->round_bf16(x->gpu, r16, dx_b, n);
    char what[96];
    snprintf(what, sizeof what, "rmsnorm_bwd_16 dx bitwise rmsnorm_bwd's (d=%d)", d);
    same_bits(x, what, dx_a, dx_b, n);
    snprintf(what, sizeof what, "rmsnorm_bwd_16 dx16 bitwise its dx rounded (d=%d)", d);
    same_bits(x, what, (const float *)r16, (const float *)d16, (n + 1) / 2);
    snprintf(what, sizeof what, "rmsnorm_bwd_16 dw bitwise rmsnorm_bwd's, blocks shuffled (N=%d, d=%d)", N, d);
    same_bits(x, what, dw_a, dw_b, (size_t)d);
    be_free(x->gpu, dx_a), be_free(x->gpu, dx_b), be_free(x->gpu, dw_a), be_free(x->gpu, dw_b);
    be_free(x->gpu, d16), be_free(x->gpu, r16);
}

static void test_rmsnorm(ctx *x)
{
    /* the backward in one pass up to 8192 columns 4 at a time (2048 one at a time), each
     * thread summing dw for 1, 2, 4 or 8 groups of columns, and in two passes above; at
     * N 9000 a block of the one pass walks 9 rows, not 8 (at most 1024 dw partials) */
    const int dims[][2] = {{7, 150}, {64, 150}, {1344, 150}, {3000, 150}, {2051, 150}, {4100, 150}, {8200, 150},
                           {12, 9000}};
    for (size_t k = 0; k < PC_ARRAY_LEN(dims); k++) {
        int d = dims[k][0], N = dims[k][1];
        pair xin = pair_randn(x, (size_t)N * d, 2.0f), w = pair_randn(x, (size_t)d, 1.0f);
        pair out = pair_randn(x, (size_t)N * d, 1.0f), rstd = pair_randn(x, (size_t)N, 1.0f);
        x->cpu->ops->rmsnorm_fwd(x->cpu, out.c, rstd.c, xin.c, w.c, N, d, 1e-5f);
        x->gpu->ops->rmsnorm_fwd(x->gpu, out.g, rstd.g, xin.g, w.g, N, d, 1e-5f);
        char what[96];
        snprintf(what, sizeof what, "rmsnorm_fwd out (N=%d, d=%d)", N, d);
        check_pair(x, what, &out, TOL_F32);
        snprintf(what, sizeof what, "rmsnorm_fwd rstd (N=%d, d=%d)", N, d);
        check_pair(x, what, &rstd, TOL_F32);
        uint16_t *o16 = x->gpu->ops->alloc_bf16(x->gpu, (size_t)N * d);
        float *rstd16 = be_alloc(x->gpu, (size_t)N);
        for (int cp = 0; cp < 2; cp++) { /* and with x copied as it is read (x_copy) */
            float *copy = cp ? be_alloc(x->gpu, (size_t)N * d) : NULL;
            x->gpu->ops->rmsnorm_fwd_16(x->gpu, o16, rstd16, xin.g, w.g, N, d, 1e-5f, copy);
            snprintf(what, sizeof what, "rmsnorm_fwd_16 (d=%d%s)", d, cp ? ", x copied" : "");
            check_out16(x, what, o16, 1, out.n, &out);
            pair r16 = {rstd.c, rstd16, (size_t)N};
            snprintf(what, sizeof what, "rmsnorm_fwd_16 rstd (d=%d%s)", d, cp ? ", x copied" : "");
            check_pair(x, what, &r16, TOL_F32);
            if (cp) {
                snprintf(what, sizeof what, "rmsnorm_fwd_16 x_copy bitwise x (d=%d)", d);
                same_bits(x, what, xin.g, copy, xin.n);
                be_free(x->gpu, copy);
            }
        }
        be_free(x->gpu, o16), be_free(x->gpu, rstd16);
        pair dout = pair_randn(x, (size_t)N * d, 1.0f), dx = pair_randn(x, (size_t)N * d, 1.0f),
             dw = pair_randn(x, (size_t)d, 1.0f);
        x->cpu->ops->rmsnorm_bwd(x->cpu, dx.c, dw.c, dout.c, xin.c, w.c, rstd.c, N, d);
        x->gpu->ops->rmsnorm_bwd(x->gpu, dx.g, dw.g, dout.g, xin.g, w.g, rstd.g, N, d);
        snprintf(what, sizeof what, "rmsnorm_bwd dx (accumulates, d=%d)", d);
        check_pair(x, what, &dx, TOL_F32);
        snprintf(what, sizeof what, "rmsnorm_bwd dw (accumulates, d=%d)", d);
        check_pair(x, what, &dw, TOL_F32);
        test_rmsnorm_bwd16(x, &dx, &dout, &xin, &w, &rstd, N, d);
        pair_free(x, &xin);
        pair_free(x, &w);
        pair_free(x, &out);
        pair_free(x, &rstd);
        pair_free(x, &dout);
        pair_free(x, &dx);
        pair_free(x, &dw);
    }
}

/* Llama 3's rope tables (T, hd/2) on both backends. */
static void rope_pairs(ctx *x, int T, int hd, pair *cs, pair *sn)
{
    float *hc = pc_alloc_f32((size_t)T * hd / 2), *hs = pc_alloc_f32((size_t)T * hd / 2);
    rope_tables_host(hc, hs, T, hd, 500000.0, "llama3", 32.0, 1.0, 4.0, 8192);
    *cs = pair_from(x, hc, (size_t)T * hd / 2);
    *sn = pair_from(x, hs, (size_t)T * hd / 2);
    free(hc);
    free(hs);
}

static void test_rope_case(ctx *x, int hd)
{
    const int B = 2, T = 19, Hq = 4, Hk = 2, ld = (Hq + 2 * Hk) * hd; /* fused qkv rows */
    char what[80];
    pair cs, sn;
    rope_pairs(x, T, hd, &cs, &sn);
    pair qkv = pair_randn(x, (size_t)B * T * ld, 1.0f);
    x->cpu->ops->rope_fwd(x->cpu, qkv.c, cs.c, sn.c, B, T, Hq, hd, ld);
    x->gpu->ops->rope_fwd(x->gpu, qkv.g, cs.g, sn.g, B, T, Hq, hd, ld);
    x->cpu->ops->rope_fwd(x->cpu, qkv.c + Hq * hd, cs.c, sn.c, B, T, Hk, hd, ld);
    x->gpu->ops->rope_fwd(x->gpu, qkv.g + Hq * hd, cs.g, sn.g, B, T, Hk, hd, ld);
    snprintf(what, sizeof what, "rope_fwd (q and k slices of fused qkv; v untouched; hd=%d)", hd);
    check_pair(x, what, &qkv, TOL_F32);
    x->cpu->ops->rope_bwd(x->cpu, qkv.c, cs.c, sn.c, B, T, Hq, hd, ld);
    x->gpu->ops->rope_bwd(x->gpu, qkv.g, cs.g, sn.g, B, T, Hq, hd, ld);
    snprintf(what, sizeof what, "rope_bwd (hd=%d)", hd);
    check_pair(x, what, &qkv, TOL_F32);
    pair_free(x, &cs);
    pair_free(x, &sn);
    pair_free(x, &qkv);
}

/* head_dim 64: 4 pairs a load (cuda/vec.h); 18: one */
static void test_rope(ctx *x)
{
    test_rope_case(x, 64);
    test_rope_case(x, 18);
}

/* ---------------------------------------------------------------- attention */

/* Both backends' attention forward and backward on the same random inputs, within tol;
 * q, k, v (and dq, dk, dv) rows of stride (H + 2 KV) hd + pad (pad 1: rows not 16-byte
 * aligned). */
static void test_attention_case(ctx *x, int B, int T, int H, int KV, int hd, int pad, double tol)
{
    int C = (H + 2 * KV) * hd + pad, qd = H * hd;
    size_t nq = (size_t)B * T * C, no = (size_t)B * T * qd, nl = (size_t)B * H * T;
    pair qkv = pair_randn(x, nq, 1.0f);
    pair out = pair_randn(x, no, 1.0f), lse = pair_randn(x, nl, 1.0f);
    const float *qc = qkv.c, *kc = qkv.c + qd, *vc = qkv.c + qd + KV * hd;
    const float *qg = qkv.g, *kg = qkv.g + qd, *vg = qkv.g + qd + KV * hd;
    x->cpu->ops->attention_fwd(x->cpu, out.c, lse.c, qc, kc, vc, B, T, H, KV, hd, C);
    x->gpu->ops->attention_fwd(x->gpu, out.g, lse.g, qg, kg, vg, B, T, H, KV, hd, C);
    char what[128];
    snprintf(what, sizeof what, "attention_fwd out B=%d T=%d H=%d KV=%d hd=%d pad=%d", B, T, H, KV, hd, pad);
    check_pair(x, what, &out, tol);
    snprintf(what, sizeof what, "attention_fwd lse B=%d T=%d H=%d KV=%d hd=%d pad=%d", B, T, H, KV, hd, pad);
    check_pair(x, what, &lse, tol);

    /* dqkv starts random: the op must overwrite q, k and v parts entirely */
    pair dout = pair_randn(x, no, 1.0f), dqkv = pair_randn(x, nq, 1.0f);
    x->cpu->ops->attention_bwd(x->cpu, dqkv.c, dqkv.c + qd, dqkv.c + qd + KV * hd, dout.c, out.c, lse.c, qc, kc, vc,
                               B, T, H, KV, hd, C);
    x->gpu->ops->attention_bwd(x->gpu, dqkv.g, dqkv.g + qd, dqkv.g + qd + KV * hd, dout.g, out.g, lse.g, qg, kg, vg,
                               B, T, H, KV, hd, C);
    snprintf(what, sizeof what, "attention_bwd dq|dk|dv B=%d T=%d H=%d KV=%d hd=%d pad=%d", B, T, H, KV, hd, pad);
    check_pair(x, what, &dqkv, tol);
    pair_free(x, &qkv);
    pair_free(x, &out);
    pair_free(x, &lse);
    pair_free(x, &dout);
    pair_free(x, &dqkv);
}

/* The GPU's attention modes: fp32 kernels, bf16 tensor-core kernels, bf16 by cuDNN. */
enum { ATT_FP32, ATT_BF16, ATT_CUDNN };
static void set_attention_mode(ctx *x, int mode)
{
    char err[512];
    backend_cuda_set_attention(x->gpu, mode != ATT_FP32);
    if (mode == ATT_CUDNN && backend_cuda_use_cudnn(x->gpu, err, (int)sizeof err) != 0)
        fprintf(stderr, "cuDNN: %s\n", err);
}

/* The largest difference between the GPU's forward outputs in modes a and b from the same
 * inputs (a mode whose path did not run gives 0); the mode after is fp32. */
static double attention_modes_diff(ctx *x, int a, int b)
{
    const int B = 1, T = 100, H = 2, KV = 1, hd = 64, C = (H + 2 * KV) * hd;
    const size_t n = (size_t)B * T * H * hd;
    pair qkv = pair_randn(x, (size_t)B * T * C, 1.0f);
    float *o[2], *lse = be_alloc(x->gpu, (size_t)B * H * T), *h[2];
    for (int k = 0; k < 2; k++) {
        set_attention_mode(x, k ? b : a);
        o[k] = be_alloc(x->gpu, n);
        x->gpu->ops->attention_fwd(x->gpu, o[k], lse, qkv.g, qkv.g + H * hd, qkv.g + (H + KV) * hd, B, T, H, KV, hd,
                                   C);
        h[k] = pc_alloc_f32(n);
        be_download(x->gpu, h[k], o[k], n);
        be_free(x->gpu, o[k]);
    }
    set_attention_mode(x, ATT_FP32);
    double diff = 0.0;
    for (size_t i = 0; i < n; i++) diff = fmax(diff, fabs((double)h[0][i] - h[1][i]));
    free(h[0]);
    free(h[1]);
    be_free(x->gpu, lse);
    pair_free(x, &qkv);
    return diff;
}

/* The shapes, in fp32 (tol TOL_F32), then with the GPU's attention on bf16 tensor cores
 * against the CPU's fp32 (TOL_ATT_BF16: bf16 inputs and probabilities, fp32 accumulation;
 * tiles of 64 rows, so T = 64, 65, 128 and 300 cross tile edges and the diagonal). */
static void test_attention(ctx *x)
{
    for (int bf16 = 0; bf16 < 2; bf16++) {
        double tol = bf16 ? TOL_ATT_BF16 : TOL_F32;
        backend_cuda_set_attention(x->gpu, bf16);
#ifdef PC_TEST_EMU /* the emulator runs a thread switch per barrier and shuffle: fewer long sequences */
        const int Ts[] = {1, 17, 64, 65, 130}, hds[] = {16, 64, 128};
#else
        const int Ts[] = {1, 17, 64, 65, 128, 300}, hds[] = {16, 64, 128};
#endif
        for (size_t i = 0; i < PC_ARRAY_LEN(Ts); i++)
            for (size_t j = 0; j < PC_ARRAY_LEN(hds); j++) test_attention_case(x, 2, Ts[i], 4, 2, hds[j], 0, tol);
        test_attention_case(x, 1, 65, 8, 1, 32, 0, tol);  /* multi-query */
        test_attention_case(x, 2, 40, 3, 3, 80, 0, tol);  /* multi-head, head_dim not a multiple of 32 */
        /* head_dim whose 8-value columns do not divide a block's 128 threads, so that the
         * tile copies leave some threads idle and end on a partial set of rows */
        test_attention_case(x, 1, 70, 2, 1, 48, 0, tol);
        test_attention_case(x, 1, 70, 2, 2, 112, 0, tol);
        test_attention_case(x, 2, 70, 4, 2, 64, 1, tol);  /* rows not 16-byte aligned */
        test_attention_case(x, 1, 33, 6, 2, 2, 0, tol);   /* tiny heads (fp32 in either mode) */
    }
    /* the bf16 path really ran: its output differs from the fp32 kernels' */
    const double diff = attention_modes_diff(x, ATT_FP32, ATT_BF16);
    char what[128];
    snprintf(what, sizeof what, "attention bf16 differs from fp32 kernels (max %.1e > 1e-5)", diff);
    report(x, what, diff > 1e-5 ? 0.0 : 1.0, 0.5); /* err 1: the bf16 path did not run */
}

/* Two GPU buffers of n floats hold the same bits. */
static void same_bits(ctx *x, const char *what, const float *a, const float *b, size_t n)
{
    float *ha = pc_alloc_f32(n), *hb = pc_alloc_f32(n);
    be_download(x->gpu, ha, a, n);
    be_download(x->gpu, hb, b, n);
    report(x, what, memcmp(ha, hb, n * sizeof(float)) ? 1.0 : 0.0, 0.5);
    free(ha);
    free(hb);
}

/* n16 bf16 values rotated and rounded on the GPU (g) against the CPU's rotation then
 * rounding (c): at least 99% of them bit for bit (a different fp32 rounding of a rotation
 * can move a value across a bf16 rounding boundary), every one within a bf16 ulp. */
static void rope16_vs_cpu(ctx *x, const char *what, const uint16_t *g, const uint16_t *c, size_t n16)
{
    uint16_t *hg = pc_malloc((n16 + 1) * sizeof(uint16_t)), *hcpu = pc_malloc((n16 + 1) * sizeof(uint16_t));
    be_download(x->gpu, (float *)hg, (const float *)g, (n16 + 1) / 2);
    be_download(x->cpu, (float *)hcpu, (const float *)c, (n16 + 1) / 2);
    size_t same = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n16; i++) {
        same += hg[i] == hcpu[i];
        uint32_t a = (uint32_t)hg[i] << 16, b = (uint32_t)hcpu[i] << 16;
        float fa, fb;
        memcpy(&fa, &a, 4);
        memcpy(&fb, &b, 4);
        worst = fmax(worst, fabs((double)fa - fb) / fmax(fabs((double)fb), 1e-30));
    }
    char line[240];
    snprintf(line, sizeof line, "%s: %.4f%% bitwise, worst %.1e", what, 100.0 * same / (double)n16, worst);
    report(x, line, same >= 0.99 * n16 && worst <= 1.0 / 128 ? 0.0 : 1.0, 0.5);
    free(hg);
    free(hcpu);
}

/* rope_bwd_qkv_16: dqkv (N rows of stride (H + 2 KV) hd + pad) rotated back and rounded
 * into the product's unpadded rows, against the CPU's rope_bwd then round_bf16_2d (as
 * rope16_vs_cpu), and bit for bit the GPU's own rope_bwd then round_bf16_2d. */
static void test_rope_bwd16_case(ctx *x, int B, int T, int H, int KV, int hd, int pad)
{
    const int Cu = (H + 2 * KV) * hd, C = Cu + pad, qd = H * hd;
    const size_t N = (size_t)B * T, n16 = N * Cu;
    char what[160];
    pair cs, sn;
    rope_pairs(x, T, hd, &cs, &sn);
    pair d = pair_randn(x, N * C, 1.0f);
    uint16_t *fused = (uint16_t *)be_alloc(x->gpu, (n16 + 1) / 2), *g16 = (uint16_t *)be_alloc(x->gpu, (n16 + 1) / 2),
             *c16 = (uint16_t *)be_alloc(x->cpu, (n16 + 1) / 2);
    x->gpu->ops->rope_bwd_qkv_16(x->gpu, fused, d.g, cs.g, sn.g, B, T, H, KV, hd, C);
    for (int side = 0; side < 2; side++) { /* in place, then rounded into (N, Cu) */
        backend *be = side ? x->gpu : x->cpu;
        float *v = side ? d.g : d.c;
        be->ops->rope_bwd(be, v, side ? cs.g : cs.c, side ? sn.g : sn.c, B, T, H, hd, C);
        be->ops->rope_bwd(be, v + qd, side ? cs.g : cs.c, side ? sn.g : sn.c, B, T, KV, hd, C);
        be->ops->round_bf16_2d(be, side ? g16 : c16, Cu, v, C, (int)N, Cu);
    }
    snprintf(what, sizeof what, "rope_bwd_qkv_16 vs cpu rope_bwd + round B=%d T=%d H=%d KV=%d hd=%d pad=%d", B, T, H,
             KV, hd, pad);
    rope16_vs_cpu(x, what, fused, c16, n16);
    snprintf(what, sizeof what, "rope_bwd_qkv_16 bitwise the gpu's rope_bwd + round hd=%d pad=%d", hd, pad);
    same_bits(x, what, (const float *)g16, (const float *)fused, n16 / 2);
    be_free(x->gpu, fused);
    be_free(x->gpu, g16);
    be_free(x->cpu, c16);
    pair_free(x, &d);
    pair_free(x, &cs);
    pair_free(x, &sn);
}

/* Attention on inputs kept in bf16 (attention_16, rope_qkv_16, attention_fwd_16/bwd_16),
 * q, k, v rows of stride (H + 2 KV) hd + pad:
 *   - rope_qkv_16 against the CPU's rope_fwd then round_bf16_2d into the packed layout:
 *     at least 99% of the values bit for bit (a different fp32 rounding of a rotation can
 *     move a value across a bf16 rounding boundary), every one within a bf16 ulp;
 *   - the GPU's forward and backward from qkv16 bit for bit those of its tensor-core ops
 *     on fp32 inputs rotated by rope_fwd (the same values rounded the same way);
 *   - both against the CPU's fp32 attention on the rotated inputs (TOL_ATT_BF16).
 * With cudnn (backend_cuda_use_cudnn on) the same by cuDNN, but for the backward's bits:
 * cuDNN adds dQ atomically, so its two routes meet only within the CPU's tolerance. */
/* attention_bwd_rope_16 (from out16 in bf16, out_b, and dout rounded to bf16) against
 * attention_bwd_16 on dout's bf16 values widened, into fp32 rows of stride C, then
 * rope_bwd_qkv_16: bit for bit the kernels' two ops (and cuDNN's stand-in's on the
 * emulator, which is deterministic), within TOL_ATT_BF16 of cuDNN's (its dQ sums vary
 * from call to call) */
static void check_bwd_rope16(ctx *x, const char *eng, const pair *dout, const void *out_b, const float *lse_b,
                             const uint16_t *q16, const pair *cs, const pair *sn, int B, int T, int H, int KV, int hd,
                             int pad, int cudnn)
{
    const int Cu = (H + 2 * KV) * hd, C = Cu + pad, qd = H * hd, kvd = KV * hd;
    const size_t N = (size_t)B * T, n16 = N * Cu;
    char what[160];
    float *dqkv = be_alloc(x->gpu, N * C), *wide = be_alloc(x->gpu, 2 * n16), *dout_w = be_alloc(x->gpu, dout->n);
    uint16_t *one = x->gpu->ops->alloc_bf16(x->gpu, n16), *two = x->gpu->ops->alloc_bf16(x->gpu, n16);
    uint16_t *dout16 = x->gpu->ops->alloc_bf16(x->gpu, dout->n);
    x->gpu->ops->round_bf16(x->gpu, dout16, dout->g, dout->n);
    x->gpu->ops->widen_bf16(x->gpu, dout_w, dout16, dout->n);
    x->gpu->ops->attention_bwd_16(x->gpu, dqkv, dqkv + qd, dqkv + qd + kvd, dout_w, out_b, 1, lse_b, q16, B, T, H, KV,
                                  hd, C);
    x->gpu->ops->rope_bwd_qkv_16(x->gpu, two, dqkv, cs->g, sn->g, B, T, H, KV, hd, C);
    x->gpu->ops->attention_bwd_rope_16(x->gpu, one, dqkv, dout16, out_b, 1, lse_b, q16, cs->g, sn->g, B, T, H, KV, hd,
                                       C);
    int bitwise = !cudnn;
#ifdef PC_TEST_EMU
    bitwise = 1;
#endif
    if (bitwise) {
        snprintf(what, sizeof what, "attention_bwd_rope_16 %s bitwise attention_bwd_16 + rope_bwd_qkv_16 hd=%d pad=%d",
                 eng, hd, pad);
        same_bits(x, what, (const float *)one, (const float *)two, n16 / 2);
    } else {
        x->gpu->ops->widen_bf16(x->gpu, wide, one, n16);
        x->gpu->ops->widen_bf16(x->gpu, wide + n16, two, n16);
        float *h = pc_alloc_f32(2 * n16);
        be_download(x->gpu, h, wide, 2 * n16);
        snprintf(what, sizeof what, "attention_bwd_rope_16 %s vs attention_bwd_16 + rope_bwd_qkv_16 hd=%d pad=%d", eng,
                 hd, pad);
        report(x, what, test_rel_max_err(h + n16, h, n16), TOL_ATT_BF16);
        free(h);
    }
    be_free(x->gpu, dqkv), be_free(x->gpu, wide), be_free(x->gpu, dout_w);
    be_free(x->gpu, one), be_free(x->gpu, two), be_free(x->gpu, dout16);
}

static void test_attention16_case(ctx *x, int B, int T, int H, int KV, int hd, int pad, int cudnn)
{
    const char *eng = cudnn ? "cuDNN" : "tc";
    const int Cu = (H + 2 * KV) * hd, C = Cu + pad, qd = H * hd, kvd = KV * hd;
    const size_t N = (size_t)B * T, nq = N * C, no = N * qd, nl = (size_t)B * H * T, n16 = N * Cu;
    char what[160];
    pair cs, sn;
    rope_pairs(x, T, hd, &cs, &sn);
    pair qkv = pair_randn(x, nq, 1.0f);
    uint16_t *q16g = (uint16_t *)be_alloc(x->gpu, (n16 + 1) / 2), *q16c = (uint16_t *)be_alloc(x->cpu, (n16 + 1) / 2);
    x->gpu->ops->rope_qkv_16(x->gpu, q16g, qkv.g, cs.g, sn.g, B, T, H, KV, hd, C);
    /* the fp32 route on both backends: q and k rotated in place */
    for (int side = 0; side < 2; side++) {
        backend *be = side ? x->gpu : x->cpu;
        float *v = side ? qkv.g : qkv.c;
        be->ops->rope_fwd(be, v, side ? cs.g : cs.c, side ? sn.g : sn.c, B, T, H, hd, C);
        be->ops->rope_fwd(be, v + qd, side ? cs.g : cs.c, side ? sn.g : sn.c, B, T, KV, hd, C);
    }
    x->cpu->ops->round_bf16_2d(x->cpu, q16c, qd, qkv.c, C, (int)N, qd);
    x->cpu->ops->round_bf16_2d(x->cpu, q16c + N * qd, kvd, qkv.c + qd, C, (int)N, kvd);
    x->cpu->ops->round_bf16_2d(x->cpu, q16c + N * (qd + kvd), kvd, qkv.c + qd + kvd, C, (int)N, kvd);
    snprintf(what, sizeof what, "rope_qkv_16 vs cpu rope + round hd=%d pad=%d", hd, pad);
    rope16_vs_cpu(x, what, q16g, q16c, n16);

    /* forward: from qkv16 vs the fp32 tensor-core route (bitwise) vs the CPU */
    pair out = pair_randn(x, no, 1.0f), lse = pair_randn(x, nl, 1.0f);
    float *out16 = be_alloc(x->gpu, no), *lse16 = be_alloc(x->gpu, nl);
    x->cpu->ops->attention_fwd(x->cpu, out.c, lse.c, qkv.c, qkv.c + qd, qkv.c + qd + kvd, B, T, H, KV, hd, C);
    x->gpu->ops->attention_fwd(x->gpu, out.g, lse.g, qkv.g, qkv.g + qd, qkv.g + qd + kvd, B, T, H, KV, hd, C);
    x->gpu->ops->attention_fwd_16(x->gpu, out16, 0, lse16, q16g, B, T, H, KV, hd);
    snprintf(what, sizeof what, "attention_fwd bf16 %s vs cpu B=%d T=%d H=%d KV=%d hd=%d pad=%d", eng, B, T, H, KV, hd,
             pad);
    check_pair(x, what, &out, TOL_ATT_BF16);
    pair o16 = {out.c, out16, no};
    snprintf(what, sizeof what, "attention_fwd_16 %s vs cpu hd=%d pad=%d", eng, hd, pad);
    check_pair(x, what, &o16, TOL_ATT_BF16);
    snprintf(what, sizeof what, "attention_fwd_16 out bitwise the fp32-input %s route's hd=%d pad=%d", eng, hd, pad);
    same_bits(x, what, out.g, out16, no);
    snprintf(what, sizeof what, "attention_fwd_16 lse bitwise the fp32-input %s route's hd=%d pad=%d", eng, hd, pad);
    same_bits(x, what, lse.g, lse16, nl);
    /* the output in bf16: the fp32 output rounded, bit for bit (no is even: hd is) */
    uint16_t *out_b = (uint16_t *)be_alloc(x->gpu, no / 2), *r16 = (uint16_t *)be_alloc(x->gpu, no / 2);
    float *lse_b = be_alloc(x->gpu, nl);
    x->gpu->ops->attention_fwd_16(x->gpu, out_b, 1, lse_b, q16g, B, T, H, KV, hd);
    x->gpu->ops->round_bf16(x->gpu, r16, out16, no);
    snprintf(what, sizeof what, "attention_fwd_16 %s out16 bitwise its fp32 output rounded hd=%d pad=%d", eng, hd,
             pad);
    same_bits(x, what, (const float *)r16, (const float *)out_b, no / 2);
    snprintf(what, sizeof what, "attention_fwd_16 out16: lse bitwise hd=%d pad=%d", hd, pad);
    same_bits(x, what, lse16, lse_b, nl);

    /* backward: dqkv (stride C) starts random, so every q, k, v gradient must be written */
    pair dout = pair_randn(x, no, 1.0f), dqkv = pair_randn(x, nq, 1.0f);
    float *d16 = be_alloc(x->gpu, nq);
    be_copy(x->gpu, d16, dqkv.g, nq);
    x->cpu->ops->attention_bwd(x->cpu, dqkv.c, dqkv.c + qd, dqkv.c + qd + kvd, dout.c, out.c, lse.c, qkv.c,
                               qkv.c + qd, qkv.c + qd + kvd, B, T, H, KV, hd, C);
    x->gpu->ops->attention_bwd(x->gpu, dqkv.g, dqkv.g + qd, dqkv.g + qd + kvd, dout.g, out.g, lse.g, qkv.g,
                               qkv.g + qd, qkv.g + qd + kvd, B, T, H, KV, hd, C);
    x->gpu->ops->attention_bwd_16(x->gpu, d16, d16 + qd, d16 + qd + kvd, dout.g, out16, 0, lse16, q16g, B, T, H, KV,
                                  hd, C);
    pair dq16 = {dqkv.c, d16, nq};
    snprintf(what, sizeof what, "attention_bwd_16 %s dq|dk|dv vs cpu hd=%d pad=%d", eng, hd, pad);
    check_pair(x, what, &dq16, TOL_ATT_BF16);
    pair dq32 = {dqkv.c, dqkv.g, nq};
    snprintf(what, sizeof what, "attention_bwd %s (fp32 inputs) dq|dk|dv vs cpu hd=%d pad=%d", eng, hd, pad);
    check_pair(x, what, &dq32, TOL_ATT_BF16);
    snprintf(what, sizeof what, "attention_bwd_16 bitwise the fp32-input tc route's hd=%d pad=%d", hd, pad);
    if (!cudnn) same_bits(x, what, dqkv.g, d16, nq);
    /* D from the bf16 output: the same within bf16 tolerance */
    x->gpu->ops->attention_bwd_16(x->gpu, d16, d16 + qd, d16 + qd + kvd, dout.g, out_b, 1, lse_b, q16g, B, T, H, KV,
                                  hd, C);
    snprintf(what, sizeof what, "attention_bwd_16 %s from out16 vs cpu hd=%d pad=%d", eng, hd, pad);
    check_pair(x, what, &dq16, TOL_ATT_BF16);
    check_bwd_rope16(x, eng, &dout, out_b, lse_b, q16g, &cs, &sn, B, T, H, KV, hd, pad, cudnn);
    be_free(x->gpu, out_b);
    be_free(x->gpu, r16);
    be_free(x->gpu, lse_b);
    be_free(x->gpu, d16);
    be_free(x->gpu, out16);
    be_free(x->gpu, lse16);
    be_free(x->gpu, q16g);
    be_free(x->cpu, q16c);
    pair_free(x, &dout);
    pair_free(x, &dqkv);
    pair_free(x, &out);
    pair_free(x, &lse);
    pair_free(x, &qkv);
    pair_free(x, &cs);
    pair_free(x, &sn);
}

static void test_attention16(ctx *x)
{
    backend_cuda_set_attention(x->gpu, 0);
    report(x, "attention_16: no with fp32 attention", x->gpu->ops->attention_16(x->gpu, 64) ? 1.0 : 0.0, 0.5);
    backend_cuda_set_attention(x->gpu, 1);
    report(x, "attention_16: yes with bf16 attention at head_dim 64, no at 18 or 144",
           x->gpu->ops->attention_16(x->gpu, 64) && !x->gpu->ops->attention_16(x->gpu, 18) &&
                   !x->gpu->ops->attention_16(x->gpu, 144)
               ? 0.0
               : 1.0,
           0.5);
    report(x, "attention_16: the CPU backend has none", x->cpu->ops->attention_16 ? 1.0 : 0.0, 0.5);
    test_attention16_case(x, 2, 65, 4, 2, 64, 0, 0);
    test_attention16_case(x, 1, 70, 2, 1, 48, 1, 0); /* fp32 rows not 16-byte aligned: one pair a thread */
    test_attention16_case(x, 2, 17, 2, 2, 128, 0, 0);
    report(x, "rope_bwd_qkv_16: the CPU backend has none", x->cpu->ops->rope_bwd_qkv_16 ? 1.0 : 0.0, 0.5);
    report(x, "attention_bwd_rope_16: the CPU backend has none", x->cpu->ops->attention_bwd_rope_16 ? 1.0 : 0.0, 0.5);
    test_rope_bwd16_case(x, 2, 65, 4, 2, 64, 0);
    test_rope_bwd16_case(x, 1, 70, 2, 1, 48, 1); /* fp32 rows not 16-byte aligned: one pair a thread */
    test_rope_bwd16_case(x, 2, 17, 2, 2, 128, 0);
    backend_cuda_set_attention(x->gpu, 0);
}

/* ---------------------------------------------------------------- attention by cuDNN */

/* backend_cuda_use_cudnn refused (err: why): the backend as it was, bf16 attention on
 * the kernels */
static void cudnn_refused(ctx *x, const char *before, const char *err)
{
    char what[700];
    snprintf(what, sizeof what, "a refused cuDNN (%s) leaves the backend as it was (%s)", err, x->gpu->info);
    report(x, what, strcmp(before, x->gpu->info) ? 1.0 : 0.0, 0.5);
}

/* backend_cuda_use_cudnn: attention by cuDNN's fused flash attention against the CPU's
 * fp32 (TOL_ATT_BF16, as the tensor-core kernels), on the fp32-input routes (their
 * rounded copies) and the bf16 ones, at ragged T, GQA, MQA and head_dim 32 to 128. Where
 * cuDNN cannot load it is refused with the reason and the kernels stay. The emulator's
 * build has no cuDNN: there it must be refused, and then the same checks run the
 * backend's cuDNN route around the stand-in of tests/gpu/cudnn_emu.cpp (PC_EMU_CUDNN=1:
 * the kernels behind cuDNN's contract of bf16 results). */
static void test_attention_cudnn(ctx *x)
{
    char err[512] = "";
    backend_cuda_set_attention(x->gpu, 1);
    char before[sizeof x->gpu->info];
    snprintf(before, sizeof before, "%s", x->gpu->info);
#ifdef PC_TEST_EMU
    unsetenv("PC_EMU_CUDNN");
    int rc = backend_cuda_use_cudnn(x->gpu, err, (int)sizeof err);
    char why[700];
    snprintf(why, sizeof why, "cuDNN refused in a build without it, with the reason (%s)", err);
    report(x, why, rc != 0 && strstr(err, "no cuDNN") ? 0.0 : 1.0, 0.5);
    cudnn_refused(x, before, err);
    setenv("PC_EMU_CUDNN", "1", 1);
#endif
    if (backend_cuda_use_cudnn(x->gpu, err, (int)sizeof err) != 0) {
        printf("cuDNN attention not tested: %s\n", err);
        cudnn_refused(x, before, err);
        backend_cuda_set_attention(x->gpu, 0);
        return;
    }
    char what[300];
    snprintf(what, sizeof what, "backend info names cuDNN (%s)", x->gpu->info);
    report(x, what, strstr(x->gpu->info, "by cuDNN") ? 0.0 : 1.0, 0.5);
    /* each shape's plans are compiled at their first call (seconds each): few shapes,
     * (T, head_dim) with GQA 4/2 */
#ifdef PC_TEST_EMU /* a thread switch per barrier and shuffle: shorter still */
    const int shapes[][2] = {{1, 64}, {17, 64}, {65, 64}, {65, 128}};
#else
    const int shapes[][2] = {{1, 64}, {17, 64}, {65, 64}, {300, 64}, {65, 128}, {300, 128}};
#endif
    for (size_t i = 0; i < PC_ARRAY_LEN(shapes); i++)
        test_attention_case(x, 2, shapes[i][0], 4, 2, shapes[i][1], 0, TOL_ATT_BF16);
    test_attention_case(x, 1, 65, 8, 1, 32, 0, TOL_ATT_BF16); /* multi-query */
    test_attention_case(x, 2, 40, 3, 3, 80, 0, TOL_ATT_BF16); /* multi-head */
    test_attention_case(x, 1, 70, 2, 1, 48, 0, TOL_ATT_BF16);
    test_attention_case(x, 2, 70, 4, 2, 64, 1, TOL_ATT_BF16); /* fp32 rows not 16-byte aligned */
    test_attention16_case(x, 2, 65, 4, 2, 64, 0, 1);
#ifdef PC_TEST_EMU
    test_attention16_case(x, 1, 70, 2, 1, 128, 1, 1);
#else
    test_attention16_case(x, 2, 1000, 8, 2, 128, 1, 1);
#endif
    /* cuDNN's, not the kernels': the same inputs give other bits */
    const double diff = attention_modes_diff(x, ATT_BF16, ATT_CUDNN);
    snprintf(what, sizeof what, "cuDNN's forward is not the tensor-core kernels' (max difference %.1e > 0)", diff);
    report(x, what, diff > 0.0 ? 0.0 : 1.0, 0.5);
    backend_cuda_use_cudnn(x->gpu, err, (int)sizeof err);
    backend_cuda_set_attention(x->gpu, 0);
    report(x, "backend_cuda_set_attention turns cuDNN off", strstr(x->gpu->info, "cuDNN") ? 1.0 : 0.0, 0.5);
#ifdef PC_TEST_EMU
    unsetenv("PC_EMU_CUDNN");
#endif
}

#ifdef PC_TEST_EMU
/* backend_cuda_cudnn_trial around the stand-in whose every call fails
 * (PC_EMU_CUDNN=refuse, as a shape cuDNN has no engine for): inside a trial the failed
 * call returns and the trial's end gives its reason; a trial without a failure ends with
 * 0; a backend that is not CUDA's is refused. (Outside a trial the call ends the process,
 * as before.) */
static void test_cudnn_trial(ctx *x)
{
    backend *g = x->gpu;
    char err[768] = "", what[900];
    setenv("PC_EMU_CUDNN", "refuse", 1);
    backend_cuda_set_attention(g, 1);
    report(x, "the refusing stand-in loads", backend_cuda_use_cudnn(g, err, (int)sizeof err) == 0 ? 0.0 : 1.0, 0.5);
    const int B = 1, T = 17, H = 2, KV = 1, hd = 64;
    uint16_t *qkv16 = g->ops->alloc_bf16(g, (size_t)B * T * (H + 2 * KV) * hd); /* (B T, (H + 2 KV) hd) */
    uint16_t *out16 = g->ops->alloc_bf16(g, (size_t)B * T * H * hd);            /* (B T, H hd) */
    float *lse = g->ops->alloc(g, (size_t)B * H * T);                           /* (B, H, T) */
    backend_cuda_cudnn_trial(g, 1, err, (int)sizeof err);
    g->ops->attention_fwd_16(g, out16, 1, lse, qkv16, B, T, H, KV, hd);
    int rc = backend_cuda_cudnn_trial(g, 0, err, (int)sizeof err);
    snprintf(what, sizeof what, "a failed cuDNN call in a trial returns; the trial's end gives its reason (%s)", err);
    report(x, what, rc == -1 && strstr(err, "no engine for B 1 T 17 H 2 KV 1 hd 64") ? 0.0 : 1.0, 0.5);
    backend_cuda_cudnn_trial(g, 1, err, (int)sizeof err);
    report(x, "a trial without a failure ends with 0", backend_cuda_cudnn_trial(g, 0, err, (int)sizeof err) == 0 ? 0.0 : 1.0,
           0.5);
    report(x, "a trial on the CPU backend is refused",
           backend_cuda_cudnn_trial(x->cpu, 1, err, (int)sizeof err) == -1 ? 0.0 : 1.0, 0.5);
    g->ops->free(g, qkv16);
    g->ops->free(g, out16);
    g->ops->free(g, lse);
    backend_cuda_set_attention(g, 0);
    unsetenv("PC_EMU_CUDNN");
}
#endif

/* ---------------------------------------------------------------- attention variants */

/* Whether attn_tc_tuned_report lists kernel ("forward", "dQ", "dK dV") at this shape. */
static int tuned_listed(const char *kernel, int B, int T, int H, int KV, int hd)
{
    char want[96], line[512];
    snprintf(want, sizeof want, "attention_tc %s B %d T %d H %d KV %d hd %d:", kernel, B, T, H, KV, hd);
    FILE *f = tmpfile();
    if (!f) return 0;
    attn_tc_tuned_report(f);
    rewind(f);
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) found = !strncmp(line, want, strlen(want));
    fclose(f);
    return found;
}

/* The tensor-core kernels' variants (attn_tc_set_variants) give the same bits: one row
 * group a warp and K, V fragments taken each pass (groups 1, dkv 1) against two groups
 * with the fragments kept at 3 and at 2 blocks a multiprocessor, and against the variants
 * tuned per shape (0, 0): out (fp32 and bf16), lse and dq|dk|dv from the same bf16 q, k,
 * v and dO. Above head_dim 64 only the first variants are compiled and every setting runs
 * them; up to it, tuning lists the shape. */
static void test_attention_variants_case(ctx *x, int B, int T, int H, int KV, int hd)
{
    const int C = (H + 2 * KV) * hd, qd = H * hd, kvd = KV * hd;
    const size_t N = (size_t)B * T, no = N * qd, nl = (size_t)B * H * T, nq = N * C;
    char what[192];
    pair cs, sn;
    rope_pairs(x, T, hd, &cs, &sn);
    pair qkv = pair_randn(x, nq, 1.0f), dout = pair_randn(x, no, 1.0f);
    uint16_t *q16 = (uint16_t *)be_alloc(x->gpu, (nq + 1) / 2);
    x->gpu->ops->rope_qkv_16(x->gpu, q16, qkv.g, cs.g, sn.g, B, T, H, KV, hd, C);
    enum { NV = 4 };
    const attn_tc_variants set[NV] = {{1, 1}, {2, 2}, {2, 3}, {0, 0}};
    const size_t n[4] = {no, no / 2, nl, nq}; /* out, out16 (no even: hd is), lse, dq|dk|dv (stride C) */
    const char *name[4] = {"out", "out16", "lse", "dq|dk|dv"};
    float *r[NV][4];
    const attn_tc_variants was = attn_tc_set_variants(set[0]);
    for (int v = 0; v < NV; v++) {
        attn_tc_set_variants(set[v]);
        for (int i = 0; i < 4; i++) r[v][i] = be_alloc(x->gpu, n[i]);
        be_copy(x->gpu, r[v][3], qkv.g, nq); /* the same start: every value must be written */
        x->gpu->ops->attention_fwd_16(x->gpu, r[v][1], 1, r[v][2], q16, B, T, H, KV, hd);
        x->gpu->ops->attention_fwd_16(x->gpu, r[v][0], 0, r[v][2], q16, B, T, H, KV, hd);
        x->gpu->ops->attention_bwd_16(x->gpu, r[v][3], r[v][3] + qd, r[v][3] + qd + kvd, dout.g, r[v][0], 0, r[v][2],
                                      q16, B, T, H, KV, hd, C);
    }
    attn_tc_set_variants(was);
    for (int v = 1; v < NV; v++)
        for (int i = 0; i < 4; i++) {
            snprintf(what, sizeof what,
                     "attention variants groups %d dkv %d (0: tuned): %s bitwise groups 1 dkv 1's B=%d T=%d H=%d KV=%d "
                     "hd=%d",
                     set[v].groups, set[v].dkv, name[i], B, T, H, KV, hd);
            same_bits(x, what, r[0][i], r[v][i], n[i]);
        }
    if (hd <= 64) {
        snprintf(what, sizeof what, "attention variants tuned: forward, dQ, dK dV at B=%d T=%d H=%d KV=%d hd=%d listed",
                 B, T, H, KV, hd);
        report(x, what,
               tuned_listed("forward", B, T, H, KV, hd) && tuned_listed("dQ", B, T, H, KV, hd) &&
                       tuned_listed("dK dV", B, T, H, KV, hd)
                   ? 0.0
                   : 1.0,
               0.5);
    }
    for (int v = 0; v < NV; v++)
        for (int i = 0; i < 4; i++) be_free(x->gpu, r[v][i]);
    be_free(x->gpu, q16);
    pair_free(x, &qkv);
    pair_free(x, &dout);
    pair_free(x, &cs);
    pair_free(x, &sn);
}

/* Ragged last blocks of 128 query rows (T 130: two rows; 200), head_dim 16 and 48 (8-value
 * columns that do not divide a block's threads), a group of 3 query heads a KV head, and
 * head_dim 128 (the first variants whatever the setting). */
static void test_attention_variants(ctx *x)
{
    backend_cuda_set_attention(x->gpu, 1);
    test_attention_variants_case(x, 2, 130, 4, 2, 64);
    test_attention_variants_case(x, 1, 200, 3, 1, 16);
    test_attention_variants_case(x, 1, 65, 2, 2, 48);
    test_attention_variants_case(x, 1, 40, 2, 1, 128);
#ifndef PC_TEST_EMU
    test_attention_variants_case(x, 2, 1000, 8, 2, 64);
#endif
    backend_cuda_set_attention(x->gpu, 0);
}

/* ---------------------------------------------------------------- swiglu, losses */

/* f 333: one value a thread; 336: four (16-byte loads, cuda/vec.h). The fp32 ops as
 * they are and with round_in (gate, up and the backward's dout rounded to bf16 as read,
 * as the model's bf16 products want them), and the *_16 ops on them in bf16, against the
 * rounded case. */
static void test_swiglu(ctx *x)
{
    const int fs[] = {333, 336};
    for (size_t k = 0; k < PC_ARRAY_LEN(fs); k++) {
        const int N = 70, f = fs[k], ld = 2 * f;
        char what[96];
        pair gu = pair_randn(x, (size_t)N * ld, 2.0f), out = pair_randn(x, (size_t)N * f, 1.0f);
        pair dout = pair_randn(x, (size_t)N * f, 1.0f), dgu = pair_randn(x, (size_t)N * ld, 1.0f);
        for (int r = 0; r < 2; r++) { /* round_in 0, then 1 (what the *_16 ops are checked against) */
            x->cpu->ops->swiglu_fwd(x->cpu, out.c, gu.c, gu.c + f, N, f, ld, r);
            x->gpu->ops->swiglu_fwd(x->gpu, out.g, gu.g, gu.g + f, N, f, ld, r);
            snprintf(what, sizeof what, "swiglu_fwd (gate|up of one buffer, f=%d, round_in %d)", f, r);
            check_pair(x, what, &out, TOL_F32);
            x->cpu->ops->swiglu_bwd(x->cpu, dgu.c, dgu.c + f, dout.c, gu.c, gu.c + f, N, f, ld, r);
            x->gpu->ops->swiglu_bwd(x->gpu, dgu.g, dgu.g + f, dout.g, gu.g, gu.g + f, N, f, ld, r);
            snprintf(what, sizeof what, "swiglu_bwd (f=%d, round_in %d)", f, r);
            check_pair(x, what, &dgu, TOL_F32);
        }
        uint16_t *gu16 = x->gpu->ops->alloc_bf16(x->gpu, gu.n), *o16 = x->gpu->ops->alloc_bf16(x->gpu, out.n);
        x->gpu->ops->round_bf16(x->gpu, gu16, gu.g, gu.n); /* gate | up in bf16 */
        x->gpu->ops->swiglu_fwd_16(x->gpu, o16, gu16, gu16 + f, N, f, ld);
        snprintf(what, sizeof what, "swiglu_fwd_16 (f=%d)", f);
        check_out16(x, what, o16, 1, out.n, &out);
        uint16_t *d16 = x->gpu->ops->alloc_bf16(x->gpu, dgu.n); /* (N, 2f): dgate | dup as in dgu */
        uint16_t *dout16 = x->gpu->ops->alloc_bf16(x->gpu, dout.n);
        x->gpu->ops->round_bf16(x->gpu, dout16, dout.g, dout.n);
        x->gpu->ops->swiglu_bwd_16(x->gpu, d16, d16 + f, dout16, gu16, gu16 + f, N, f, ld);
        snprintf(what, sizeof what, "swiglu_bwd_16 (f=%d)", f);
        check_out16(x, what, d16, 1, dgu.n, &dgu);
        be_free(x->gpu, o16);
        be_free(x->gpu, d16);
        be_free(x->gpu, dout16);
        be_free(x->gpu, gu16);
        pair_free(x, &gu);
        pair_free(x, &out);
        pair_free(x, &dout);
        pair_free(x, &dgu);
    }
}

static void make_targets(ctx *x, int32_t *tg, int N, int V)
{
    for (int n = 0; n < N; n++) tg[n] = (int32_t)(pc_rng_u64(&x->rng) % (uint64_t)V);
    tg[1] = -1;
    tg[N - 1] = -100;
    tg[0] = V - 1;
}

/* xent_bwd_16 on copies of the logits on each backend: the bf16 values, row n at bf16
 * offset 2 n V of the buffer, within a bf16 rounding (2^-8 of the largest) of the CPU's
 * fp32 dlogits d. */
static void check_xent_bwd_16(ctx *x, const pair *logits, const pair *lse, const ipair *t, const pair *d, int N, int V,
                              float scale)
{
    size_t n = (size_t)N * V;
    float *want = pc_alloc_f32(n), *got = pc_alloc_f32(n);
    uint16_t *h16 = pc_malloc(sizeof(float) * n);
    be_download(x->cpu, want, d->c, n);
    for (int side = 0; side < 2; side++) {
        backend *be = side ? x->gpu : x->cpu;
        float *buf = be_alloc(be, n);
        be_copy(be, buf, side ? logits->g : logits->c, n);
        be->ops->xent_bwd_16(be, buf, side ? lse->g : lse->c, side ? t->g : t->c, N, V, scale);
        be->ops->download_raw(be, h16, buf, sizeof(float) * n);
        for (size_t r = 0; r < (size_t)N; r++)
            for (size_t j = 0; j < (size_t)V; j++) got[r * V + j] = pc_bf16_to_f32(h16[2 * r * V + j]);
        report(x, side ? "xent_bwd_16 gpu (bf16 over the logits, stride 2V)" : "xent_bwd_16 cpu (bf16, stride 2V)",
               test_rel_max_err(want, got, n), 4e-3);
        be_free(be, buf);
    }
    free(want);
    free(got);
    free(h16);
}

static void test_xent_case(ctx *x, int V)
{
    const int N = 41;
    int32_t tg[41];
    make_targets(x, tg, N, V);
    ipair t = ipair_from(x, tg, N);
    pair logits = pair_randn(x, (size_t)N * V, 3.0f), lse = pair_randn(x, (size_t)N, 1.0f);
    int64_t nv_c = -1, nv_g = -1;
    double sc = x->cpu->ops->xent_fwd(x->cpu, lse.c, logits.c, t.c, N, V, &nv_c);
    double sg = x->gpu->ops->xent_fwd(x->gpu, lse.g, logits.g, t.g, N, V, &nv_g);
    char what[64];
    snprintf(what, sizeof what, "xent_fwd loss sum (V=%d)", V);
    check_scalar(x, what, sc, sg, TOL_SUM);
    report(x, "xent_fwd valid count", (double)(nv_c != nv_g || nv_c != N - 2), 0.0);
    snprintf(what, sizeof what, "xent_fwd lse (V=%d)", V);
    check_pair(x, what, &lse, TOL_F32);
    float scale = 1.5f / (float)nv_c;
    pair d = pair_randn(x, (size_t)N * V, 1.0f);
    x->cpu->ops->xent_bwd(x->cpu, d.c, logits.c, lse.c, t.c, N, V, scale);
    x->gpu->ops->xent_bwd(x->gpu, d.g, logits.g, lse.g, t.g, N, V, scale);
    check_pair(x, "xent_bwd (separate output, ignored rows zero)", &d, TOL_F32);
    check_xent_bwd_16(x, &logits, &lse, &t, &d, N, V, scale);
    x->cpu->ops->xent_bwd(x->cpu, logits.c, logits.c, lse.c, t.c, N, V, scale);
    x->gpu->ops->xent_bwd(x->gpu, logits.g, logits.g, lse.g, t.g, N, V, scale);
    check_pair(x, "xent_bwd (in place over the logits)", &logits, TOL_F32);
    pair_free(x, &logits);
    pair_free(x, &lse);
    pair_free(x, &d);
    ipair_free(x, &t);
}

/* V 5003: the forward reads a value at a time; 5004: four (cuda/vec.h) */
static void test_xent(ctx *x)
{
    for (int V = 5003; V <= 5004; V++) test_xent_case(x, V);
}

static void test_distill(ctx *x)
{
    const int N = 23, V = 4099;
    int32_t tg[23];
    make_targets(x, tg, N, V);
    ipair t = ipair_from(x, tg, N);
    const float alphas[] = {0.0f, 0.5f, 1.0f}, temps[] = {1.0f, 2.0f};
    for (size_t a = 0; a < PC_ARRAY_LEN(alphas); a++)
        for (size_t k = 0; k < PC_ARRAY_LEN(temps); k++) {
            pair z = pair_randn(x, (size_t)N * V, 2.0f), te = pair_randn(x, (size_t)N * V, 2.0f);
            float scale = 1.0f / (float)(N - 2), *z16 = be_alloc(x->gpu, (size_t)N * V);
            be_copy(x->gpu, z16, z.g, (size_t)N * V);
            double lc = x->cpu->ops->distill(x->cpu, z.c, te.c, t.c, N, V, alphas[a], temps[k], scale);
            double lg = x->gpu->ops->distill(x->gpu, z.g, te.g, t.g, N, V, alphas[a], temps[k], scale);
            double l16 = x->gpu->ops->distill_16(x->gpu, z16, te.g, t.g, N, V, alphas[a], temps[k], scale);
            char what[96];
            snprintf(what, sizeof what, "distill loss sum (alpha %.1f, T %.0f)", (double)alphas[a], (double)temps[k]);
            check_scalar(x, what, lc, lg, TOL_SUM);
            snprintf(what, sizeof what, "distill dlogits (alpha %.1f, T %.0f)", (double)alphas[a], (double)temps[k]);
            check_pair(x, what, &z, TOL_F32);
            snprintf(what, sizeof what, "distill_16 loss sum == distill's (alpha %.1f, T %.0f)", (double)alphas[a],
                     (double)temps[k]);
            check_scalar(x, what, lg, l16, 0.0);
            snprintf(what, sizeof what, "distill_16 (alpha %.1f, T %.0f, stride 2V)", (double)alphas[a],
                     (double)temps[k]);
            check_out16(x, what, z16, (size_t)N, 2 * (size_t)V, &z);
            be_free(x->gpu, z16);
            pair_free(x, &z);
            pair_free(x, &te);
        }
    ipair_free(x, &t);
}

/* ---------------------------------------------------------------- elementwise, adamw */

static void test_elementwise(ctx *x)
{
    const size_t n = 1000003;
    pair a = pair_randn(x, n, 1.0f), b = pair_randn(x, n, 1.0f), y = pair_randn(x, n, 1.0f);
    x->cpu->ops->add(x->cpu, y.c, a.c, b.c, n);
    x->gpu->ops->add(x->gpu, y.g, a.g, b.g, n);
    check_pair(x, "add", &y, TOL_F32);
    x->cpu->ops->scale(x->cpu, y.c, -0.37f, n);
    x->gpu->ops->scale(x->gpu, y.g, -0.37f, n);
    check_pair(x, "scale", &y, TOL_F32);
    x->cpu->ops->axpy(x->cpu, y.c, 2.5f, a.c, n);
    x->gpu->ops->axpy(x->gpu, y.g, 2.5f, a.g, n);
    check_pair(x, "axpy", &y, TOL_F32);
    check_scalar(x, "sumsq (1e6 elements)", x->cpu->ops->sumsq(x->cpu, y.c, n), x->gpu->ops->sumsq(x->gpu, y.g, n),
                 TOL_SUM);
    check_scalar(x, "sumsq (3 elements)", x->cpu->ops->sumsq(x->cpu, y.c, 3), x->gpu->ops->sumsq(x->gpu, y.g, 3),
                 TOL_SUM);
    pair_free(x, &a);
    pair_free(x, &b);
    pair_free(x, &y);

    /* add2d: a (37, 29) block between row strides 41 and 53, copy then accumulate */
    pair dst = pair_randn(x, 37 * 41, 1.0f), src = pair_randn(x, 37 * 53, 1.0f);
    x->cpu->ops->add2d(x->cpu, dst.c + 3, 41, src.c + 5, 53, 37, 29, 0.0f);
    x->gpu->ops->add2d(x->gpu, dst.g + 3, 41, src.g + 5, 53, 37, 29, 0.0f);
    check_pair(x, "add2d beta 0 (strided copy; columns outside untouched)", &dst, 0.0);
    x->cpu->ops->add2d(x->cpu, dst.c, 41, src.c, 53, 37, 29, 1.0f);
    x->gpu->ops->add2d(x->gpu, dst.g, 41, src.g, 53, 37, 29, 1.0f);
    check_pair(x, "add2d beta 1 (accumulate)", &dst, TOL_F32);
    /* a (37, 28) block between strides 40 and 52, 16-byte aligned: 4 values a load */
    x->cpu->ops->add2d(x->cpu, dst.c + 4, 40, src.c + 8, 52, 37, 28, 0.5f);
    x->gpu->ops->add2d(x->gpu, dst.g + 4, 40, src.g + 8, 52, 37, 28, 0.5f);
    check_pair(x, "add2d beta 0.5 (4 values a load)", &dst, TOL_F32);
    pair_free(x, &dst);
    pair_free(x, &src);

    /* bf16 storage widened to fp32: exact */
    const size_t nb = 100003;
    uint16_t *hb = pc_malloc(nb * sizeof(uint16_t));
    for (size_t i = 0; i < nb; i++) hb[i] = pc_f32_to_bf16(3.0f * pc_rng_normal(&x->rng));
    uint16_t *bc = x->cpu->ops->alloc_bf16(x->cpu, nb), *bg = x->gpu->ops->alloc_bf16(x->gpu, nb);
    x->cpu->ops->upload_bf16(x->cpu, bc, hb, nb);
    x->gpu->ops->upload_bf16(x->gpu, bg, hb, nb);
    pair wide = pair_randn(x, nb, 1.0f);
    x->cpu->ops->widen_bf16(x->cpu, wide.c, bc, nb);
    x->gpu->ops->widen_bf16(x->gpu, wide.g, bg, nb);
    check_pair(x, "widen_bf16 (exact)", &wide, 0.0);
    /* four at a time (nb - 3 values from an aligned start), one at a time (from bg + 1,
     * 2-byte aligned) */
    for (int k = 0; k < 2; k++) {
        const size_t off = (size_t)k, n = nb - 3;
        x->cpu->ops->widen_bf16(x->cpu, wide.c, bc + off, n);
        x->gpu->ops->widen_bf16(x->gpu, wide.g, bg + off, n);
        check_pair(x, k ? "widen_bf16 (exact, from an odd element: 1 at a time)" : "widen_bf16 (exact, 4 at a time)",
                   &wide, 0.0);
    }
    /* fp32 rounded to bf16 (nearest even) and widened back: the same bits on both; nb
     * values one at a time, nb - 3 four at a time (cuda/vec.h) */
    pair f = pair_randn(x, nb, 3.0f);
    for (size_t n = nb - 3; n <= nb; n += 3) {
        char what[64];
        x->cpu->ops->round_bf16(x->cpu, bc, f.c, n);
        x->gpu->ops->round_bf16(x->gpu, bg, f.g, n);
        x->cpu->ops->widen_bf16(x->cpu, wide.c, bc, nb);
        x->gpu->ops->widen_bf16(x->gpu, wide.g, bg, nb);
        snprintf(what, sizeof what, "round_bf16 (nearest even, n=%zu)", n);
        check_pair(x, what, &wide, 0.0);
    }
    /* (37, w) blocks between row strides: columns outside them untouched. Four at a time
     * where the widths, the strides and the alignment allow it (the second), else one. */
    static const struct {
        int dst_off, ld_dst, src_off, ld, w;
    } blk[] = {{3, 41, 5, 53, 29}, {4, 40, 8, 52, 28}, {2, 40, 5, 52, 28}};
    for (size_t k = 0; k < PC_ARRAY_LEN(blk); k++) {
        char what[96];
        x->cpu->ops->round_bf16_2d(x->cpu, bc + blk[k].dst_off, blk[k].ld_dst, f.c + blk[k].src_off, blk[k].ld, 37,
                                   blk[k].w);
        x->gpu->ops->round_bf16_2d(x->gpu, bg + blk[k].dst_off, blk[k].ld_dst, f.g + blk[k].src_off, blk[k].ld, 37,
                                   blk[k].w);
        x->cpu->ops->widen_bf16(x->cpu, wide.c, bc, nb);
        x->gpu->ops->widen_bf16(x->gpu, wide.g, bg, nb);
        snprintf(what, sizeof what, "round_bf16_2d (strided %d -> %d, width %d)", blk[k].ld, blk[k].ld_dst, blk[k].w);
        check_pair(x, what, &wide, 0.0);
    }
    pair_free(x, &f);
    pair_free(x, &wide);
    /* raw transfers: an odd number of bytes there and back, the next byte untouched */
    unsigned char out[8] = {1, 2, 3, 4, 5, 6, 7, 8}, fill[8] = {0}, back[8] = {0};
    x->gpu->ops->upload_raw(x->gpu, bg, fill, 8);
    x->gpu->ops->upload_raw(x->gpu, bg, out, 7);
    x->gpu->ops->download_raw(x->gpu, back, bg, 8);
    x->checks++;
    int raw_ok = memcmp(back, out, 7) == 0 && back[7] == 0;
    if (!raw_ok) x->failures++;
    printf("%-4s upload_raw/download_raw (7 bytes)\n", raw_ok ? "ok" : "FAIL");
    be_free(x->cpu, bc);
    be_free(x->gpu, bg);
    free(hb);
}

static void test_adamw(ctx *x)
{
    const size_t n = 100001;
    pair p = pair_randn(x, n, 1.0f), m = pair_randn(x, n, 0.01f);
    float *hv = host_randn(x, n, 0.001f);
    for (size_t i = 0; i < n; i++) hv[i] = hv[i] * hv[i]; /* second moments are >= 0 */
    pair v = pair_from(x, hv, n);
    free(hv);
    for (int64_t step = 1; step <= 3; step++) {
        pair g = pair_randn(x, n, 0.1f);
        x->cpu->ops->adamw(x->cpu, p.c, g.c, m.c, v.c, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.8f, step);
        x->gpu->ops->adamw(x->gpu, p.g, g.g, m.g, v.g, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.8f, step);
        pair_free(x, &g);
    }
    check_pair(x, "adamw p after 3 steps", &p, TOL_F32);
    check_pair(x, "adamw m after 3 steps", &m, TOL_F32);
    check_pair(x, "adamw v after 3 steps", &v, TOL_F32);
    pair_free(x, &p);
    pair_free(x, &m);
    pair_free(x, &v);
}

/* ---------------------------------------------------------------- profiler */

/* Calls and milliseconds of region `name` in a backend_cuda_profile_report table (-1
 * calls: no such line). */
static long profiled(const char *table, const char *name, double *ms)
{
    size_t n = strlen(name);
    for (const char *l = table; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        long calls;
        if (!strncmp(l, name, n) && l[n] == ' ' && sscanf(l + 28, "%ld %lf", &calls, ms) == 2) return calls;
    }
    return -1;
}

static char *profile_table(backend *be)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    backend_cuda_profile_report(be, f, 1.0);
    fclose(f);
    return buf;
}

/* backend_cuda_profile: each op's device work counted under its region with the calls
 * made (a bf16 product in blocks: a cuBLAS product per row block, and one rounding per
 * row block of A plus one of the whole B), times that are read only after their events
 * completed (the emulator refuses an early read), results bitwise those of the same ops
 * unprofiled, and no report once it is off. */
static void test_profile(ctx *x)
{
    const int M = 128, N = 64, K = 32, d = 64; /* C (M,N) normed as (M*N/d, d) */
    float *hA = host_randn(x, (size_t)M * K, 1.0f), *hB = host_randn(x, (size_t)K * N, 1.0f);
    float *hw = host_randn(x, (size_t)d, 1.0f), *out[2][2];
    backend *g = x->gpu;
    float *A = be_alloc(g, (size_t)M * K), *B = be_alloc(g, (size_t)K * N), *w = be_alloc(g, (size_t)d);
    float *rstd = be_alloc(g, (size_t)M * N / d), *C = be_alloc(g, (size_t)M * N), *D = be_alloc(g, (size_t)M * N);
    be_upload(g, A, hA, (size_t)M * K);
    be_upload(g, B, hB, (size_t)K * N);
    be_upload(g, w, hw, (size_t)d);
    char *table = NULL;
    for (int on = 0; on < 2; on++) {
        backend_cuda_profile(g, on);
        g->ops->gemm(g, 0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N); /* fp32 */
        out[on][0] = pc_alloc_f32((size_t)M * N);
        be_download(g, out[on][0], C, (size_t)M * N);
        g->ops->set_matmul(g, MATMUL_BF16);
        backend_cuda_set_bf16_block(g, (size_t)64 * K); /* 2 blocks of 64 rows of A; B whole */
        g->ops->gemm(g, 0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
        backend_cuda_set_bf16_block(g, BACKEND_CUDA_BF16_BLOCK);
        g->ops->set_matmul(g, MATMUL_FP32);
        for (int i = 0; i < 2; i++) g->ops->rmsnorm_fwd(g, D, rstd, C, w, M * N / d, d, 1e-5f);
        out[on][1] = pc_alloc_f32((size_t)M * N);
        be_download(g, out[on][1], D, (size_t)M * N);
        if (on) table = profile_table(g);
    }
    printf("%s", table);
    static const struct {
        const char *name;
        long calls;
    } want[] = {{"gemm fp32", 1}, {"gemm bf16", 2}, {"gemm operand to bf16", 3}, {"rmsnorm_fwd", 2}};
    for (size_t i = 0; i < PC_ARRAY_LEN(want); i++) {
        double ms = -1.0;
        long calls = profiled(table, want[i].name, &ms);
        char what[96];
        snprintf(what, sizeof what, "profile: %s, %ld calls (want %ld), %.4f ms", want[i].name, calls, want[i].calls,
                 ms);
        report(x, what, calls == want[i].calls && ms >= 0.0 ? 0.0 : 1.0, 0.0);
    }
    const char *all = strstr(table, "\nall regions ");
    double total = 0.0;
    report(x, "profile: the regions' total time is positive",
           all && sscanf(all + 1 + 28, "%lf", &total) == 1 && total > 0.0 ? 0.0 : 1.0, 0.0);
    report(x, "profile: results bitwise those of the unprofiled ops",
           memcmp(out[0][0], out[1][0], sizeof(float) * M * N) || memcmp(out[0][1], out[1][1], sizeof(float) * M * N)
               ? 1.0
               : 0.0,
           0.0);
    free(table);
    backend_cuda_profile(g, 0);
    table = profile_table(g);
    report(x, "profile: off reports nothing", table && *table ? 1.0 : 0.0, 0.0);
    free(table);
    for (int on = 0; on < 2; on++) free(out[on][0]), free(out[on][1]);
    free(hA), free(hB), free(hw);
    be_free(g, A), be_free(g, B), be_free(g, w), be_free(g, rstd), be_free(g, C), be_free(g, D);
}

int main(void)
{
    if (pc_cuda_device_count() == 0) {
        printf("no CUDA device: skipping\n");
        return 77;
    }
    char err[256];
    ctx x = {0};
    x.gpu = backend_cuda_create(0, err, (int)sizeof err);
    if (!x.gpu) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    x.cpu = backend_cpu_create(1);
    pc_rng_seed(&x.rng, 20240601);
    printf("cpu: %s\ncuda: %s\n", x.cpu->info, x.gpu->info);

    test_memory(&x);
    test_gemm(&x, MATMUL_FP32);
    test_gemm(&x, MATMUL_TF32);
    test_gemm(&x, MATMUL_BF16);
    test_gemm_bf16_blocks(&x);
    test_gemm_span(&x);
    test_embedding(&x);
    test_rmsnorm(&x);
    test_rope(&x);
    test_attention(&x);
    test_attention16(&x);
    test_attention_variants(&x);
    test_attention_cudnn(&x);
#ifdef PC_TEST_EMU
    test_cudnn_trial(&x);
#endif
    test_swiglu(&x);
    test_xent(&x);
    test_distill(&x);
    test_elementwise(&x);
    test_adamw(&x);
    test_profile(&x);

    backend_destroy(x.gpu);
    backend_destroy(x.cpu);
    printf("%d of %d checks failed\n", x.failures, x.checks);
    return x.failures ? 1 : 0;
}
