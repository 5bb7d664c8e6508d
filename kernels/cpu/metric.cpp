// Logit-difference metric (CPU reference), DESIGN §3.
//   forward:  ld[b] = logits[b, ans[b]] - logits[b, other[b]]     logits [B, V], row stride
//   backward: dlogits[b, :V] = 0, then dlogits[b, ans[b]] += scale, dlogits[b, other[b]] -= scale
//             (scale = d metric / d ld[b], e.g. 1/B for the batch mean; ans == other gives 0).
//             Elements between V and the row stride are left untouched. Nothing is saved.
#include <cstring>

#include "kernels/ops.h"

namespace phi3::cpu {

void logit_diff_forward(float* ld /*[B]*/, const float* logits /*[B,V]*/, int64_t stride,
                        const int32_t* ans /*[B]*/, const int32_t* other /*[B]*/, int B, Stream) {
  for (int b = 0; b < B; ++b) {
    const float* row = logits + b * stride;
    ld[b] = row[ans[b]] - row[other[b]];
  }
}

void logit_diff_backward(float* dlogits /*[B,V]*/, int64_t stride, const int32_t* ans,
                         const int32_t* other, float scale, int B, int V, Stream) {
  for (int b = 0; b < B; ++b) {
    float* row = dlogits + b * stride;
    std::memset(row, 0, sizeof(float) * V);
    row[ans[b]] += scale;
    row[other[b]] -= scale;
  }
}

}  // namespace phi3::cpu
