#include "patching/copy_slices.h"

#include <string>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace phi3 {

void copy_column_slices(Backend& be, float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                        int width, const ColumnRows& by_col) {
  std::vector<int32_t> di, si;
  for (const auto& [col, rows] : by_col) {
    if (rows.first.size() != rows.second.size())
      throw Error("copy_column_slices: column " + std::to_string(col) + " has " + std::to_string(rows.first.size()) +
                  " destination rows but " + std::to_string(rows.second.size()) + " source rows");
    di.insert(di.end(), rows.first.begin(), rows.first.end());
    si.insert(si.end(), rows.second.begin(), rows.second.end());
  }
  if (di.empty()) return;
  auto d_di = to_device(be, di), d_si = to_device(be, si);
  size_t at = 0;
  for (const auto& [col, rows] : by_col) {
    const int n = static_cast<int>(rows.first.size());
    if (n == 0) continue;
    be.copy_rows(dst + col, dst_stride, d_di.get() + at, src + col, src_stride, d_si.get() + at, n, width);
    at += size_t(n);
  }
}

}  // namespace phi3
