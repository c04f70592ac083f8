/* The part of the emulated CUDA runtime that C and C++ share: error codes, copy kinds,
 * streams (deferred work, emu_streams.cpp) and the one device, 0.
 * Included by emu_c/cuda_runtime.h (C: cuda/comm_nccl.c, test_nccl.c) and
 * emu_include/cuda_runtime.h (C++: the CUDA backend's sources). */
#ifndef PC_EMU_CUDA_RUNTIME_COMMON_H
#define PC_EMU_CUDA_RUNTIME_COMMON_H

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNotReady = 600,
} cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef struct emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 0x01

static inline const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotReady: return "device not ready";
    }
    return "unknown error";
}
static inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

/* Streams (tests/gpu/emu_streams.cpp): work put on a stream runs in order, as late as
 * CUDA allows: when that stream or the device is synchronized (also at cudaStreamQuery,
 * which then answers cudaSuccess, and at cudaFree); work on the null stream runs at once. */
#ifdef __cplusplus
extern "C" {
#endif
cudaError_t emu_stream_create(cudaStream_t *s);
cudaError_t emu_stream_destroy(cudaStream_t s);
cudaError_t emu_stream_sync(cudaStream_t s);
cudaError_t emu_device_sync(void);
/* Put run(ctx) on stream s (the null stream: run it now). */
void emu_stream_put(cudaStream_t s, void (*run)(void *), void *ctx);
/* Events: recording one puts "take the host clock" on the stream, so it completes when
 * the work before it has run; the elapsed time between two needs both completed
 * (cudaErrorNotReady otherwise, as CUDA answers), so a read without a wait fails. */
typedef struct emu_event *cudaEvent_t;
cudaError_t emu_event_create(cudaEvent_t *e);
cudaError_t emu_event_destroy(cudaEvent_t e);
cudaError_t emu_event_record(cudaEvent_t e, cudaStream_t s);
cudaError_t emu_event_sync(cudaEvent_t e);
cudaError_t emu_event_elapsed(float *ms, cudaEvent_t start, cudaEvent_t end);
#ifdef __cplusplus
}
#endif
static inline cudaError_t cudaEventCreate(cudaEvent_t *e) { return emu_event_create(e); }
static inline cudaError_t cudaEventDestroy(cudaEvent_t e) { return emu_event_destroy(e); }
static inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) { return emu_event_record(e, s); }
static inline cudaError_t cudaEventSynchronize(cudaEvent_t e) { return emu_event_sync(e); }
static inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    return emu_event_elapsed(ms, start, end);
}
static inline cudaError_t cudaDeviceSynchronize(void) { return emu_device_sync(); }
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    (void)flags;
    return emu_stream_create(s);
}
static inline cudaError_t cudaStreamCreate(cudaStream_t *s) { return emu_stream_create(s); }
static inline cudaError_t cudaStreamDestroy(cudaStream_t s) { return emu_stream_destroy(s); }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t s) { return emu_stream_sync(s); }
static inline cudaError_t cudaStreamQuery(cudaStream_t s) { return emu_stream_sync(s); }

#endif
