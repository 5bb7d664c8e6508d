// flag_nonfinite: the flag (kernels/finite_flag.h) of the first NaN/Inf of x[0, n), raised
// into *flag with one atomicMax per block that found one; nothing written when all are
// finite. Bandwidth-bound: a grid-stride loop (16-byte loads when x is aligned), each thread
// stops at its first bad value (its later ones have larger indices, hence smaller flags),
// then a warp and a block max. No host synchronisation: the caller reads many flags at once.
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

// n4 leading elements read as float4 (x 16-byte aligned), the rest one by one.
__global__ void flag_nonfinite_kernel(unsigned long long* flag, const float* x, int64_t n, int64_t n4) {
  __shared__ unsigned long long warp_best[kThreads / 32];
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
    if (f) atomicMax(flag, f);
  }
}

}  // namespace

void flag_nonfinite(uint64_t* flag, const float* x /*[n]*/, int64_t n, Stream stream) {
  PHI3_CHECK(n >= 0, "flag_nonfinite: negative n");
  if (n == 0) return;
  const int64_t n4 = aligned16(x) ? n / 4 : 0;
  const int64_t items = n4 + (n - 4 * n4);
  launch(flag_nonfinite_kernel, grid_for((items + 3) / 4, kThreads), kThreads, 0, as_cuda(stream),
         reinterpret_cast<unsigned long long*>(flag), x, n, n4);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
