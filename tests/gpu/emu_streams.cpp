/* emu_streams: the streams of the emulated CUDA runtime (emu_c/cuda_runtime_common.h),
 * for C (cuda/comm_nccl.c, nccl_emu.c) and C++ (the backend's sources) alike. A stream
 * holds the work put on it (simt_emu.h, emu_put: kernels, copies, memsets, cuBLAS
 * products; emu_stream_put: nccl_emu.c's collectives) and runs it, in order, only when it
 * is synchronized: cudaStreamSynchronize and cudaStreamQuery (which then answers
 * cudaSuccess), or cudaDeviceSynchronize and cudaFree for every stream. */
#include "cuda_runtime.h"

#include <algorithm>

extern "C" cudaError_t emu_stream_create(cudaStream_t *s)
{
    *s = new emu_stream;
    emu_stream_list.push_back(*s);
    return cudaSuccess;
}

extern "C" cudaError_t emu_stream_destroy(cudaStream_t s)
{
    auto it = std::find(emu_stream_list.begin(), emu_stream_list.end(), s);
    if (!s || it == emu_stream_list.end()) return cudaErrorInvalidValue;
    emu_run_stream(s); /* work already put on it still completes */
    emu_stream_list.erase(it);
    delete s;
    return cudaSuccess;
}

extern "C" cudaError_t emu_stream_sync(cudaStream_t s)
{
    if (s) emu_run_stream(s); /* the null stream's work ran when it was put */
    return cudaSuccess;
}

extern "C" void emu_stream_put(cudaStream_t s, void (*run)(void *), void *ctx)
{
    emu_put(s, [run, ctx] { run(ctx); });
}

extern "C" cudaError_t emu_device_sync(void)
{
    emu_run_stream(nullptr);
    return cudaSuccess;
}
