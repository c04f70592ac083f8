/* launch: PC_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...) launches a kernel.
 * Every launch goes through it so that the CUDA sources also compile for the host
 * emulator (tests/gpu/simt_emu.h defines it to run the kernel on host threads). */
#ifndef PC_LAUNCH_H
#define PC_LAUNCH_H

#ifndef PC_SIMT_EMU
#define PC_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#endif

#endif
