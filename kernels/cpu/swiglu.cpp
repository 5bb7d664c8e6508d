// The gated MLP's activation (CPU reference); HF: gate, up = gate_up.chunk(2).
//   forward:  out[n,f] = act(g) * u,   g = gu[n, f],  u = gu[n, F + f]
//             gu [N, 2F], out [N, F]; nothing extra saved (backward reads gu).
//   backward: dg = dout * u * act'(g),  du = dout * act(g)     dgu [N, 2F], overwritten.
//   act: silu (SwiGLU) or tanh-GELU (GeGLU, Gemma 2), op_math.h's mlp_act.
#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace phi3::cpu {

// expf dominates: ~20 multiply-adds per element for the threading threshold.
// out in fp32 and/or rounded to bf16 (GemmOut).
void swiglu_forward(GemmOut out /*[N,F]*/, const float* gu /*[N,2F]*/, int N, int F, Stream, MlpAct act) {
  const int a = static_cast<int>(act);
  PHI3_CHECK(out.f32 || out.bf16, "swiglu_forward: no output");
  parallel_for(N, 20.0 * N * F, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* g = gu + n * 2 * F;
      const float* u = g + F;
      float* o = out.f32 ? out.f32 + n * F : nullptr;
      uint16_t* h = out.bf16 ? out.bf16 + n * F : nullptr;
      for (int f = 0; f < F; ++f) {
        const float v = mlp_act(g[f], a) * u[f];
        if (o) o[f] = v;
        if (h) h[f] = float_to_bf16_bits(v);
      }
    }
  });
}

void swiglu_backward(float* dgu /*[N,2F]*/, const float* dout /*[N,F]*/,
                     const float* gu /*[N,2F]*/, int N, int F, Stream, MlpAct act) {
  const int a = static_cast<int>(act);
  parallel_for(N, 40.0 * N * F, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* g = gu + n * 2 * F;
      const float* u = g + F;
      const float* dy = dout + n * F;
      float* dg = dgu + n * 2 * F;
      float* du = dg + F;
      for (int f = 0; f < F; ++f) {
        const float gf = g[f], uf = u[f], dyf = dy[f];  // read first: dgu may alias gu
        dg[f] = dyf * uf * mlp_act_grad(gf, a);
        du[f] = dyf * mlp_act(gf, a);
      }
    }
  });
}

}  // namespace phi3::cpu
