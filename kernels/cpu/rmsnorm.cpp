// RMSNorm (CPU reference), HF Phi3RMSNorm.
//   forward:  rstd[n] = 1/sqrt(mean_d x[n,d]^2 + eps),  out[n,d] = x[n,d] * rstd[n] * w[d]
//             x, out [N, D]; w [D]; saves rstd [N] for backward (x is kept by the caller).
//             out is written in fp32 and/or rounded to bf16 (GemmOut, kernels/ops.h).
//   add_rmsnorm_forward: sum = a + b first (the residual add), then the forward of sum.
//   backward: dx[n,i] += rstd (w_i dy_i - x_i rstd^2 mean_j(w_j dy_j x_j))   (rmsnorm_dx)
//   center (LayerNorm, GPT-2): x - mean(x) takes x's place (rstd from the centred variance),
//   then + bias; backward layernorm_dx with the mean recomputed from x.
// Row reductions (sum x^2, sum w dy x) accumulate in double; rows are split over threads.
#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace phi3::cpu {

namespace {

// Row n of the forward from x (already summed where add_rmsnorm_forward asks for it).
// LayerNorm row: mean and centred variance in double, out = (x - mu) * rstd * w + bias.
void layernorm_row(GemmOut out, float* rstd, const float* xr, const float* w, const float* bias, int64_t n, int D,
                   float eps) {
  double s1 = 0;
  for (int d = 0; d < D; ++d) s1 += xr[d];
  const float mu = static_cast<float>(s1 / D);
  double ss = 0;
  for (int d = 0; d < D; ++d) ss += static_cast<double>(xr[d] - mu) * (xr[d] - mu);
  const float r = rmsnorm_rstd(static_cast<float>(ss), D, eps);
  if (rstd) rstd[n] = r;
  float* o = out.f32 ? out.f32 + n * D : nullptr;
  uint16_t* h = out.bf16 ? out.bf16 + n * D : nullptr;
  for (int d = 0; d < D; ++d) {
    float v = (xr[d] - mu) * r * w[d];
    if (bias) v += bias[d];
    if (o) o[d] = v;
    if (h) h[d] = float_to_bf16_bits(v);
  }
}

void norm_row(GemmOut out, float* rstd, const float* xr, const float* w, int64_t n, int D, float eps, bool center,
              const float* bias) {
  if (center) return layernorm_row(out, rstd, xr, w, bias, n, D, eps);
  double ss = 0;
  for (int d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * xr[d];
  const float r = rmsnorm_rstd(static_cast<float>(ss), D, eps);
  if (rstd) rstd[n] = r;
  float* o = out.f32 ? out.f32 + n * D : nullptr;
  uint16_t* h = out.bf16 ? out.bf16 + n * D : nullptr;
  for (int d = 0; d < D; ++d) {
    const float v = xr[d] * r * w[d];
    if (o) o[d] = v;
    if (h) h[d] = float_to_bf16_bits(v);
  }
}

}  // namespace

void rmsnorm_forward(GemmOut out /*[N,D]*/, float* rstd /*[N]*/, const float* x /*[N,D]*/,
                     const float* w /*[D]*/, int N, int D, float eps, Stream, bool center,
                     const float* bias) {
  PHI3_CHECK(out.f32 || out.bf16, "rmsnorm_forward: no output");
  PHI3_CHECK(center || !bias, "rmsnorm_forward: a bias needs center (LayerNorm)");
  parallel_for(N, 2.0 * N * D, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) norm_row(out, rstd, x + n * D, w, n, D, eps, center, bias);
  });
}

void add_rmsnorm_forward(float* sum /*[N,D]*/, GemmOut out /*[N,D]*/, float* rstd /*[N]*/,
                         const float* a, const float* b, const float* w /*[D]*/, int N, int D,
                         float eps, Stream, bool center, const float* bias) {
  PHI3_CHECK(sum && (out.f32 || out.bf16), "add_rmsnorm_forward: no output");
  PHI3_CHECK(center || !bias, "add_rmsnorm_forward: a bias needs center (LayerNorm)");
  parallel_for(N, 3.0 * N * D, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* s = sum + n * D;
      for (int d = 0; d < D; ++d) s[d] = a[n * D + d] + b[n * D + d];
      norm_row(out, rstd, s, w, n, D, eps, center, bias);
    }
  });
}

void rmsnorm_backward(float* dx /*[N,D] +=*/, const float* dout /*[N,D]*/,
                      const float* x /*[N,D]*/, const float* w /*[D]*/,
                      const float* rstd /*[N]*/, int N, int D, Stream, bool center) {
  parallel_for(N, 3.0 * N * D, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = x + n * D;
      const float* dy = dout + n * D;
      if (center) {
        double s1 = 0, sg = 0, dot = 0;
        for (int d = 0; d < D; ++d) s1 += xr[d];
        const float mu = static_cast<float>(s1 / D);
        for (int d = 0; d < D; ++d) {
          sg += static_cast<double>(w[d]) * dy[d];
          dot += static_cast<double>(w[d]) * dy[d] * (xr[d] - mu);
        }
        float* g = dx + n * D;
        for (int d = 0; d < D; ++d)
          g[d] += layernorm_dx(xr[d] - mu, w[d], dy[d], rstd[n], static_cast<float>(sg), static_cast<float>(dot), D);
        continue;
      }
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += static_cast<double>(w[d]) * dy[d] * xr[d];
      const float r = rstd[n], fdot = static_cast<float>(dot);
      float* g = dx + n * D;
      for (int d = 0; d < D; ++d) g[d] += rmsnorm_dx(xr[d], w[d], dy[d], r, fdot, D);
    }
  });
}

}  // namespace phi3::cpu
