// RMSNorm (HF Phi3RMSNorm: weight * x / sqrt(mean(x^2) + eps), all in fp32).
//
// forward:   rstd[n] = (mean_d x[n,d]^2 + eps)^-1/2      x, out [N, D]; w [D]; rstd [N]
//            out[n,d] = x[n,d] * rstd[n] * w[d]
//            saves rstd (may be null when no backward follows).
// backward:  dot[n]  = sum_d w[d] dout[n,d] x[n,d]
//            dx[n,d] += rstd (w dout - x rstd^2 dot / D)      (accumulates, op_math.h)
//
// One block per row (grid-stride over rows), fp32 accumulation with a warp-shuffle +
// shared-memory block reduction; 16-byte loads when D % 4 == 0 and all pointers are
// 16-byte aligned, a scalar path otherwise. The row is read twice (sum, then scale); the
// second read hits L1/L2 (a 3072-wide row is 12 KB).
#include "kernels/cuda/common.cuh"
#include "kernels/op_math.h"

namespace phi3::cuda {
namespace {

template <bool VEC>
__global__ void rmsnorm_forward_kernel(float* __restrict__ out, float* __restrict__ rstd_out,
                                       const float* __restrict__ x, const float* __restrict__ w,
                                       int N, int D, float eps) {
  __shared__ float red[32];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const float* xr = x + (int64_t)n * D;
    float* orow = out + (int64_t)n * D;
    float ss = 0.0f;
    if (VEC) {
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(xr)[c];
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x) ss += xr[c] * xr[c];
    }
    const float r = rmsnorm_rstd(block_sum(ss, red), D, eps);
    if (rstd_out && threadIdx.x == 0) rstd_out[n] = r;
    if (VEC) {
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(xr)[c];
        float4 g = reinterpret_cast<const float4*>(w)[c];
        reinterpret_cast<float4*>(orow)[c] =
            make_float4(v.x * r * g.x, v.y * r * g.y, v.z * r * g.z, v.w * r * g.w);
      }
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x) orow[c] = xr[c] * r * w[c];
    }
  }
}

template <bool VEC>
__global__ void rmsnorm_backward_kernel(float* __restrict__ dx, const float* __restrict__ dout,
                                        const float* __restrict__ x,
                                        const float* __restrict__ w,
                                        const float* __restrict__ rstd, int N, int D) {
  __shared__ float red[32];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const float* xr = x + (int64_t)n * D;
    const float* dr = dout + (int64_t)n * D;
    float* dxr = dx + (int64_t)n * D;
    float dot = 0.0f;
    if (VEC) {
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(xr)[c];
        float4 g = reinterpret_cast<const float4*>(w)[c];
        float4 d = reinterpret_cast<const float4*>(dr)[c];
        dot += g.x * d.x * v.x + g.y * d.y * v.y + g.z * d.z * v.z + g.w * d.w * v.w;
      }
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x) dot += w[c] * dr[c] * xr[c];
    }
    dot = block_sum(dot, red);
    const float r = rstd[n];
    if (VEC) {
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(xr)[c];
        float4 g = reinterpret_cast<const float4*>(w)[c];
        float4 d = reinterpret_cast<const float4*>(dr)[c];
        float4 a = reinterpret_cast<float4*>(dxr)[c];
        a.x += rmsnorm_dx(v.x, g.x, d.x, r, dot, D);
        a.y += rmsnorm_dx(v.y, g.y, d.y, r, dot, D);
        a.z += rmsnorm_dx(v.z, g.z, d.z, r, dot, D);
        a.w += rmsnorm_dx(v.w, g.w, d.w, r, dot, D);
        reinterpret_cast<float4*>(dxr)[c] = a;
      }
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x)
        dxr[c] += rmsnorm_dx(xr[c], w[c], dr[c], r, dot, D);
    }
  }
}

// Threads per row: enough for one (vector) element each up to 256, a multiple of 32.
int row_threads(int D, bool vec) {
  int items = vec ? D / 4 : D;
  int t = (items + 31) / 32 * 32;
  return t < 32 ? 32 : t > 256 ? 256 : t;
}

}  // namespace

void rmsnorm_forward(float* out /*[N,D]*/, float* rstd /*[N]*/, const float* x /*[N,D]*/,
                     const float* w /*[D]*/, int N, int D, float eps, Stream stream) {
  PHI3_CHECK(N >= 0 && D > 0, "rmsnorm_forward: bad shape N=" + std::to_string(N) +
                                  " D=" + std::to_string(D));
  if (N == 0) return;
  const bool vec = D % 4 == 0 && aligned16(out) && aligned16(x) && aligned16(w);
  const int threads = row_threads(D, vec);
  const unsigned blocks = static_cast<unsigned>(N < 65536 ? N : 65536);
  cudaStream_t s = as_cuda(stream);
  if (vec)
    launch(rmsnorm_forward_kernel<true>, blocks, threads, 0, s, out, rstd, x, w, N, D, eps);
  else
    launch(rmsnorm_forward_kernel<false>, blocks, threads, 0, s, out, rstd, x, w, N, D, eps);
  PHI3_LAUNCH_CHECK();
}

void rmsnorm_backward(float* dx /*[N,D] +=*/, const float* dout /*[N,D]*/, const float* x,
                      const float* w, const float* rstd /*[N]*/, int N, int D, Stream stream) {
  PHI3_CHECK(N >= 0 && D > 0, "rmsnorm_backward: bad shape N=" + std::to_string(N) +
                                  " D=" + std::to_string(D));
  if (N == 0) return;
  PHI3_CHECK(rstd != nullptr, "rmsnorm_backward: rstd from the forward is required");
  const bool vec =
      D % 4 == 0 && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(w);
  const int threads = row_threads(D, vec);
  const unsigned blocks = static_cast<unsigned>(N < 65536 ? N : 65536);
  cudaStream_t s = as_cuda(stream);
  if (vec)
    launch(rmsnorm_backward_kernel<true>, blocks, threads, 0, s, dx, dout, x, w, rstd, N, D);
  else
    launch(rmsnorm_backward_kernel<false>, blocks, threads, 0, s, dx, dout, x, w, rstd, N, D);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
