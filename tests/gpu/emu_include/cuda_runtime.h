/* cuda_runtime.h for the host emulator: the runtime calls cuda/ makes, on host memory.
 * One device ("SIMT emulator", compute capability 9.0, 80 GiB, 227 KB of opt-in shared
 * memory per block); streams are names, and every call completes before it returns, so
 * synchronisation is a no-op. Kernel launches go through simt_emu.h. */
#ifndef PC_EMU_CUDA_RUNTIME_H
#define PC_EMU_CUDA_RUNTIME_H

#include "simt_emu.h"

#include <cstdio>

#include "../emu_c/cuda_runtime_common.h"

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct cudaDeviceProp {
    char name[256];
    int major, minor;
    size_t totalGlobalMem, sharedMemPerBlockOptin;
};

#define EMU_DEVICE_BYTES ((size_t)80 << 30)
#define EMU_SMEM_OPTIN ((size_t)232448)

inline std::atomic<size_t> emu_allocated{0};

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d != 0) return cudaErrorInvalidDevice;
    std::memset(p, 0, sizeof *p);
    std::snprintf(p->name, sizeof p->name, "SIMT emulator");
    p->major = 9, p->minor = 0;
    p->totalGlobalMem = EMU_DEVICE_BYTES;
    p->sharedMemPerBlockOptin = EMU_SMEM_OPTIN;
    return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    *total_b = EMU_DEVICE_BYTES;
    *free_b = EMU_DEVICE_BYTES - std::min((size_t)emu_allocated, EMU_DEVICE_BYTES);
    return cudaSuccess;
}

/* Device buffers: host memory with a header holding the size (for the usage count), and
 * garbage bytes (NaN) until written, as cudaMalloc's memory is undefined. */
inline cudaError_t cudaMalloc(void **p, size_t bytes)
{
    char *b = (char *)std::aligned_alloc(256, (bytes + 256 + 255) / 256 * 256);
    if (!b) return cudaErrorMemoryAllocation;
    std::memcpy(b, &bytes, sizeof bytes);
    std::memset(b + 256, 0xff, bytes);
    emu_allocated += bytes;
    *p = b + 256;
    return cudaSuccess;
}
inline cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    char *b = (char *)p - 256;
    size_t bytes;
    std::memcpy(&bytes, b, sizeof bytes);
    emu_allocated -= bytes;
    std::free(b);
    return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaMalloc(p, bytes); }
inline cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind)
{
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k, cudaStream_t = nullptr)
{
    return cudaMemcpy(dst, src, bytes, k);
}
inline cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                                     size_t height, cudaMemcpyKind, cudaStream_t = nullptr)
{
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    for (size_t r = 0; r < height; r++) std::memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t = nullptr)
{
    if (bytes) std::memset(p, v, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void *p, int v, size_t bytes) { return cudaMemsetAsync(p, v, bytes); }
inline cudaError_t cudaFuncSetAttribute(const void *, cudaFuncAttribute, int value)
{
    return value >= 0 && (size_t)value <= EMU_SMEM_OPTIN ? cudaSuccess : cudaErrorInvalidValue;
}

#endif
