// Attribution-patching reduction (DESIGN §5).
//
//   out[t*G + g] = sum_b sum_{w<W} (a - c)[b*T + t, g*W + w] * grad[b*T + t, g*W + w]
//
// a (clean), c (corrupted), grad (d metric / d act on the corrupted run): [B*T, G*W], rows
// b*T + t contiguous with stride G*W; out [T, G] (overwritten). G = 1, W = D for residual
// hooks; G = heads, W = d_head for per-head hooks. No backward (it is the end of the chain).
// All layers of a hook in one launch (grid y = layer; the layers' buffers are passed as
// device arrays of pointers, since they need not lie at a fixed stride). One block per
// output (t, g): threads stride over w for each b, fp32 partial sums, one block reduction. Reading 3 * B * W floats per output, this is bandwidth-bound.
#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

__global__ void attribution_reduce_kernel(float* out_all, const float* const* a_all,
                                          const float* const* c_all,
                                          const float* const* grad_all, int B, int T, int G,
                                          int W, int64_t row_stride) {
  __shared__ float red[32];
  const int layer = blockIdx.y;
  const float* __restrict__ a = a_all[layer];
  const float* __restrict__ c = c_all[layer];
  const float* __restrict__ grad = grad_all[layer];
  float* out = out_all + (int64_t)layer * T * G;
  for (int64_t o = blockIdx.x; o < (int64_t)T * G; o += gridDim.x) {
    const int t = static_cast<int>(o / G), g = static_cast<int>(o - (int64_t)t * G);
    float acc = 0.0f;
    for (int b = 0; b < B; ++b) {
      const int64_t base = ((int64_t)b * T + t) * row_stride + (int64_t)g * W;
      for (int w = threadIdx.x; w < W; w += blockDim.x)
        acc += (a[base + w] - c[base + w]) * grad[base + w];
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) out[o] = acc;
  }
}

// The fast sweep's no-op test on the device: eq[t*G + g] = 1 iff a and c hold the same bits
// in [b*T + t, g*W, (g+1)*W) for every b. One block per (t, g); differences counted with
// the block reduction (a count of 0 means equal).
__global__ void rows_equal_kernel(uint8_t* eq, const uint32_t* __restrict__ a,
                                  const uint32_t* __restrict__ c, int B, int T, int G, int W,
                                  int64_t row_stride) {
  __shared__ float red[32];
  for (int64_t o = blockIdx.x; o < (int64_t)T * G; o += gridDim.x) {
    const int t = static_cast<int>(o / G), g = static_cast<int>(o - (int64_t)t * G);
    float diff = 0.0f;
    for (int b = 0; b < B; ++b) {
      const int64_t base = ((int64_t)b * T + t) * row_stride + (int64_t)g * W;
      for (int w = threadIdx.x; w < W; w += blockDim.x)
        if (a[base + w] != c[base + w]) diff = 1.0f;
    }
    diff = block_sum(diff, red);
    if (threadIdx.x == 0) eq[o] = diff == 0.0f ? 1 : 0;
  }
}

}  // namespace

void rows_equal(uint8_t* eq /*[T,G]*/, const float* a /*[B*T, G*W]*/, const float* c, int B, int T,
                int G, int W, int64_t stride, Stream stream) {
  PHI3_CHECK(B >= 0 && T >= 0 && G > 0 && W > 0 && stride >= (int64_t)G * W,
             "rows_equal: bad shape B=" + std::to_string(B) + " T=" + std::to_string(T) +
                 " G=" + std::to_string(G) + " W=" + std::to_string(W));
  if (T == 0) return;
  const int threads = W >= 512 ? 256 : W >= 128 ? 128 : 32;
  const int64_t outputs = (int64_t)T * G;
  const unsigned blocks = static_cast<unsigned>(outputs < 65536 ? outputs : 65536);
  launch(rows_equal_kernel, blocks, threads, 0, as_cuda(stream), eq,
         reinterpret_cast<const uint32_t*>(a), reinterpret_cast<const uint32_t*>(c), B, T, G, W,
         stride);
  PHI3_LAUNCH_CHECK();
}

void attribution_reduce(float* out /*[L,T,G]*/, const float* const* a, const float* const* c,
                        const float* const* grad, int L, int B, int T, int G, int W, int64_t stride,
                        Stream stream) {
  PHI3_CHECK(L >= 0 && L < 65536 && B >= 0 && T >= 0 && G > 0 && W > 0 && stride >= (int64_t)G * W,
             "attribution_reduce: bad shape L=" + std::to_string(L) + " B=" + std::to_string(B) +
                 " T=" + std::to_string(T) + " G=" + std::to_string(G) + " W=" + std::to_string(W));
  if (T == 0 || L == 0) return;
  const int threads = W >= 512 ? 256 : W >= 128 ? 128 : 32;
  const int64_t outputs = (int64_t)T * G;
  const unsigned blocks = static_cast<unsigned>(outputs < 65536 ? outputs : 65536);
  launch(attribution_reduce_kernel, dim3(blocks, static_cast<unsigned>(L)), threads, 0,
         as_cuda(stream), out, a, c, grad, B, T, G, W, stride);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
