/* mfu: model FLOPs utilisation, the model's FLOPs a second over the peak of the ranks'
 * devices: that peak, from backend.peak_tflops or the GPU's name. */
#ifndef PC_MFU_H
#define PC_MFU_H

#include "run.h"

/* The dense bf16 tensor-core TFLOP/s of a known NVIDIA GPU, from its CUDA device name
 * ("NVIDIA H100 80GB HBM3", "NVIDIA A100-PCIE-40GB"): 0 when the name is not known. */
double mfu_peak_tflops(const char *gpu_name);

/* r->peak_tflops: the sum over the ranks of each one's peak (backend.peak_tflops, else by
 * the name of its GPU, device, when cuda), 0 when a rank's is unknown; logged. Collective. */
int mfu_setup(run_ctx *r, int cuda, int device, pc_err *e);

#endif
