/* test_backend_guard: cmocka units for the guarded CPU backend (backend_guard_create).
 *
 * Every op of backend_ops runs on small random inputs, with slices and aliasing
 * arguments, on the guarded and on the plain CPU backend; the downloaded outputs and
 * returned values must be bitwise equal. In forked children (stderr on a pipe): a host
 * dereference of a guarded buffer must die of SIGSEGV, an op given a host pointer must
 * abort naming the op and the argument, and an upload/download whose host side is a
 * guarded buffer, or a free of an interior pointer, must abort naming the op. add2d
 * with beta 0 and 1 is checked against a hand loop. */
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend.h"
#include "util.h"

/* ---- helpers ---- */

static void fill(float *x, size_t n, uint64_t seed, float s)
{
    pc_rng r;
    pc_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = s * pc_rng_normal(&r);
}

/* Device buffer of n random values (scale s). */
static float *dev_rand(backend *be, size_t n, uint64_t seed, float s)
{
    float *h = pc_alloc_f32(n);
    fill(h, n, seed, s);
    float *d = be_alloc(be, n);
    be_upload(be, d, h, n);
    free(h);
    return d;
}

/* Device tokens (n) in [0, V); with `ignore`, every third one is -1. */
static int32_t *dev_tokens(backend *be, int n, uint64_t seed, int V, int ignore)
{
    int32_t *h = pc_calloc((size_t)n, sizeof(int32_t));
    pc_rng r;
    pc_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) h[i] = ignore && i % 3 == 1 ? -1 : (int32_t)(pc_rng_u64(&r) % (uint64_t)V);
    int32_t *d = be_alloc_i32(be, (size_t)n);
    be->ops->upload_i32(be, d, h, (size_t)n);
    free(h);
    return d;
}

/* Outputs of one op run: downloaded floats and returned values, in call order. */
typedef struct outv {
    float *v;
    size_t n, cap;
    double ret[8];
    int n_ret;
} outv;

static float *out_reserve(outv *o, size_t n)
{
    if (o->n + n > o->cap) {
        o->cap = 2 * (o->n + n);
        o->v = pc_realloc(o->v, o->cap * sizeof(float));
    }
    o->n += n;
    return o->v + o->n - n;
}

static void out_fetch(backend *be, outv *o, const float *dev, size_t n) { be_download(be, out_reserve(o, n), dev, n); }

static void out_ret(outv *o, double r)
{
    assert_true(o->n_ret < 8);
    o->ret[o->n_ret++] = r;
}

/* ---- one function per op: the same inputs on any backend, outputs into o ---- */

static void op_zero(backend *be, outv *o)
{
    float *x = dev_rand(be, 37, 1, 1);
    be_zero(be, x + 5, 20);
    out_fetch(be, o, x, 37);
    be_free(be, x);
}

static void op_copy(backend *be, outv *o)
{
    float *a = dev_rand(be, 40, 2, 1), *b = dev_rand(be, 40, 3, 1);
    be_copy(be, b + 3, a + 1, 30);
    be_copy(be, a, a, 40);      /* dst == src */
    be_copy(be, a + 2, a, 20); /* overlapping, same buffer */
    out_fetch(be, o, a, 40);
    out_fetch(be, o, b, 40);
    be_free(be, a), be_free(be, b);
}

static void op_upload_download(backend *be, outv *o)
{
    float h[30];
    fill(h, 30, 4, 1);
    float *a = be_alloc(be, 50); /* zero-filled */
    be_upload(be, a + 10, h, 30);
    be->ops->sync(be);
    out_fetch(be, o, a, 50);
    float *back = out_reserve(o, 12); /* a slice, then a whole buffer */
    be_download(be, back, a + 15, 12);
    out_fetch(be, o, a, 50);
    be_free(be, a);
}

static void op_upload_i32(backend *be, outv *o)
{
    int32_t vals[10] = {3, -1, 7, 0, 2147483647, -2147483647, 5, 9, 11, 13};
    int32_t *t = be_alloc_i32(be, 20); /* zero-filled */
    out_fetch(be, o, (const float *)(const void *)t, 20);
    be->ops->upload_i32(be, t + 4, vals, 10);
    out_fetch(be, o, (const float *)(const void *)t, 20);
    be_free(be, t);
}

static void op_gemm(backend *be, outv *o)
{
    int M = 5, N = 7, K = 3, pad = 2, off = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            float *A = dev_rand(be, 81 + off, 10 + 2 * ta + tb, 1), *B = dev_rand(be, 81 + off, 20 + 2 * ta + tb, 1);
            float *C = dev_rand(be, 5 * 9 + off, 30 + 2 * ta + tb, 1);
            // op(A) (M,K) x op(B) (K,N) -> C (M,N) stride ldc, all at an offset
            be_gemm(be, ta, tb, M, N, K, 0.5f, A + off, lda, B + off, ldb, 2.0f, C + off, ldc);
            out_fetch(be, o, C, 5 * 9 + off);
            be_gemm(be, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
            out_fetch(be, o, C, 5 * 9 + off);
            be_free(be, A), be_free(be, B), be_free(be, C);
        }
    /* A and B in one buffer */
    float *AB = dev_rand(be, 64, 40, 1), *C = be_alloc(be, 16);
    be_gemm(be, 0, 1, 4, 4, 8, 1.0f, AB, 8, AB + 32, 8, 0.0f, C, 4); // (4,8) x (4,8)^T -> (4,4)
    out_fetch(be, o, C, 16);
    be_free(be, AB), be_free(be, C);
}

static void op_gemm_batched(backend *be, outv *o)
{
    int M = 3, N = 4, K = 5, batch = 3;
    int64_t sa = M * K + 2, sb = K * N + 1, sc = M * N + 3;
    float *A = dev_rand(be, (size_t)(sa * batch), 50, 1), *B = dev_rand(be, (size_t)(sb * batch), 51, 1);
    float *C = dev_rand(be, (size_t)(sc * batch), 52, 1);
    // batch x [op(A) (M,K) x op(B) (K,N)] -> C (M,N), each at its batch stride
    be->ops->gemm_batched(be, 0, 0, M, N, K, 0.7f, A, K, sa, B, N, sb, 1.0f, C, N, sc, batch);
    out_fetch(be, o, C, (size_t)(sc * batch));
    be->ops->gemm_batched(be, 1, 1, M, N, K, 1.0f, A, M, sa, B, K, sb, 0.0f, C, N, sc, batch);
    out_fetch(be, o, C, (size_t)(sc * batch));
    be_free(be, A), be_free(be, B), be_free(be, C);
}

static void op_embedding(backend *be, outv *o)
{
    int V = 11, d = 6, N = 9;
    float *table = dev_rand(be, (size_t)(V * d), 60, 1), *out = be_alloc(be, (size_t)(N * d));
    int32_t *tok = dev_tokens(be, N, 61, V, 0);
    be->ops->embedding_fwd(be, out, table, tok, N, d); // (N,) -> (N,d)
    out_fetch(be, o, out, (size_t)(N * d));
    float *dtable = dev_rand(be, (size_t)(V * d), 62, 1), *dout = dev_rand(be, (size_t)(N * d), 63, 1);
    be->ops->embedding_bwd(be, dtable, dout, tok, N, d);
    out_fetch(be, o, dtable, (size_t)(V * d));
    be_free(be, table), be_free(be, out), be_free(be, tok), be_free(be, dtable), be_free(be, dout);
}

/* n bf16 values of device buffer p, widened, into o */
static void out_fetch16(backend *be, outv *o, const uint16_t *p, size_t n)
{
    float *wide = be_alloc(be, n);
    be->ops->widen_bf16(be, wide, p, n);
    out_fetch(be, o, wide, n);
    be_free(be, wide);
}

static void op_rmsnorm(backend *be, outv *o)
{
    int N = 5, d = 12;
    float *x = dev_rand(be, (size_t)(N * d), 70, 1), *w = dev_rand(be, (size_t)d, 71, 1);
    float *out = be_alloc(be, (size_t)(N * d)), *rstd = be_alloc(be, (size_t)N);
    be->ops->rmsnorm_fwd(be, out, rstd, x, w, N, d, 1e-5f); // (N,d) -> (N,d), rstd (N)
    out_fetch(be, o, out, (size_t)(N * d));
    out_fetch(be, o, rstd, (size_t)N);
    float *dx = dev_rand(be, (size_t)(N * d), 72, 1), *dw = dev_rand(be, (size_t)d, 73, 1);
    float *dout = dev_rand(be, (size_t)(N * d), 74, 1);
    be->ops->rmsnorm_bwd(be, dx, dw, dout, x, w, rstd, N, d);
    out_fetch(be, o, dx, (size_t)(N * d));
    out_fetch(be, o, dw, (size_t)d);
    uint16_t *o16 = be->ops->alloc_bf16(be, (size_t)(N * d) + 1);
    be->ops->rmsnorm_fwd_16(be, o16 + 1, rstd, dout, w, N, d, 1e-5f, NULL); // (N,d) -> (N,d) bf16 at an offset
    out_fetch16(be, o, o16, (size_t)(N * d) + 1);
    out_fetch(be, o, rstd, (size_t)N);
    be->ops->rmsnorm_fwd_16(be, o16 + 1, rstd, x, w, N, d, 1e-5f, dx); // and x copied into dx
    out_fetch16(be, o, o16, (size_t)(N * d) + 1);
    out_fetch(be, o, dx, (size_t)(N * d));
    be_free(be, o16);
    be_free(be, x), be_free(be, w), be_free(be, out), be_free(be, rstd);
    be_free(be, dx), be_free(be, dw), be_free(be, dout);
}

static void op_rope(backend *be, outv *o)
{
    int B = 2, T = 4, H = 3, hd = 8, ld = H * hd + 5;
    float cos_h[4 * 4], sin_h[4 * 4];
    rope_tables_host(cos_h, sin_h, T, hd, 10000.0, NULL, 0, 0, 0, 0);
    float *cs = be_alloc(be, 2 * (size_t)T * (hd / 2));
    be_upload(be, cs, cos_h, (size_t)T * (hd / 2));
    be_upload(be, cs + T * (hd / 2), sin_h, (size_t)T * (hd / 2));
    float *x = dev_rand(be, (size_t)(B * T * ld), 80, 1);
    be->ops->rope_fwd(be, x, cs, cs + T * (hd / 2), B, T, H, hd, ld); // (B*T, H*hd) stride ld, in place
    out_fetch(be, o, x, (size_t)(B * T * ld));
    be->ops->rope_bwd(be, x + 1, cs, cs + T * (hd / 2), B, T, H - 1, hd, ld);
    out_fetch(be, o, x, (size_t)(B * T * ld));
    be_free(be, cs), be_free(be, x);
}

static void op_attention(backend *be, outv *o)
{
    int B = 2, T = 5, H = 4, KV = 2, hd = 4, ld = (H + 2 * KV) * hd;
    size_t n_qkv = (size_t)(B * T * ld), n_out = (size_t)(B * T * H * hd), n_lse = (size_t)(B * H * T);
    // qkv (B,T,(H+2KV)*hd): q, k, v are column slices of one buffer
    float *qkv = dev_rand(be, n_qkv, 90, 1), *out = be_alloc(be, n_out), *lse = be_alloc(be, n_lse);
    float *q = qkv, *k = qkv + H * hd, *v = qkv + (H + KV) * hd;
    be->ops->attention_fwd(be, out, lse, q, k, v, B, T, H, KV, hd, ld);
    out_fetch(be, o, out, n_out);
    out_fetch(be, o, lse, n_lse);
    float *dout = dev_rand(be, n_out, 91, 1), *dqkv = dev_rand(be, n_qkv, 92, 1);
    be->ops->attention_bwd(be, dqkv, dqkv + H * hd, dqkv + (H + KV) * hd, dout, out, lse, q, k, v, B, T, H, KV, hd,
                           ld);
    out_fetch(be, o, dqkv, n_qkv);
    be_free(be, qkv), be_free(be, out), be_free(be, lse), be_free(be, dout), be_free(be, dqkv);
}

static void op_swiglu(backend *be, outv *o)
{
    int N = 4, f = 9, ld = 2 * f;
    // gate | up (N, 2f): column slices of one buffer
    float *gu = dev_rand(be, (size_t)(N * ld), 100, 2), *out = be_alloc(be, (size_t)(N * f));
    be->ops->swiglu_fwd(be, out, gu, gu + f, N, f, ld, 0);
    out_fetch(be, o, out, (size_t)(N * f));
    be->ops->swiglu_fwd(be, out, gu, gu + f, N, f, ld, 1); // gate, up rounded as read
    out_fetch(be, o, out, (size_t)(N * f));
    float *dout = dev_rand(be, (size_t)(N * f), 101, 1), *dgu = dev_rand(be, (size_t)(N * ld), 102, 1);
    be->ops->swiglu_bwd(be, dgu, dgu + f, dout, gu, gu + f, N, f, ld, 0);
    out_fetch(be, o, dgu, (size_t)(N * ld));
    be->ops->swiglu_bwd(be, dgu, dgu + f, dout, gu, gu + f, N, f, ld, 1);
    out_fetch(be, o, dgu, (size_t)(N * ld));
    uint16_t *o16 = be->ops->alloc_bf16(be, (size_t)(N * f)), *gu16 = be->ops->alloc_bf16(be, (size_t)(N * ld));
    be->ops->round_bf16(be, gu16, gu, (size_t)(N * ld)); // gate | up in bf16
    be->ops->swiglu_fwd_16(be, o16, gu16, gu16 + f, N, f, ld); // -> (N,f) bf16
    out_fetch16(be, o, o16, (size_t)(N * f));
    be_free(be, o16);
    uint16_t *d16 = be->ops->alloc_bf16(be, (size_t)(N * ld)), *dout16 = be->ops->alloc_bf16(be, (size_t)(N * f));
    be->ops->round_bf16(be, dout16, dout, (size_t)(N * f));
    be->ops->swiglu_bwd_16(be, d16, d16 + f, dout16, gu16, gu16 + f, N, f, ld); // -> (N,2f) bf16
    out_fetch16(be, o, d16, (size_t)(N * ld));
    be_free(be, d16), be_free(be, gu16), be_free(be, dout16);
    be_free(be, gu), be_free(be, out), be_free(be, dout), be_free(be, dgu);
}

static void op_xent(backend *be, outv *o)
{
    int N = 7, V = 13;
    float *logits = dev_rand(be, (size_t)(N * V), 110, 3), *lse = be_alloc(be, (size_t)N);
    int32_t *tgt = dev_tokens(be, N, 111, V, 1);
    int64_t n_valid = -1;
    out_ret(o, be->ops->xent_fwd(be, lse, logits, tgt, N, V, &n_valid));
    out_ret(o, (double)n_valid);
    out_fetch(be, o, lse, (size_t)N);
    out_ret(o, be->ops->xent_fwd(be, lse, logits, tgt, N, V, NULL));
    float *dl = dev_rand(be, (size_t)(N * V), 112, 1);
    be->ops->xent_bwd(be, dl, logits, lse, tgt, N, V, 0.25f);
    out_fetch(be, o, dl, (size_t)(N * V));
    be->ops->xent_bwd(be, logits, logits, lse, tgt, N, V, 0.5f); /* dlogits aliases logits */
    out_fetch(be, o, logits, (size_t)(N * V));
    float *l16 = dev_rand(be, (size_t)(N * V), 113, 3); /* bf16 dlogits over the logits */
    be->ops->xent_bwd_16(be, l16, lse, tgt, N, V, 0.5f);
    out_fetch(be, o, l16, (size_t)(N * V));
    be_free(be, l16);
    be_free(be, logits), be_free(be, lse), be_free(be, tgt), be_free(be, dl);
}

static void op_distill(backend *be, outv *o)
{
    int N = 6, V = 10;
    float *z = dev_rand(be, (size_t)(N * V), 120, 2), *t = dev_rand(be, (size_t)(N * V), 121, 2);
    int32_t *tgt = dev_tokens(be, N, 122, V, 1);
    out_ret(o, be->ops->distill(be, z, t, tgt, N, V, 0.6f, 2.0f, 0.3f)); // z (N,V) overwritten by its gradient
    out_fetch(be, o, z, (size_t)(N * V));
    float *z16 = dev_rand(be, (size_t)(N * V), 123, 2); /* bf16 gradient over the logits */
    out_ret(o, be->ops->distill_16(be, z16, t, tgt, N, V, 0.6f, 2.0f, 0.3f));
    out_fetch(be, o, z16, (size_t)(N * V));
    be_free(be, z16);
    be_free(be, z), be_free(be, t), be_free(be, tgt);
}

static void op_add2d(backend *be, outv *o)
{
    int rows = 4, cols = 5, ld_dst = 8, ld_src = 6;
    float *dst = dev_rand(be, (size_t)(rows * ld_dst), 130, 1), *src = dev_rand(be, (size_t)(rows * ld_src), 131, 1);
    be->ops->add2d(be, dst + 1, ld_dst, src + 1, ld_src, rows, cols, 0.5f);
    out_fetch(be, o, dst, (size_t)(rows * ld_dst));
    be->ops->add2d(be, dst + 2, ld_dst, src, ld_src, rows - 1, cols, 1.0f);
    out_fetch(be, o, dst, (size_t)(rows * ld_dst));
    be->ops->add2d(be, dst, ld_dst, src, ld_src, rows, cols, 0.0f);
    out_fetch(be, o, dst, (size_t)(rows * ld_dst));
    be_free(be, dst), be_free(be, src);
}

static void op_bf16(backend *be, outv *o)
{
    size_t n = 37;
    uint16_t h[37];
    for (size_t i = 0; i < n; i++) h[i] = pc_f32_to_bf16((float)i * 0.37f - 5.0f);
    uint16_t *w = be->ops->alloc_bf16(be, n);
    be->ops->upload_bf16(be, w + 2, h, n - 2);
    float *y = dev_rand(be, n + 3, 160, 1);
    be->ops->widen_bf16(be, y + 1, w, n);
    out_fetch(be, o, y, n + 3);
    float got[37];
    be_download(be, got, y + 1, n);
    for (size_t i = 0; i < n; i++) /* zeros where nothing was uploaded, then exactly the bf16 values */
        if (got[i] != (i < 2 ? 0.0f : pc_bf16_to_f32(h[i - 2])))
            fail_msg("widen_bf16: element %zu is %.9g, want %.9g", i, got[i], i < 2 ? 0.0 : pc_bf16_to_f32(h[i - 2]));
    be_free(be, w), be_free(be, y);
}

/* round_bf16 into a bf16 buffer at an offset, gemm_w16, gemm_16 and gemm_16_to16 reading
 * it, and raw transfers of an odd number of bytes */
static void op_bf16_weights(backend *be, outv *o)
{
    int M = 5, N = 7, K = 3, ld = N + 2;
    float *A = dev_rand(be, (size_t)(M * K), 170, 1), *B = dev_rand(be, (size_t)(K * ld), 171, 1);
    float *C = dev_rand(be, (size_t)(M * N), 172, 1), *y = dev_rand(be, (size_t)(K * ld), 173, 1);
    uint16_t *w = be->ops->alloc_bf16(be, (size_t)(K * ld) + 1);
    be->ops->round_bf16(be, w + 1, B, (size_t)(K * ld));
    be->ops->widen_bf16(be, y, w + 1, (size_t)(K * ld));
    out_fetch(be, o, y, (size_t)(K * ld));
    be->ops->gemm_w16(be, 0, 0, M, N, K, 0.5f, A, K, w + 1, ld, 2.0f, C, N); /* (M,K) x (K,N) */
    out_fetch(be, o, C, (size_t)(M * N));
    uint16_t *a16 = be->ops->alloc_bf16(be, (size_t)(M * K));
    be->ops->round_bf16(be, a16, A, (size_t)(M * K));
    be->ops->gemm_16(be, 0, 0, M, N, K, 0.5f, a16, K, w + 1, ld, 2.0f, C, N); /* (M,K) x (K,N) */
    out_fetch(be, o, C, (size_t)(M * N));
    uint16_t *c16 = be->ops->alloc_bf16(be, (size_t)(M * ld));
    be->ops->gemm_16_to16(be, 0, 0, M, N, K, 0.5f, a16, K, w + 1, ld, c16, ld); /* (M,K) x (K,N) -> bf16 */
    out_fetch16(be, o, c16, (size_t)(M * ld));
    be_free(be, a16), be_free(be, c16);
    unsigned char bytes[7] = {1, 2, 3, 4, 5, 6, 7}, back[7] = {0};
    be->ops->upload_raw(be, (char *)y + 1, bytes, sizeof bytes);
    be->ops->download_raw(be, back, (char *)y + 1, sizeof back);
    if (memcmp(bytes, back, sizeof back) != 0) fail_msg("upload_raw/download_raw: 7 bytes came back different");
    out_fetch(be, o, y, 3);
    be_free(be, A), be_free(be, B), be_free(be, C), be_free(be, y), be_free(be, w);
}

static void op_elementwise(backend *be, outv *o)
{
    size_t n = 33;
    float *y = dev_rand(be, n, 140, 1), *a = dev_rand(be, n, 141, 1), *b = dev_rand(be, 2 * n, 142, 1);
    be->ops->add(be, y, a, b + n, n);
    out_fetch(be, o, y, n);
    be->ops->add(be, a, a, b, n); /* y aliases a */
    out_fetch(be, o, a, n);
    be->ops->scale(be, b + 3, -1.5f, n);
    out_fetch(be, o, b, 2 * n);
    be->ops->axpy(be, y, 0.3f, b + 1, n);
    out_fetch(be, o, y, n);
    out_ret(o, be->ops->sumsq(be, y, n));
    out_ret(o, be->ops->sumsq(be, b + 5, n - 2));
    be_free(be, y), be_free(be, a), be_free(be, b);
}

static void op_adamw(backend *be, outv *o)
{
    size_t n = 29;
    float *p = dev_rand(be, n, 150, 1), *g = dev_rand(be, n, 151, 1);
    float *mv = be_alloc(be, 2 * n); /* m | v, zero */
    for (int64_t step = 1; step <= 3; step++)
        be->ops->adamw(be, p, g, mv, mv + n, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, step);
    out_fetch(be, o, p, n);
    out_fetch(be, o, mv, 2 * n);
    be_free(be, p), be_free(be, g), be_free(be, mv);
}

typedef struct op_case {
    const char *name;
    void (*run)(backend *be, outv *o);
} op_case;

static const op_case op_cases[] = {
    {"zero", op_zero},
    {"copy", op_copy},
    {"upload/download/sync", op_upload_download},
    {"alloc_i32/upload_i32", op_upload_i32},
    {"gemm", op_gemm},
    {"gemm_batched", op_gemm_batched},
    {"embedding_fwd/bwd", op_embedding},
    {"rmsnorm_fwd/bwd/fwd_16", op_rmsnorm},
    {"rope_fwd/bwd", op_rope},
    {"attention_fwd/bwd", op_attention},
    {"swiglu_fwd/bwd/fwd_16/bwd_16", op_swiglu},
    {"xent_fwd/bwd/bwd_16", op_xent},
    {"distill/distill_16", op_distill},
    {"add2d", op_add2d},
    {"alloc_bf16/upload_bf16/widen_bf16", op_bf16},
    {"round_bf16/gemm_w16/gemm_16/gemm_16_to16/upload_raw/download_raw", op_bf16_weights},
    {"add/scale/axpy/sumsq", op_elementwise},
    {"adamw", op_adamw},
};

static void test_ops_bitwise(void **state)
{
    (void)state;
    backend *g = backend_guard_create(1), *c = backend_cpu_create(1);
    assert_string_equal(g->ops->name, "cpu-guarded");
    assert_int_equal(g->host_memory, 0);
    assert_int_equal(g->threads, c->threads);
    assert_non_null(strstr(g->info, "guarded CPU buffers"));
    for (size_t i = 0; i < PC_ARRAY_LEN(op_cases); i++) {
        outv og = {0}, oc = {0};
        op_cases[i].run(g, &og);
        op_cases[i].run(c, &oc);
        assert_true(og.n > 0 || og.n_ret > 0);
        if (og.n != oc.n || og.n_ret != oc.n_ret)
            fail_msg("%s: %zu/%d outputs on the guarded backend, %zu/%d on the CPU one", op_cases[i].name, og.n,
                     og.n_ret, oc.n, oc.n_ret);
        for (size_t k = 0; k < og.n; k++)
            if (memcmp(&og.v[k], &oc.v[k], sizeof(float)) != 0)
                fail_msg("%s: output %zu differs: %.9g guarded vs %.9g CPU", op_cases[i].name, k, og.v[k], oc.v[k]);
        for (int k = 0; k < og.n_ret; k++)
            if (memcmp(&og.ret[k], &oc.ret[k], sizeof(double)) != 0)
                fail_msg("%s: returned value %d differs: %.17g guarded vs %.17g CPU", op_cases[i].name, k, og.ret[k],
                         oc.ret[k]);
        free(og.v), free(oc.v);
    }
    backend_destroy(g);
    backend_destroy(c);
}

/* ---- forked children ---- */

/* Run fn(arg) in a child whose stderr goes to a pipe; returns its wait status and its
 * stderr (NUL-terminated, truncated to n - 1) in err. The child exits 0 if fn returns. */
static int run_child(void (*fn)(void *), void *arg, char *err, size_t n)
{
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        signal(SIGSEGV, SIG_DFL); /* the test runner catches it in this process */
        signal(SIGBUS, SIG_DFL);
        signal(SIGABRT, SIG_DFL);
        fn(arg);
        _exit(0);
    }
    close(fd[1]);
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd[0], err + len, n - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
        if (len == n - 1) break;
    }
    err[len] = '\0';
    close(fd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void assert_died(int status, int sig, const char *err, const char *want1, const char *want2)
{
    if (!WIFSIGNALED(status) || WTERMSIG(status) != sig)
        fail_msg("child should have died of signal %d, status 0x%x, stderr: %s", sig, status, err);
    if (want1 && !strstr(err, want1)) fail_msg("stderr lacks \"%s\": %s", want1, err);
    if (want2 && !strstr(err, want2)) fail_msg("stderr lacks \"%s\": %s", want2, err);
}

static void child_read(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *x = be_alloc(be, 16);
    be_zero(be, x, 16);
    volatile float v = x[3];
    (void)v;
}

static void child_write_after_op(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *a = dev_rand(be, 16, 1, 1), *c = be_alloc(be, 16);
    be_gemm(be, 0, 0, 4, 4, 4, 1.0f, a, 4, a, 4, 0.0f, c, 4);
    c[5] = 1.0f; /* must fault: the op closed c again */
}

static void child_ok(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *a = dev_rand(be, 16, 1, 1);
    be_free(be, a);
    be_free(be, NULL);
    backend_destroy(be);
}

static void test_host_deref_faults(void **state)
{
    (void)state;
    char err[2048];
    assert_died(run_child(child_read, NULL, err, sizeof err), SIGSEGV, err, NULL, NULL);
    assert_died(run_child(child_write_after_op, NULL, err, sizeof err), SIGSEGV, err, NULL, NULL);
    int st = run_child(child_ok, NULL, err, sizeof err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("control child failed, status 0x%x: %s", st, err);
}

static void child_gemm_host_c(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *a = dev_rand(be, 16, 1, 1), *c = pc_alloc_f32(16);
    be_gemm(be, 0, 0, 4, 4, 4, 1.0f, a, 4, a, 4, 0.0f, c, 4);
}

static void child_adamw_host_g(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *p = be_alloc(be, 8), *m = be_alloc(be, 8), *v = be_alloc(be, 8), g[8] = {0};
    be->ops->adamw(be, p, g, m, v, 8, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, 1);
}

static void child_add2d_freed(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *dst = be_alloc(be, 8), *src = be_alloc(be, 8);
    be_free(be, src);
    be->ops->add2d(be, dst, 4, src, 4, 2, 4, 0.0f);
}

static void test_host_pointer_aborts(void **state)
{
    (void)state;
    char err[2048];
    assert_died(run_child(child_gemm_host_c, NULL, err, sizeof err), SIGABRT, err, "gemm",
                "argument C is not a device buffer");
    assert_died(run_child(child_adamw_host_g, NULL, err, sizeof err), SIGABRT, err, "adamw", "argument g");
    assert_died(run_child(child_add2d_freed, NULL, err, sizeof err), SIGABRT, err, "add2d", "argument src");
}

static void child_upload_from_device(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *a = be_alloc(be, 8), *b = be_alloc(be, 8);
    be_upload(be, a, b + 2, 4);
}

static void child_download_to_device(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *a = be_alloc(be, 8), *b = be_alloc(be, 8);
    be_download(be, b, a, 4);
}

static void child_upload_i32_from_device(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    int32_t *a = be_alloc_i32(be, 8), *b = be_alloc_i32(be, 8);
    be->ops->upload_i32(be, a, b, 8);
}

static void child_free_interior(void *arg)
{
    (void)arg;
    backend *be = backend_guard_create(1);
    float *a = be_alloc(be, 8);
    be_free(be, a + 1);
}

static void test_upload_download_side_aborts(void **state)
{
    (void)state;
    char err[2048];
    assert_died(run_child(child_upload_from_device, NULL, err, sizeof err), SIGABRT, err, "guard: upload:",
                "host_src");
    assert_died(run_child(child_download_to_device, NULL, err, sizeof err), SIGABRT, err, "guard: download:",
                "host_dst");
    assert_died(run_child(child_upload_i32_from_device, NULL, err, sizeof err), SIGABRT, err, "guard: upload_i32:",
                "host_src");
    assert_died(run_child(child_free_interior, NULL, err, sizeof err), SIGABRT, err, "guard: free:",
                "not the start");
}

static void test_add2d_hand_loop(void **state)
{
    (void)state;
    backend *be = backend_guard_create(1);
    enum { rows = 3, cols = 4, ld_dst = 6, ld_src = 5 };
    float dst0[rows * ld_dst], src[rows * ld_src], got[rows * ld_dst];
    fill(dst0, PC_ARRAY_LEN(dst0), 7, 1), fill(src, PC_ARRAY_LEN(src), 8, 1);
    for (int r = 0; r < rows; r++) dst0[r * ld_dst + 1] = NAN; /* beta 0 must not read dst */
    float *d = be_alloc(be, PC_ARRAY_LEN(dst0)), *s = be_alloc(be, PC_ARRAY_LEN(src));
    be_upload(be, s, src, PC_ARRAY_LEN(src));
    const float betas[2] = {0.0f, 1.0f};
    for (int b = 0; b < 2; b++) {
        be_upload(be, d, dst0, PC_ARRAY_LEN(dst0));
        // dst (rows, cols) stride ld_dst at column 1 <- src (rows, cols) stride ld_src at column 1
        be->ops->add2d(be, d + 1, ld_dst, s + 1, ld_src, rows, cols, betas[b]);
        be_download(be, got, d, PC_ARRAY_LEN(got));
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < ld_dst; c++) {
                float old = dst0[r * ld_dst + c];
                float want = c >= 1 && c <= cols ? (b == 0 ? src[r * ld_src + c] : src[r * ld_src + c] + old) : old;
                float g = got[r * ld_dst + c];
                if (!(g == want || (isnan(g) && isnan(want))))
                    fail_msg("add2d beta %g: (%d,%d) = %.9g, want %.9g", betas[b], r, c, g, want);
            }
        if (b == 1) assert_true(isnan(got[1])); /* beta 1 adds the NaN that was there */
    }
    be_free(be, d), be_free(be, s);
    backend_destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops_bitwise),
        cmocka_unit_test(test_host_deref_faults),
        cmocka_unit_test(test_host_pointer_aborts),
        cmocka_unit_test(test_upload_download_side_aborts),
        cmocka_unit_test(test_add2d_hand_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
