/* The host emulator's stand-in for CUDA's bf16 header (tests/gpu/simt_emu.h). */
#include "simt_emu.h"
