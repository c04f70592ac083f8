/* device_none: the CUDA discovery API when the build has no CUDA: never a device. */
#include "device.h"

int pc_cuda_device_count(void) { return 0; }

int pc_cuda_device_name(int i, char *buf, int n) {
    (void)i;
    (void)buf;
    (void)n;
    return -1;
}

int pc_cuda_device_pci(int i, char *buf, int n) { return pc_cuda_device_name(i, buf, n); }
