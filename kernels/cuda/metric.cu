// Logit-difference metric (DESIGN §3), per batch row.
//
// forward:   ld[b] = logits[b, ans[b]] - logits[b, other[b]]      logits [B, V], row stride
// backward:  dlogits[b, :V] = 0 except  dlogits[b, ans[b]] += scale,
//            dlogits[b, other[b]] -= scale                         (overwrites the row)
// `scale` is d metric / d ld[b] (1/B for the batch mean). When ans == other the two terms
// cancel, as the derivative of l_a - l_a does. Nothing is saved.
// Forward: one thread per row. Backward: a 2-D grid (rows x vocab), one pass that writes
// every element, so there is no zero-then-scatter ordering to get wrong.
#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

__global__ void logit_diff_forward_kernel(float* ld, const float* logits, int64_t stride,
                                          const int32_t* ans, const int32_t* other, int B) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const float* row = logits + (int64_t)b * stride;
  ld[b] = row[ans[b]] - row[other[b]];
}

__global__ void logit_diff_backward_kernel(float* dlogits, int64_t stride, const int32_t* ans,
                                           const int32_t* other, float scale, int B, int V) {
  for (int b = blockIdx.y; b < B; b += gridDim.y) {
    const int a = ans[b], o = other[b];
    float* row = dlogits + (int64_t)b * stride;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < V; j += gridDim.x * blockDim.x) {
      float g = 0.0f;
      if (j == a) g += scale;
      if (j == o) g -= scale;
      row[j] = g;
    }
  }
}

}  // namespace

void logit_diff_forward(float* ld /*[B]*/, const float* logits /*[B,V]*/, int64_t stride,
                        const int32_t* ans /*[B]*/, const int32_t* other /*[B]*/, int B,
                        Stream stream) {
  PHI3_CHECK(B >= 0, "logit_diff_forward: negative B");
  if (B == 0) return;
  launch(logit_diff_forward_kernel, ceil_div(B, 128), 128, 0, as_cuda(stream), ld, logits, stride,
         ans, other, B);
  PHI3_LAUNCH_CHECK();
}

void logit_diff_backward(float* dlogits /*[B,V]*/, int64_t stride, const int32_t* ans,
                         const int32_t* other, float scale, int B, int V, Stream stream) {
  PHI3_CHECK(B >= 0 && V > 0 && stride >= V, "logit_diff_backward: bad shape B=" +
                                                  std::to_string(B) + " V=" + std::to_string(V));
  if (B == 0) return;
  const int threads = 256;
  const unsigned bx = ceil_div(V, threads * 4);  // ~4 elements per thread
  const unsigned by = static_cast<unsigned>(B < 65535 ? B : 65535);
  launch(logit_diff_backward_kernel, dim3(bx, by), threads, 0, as_cuda(stream), dlogits, stride,
         ans, other, scale, B, V);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
