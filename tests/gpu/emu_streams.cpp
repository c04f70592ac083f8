/* emu_streams: the streams of the emulated CUDA runtime (emu_c/cuda_runtime_common.h),
 * for C (cuda/comm_nccl.c, nccl_emu.c) and C++ (the backend's sources) alike. A stream
 * holds the work put on it (simt_emu.h, emu_put: kernels, copies, memsets, cuBLAS
 * products; emu_stream_put: nccl_emu.c's collectives) and runs it, in order, only when it
 * is synchronized: cudaStreamSynchronize and cudaStreamQuery (which then answers
 * cudaSuccess), or cudaDeviceSynchronize and cudaFree for every stream; an event's
 * stream also when the event is waited for. */
#include "cuda_runtime.h"

#include <algorithm>
#include <chrono>

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

extern "C" cudaError_t emu_mem_info(size_t *free_b, size_t *total_b) { return cudaMemGetInfo(free_b, total_b); }

struct emu_event {
    emu_stream *stream = nullptr; /* recorded on it, not yet completed */
    bool done = false;
    double ms = 0.0; /* host clock when it completed */
};

extern "C" cudaError_t emu_event_create(cudaEvent_t *e)
{
    *e = new emu_event;
    return cudaSuccess;
}

extern "C" cudaError_t emu_event_sync(cudaEvent_t e)
{
    if (!e) return cudaErrorInvalidValue;
    if (!e->done && e->stream) emu_run_stream(e->stream);
    return cudaSuccess;
}

extern "C" cudaError_t emu_event_destroy(cudaEvent_t e)
{
    if (!e) return cudaErrorInvalidValue;
    emu_event_sync(e); /* its stream's pending work still refers to it */
    delete e;
    return cudaSuccess;
}

extern "C" cudaError_t emu_event_record(cudaEvent_t e, cudaStream_t s)
{
    if (!e) return cudaErrorInvalidValue;
    e->stream = s;
    e->done = false;
    emu_put(s, [e] {
        e->ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
        e->done = true;
        e->stream = nullptr;
    });
    return cudaSuccess;
}

extern "C" cudaError_t emu_event_elapsed(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!start || !end) return cudaErrorInvalidValue;
    if (!start->done || !end->done) return cudaErrorNotReady;
    *ms = (float)(end->ms - start->ms);
    return cudaSuccess;
}
