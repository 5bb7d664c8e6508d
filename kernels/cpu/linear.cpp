// Linear layer (CPU reference), through OpenBLAS sgemm.
//   forward:  y = x W^T (+ b)  x [N, in], W [out, in] (HF layout, row-major), y [N, out],
//             b = W.bias [out] when present (added to every row after the GEMM)
//             accumulate ? y += x W^T (+ b) (the residual add folded into the GEMM)
//   backward: dx = dy W       dy [N, out], dx [N, in]; accumulate ? dx += dy W
// Only activation gradients are needed, so nothing is saved (W is a weight). The CPU
// backend stores weights in fp32: any other W dtype is an error.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <vector>
#include <string>

#include "kernels/cpu/parallel.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

namespace {
void check_weight(const Weight& W, const char* op) {
  PHI3_CHECK(W.dtype == DType::F32, std::string(op) + ": the CPU backend needs F32 weights, got " +
                                        dtype_name(W.dtype));
  PHI3_CHECK(W.rows > 0 && W.cols > 0 && W.rows <= INT_MAX && W.cols <= INT_MAX,
             std::string(op) + ": bad weight shape [" + std::to_string(W.rows) + ", " +
                 std::to_string(W.cols) + "]");
}
}  // namespace

void linear_forward(float* y /*[N,out]*/, GemmIn x /*[N,in]*/, const Weight& W, int N,
                    bool accumulate, Stream) {
  check_weight(W, "linear_forward");
  if (N <= 0) return;
  PHI3_CHECK(x.f32 != nullptr, "linear_forward: the CPU backend needs the fp32 input (fp32 weights)");
  const int out = static_cast<int>(W.rows), in = static_cast<int>(W.cols);
  // OpenBLAS takes another kernel (other rounding) for small products: a row's result would
  // depend on how many rows share its GEMM. Small ones are padded past that size.
  constexpr int64_t kSmall = 4096;
  if (int64_t(N) * out <= kSmall) {
    const int Np = static_cast<int>(kSmall / out) + 1;
    std::vector<float> xp(size_t(Np) * in, 0.0f), yp(size_t(Np) * out, 0.0f);
    std::copy(x.f32, x.f32 + size_t(N) * in, xp.begin());
    if (accumulate) std::copy(y, y + size_t(N) * out, yp.begin());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Np, out, in, 1.0f, xp.data(), in,
                static_cast<const float*>(W.data), in, accumulate ? 1.0f : 0.0f, yp.data(), out);
    std::copy(yp.begin(), yp.begin() + size_t(N) * out, y);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x.f32, in,
                static_cast<const float*>(W.data), in, accumulate ? 1.0f : 0.0f, y, out);
  }
  if (W.bias)
    parallel_for(N, double(N) * out, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int j = 0; j < out; ++j) y[r * out + j] += W.bias[j];
    });
}

void linear_backward(float* dx /*[N,in]*/, const float* dy /*[N,out]*/, const Weight& W, int N,
                     bool accumulate, Stream) {
  check_weight(W, "linear_backward");
  if (N <= 0) return;
  const int out = static_cast<int>(W.rows), in = static_cast<int>(W.cols);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, out, 1.0f, dy, out,
              static_cast<const float*>(W.data), in, accumulate ? 1.0f : 0.0f, dx, in);
}

void set_all_threads(int n) {
  set_num_threads(n);
  openblas_set_num_threads(n > 0 ? n : num_threads());
}

}  // namespace phi3::cpu
