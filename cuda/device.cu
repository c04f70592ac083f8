/* device: CUDA device discovery. A missing driver or GPU is not an error: it reports
 * zero devices so that backend.device=auto falls back to the CPU. */
#include "device.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int pc_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error */
        return 0;
    }
    return n;
}

extern "C" int pc_cuda_device_pci(int i, char *buf, int n) {
    if (i < 0 || i >= pc_cuda_device_count() || cudaDeviceGetPCIBusId(buf, n, i) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return 0;
}

extern "C" int pc_cuda_device_name(int i, char *buf, int n) {
    cudaDeviceProp prop;
    if (i < 0 || i >= pc_cuda_device_count() || cudaGetDeviceProperties(&prop, i) != cudaSuccess) return -1;
    snprintf(buf, (size_t)n, "%s", prop.name);
    return 0;
}
