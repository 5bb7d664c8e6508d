// Elementwise ops (CPU reference); both are linear, so no backward of their own is needed
// (the gradient of add passes through to both inputs; copy_rows' is copy_rows reversed).
//   add:       out[i] = a[i] + b[i]                       n elements; out may alias a or b
//   sub:       out[i] = a[i] - b[i]                       n elements; out may alias a or b
//   copy_rows: dst[dst_idx ? dst_idx[i] : i, 0:width] = src[src_idx ? src_idx[i] : i, 0:width]
//              for i < n; row strides dst_stride / src_stride; rows are copied in order i.
#include <cstring>

#include "kernels/ops.h"

namespace phi3::cpu {

void add(float* out, const float* a, const float* b, int64_t n, Stream) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void sub(float* out, const float* a, const float* b, int64_t n, Stream) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] - b[i];
}

void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src,
               int64_t src_stride, const int32_t* src_idx, int n, int width, Stream) {
  if (width <= 0) return;
  for (int i = 0; i < n; ++i) {
    const int64_t d = dst_idx ? dst_idx[i] : i;
    const int64_t s = src_idx ? src_idx[i] : i;
    std::memmove(dst + d * dst_stride, src + s * src_stride, sizeof(float) * width);
  }
}

}  // namespace phi3::cpu
