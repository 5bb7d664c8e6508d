#include "runtime/tensor.h"

#include <sstream>

#include "runtime/error.h"

namespace phi3 {

std::string TensorView::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::vector<float> TensorView::download(Backend& be) const {
  std::vector<float> out(size_t(rows) * row_width);
  if (rows == 0) return out;
  if (row_stride == row_width) {
    be.download(out.data(), data, out.size() * sizeof(float));
    return out;
  }
  // Strided rows: copy the covering span once, then pick the rows out on the host.
  std::vector<float> span(size_t(rows - 1) * row_stride + row_width);
  be.download(span.data(), data, span.size() * sizeof(float));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w = 0; w < row_width; ++w) out[size_t(r) * row_width + w] = span[size_t(r) * row_stride + w];
  return out;
}

TensorView make_view(const Backend& be, const float* data, std::vector<int64_t> shape, int64_t rows, int64_t width,
                     int64_t stride) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  PHI3_CHECK(n == rows * width && stride >= width, "tensor view: shape does not match rows x width");
  TensorView v;
  v.data = data;
  v.device = be.kind();
  v.shape = std::move(shape);
  v.rows = rows;
  v.row_width = width;
  v.row_stride = stride;
  return v;
}

}  // namespace phi3
