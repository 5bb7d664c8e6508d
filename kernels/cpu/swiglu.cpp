// The gated MLP's activation (CPU reference); HF: gate, up = gate_up.chunk(2).
//   forward:  out[n,f] = act(g) * u,   g = gu[n, f],  u = gu[n, F + f]
//             gu [N, 2F], out [N, F]; nothing extra saved (backward reads gu).
//   backward: dg = dout * u * act'(g),  du = dout * act(g)     dgu [N, 2F], overwritten.
//   act: silu (SwiGLU) or tanh-GELU (GeGLU, Gemma 2), op_math.h's mlp_act; GeluTanhNoGate: no
//   gate (GPT-2), out = gelu_tanh(gu), gu and dgu [N, F], dgu = dout * gelu_tanh'(gu).
#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace phi3::cpu {

namespace {
// The activation as a compile-time choice: each row loop is the plain SiLU or GeGLU loop (a
// per-element act switch cost the Phi-3 forward ~3% on the CPU), the same arithmetic per element.
template <int A>
void swiglu_rows(GemmOut out, const float* gu, int F, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* g = gu + n * 2 * F;
    const float* u = g + F;
    float* o = out.f32 ? out.f32 + n * F : nullptr;
    uint16_t* h = out.bf16 ? out.bf16 + n * F : nullptr;
    for (int f = 0; f < F; ++f) {
      const float v = mlp_act(g[f], A) * u[f];
      if (o) o[f] = v;
      if (h) h[f] = float_to_bf16_bits(v);
    }
  }
}

template <int A>
void swiglu_grad_rows(float* dgu, const float* dout, const float* gu, int F, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* g = gu + n * 2 * F;
    const float* u = g + F;
    const float* dy = dout + n * F;
    float* dg = dgu + n * 2 * F;
    float* du = dg + F;
    for (int f = 0; f < F; ++f) {
      const float gf = g[f], uf = u[f], dyf = dy[f];  // read first: dgu may alias gu
      dg[f] = dyf * uf * mlp_act_grad(gf, A);
      du[f] = dyf * mlp_act(gf, A);
    }
  }
}
// The non-gated MLP (MlpAct::GeluTanhNoGate, GPT-2): out = gelu_tanh(x), x [N, F].
void gelu_rows(GemmOut out, const float* x, int F, int64_t n0, int64_t n1) {
  for (int64_t i = n0 * F; i < n1 * F; ++i) {
    const float v = gelu_tanh(x[i]);
    if (out.f32) out.f32[i] = v;
    if (out.bf16) out.bf16[i] = float_to_bf16_bits(v);
  }
}
void gelu_grad_rows(float* dx, const float* dout, const float* x, int F, int64_t n0, int64_t n1) {
  for (int64_t i = n0 * F; i < n1 * F; ++i) dx[i] = dout[i] * gelu_tanh_grad(x[i]);
}
}  // namespace

// expf dominates: ~20 multiply-adds per element for the threading threshold.
// out in fp32 and/or rounded to bf16 (GemmOut).
void swiglu_forward(GemmOut out /*[N,F]*/, const float* gu /*[N,2F]*/, int N, int F, Stream, MlpAct act) {
  PHI3_CHECK(out.f32 || out.bf16, "swiglu_forward: no output");
  const bool gelu = static_cast<int>(act) != 0;
  parallel_for(N, 20.0 * N * F, [&](int64_t n0, int64_t n1) {
    if (act == MlpAct::GeluTanhNoGate) gelu_rows(out, gu, F, n0, n1);
    else if (gelu) swiglu_rows<1>(out, gu, F, n0, n1);
    else swiglu_rows<0>(out, gu, F, n0, n1);
  });
}

void swiglu_backward(float* dgu /*[N,2F]*/, const float* dout /*[N,F]*/,
                     const float* gu /*[N,2F]*/, int N, int F, Stream, MlpAct act) {
  const bool gelu = static_cast<int>(act) != 0;
  parallel_for(N, 40.0 * N * F, [&](int64_t n0, int64_t n1) {
    if (act == MlpAct::GeluTanhNoGate) gelu_grad_rows(dgu, dout, gu, F, n0, n1);
    else if (gelu) swiglu_grad_rows<1>(dgu, dout, gu, F, n0, n1);
    else swiglu_grad_rows<0>(dgu, dout, gu, F, n0, n1);
  });
}

}  // namespace phi3::cpu
