/* device: CUDA device discovery, callable from C whether or not CUDA was built. */
#ifndef PC_CUDA_DEVICE_H
#define PC_CUDA_DEVICE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when none (or no driver) is present. */
int pc_cuda_device_count(void);
/* Name of device i into buf; returns 0 on success, -1 when absent. */
int pc_cuda_device_name(int i, char *buf, int n);
/* PCI bus id of device i ("0000:18:00.0"), the same whichever devices a process sees;
 * returns 0 on success, -1 when absent. */
int pc_cuda_device_pci(int i, char *buf, int n);

#ifdef __cplusplus
}
#endif

#endif
