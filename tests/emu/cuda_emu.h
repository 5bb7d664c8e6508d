// CPU emulation of the CUDA kernel language, so that kernels/cuda/*.cu and runtime/cuda/*.cu
// run on a machine without a GPU (CMake: -DPHI3_CUDA=EMU; scripts/emu-check). This header
// is force-included (-include) when those files are compiled as C++. The emulator itself:
// tests/emu/fibers.cpp (GPU threads as fibers, barriers, shuffles, launches),
// tests/emu/cuda_runtime_emu.cpp (the CUDA runtime calls the project makes, device memory
// in host memory) and tests/emu/cublas_emu.cpp (the cuBLAS calls, on OpenBLAS).
//
// Semantics kept: every thread of a block is a fiber with its own threadIdx; blocks run one
// after another; __syncthreads() waits for every live thread of the block, warp shuffles
// for every live lane of the warp (a shuffle that reads a lane which did not take part is
// reported as an error, as is a barrier that can never complete). __shared__ variables are
// per-block (one copy per OS thread, blocks of one launch never overlap). Between barriers
// threads run in a shuffled order, so results that depend on an unsynchronised order of
// shared-memory accesses show up as wrong answers.
// Not kept: timing, memory coalescing, bank conflicts, the asynchrony of streams (every
// call completes before it returns), and the hardware's warp-synchronous behaviour without
// __syncwarp (code that relies on it is wrong anyway).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

namespace phi3emu {

struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The calling fiber's coordinates (valid inside a kernel only).
const ThreadCoords& coords();
void sync_block();
void sync_warp();
// Publishes this lane's 8-byte value for the current warp exchange round, waits for the
// warp, and returns the value of lane `src` (which must have taken part).
uint64_t warp_exchange(uint64_t mine, int src);
// A warp-collective operation (the WMMA fragment ops, tests/emu/wmma_emu.h): fails unless all
// 32 lanes of the warp are live and call it, each passing the same `digest` (a hash of its
// arguments and fragment contents).
void warp_collective(const char* op, uint64_t digest);
int lane_id();
void* dynamic_shared();

// Runs `body` for every thread of every block of the grid; `smem` bytes of dynamic shared
// memory per block (checked against the limit cudaFuncSetAttribute set for `kernel`).
// Returns when the whole grid has finished; a bad configuration sets the error that the
// next cudaGetLastError() returns, as a real launch does.
void launch(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            const std::function<void()>& body);

template <typename T>
T shuffle(T v, int src) {
  static_assert(sizeof(T) <= 8, "warp shuffle of a type larger than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  const uint64_t got = warp_exchange(bits, src);
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

}  // namespace phi3emu

// ---- the kernel language (for the emulated sources, not for the emulator itself) -------
#if !defined(PHI3_EMU_NO_LANGUAGE)
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One instance per function (per template instantiation) and OS thread: per block, since
// blocks run one at a time on the launching thread.
#define __shared__ static thread_local
// `extern __shared__ T name[];` of a real CUDA kernel is spelled PHI3_DYNAMIC_SHARED(T, name)
// in kernels/cuda (common.cuh), which maps here.
#define PHI3_EMU_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::phi3emu::dynamic_shared())

#define threadIdx (::phi3emu::coords().thread_idx)
#define blockIdx (::phi3emu::coords().block_idx)
#define blockDim (::phi3emu::coords().block_dim)
#define gridDim (::phi3emu::coords().grid_dim)
#define warpSize 32

inline void __syncthreads() { ::phi3emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::phi3emu::sync_warp(); }

template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = ::phi3emu::lane_id();
  return ::phi3emu::shuffle(v, (lane / width) * width + ((src % width) + width) % width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = ::phi3emu::lane_id();
  int src = lane ^ mask;
  if (src / width != lane / width) src = lane;
  return ::phi3emu::shuffle(v, src);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::phi3emu::lane_id();
  const int src = lane + static_cast<int>(delta);
  return ::phi3emu::shuffle(v, src / width == lane / width ? src : lane);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::phi3emu::lane_id();
  const int src = lane - static_cast<int>(delta);
  return ::phi3emu::shuffle(v, src >= 0 && src / width == lane / width ? src : lane);
}

// atomicMax of a 64-bit word (flag_nonfinite). Blocks of one launch run on one OS thread, but
// other host threads may launch onto other streams, hence a real compare-and-swap.
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  unsigned long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

// Device-side integer min/max of the CUDA math library (host C++ has only std::).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
// The explicitly rounded float arithmetic intrinsics (IEEE round-to-nearest, never contracted
// into an FMA); volatile keeps the host compiler from contracting them either.
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }


// The typed overload cuda_runtime.h offers to nvcc-compiled code only.
template <typename R, typename... P>
inline cudaError_t cudaFuncSetAttribute(R (*func)(P...), cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

#include "wmma_emu.h"  // nvcuda::wmma (<mma.h>) on the emulator

#endif  // !PHI3_EMU_NO_LANGUAGE
