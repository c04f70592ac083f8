/* The host emulator's stand-in for CUDA's WMMA header (tests/gpu/simt_emu.h). */
#include "simt_emu.h"
