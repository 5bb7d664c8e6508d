// State the CPU CUDA emulator's parts share (tests/emu): limits, the per-thread last
// error, live streams, per-kernel shared-memory limits, device allocations. Internal to
// tests/emu; the emulated code sees only cuda_emu.h and the CUDA headers.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace phi3emu {

constexpr int kMaxThreads = 1024;
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kMaxSmemOptin = 227 * 1024;  // H100's opt-in maximum per block

// Prints "[cuda emulator] what" and aborts (as a kernel fault ends a CUDA context).
[[noreturn]] void fail(const std::string& what);
// A positive integer from the environment, or `fallback`.
long env_long(const char* name, long fallback);

// The error cudaGetLastError() returns next on this thread (failures set it).
void set_last_error(cudaError_t e);
// Dynamic shared memory a kernel may use (48 KiB unless cudaFuncSetAttribute raised it).
size_t smem_limit(const void* kernel);
// Whether `s` is the default stream or a created, not yet destroyed one.
bool stream_live(cudaStream_t s);
// Whether [p, p + bytes) lies inside one live device allocation.
bool is_device_range(const void* p, size_t bytes);

}  // namespace phi3emu
