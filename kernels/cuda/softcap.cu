// Soft-capping (Gemma 2's final logits).
//   forward:  x = c tanh(x / c), in place, n elements (soft_cap, op_math.h)
//   backward: dx *= 1 - (y / c)^2, y the forward's output (soft_cap_grad): nothing else saved.
// Elementwise, bandwidth-bound; grid-stride loops.
#include "kernels/cuda/common.cuh"
#include "kernels/op_math.h"

namespace phi3::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void softcap_forward_kernel(float* x, int64_t n, float cap) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = soft_cap(x[i], cap);
}
__global__ void softcap_backward_kernel(float* dx, const float* y, int64_t n, float cap) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] *= soft_cap_grad(y[i], cap);
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

}  // namespace

void softcap_forward(float* x, int64_t n, float cap, Stream stream) {
  PHI3_CHECK(n >= 0 && cap > 0.0f, "softcap_forward: n=" + std::to_string(n) + " cap=" + std::to_string(cap));
  if (n == 0) return;
  launch(softcap_forward_kernel, blocks_for(n), kThreads, 0, as_cuda(stream), x, n, cap);
  PHI3_LAUNCH_CHECK();
}

void softcap_backward(float* dx, const float* y, int64_t n, float cap, Stream stream) {
  PHI3_CHECK(n >= 0 && cap > 0.0f, "softcap_backward: n=" + std::to_string(n) + " cap=" + std::to_string(cap));
  if (n == 0) return;
  launch(softcap_backward_kernel, blocks_for(n), kThreads, 0, as_cuda(stream), dx, y, n, cap);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
