/* test_simt_emu: the emulator refuses what a GPU refuses (simt_emu.h, "What a GPU
 * refuses"), so that the emu suite can fail where a GPU would: launches outside CUDA's
 * limits fail through cudaGetLastError and do not run; dynamic shared memory above 48 KiB
 * needs the kernel's attribute; writes outside a device buffer, copies and cuBLAS operands
 * past one, misaligned 16-byte loads and 8-byte stores, ldmatrix rows and cp.async copies
 * misaligned or outside shared memory abort (checked in a child process, by its signal and
 * message); cp.async's destination is undefined until waited for; a warp that falls
 * behind the others reads what they write past a missing block barrier; a
 * read past a buffer reads a huge negative number, not a plausible value; work put on a
 * stream runs when it is synchronized, not before, and its events complete with it;
 * blocks run in index order, reversed or shuffled (PC_EMU_BLOCK_ORDER). Also
 * that correct uses of the same calls pass, that mma.sync's and ldmatrix's emulations
 * follow the layouts PTX documents, and that the tensor-core attention's fragment
 * products (cuda/attention_tc_kernels.cuh) are A Y^T and A Y. */
#include "cuda_runtime.h"
#include "cublas_v2.h"
#include "launch.h"
#include "attention_tc_kernels.cuh"

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <string>

static int failures, checks;

static void check(bool ok, const char *what)
{
    checks++;
    if (!ok) failures++;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
}

/* Run f in a child; true when it aborted and its stderr holds `needle`. */
template <typename F> static bool aborts_with(F f, const char *needle)
{
    int fds[2];
    if (pipe(fds) != 0) return false;
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        f();
        _exit(0);
    }
    close(fds[1]);
    std::string err;
    char buf[512];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, (size_t)n);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && err.find(needle) != std::string::npos;
}

__global__ void k_mark(int *flag)
{
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) *flag += 1;
}

/* y[i] = x[i] for i < n + extra: extra > 0 reads and writes past both buffers */
__global__ void k_copy(float *y, const float *x, int n, int extra)
{
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n + extra) y[i] = x[i];
}

static void launch_limits()
{
    int *flag;
    cudaMalloc((void **)&flag, sizeof *flag);
    *flag = 0;
    cudaGetLastError();
    PC_LAUNCH(k_mark, 1, 1024, 0, nullptr)(flag);
    check(cudaGetLastError() == cudaSuccess && *flag == 1, "1024 threads a block launch");
    PC_LAUNCH(k_mark, 1, 1025, 0, nullptr)(flag);
    check(cudaGetLastError() == cudaErrorInvalidConfiguration && *flag == 1, "1025 threads: refused, not run");
    check(cudaGetLastError() == cudaSuccess, "the launch error is returned once");
    PC_LAUNCH(k_mark, dim3(1, 65535, 1), 32, 0, nullptr)(flag);
    check(cudaGetLastError() == cudaSuccess && *flag == 2, "gridDim.y 65535 launches");
    PC_LAUNCH(k_mark, dim3(1, 1, 65536), 32, 0, nullptr)(flag);
    check(cudaGetLastError() == cudaErrorInvalidConfiguration && *flag == 2, "gridDim.z 65536: refused");
    PC_LAUNCH(k_mark, 1, 32, 48 * 1024, nullptr)(flag);
    check(cudaGetLastError() == cudaSuccess && *flag == 3, "48 KiB of dynamic shared memory launches");
    PC_LAUNCH(k_mark, 1, 32, 64 * 1024, nullptr)(flag);
    check(cudaGetLastError() == cudaErrorInvalidValue && *flag == 3, "64 KiB without the attribute: refused");
    check(cudaFuncSetAttribute((const void *)k_mark, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) ==
              cudaSuccess,
          "the attribute is set");
    PC_LAUNCH(k_mark, 1, 32, 64 * 1024, nullptr)(flag);
    check(cudaGetLastError() == cudaSuccess && *flag == 4, "64 KiB with the attribute launches");
    PC_LAUNCH(k_mark, 1, 32, 64 * 1024 + 1, nullptr)(flag);
    check(cudaGetLastError() == cudaErrorInvalidValue && *flag == 4, "one byte above the attribute: refused");
    cudaFree(flag);
}

static void memory()
{
    const int n = 100;
    float *x, *y;
    cudaMalloc((void **)&x, n * sizeof(float));
    cudaMalloc((void **)&y, (n + 1) * sizeof(float));
    for (int i = 0; i < n; i++) x[i] = (float)i;
    PC_LAUNCH(k_copy, 1, 128, 0, nullptr)(y, x, n, 0);
    check(y[n - 1] == (float)(n - 1), "a copy inside its buffers runs");
    PC_LAUNCH(k_copy, 1, 128, 0, nullptr)(y, x, n, 1); /* y has room for n + 1: only x is read past */
    check(y[n] < -1e29f, "a read one past a buffer reads a huge negative number");
    y[n] = 1.0f;
    check(aborts_with([&] { PC_LAUNCH(k_copy, 1, 128, 0, nullptr)(x, y, n, 1); }, "k_copy wrote outside a device "
                                                                                    "buffer of 400 bytes"),
          "a kernel writing one past its buffer aborts, naming the kernel");
    check(aborts_with(
              [&] {
                  x[-1] = 0.0f;
                  cudaFree(x);
              },
              "wrote outside a device buffer of 400 bytes (at byte -4 of it)"),
          "a write before a buffer aborts at cudaFree");
    float host[n + 1] = {};
    check(cudaMemcpy(x, host, n * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess, "a copy of the whole buffer");
    check(aborts_with([&] { cudaMemcpy(x, host, (n + 1) * sizeof(float), cudaMemcpyHostToDevice); },
                      "cudaMemcpy dst: 404 bytes at byte 0 of a device buffer of 400 bytes run past its end"),
          "a copy past a buffer aborts");
    check(aborts_with([&] { cudaMemcpy(host, host + 1, sizeof(float), cudaMemcpyDeviceToHost); },
                      "is not in a live device buffer"),
          "a device-to-host copy from host memory aborts");
    check(aborts_with([&] { cudaMemset(y + 50, 0, 52 * sizeof(float)); }, "cudaMemset"),
          "a memset past a buffer aborts");
    int not_device = 0;
    check(cudaFree(&not_device) == cudaErrorInvalidValue, "cudaFree of a pointer it did not make fails");
    cudaFree(x);
    cudaFree(y);
}

/* out[0] = sum of the 4 floats at x + offset, by a 16-byte load */
__global__ void k_ld4(float *out, const float *x, int offset)
{
    const float4 v = emu_ld4(x + offset);
    out[0] = v.x + v.y + v.z + v.w;
}

/* One m16n8k16 product of A (16 x 16) and B (16 x 8), both in row-major device memory,
 * into D (16 x 8), each lane building its fragments element by element from the PTX
 * ISA's formulas (a_i at row g + 8 ((i / 2) % 2), column 2t + i % 2 + 8 (i / 4); b_i at
 * row 2t + i % 2 + 8 (i / 2), column g; d_i at row g + 8 (i / 2), column 2t + i % 2). */
__global__ void k_mma(float *d, const __nv_bfloat16 *a, const __nv_bfloat16 *b)
{
    const unsigned lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    uint32_t af[4] = {}, bf[2] = {};
    for (unsigned i = 0; i < 8; i++) {
        const unsigned row = g + 8 * ((i / 2) % 2), col = 2 * t + i % 2 + 8 * (i / 4);
        af[i / 2] |= (uint32_t)a[row * 16 + col].bits << (16 * (i % 2));
    }
    for (unsigned i = 0; i < 4; i++) {
        const unsigned row = 2 * t + i % 2 + 8 * (i / 2), col = g;
        bf[i / 2] |= (uint32_t)b[row * 8 + col].bits << (16 * (i % 2));
    }
    float acc[4] = {1.0f, 1.0f, 1.0f, 1.0f}; /* C = 1 everywhere */
    emu_mma_16816(acc, af, bf);
    for (unsigned i = 0; i < 4; i++) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = acc[i];
}

static void mma()
{
    __nv_bfloat16 *a, *b;
    float *d;
    cudaMalloc((void **)&a, 256 * sizeof *a);
    cudaMalloc((void **)&b, 128 * sizeof *b);
    cudaMalloc((void **)&d, 128 * sizeof *d);
    for (int i = 0; i < 256; i++) a[i] = __float2bfloat16_rn((float)((i * 7) % 13) - 6.0f); /* small integers: exact */
    for (int i = 0; i < 128; i++) b[i] = __float2bfloat16_rn((float)((i * 5) % 11) - 5.0f);
    PC_LAUNCH(k_mma, 1, 32, 0, nullptr)(d, a, b);
    int bad = 0;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 8; c++) {
            float s = 1.0f;
            for (int k = 0; k < 16; k++) s += __bfloat162float(a[r * 16 + k]) * __bfloat162float(b[k * 8 + c]);
            bad += d[r * 8 + c] != s;
        }
    check(bad == 0, "mma m16n8k16: D = A B + C from fragments in the PTX ISA's layout");
    cudaFree(a);
    cudaFree(b);
    cudaFree(d);
}

/* ldmatrix.x4 (trans 0 or 1) of a 16 x 16 tile in shared memory (row stride 24, element
 * (r, c) = 32 r + c as bits), lane l pointing at row l % 16, column 8 (l / 16) + shift:
 * out[4 l + i] = the lane's register i. from_global: the rows are in global memory. */
__global__ void k_ldsm(uint32_t *out, int trans, int shift, const __nv_bfloat16 *global, int from_global)
{
    __nv_bfloat16 *X = (__nv_bfloat16 *)atc_smem_base();
    for (unsigned i = threadIdx.x; i < 16 * 24; i += blockDim.x) X[i].bits = (uint16_t)(i / 24 * 32 + i % 24);
    __syncthreads();
    const unsigned l = threadIdx.x & 31;
    uint32_t r[4];
    emu_ldmatrix_x4(r, (from_global ? global : X) + (l & 15) * 24 + 8 * (l >> 4) + shift, trans);
    for (int i = 0; i < 4; i++) out[4 * l + i] = r[i];
}

/* The PTX ISA's ldmatrix: matrix i is the one whose rows lanes 8i..8i+7 point at (here
 * rows 8 (i % 2).., columns 8 (i / 2)..); lane l's register i holds its elements (l / 4,
 * 2 (l % 4)) and (l / 4, 2 (l % 4) + 1), the first in the low half; with .trans those of
 * the transpose, (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4). Misaligned rows and rows
 * outside shared memory abort. */
static void ldmatrix()
{
    uint32_t *out;
    __nv_bfloat16 *g;
    cudaMalloc((void **)&out, 128 * sizeof *out);
    cudaMalloc((void **)&g, 16 * 24 * sizeof *g);
    for (int trans = 0; trans < 2; trans++) {
        PC_LAUNCH(k_ldsm, 1, 32, 16 * 24 * 2, nullptr)(out, trans, 0, g, 0);
        int bad = 0;
        for (unsigned l = 0; l < 32; l++)
            for (unsigned i = 0; i < 4; i++)
                for (unsigned e = 0; e < 2; e++) {
                    const unsigned row = trans ? 2 * (l % 4) + e : l / 4, col = trans ? l / 4 : 2 * (l % 4) + e;
                    const unsigned want = (8 * (i % 2) + row) * 32 + 8 * (i / 2) + col;
                    bad += (out[4 * l + i] >> (16 * e) & 0xffffu) != want;
                }
        check(bad == 0, trans ? "ldmatrix.x4.trans: the transposed matrices in the PTX ISA's fragment layout"
                              : "ldmatrix.x4: the matrices in the PTX ISA's fragment layout");
    }
    check(aborts_with([&] { PC_LAUNCH(k_ldsm, 1, 32, 16 * 24 * 2, nullptr)(out, 0, 4, g, 0); }, "not 16-byte aligned"),
          "ldmatrix rows 8-byte aligned abort");
    check(aborts_with([&] { PC_LAUNCH(k_ldsm, 1, 32, 16 * 24 * 2, nullptr)(out, 0, 0, g, 1); },
                      "outside the block's dynamic shared memory"),
          "ldmatrix rows in global memory abort");
    cudaFree(out);
    cudaFree(g);
}

/* d1 = A Y^T and d2 = A Y (16 x 16 each, fp32, row-major) through the tensor-core
 * attention's helpers: A's fragment (atc_frags_a), then atc_mma_abt and atc_mma_ab
 * reading Y, both from row-major bf16 tiles in shared memory padded as the kernels pad. */
__global__ void k_frag_products(float *d1, float *d2, const __nv_bfloat16 *a, const __nv_bfloat16 *y)
{
    const int ld = 16 + ATC_PAD;
    bf16 *As = (bf16 *)atc_smem_base(), *Ys = As + 16 * ld;
    for (unsigned i = threadIdx.x; i < 256; i += blockDim.x) As[i / 16 * ld + i % 16] = a[i], Ys[i / 16 * ld + i % 16] = y[i];
    __syncthreads();
    u32 af[1][4];
    atc_frags_a<1>(af, As, ld, 0);
    float c1[2][4], c2[2][4];
    atc_zero<2>(c1);
    atc_zero<2>(c2);
    atc_mma_abt<1, 1, 2>(&c1, &af, Ys, ld);
    atc_mma_ab<1, 1, 2>(&c2, &af, Ys, ld);
    const float one[2] = {1.0f, 1.0f};
    atc_store<2>(d1, 16, c1, 0, 16, one);
    atc_store<2>(d2, 16, c2, 0, 16, one);
}

static void frag_products()
{
    __nv_bfloat16 *a, *y;
    float *d1, *d2;
    cudaMalloc((void **)&a, 256 * sizeof *a);
    cudaMalloc((void **)&y, 256 * sizeof *y);
    cudaMalloc((void **)&d1, 256 * sizeof *d1);
    cudaMalloc((void **)&d2, 256 * sizeof *d2);
    for (int i = 0; i < 256; i++) a[i] = __float2bfloat16_rn((float)((i * 7) % 13) - 6.0f); /* small integers: exact */
    for (int i = 0; i < 256; i++) y[i] = __float2bfloat16_rn((float)((i * 5) % 11) - 5.0f);
    PC_LAUNCH(k_frag_products, 1, 32, 2 * 16 * (16 + ATC_PAD) * 2, nullptr)(d1, d2, a, y);
    int bad1 = 0, bad2 = 0;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            float s1 = 0.0f, s2 = 0.0f;
            for (int k = 0; k < 16; k++) {
                s1 += __bfloat162float(a[r * 16 + k]) * __bfloat162float(y[c * 16 + k]);
                s2 += __bfloat162float(a[r * 16 + k]) * __bfloat162float(y[k * 16 + c]);
            }
            bad1 += d1[r * 16 + c] != s1;
            bad2 += d2[r * 16 + c] != s2;
        }
    check(bad1 == 0, "atc_mma_abt: A Y^T from ldmatrix fragments");
    check(bad2 == 0, "atc_mma_ab: A Y from ldmatrix.trans fragments");
    cudaFree(a);
    cudaFree(y);
    cudaFree(d1);
    cudaFree(d2);
}

/* cp.async of `size` bytes (16: 4 floats; 4: one) from x into shared memory, or of zeros
 * with src_bytes 0: what the thread reads there before waiting for the group (out[0]) and
 * after (out[1]), as sums of the floats copied. Misaligned addresses, destinations outside
 * shared memory and other sizes abort (offsets in floats). */
__global__ void k_cp_async(float *out, const float *x, int src_off, int dst_off, int to_global, unsigned src_bytes,
                           unsigned size)
{
    float *sm = (float *)atc_smem_base();
    emu_cp_async(to_global ? out + 4 : sm + dst_off, x + src_off, size, src_bytes);
    emu_cp_commit();
    out[0] = out[1] = 0.0f;
    for (unsigned i = 0; i < size / 4; i++) out[0] += sm[dst_off + i];
    emu_cp_wait(0);
    for (unsigned i = 0; i < size / 4; i++) out[1] += sm[dst_off + i];
}

static void cp_async()
{
    float *x, *out;
    cudaMalloc((void **)&x, 8 * sizeof *x);
    cudaMalloc((void **)&out, 8 * sizeof *out);
    for (int i = 0; i < 8; i++) x[i] = (float)i;
    PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 4, 0, 0, 16u, 16u);
    check(std::isnan(out[0]) && out[1] == 4.0f + 5.0f + 6.0f + 7.0f,
          "cp.async: the destination is undefined (NaN) until the group is waited for, then the copy");
    PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 4, 0, 0, 0u, 16u);
    check(std::isnan(out[0]) && out[1] == 0.0f, "cp.async with src-size 0: undefined until waited for, then zeros");
    check(aborts_with([&] { PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 4, 0, 0, 8u, 16u); }, "src-size 8"),
          "cp.async with another src-size aborts");
    PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 5, 1, 0, 4u, 4u);
    check(std::isnan(out[0]) && out[1] == 5.0f,
          "cp.async of 4 bytes (4-byte aligned): undefined until waited for, then the float");
    PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 5, 1, 0, 0u, 4u);
    check(std::isnan(out[0]) && out[1] == 0.0f, "cp.async of 4 bytes with src-size 0: then zero");
    check(aborts_with([&] { PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 0, 0, 0, 2u, 2u); }, "4, 8 or 16"),
          "cp.async of 2 bytes aborts");
    check(aborts_with([&] { PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 2, 0, 0, 16u, 16u); }, "not 16-byte aligned"),
          "cp.async from an 8-byte aligned address aborts");
    check(aborts_with([&] { PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 0, 2, 0, 16u, 16u); }, "not 16-byte aligned"),
          "cp.async to an 8-byte aligned address aborts");
    check(aborts_with([&] { PC_LAUNCH(k_cp_async, 1, 1, 64, nullptr)(out, x, 0, 0, 1, 16u, 16u); },
                      "outside the block's dynamic shared memory"),
          "cp.async to global memory aborts");
    cudaFree(x);
    cudaFree(out);
}

/* Rounds of: every thread writes its round into its slot of shared memory, a block
 * barrier, then reads 8 other warps' slots with a warp barrier after each read, and (with
 * barrier 1) a block barrier before the next round's writes. Without that barrier a warp
 * that falls behind reads a slot already overwritten: *bad counts such reads. */
__global__ void k_drift(int *bad, int barrier)
{
    int *slot = (int *)atc_smem_base();
    const unsigned n = blockDim.x;
    for (int r = 0; r < 64; r++) {
        slot[threadIdx.x] = r;
        __syncthreads();
        for (unsigned j = 1; j <= 8; j++) {
            if (slot[(threadIdx.x + 32 * j) % n] != r) atomicAdd(bad, 1);
            __syncwarp();
        }
        if (barrier) __syncthreads();
    }
}

static void warp_drift()
{
    int *bad;
    cudaMalloc((void **)&bad, sizeof *bad);
    for (int barrier = 0; barrier < 2; barrier++) {
        *bad = 0;
        PC_LAUNCH(k_drift, 1, 256, 256 * sizeof(int), nullptr)(bad, barrier);
        check(barrier ? *bad == 0 : *bad > 0,
              barrier ? "warps that read before a block barrier all read the round's values"
                      : "a warp held back reads what the others overwrote past a missing block barrier");
    }
    cudaFree(bad);
}

/* order[blockIdx] = how many blocks ran before it */
__global__ void k_order(int *order, int *ran)
{
    if (threadIdx.x == 0) order[blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)] = (*ran)++;
}

/* *sum += x[block], atomically */
__global__ void k_atomic_sum(float *sum, const float *x)
{
    if (threadIdx.x == 0) atomicAdd(sum, x[blockIdx.x]);
}

/* PC_EMU_BLOCK_ORDER: every block runs once, in index order (x fastest), reversed, or in
 * another permutation at every launch */
static void block_orders()
{
    const dim3 grid(5, 3, 2);
    const int n = 30;
    int *order, *ran;
    cudaMalloc((void **)&order, 2 * n * sizeof *order);
    cudaMalloc((void **)&ran, sizeof *ran);
    auto run = [&](const char *how, int *into) {
        if (how)
            setenv("PC_EMU_BLOCK_ORDER", how, 1);
        else
            unsetenv("PC_EMU_BLOCK_ORDER");
        *ran = 0;
        PC_LAUNCH(k_order, grid, 32, 0, nullptr)(into, ran);
        cudaDeviceSynchronize();
        unsetenv("PC_EMU_BLOCK_ORDER");
        std::vector<int> seen(into, into + n);
        std::sort(seen.begin(), seen.end());
        for (int i = 0; i < n; i++)
            if (seen[i] != i) return false;
        return true;
    };
    bool ok = run(nullptr, order);
    for (int i = 0; i < n; i++) ok &= order[i] == i;
    check(ok, "blocks run in index order, x fastest");
    ok = run("reverse", order);
    for (int i = 0; i < n; i++) ok &= order[i] == n - 1 - i;
    check(ok, "PC_EMU_BLOCK_ORDER=reverse: the last block first");
    ok = run("shuffle", order) && run("shuffle", order + n);
    int moved = 0, differ = 0;
    for (int i = 0; i < n; i++) moved += order[i] != i, differ += order[i] != order[n + i];
    check(ok && moved > n / 2 && differ > n / 2,
          "PC_EMU_BLOCK_ORDER=shuffle: every block once, in another order at every launch");
    check(aborts_with([&] { run("sideways", order); }, "PC_EMU_BLOCK_ORDER is not"), "an unknown order aborts");
    cudaFree(order);
    cudaFree(ran);
    /* what the orders are for: a float sum by atomics takes other bits in another order */
    float *x, *sum;
    cudaMalloc((void **)&x, n * sizeof *x);
    cudaMalloc((void **)&sum, 2 * sizeof *sum);
    for (int i = 0; i < n; i++) x[i] = i == 0 ? 1e8f : 1.0f; /* 1e8 + 1 is 1e8; 29 + 1e8 is not */
    for (int k = 0; k < 2; k++) {
        if (k) setenv("PC_EMU_BLOCK_ORDER", "reverse", 1);
        sum[k] = 0.0f;
        PC_LAUNCH(k_atomic_sum, n, 32, 0, nullptr)(sum + k, x);
        cudaDeviceSynchronize();
        unsetenv("PC_EMU_BLOCK_ORDER");
    }
    check(sum[0] == 1e8f && sum[1] == 1e8f + 32.0f,
          "a float sum by atomicAdd: 1e8 first, then 29 ones, is 1e8; the ones first (blocks reversed), 1e8 + 32");
    cudaFree(x);
    cudaFree(sum);
}

/* out[w] = __ballot_sync of (lane % 3 == 0 or lane == 31) in warp w, and its __popc */
__global__ void k_ballot(unsigned *out)
{
    const unsigned lane = threadIdx.x & 31, bits = __ballot_sync(0xffffffffu, lane % 3 == 0 || lane == 31);
    if (lane == 0) out[2 * (threadIdx.x >> 5)] = bits, out[2 * (threadIdx.x >> 5) + 1] = (unsigned)__popc(bits);
}

static void ballot()
{
    unsigned *out;
    cudaMalloc((void **)&out, 4 * sizeof *out);
    PC_LAUNCH(k_ballot, 1, 64, 0, nullptr)(out);
    cudaDeviceSynchronize();
    check(out[0] == 0xc9249249u && out[2] == out[0] && out[1] == 12 && out[3] == 12,
          "__ballot_sync: the lanes' predicates as bits, __popc their count, in every warp");
    cudaFree(out);
}

static void vector_loads()
{
    float *x, *out;
    cudaMalloc((void **)&x, 8 * sizeof *x);
    cudaMalloc((void **)&out, sizeof *out);
    for (int i = 0; i < 8; i++) x[i] = (float)i;
    PC_LAUNCH(k_ld4, 1, 1, 0, nullptr)(out, x, 4);
    check(out[0] == 4.0f + 5.0f + 6.0f + 7.0f, "16-byte load from a 16-byte aligned address");
    check(aborts_with([&] { PC_LAUNCH(k_ld4, 1, 1, 0, nullptr)(out, x, 2); }, "not 16-byte aligned"),
          "16-byte load from an 8-byte aligned address aborts");
    emu_st_aligned<uint64_t>(x + 2, 0x4080000040400000ull); /* 3.0f, 4.0f */
    check(x[2] == 3.0f && x[3] == 4.0f, "8-byte store to an 8-byte aligned address");
    check(aborts_with([&] { emu_st_aligned<uint64_t>(x + 1, 0); }, "not 8-byte aligned"),
          "8-byte store to a 4-byte aligned address aborts");
    cudaFree(x);
    cudaFree(out);
}

static void cublas()
{
    cublasHandle_t h;
    cublasCreate(&h);
    float *a, *b, *c;
    const int m = 4, n = 3, k = 5;
    cudaMalloc((void **)&a, m * k * sizeof(float));
    cudaMalloc((void **)&b, k * n * sizeof(float));
    cudaMalloc((void **)&c, m * n * sizeof(float));
    for (int i = 0; i < m * k; i++) a[i] = 1.0f;
    for (int i = 0; i < k * n; i++) b[i] = 2.0f;
    const float one = 1.0f, zero = 0.0f;
    auto gemm = [&](int lda, const float *bb) {
        return cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_32F, lda, bb, CUDA_R_32F, k, &zero,
                            c, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    check(gemm(m, b) == CUBLAS_STATUS_SUCCESS && c[m * n - 1] == 10.0f, "a GEMM inside its operands");
    check(gemm(m - 1, b) == CUBLAS_STATUS_INVALID_VALUE, "lda below the operand's rows: CUBLAS_STATUS_INVALID_VALUE");
    check(aborts_with([&] { gemm(m, b + 1); }, "cuBLAS GEMM operand B: 60 bytes at byte 4"),
          "an operand running past its buffer aborts");
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    cublasDestroy(h);
}

/* Work on a stream runs when the stream (or device) is synchronized, not before; copies
 * from and into pageable host memory follow CUDA's rules. */
static void streams()
{
    cudaStream_t s;
    int *flag, *pinned;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaMalloc((void **)&flag, sizeof *flag);
    cudaMallocHost((void **)&pinned, sizeof *pinned);
    *flag = 0;
    PC_LAUNCH(k_mark, 1, 32, 0, s)(flag);
    check(cudaGetLastError() == cudaSuccess && *flag == 0, "a kernel on a stream has not run at the launch");
    cudaStreamSynchronize(s);
    check(*flag == 1, "it has run after cudaStreamSynchronize");
    PC_LAUNCH(k_mark, 1, 32, 0, s)(flag);
    *pinned = -1;
    cudaMemcpyAsync(pinned, flag, sizeof *flag, cudaMemcpyDeviceToHost, s);
    check(*pinned == -1, "a copy into pinned memory has not run at the call");
    check(cudaStreamQuery(s) == cudaSuccess && *pinned == 2, "cudaStreamQuery runs the stream: kernel, then copy");
    int host = -1;
    PC_LAUNCH(k_mark, 1, 32, 0, s)(flag);
    cudaMemcpyAsync(&host, flag, sizeof host, cudaMemcpyDeviceToHost, s);
    check(host == 3, "a copy into pageable memory waits for the stream's earlier work");
    host = 40;
    cudaMemcpyAsync(flag, &host, sizeof host, cudaMemcpyHostToDevice, s);
    host = 50;
    cudaDeviceSynchronize();
    check(*flag == 40, "a copy from pageable memory reads it at the call");
    PC_LAUNCH(k_mark, 1, 32, 0, s)(flag);
    int *gone = flag;
    cudaMemcpyAsync(pinned, gone, sizeof *pinned, cudaMemcpyDeviceToHost, s);
    cudaFree(flag);
    check(*pinned == 41, "cudaFree runs the pending work first");
    cublasHandle_t h;
    cublasCreate(&h);
    cublasSetStream(h, s);
    float *a;
    cudaMalloc((void **)&a, 3 * sizeof(float));
    a[0] = 2.0f, a[1] = 3.0f, a[2] = 0.0f;
    const float one = 1.0f, zero = 0.0f;
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, a, CUDA_R_32F, 1, a + 1, CUDA_R_32F, 1, &zero, a + 2,
                 CUDA_R_32F, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    check(a[2] == 0.0f, "a cuBLAS product on a stream has not run at the call");
    cudaStreamSynchronize(s);
    check(a[2] == 6.0f, "it has run after cudaStreamSynchronize");
    cublasDestroy(h);
    cudaFree(a);
    cudaFreeHost(pinned);
    cudaStreamDestroy(s);
}

/* Events complete in stream order when their stream runs: the time between two is
 * refused (cudaErrorNotReady, as CUDA answers) until both completed, and waiting for
 * the later event runs the work before it. */
static void events()
{
    cudaStream_t s;
    cudaEvent_t a, b;
    int *flag;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaMalloc((void **)&flag, sizeof *flag);
    *flag = 0;
    cudaEventRecord(a, s);
    PC_LAUNCH(k_mark, 1, 32, 0, s)(flag);
    cudaEventRecord(b, s);
    float ms = -1.0f;
    check(cudaEventElapsedTime(&ms, a, b) == cudaErrorNotReady && ms == -1.0f,
          "the time between events not yet completed is refused");
    check(cudaEventSynchronize(b) == cudaSuccess && *flag == 1, "waiting for an event runs the work before it");
    check(cudaEventElapsedTime(&ms, a, b) == cudaSuccess && ms >= 0.0f, "then the time between them is read");
    cudaEventRecord(a, s);
    check(cudaEventElapsedTime(&ms, a, b) == cudaErrorNotReady, "an event recorded again is pending again");
    cudaEventDestroy(a); /* runs its stream first: the pending record must not outlive it */
    cudaEventDestroy(b);
    cudaFree(flag);
    cudaStreamDestroy(s);
}

int main()
{
    launch_limits();
    memory();
    vector_loads();
    mma();
    ldmatrix();
    frag_products();
    cp_async();
    warp_drift();
    block_orders();
    ballot();
    cublas();
    streams();
    events();
    std::printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
