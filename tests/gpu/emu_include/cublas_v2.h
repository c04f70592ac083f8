/* cublas_v2.h for the host emulator: the cuBLAS calls cuda/ makes, computed on the host
 * with cuBLAS's column-major conventions. Inputs and C are fp32 or bf16 (CUDA_R_16BF: a
 * bf16 C gets each fp32 result rounded, nearest even);
 * CUBLAS_COMPUTE_32F_FAST_TF32 rounds fp32 inputs to TF32 (10-bit mantissa, nearest
 * even) as the tensor cores may; sums are fp32 in k order; beta == 0 never reads C. */
#ifndef PC_EMU_CUBLAS_V2_H
#define PC_EMU_CUBLAS_V2_H

#include "cuda_runtime.h"

typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
struct emu_cublas {
    cudaStream_t stream; /* cublasSetStream: where the products go */
};
typedef struct emu_cublas *cublasHandle_t;

inline const char *cublasGetStatusString(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}
inline cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_cublas{nullptr};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

/* Element (i, j) of op(X) for column-major X (leading dimension ld), as float. */
inline float emu_blas_at(const void *x, cudaDataType t, cublasOperation_t op, long long i, long long j, int ld,
                         int tf32)
{
    const long long idx = op == CUBLAS_OP_N ? i + j * ld : j + i * ld;
    if (t == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16 *)x)[idx]);
    float v = ((const float *)x)[idx];
    if (tf32) { /* keep 10 mantissa bits, nearest even */
        uint32_t u;
        std::memcpy(&u, &v, 4);
        if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & 0xffffe000u;
        std::memcpy(&v, &u, 4);
    }
    return v;
}

/* Abort unless every matrix of a batched operand (rows x cols, column-major, leading
 * dimension ld, stride elements apart, elem bytes each) lies inside one device buffer. */
inline void emu_gemm_operand(const void *x, int rows, int cols, int ld, long long stride, int batch, size_t elem,
                             const char *what)
{
    if (rows == 0 || cols == 0 || batch == 0) return;
    for (int q = 0; q < batch; q++)
        emu_check_range((const char *)x + (size_t)(q * stride) * elem, ((size_t)(cols - 1) * ld + rows) * elem, what);
}

inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                                 int n, int k, const void *alpha, const void *A, cudaDataType at,
                                                 int lda, long long sa, const void *B, cudaDataType bt, int ldb,
                                                 long long sb, const void *beta, void *C, cudaDataType ct, int ldc,
                                                 long long sc, int batch, cublasComputeType_t compute, cublasGemmAlgo_t)
{
    /* stored (column-major) shapes: A is ra x ca, B rb x cb, C m x n */
    const int ra = ta == CUBLAS_OP_N ? m : k, ca = ta == CUBLAS_OP_N ? k : m;
    const int rb = tb == CUBLAS_OP_N ? k : n, cb = tb == CUBLAS_OP_N ? n : k;
    if ((ct != CUDA_R_32F && ct != CUDA_R_16BF) || m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max(1, ra) ||
        ldb < std::max(1, rb) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const int tf32 = compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    const size_t ea = at == CUDA_R_16BF ? 2 : 4, eb = bt == CUDA_R_16BF ? 2 : 4, ec = ct == CUDA_R_16BF ? 2 : 4;
    emu_gemm_operand(A, ra, ca, lda, sa, batch, ea, "cuBLAS GEMM operand A");
    emu_gemm_operand(B, rb, cb, ldb, sb, batch, eb, "cuBLAS GEMM operand B");
    emu_gemm_operand(C, m, n, ldc, sc, batch, ec, "cuBLAS GEMM operand C");
    emu_put(h->stream, [=] { /* alpha and beta were read at the call (host pointer mode) */
        for (int q = 0; q < batch; q++) {
            const char *a = (const char *)A + (size_t)(q * sa) * ea, *b = (const char *)B + (size_t)(q * sb) * eb;
            char *c = (char *)C + (size_t)(q * sc) * ec;
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    float s = 0.0f;
                    for (int l = 0; l < k; l++)
                        s += emu_blas_at(a, at, ta, i, l, lda, tf32) * emu_blas_at(b, bt, tb, l, j, ldb, tf32);
                    const size_t at_ij = i + (size_t)j * ldc;
                    const float r = be == 0.0f ? al * s : al * s + be * emu_blas_at(c, ct, CUBLAS_OP_N, i, j, ldc, 0);
                    if (ct == CUDA_R_16BF)
                        ((__nv_bfloat16 *)c)[at_ij] = __float2bfloat16_rn(r);
                    else
                        ((float *)c)[at_ij] = r;
                }
        }
        emu_check_red("a cuBLAS GEMM");
    });
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void *alpha, const void *A, cudaDataType at, int lda, const void *B,
                                   cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                                   cublasComputeType_t compute, cublasGemmAlgo_t algo)
{
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
                                      compute, algo);
}

#endif
