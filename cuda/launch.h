/* launch: PC_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...) launches a kernel.
 * Every launch goes through it so that the CUDA sources also compile for the host
 * emulator (tests/gpu/simt_emu.h defines it to run the kernel on host threads). */
#ifndef PC_LAUNCH_H
#define PC_LAUNCH_H

#ifndef PC_SIMT_EMU
#define PC_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#endif

/* PC_UNROLL before a loop of a known trip count: nvcc unrolls it (so that arrays indexed
 * by its counter stay in registers); the host emulator's compiler does as it sees fit. */
#ifndef PC_SIMT_EMU
#define PC_UNROLL _Pragma("unroll")
#else
#define PC_UNROLL
#endif

#endif
