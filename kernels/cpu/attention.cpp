// Causal softmax attention over packed segments, with pad-key masking, sliding window, GQA and
// a prefix k/v cache (CPU reference). See AttnParams / AttnSegment in kernels/ops.h.
//
// forward, for every segment (batch row b, T positions, pad = pad[b]), every query position
// t in [q_start, T) and every head h (kv head kh = h / (H/KVH)):
//   keys j in [attn_first_key(t, pad, window), t]; key j's k/v row is cache row b*T + j when
//   j < fresh_start, else packed row kv_row + (j - fresh_start);
//   s_j = (q_t . k_j) * scale (soft-capped: c tanh(s_j / c) when softcap = c > 0),
//   p = softmax(s) (max-subtracted: p_j = exp(s_j - m) / l),   z_t = sum_j p_j v_j;
//   with `stats`, stats[b, h, t] = (m, l);  z written to row q_row + (t - q_start), dims [h*HD, (h+1)*HD).
//   A pad query (t < pad) writes z = 0. With `pattern`, the whole row
//   pattern[b, h, t, 0..T) is written: p_j on visible keys, 0 elsewhere.
//   q, z: [rows, H*HD]; k, v: [rows, KVH*HD]; caches [B*T, KVH*HD]; pattern [B, H, T, T].
//   Saved for backward: the stats (q, k, v are kept by the caller), O(T) per head.
//
// backward (plain pass only: fresh_start == q_start == 0 in every segment, stats saved),
// overwriting dq, dk, dv; each row's p is recomputed from q, k and (m, l) with the forward's
// own expressions (score_row), so it is bitwise the pattern the forward would write:
//   dp_j = dz_t . v_j,   ds_j = p_j (dp_j - sum_k p_k dp_k)            (softmax_grad)
//   soft-capped: ds_j *= 1 - (s_j / c)^2, s_j the recomputed capped score
//   dq_t += ds_j k_j scale,   dk_j += ds_j q_t scale,   dv_j += p_j dz_t
//   GQA: dk/dv of kv head kh sum over the H/KVH query heads of its group.
//
// Work is split over (segment, head) in the forward and (segment, kv head) in the backward:
// every task owns its output rows/columns and runs a fixed loop order, so the result does not
// depend on the thread count. Dot products and softmax sums accumulate in float.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace phi3::cpu {

namespace {

void check_params(const AttnParams& p) {
  PHI3_CHECK(p.T > 0 && p.H > 0 && p.KVH > 0 && p.HD > 0 && p.H % p.KVH == 0,
             "attention: bad shape T=" + std::to_string(p.T) + " H=" + std::to_string(p.H) +
                 " KVH=" + std::to_string(p.KVH) + " HD=" + std::to_string(p.HD));
  PHI3_CHECK(p.n_segs == 0 || (p.segs && p.pad && p.q && p.k && p.v && p.z),
             "attention: null q/k/v/z/pad/segs pointer");
  for (int i = 0; i < p.n_segs; ++i) {
    const AttnSegment& s = p.segs[i];
    PHI3_CHECK(s.fresh_start >= 0 && s.fresh_start <= s.q_start && s.q_start < p.T,
               "attention: segment " + std::to_string(i) + " has fresh_start " +
                   std::to_string(s.fresh_start) + ", q_start " + std::to_string(s.q_start) +
                   " (need 0 <= fresh_start <= q_start < T=" + std::to_string(p.T) + ")");
    PHI3_CHECK(s.fresh_start == 0 || (p.k_cache && p.v_cache),
               "attention: segment " + std::to_string(i) + " reads the k/v cache, which is null");
  }
}

// Row pointers of key j (kv head kh) of a segment: cache below fresh_start, packed above.
struct KeyRows {
  const AttnParams& p;
  const AttnSegment& s;
  int64_t col;  // kh * HD
  const float* k(int j) const {
    return j < s.fresh_start
               ? p.k_cache + (static_cast<int64_t>(s.batch) * p.T + j) * p.cache_stride + col
               : p.k + static_cast<int64_t>(s.kv_row + j - s.fresh_start) * p.kv_stride + col;
  }
  const float* v(int j) const {
    return j < s.fresh_start
               ? p.v_cache + (static_cast<int64_t>(s.batch) * p.T + j) * p.cache_stride + col
               : p.v + static_cast<int64_t>(s.kv_row + j - s.fresh_start) * p.kv_stride + col;
  }
};

inline float dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// The (capped) scores s[j] of query q against the keys first..t, and their maximum: the one
// expression the forward and the backward share.
float score_row(const AttnParams& p, const KeyRows& kv, const float* q, int first, int t, float* s) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int j = first; j <= t; ++j) {
    s[j] = soft_cap(dot(q, kv.k(j), p.HD) * p.scale, p.softcap);
    mx = std::max(mx, s[j]);
  }
  return mx;
}

}  // namespace

void attention_forward(const AttnParams& p, Stream) {
  check_params(p);
  const int T = p.T, H = p.H, HD = p.HD, group = p.H / p.KVH;
  const double work = 2.0 * p.n_segs * H * T * std::min(T, p.window > 0 ? p.window : T) * HD;
  parallel_for(static_cast<int64_t>(p.n_segs) * H, work, [&](int64_t i0, int64_t i1) {
    std::vector<float> prob(static_cast<size_t>(T)), acc(static_cast<size_t>(HD));
    for (int64_t item = i0; item < i1; ++item) {
      const AttnSegment& s = p.segs[item / H];
      const int h = static_cast<int>(item % H);
      const int b = s.batch, pad = p.pad[b];
      const KeyRows kv{p, s, static_cast<int64_t>(h / group) * HD};
      for (int t = s.q_start; t < T; ++t) {
        const int64_t row = s.q_row + (t - s.q_start);
        float* z = p.z + row * p.z_stride + static_cast<int64_t>(h) * HD;
        float* pat = p.pattern ? p.pattern + ((static_cast<int64_t>(b) * H + h) * T + t) * T
                               : nullptr;
        if (pat) std::memset(pat, 0, sizeof(float) * T);
        uint16_t* z16 = p.z16 ? p.z16 + row * p.z_stride + static_cast<int64_t>(h) * HD : nullptr;
        float* stats = p.stats ? p.stats + ((static_cast<int64_t>(b) * H + h) * T + t) * 2 : nullptr;
        if (t < pad) {  // pad query: sees no key
          if (stats) {
            stats[0] = -std::numeric_limits<float>::infinity();
            stats[1] = 0.0f;
          }
          std::memset(z, 0, sizeof(float) * HD);
          if (z16) std::memset(z16, 0, sizeof(uint16_t) * HD);
          continue;
        }
        const float* q = p.q + row * p.q_stride + static_cast<int64_t>(h) * HD;
        const int first = attn_first_key(t, pad, p.window);
        const float mx = score_row(p, kv, q, first, t, prob.data());
        float sum = 0.0f;
        for (int j = first; j <= t; ++j) {
          prob[j] = expf(prob[j] - mx);
          sum += prob[j];
        }
        const float inv = 1.0f / sum;
        if (stats) {
          stats[0] = mx;
          stats[1] = sum;
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int j = first; j <= t; ++j) {
          const float pj = prob[j] * inv;
          const float* v = kv.v(j);
          for (int d = 0; d < HD; ++d) acc[d] += pj * v[d];
          if (pat) pat[j] = pj;
        }
        std::memcpy(z, acc.data(), sizeof(float) * HD);
        if (z16)
          for (int d = 0; d < HD; ++d) z16[d] = float_to_bf16_bits(acc[d]);
      }
    }
  });
}

void attention_backward(const AttnBackwardParams& bp, Stream) {
  const AttnParams& p = bp.fwd;
  check_params(p);
  PHI3_CHECK(p.n_segs == 0 || p.stats, "attention_backward: the forward's softmax stats (AttnParams::stats) are required");
  PHI3_CHECK(p.n_segs == 0 || (bp.dz && bp.dq && bp.dk && bp.dv),
             "attention_backward: null dz/dq/dk/dv pointer");
  for (int i = 0; i < p.n_segs; ++i)
    PHI3_CHECK(p.segs[i].fresh_start == 0 && p.segs[i].q_start == 0,
               "attention_backward: segment " + std::to_string(i) +
                   " is not a plain pass (fresh_start and q_start must be 0)");
  const int T = p.T, H = p.H, KVH = p.KVH, HD = p.HD, group = H / KVH;
  const double work = 4.0 * p.n_segs * H * T * std::min(T, p.window > 0 ? p.window : T) * HD;
  parallel_for(static_cast<int64_t>(p.n_segs) * KVH, work, [&](int64_t i0, int64_t i1) {
    std::vector<float> dp(static_cast<size_t>(T)), pat(static_cast<size_t>(T)), sc(static_cast<size_t>(T));
    for (int64_t item = i0; item < i1; ++item) {
      const AttnSegment& s = p.segs[item / KVH];
      const int kh = static_cast<int>(item % KVH);
      const int b = s.batch, pad = p.pad[b];
      const int64_t kcol = static_cast<int64_t>(kh) * HD;
      const KeyRows kv{p, s, kcol};
      // This task owns dk/dv rows of the segment in kv head kh and dq in the group's heads.
      for (int t = 0; t < T; ++t) {
        const int64_t kr = static_cast<int64_t>(s.kv_row + t) * p.kv_stride + kcol;
        std::memset(bp.dk + kr, 0, sizeof(float) * HD);
        std::memset(bp.dv + kr, 0, sizeof(float) * HD);
        const int64_t qr = static_cast<int64_t>(s.q_row + t) * p.q_stride +
                           static_cast<int64_t>(kh) * group * HD;
        std::memset(bp.dq + qr, 0, sizeof(float) * group * HD);
      }
      for (int h = kh * group; h < (kh + 1) * group; ++h) {
        const int64_t qcol = static_cast<int64_t>(h) * HD;
        for (int t = pad; t < T; ++t) {  // pad queries have no gradient
          const float* q = p.q + static_cast<int64_t>(s.q_row + t) * p.q_stride + qcol;
          const float* st = p.stats + ((static_cast<int64_t>(b) * H + h) * T + t) * 2;
          const float* dz = bp.dz + static_cast<int64_t>(s.q_row + t) * p.z_stride + qcol;
          float* dq = bp.dq + static_cast<int64_t>(s.q_row + t) * p.q_stride + qcol;
          const int first = attn_first_key(t, pad, p.window);
          // The row's probabilities, as the forward computed them.
          score_row(p, kv, q, first, t, sc.data());
          const float inv = 1.0f / st[1];
          for (int j = first; j <= t; ++j) pat[j] = expf(sc[j] - st[0]) * inv;
          float sum_p_dp = 0.0f;
          float* dpat = bp.dpattern ? bp.dpattern + ((static_cast<int64_t>(b) * H + h) * T + t) * T : nullptr;
          for (int j = first; j <= t; ++j) {
            const int64_t kr = static_cast<int64_t>(s.kv_row + j) * p.kv_stride + kcol;
            dp[j] = dot(dz, p.v + kr, HD);
            sum_p_dp += pat[j] * dp[j];
            if (dpat) dpat[j] = dp[j];
          }
          for (int j = first; j <= t; ++j) {
            const int64_t kr = static_cast<int64_t>(s.kv_row + j) * p.kv_stride + kcol;
            const float pj = pat[j];
            const float* k = p.k + kr;
            float ds = softmax_grad(pj, dp[j], sum_p_dp) * p.scale;
            if (p.softcap > 0.0f) ds *= soft_cap_grad(sc[j], p.softcap);
            float* dk = bp.dk + kr;
            float* dv = bp.dv + kr;
            for (int d = 0; d < HD; ++d) {
              dq[d] += ds * k[d];
              dk[d] += ds * q[d];
              dv[d] += pj * dz[d];
            }
          }
        }
      }
    }
  });
}

}  // namespace phi3::cpu
