/* cuda_runtime.h for C code on the host emulator: the runtime calls cuda/comm_nccl.c and
 * tests/gpu/test_nccl.c make, on host memory. The CUDA backend's own sources use
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

#endif
