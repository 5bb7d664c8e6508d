// RMSNorm (CPU reference), HF Phi3RMSNorm.
//   forward:  rstd[n] = 1/sqrt(mean_d x[n,d]^2 + eps),  out[n,d] = x[n,d] * rstd[n] * w[d]
//             x, out [N, D]; w [D]; saves rstd [N] for backward (x is kept by the caller).
//   backward: dx[n,i] += rstd (w_i dy_i - x_i rstd^2 mean_j(w_j dy_j x_j))   (rmsnorm_dx)
// Row reductions (sum x^2, sum w dy x) accumulate in double; rows are split over threads.
#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"

namespace phi3::cpu {

void rmsnorm_forward(float* out /*[N,D]*/, float* rstd /*[N]*/, const float* x /*[N,D]*/,
                     const float* w /*[D]*/, int N, int D, float eps, Stream) {
  parallel_for(N, 2.0 * N * D, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = x + n * D;
      double ss = 0;
      for (int d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * xr[d];
      const float r = rmsnorm_rstd(static_cast<float>(ss), D, eps);
      rstd[n] = r;
      float* o = out + n * D;
      for (int d = 0; d < D; ++d) o[d] = xr[d] * r * w[d];
    }
  });
}

void rmsnorm_backward(float* dx /*[N,D] +=*/, const float* dout /*[N,D]*/,
                      const float* x /*[N,D]*/, const float* w /*[D]*/,
                      const float* rstd /*[N]*/, int N, int D, Stream) {
  parallel_for(N, 3.0 * N * D, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = x + n * D;
      const float* dy = dout + n * D;
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += static_cast<double>(w[d]) * dy[d] * xr[d];
      const float r = rstd[n], fdot = static_cast<float>(dot);
      float* g = dx + n * D;
      for (int d = 0; d < D; ++d) g[d] += rmsnorm_dx(xr[d], w[d], dy[d], r, fdot, D);
    }
  });
}

}  // namespace phi3::cpu
