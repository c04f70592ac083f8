/* backend_cpu: the fp32 CPU implementation of the backend op table (backend.h).
 *
 * Buffers are 64-byte aligned host memory; upload/download are memcpy. Every matrix
 * product, including the per-head attention products QK^T and PV, is a cblas_sgemm on
 * strided views of the activation buffers, so nothing is copied into head-major
 * layouts. The remaining loops are simple single-threaded passes; attention
 * recomputes its probabilities in the backward pass from the saved log-sum-exp, so the
 * saved state is (B,H,T) instead of (B,H,T,T). */
#include "backend.h"
#include "vexp.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

typedef struct cpu_impl {
    float *scratch; /* attention work space, 2 x (T,T) */
    size_t scratch_n;
    matmul_mode matmul;
    float *round_buf; /* MATMUL_BF16: bf16-rounded copies of the gemm inputs */
    size_t round_n;
} cpu_impl;

static float *cpu_scratch(backend *be, size_t n)
{
    cpu_impl *c = be->impl;
    if (c->scratch_n < n) {
        free(c->scratch);
        c->scratch = pc_alloc_f32(n);
        c->scratch_n = n;
    }
    return c->scratch;
}

static void cpu_destroy(backend *be)
{
    cpu_impl *c = be->impl;
    free(c->scratch);
    free(c->round_buf);
    free(c);
    free(be);
}

/* ---- memory ---- */

static float *cpu_alloc(backend *be, size_t n)
{
    (void)be;
    return pc_alloc_f32(n ? n : 1);
}

static int32_t *cpu_alloc_i32(backend *be, size_t n)
{
    (void)be;
    return pc_calloc(n ? n : 1, sizeof(int32_t));
}

static void cpu_free(backend *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_zero(backend *be, float *x, size_t n)
{
    (void)be;
    memset(x, 0, n * sizeof(float));
}

static void cpu_copy(backend *be, float *dst, const float *src, size_t n)
{
    (void)be;
    if (dst != src) memmove(dst, src, n * sizeof(float));
}

static void cpu_add2d(backend *be, float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols,
                      float beta)
{
    (void)be;
    for (int r = 0; r < rows; r++) {
        float *d = dst + (size_t)r * ld_dst;
        const float *s = src + (size_t)r * ld_src;
        if (beta == 0.0f)
            memmove(d, s, sizeof(float) * (size_t)cols);
        else
            for (int c = 0; c < cols; c++) d[c] = s[c] + beta * d[c];
    }
}

static uint16_t *cpu_alloc_bf16(backend *be, size_t n)
{
    (void)be;
    return pc_calloc(n ? n : 1, sizeof(uint16_t));
}

static void cpu_upload_bf16(backend *be, uint16_t *dst, const uint16_t *src, size_t n)
{
    (void)be;
    memcpy(dst, src, n * sizeof(uint16_t));
}

static void cpu_widen_bf16(backend *be, float *dst, const uint16_t *src, size_t n)
{
    (void)be;
    uint32_t *d = (uint32_t *)dst; /* bf16 is the high half of an fp32 */
    for (size_t i = 0; i < n; i++) d[i] = (uint32_t)src[i] << 16;
}

static void cpu_round_bf16(backend *be, uint16_t *dst, const float *src, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) dst[i] = pc_f32_to_bf16(src[i]);
}

static void cpu_round_bf16_2d(backend *be, uint16_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols)
{
    for (int r = 0; r < rows; r++)
        cpu_round_bf16(be, dst + (size_t)r * ld_dst, src + (size_t)r * ld_src, (size_t)cols);
}

static void cpu_upload_i32(backend *be, int32_t *dst, const int32_t *src, size_t n)
{
    (void)be;
    memcpy(dst, src, n * sizeof(int32_t));
}

/* host memory both sides: upload and download are the same copy */
static void cpu_copy_raw(backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}

static void cpu_sync(backend *be) { (void)be; }

/* ---- matrix products ---- */

static void cpu_set_info(backend *be)
{
    snprintf(be->info, sizeof(be->info), "OpenBLAS core %s, %d thread(s)%s", openblas_get_corename(), be->threads,
             ((cpu_impl *)be->impl)->matmul == MATMUL_BF16 ? ", gemm inputs rounded to bf16" : "");
}

static int cpu_set_matmul(backend *be, matmul_mode mode)
{
    ((cpu_impl *)be->impl)->matmul = mode;
    be->matmul = mode;
    cpu_set_info(be);
    return 0;
}

static void sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}

/* (rows, cols) of src (row stride ld) rounded to bf16 values into dst (row stride cols). */
static void round_bf16(float *dst, const float *src, int rows, int cols, int ld)
{
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++)
            dst[(size_t)r * cols + j] = pc_bf16_to_f32(pc_f32_to_bf16(src[(size_t)r * ld + j]));
}

/* round_buf with room for n floats */
static float *round_space(cpu_impl *c, size_t n)
{
    if (c->round_n < n) {
        free(c->round_buf);
        c->round_buf = pc_alloc_f32(n);
        c->round_n = n;
    }
    return c->round_buf;
}

static void cpu_gemm(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc)
{
    cpu_impl *c = be->impl;
    if (c->matmul != MATMUL_BF16 || M <= 0 || N <= 0 || K <= 0) {
        sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int ra = ta ? K : M, ca = ta ? M : K, rb = tb ? N : K, cb = tb ? K : N; /* stored shapes of A and B */
    size_t na = (size_t)ra * ca;
    float *a = round_space(c, na + (size_t)rb * cb), *b = a + na;
    round_bf16(a, A, ra, ca, lda);
    round_bf16(b, B, rb, cb, ldb);
    sgemm(ta, tb, M, N, K, alpha, a, ca, b, cb, beta, C, ldc);
}

/* (rows, cols) of bf16 src (row stride ld) widened into dst (row stride cols). */
static void widen_rows(backend *be, float *dst, const uint16_t *src, int rows, int cols, int ld)
{
    for (int r = 0; r < rows; r++) cpu_widen_bf16(be, dst + (size_t)r * cols, src + (size_t)r * ld, (size_t)cols);
}

/* A bf16 product on fp32 copies: B's bf16 values widened, A's either widened (A16) or
 * rounded (A): the same products as cpu_gemm in MATMUL_BF16 on those values, bit for bit. */
static void gemm_widened(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                         const uint16_t *A16, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    int ra = ta ? K : M, ca = ta ? M : K, rb = tb ? N : K, cb = tb ? K : N; /* stored shapes of A and B */
    size_t na = (size_t)ra * ca;
    float *a = round_space(be->impl, na + (size_t)rb * cb + 1), *b = a + na;
    if (A16)
        widen_rows(be, a, A16, ra, ca, lda);
    else
        round_bf16(a, A, ra, ca, lda);
    widen_rows(be, b, B, rb, cb, ldb);
    sgemm(ta, tb, M, N, K, alpha, a, PC_MAX(ca, 1), b, PC_MAX(cb, 1), beta, C, ldc); /* K = 0: C = beta C */
}

static void cpu_gemm_w16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                         const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    gemm_widened(be, ta, tb, M, N, K, alpha, A, NULL, lda, B, ldb, beta, C, ldc);
}

static void cpu_gemm_16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                        const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    gemm_widened(be, ta, tb, M, N, K, alpha, NULL, A, lda, B, ldb, beta, C, ldc);
}

static void cpu_gemm_16_to16(backend *be, int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A,
                             int lda, const uint16_t *B, int ldb, uint16_t *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    float *c = pc_alloc_f32((size_t)M * N); /* (M,N) the fp32 sums, then rounded */
    gemm_widened(be, ta, tb, M, N, K, alpha, NULL, A, lda, B, ldb, 0.0f, c, N);
    cpu_round_bf16_2d(be, C, ldc, c, N, M, N);
    free(c);
}

static void cpu_gemm_batched(backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                             int64_t sa, const float *B, int ldb, int64_t sb, float beta, float *C, int ldc,
                             int64_t sc, int batch)
{
    (void)be;
    for (int i = 0; i < batch; i++)
        sgemm(ta, tb, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc, ldc);
}

/* ---- embedding ---- */

static void cpu_embedding_fwd(backend *be, float *out, const float *table, const int32_t *tokens, int N, int d)
{
    (void)be;
    for (int n = 0; n < N; n++) // (N,) -> (N,d)
        memcpy(out + (size_t)n * d, table + (size_t)tokens[n] * d, (size_t)d * sizeof(float));
}

static void cpu_embedding_fwd_w16(backend *be, float *out, const uint16_t *table, const int32_t *tokens, int N,
                                  int d)
{
    for (int n = 0; n < N; n++) // (N,) -> (N,d)
        cpu_widen_bf16(be, out + (size_t)n * d, table + (size_t)tokens[n] * d, (size_t)d);
}

static void cpu_embedding_bwd(backend *be, float *dtable, const float *dout, const int32_t *tokens, int N, int d)
{
    (void)be;
    for (int n = 0; n < N; n++) {
        float *row = dtable + (size_t)tokens[n] * d;
        const float *g = dout + (size_t)n * d;
        for (int i = 0; i < d; i++) row[i] += g[i];
    }
}

/* ---- rmsnorm ---- */

/* One row: o (d) = w * x * rstd; returns rstd. */
static float rmsnorm_row(float *o, const float *xr, const float *w, int d, float eps)
{
    float ss = 0.0f;
    for (int i = 0; i < d; i++) ss += xr[i] * xr[i];
    float r = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = 0; i < d; i++) o[i] = w[i] * (xr[i] * r);
    return r;
}

static void cpu_rmsnorm_fwd(backend *be, float *out, float *rstd, const float *x, const float *w, int N, int d,
                            float eps)
{
    (void)be;
    for (int n = 0; n < N; n++) // (N,d) -> (N,d)
        rstd[n] = rmsnorm_row(out + (size_t)n * d, x + (size_t)n * d, w, d, eps);
}

static void cpu_rmsnorm_fwd_16(backend *be, uint16_t *out, float *rstd, const float *x, const float *w, int N, int d,
                               float eps, float *x_copy)
{
    float *row = pc_alloc_f32((size_t)d); /* (d) one row in fp32, then rounded */
    for (int n = 0; n < N; n++) { // (N,d) -> (N,d) bf16
        rstd[n] = rmsnorm_row(row, x + (size_t)n * d, w, d, eps);
        cpu_round_bf16(be, out + (size_t)n * d, row, (size_t)d);
        if (x_copy) memcpy(x_copy + (size_t)n * d, x + (size_t)n * d, sizeof(float) * (size_t)d);
    }
    free(row);
}

static void cpu_rmsnorm_bwd(backend *be, float *dx, float *dw, const float *dout, const float *x, const float *w,
                            const float *rstd, int N, int d)
{
    (void)be;
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * d;
        const float *g = dout + (size_t)n * d;
        float *dxr = dx + (size_t)n * d;
        float r = rstd[n];
        // xhat = x*r; dxhat = g*w; dx = r * (dxhat - xhat * mean(dxhat*xhat))
        float dot = 0.0f;
        for (int i = 0; i < d; i++) dot += g[i] * w[i] * xr[i];
        float c = dot * r * r / (float)d;
        for (int i = 0; i < d; i++) {
            dxr[i] += r * (g[i] * w[i] - xr[i] * c);
            dw[i] += g[i] * xr[i] * r;
        }
    }
}

/* ---- rope ---- */

static void rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int T, int n_heads, int hd, int ld,
                       float sign)
{
    int half = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *c = cos_t + (size_t)t * half;
            const float *s = sin_t + (size_t)t * half;
            float *row = x + ((size_t)b * T + t) * ld;
            for (int h = 0; h < n_heads; h++) {
                float *xh = row + (size_t)h * hd; // (hd,) pairs (i, i+half)
                for (int i = 0; i < half; i++) {
                    float x1 = xh[i], x2 = xh[i + half], si = sign * s[i];
                    xh[i] = x1 * c[i] - x2 * si;
                    xh[i + half] = x2 * c[i] + x1 * si;
                }
            }
        }
}

static void cpu_rope_fwd(backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                         int hd, int ld)
{
    (void)be;
    rope_apply(x, cos_t, sin_t, B, T, n_heads, hd, ld, 1.0f);
}

static void cpu_rope_bwd(backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                         int hd, int ld)
{
    (void)be;
    rope_apply(dx, cos_t, sin_t, B, T, n_heads, hd, ld, -1.0f);
}

/* ---- attention ---- */

/* p (T,T) holds scale*QK^T on entry; on exit the causal softmax probabilities (0 above
 * the diagonal). lse (T) receives the row log-sum-exp. */
static void softmax_causal(float *p, float *lse, int T)
{
    for (int i = 0; i < T; i++) {
        float *r = p + (size_t)i * T;
        float mx = r[0];
        for (int j = 1; j <= i; j++) mx = r[j] > mx ? r[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j <= i; j++) {
            r[j] = expf(r[j] - mx);
            sum += r[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j <= i; j++) r[j] *= inv;
        for (int j = i + 1; j < T; j++) r[j] = 0.0f;
        lse[i] = mx + logf(sum);
    }
}

static void cpu_attention_fwd(backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                              int B, int T, int H, int KV, int hd, int ld)
{
    float *p = cpu_scratch(be, (size_t)T * T);
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KV, ldo = H * hd;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / group;
            const float *qh = q + (size_t)b * T * ld + (size_t)h * hd; // (T,hd) stride ld
            const float *kh = k + (size_t)b * T * ld + (size_t)g * hd; // (T,hd) stride ld
            const float *vh = v + (size_t)b * T * ld + (size_t)g * hd; // (T,hd) stride ld
            float *oh = out + (size_t)b * T * ldo + (size_t)h * hd;    // (T,hd) stride H*hd
            // (T,hd) x (T,hd)^T -> (T,T)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qh, ld, kh, ld, 0.0f, p, T);
            softmax_causal(p, lse + ((size_t)b * H + h) * T, T);
            // (T,T) x (T,hd) -> (T,hd)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, p, T, vh, ld, 0.0f, oh, ldo);
        }
}

static void zero_strided(float *x, int rows, int cols, int ld)
{
    for (int r = 0; r < rows; r++) memset(x + (size_t)r * ld, 0, (size_t)cols * sizeof(float));
}

static void cpu_attention_bwd(backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                              const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                              int KV, int hd, int ld)
{
    float *p = cpu_scratch(be, 2 * (size_t)T * T);
    float *dp = p + (size_t)T * T;
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KV, ldo = H * hd;
    zero_strided(dk, B * T, KV * hd, ld);
    zero_strided(dv, B * T, KV * hd, ld);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / group;
            size_t base = (size_t)b * T * ld;
            const float *qh = q + base + (size_t)h * hd, *kh = k + base + (size_t)g * hd;
            const float *vh = v + base + (size_t)g * hd;
            float *dqh = dq + base + (size_t)h * hd, *dkh = dk + base + (size_t)g * hd;
            float *dvh = dv + base + (size_t)g * hd;
            const float *oh = out + (size_t)b * T * ldo + (size_t)h * hd;
            const float *doh = dout + (size_t)b * T * ldo + (size_t)h * hd;
            const float *lh = lse + ((size_t)b * H + h) * T;
            // recompute P (T,T) = exp(scale*QK^T - lse), causal
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qh, ld, kh, ld, 0.0f, p, T);
            for (int i = 0; i < T; i++) {
                float *r = p + (size_t)i * T;
                for (int j = 0; j <= i; j++) r[j] = expf(r[j] - lh[i]);
                for (int j = i + 1; j < T; j++) r[j] = 0.0f;
            }
            // dV (T,hd) += P^T (T,T) x dO (T,hd)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, p, T, doh, ldo, 1.0f, dvh, ld);
            // dP (T,T) = dO (T,hd) x V^T
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, doh, ldo, vh, ld, 0.0f, dp, T);
            // dS = P * (dP - rowsum(dO*O)), written over dP
            for (int i = 0; i < T; i++) {
                const float *o_i = oh + (size_t)i * ldo, *do_i = doh + (size_t)i * ldo;
                float D = 0.0f;
                for (int c = 0; c < hd; c++) D += o_i[c] * do_i[c];
                float *pr = p + (size_t)i * T, *dr = dp + (size_t)i * T;
                for (int j = 0; j <= i; j++) dr[j] = pr[j] * (dr[j] - D);
                for (int j = i + 1; j < T; j++) dr[j] = 0.0f;
            }
            // dQ (T,hd) = scale * dS (T,T) x K (T,hd)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dp, T, kh, ld, 0.0f, dqh, ld);
            // dK (T,hd) += scale * dS^T x Q
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dp, T, qh, ld, 1.0f, dkh, ld);
        }
}

/* ---- swiglu ---- */

/* One row: o (f) = silu(g) * u. */
static void swiglu_row(float *o, const float *g, const float *u, int f)
{
    vexp_sigmoid(o, g, f);
    for (int i = 0; i < f; i++) o[i] *= g[i] * u[i];
}

/* Row n's gate and up (row stride ld_in) as swiglu reads them: in place, or with round_in
 * rounded to bf16 values into gu (2, f) */
static void read_gate_up(const float **g, const float **u, float *gu, const float *gate, const float *up, size_t n,
                         int f, int ld_in, int round_in)
{
    *g = gate + n * ld_in, *u = up + n * ld_in;
    if (!round_in) return;
    round_bf16(gu, *g, 1, f, f); /* (1, f) rows */
    round_bf16(gu + f, *u, 1, f, f);
    *g = gu, *u = gu + f;
}

static void cpu_swiglu_fwd(backend *be, float *out, const float *gate, const float *up, int N, int f, int ld_in,
                           int round_in)
{
    (void)be;
    float *gu = round_in ? pc_alloc_f32(2 * (size_t)f) : NULL; /* (2, f) one row's gate, up rounded */
    for (int n = 0; n < N; n++) { // (N,f),(N,f) -> (N,f)
        const float *g, *u;
        read_gate_up(&g, &u, gu, gate, up, (size_t)n, f, ld_in, round_in);
        swiglu_row(out + (size_t)n * f, g, u, f);
    }
    free(gu);
}

/* Row n's gate and up (f each, row stride ld_in in bf16) widened into gu (2, f). */
static void widen_gate_up(backend *be, float *gu, const uint16_t *gate, const uint16_t *up, size_t n, int f, int ld_in)
{
    cpu_widen_bf16(be, gu, gate + n * ld_in, (size_t)f);
    cpu_widen_bf16(be, gu + f, up + n * ld_in, (size_t)f);
}

static void cpu_swiglu_fwd_16(backend *be, uint16_t *out, const uint16_t *gate, const uint16_t *up, int N, int f,
                              int ld_in)
{
    float *rows = pc_alloc_f32(3 * (size_t)f); /* (3, f): one row's gate, up widened, then its output in fp32 */
    for (int n = 0; n < N; n++) { // (N,f),(N,f) bf16 -> (N,f) bf16
        widen_gate_up(be, rows, gate, up, (size_t)n, f, ld_in);
        swiglu_row(rows + 2 * f, rows, rows + f, f);
        cpu_round_bf16(be, out + (size_t)n * f, rows + 2 * f, (size_t)f);
    }
    free(rows);
}

/* One row's gradients dg, du (f) from d (f) and the row's g, u; sigs (f) scratch. */
static void swiglu_bwd_row(float *dg, float *du, const float *d, const float *g, const float *u, float *sigs, int f)
{
    vexp_sigmoid(sigs, g, f);
    for (int i = 0; i < f; i++) {
        float sig = sigs[i];
        float silu = g[i] * sig;
        float gi = d[i];
        dg[i] = gi * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
        du[i] = gi * silu;
    }
}

static void cpu_swiglu_bwd(backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, int N, int f, int ld_in, int round_in)
{
    (void)be;
    float *rows = pc_alloc_f32(4 * (size_t)f); /* (4, f): one row's sigmoids, gate, up and dout rounded */
    for (int n = 0; n < N; n++) {
        const size_t o = (size_t)n * ld_in;
        const float *g, *u, *d = dout + (size_t)n * f;
        read_gate_up(&g, &u, rows + f, gate, up, (size_t)n, f, ld_in, round_in);
        if (round_in) {
            round_bf16(rows + 3 * f, d, 1, f, f); /* (1, f) */
            d = rows + 3 * f;
        }
        swiglu_bwd_row(dgate + o, dup + o, d, g, u, rows, f);
    }
    free(rows);
}

static void cpu_swiglu_bwd_16(backend *be, uint16_t *dgate, uint16_t *dup, const uint16_t *dout, const uint16_t *gate,
                              const uint16_t *up, int N, int f, int ld_in)
{
    float *rows = pc_alloc_f32(6 * (size_t)f); /* (6, f): one row's gate, up widened, dgate, dup, the sigmoids, dout */
    for (int n = 0; n < N; n++) {
        const size_t o = (size_t)n * ld_in;
        widen_gate_up(be, rows, gate, up, (size_t)n, f, ld_in);
        cpu_widen_bf16(be, rows + 5 * f, dout + (size_t)n * f, (size_t)f);
        swiglu_bwd_row(rows + 2 * f, rows + 3 * f, rows + 5 * f, rows, rows + f, rows + 4 * f, f);
        cpu_round_bf16(be, dgate + o, rows + 2 * f, (size_t)f);
        cpu_round_bf16(be, dup + o, rows + 3 * f, (size_t)f);
    }
    free(rows);
}

/* ---- cross-entropy ---- */

static double cpu_xent_fwd(backend *be, float *lse, const float *logits, const int32_t *targets, int N, int V,
                           int64_t *n_valid)
{
    (void)be;
    double total = 0.0;
    int64_t cnt = 0;
    for (int n = 0; n < N; n++) { // (N,V) -> (N)
        const float *r = logits + (size_t)n * V;
        float mx = r[0];
        for (int j = 1; j < V; j++) mx = r[j] > mx ? r[j] : mx;
        lse[n] = mx + logf(vexp_sum(r, V, mx));
        if (targets[n] >= 0) {
            total += (double)lse[n] - r[targets[n]];
            cnt++;
        }
    }
    if (n_valid) *n_valid = cnt;
    return total;
}

static void cpu_xent_bwd(backend *be, float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                         int N, int V, float scale)
{
    (void)be;
    for (int n = 0; n < N; n++) {
        const float *r = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        if (targets[n] < 0) {
            memset(d, 0, (size_t)V * sizeof(float));
            continue;
        }
        vexp_scaled(d, r, V, lse[n], scale);
        d[targets[n]] -= scale;
    }
}

/* Each row of x (N,V) rounded to bf16 into the first half of its own bytes (a bf16 matrix
 * of row stride 2V), in order, a piece at a time through local copies: a piece's bf16
 * cover fp32 elements below the piece's end, all read by then. */
static void rows_to_bf16_in_place(float *logits, int N, int V)
{
    enum { PIECE = 64 };
    float f[PIECE];
    uint16_t h[PIECE];
    for (int n = 0; n < N; n++) {
        char *row = (char *)(logits + (size_t)n * V);
        for (int j0 = 0; j0 < V; j0 += PIECE) {
            int k = PC_MIN(PIECE, V - j0);
            memcpy(f, row + 4 * (size_t)j0, sizeof(float) * (size_t)k);
            for (int j = 0; j < k; j++) h[j] = pc_f32_to_bf16(f[j]);
            memcpy(row + 2 * (size_t)j0, h, sizeof(uint16_t) * (size_t)k);
        }
    }
}

static void cpu_xent_bwd_16(backend *be, float *logits, const float *lse, const int32_t *targets, int N, int V,
                            float scale)
{
    cpu_xent_bwd(be, logits, logits, lse, targets, N, V, scale);
    rows_to_bf16_in_place(logits, N, V);
}

/* ---- distillation ---- */

/* log-sum-exp of x/T over one row */
static double row_lse(const float *x, int V, float T)
{
    float mx = x[0];
    for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    double sum = 0.0;
    for (int j = 0; j < V; j++) sum += exp((double)(x[j] - mx) / T);
    return (double)mx / T + log(sum);
}

static double cpu_distill(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                          float alpha, float T, float scale)
{
    (void)be;
    double total = 0.0;
    for (int n = 0; n < N; n++) { // (N,V) student z, teacher t
        float *z = logits + (size_t)n * V;
        const float *t = teacher + (size_t)n * V;
        if (targets[n] < 0) {
            memset(z, 0, (size_t)V * sizeof(float));
            continue;
        }
        double lse = row_lse(z, V, 1.0f), lse_zt = row_lse(z, V, T), lse_tt = row_lse(t, V, T);
        double kl = 0.0;
        for (int j = 0; j < V; j++) { // KL(p_t || p_s) at temperature T
            double log_pt = (double)t[j] / T - lse_tt, log_ps = (double)z[j] / T - lse_zt;
            kl += exp(log_pt) * (log_pt - log_ps);
        }
        total += (1.0 - alpha) * (lse - z[targets[n]]) + (double)alpha * T * T * kl;
        for (int j = 0; j < V; j++) {
            double ps = exp((double)z[j] - lse), ps_t = exp((double)z[j] / T - lse_zt),
                   pt_t = exp((double)t[j] / T - lse_tt);
            z[j] = (float)(scale * ((1.0 - alpha) * ps + (double)alpha * T * (ps_t - pt_t)));
        }
        z[targets[n]] -= (float)(scale * (1.0 - alpha));
    }
    return total;
}

static double cpu_distill_16(backend *be, float *logits, const float *teacher, const int32_t *targets, int N, int V,
                             float alpha, float T, float scale)
{
    double total = cpu_distill(be, logits, teacher, targets, N, V, alpha, T, scale);
    rows_to_bf16_in_place(logits, N, V);
    return total;
}

/* ---- elementwise ---- */

static void cpu_add(backend *be, float *y, const float *a, const float *b, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

static void cpu_scale(backend *be, float *x, float s, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

static void cpu_axpy(backend *be, float *y, float alpha, const float *x, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

static double cpu_sumsq(backend *be, const float *x, size_t n)
{
    (void)be;
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

static void cpu_adamw(backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, float grad_scale, int64_t step)
{
    (void)be;
    double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    float step_size = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float decay = 1.0f - lr * weight_decay;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float denom = sqrtf(v[i]) * inv_sqrt_bc2 + eps;
        p[i] = p[i] * decay - step_size * m[i] / denom;
    }
}

static const backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .alloc_i32 = cpu_alloc_i32,
    .free = cpu_free,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .upload = cpu_copy,
    .download = cpu_copy,
    .upload_i32 = cpu_upload_i32,
    .upload_raw = cpu_copy_raw,
    .download_raw = cpu_copy_raw,
    .alloc_bf16 = cpu_alloc_bf16,
    .upload_bf16 = cpu_upload_bf16,
    .widen_bf16 = cpu_widen_bf16,
    .round_bf16 = cpu_round_bf16,
    .round_bf16_2d = cpu_round_bf16_2d,
    .sync = cpu_sync,
    .set_matmul = cpu_set_matmul,
    .gemm = cpu_gemm,
    .gemm_w16 = cpu_gemm_w16,
    .gemm_16 = cpu_gemm_16,
    .gemm_16_to16 = cpu_gemm_16_to16,
    .gemm_batched = cpu_gemm_batched,
    .embedding_fwd = cpu_embedding_fwd,
    .embedding_fwd_w16 = cpu_embedding_fwd_w16,
    .embedding_bwd = cpu_embedding_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_fwd_16 = cpu_rmsnorm_fwd_16,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope_fwd = cpu_rope_fwd,
    .rope_bwd = cpu_rope_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_fwd_16 = cpu_swiglu_fwd_16,
    .swiglu_bwd = cpu_swiglu_bwd,
    .swiglu_bwd_16 = cpu_swiglu_bwd_16,
    .xent_fwd = cpu_xent_fwd,
    .xent_bwd = cpu_xent_bwd,
    .xent_bwd_16 = cpu_xent_bwd_16,
    .distill = cpu_distill,
    .distill_16 = cpu_distill_16,
    .add2d = cpu_add2d,
    .add = cpu_add,
    .scale = cpu_scale,
    .axpy = cpu_axpy,
    .sumsq = cpu_sumsq,
    .adamw = cpu_adamw,
};

backend *backend_cpu_create(int threads)
{
    backend *be = pc_calloc(1, sizeof(*be));
    be->ops = &cpu_ops;
    be->impl = pc_calloc(1, sizeof(cpu_impl));
    be->host_memory = 1;
    if (threads > 0) openblas_set_num_threads(threads);
    be->threads = threads > 0 ? threads : openblas_get_num_threads();
    cpu_set_info(be);
    return be;
}

int backend_cpu_better_coretype(char *out, size_t n)
{
    if (getenv("OPENBLAS_CORETYPE")) return 0;
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    const char *core = openblas_get_corename();
    if (!avx512 || !core) return 0;
    if (strcasecmp(core, "Haswell") != 0 && strcasecmp(core, "Zen") != 0 && strcasecmp(core, "Sandybridge") != 0)
        return 0;
    snprintf(out, n, "SKYLAKEX");
    return 1;
}

void backend_destroy(backend *be)
{
    if (be) be->ops->destroy(be);
}

/* ---- rope tables (host) ---- */

void rope_tables_host(float *cos_t, float *sin_t, int T, int hd, double theta, const char *scaling_type,
                      double factor, double low_freq_factor, double high_freq_factor, int original_max_pos)
{
    int half = hd / 2;
    float *inv_freq = pc_alloc_f32((size_t)half);
    // float32 arithmetic in the same order as transformers' _compute_default_rope_parameters
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)hd);
    if (scaling_type && strcmp(scaling_type, "llama3") == 0) {
        // _compute_llama3_parameters
        float old_ctx = (float)original_max_pos;
        float low_wl = (float)(original_max_pos / low_freq_factor);
        float high_wl = (float)(original_max_pos / high_freq_factor);
        for (int i = 0; i < half; i++) {
            float f = inv_freq[i];
            float wavelen = (float)(2.0 * M_PI) / f;
            float fl = wavelen > low_wl ? f / (float)factor : f;
            float smooth = (old_ctx / wavelen - (float)low_freq_factor) / (float)(high_freq_factor - low_freq_factor);
            float smoothed = (1.0f - smooth) * fl / (float)factor + smooth * fl;
            int medium = !(wavelen < high_wl) && !(wavelen > low_wl);
            inv_freq[i] = medium ? smoothed : fl;
        }
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float ang = inv_freq[i] * (float)t;
            cos_t[(size_t)t * half + i] = (float)cos((double)ang);
            sin_t[(size_t)t * half + i] = (float)sin((double)ang);
        }
    free(inv_freq);
}
