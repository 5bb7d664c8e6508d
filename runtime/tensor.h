// A typed, shaped, non-owning view of activations on a device: what the hook accessors
// (ForwardState::activation, Gradients::gradient) hand out. Rows may be strided inside a
// wider buffer (hook_q, hook_k and hook_v live inside the fused qkv rows).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/backend.h"

namespace phi3 {

struct TensorView {
  const float* data = nullptr;  // device pointer to the first row
  DType dtype = DType::F32;     // activations are fp32 on every backend
  DeviceKind device = DeviceKind::CPU;
  std::vector<int64_t> shape;   // e.g. [B, T, H, HD]; the first dims index rows
  int64_t rows = 0;             // number of rows (product of the leading dims)
  int64_t row_width = 0;        // elements per row
  int64_t row_stride = 0;       // elements between row starts (>= row_width)

  int64_t numel() const { return rows * row_width; }
  std::string shape_str() const;
  // Contiguous host copy in `shape` order.
  std::vector<float> download(Backend& be) const;
};

// A view of `rows` rows of `width` elements, `stride` apart, shaped `shape`.
TensorView make_view(const Backend& be, const float* data, std::vector<int64_t> shape, int64_t rows, int64_t width,
                     int64_t stride);

}  // namespace phi3
