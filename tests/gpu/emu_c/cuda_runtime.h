/* cuda_runtime.h for C code on the host emulator: the runtime calls cuda/comm_nccl.c,
 * cuda/prof.c, tests/gpu/test_nccl.c and bench_gpu.c make, on host memory. The CUDA backend's own sources use
 * emu_include/cuda_runtime.h (C++) instead; both share cuda_runtime_common.h. */
#ifndef PC_EMU_C_CUDA_RUNTIME_H
#define PC_EMU_C_CUDA_RUNTIME_H

#include <stddef.h>

#include "cuda_runtime_common.h"

/* host memory (nccl_emu.c) */
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
/* the emulated device's memory (emu_streams.cpp, from the C++ runtime's count) */
cudaError_t emu_mem_info(size_t *free_b, size_t *total_b);
static inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) { return emu_mem_info(free_b, total_b); }

#endif
