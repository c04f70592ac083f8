/* test_backend: cmocka units for the CPU backend ops and the llama tensor table.
 *
 * GEMM against a naive triple loop for every transpose combination with padded leading
 * dimensions; every backward op against central finite differences of the scalar
 * L = sum(forward(x) * R) for a fixed random R; accumulation semantics (+=) of the
 * parameter-gradient ops; determinism of llama_init_random and the HF tensor order; a
 * forward-only model's logits equal the full model's; a recomputing (activation
 * checkpointing) model's losses and gradients equal the full model's bit for bit; the
 * bf16 weight ops and a model with a bf16 weight copy against rounding per product; the
 * backward's gradient stages and the forward's weight stages (llama_stage_hook). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"
#include "llama.h"

static void fill(float *x, size_t n, uint64_t seed, float s)
{
    pc_rng r;
    pc_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = s * pc_rng_normal(&r);
}

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* max |num - ana| <= tol * max(|ana|) */
static void assert_close(const float *ana, const double *num, size_t n, double tol, const char *what)
{
    double mx = 1e-12, err = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(ana[i]));
        err = fmax(err, fabs(ana[i] - num[i]));
    }
    if (err > tol * mx) fail_msg("%s: gradient error %.3g > %.3g x max %.3g", what, err, tol, mx);
}

static void test_gemm(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    int M = 5, N = 7, K = 3, pad = 2;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            float A[(7 + 2) * (7 + 2)], B[(7 + 2) * (7 + 2)], C[5 * 9], R[5 * 9];
            fill(A, PC_ARRAY_LEN(A), 1, 1), fill(B, PC_ARRAY_LEN(B), 2, 1), fill(C, PC_ARRAY_LEN(C), 3, 1);
            memcpy(R, C, sizeof(C));
            be_gemm(be, ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 2.0f, C, ldc);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
                    assert_true(fabs(C[i * ldc + j] - (0.5 * s + 2.0 * R[i * ldc + j])) < 1e-5);
                }
        }
    backend_destroy(be);
}

/* round_bf16: nearest even at the ties, exact on bf16 values; rmsnorm_fwd_16 copies x
 * when asked; gemm_w16 gives, bit for
 * bit, gemm's MATMUL_BF16 products on the widened bf16 B, gemm_16 those on the widened A
 * and B, and gemm_16_to16 gemm_16's (beta 0) rounded, leaving the padding between C's
 * rows alone, for every transpose combination with padded leading dimensions (and K = 0:
 * C = beta C); rmsnorm_fwd_16, swiglu_fwd_16, swiglu_bwd_16 and distill_16 write the
 * rounded outputs of the fp32 ops (the swiglu ops on gate and up in bf16, the fp32 ops
 * on those widened, and the same fp32 ops with round_in on the unrounded gate and up). */
static void test_bf16_weights_ops(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    const float x[] = {1.0f, 1.00390625f, 1.01171875f, -2.5f, 65504.0f, 0.0f};
    const uint16_t want[] = {0x3F80, 0x3F80, 0x3F82, 0xC020, 0x4780, 0x0000};
    uint16_t got[6];
    be->ops->round_bf16(be, got, x, 6);
    assert_memory_equal(got, want, sizeof want); /* 1 + 2^-8 ties to 1, 1 + 3 x 2^-8 to 1 + 2^-6 */
    int M = 5, N = 7, K = 3, pad = 2;
    for (int k = 0; k <= K; k += K)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
                float A[9 * 9], B[9 * 9], C1[5 * 9], C2[5 * 9], C3[5 * 9], Aw[9 * 9];
                uint16_t A16[9 * 9], B16[9 * 9];
                fill(A, PC_ARRAY_LEN(A), 1, 1), fill(B, PC_ARRAY_LEN(B), 2, 1), fill(C1, PC_ARRAY_LEN(C1), 3, 1);
                be->ops->round_bf16(be, B16, B, PC_ARRAY_LEN(B));
                be->ops->widen_bf16(be, B, B16, PC_ARRAY_LEN(B));
                be->ops->round_bf16(be, A16, A, PC_ARRAY_LEN(A));
                be->ops->widen_bf16(be, Aw, A16, PC_ARRAY_LEN(A));
                memcpy(C2, C1, sizeof C1);
                memcpy(C3, C1, sizeof C1);
                be->ops->set_matmul(be, MATMUL_BF16);
                be_gemm(be, ta, tb, M, N, k, 0.5f, A, lda, B, ldb, 2.0f, C1, ldc);
                be->ops->set_matmul(be, MATMUL_FP32); /* gemm_w16 and gemm_16 do not depend on the mode */
                be->ops->gemm_w16(be, ta, tb, M, N, k, 0.5f, A, lda, B16, ldb, 2.0f, C2, ldc);
                be->ops->gemm_16(be, ta, tb, M, N, k, 0.5f, A16, lda, B16, ldb, 2.0f, C3, ldc);
                assert_memory_equal(C1, C2, sizeof C1);
                assert_memory_equal(C1, C3, sizeof C1);
                uint16_t C16[5 * 9], want16c[9];
                for (size_t i = 0; i < PC_ARRAY_LEN(C16); i++) C16[i] = 0xABCD;
                be->ops->gemm_16(be, ta, tb, M, N, k, 0.5f, A16, lda, B16, ldb, 0.0f, C3, ldc);
                be->ops->gemm_16_to16(be, ta, tb, M, N, k, 0.5f, A16, lda, B16, ldb, C16, ldc);
                for (int i = 0; i < M; i++) {
                    be->ops->round_bf16(be, want16c, C3 + i * ldc, (size_t)N);
                    assert_memory_equal(C16 + i * ldc, want16c, sizeof(uint16_t) * N);
                    for (int j = N; j < ldc && i < M - 1; j++) assert_int_equal(C16[i * ldc + j], 0xABCD);
                }
                /* which is the fp32 product of the widened values */
                fill(C2, PC_ARRAY_LEN(C2), 3, 1);
                be_gemm(be, ta, tb, M, N, k, 0.5f, Aw, lda, B, ldb, 2.0f, C2, ldc);
                assert_memory_equal(C1, C2, sizeof C1);
            }
    /* rmsnorm_fwd_16 and swiglu_fwd_16: bitwise bf16 of the fp32 ops' outputs (and the same rstd) */
    enum { RN = 3, RD = 37, RLD = 2 * RD + 1 };
    float xs[RN * RLD], w[RD], out[RN * RD], wide[RN * RD], r1[RN], r2[RN];
    uint16_t o16[RN * RD], want16[RN * RD];
    fill(xs, PC_ARRAY_LEN(xs), 4, 3), fill(w, RD, 5, 1);
    be->ops->rmsnorm_fwd(be, out, r1, xs, w, RN, RD, 1e-5f);
    float xcopy[RN * RD];
    be->ops->rmsnorm_fwd_16(be, o16, r2, xs, w, RN, RD, 1e-5f, NULL);
    be->ops->round_bf16(be, want16, out, PC_ARRAY_LEN(out));
    assert_memory_equal(o16, want16, sizeof o16);
    assert_memory_equal(r1, r2, sizeof r1);
    memset(o16, 0, sizeof o16);
    be->ops->rmsnorm_fwd_16(be, o16, r2, xs, w, RN, RD, 1e-5f, xcopy); /* x copied too: the same, and the copy */
    assert_memory_equal(o16, want16, sizeof o16);
    assert_memory_equal(xcopy, xs, sizeof xcopy);
    be->ops->widen_bf16(be, wide, o16, PC_ARRAY_LEN(wide));
    for (size_t i = 0; i < PC_ARRAY_LEN(out); i++) assert_true(fabsf(wide[i] - out[i]) <= fabsf(out[i]) * 0x1p-8f);
    uint16_t xs16[RN * RLD]; /* gate | up in bf16, and xw their values */
    float xw[RN * RLD], outr[RN * RD];
    be->ops->round_bf16(be, xs16, xs, PC_ARRAY_LEN(xs));
    be->ops->widen_bf16(be, xw, xs16, PC_ARRAY_LEN(xs));
    be->ops->swiglu_fwd(be, out, xw, xw + RD, RN, RD, RLD, 0); /* gate | up in rows of RLD */
    be->ops->swiglu_fwd(be, outr, xs, xs + RD, RN, RD, RLD, 1); /* rounded as read: the same */
    assert_memory_equal(out, outr, sizeof out);
    be->ops->swiglu_fwd(be, outr, xs, xs + RD, RN, RD, RLD, 0); /* and not without round_in */
    assert_memory_not_equal(out, outr, sizeof out);
    be->ops->swiglu_fwd_16(be, o16, xs16, xs16 + RD, RN, RD, RLD);
    be->ops->round_bf16(be, want16, out, PC_ARRAY_LEN(out));
    assert_memory_equal(o16, want16, sizeof o16);
    /* swiglu_bwd_16: bitwise bf16 of swiglu_bwd's dgate | dup, in rows of RLD like gate |
     * up, on dout (out here) and gate | up in bf16; swiglu_bwd with round_in: the same on
     * their fp32 values */
    float dgu[RN * RLD], dgur[RN * RLD], outw[RN * RD];
    uint16_t d16[RN * RLD], dwant16[RN * RLD], out16[RN * RD];
    be->ops->round_bf16(be, out16, out, PC_ARRAY_LEN(out));
    be->ops->widen_bf16(be, outw, out16, PC_ARRAY_LEN(out));
    fill(dgu, PC_ARRAY_LEN(dgu), 8, 1);
    memcpy(dgur, dgu, sizeof dgu);
    be->ops->round_bf16(be, d16, dgu, PC_ARRAY_LEN(dgu)); /* the column between the rows' halves: untouched */
    be->ops->swiglu_bwd(be, dgu, dgu + RD, outw, xw, xw + RD, RN, RD, RLD, 0);
    be->ops->swiglu_bwd(be, dgur, dgur + RD, out, xs, xs + RD, RN, RD, RLD, 1);
    assert_memory_equal(dgu, dgur, sizeof dgu);
    be->ops->swiglu_bwd(be, dgur, dgur + RD, out, xw, xw + RD, RN, RD, RLD, 0); /* dout's rounding matters */
    assert_memory_not_equal(dgu, dgur, sizeof dgu);
    be->ops->swiglu_bwd_16(be, d16, d16 + RD, out16, xs16, xs16 + RD, RN, RD, RLD);
    be->ops->round_bf16(be, dwant16, dgu, PC_ARRAY_LEN(dgu));
    assert_memory_equal(d16, dwant16, sizeof d16);
    /* distill_16: distill's gradient rounded, row n at bf16 offset 2 n V, the same loss */
    enum { DN = 4, DV = 37 };
    float z[DN * DV], z16[DN * DV], teach[DN * DV];
    const int32_t tg[DN] = {3, -1, 36, 0};
    fill(z, DN * DV, 6, 2), fill(teach, DN * DV, 7, 2);
    memcpy(z16, z, sizeof z);
    double l32 = be->ops->distill(be, z, teach, tg, DN, DV, 0.4f, 2.0f, 0.25f);
    double l16 = be->ops->distill_16(be, z16, teach, tg, DN, DV, 0.4f, 2.0f, 0.25f);
    assert_true(isfinite(l32) && l32 == l16);
    for (int n = 0; n < DN; n++) {
        uint16_t want_row[DV];
        be->ops->round_bf16(be, want_row, z + n * DV, DV);
        assert_memory_equal((const uint16_t *)z16 + 2 * n * DV, want_row, sizeof want_row);
    }
    backend_destroy(be);
}

/* numerical dL/dx for L = sum(f(x) * R), f evaluated by fwd into out (nout) */
typedef void (*fwd_fn)(backend *be, float *x, float *out, void *ctx);
static void numgrad(backend *be, fwd_fn f, void *ctx, float *x, size_t nx, float *out, const float *R, size_t nout,
                    double *g)
{
    const float h = 1e-2f;
    for (size_t i = 0; i < nx; i++) {
        float x0 = x[i];
        x[i] = x0 + h;
        f(be, x, out, ctx);
        double lp = dot(out, R, nout);
        x[i] = x0 - h;
        f(be, x, out, ctx);
        double lm = dot(out, R, nout);
        x[i] = x0;
        g[i] = (lp - lm) / (2.0 * h);
    }
}

/* ---- attention: x packs q,k,v as one (B,T,(H+2KV)*hd) buffer ---- */
enum { AB = 2, AT = 5, AH = 4, AKV = 2, AHD = 4, AC = (AH + 2 * AKV) * AHD };
static void attn_fwd(backend *be, float *x, float *out, void *ctx)
{
    float *lse = ctx;
    be->ops->attention_fwd(be, out, lse, x, x + AH * AHD, x + (AH + AKV) * AHD, AB, AT, AH, AKV, AHD, AC);
}

static void test_attention_grad(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    size_t nx = (size_t)AB * AT * AC, no = (size_t)AB * AT * AH * AHD;
    float *x = pc_alloc_f32(nx), *out = pc_alloc_f32(no), *R = pc_alloc_f32(no), *dx = pc_alloc_f32(nx);
    float lse[AB * AH * AT];
    double *g = pc_calloc(nx, sizeof(double));
    fill(x, nx, 11, 1.0f), fill(R, no, 12, 1.0f);
    attn_fwd(be, x, out, lse);
    // causality: the first token's output is its own v (row 0 of each head)
    for (int h = 0; h < AH; h++)
        for (int c = 0; c < AHD; c++)
            assert_true(fabsf(out[h * AHD + c] - x[(AH + AKV + h / (AH / AKV)) * AHD + c]) < 1e-6f);
    be->ops->attention_bwd(be, dx, dx + AH * AHD, dx + (AH + AKV) * AHD, R, out, lse, x, x + AH * AHD,
                           x + (AH + AKV) * AHD, AB, AT, AH, AKV, AHD, AC);
    numgrad(be, attn_fwd, lse, x, nx, out, R, no, g);
    assert_close(dx, g, nx, 2e-3, "attention");
    free(x), free(out), free(R), free(dx), free(g);
    backend_destroy(be);
}

/* ---- rmsnorm: x packs input (N,d) then weight (d) ---- */
enum { RN = 3, RD = 8 };
static void rms_fwd(backend *be, float *x, float *out, void *ctx)
{
    be->ops->rmsnorm_fwd(be, out, ctx, x, x + RN * RD, RN, RD, 1e-5f);
}

static void test_rmsnorm_grad(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    size_t nx = RN * RD + RD, no = RN * RD;
    float x[RN * RD + RD], out[RN * RD], R[RN * RD], dx[RN * RD + RD], rstd[RN];
    double g[RN * RD + RD];
    fill(x, nx, 21, 1.0f), fill(R, no, 22, 1.0f);
    rms_fwd(be, x, out, rstd);
    for (size_t i = 0; i < nx; i++) dx[i] = 0.5f; // bwd accumulates: subtract this afterwards
    be->ops->rmsnorm_bwd(be, dx, dx + RN * RD, R, x, x + RN * RD, rstd, RN, RD);
    for (size_t i = 0; i < nx; i++) dx[i] -= 0.5f;
    numgrad(be, rms_fwd, rstd, x, nx, out, R, no, g);
    assert_close(dx, g, nx, 2e-3, "rmsnorm");
    backend_destroy(be);
}

/* ---- swiglu: x packs (N, 2f) gate|up ---- */
enum { SN = 3, SF = 5 };
static void swi_fwd(backend *be, float *x, float *out, void *ctx)
{
    (void)ctx;
    be->ops->swiglu_fwd(be, out, x, x + SF, SN, SF, 2 * SF, 0);
}

static void test_swiglu_grad(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    float x[SN * 2 * SF], out[SN * SF], R[SN * SF], dx[SN * 2 * SF];
    double g[SN * 2 * SF];
    fill(x, PC_ARRAY_LEN(x), 31, 2.0f), fill(R, PC_ARRAY_LEN(R), 32, 1.0f);
    be->ops->swiglu_bwd(be, dx, dx + SF, R, x, x + SF, SN, SF, 2 * SF, 0);
    numgrad(be, swi_fwd, NULL, x, PC_ARRAY_LEN(x), out, R, PC_ARRAY_LEN(R), g);
    assert_close(dx, g, PC_ARRAY_LEN(x), 2e-3, "swiglu");
    backend_destroy(be);
}

/* ---- cross-entropy (mean over valid rows) ---- */
enum { XN = 4, XV = 6 };
static void xent_fwd(backend *be, float *x, float *out, void *ctx)
{
    const int32_t *tg = ctx;
    float lse[XN];
    int64_t nv;
    out[0] = (float)(be->ops->xent_fwd(be, lse, x, tg, XN, XV, &nv) / (double)nv);
}

static void test_xent_grad(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    int32_t tg[XN] = {1, -1, 5, 0};
    float x[XN * XV], d[XN * XV], lse[XN], out[1], R[1] = {1.0f};
    double g[XN * XV];
    int64_t nv;
    fill(x, PC_ARRAY_LEN(x), 41, 2.0f);
    double sum = be->ops->xent_fwd(be, lse, x, tg, XN, XV, &nv);
    assert_int_equal(nv, 3);
    assert_true(sum > 0);
    be->ops->xent_bwd(be, d, x, lse, tg, XN, XV, 1.0f / (float)nv);
    for (int j = 0; j < XV; j++) assert_true(d[1 * XV + j] == 0.0f); // ignored row
    numgrad(be, xent_fwd, tg, x, PC_ARRAY_LEN(x), out, R, 1, g);
    assert_close(d, g, PC_ARRAY_LEN(x), 2e-3, "cross-entropy");
    /* xent_bwd_16: the same values rounded to bf16, row n in the first half of its own
     * bytes (row stride 2V bf16), over the logits */
    float y[XN * XV];
    memcpy(y, x, sizeof x);
    be->ops->xent_bwd_16(be, y, lse, tg, XN, XV, 1.0f / (float)nv);
    const uint16_t *y16 = (const uint16_t *)y;
    for (int n = 0; n < XN; n++)
        for (int j = 0; j < XV; j++) assert_int_equal(y16[2 * n * XV + j], pc_f32_to_bf16(d[n * XV + j]));
    backend_destroy(be);
}

static void test_rope_inverse(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    enum { B = 2, T = 6, NH = 3, HD = 8, LD = NH * HD + 5 };
    float cs[T * HD / 2], sn[T * HD / 2], x[B * T * LD], y[B * T * LD];
    rope_tables_host(cs, sn, T, HD, 10000.0, "llama3", 8.0, 1.0, 4.0, 4);
    fill(x, PC_ARRAY_LEN(x), 51, 1.0f);
    memcpy(y, x, sizeof(x));
    be->ops->rope_fwd(be, y, cs, sn, B, T, NH, HD, LD);
    // position 0 is the identity; other positions rotate; padding columns untouched
    for (int c = 0; c < NH * HD; c++) assert_true(y[c] == x[c]);
    assert_true(fabsf(y[LD + 1] - x[LD + 1]) > 1e-4f);
    for (int t = 0; t < B * T; t++)
        for (int c = NH * HD; c < LD; c++) assert_true(y[t * LD + c] == x[t * LD + c]);
    // rotation preserves norms; bwd (the transpose) inverts it
    assert_true(fabs(dot(x, x, PC_ARRAY_LEN(x)) - dot(y, y, PC_ARRAY_LEN(y))) < 1e-3);
    be->ops->rope_bwd(be, y, cs, sn, B, T, NH, HD, LD);
    for (size_t i = 0; i < PC_ARRAY_LEN(x); i++) assert_true(fabsf(y[i] - x[i]) < 1e-5f);
    backend_destroy(be);
}

static void test_adamw_first_step(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, -4.0f}, m[2] = {0}, v[2] = {0};
    // step 1: m_hat = g, v_hat = g^2, so p -= lr*(sign(g) + wd*p) up to eps
    be->ops->adamw(be, p, g, m, v, 2, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f, 1);
    assert_true(fabsf(p[0] - (1.0f * (1 - 0.1f * 0.01f) - 0.1f)) < 1e-6f);
    assert_true(fabsf(p[1] - (-2.0f * (1 - 0.1f * 0.01f) + 0.1f)) < 1e-6f);
    backend_destroy(be);
}

static void test_llama_table_and_init(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    llama_config c;
    hf_config_defaults(&c);
    c.vocab_size = 50, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 6;
    c.d_ff = 24, c.d_ff_layer[0] = 24, c.d_ff_layer[1] = 12, c.tie_word_embeddings = 0;
    llama_model a, b;
    pc_err e;
    assert_int_equal(llama_init(&a, &c, be, 1, 4, &e), 0);
    assert_int_equal(llama_init(&b, &c, be, 2, 3, &e), 0);
    assert_int_equal(llama_n_tensors(&a), 1 + 2 * 9 + 2);
    assert_string_equal(llama_tensor_name(&a, 0), "model.embed_tokens.weight");
    int i = llama_tensor_index(&a, "model.layers.1.mlp.down_proj.weight");
    assert_int_equal(i, 1 + 9 + 8);
    assert_int_equal(llama_tensor_dim(&a, i, 0), 16);
    assert_int_equal(llama_tensor_dim(&a, i, 1), 12);
    assert_int_equal(llama_tensor_dim(&a, llama_tensor_index(&a, "model.layers.0.self_attn.q_proj.weight"), 0), 24);
    assert_int_equal(llama_tensor_index(&a, "lm_head.weight"), llama_n_tensors(&a) - 1);
    int64_t total = 0;
    for (int t = 0; t < llama_n_tensors(&a); t++) {
        assert_int_equal(llama_tensor_offset(&a, t), total);
        total += llama_tensor_numel(&a, t);
    }
    assert_int_equal(total, a.n_params);
    assert_int_equal(total, hf_config_n_params(&c));
    llama_init_random(&a, 7, 0.02f);
    llama_init_random(&b, 7, 0.02f);
    assert_memory_equal(a.params, b.params, (size_t)a.n_params * sizeof(float));
    assert_true(a.params[llama_tensor_offset(&a, 1)] == 1.0f); // input_layernorm gain
    llama_init_random(&b, 8, 0.02f);
    assert_true(memcmp(a.params, b.params, (size_t)a.n_params * sizeof(float)) != 0);

    // backward accumulates: two identical passes give twice the gradient
    int32_t tok[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, -1};
    llama_zero_grad(&a);
    float l1 = llama_forward(&a, tok, tgt);
    llama_backward(&a);
    float *g1 = pc_alloc_f32((size_t)a.n_params);
    memcpy(g1, a.grads, (size_t)a.n_params * sizeof(float));
    float l2 = llama_forward(&a, tok, tgt);
    llama_backward(&a);
    assert_true(l1 == l2 && isfinite(l1));
    for (int64_t k = 0; k < a.n_params; k++)
        assert_true(fabsf(a.grads[k] - 2.0f * g1[k]) <= 1e-6f * fabsf(g1[k]) + 1e-12f);
    free(g1);
    llama_free(&b);
    c.n_kv_heads = 3;
    assert_int_equal(llama_init(&b, &c, be, 1, 4, &e), -1);
    assert_non_null(strstr(e.msg, "num_key_value_heads"));
    llama_free(&a);
    backend_destroy(be);
}

/* A three-layer GQA model with per-layer d_ff (vocab 40, d 16, 4/2 heads of 4), untied. */
static void three_layer_config(llama_config *c)
{
    hf_config_defaults(c);
    c->vocab_size = 40, c->d_model = 16, c->n_layers = 3, c->n_heads = 4, c->n_kv_heads = 2, c->head_dim = 4;
    c->d_ff = 20, c->d_ff_layer[0] = 20, c->d_ff_layer[1] = 12, c->d_ff_layer[2] = 16, c->tie_word_embeddings = 0;
}

enum { TB = 2, TT = 5, TV = 40 }; /* micro-batch and vocabulary of the three-layer model */

/* Tokens and targets (TB*TT) of micro-batch mb: every 4th target ignored when `ignore`. */
static void tiny_batch(int32_t *tok, int32_t *tgt, int mb, int ignore)
{
    for (int i = 0; i < TB * TT; i++)
        tok[i] = (i * 7 + 3 + mb) % TV, tgt[i] = ignore && i % 4 == 3 ? -1 : (i * 5 + 1 + 2 * mb) % TV;
}

/* The three-layer model, tied or not, made by init (llama_init or a variant), random
 * weights of seed 3, zero gradients. */
typedef int (*init_fn)(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e);
static void tiny_model(llama_model *m, backend *be, int tied, init_fn init)
{
    llama_config c;
    three_layer_config(&c);
    c.tie_word_embeddings = tied;
    pc_err e;
    assert_int_equal(init(m, &c, be, TB, TT, &e), 0);
    llama_init_random(m, 3, 0.3f);
    llama_zero_grad(m);
}

/* A forward-only model (a teacher) gives bitwise the full model's logits and loss, with
 * no gradient buffer. */
static void test_llama_forward_only(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    llama_model full, fwd;
    tiny_model(&full, be, 1, llama_init);
    tiny_model(&fwd, be, 1, llama_init_forward_only);
    assert_null(fwd.grads);
    int32_t tok[TB * TT], tgt[TB * TT];
    tiny_batch(tok, tgt, 0, 1);
    float lf = llama_forward(&full, tok, tgt), lw = llama_forward(&fwd, tok, tgt);
    assert_true(isfinite(lf) && lf == lw);
    assert_memory_equal(full.logits, fwd.logits, sizeof(float) * (size_t)(TB * TT * TV));
    llama_forward(&fwd, tok, NULL); /* logits only, again */
    assert_memory_equal(full.logits, fwd.logits, sizeof(float) * (size_t)(TB * TT * TV));
    llama_zero_grad(&fwd); /* no gradients: a no-op */
    llama_free(&fwd);
    llama_free(&full);
    backend_destroy(be);
}

/* train.logits_chunk: the head and loss in chunks of 3 and 4 of the 10 tokens (the last
 * chunk short), also with activation checkpointing, tied and untied: over two
 * accumulated micro-batches (one with ignored targets, one with none valid in a chunk),
 * with an evaluation (llama_loss) between them that leaves the gradients alone, the
 * losses and gradients are the whole-head model's to fp32 rounding, and the chunked
 * model holds (chunk, V) logits; a chunk of B*T or more is the whole head, bitwise. */
static void test_llama_logits_chunk(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    llama_config c;
    three_layer_config(&c);
    int chunks[] = {3, 4, TB * TT, 100};
    for (int tied = 0; tied < 2; tied++)
        for (size_t k = 0; k < PC_ARRAY_LEN(chunks); k++)
            for (int recompute = 0; recompute < 2; recompute++) {
                llama_model full, ck;
                tiny_model(&full, be, tied, llama_init);
                c.tie_word_embeddings = tied;
                llama_opts o = {.recompute = recompute, .logits_chunk = chunks[k]};
                pc_err e;
                assert_int_equal(llama_init_opts(&ck, &c, be, TB, TT, &o, &e), 0);
                llama_init_random(&ck, 3, 0.3f);
                llama_zero_grad(&ck);
                int whole = chunks[k] >= TB * TT;
                assert_int_equal(ck.logits_chunk, whole ? 0 : chunks[k]);
                llama_set_loss_scale(&full, 0.5f);
                llama_set_loss_scale(&ck, 0.5f);
                for (int mb = 0; mb < 2; mb++) {
                    int32_t tok[TB * TT], tgt[TB * TT];
                    tiny_batch(tok, tgt, mb, 1);
                    if (mb == 1)
                        for (int i = 0; i < 4; i++) tgt[i] = -1; /* chunk 0 (3 or 4 rows) has no valid target */
                    float lf = llama_forward(&full, tok, tgt), lc = llama_forward(&ck, tok, tgt);
                    assert_true(isfinite(lf) && fabsf(lc - lf) <= 1e-6f * fabsf(lf));
                    if (whole) assert_true(lc == lf);
                    llama_backward(&full);
                    llama_backward(&ck);
                    if (mb == 1) break;
                    float *g = pc_alloc_f32((size_t)ck.n_params);
                    memcpy(g, ck.grads, sizeof(float) * (size_t)ck.n_params);
                    for (int i = 0; i < TB * TT; i++) tok[i] = (i * 3 + 1) % TV;
                    float le = llama_loss(&ck, tok, tgt), lfe = llama_loss(&full, tok, tgt);
                    assert_true(isfinite(le) && fabsf(le - lfe) <= 1e-6f * fabsf(lfe));
                    assert_memory_equal(g, ck.grads, sizeof(float) * (size_t)ck.n_params); /* an evaluation */
                    free(g);
                }
                double worst = 0, scale = 0;
                for (int64_t i = 0; i < full.n_params; i++) {
                    worst = fmax(worst, fabs((double)ck.grads[i] - full.grads[i]));
                    scale = fmax(scale, fabs((double)full.grads[i]));
                }
                assert_true(scale > 0 && worst <= 1e-5 * scale);
                if (whole) assert_memory_equal(full.grads, ck.grads, sizeof(float) * (size_t)full.n_params);
                llama_free(&ck);
                llama_free(&full);
            }
    backend_destroy(be);
}

/* Activation checkpointing: over two accumulated micro-batches, with a logits-only
 * forward between them, the recomputing model gives bitwise the full model's losses and
 * gradients, tied and untied, with the per-layer buffers shared. */
static void test_llama_recompute(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    for (int tied = 0; tied < 2; tied++) {
        llama_model full, rc;
        tiny_model(&full, be, tied, llama_init);
        tiny_model(&rc, be, tied, llama_init_recompute);
        const float *ln1_0, *ln1_2, *ln2, *gu;
        llama_layer_acts(&rc, 0, &ln1_0, &ln2, &gu);
        llama_layer_acts(&rc, 2, &ln1_2, &ln2, &gu);
        assert_ptr_equal(ln1_0, ln1_2); /* one set of layer buffers */
        for (int mb = 0; mb < 2; mb++) {
            int32_t tok[TB * TT], tgt[TB * TT];
            tiny_batch(tok, tgt, mb, 1);
            float lf = llama_forward(&full, tok, tgt), lr = llama_forward(&rc, tok, tgt);
            assert_true(isfinite(lf) && lf == lr);
            llama_backward(&full);
            llama_backward(&rc);
            for (int i = 0; i < TB * TT; i++) tok[i] = (i * 3 + 1) % TV;
            llama_forward(&rc, tok, NULL); /* an evaluation between micro-batches */
        }
        assert_memory_equal(full.grads, rc.grads, sizeof(float) * (size_t)full.n_params);
        llama_free(&rc);
        llama_free(&full);
    }
    backend_destroy(be);
}

/* llama_init's model with the head in chunks of 5 tokens, and with recomputation */
static int init_chunked(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e)
{
    llama_opts o = {.logits_chunk = 5};
    return llama_init_opts(m, c, be, B, T, &o, e);
}

static int init_w16(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e)
{
    llama_opts o = {.weights = LLAMA_BF16_WEIGHTS};
    return llama_init_opts(m, c, be, B, T, &o, e);
}

/* A model with a bf16 weight copy: the products read the copy, not params (a change to
 * params shows only after llama_refresh_w16), and its losses and gradients (the backward
 * on operands rounded once, the dlogits written in bf16 by the loss, the product inputs
 * ln1, ln2, h, lnf kept in bf16 only) are bitwise those of rounding every product's
 * inputs (MATMUL_BF16), tied and untied, with the head whole, in chunks, with
 * recomputation, with the copy made at init (LLAMA_BF16_WEIGHTS) and with a
 * distillation loss (fp32 dlogits). */
static void test_llama_bf16_weights(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    be->ops->set_matmul(be, MATMUL_BF16);
    int32_t tok[TB * TT], tgt[TB * TT];
    tiny_batch(tok, tgt, 0, 1);
    init_fn ref_inits[] = {llama_init, init_chunked, llama_init_recompute, llama_init};
    init_fn w_inits[] = {llama_init, init_chunked, llama_init_recompute, init_w16};
    for (int k = 0; k < 8; k++) {
        int tied = k % 2;
        llama_model ref, w;
        tiny_model(&ref, be, tied, ref_inits[k / 2]);
        tiny_model(&w, be, tied, w_inits[k / 2]);
        llama_use_bf16_weights(&w);
        assert_non_null(w.w16);
        llama_refresh_w16(&w);
        float lr = llama_forward(&ref, tok, tgt), lw = llama_forward(&w, tok, tgt);
        assert_true(isfinite(lr) && lr == lw);
        llama_backward(&ref);
        llama_backward(&w);
        assert_memory_equal(ref.grads, w.grads, sizeof(float) * (size_t)ref.n_params);
        if (!ref.logits_chunk) { /* distillation from the logits of another model */
            llama_model t;
            tiny_model(&t, be, 1 - tied, llama_init_forward_only);
            llama_forward(&t, tok, NULL);
            llama_forward(&ref, tok, tgt);
            llama_forward(&w, tok, tgt);
            float dr = llama_distill(&ref, t.logits, 0.5f, 2.0f), dw = llama_distill(&w, t.logits, 0.5f, 2.0f);
            assert_true(isfinite(dr) && dr == dw);
            llama_backward(&ref);
            llama_backward(&w);
            assert_memory_equal(ref.grads, w.grads, sizeof(float) * (size_t)ref.n_params);
            llama_free(&t);
        }
        const llama_tensor *q = llama_tensor_at(&w, llama_tensor_index(&w, "model.layers.1.self_attn.q_proj.weight"));
        for (int64_t i = 0; i < q->numel; i++) w.params[q->offset + i] *= 2.0f;
        assert_true(llama_forward(&w, tok, tgt) == lw); /* the copy is stale: the products do not see it */
        llama_refresh_w16(&w);
        assert_true(llama_forward(&w, tok, tgt) != lw);
        llama_free(&w);
        llama_free(&ref);
    }
    backend_destroy(be);
}

/* llama_stage_hook: stages 0 .. n_layers + 1 in order, once each per backward, and at
 * each stage every tensor of that stage (llama_grad_stage) already holds its final
 * gradient, tied and untied. */
typedef struct hook_log {
    llama_model *m;
    int n, stages[16];
    float *snap[16]; /* grads at each call */
} hook_log;

static void record_stage(void *ctx, int stage)
{
    hook_log *h = ctx;
    assert_true(h->n < 16);
    h->stages[h->n] = stage;
    h->snap[h->n] = pc_alloc_f32((size_t)h->m->n_params);
    memcpy(h->snap[h->n], h->m->grads, sizeof(float) * (size_t)h->m->n_params);
    h->n++;
}

static void test_llama_grad_stages(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    for (int tied = 0; tied < 2; tied++) {
        llama_model m;
        tiny_model(&m, be, tied, llama_init);
        int L = m.cfg.n_layers;
        assert_int_equal(llama_grad_stage(&m, llama_tensor_index(&m, "model.norm.weight")), 0);
        assert_int_equal(llama_grad_stage(&m, llama_tensor_index(&m, "model.layers.2.mlp.up_proj.weight")), 1);
        assert_int_equal(llama_grad_stage(&m, llama_tensor_index(&m, "model.layers.0.input_layernorm.weight")), L);
        assert_int_equal(llama_grad_stage(&m, 0), L + 1);
        int32_t tok[TB * TT], tgt[TB * TT];
        tiny_batch(tok, tgt, 0, 0);
        hook_log h = {.m = &m};
        llama_forward(&m, tok, tgt);
        m.on_grads = record_stage;
        m.on_grads_ctx = &h;
        llama_backward(&m);
        assert_int_equal(h.n, L + 2);
        for (int k = 0; k < h.n; k++) {
            assert_int_equal(h.stages[k], k);
            for (int i = 0; i < llama_n_tensors(&m); i++) {
                const llama_tensor *t = llama_tensor_at(&m, i);
                int done = llama_grad_stage(&m, i) <= k;
                int same = memcmp(h.snap[k] + t->offset, m.grads + t->offset, sizeof(float) * (size_t)t->numel) == 0;
                if (done && !same) fail_msg("stage %d: %s's gradient is not final yet", k, t->name);
            }
            free(h.snap[k]);
        }
        llama_free(&m);
    }
    backend_destroy(be);
}

/* on_weights: a model whose weights arrive only when llama_forward announces their stage
 * (NaN until then) computes exactly the loss of one that had them all along. */
typedef struct late_weights {
    llama_model *from, *to;
    int next; /* the stage expected next */
} late_weights;

static void deliver_stage(void *ctx, int fwd_stage)
{
    late_weights *w = ctx;
    assert_int_equal(fwd_stage, w->next++);
    for (int i = 0; i < llama_n_tensors(w->to); i++) {
        const llama_tensor *t = llama_tensor_at(w->to, i);
        if (w->to->cfg.n_layers + 1 - llama_grad_stage(w->to, i) == fwd_stage)
            memcpy(w->to->params + t->offset, w->from->params + t->offset, sizeof(float) * (size_t)t->numel);
    }
}

static void test_llama_weight_stages(void **state)
{
    (void)state;
    backend *be = backend_cpu_create(1);
    for (int tied = 0; tied < 2; tied++) {
        llama_model a, b;
        tiny_model(&a, be, tied, llama_init);
        tiny_model(&b, be, tied, llama_init);
        for (int64_t i = 0; i < b.n_params; i++) b.params[i] = NAN;
        int32_t tok[TB * TT], tgt[TB * TT];
        tiny_batch(tok, tgt, 0, 0);
        late_weights w = {&a, &b, 0};
        b.on_weights = deliver_stage;
        b.on_weights_ctx = &w;
        float la = llama_forward(&a, tok, tgt), lb = llama_forward(&b, tok, tgt);
        assert_int_equal(w.next, a.cfg.n_layers + 2);
        assert_true(isfinite(la) && la == lb);
        llama_free(&b);
        llama_free(&a);
    }
    backend_destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm),           cmocka_unit_test(test_attention_grad),
        cmocka_unit_test(test_rmsnorm_grad),   cmocka_unit_test(test_swiglu_grad),
        cmocka_unit_test(test_xent_grad),      cmocka_unit_test(test_rope_inverse),
        cmocka_unit_test(test_adamw_first_step), cmocka_unit_test(test_llama_table_and_init),
        cmocka_unit_test(test_llama_forward_only), cmocka_unit_test(test_llama_recompute),
        cmocka_unit_test(test_llama_logits_chunk),
        cmocka_unit_test(test_bf16_weights_ops),  cmocka_unit_test(test_llama_bf16_weights),
        cmocka_unit_test(test_llama_grad_stages), cmocka_unit_test(test_llama_weight_stages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
