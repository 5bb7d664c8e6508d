// z from a given attention pattern on the GPU; semantics in kernels/ops.h
// (ApplyPatternParams), CPU reference in kernels/cpu/apply_pattern.cpp. One block per
// (query row, head, batch row), threads over the head dimension; each output sums the keys
// in order (the CPU's order), so results are deterministic.
#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

__global__ void apply_pattern_kernel(ApplyPatternParams p) {
  const int t = blockIdx.x, h = p.h0 + blockIdx.y, b = blockIdx.z;
  float* z = p.z + ((int64_t)b * p.T + t) * p.z_stride + (int64_t)h * p.HD;
  if (t < p.pad[b]) {
    for (int d = threadIdx.x; d < p.HD; d += blockDim.x) z[d] = 0.0f;
    return;
  }
  const float* P = p.pattern + (((int64_t)b * p.H + h) * p.T + t) * p.T;
  const float* v = p.v + (int64_t)b * p.T * p.kv_stride + (int64_t)(h / (p.H / p.KVH)) * p.HD;
  for (int d = threadIdx.x; d < p.HD; d += blockDim.x) {
    float s = 0.0f;
    for (int j = 0; j < p.T; ++j) s += P[j] * v[(int64_t)j * p.kv_stride + d];
    z[d] = s;
  }
}

}  // namespace

void attn_apply_pattern(const ApplyPatternParams& p, Stream stream) {
  PHI3_CHECK(p.B >= 0 && p.T >= 0 && p.H > 0 && p.KVH > 0 && p.H % p.KVH == 0 && p.HD > 0 && p.h0 >= 0 &&
                 p.nh >= 0 && p.h0 + p.nh <= p.H && p.B < 65536 && p.H < 65536,
             "attn_apply_pattern: bad shape");
  PHI3_CHECK(p.pattern && p.v && p.pad && p.z, "attn_apply_pattern: null pointer");
  if (p.B == 0 || p.T == 0 || p.nh == 0) return;
  const int threads = std::min(128, (p.HD + 31) / 32 * 32);
  launch(apply_pattern_kernel, dim3(p.T, p.nh, p.B), threads, 0, as_cuda(stream), p);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
