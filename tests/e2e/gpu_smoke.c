/* gpu_smoke: reports the CUDA devices; skips (exit 77) on machines without a GPU. */
#include <stdio.h>

#include "device.h"

int main(void) {
    int n = pc_cuda_device_count();
    if (n == 0) {
        printf("no CUDA device: skipping\n");
        return 77;
    }
    for (int i = 0; i < n; i++) {
        char name[256];
        if (pc_cuda_device_name(i, name, (int)sizeof name) != 0) return 1;
        printf("device %d: %s\n", i, name);
    }
    return 0;
}
