// The flag of flag_nonfinite (kernels/ops.h), shared by the CPU op, its CUDA twin and the
// host code that reads it (model/finite_check.h). A tensor's flag is 0 while every value is
// finite; a NaN or Inf at element i makes it UINT64_MAX - (4 i + kind), so the largest flag
// is the first bad element, and the host names the element and its value without reading
// the tensor. kind: bit 1 set for an infinity (clear for a NaN), bit 0 for the sign.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/hd.h"

namespace phi3 {

// 0 for a finite x, else the flag of x at element i (never 0 for i < 2^61).
PHI3_HD uint64_t nonfinite_flag(int64_t i, float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) return 0;           // exponent not all ones: finite
  const uint64_t kind = ((u & 0x007fffffu) ? 0u : 2u) | (u >> 31);  // NaN / Inf, sign
  return ~uint64_t(0) - ((uint64_t(i) << 2) | kind);
}
// The element a nonzero flag names.
inline int64_t nonfinite_index(uint64_t flag) { return int64_t((~uint64_t(0) - flag) >> 2); }
// The value a nonzero flag names (a quiet NaN or an infinity, with its sign).
inline float nonfinite_value(uint64_t flag) {
  const uint64_t kind = (~uint64_t(0) - flag) & 3u;
  const float mag = (kind & 2u) ? INFINITY : NAN;
  return (kind & 1u) ? -mag : mag;
}

}  // namespace phi3
