// Shared pieces of the CUDA kernels: stream cast, warp/block reductions, launch sizing,
// alignment tests, and the per-thread cache of cuBLAS handles and scratch buffers
// (kernels/cuda/context.cu). Internal to kernels/cuda and runtime/cuda.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/ops.h"
#include "kernels/scratch.h"

namespace phi3::cuda {

inline cudaStream_t as_cuda(Stream s) { return static_cast<cudaStream_t>(s); }

// ---- launching ----------------------------------------------------------------------
// Every kernel here is launched through launch() and declares dynamic shared memory with
// PHI3_DYNAMIC_SHARED, the two spellings the CPU emulator of tests/emu (PHI3_CUDA_EMU)
// replaces, so the same kernel code runs on a machine without a GPU in CI.
#if defined(PHI3_CUDA_EMU)
#define PHI3_DYNAMIC_SHARED(T, name) PHI3_EMU_DYNAMIC_SHARED(T, name)
#else
#define PHI3_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

// kernel<<<grid, block, smem, stream>>>(args...); follow it with PHI3_LAUNCH_CHECK().
template <typename... Params, typename... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, const Args&... args) {
#if defined(PHI3_CUDA_EMU)
  ::phi3emu::launch(reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
                    [&] { kernel(args...); });
#else
  kernel<<<grid, block, smem, stream>>>(args...);
#endif
}

// ---- launch sizing --------------------------------------------------------------------
inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }
// Blocks for a grid-stride loop over n items: enough to fill the GPU, capped so that
// launches stay cheap (each thread then loops).
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > 65536) blocks = 65536;
  return static_cast<unsigned>(blocks);
}
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Multiprocessor count of the current device (cached per device).
int sm_count();

// ---- reductions (fp32) ----------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block, returned to every thread. `smem` holds >= 32 floats; blockDim.x is a
// multiple of 32. Contains __syncthreads(): call from all threads of the block.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float t = lane < n_warps ? smem[lane] : 0.0f;
  return warp_sum(t);
}

// The same in double, for sums whose terms cancel (AtP*'s QK fix).
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double block_sum(double v, double* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  double t = lane < n_warps ? smem[lane] : 0.0;
  return warp_sum(t);
}
// The block's maximum in every thread (smem: one float per warp; blockDim.x a multiple of 32).
__device__ __forceinline__ float block_max(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float t = lane < n_warps ? smem[lane] : -INFINITY;
  return warp_max(t);
}

// ---- per-thread, per-(device, stream) resources ---------------------------------------
// The cuBLAS handle of the calling thread for (current device, stream), bound to `stream`.
// Created on first use; cuBLAS handles are cheap to keep and must not be shared by threads
// that reconfigure them concurrently, hence one per thread.
cublasHandle_t blas_handle(cudaStream_t stream);
// A device scratch buffer of >= bytes for (current device, stream, slot) of the calling
// thread, grown on demand to scratch_capacity(bytes) (kernels/scratch.h, which the memory
// plan evaluates too), stream-ordered after earlier work using the old buffer. Valid until
// the next call with the same key and a larger size.
void* scratch(cudaStream_t stream, size_t bytes, int slot);
// cudaMallocAsync from the current device's default pool; when the device is full, waits
// for the device (frees queued on other streams reach the pool), gives the pool's unused
// blocks back (cudaMemPoolTrimTo 0: fragments it keeps cannot serve a larger request) and
// tries once more. Returns cudaErrorMemoryAllocation (error state cleared) when that fails
// too; other errors as they come.
cudaError_t malloc_async_or_trim(void** p, size_t bytes, cudaStream_t stream);
// Gives the current device's pool's unused blocks back after waiting for the device: what
// cudaMemGetInfo then reports free can really be allocated.
void trim_pool();
// "X MiB free of Y MiB" of the current device (cudaMemGetInfo), for out-of-memory messages.
std::string device_memory_note();
// Drops the calling thread's handle and scratch for `stream` (the backend calls it before
// destroying its stream, so a later stream at the same address starts clean).
void release_stream_resources(cudaStream_t stream);

}  // namespace phi3::cuda
