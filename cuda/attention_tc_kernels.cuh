/* attention_tc_kernels: the device code of attention_tc.cu (kernels, their helpers and
 * shared-memory sizes), in a header so that the same source also compiles for the host
 * against tests/gpu/simt_emu.h (PC_SIMT_EMU), which runs it on CPU threads. See
 * attention_tc.cu for the algorithm. */
#ifndef PC_ATTENTION_TC_KERNELS_CUH
#define PC_ATTENTION_TC_KERNELS_CUH

#ifndef PC_SIMT_EMU
#include <cuda_bf16.h>
#include <mma.h>
#endif

using namespace nvcuda;

#define ATC_WARPS 4
#define ATC_ROWS (16 * ATC_WARPS) /* rows of a block's own tile */
#define ATC_TILE 64               /* rows of the tiles walked over */
#define ATC_HD_MAX 128
#define ATC_PAD_H 8 /* bf16 row padding (WMMA: ldm a multiple of 8 for 16-bit types) */
#define ATC_PAD_F 4 /* fp32 row padding (a multiple of 4) */

typedef __nv_bfloat16 bf16;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_b_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;


#ifndef PC_SIMT_EMU
/* 16 bytes at p (16-byte aligned: attn_tc_aligned). */
__device__ __forceinline__ float4 atc_ld4(const float *p) { return *(const float4 *)p; }
#define ATC_UNROLL _Pragma("unroll")
#else
#define atc_ld4 emu_ld4
#define ATC_UNROLL
#endif

/* A tile to load: rows of a (T, hd) head view at src (row stride ld) into a bf16 tile at
 * dst; src NULL: none. */
struct atc_src {
    bf16 *dst;
    const float *src;
    size_t ld;
};

/* rows x hd of one or two head views (a, b) from row r0 into bf16 tiles of row stride
 * dst_ld; rows at or past T are zero. All threads of the block take part, each issuing its
 * ATC_LOAD_BATCH 16-byte loads of both tiles before it converts and stores any, so that
 * the loads are in flight together (one after another, each would wait out the memory's
 * latency). hd is a multiple of 4, the sources and their ld 16-byte aligned. */
#define ATC_LOAD_BATCH 8
__device__ void atc_load(atc_src a, atc_src b, int dst_ld, int r0, int rows, int T, int hd)
{
    const atc_src t[2] = {a, b};
    const int vpr = hd >> 2, n = rows * vpr; /* 4-float vectors per row, in a tile */
    for (int v0 = 0; v0 < n; v0 += ATC_LOAD_BATCH * (int)blockDim.x) {
        float4 x[2][ATC_LOAD_BATCH];
        ATC_UNROLL
        for (int u = 0; u < 2 * ATC_LOAD_BATCH; u++) {
            const int j = u / ATC_LOAD_BATCH, idx = v0 + (u % ATC_LOAD_BATCH) * (int)blockDim.x + (int)threadIdx.x;
            const int r = idx / vpr;
            x[j][u % ATC_LOAD_BATCH] = t[j].src && idx < n && r0 + r < T
                                           ? atc_ld4(t[j].src + (size_t)(r0 + r) * t[j].ld + (idx - r * vpr) * 4)
                                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        ATC_UNROLL
        for (int u = 0; u < 2 * ATC_LOAD_BATCH; u++) {
            const int j = u / ATC_LOAD_BATCH, idx = v0 + (u % ATC_LOAD_BATCH) * (int)blockDim.x + (int)threadIdx.x;
            const int r = idx / vpr;
            if (!t[j].src || idx >= n) continue;
            const float4 v = x[j][u % ATC_LOAD_BATCH];
            bf16 *d = t[j].dst + r * dst_ld + (idx - r * vpr) * 4;
            d[0] = __float2bfloat16_rn(v.x);
            d[1] = __float2bfloat16_rn(v.y);
            d[2] = __float2bfloat16_rn(v.z);
            d[3] = __float2bfloat16_rn(v.w);
        }
    }
}

/* One warp: C (16 x 16*n_out, fp32, row stride ldc, in shared memory) = or += A (16 x K,
 * bf16 row-major, lda) times B, where B (K x 16*n_out) is row-major at b (ldb) when
 * !b_trans, or is the transpose of a row-major (16*n_out x K) matrix at b (ldb) when
 * b_trans. K is a multiple of 16. */
__device__ void atc_mma(float *C, int ldc, const bf16 *A, int lda, const bf16 *B, int ldb, int b_trans, int K,
                        int n_out, int accumulate)
{
    for (int n = 0; n < n_out; n++) {
        frag_c acc;
        if (accumulate)
            wmma::load_matrix_sync(acc, C + n * 16, ldc, wmma::mem_row_major);
        else
            wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < K; kk += 16) {
            frag_a a;
            wmma::load_matrix_sync(a, A + kk, lda);
            if (b_trans) { /* element (k, n') of B at b[(16n + n') * ldb + k] */
                frag_b_col b;
                wmma::load_matrix_sync(b, B + (size_t)n * 16 * ldb + kk, ldb);
                wmma::mma_sync(acc, a, b, acc);
            } else { /* element (k, n') at b[k * ldb + 16n + n'] */
                frag_b_row b;
                wmma::load_matrix_sync(b, B + (size_t)kk * ldb + n * 16, ldb);
                wmma::mma_sync(acc, a, b, acc);
            }
        }
        wmma::store_matrix_sync(C + n * 16, acc, ldc, wmma::mem_row_major);
    }
}

#ifndef PC_SIMT_EMU
/* The block's dynamic shared memory. */
__device__ char *atc_smem_base()
{
    extern __shared__ __align__(128) char s[];
    return s;
}
#endif

/* Shared-memory carve-up: the next n elements of type T, 128-byte aligned (WMMA needs
 * 256-bit aligned tile pointers; every tile offset used inside a region is a multiple of
 * 32 bytes). */
template <typename T> __device__ T *atc_take(char *&p, size_t n)
{
    T *r = (T *)p;
    p += (n * sizeof(T) + 127) / 128 * 128;
    return r;
}

static inline size_t atc_bytes(size_t n, size_t size) { return (n * size + 127) / 128 * 128; }

/* ---------------------------------------------------------------- forward */

/* grid (ceil(T/64), H, B), ATC_WARPS*32 threads, atc_fwd_smem(hd) bytes of shared memory. */
__global__ void k_atc_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int T, int H, int KV,
                          int hd, int ld, float scale)
{
    const int ldh = hd + ATC_PAD_H, lds = ATC_TILE + ATC_PAD_F, ldp = ATC_TILE + ATC_PAD_H, ldo = hd + ATC_PAD_F;
    char *p = atc_smem_base();
    bf16 *Qs = atc_take<bf16>(p, (size_t)ATC_ROWS * ldh);   /* (64, hd) */
    bf16 *Ks = atc_take<bf16>(p, (size_t)ATC_TILE * ldh);   /* (64, hd) */
    bf16 *Vs = atc_take<bf16>(p, (size_t)ATC_TILE * ldh);   /* (64, hd) */
    float *Ss = atc_take<float>(p, (size_t)ATC_ROWS * lds); /* (64, 64) scores */
    bf16 *Ps = atc_take<bf16>(p, (size_t)ATC_ROWS * ldp);   /* (64, 64) probabilities */
    float *Os = atc_take<float>(p, (size_t)ATC_ROWS * ldo); /* (64, hd) accumulator */

    const int b = blockIdx.z, h = blockIdx.y, g = h / (H / KV);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* the longest rows (most key tiles) first, so that the short ones fill the last wave */
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ATC_ROWS, last = min(T - 1, q0 + ATC_ROWS - 1);
    const size_t base = (size_t)b * T * ld;
    const float *qh = q + base + (size_t)h * hd, *kh = k + base + (size_t)g * hd, *vh = v + base + (size_t)g * hd;

    atc_load({Qs, qh, (size_t)ld}, {}, ldh, q0, ATC_ROWS, T, hd);
    for (int idx = threadIdx.x; idx < ATC_ROWS * ldo; idx += blockDim.x) Os[idx] = 0.0f;

    /* lane owns half (c_half) of row r_w of its warp's 16 rows */
    const int r_w = lane >> 1, half = lane & 1, row = warp * 16 + r_w, i = q0 + row;
    float m = -INFINITY, l = 0.0f;
    float *S_w = Ss + warp * 16 * lds, *O_w = Os + warp * 16 * ldo;
    bf16 *P_w = Ps + warp * 16 * ldp;

    for (int k0 = 0; k0 <= last; k0 += ATC_TILE) {
        __syncthreads(); /* the previous tiles are consumed; Q and O are written */
        atc_load({Ks, kh, (size_t)ld}, {Vs, vh, (size_t)ld}, ldh, k0, ATC_TILE, T, hd);
        __syncthreads();
        if (k0 > q0 + warp * 16 + 15) continue; /* warp-uniform: every key of the tile is after the warp's rows */
        atc_mma(S_w, lds, Qs + warp * 16 * ldh, ldh, Ks, ldh, 1, hd, ATC_TILE / 16, 0); /* S = Q K^T (16, 64) */
        __syncwarp();
        /* online softmax over this lane's 32 columns and its partner's */
        float mx = -INFINITY;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            const int j = k0 + c;
            const float s = j <= i && j < T ? scale * S_w[r_w * lds + c] : -INFINITY;
            S_w[r_w * lds + c] = s;
            mx = fmaxf(mx, s);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m, mx); /* finite: key 0 <= i lies in the first tile */
        const float alpha = expf(m - m_new);
        float sum = 0.0f;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            const float e = expf(S_w[r_w * lds + c] - m_new); /* 0 where masked */
            P_w[r_w * ldp + c] = __float2bfloat16_rn(e);
            sum += e;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * alpha + sum;
        m = m_new;
        for (int c = half * (hd / 2); c < (half + 1) * (hd / 2); c++) O_w[r_w * ldo + c] *= alpha;
        __syncwarp();
        atc_mma(O_w, ldo, P_w, ldp, Vs, ldh, 0, ATC_TILE, hd / 16, 1); /* O += P V (16, hd) */
        __syncwarp();
    }
    if (i < T) {
        const int ld_out = H * hd;
        float *o = out + ((size_t)b * T + i) * ld_out + (size_t)h * hd;
        const float inv = 1.0f / l;
        for (int c = half * (hd / 2); c < (half + 1) * (hd / 2); c++) o[c] = O_w[r_w * ldo + c] * inv;
        if (half == 0) lse[((size_t)b * H + h) * T + i] = m + logf(l);
    }
}

static inline size_t atc_fwd_smem(int hd)
{
    const size_t ldh = hd + ATC_PAD_H, lds = ATC_TILE + ATC_PAD_F, ldp = ATC_TILE + ATC_PAD_H, ldo = hd + ATC_PAD_F;
    return atc_bytes(ATC_ROWS * ldh, 2) + 2 * atc_bytes(ATC_TILE * ldh, 2) + atc_bytes(ATC_ROWS * lds, 4) +
           atc_bytes(ATC_ROWS * ldp, 2) + atc_bytes(ATC_ROWS * ldo, 4);
}

/* ---------------------------------------------------------------- backward */

/* P and dS of one warp's 16 x 64 block from its S and dP (fp32, row stride lds), for
 * rows `rows0 + r` and columns `cols0 + c`; valid where the key (row or column, as
 * key_is_row says) is at or before the query and both are before T. lse_of/D_of give
 * the query's lse and D. P and dS are written as bf16 (row stride ldp). */
__device__ void atc_p_ds(const float *S, const float *dP, int lds, bf16 *P, bf16 *dS, int ldp, int rows0, int cols0,
                         int key_is_row, const float *lse_q, const float *D_q, int q_base, int T, float scale)
{
    const int lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    for (int c = half * 32; c < half * 32 + 32; c++) {
        const int key = key_is_row ? rows0 + r : cols0 + c, query = key_is_row ? cols0 + c : rows0 + r;
        float pv = 0.0f, dsv = 0.0f;
        if (key <= query && query < T && key < T) {
            const int qi = query - q_base; /* into lse_q / D_q */
            pv = expf(scale * S[r * lds + c] - lse_q[qi]);
            dsv = pv * (dP[r * lds + c] - D_q[qi]);
        }
        P[r * ldp + c] = __float2bfloat16_rn(pv);
        dS[r * ldp + c] = __float2bfloat16_rn(dsv);
    }
}

/* dQ: grid (ceil(T/64), H, B), ATC_WARPS*32 threads, atc_dq_smem(hd) bytes. dq rows of
 * stride ld, like q. */
__global__ void k_atc_dq(float *dq, const float *dout, const float *lse, const float *D, const float *q,
                         const float *k, const float *v, int T, int H, int KV, int hd, int ld, float scale)
{
    const int ldh = hd + ATC_PAD_H, lds = ATC_TILE + ATC_PAD_F, ldp = ATC_TILE + ATC_PAD_H, ldo = hd + ATC_PAD_F;
    char *p = atc_smem_base();
    bf16 *Qs = atc_take<bf16>(p, (size_t)ATC_ROWS * ldh);    /* (64, hd) */
    bf16 *dOs = atc_take<bf16>(p, (size_t)ATC_ROWS * ldh);   /* (64, hd) */
    bf16 *Ks = atc_take<bf16>(p, (size_t)ATC_TILE * ldh);    /* (64, hd) */
    bf16 *Vs = atc_take<bf16>(p, (size_t)ATC_TILE * ldh);    /* (64, hd) */
    float *Ss = atc_take<float>(p, (size_t)ATC_ROWS * lds);  /* (64, 64) */
    float *dPs = atc_take<float>(p, (size_t)ATC_ROWS * lds); /* (64, 64) */
    bf16 *Ps = atc_take<bf16>(p, (size_t)ATC_ROWS * ldp);    /* (64, 64), unused here but by atc_p_ds */
    bf16 *dSs = atc_take<bf16>(p, (size_t)ATC_ROWS * ldp);   /* (64, 64) */
    float *dQs = atc_take<float>(p, (size_t)ATC_ROWS * ldo); /* (64, hd) accumulator */
    float *lse_s = atc_take<float>(p, ATC_ROWS), *D_s = atc_take<float>(p, ATC_ROWS);

    const int b = blockIdx.z, h = blockIdx.y, g = h / (H / KV);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* the longest rows (most key tiles) first, so that the short ones fill the last wave */
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ATC_ROWS, last = min(T - 1, q0 + ATC_ROWS - 1);
    const size_t base = (size_t)b * T * ld;
    const int ld_out = H * hd;
    const float *qh = q + base + (size_t)h * hd, *kh = k + base + (size_t)g * hd, *vh = v + base + (size_t)g * hd;
    const float *doh = dout + (size_t)b * T * ld_out + (size_t)h * hd;

    atc_load({Qs, qh, (size_t)ld}, {dOs, doh, (size_t)ld_out}, ldh, q0, ATC_ROWS, T, hd);
    for (int idx = threadIdx.x; idx < ATC_ROWS * ldo; idx += blockDim.x) dQs[idx] = 0.0f;
    for (int r = threadIdx.x; r < ATC_ROWS; r += blockDim.x) {
        const int i = q0 + r;
        lse_s[r] = i < T ? lse[((size_t)b * H + h) * T + i] : 0.0f;
        D_s[r] = i < T ? D[((size_t)b * H + h) * T + i] : 0.0f;
    }
    const int w0 = warp * 16;
    for (int k0 = 0; k0 <= last; k0 += ATC_TILE) {
        __syncthreads();
        atc_load({Ks, kh, (size_t)ld}, {Vs, vh, (size_t)ld}, ldh, k0, ATC_TILE, T, hd);
        __syncthreads();
        if (k0 > q0 + w0 + 15) continue; /* warp-uniform */
        atc_mma(Ss + w0 * lds, lds, Qs + w0 * ldh, ldh, Ks, ldh, 1, hd, ATC_TILE / 16, 0);   /* S = Q K^T */
        atc_mma(dPs + w0 * lds, lds, dOs + w0 * ldh, ldh, Vs, ldh, 1, hd, ATC_TILE / 16, 0); /* dP = dO V^T */
        __syncwarp();
        atc_p_ds(Ss + w0 * lds, dPs + w0 * lds, lds, Ps + w0 * ldp, dSs + w0 * ldp, ldp, q0 + w0, k0, 0, lse_s, D_s,
                 q0, T, scale);
        __syncwarp();
        atc_mma(dQs + w0 * ldo, ldo, dSs + w0 * ldp, ldp, Ks, ldh, 0, ATC_TILE, hd / 16, 1); /* dQ += dS K */
        __syncwarp();
    }
    const int r_w = lane >> 1, half = lane & 1, i = q0 + w0 + r_w;
    if (i < T) {
        float *o = dq + base + (size_t)i * ld + (size_t)h * hd;
        for (int c = half * (hd / 2); c < (half + 1) * (hd / 2); c++) o[c] = scale * dQs[(w0 + r_w) * ldo + c];
    }
}

static inline size_t atc_dq_smem(int hd)
{
    const size_t ldh = hd + ATC_PAD_H, lds = ATC_TILE + ATC_PAD_F, ldp = ATC_TILE + ATC_PAD_H, ldo = hd + ATC_PAD_F;
    return 2 * atc_bytes(ATC_ROWS * ldh, 2) + 2 * atc_bytes(ATC_TILE * ldh, 2) + 2 * atc_bytes(ATC_ROWS * lds, 4) +
           2 * atc_bytes(ATC_ROWS * ldp, 2) + atc_bytes(ATC_ROWS * ldo, 4) + 2 * atc_bytes(ATC_ROWS, 4);
}

/* dK, dV: grid (ceil(T/64), KV, B), ATC_WARPS*32 threads, atc_dkv_smem(hd) bytes; each
 * warp owns 16 key rows and sums over the group's query heads and the query rows at or
 * after them. dk, dv rows of stride ld, like k and v. */
__global__ void k_atc_dkv(float *dk, float *dv, const float *dout, const float *lse, const float *D, const float *q,
                          const float *k, const float *v, int T, int H, int KV, int hd, int ld, float scale)
{
    const int ldh = hd + ATC_PAD_H, lds = ATC_TILE + ATC_PAD_F, ldp = ATC_TILE + ATC_PAD_H, ldo = hd + ATC_PAD_F;
    char *p = atc_smem_base();
    bf16 *Ks = atc_take<bf16>(p, (size_t)ATC_ROWS * ldh);     /* (64 keys, hd) */
    bf16 *Vs = atc_take<bf16>(p, (size_t)ATC_ROWS * ldh);     /* (64 keys, hd) */
    bf16 *Qs = atc_take<bf16>(p, (size_t)ATC_TILE * ldh);     /* (64 queries, hd) */
    bf16 *dOs = atc_take<bf16>(p, (size_t)ATC_TILE * ldh);    /* (64 queries, hd) */
    float *St = atc_take<float>(p, (size_t)ATC_ROWS * lds);   /* (64 keys, 64 queries) = (Q K^T)^T */
    float *dPt = atc_take<float>(p, (size_t)ATC_ROWS * lds);  /* (64 keys, 64 queries) = (dO V^T)^T */
    bf16 *Pt = atc_take<bf16>(p, (size_t)ATC_ROWS * ldp);     /* (64, 64) */
    bf16 *dSt = atc_take<bf16>(p, (size_t)ATC_ROWS * ldp);    /* (64, 64) */
    float *dKs = atc_take<float>(p, (size_t)ATC_ROWS * ldo);  /* (64 keys, hd) accumulator */
    float *dVs = atc_take<float>(p, (size_t)ATC_ROWS * ldo);  /* (64 keys, hd) accumulator */
    float *lse_s = atc_take<float>(p, ATC_TILE), *D_s = atc_take<float>(p, ATC_TILE);

    const int b = blockIdx.z, g = blockIdx.y, group = H / KV;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int k0 = blockIdx.x * ATC_ROWS;
    const size_t base = (size_t)b * T * ld;
    const int ld_out = H * hd;
    const float *kh = k + base + (size_t)g * hd, *vh = v + base + (size_t)g * hd;

    atc_load({Ks, kh, (size_t)ld}, {Vs, vh, (size_t)ld}, ldh, k0, ATC_ROWS, T, hd);
    for (int idx = threadIdx.x; idx < ATC_ROWS * ldo; idx += blockDim.x) dKs[idx] = dVs[idx] = 0.0f;
    const int w0 = warp * 16;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const float *qh = q + base + (size_t)h * hd;
        const float *doh = dout + (size_t)b * T * ld_out + (size_t)h * hd;
        for (int i0 = k0; i0 < T; i0 += ATC_TILE) { /* query tiles at or after the key tile (aligned: 64 = 64) */
            __syncthreads();
            atc_load({Qs, qh, (size_t)ld}, {dOs, doh, (size_t)ld_out}, ldh, i0, ATC_TILE, T, hd);
            for (int r = threadIdx.x; r < ATC_TILE; r += blockDim.x) {
                const int i = i0 + r;
                lse_s[r] = i < T ? lse[((size_t)b * H + h) * T + i] : 0.0f;
                D_s[r] = i < T ? D[((size_t)b * H + h) * T + i] : 0.0f;
            }
            __syncthreads();
            if (i0 + ATC_TILE - 1 < k0 + w0) continue; /* warp-uniform: every query is before the warp's keys */
            atc_mma(St + w0 * lds, lds, Ks + w0 * ldh, ldh, Qs, ldh, 1, hd, ATC_TILE / 16, 0);   /* K Q^T */
            atc_mma(dPt + w0 * lds, lds, Vs + w0 * ldh, ldh, dOs, ldh, 1, hd, ATC_TILE / 16, 0); /* V dO^T */
            __syncwarp();
            atc_p_ds(St + w0 * lds, dPt + w0 * lds, lds, Pt + w0 * ldp, dSt + w0 * ldp, ldp, k0 + w0, i0, 1, lse_s,
                     D_s, i0, T, scale);
            __syncwarp();
            atc_mma(dVs + w0 * ldo, ldo, Pt + w0 * ldp, ldp, dOs, ldh, 0, ATC_TILE, hd / 16, 1); /* dV += P^T dO */
            atc_mma(dKs + w0 * ldo, ldo, dSt + w0 * ldp, ldp, Qs, ldh, 0, ATC_TILE, hd / 16, 1); /* dK += dS^T Q */
            __syncwarp();
        }
    }
    const int r_w = lane >> 1, half = lane & 1, j = k0 + w0 + r_w;
    if (j < T) {
        float *dko = dk + base + (size_t)j * ld + (size_t)g * hd, *dvo = dv + base + (size_t)j * ld + (size_t)g * hd;
        for (int c = half * (hd / 2); c < (half + 1) * (hd / 2); c++) {
            dko[c] = scale * dKs[(w0 + r_w) * ldo + c];
            dvo[c] = dVs[(w0 + r_w) * ldo + c];
        }
    }
}

static inline size_t atc_dkv_smem(int hd)
{
    const size_t ldh = hd + ATC_PAD_H, lds = ATC_TILE + ATC_PAD_F, ldp = ATC_TILE + ATC_PAD_H, ldo = hd + ATC_PAD_F;
    return 2 * atc_bytes(ATC_ROWS * ldh, 2) + 2 * atc_bytes(ATC_TILE * ldh, 2) + 2 * atc_bytes(ATC_ROWS * lds, 4) +
           2 * atc_bytes(ATC_ROWS * ldp, 2) + 2 * atc_bytes(ATC_ROWS * ldo, 4) + 2 * atc_bytes(ATC_TILE, 4);
}

#endif
