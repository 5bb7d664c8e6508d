// Counters of the CPU CUDA emulator that tests read (-DPHI3_CUDA=EMU builds only; defined in
// tests/emu/cuda_runtime_emu.cpp).
#pragma once
#include <cstdint>

namespace phi3emu {

// Bytes copied device to host (cudaMemcpy, cudaMemcpyAsync) by this process so far.
uint64_t d2h_bytes();

}  // namespace phi3emu
