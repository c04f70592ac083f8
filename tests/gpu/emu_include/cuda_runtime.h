/* cuda_runtime.h for the host emulator: the runtime calls cuda/ makes, on host memory.
 * One device ("SIMT emulator", compute capability 9.0, 80 GiB, 227 KB of opt-in shared
 * memory per block). Asynchronous calls go on their stream and run when it is
 * synchronized (emu_streams.cpp), as CUDA allows: a copy from pageable host memory reads
 * it at the call, one into pageable host memory waits for the stream first, and pinned
 * memory (cudaMallocHost) is read or written when the copy runs. Kernel launches go
 * through simt_emu.h. */
#ifndef PC_EMU_CUDA_RUNTIME_H
#define PC_EMU_CUDA_RUNTIME_H

#include "simt_emu.h"

#include <cstdio>
#include <cstdlib>

#include "../emu_c/cuda_runtime_common.h"

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct cudaDeviceProp {
    char name[256];
    int major, minor;
    size_t totalGlobalMem, sharedMemPerBlockOptin;
};

#define EMU_DEVICE_BYTES ((size_t)80 << 30)
/* Opt-in shared memory per block: an H100's, or PC_EMU_SMEM_OPTIN bytes from the
 * environment (a smaller GPU's limit, for the paths that depend on it). */
#define EMU_SMEM_OPTIN emu_smem_optin_limit()
inline size_t emu_smem_optin_limit()
{
    const char *v = std::getenv("PC_EMU_SMEM_OPTIN");
    return v ? (size_t)std::strtoull(v, nullptr, 10) : (size_t)232448;
}

inline std::atomic<size_t> emu_allocated{0};

inline cudaError_t cudaGetLastError()
{
    const int e = emu_launch_error;
    emu_launch_error = 0;
    return (cudaError_t)e;
}
/* The one device, hidden as CUDA hides devices when CUDA_VISIBLE_DEVICES is empty or
 * names none (-1), so that tests can give a rank no GPU. */
inline cudaError_t cudaGetDeviceCount(int *n)
{
    const char *v = std::getenv("CUDA_VISIBLE_DEVICES");
    *n = v && (!*v || *v == '-') ? 0 : 1;
    return *n ? cudaSuccess : cudaErrorNoDevice;
}
inline cudaError_t cudaDeviceGetPCIBusId(char *buf, int len, int d)
{
    if (d != 0) return cudaErrorInvalidDevice;
    std::snprintf(buf, (size_t)len, "0000:00:00.0");
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
/* Bytes of the emulated device that other processes hold: PC_EMU_DEVICE_OTHERS_MIB in the
 * environment (0 when unset), so that tests can give a job a device already in use. */
inline size_t emu_others_bytes()
{
    const char *v = std::getenv("PC_EMU_DEVICE_OTHERS_MIB");
    return v ? (size_t)std::strtoull(v, nullptr, 10) << 20 : 0;
}
inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    const size_t used = (size_t)emu_allocated + emu_others_bytes();
    *total_b = EMU_DEVICE_BYTES;
    *free_b = EMU_DEVICE_BYTES - std::min(used, EMU_DEVICE_BYTES);
    return cudaSuccess;
}

/* Device buffers (simt_emu.h, "device memory"): host memory holding garbage (NaN bytes)
 * until written, as cudaMalloc's memory is undefined, 256-byte aligned, between red
 * zones; pinned host buffers are made the same way. Not thread-safe: one host thread
 * drives the emulated device. */
inline cudaError_t cudaMalloc(void **p, size_t bytes)
{
    static unsigned n_made;
    char *b = (char *)std::aligned_alloc(256, EMU_RED + (bytes + EMU_RED + 255) / 256 * 256);
    if (!b) return cudaErrorMemoryAllocation;
    const unsigned char red = (unsigned char)(0xf0 + n_made++ % 15);
    std::memset(b, red, EMU_RED);
    std::memset(b + EMU_RED, 0xff, bytes);
    std::memset(b + EMU_RED + bytes, red, EMU_RED);
    emu_bufs[(uintptr_t)(b + EMU_RED)] = emu_buf{bytes, red};
    emu_allocated += bytes;
    *p = b + EMU_RED;
    return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaMalloc(p, bytes); }
inline cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    auto it = emu_bufs.find((uintptr_t)p);
    if (it == emu_bufs.end()) return cudaErrorInvalidValue;
    emu_run_stream(nullptr); /* cudaFree waits for the device */
    emu_check_red("device work before this cudaFree");
    emu_allocated -= it->second.bytes;
    emu_bufs.erase(it);
    std::free((char *)p - EMU_RED);
    return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
/* Whether p is memory of cudaMalloc / cudaMallocHost (else pageable host memory). */
inline bool emu_registered(const void *p)
{
    auto it = emu_bufs.upper_bound((uintptr_t)p);
    return it != emu_bufs.begin() && (uintptr_t)p - (--it)->first <= it->second.bytes;
}
/* The device sides of a copy of kind k (dst_bytes at dst, src_bytes at src) lie inside
 * live buffers; `what` names the call. */
inline void emu_copy_check(void *dst, size_t dst_bytes, const void *src, size_t src_bytes, cudaMemcpyKind k,
                           const char *what)
{
    char name[64];
    std::snprintf(name, sizeof name, "%s dst", what);
    if (k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice) emu_check_range(dst, dst_bytes, name);
    std::snprintf(name, sizeof name, "%s src", what);
    if (k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice) emu_check_range(src, src_bytes, name);
}
/* Synchronous: runs at once (the non-blocking streams' pending work is not waited for). */
inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k)
{
    emu_copy_check(dst, bytes, src, bytes, k, "cudaMemcpy");
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k, cudaStream_t s = nullptr)
{
    emu_copy_check(dst, bytes, src, bytes, k, "cudaMemcpy");
    if (!bytes) return cudaSuccess;
    if (k == cudaMemcpyDeviceToHost && !emu_registered(dst)) { /* into pageable memory: complete on return */
        if (s) emu_run_stream(s);
        std::memmove(dst, src, bytes);
    } else if (k == cudaMemcpyHostToDevice && !emu_registered(src)) { /* from pageable memory: read now */
        auto copy = std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
        emu_put(s, [dst, copy] { std::memcpy(dst, copy->data(), copy->size()); });
    } else {
        emu_put(s, [dst, src, bytes] { std::memmove(dst, src, bytes); });
    }
    return cudaSuccess;
}
inline cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                                     size_t height, cudaMemcpyKind k, cudaStream_t s = nullptr)
{
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    if (height && width)
        emu_copy_check(dst, (height - 1) * dpitch + width, src, (height - 1) * spitch + width, k, "cudaMemcpy2DAsync");
    if (k != cudaMemcpyDeviceToDevice) return cudaErrorInvalidValue; /* the only kind cuda/ uses */
    emu_put(s, [=] {
        for (size_t r = 0; r < height; r++)
            std::memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    });
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s = nullptr)
{
    emu_check_range(p, bytes, "cudaMemset");
    if (bytes) emu_put(s, [=] { std::memset(p, v, bytes); });
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void *p, int v, size_t bytes) { return cudaMemsetAsync(p, v, bytes); }
inline cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute, int value)
{
    if (value < 0 || (size_t)value > EMU_SMEM_OPTIN) return cudaErrorInvalidValue;
    emu_smem_optin[func] = (size_t)value;
    return cudaSuccess;
}

#endif
