/* cuda/backend_cuda.cu compiled for the host against the emulator headers (emu_include/,
 * simt_emu.h): the CUDA backend's own source, run on CPU threads by the emu tests. */
#include "../../cuda/backend_cuda.cu"
