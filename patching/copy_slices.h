// Gathers column slices of rows from one buffer into another through the backend: for every
// column offset c of `by_col`, dst[i, c .. c+width) = src[s, c .. c+width) for each pair
// (i, s) of c's rows (rows dst_stride / src_stride floats apart). The sweeps use it to give a
// run one head's slice (width = head_dim) or one neuron (width 1) from the source run.
// Row and column stay separate: the address is row * stride + column in 64-bit arithmetic
// (inside copy_rows), never a flat int32 element index, which wraps once rows·stride passes
// 2^31 (e.g. mlp_post of B·T rows × F neurons). One index upload for all offsets, one
// copy_rows per distinct column offset.
#pragma once
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "runtime/backend.h"

namespace phi3 {

// Column offset (floats) -> (dst rows, src rows), the two vectors of equal length.
using ColumnRows = std::map<int64_t, std::pair<std::vector<int32_t>, std::vector<int32_t>>>;

void copy_column_slices(Backend& be, float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                        int width, const ColumnRows& by_col);

}  // namespace phi3
