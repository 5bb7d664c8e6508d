// Metrics of the last-position logits (DESIGN §3), per batch row.
// The logit difference:
//
// forward:   ld[b] = logits[b, ans[b]] - logits[b, other[b]]      logits [B, V], row stride
// backward:  dlogits[b, :V] = 0 except  dlogits[b, ans[b]] += scale,
//            dlogits[b, other[b]] -= scale                         (overwrites the row)
// `scale` is d metric / d ld[b] (1/B for the batch mean). When ans == other the two terms
// cancel, as the derivative of l_a - l_a does. Nothing is saved.
// Forward: one thread per row. Backward: a 2-D grid (rows x vocab), one pass that writes
// every element, so there is no zero-then-scatter ordering to get wrong.
//
// Every metric (MetricParams, kernels/ops.h; per-element math shared with the CPU op in
// kernels/op_math.h): one block per row (grid-stride over rows), the row's max by a block
// max, sum exp(x - max) and kl's sum in double by block sums, then (backward) every element
// of the row written once.
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/metric_check.h"
#include "kernels/op_math.h"

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

constexpr int kMetricThreads = 256;

// The row's lse (every thread) and, for kl, sum_v metric_kl_term (every thread).
__device__ void metric_row_stats(const float* x, const float* ref, int V, bool kl, float* fsm, double* dsm,
                                 double* lse_out, double* kl_out) {
  float mx = -INFINITY;
  for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
  mx = block_max(mx, fsm);
  double s = 0.0;
  for (int v = threadIdx.x; v < V; v += blockDim.x) s += metric_exp_term(x[v], mx);
  s = block_sum(s, dsm);
  const double lse = static_cast<double>(mx) + log(s);
  double k = 0.0;
  if (kl) {
    for (int v = threadIdx.x; v < V; v += blockDim.x) k += metric_kl_term(ref[v], x[v], lse);
    k = block_sum(k, dsm);
  }
  *lse_out = lse;
  *kl_out = k;
}

__global__ void metric_forward_kernel(float* out, const float* logits, MetricParams p) {
  __shared__ float fsm[32];
  __shared__ double dsm[32];
  const int kind = static_cast<int>(p.kind);
  for (int b = blockIdx.x; b < p.B; b += gridDim.x) {
    const float* x = logits + (int64_t)b * p.stride;
    double lse = 0.0, kl = 0.0;
    const float* ref = p.kind == MetricKind::KL ? p.ref_logprobs + (int64_t)(p.ref_row ? p.ref_row[b] : b) * p.V : nullptr;
    if (p.kind != MetricKind::LogitDiff) metric_row_stats(x, ref, p.V, ref != nullptr, fsm, dsm, &lse, &kl);
    if (threadIdx.x == 0) {
      const float xa = p.ans ? x[p.ans[b]] : 0.0f, xo = p.other ? x[p.other[b]] : 0.0f;
      out[b] = metric_value(kind, xa, xo, lse, kl);
    }
  }
}

__global__ void metric_backward_kernel(float* dlogits, int64_t dstride, const float* logits, MetricParams p,
                                       float scale) {
  __shared__ float fsm[32];
  __shared__ double dsm[32];
  const int kind = static_cast<int>(p.kind);
  for (int b = blockIdx.x; b < p.B; b += gridDim.x) {
    const float* x = logits + (int64_t)b * p.stride;
    float* d = dlogits + (int64_t)b * dstride;
    const float* ref = p.kind == MetricKind::KL ? p.ref_logprobs + (int64_t)(p.ref_row ? p.ref_row[b] : b) * p.V : nullptr;
    double lse = 0.0, kl = 0.0;
    if (p.kind != MetricKind::LogitDiff) metric_row_stats(x, ref, p.V, false, fsm, dsm, &lse, &kl);
    const int a = p.ans ? p.ans[b] : -1, o = p.other ? p.other[b] : -1;
    const double pa = a >= 0 ? exp(static_cast<double>(x[a]) - lse) : 0.0;
    const double po = o >= 0 ? exp(static_cast<double>(x[o]) - lse) : 0.0;
    for (int v = threadIdx.x; v < p.V; v += blockDim.x)
      d[v] = scale * metric_grad(kind, v, x[v], lse, a, o, pa, po, ref ? ref[v] : 0.0f);
  }
}

unsigned metric_blocks(int B) { return static_cast<unsigned>(B < 65535 ? B : 65535); }

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

void metric_forward(float* out /*[B]*/, const float* logits /*[B,V]*/, const MetricParams& p, Stream stream) {
  check_metric_params(p, "metric_forward");
  if (p.B == 0) return;
  launch(metric_forward_kernel, metric_blocks(p.B), kMetricThreads, 0, as_cuda(stream), out, logits, p);
  PHI3_LAUNCH_CHECK();
}

void metric_backward(float* dlogits /*[B,V]*/, int64_t dstride, const float* logits, const MetricParams& p,
                     float scale, Stream stream) {
  check_metric_params(p, "metric_backward");
  PHI3_CHECK(dstride >= p.V, "metric_backward: dlogits rows closer than V");
  if (p.B == 0) return;
  launch(metric_backward_kernel, metric_blocks(p.B), kMetricThreads, 0, as_cuda(stream), dlogits, dstride, logits,
         p, scale);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
