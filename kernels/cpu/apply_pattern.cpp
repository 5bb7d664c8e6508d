// z from a given attention pattern (CPU reference); semantics in kernels/ops.h
// (ApplyPatternParams). Used to patch hook_pattern: the patched rows' z, then o_proj.
#include "kernels/cpu/parallel.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

void attn_apply_pattern(const ApplyPatternParams& p, Stream) {
  PHI3_CHECK(p.B >= 0 && p.T >= 0 && p.H > 0 && p.KVH > 0 && p.H % p.KVH == 0 && p.HD > 0 && p.h0 >= 0 &&
                 p.nh >= 0 && p.h0 + p.nh <= p.H,
             "attn_apply_pattern: bad shape");
  PHI3_CHECK(p.pattern && p.v && p.pad && p.z, "attn_apply_pattern: null pointer");
  const int group = p.H / p.KVH;
  // One (batch row, query, head) per item: z[d] = sum_{j <= t} P[j] v[j, d], keys in order.
  auto one = [&](int64_t i) {
    const int hh = static_cast<int>(i % p.nh);
    const int t = static_cast<int>((i / p.nh) % p.T);
    const int b = static_cast<int>(i / (int64_t(p.nh) * p.T));
    const int h = p.h0 + hh;
    float* z = p.z + (int64_t(b) * p.T + t) * p.z_stride + int64_t(h) * p.HD;
    if (t < p.pad[b]) {
      for (int d = 0; d < p.HD; ++d) z[d] = 0.0f;
      return;
    }
    const float* P = p.pattern + ((int64_t(b) * p.H + h) * p.T + t) * p.T;
    const float* v = p.v + int64_t(b) * p.T * p.kv_stride + int64_t(h / group) * p.HD;
    for (int d = 0; d < p.HD; ++d) {
      float s = 0.0f;
      for (int j = 0; j <= t; ++j) s += P[j] * v[int64_t(j) * p.kv_stride + d];
      z[d] = s;
    }
  };
  const int64_t n = int64_t(p.B) * p.T * p.nh;
  parallel_for(n, double(n) * p.T * p.HD / 2, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) one(i);
  });
}

}  // namespace phi3::cpu
