// What tests may ask the CPU CUDA emulator's device memory (tests/emu/cuda_runtime_emu.cpp)
// beyond the CUDA API: the live bytes and their high-water mark (every cudaMalloc and
// cudaMallocAsync, the kernels' own scratch included), the stream-ordered pool's reserved
// bytes, a device size set from the test, and the bytes downloaded to the host. Plain C++: usable from any test built with
// -DPHI3_CUDA=EMU (PHI3_CUDA_EMU defined).
#pragma once
#include <cstddef>
#include <cstdint>

namespace phi3emu {

// Bytes of the live device allocations (as requested), and the most live at once since the
// last reset_device_peak() (which sets it to the live bytes now).
size_t device_live_bytes();
size_t device_peak_bytes();
void reset_device_peak();
// Bytes the default pool holds: its live allocations' blocks and the freed blocks it keeps
// (released by cudaMemPoolTrimTo, or at a synchronisation down to the release threshold).
size_t pool_reserved_bytes();
// Bytes the device has given out: live cudaMalloc blocks and the pool's reserved bytes.
size_t device_occupied_bytes();
// The device size in bytes (0: PHI3_EMU_MEM_MIB, default 16384 MiB). An allocation fails
// when the live non-pool blocks plus the pool's reserved bytes would exceed it.
void set_device_memory(size_t bytes);

// Bytes copied device to host (cudaMemcpy, cudaMemcpyAsync) by this process so far.
uint64_t d2h_bytes();

}  // namespace phi3emu
