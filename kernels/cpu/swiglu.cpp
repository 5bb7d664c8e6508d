// SwiGLU activation of the Phi-3 MLP (CPU reference); HF: gate, up = gate_up.chunk(2).
//   forward:  out[n,f] = silu(g) * u,   g = gu[n, f],  u = gu[n, F + f]
//             gu [N, 2F], out [N, F]; nothing extra saved (backward reads gu).
//   backward: dg = dout * u * silu'(g),  du = dout * silu(g)     dgu [N, 2F], overwritten.
#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"

namespace phi3::cpu {

// expf dominates: ~20 multiply-adds per element for the threading threshold.
void swiglu_forward(float* out /*[N,F]*/, const float* gu /*[N,2F]*/, int N, int F, Stream) {
  parallel_for(N, 20.0 * N * F, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* g = gu + n * 2 * F;
      const float* u = g + F;
      float* o = out + n * F;
      for (int f = 0; f < F; ++f) o[f] = silu(g[f]) * u[f];
    }
  });
}

void swiglu_backward(float* dgu /*[N,2F]*/, const float* dout /*[N,F]*/,
                     const float* gu /*[N,2F]*/, int N, int F, Stream) {
  parallel_for(N, 40.0 * N * F, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* g = gu + n * 2 * F;
      const float* u = g + F;
      const float* dy = dout + n * F;
      float* dg = dgu + n * 2 * F;
      float* du = dg + F;
      for (int f = 0; f < F; ++f) {
        const float gf = g[f], uf = u[f], dyf = dy[f];  // read first: dgu may alias gu
        dg[f] = dyf * uf * silu_grad(gf);
        du[f] = dyf * silu(gf);
      }
    }
  });
}

}  // namespace phi3::cpu
