// Soft-capping (Gemma 2's final logits; CPU reference).
//   forward:  x = c tanh(x / c), in place, n elements (soft_cap, op_math.h)
//   backward: dx *= 1 - (y / c)^2, y the forward's output (soft_cap_grad): nothing else saved.
#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"

namespace phi3::cpu {

void softcap_forward(float* x, int64_t n, float cap, Stream) {
  parallel_for(n, 20.0 * n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] = soft_cap(x[i], cap);
  });
}

void softcap_backward(float* dx, const float* y, int64_t n, float cap, Stream) {
  parallel_for(n, 4.0 * n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] *= soft_cap_grad(y[i], cap);
  });
}

}  // namespace phi3::cpu
