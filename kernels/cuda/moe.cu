// Mixture of experts (CUDA twins of kernels/cpu/moe.cpp, the arithmetic of kernels/op_moe.h):
//   route forward / backward: one thread per token row (E and k are small: 8-128 experts);
//   combine forward: one thread per output element, the k slots summed in ascending order;
//   combine backward: dy one thread per element (each slot written once), dgates one warp per
//   (row, slot) dot product.
#include "kernels/cuda/common.cuh"
#include "kernels/op_moe.h"

namespace phi3::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void moe_route_forward_kernel(int32_t* ids, float* gates, const float* logits, int N, int E, int k,
                                         bool renorm) {
  float p[kMoeMaxExperts];
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
    moe_softmax(p, logits + n * E, E);
    moe_topk(ids + n * k, gates + n * k, p, E, k, renorm);
  }
}

__global__ void moe_route_backward_kernel(float* dlogits, const float* dgates, const float* logits,
                                          const int32_t* ids, int N, int E, int k, bool renorm) {
  float p[kMoeMaxExperts];
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
    moe_softmax(p, logits + n * E, E);
    moe_route_grad(dlogits + n * E, dgates + n * k, p, ids + n * k, E, k, renorm);
  }
}

__global__ void moe_combine_forward_kernel(float* out, const float* y, const int32_t* slot, const float* gates, int N,
                                           int k, int D) {
  const int64_t total = int64_t(N) * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = i / D, d = i % D;
    int32_t s[kMoeMaxTopK];
    moe_sorted_slots(s, slot + n * k, k);
    float o = 0.0f;
    for (int a = 0; a < k; ++a) {
      float g = 1.0f;
      if (gates)
        for (int j = 0; j < k; ++j)
          if (slot[n * k + j] == s[a]) g = gates[n * k + j];
      o += y[int64_t(s[a]) * D + d] * g;
    }
    out[i] = o;
  }
}

__global__ void moe_combine_dy_kernel(float* dy, const float* dout, const int32_t* slot, const float* gates, int N,
                                      int k, int D) {
  const int64_t total = int64_t(N) * k * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t nj = i / D, d = i % D, n = nj / k;
    const float w = gates ? gates[nj] : 1.0f;
    dy[int64_t(slot[nj]) * D + d] = dout[n * D + d] * w;
  }
}

// One warp per (row, slot): dgates[n, j] = dout[n] . y[slot[n, j]].
__global__ void moe_combine_dgates_kernel(float* dgates, const float* dout, const float* y, const int32_t* slot,
                                          int N, int k, int D) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t nj = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); nj < int64_t(N) * k; nj += warps) {
    const int64_t n = nj / k;
    const float* g = dout + n * D;
    const float* yr = y + int64_t(slot[nj]) * D;
    float acc = 0.0f;
    for (int d = lane; d < D; d += 32) acc += g[d] * yr[d];
    acc = warp_sum(acc);
    if (lane == 0) dgates[nj] = acc;
  }
}

__global__ void moe_sparsemixer_forward_kernel(int32_t* ids, float* gates, const float* logits, int N, int E,
                                               float eps) {
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x)
    moe_sparsemixer_row(ids + n * 2, gates + n * 2, logits + n * E, E, eps, nullptr, nullptr);
}

__global__ void moe_sparsemixer_backward_kernel(float* dlogits, const float* dgates, const float* logits, int N, int E,
                                                float eps) {
  float p1[kMoeMaxExperts], p2[kMoeMaxExperts];
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x)
    moe_sparsemixer_grad(dlogits + n * E, dgates + n * 2, logits + n * E, E, eps, p1, p2);
}

void check_route(int N, int E, int k) {
  PHI3_CHECK(N >= 0 && E > 0 && k > 0 && k <= E && E <= kMoeMaxExperts && k <= kMoeMaxTopK,
             "moe_route: N=" + std::to_string(N) + " E=" + std::to_string(E) + " k=" + std::to_string(k));
}

}  // namespace

void moe_route_forward(int32_t* ids, float* gates, const float* logits, int N, int E, int k, bool renorm,
                       Stream stream) {
  check_route(N, E, k);
  if (N == 0) return;
  launch(moe_route_forward_kernel, grid_for(N, 64), 64, 0, as_cuda(stream), ids, gates, logits, N, E, k, renorm);
  PHI3_LAUNCH_CHECK();
}

void moe_route_backward(float* dlogits, const float* dgates, const float* logits, const int32_t* ids, int N, int E,
                        int k, bool renorm, Stream stream) {
  check_route(N, E, k);
  if (N == 0) return;
  launch(moe_route_backward_kernel, grid_for(N, 64), 64, 0, as_cuda(stream), dlogits, dgates, logits, ids, N, E, k,
         renorm);
  PHI3_LAUNCH_CHECK();
}

void moe_combine_forward(float* out, const float* y, const int32_t* slot, const float* gates, int N, int k, int D,
                         Stream stream) {
  PHI3_CHECK(N >= 0 && k > 0 && k <= kMoeMaxTopK && D > 0, "moe_combine_forward: bad shape");
  if (N == 0) return;
  launch(moe_combine_forward_kernel, grid_for(int64_t(N) * D, kThreads), kThreads, 0, as_cuda(stream), out, y, slot,
         gates, N, k, D);
  PHI3_LAUNCH_CHECK();
}

void moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* slot,
                          const float* gates, int N, int k, int D, Stream stream) {
  PHI3_CHECK(N >= 0 && k > 0 && D > 0, "moe_combine_backward: bad shape");
  if (N == 0) return;
  launch(moe_combine_dy_kernel, grid_for(int64_t(N) * k * D, kThreads), kThreads, 0, as_cuda(stream), dy, dout, slot,
         gates, N, k, D);
  PHI3_LAUNCH_CHECK();
  if (!dgates) return;
  launch(moe_combine_dgates_kernel, grid_for(int64_t(N) * k * 32, kThreads), kThreads, 0, as_cuda(stream), dgates,
         dout, y, slot, N, k, D);
  PHI3_LAUNCH_CHECK();
}

void moe_sparsemixer_forward(int32_t* ids, float* gates, const float* logits, int N, int E, float eps,
                             Stream stream) {
  PHI3_CHECK(N >= 0 && E >= 2 && E <= kMoeMaxExperts && eps >= 0.0f,
             "moe_sparsemixer_forward: N=" + std::to_string(N) + " E=" + std::to_string(E));
  if (N == 0) return;
  launch(moe_sparsemixer_forward_kernel, grid_for(N, 64), 64, 0, as_cuda(stream), ids, gates, logits, N, E, eps);
  PHI3_LAUNCH_CHECK();
}

void moe_sparsemixer_backward(float* dlogits, const float* dgates, const float* logits, int N, int E, float eps,
                              Stream stream) {
  PHI3_CHECK(N >= 0 && E >= 2 && E <= kMoeMaxExperts && eps >= 0.0f,
             "moe_sparsemixer_backward: N=" + std::to_string(N) + " E=" + std::to_string(E));
  if (N == 0) return;
  launch(moe_sparsemixer_backward_kernel, grid_for(N, 64), 64, 0, as_cuda(stream), dlogits, dgates, logits, N, E,
         eps);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
