// flag_nonfinite: for each tensor of the batch (blockIdx.y), the flag (kernels/finite_flag.h)
// of its first NaN/Inf, raised into its flag with one atomicMax per block that found one;
// nothing written when all are finite. One launch checks up to NonfiniteBatch::kMax tensors
// (passed by value: no upload). Bandwidth-bound: a grid-stride loop (16-byte loads when x is
// aligned); each thread stops at its first bad value (its later ones have larger indices,
// hence smaller flags), then a warp and a block max. No host synchronisation.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/finite_flag.h"

namespace phi3::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

__global__ void flag_nonfinite_kernel(NonfiniteBatch b) {
  __shared__ unsigned long long warp_best[kThreads / 32];
  const int k = blockIdx.y;
  const float* x = b.x[k];
  const int64_t n = b.n[k];
  const int64_t n4 = (reinterpret_cast<uintptr_t>(x) & 15u) == 0 ? n / 4 : 0;  // float4 part
  const int64_t first = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, step = (int64_t)gridDim.x * blockDim.x;
  unsigned long long f = 0;
  for (int64_t i = first; i < n4 && !f; i += step) {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    f = nonfinite_flag(4 * i, v.x);
    if (!f) f = nonfinite_flag(4 * i + 1, v.y);
    if (!f) f = nonfinite_flag(4 * i + 2, v.z);
    if (!f) f = nonfinite_flag(4 * i + 3, v.w);
  }
  for (int64_t i = 4 * n4 + first; i < n && !f; i += step) f = nonfinite_flag(i, x[i]);
  f = warp_max_u64(f);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_best[warp] = f;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) f = warp_best[w] > f ? warp_best[w] : f;
    if (f) atomicMax(reinterpret_cast<unsigned long long*>(b.flag[k]), f);
  }
}

}  // namespace

void flag_nonfinite(const NonfiniteBatch& b, Stream stream) {
  PHI3_CHECK(b.count >= 0 && b.count <= NonfiniteBatch::kMax, "flag_nonfinite: bad tensor count");
  int64_t most = 0;
  for (int k = 0; k < b.count; ++k) {
    PHI3_CHECK(b.n[k] >= 0, "flag_nonfinite: negative n");
    most = std::max(most, b.n[k]);
  }
  if (most == 0) return;
  // Enough blocks to fill the GPU for the largest tensor (8 per multiprocessor); each thread
  // loops over ~4 floats at least. Blocks past a smaller tensor's end exit at once.
  const int64_t want = (most + kThreads * 4 - 1) / (kThreads * 4);
  const unsigned bx = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sm_count()) * 8)));
  launch(flag_nonfinite_kernel, dim3(bx, unsigned(b.count)), kThreads, 0, as_cuda(stream), b);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
