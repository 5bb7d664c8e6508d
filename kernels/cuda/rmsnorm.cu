// RMSNorm (HF Phi3RMSNorm: weight * x / sqrt(mean(x^2) + eps), all in fp32).
//
// forward:   rstd[n] = (mean_d x[n,d]^2 + eps)^-1/2      x, out [N, D]; w [D]; rstd [N]
//            out[n,d] = x[n,d] * rstd[n] * w[d]
//            saves rstd (may be null when no backward follows). out is fp32 and/or bf16
//            (GemmOut: the bf16 GEMM input written here instead of by a cast kernel, with
//            the cast's rounding, float_to_bf16_bits).
// add_rmsnorm_forward: sum = a + b (the residual add) in the same kernel, then as above.
// backward:  dot[n]  = sum_d w[d] dout[n,d] x[n,d]
//            dx[n,d] += rstd (w dout - x rstd^2 dot / D)      (accumulates, op_math.h)
//
// center (LayerNorm, GPT-2): layernorm_forward_kernel / layernorm_backward_kernel (scalar
// path, one block per row): mu = mean(x), rstd from mean((x - mu)^2), out = (x - mu) rstd w + b;
// backward dx += layernorm_dx (op_math.h), mu recomputed from x.
//
// One block per row (grid-stride over rows), fp32 accumulation with a warp-shuffle +
// shared-memory block reduction; 16-byte loads when D % 4 == 0 and all pointers are
// 16-byte aligned, a scalar path otherwise. The row is read twice (sum, then scale); the
// second read hits L1/L2 (a 3072-wide row is 12 KB).
#include "kernels/cuda/common.cuh"
#include "kernels/op_math.h"
#include "runtime/dtype.h"

namespace phi3::cuda {
namespace {

// Stores 4 consecutive outputs (element c*4 of the row) as fp32 and/or bf16 (GemmOut).
__device__ __forceinline__ void store4(float* o, uint16_t* h, int c, float4 v) {
  if (o) reinterpret_cast<float4*>(o)[c] = v;
  if (h) {
    const uint32_t lo = float_to_bf16_bits(v.x) | (uint32_t(float_to_bf16_bits(v.y)) << 16);
    const uint32_t hi = float_to_bf16_bits(v.z) | (uint32_t(float_to_bf16_bits(v.w)) << 16);
    reinterpret_cast<uint2*>(h)[c] = make_uint2(lo, hi);
  }
}

// ADD: the row is a + b, written to `sum` first (sum may alias a or b: each element is read
// and written by the same thread), then normalised from `sum`.
template <bool VEC, bool ADD>
__global__ void rmsnorm_forward_kernel(GemmOut out, float* __restrict__ rstd_out,
                                       const float* x, const float* b, float* sum,
                                       const float* __restrict__ w, int N, int D, float eps) {
  __shared__ float red[32];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int64_t off = (int64_t)n * D;
    const float* xr = ADD ? sum + off : x + off;
    float* orow = out.f32 ? out.f32 + off : nullptr;
    uint16_t* hrow = out.bf16 ? out.bf16 + off : nullptr;
    float ss = 0.0f;
    if (VEC) {
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(x + off)[c];
        if (ADD) {
          const float4 u = reinterpret_cast<const float4*>(b + off)[c];
          v = make_float4(v.x + u.x, v.y + u.y, v.z + u.z, v.w + u.w);
          reinterpret_cast<float4*>(sum + off)[c] = v;
        }
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x) {
        float v = x[off + c];
        if (ADD) {
          v += b[off + c];
          sum[off + c] = v;
        }
        ss += v * v;
      }
    }
    const float r = rmsnorm_rstd(block_sum(ss, red), D, eps);  // block_sum syncs: sum is visible
    if (rstd_out && threadIdx.x == 0) rstd_out[n] = r;
    if (VEC) {
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(xr)[c];
        float4 g = reinterpret_cast<const float4*>(w)[c];
        store4(orow, hrow, c, make_float4(v.x * r * g.x, v.y * r * g.y, v.z * r * g.z, v.w * r * g.w));
      }
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x) {
        const float v = xr[c] * r * w[c];
        if (orow) orow[c] = v;
        if (hrow) hrow[c] = float_to_bf16_bits(v);
      }
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

// LayerNorm forward (ADD: the row is a + b, written to sum first, as above).
template <bool ADD>
__global__ void layernorm_forward_kernel(GemmOut out, float* __restrict__ rstd_out, const float* x, const float* b,
                                         float* sum, const float* __restrict__ w, const float* __restrict__ bias,
                                         int N, int D, float eps) {
  __shared__ float red[32];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int64_t off = (int64_t)n * D;
    const float* xr = ADD ? sum + off : x + off;
    float s1 = 0.0f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      float v = x[off + c];
      if (ADD) {
        v += b[off + c];
        sum[off + c] = v;
      }
      s1 += v;
    }
    const float mu = block_sum(s1, red) / static_cast<float>(D);  // syncs: sum is visible
    float ss = 0.0f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      const float v = xr[c] - mu;
      ss += v * v;
    }
    const float r = rmsnorm_rstd(block_sum(ss, red), D, eps);
    if (rstd_out && threadIdx.x == 0) rstd_out[n] = r;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      float v = (xr[c] - mu) * r * w[c];
      if (bias) v += bias[c];
      if (out.f32) out.f32[off + c] = v;
      if (out.bf16) out.bf16[off + c] = float_to_bf16_bits(v);
    }
  }
}

__global__ void layernorm_backward_kernel(float* __restrict__ dx, const float* __restrict__ dout,
                                          const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ rstd, int N, int D) {
  __shared__ float red[32];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const float* xr = x + (int64_t)n * D;
    const float* dr = dout + (int64_t)n * D;
    float* dxr = dx + (int64_t)n * D;
    float s1 = 0.0f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) s1 += xr[c];
    const float mu = block_sum(s1, red) / static_cast<float>(D);
    float sg = 0.0f, dot = 0.0f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      sg += w[c] * dr[c];
      dot += w[c] * dr[c] * (xr[c] - mu);
    }
    sg = block_sum(sg, red);
    dot = block_sum(dot, red);
    const float r = rstd[n];
    for (int c = threadIdx.x; c < D; c += blockDim.x) dxr[c] += layernorm_dx(xr[c] - mu, w[c], dr[c], r, sg, dot, D);
  }
}

// Threads per row: enough for one (vector) element each up to 256, a multiple of 32.
int row_threads(int D, bool vec) {
  int items = vec ? D / 4 : D;
  int t = (items + 31) / 32 * 32;
  return t < 32 ? 32 : t > 256 ? 256 : t;
}

}  // namespace

namespace {

void launch_forward(const char* op, GemmOut out, float* rstd, const float* x, const float* b,
                    float* sum, const float* w, int N, int D, float eps, Stream stream, bool center,
                    const float* bias) {
  PHI3_CHECK(N >= 0 && D > 0, std::string(op) + ": bad shape N=" + std::to_string(N) +
                                  " D=" + std::to_string(D));
  PHI3_CHECK(out.f32 || out.bf16, std::string(op) + ": no output");
  PHI3_CHECK(center || !bias, std::string(op) + ": a bias needs center (LayerNorm)");
  if (N == 0) return;
  const bool add = sum != nullptr;
  if (center) {
    const int threads = row_threads(D, false);
    const unsigned blocks = static_cast<unsigned>(N < 65536 ? N : 65536);
    if (add)
      launch(layernorm_forward_kernel<true>, blocks, threads, 0, as_cuda(stream), out, rstd, x, b, sum, w, bias, N, D,
             eps);
    else
      launch(layernorm_forward_kernel<false>, blocks, threads, 0, as_cuda(stream), out, rstd, x, b, sum, w, bias, N,
             D, eps);
    PHI3_LAUNCH_CHECK();
    return;
  }
  const bool vec = D % 4 == 0 && (!out.f32 || aligned16(out.f32)) &&
                   (!out.bf16 || (reinterpret_cast<uintptr_t>(out.bf16) & 7u) == 0) &&
                   aligned16(x) && aligned16(w) && (!add || (aligned16(b) && aligned16(sum)));
  const int threads = row_threads(D, vec);
  const unsigned blocks = static_cast<unsigned>(N < 65536 ? N : 65536);
  cudaStream_t s = as_cuda(stream);
  if (vec && add)
    launch(rmsnorm_forward_kernel<true, true>, blocks, threads, 0, s, out, rstd, x, b, sum, w, N, D, eps);
  else if (vec)
    launch(rmsnorm_forward_kernel<true, false>, blocks, threads, 0, s, out, rstd, x, b, sum, w, N, D, eps);
  else if (add)
    launch(rmsnorm_forward_kernel<false, true>, blocks, threads, 0, s, out, rstd, x, b, sum, w, N, D, eps);
  else
    launch(rmsnorm_forward_kernel<false, false>, blocks, threads, 0, s, out, rstd, x, b, sum, w, N, D, eps);
  PHI3_LAUNCH_CHECK();
}

}  // namespace

void rmsnorm_forward(GemmOut out /*[N,D]*/, float* rstd /*[N]*/, const float* x /*[N,D]*/,
                     const float* w /*[D]*/, int N, int D, float eps, Stream stream, bool center,
                     const float* bias) {
  launch_forward("rmsnorm_forward", out, rstd, x, nullptr, nullptr, w, N, D, eps, stream, center, bias);
}

void add_rmsnorm_forward(float* sum /*[N,D]*/, GemmOut out /*[N,D]*/, float* rstd /*[N]*/,
                         const float* a, const float* b, const float* w /*[D]*/, int N, int D,
                         float eps, Stream stream, bool center, const float* bias) {
  PHI3_CHECK(sum && a && b, "add_rmsnorm_forward: null sum or input");
  launch_forward("add_rmsnorm_forward", out, rstd, a, b, sum, w, N, D, eps, stream, center, bias);
}

void rmsnorm_backward(float* dx /*[N,D] +=*/, const float* dout /*[N,D]*/, const float* x,
                      const float* w, const float* rstd /*[N]*/, int N, int D, Stream stream,
                      bool center) {
  PHI3_CHECK(N >= 0 && D > 0, "rmsnorm_backward: bad shape N=" + std::to_string(N) +
                                  " D=" + std::to_string(D));
  if (N == 0) return;
  PHI3_CHECK(rstd != nullptr, "rmsnorm_backward: rstd from the forward is required");
  if (center) {
    launch(layernorm_backward_kernel, static_cast<unsigned>(N < 65536 ? N : 65536), row_threads(D, false), 0,
           as_cuda(stream), dx, dout, x, w, rstd, N, D);
    PHI3_LAUNCH_CHECK();
    return;
  }
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
