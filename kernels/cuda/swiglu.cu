// The gated MLP of the fused gate_up projection (HF: gate, up = chunk(2); act(gate) * up),
// act = silu (SwiGLU) or tanh-GELU (GeGLU, Gemma 2): op_math.h's mlp_act, an int kernel argument.
//
// forward:   out[n, i] = silu(g) * u,   g = gu[n, i], u = gu[n, F + i]     gu [N, 2F], out [N, F]
// backward:  dgu[n, i]     = dout[n, i] * u * silu'(g)
//            dgu[n, F + i] = dout[n, i] * silu(g)                         (overwrites dgu)
// Nothing is saved beyond gu (the forward's input). silu / silu_grad come from op_math.h.
// Elementwise, bandwidth-bound: 16-byte accesses when F % 4 == 0 and pointers are aligned,
// a 2-D grid (rows x columns, grid-stride), scalar path otherwise.
#include "kernels/cuda/common.cuh"
#include "kernels/op_math.h"
#include "runtime/dtype.h"

namespace phi3::cuda {
namespace {

constexpr int kThreads = 256;

// Grid: y = rows (grid-stride), x = columns (grid-stride); no per-element division.
#define PHI3_ROWS_COLS(ncols)                                              \
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y)                      \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (ncols);       \
         i += gridDim.x * blockDim.x)

// out: fp32 and/or bf16 (GemmOut; the bf16 down_proj input, rounded as the cast kernel does).
__global__ void swiglu_forward_vec4(float4* __restrict__ out, uint2* __restrict__ out16,
                                    const float4* __restrict__ gu, int N, int F4, int act) {
  PHI3_ROWS_COLS(F4) {
    const float4 g = gu[n * 2 * F4 + i], u = gu[n * 2 * F4 + F4 + i];
    const float4 v = make_float4(mlp_act(g.x, act) * u.x, mlp_act(g.y, act) * u.y, mlp_act(g.z, act) * u.z,
                                 mlp_act(g.w, act) * u.w);
    if (out) out[n * F4 + i] = v;
    if (out16)
      out16[n * F4 + i] =
          make_uint2(float_to_bf16_bits(v.x) | (uint32_t(float_to_bf16_bits(v.y)) << 16),
                     float_to_bf16_bits(v.z) | (uint32_t(float_to_bf16_bits(v.w)) << 16));
  }
}
__global__ void swiglu_forward_scalar(float* __restrict__ out, uint16_t* __restrict__ out16,
                                      const float* __restrict__ gu, int N, int F, int act) {
  PHI3_ROWS_COLS(F) {
    const float v = mlp_act(gu[n * 2 * F + i], act) * gu[n * 2 * F + F + i];
    if (out) out[n * F + i] = v;
    if (out16) out16[n * F + i] = float_to_bf16_bits(v);
  }
}

__device__ __forceinline__ void swiglu_grad(float g, float u, float d, float* dg, float* du, int act) {
  *dg = d * u * mlp_act_grad(g, act);
  *du = d * mlp_act(g, act);
}

__global__ void swiglu_backward_vec4(float4* __restrict__ dgu, const float4* __restrict__ dout,
                                     const float4* __restrict__ gu, int N, int F4, int act) {
  PHI3_ROWS_COLS(F4) {
    const float4 g = gu[n * 2 * F4 + i], u = gu[n * 2 * F4 + F4 + i], d = dout[n * F4 + i];
    float4 dg, du;
    swiglu_grad(g.x, u.x, d.x, &dg.x, &du.x, act);
    swiglu_grad(g.y, u.y, d.y, &dg.y, &du.y, act);
    swiglu_grad(g.z, u.z, d.z, &dg.z, &du.z, act);
    swiglu_grad(g.w, u.w, d.w, &dg.w, &du.w, act);
    dgu[n * 2 * F4 + i] = dg;
    dgu[n * 2 * F4 + F4 + i] = du;
  }
}
__global__ void swiglu_backward_scalar(float* __restrict__ dgu, const float* __restrict__ dout,
                                       const float* __restrict__ gu, int N, int F, int act) {
  PHI3_ROWS_COLS(F) {
    swiglu_grad(gu[n * 2 * F + i], gu[n * 2 * F + F + i], dout[n * F + i], &dgu[n * 2 * F + i],
                &dgu[n * 2 * F + F + i], act);
  }
}
// The non-gated MLP (MlpAct::GeluTanhNoGate, GPT-2): out = gelu_tanh(x), dx = dout gelu_tanh'(x), x [N, F].
__global__ void gelu_forward_scalar(float* __restrict__ out, uint16_t* __restrict__ out16,
                                    const float* __restrict__ x, int N, int F) {
  PHI3_ROWS_COLS(F) {
    const float v = gelu_tanh(x[n * F + i]);
    if (out) out[n * F + i] = v;
    if (out16) out16[n * F + i] = float_to_bf16_bits(v);
  }
}
__global__ void gelu_backward_scalar(float* __restrict__ dx, const float* __restrict__ dout,
                                     const float* __restrict__ x, int N, int F) {
  PHI3_ROWS_COLS(F) { dx[n * F + i] = dout[n * F + i] * gelu_tanh_grad(x[n * F + i]); }
}
#undef PHI3_ROWS_COLS

dim3 rows_cols_grid(int N, int cols) {
  return dim3(ceil_div(cols, kThreads), static_cast<unsigned>(N < 65535 ? N : 65535));
}

}  // namespace

void swiglu_forward(GemmOut out /*[N,F]*/, const float* gu /*[N,2F]*/, int N, int F,
                    Stream stream, MlpAct act) {
  const int a = static_cast<int>(act);
  PHI3_CHECK(N >= 0 && F > 0, "swiglu_forward: bad shape N=" + std::to_string(N) +
                                  " F=" + std::to_string(F));
  PHI3_CHECK(out.f32 || out.bf16, "swiglu_forward: no output");
  if (N == 0) return;
  cudaStream_t s = as_cuda(stream);
  if (act == MlpAct::GeluTanhNoGate) {
    launch(gelu_forward_scalar, rows_cols_grid(N, F), kThreads, 0, s, out.f32, out.bf16, gu, N, F);
  } else if (F % 4 == 0 && (!out.f32 || aligned16(out.f32)) &&
      (!out.bf16 || (reinterpret_cast<uintptr_t>(out.bf16) & 7u) == 0) && aligned16(gu)) {
    launch(swiglu_forward_vec4, rows_cols_grid(N, F / 4), kThreads, 0, s,
           reinterpret_cast<float4*>(out.f32), reinterpret_cast<uint2*>(out.bf16),
           reinterpret_cast<const float4*>(gu), N, F / 4, a);
  } else {
    launch(swiglu_forward_scalar, rows_cols_grid(N, F), kThreads, 0, s, out.f32, out.bf16, gu, N, F, a);
  }
  PHI3_LAUNCH_CHECK();
}

void swiglu_backward(float* dgu /*[N,2F]*/, const float* dout /*[N,F]*/,
                     const float* gu /*[N,2F]*/, int N, int F, Stream stream, MlpAct act) {
  const int a = static_cast<int>(act);
  PHI3_CHECK(N >= 0 && F > 0, "swiglu_backward: bad shape N=" + std::to_string(N) +
                                  " F=" + std::to_string(F));
  if (N == 0) return;
  cudaStream_t s = as_cuda(stream);
  if (act == MlpAct::GeluTanhNoGate) {
    launch(gelu_backward_scalar, rows_cols_grid(N, F), kThreads, 0, s, dgu, dout, gu, N, F);
  } else if (F % 4 == 0 && aligned16(dgu) && aligned16(dout) && aligned16(gu)) {
    launch(swiglu_backward_vec4, rows_cols_grid(N, F / 4), kThreads, 0, s,
           reinterpret_cast<float4*>(dgu), reinterpret_cast<const float4*>(dout),
           reinterpret_cast<const float4*>(gu), N, F / 4, a);
  } else {
    launch(swiglu_backward_scalar, rows_cols_grid(N, F), kThreads, 0, s, dgu, dout, gu, N, F, a);
  }
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
