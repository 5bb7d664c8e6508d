// AtP*'s QK fix (CPU reference); the semantics are QkFixParams' in kernels/ops.h.
//   query (b, t, h):  A'[t, :] = softmax over the visible keys of scale q'_t . k_j (q' the
//                     source query), est = sum_j (A' - A) G.
//   key (b, p, kvh):  for every head h of its group and every row t that sees key p, only
//                     the score of p moves (scale q_t . k_p -> scale q_t . k'_p):
//                     qk_key_row_effect (op_math.h), S_t = sum_j A G, the row's other keys'
//                     weight summed without cancellation.
//   key head at every position (b, kvh): rows recomputed with every key from the source.
// Scores in fp32 like the attention op, row sums and the softmax of the fix in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {
namespace {

float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// sum_j (softmax(scores)_j - A_j) G_j over keys [first, t].
double row_effect(const std::vector<double>& sc, int first, int t, const float* A, const float* G) {
  double mx = -INFINITY;
  for (int j = first; j <= t; ++j) mx = std::max(mx, sc[j]);
  double z = 0;
  for (int j = first; j <= t; ++j) z += std::exp(sc[j] - mx);
  double est = 0;
  for (int j = first; j <= t; ++j) est += (std::exp(sc[j] - mx) / z - A[j]) * G[j];
  return est;
}

}  // namespace

void attn_qk_fix(const QkFixParams& p, Stream) {
  PHI3_CHECK(p.B >= 0 && p.T >= 0 && p.H > 0 && p.KVH > 0 && p.H % p.KVH == 0 && p.HD > 0,
             "attn_qk_fix: bad shape");
  PHI3_CHECK(p.q && p.k && p.q_src && p.k_src && p.pattern && p.dpattern && p.pad && p.q_est && p.k_est &&
                 p.k_all_est,
             "attn_qk_fix: null pointer");
  const int B = p.B, T = p.T, H = p.H, KVH = p.KVH, HD = p.HD, group = H / KVH;
  std::fill(p.q_est, p.q_est + int64_t(B) * T * H, 0.0f);
  std::fill(p.k_est, p.k_est + int64_t(B) * T * KVH, 0.0f);
  std::fill(p.k_all_est, p.k_all_est + int64_t(B) * KVH, 0.0f);
  const double work = 6.0 * B * H * double(T) * T * HD;
  parallel_for(int64_t(B) * KVH, work, [&](int64_t i0, int64_t i1) {
    std::vector<double> sc(static_cast<size_t>(T)), kest(static_cast<size_t>(T));
    for (int64_t item = i0; item < i1; ++item) {
      const int b = static_cast<int>(item / KVH), kh = static_cast<int>(item % KVH), pad = p.pad[b];
      const int64_t kcol = int64_t(kh) * HD;
      auto krow = [&](const float* base, int j) { return base + (int64_t(b) * T + j) * p.kv_stride + kcol; };
      std::fill(kest.begin(), kest.end(), 0.0);
      double kall = 0;
      for (int h = kh * group; h < (kh + 1) * group; ++h) {
        for (int t = pad; t < T; ++t) {
          const int64_t rowq = (int64_t(b) * T + t) * p.q_stride + int64_t(h) * HD;
          const float* A = p.pattern + ((int64_t(b) * H + h) * T + t) * T;
          const float* G = p.dpattern + ((int64_t(b) * H + h) * T + t) * T;
          const int first = attn_first_key(t, pad, p.window);
          double S = 0;
          for (int j = first; j <= t; ++j) S += double(A[j]) * G[j];
          // query fix
          for (int j = first; j <= t; ++j) sc[j] = double(soft_cap(dot(p.q_src + rowq, krow(p.k, j), HD) * p.scale, p.softcap));
          p.q_est[(int64_t(b) * T + t) * H + h] = static_cast<float>(row_effect(sc, first, t, A, G));
          // every key of the head from the source run
          for (int j = first; j <= t; ++j) sc[j] = double(soft_cap(dot(p.q + rowq, krow(p.k_src, j), HD) * p.scale, p.softcap));
          kall += row_effect(sc, first, t, A, G);
          // single keys: only column j moves. The row's base scores, its maximum (index
          // jm) and the sum without the maximum, for z_others without cancellation.
          int jm = first;
          for (int j = first; j <= t; ++j) {
            sc[j] = double(soft_cap(dot(p.q + rowq, krow(p.k, j), HD) * p.scale, p.softcap));
            if (sc[j] > sc[jm]) jm = j;
          }
          const double m = sc[jm];
          double z = 0, z_wo_max = 0;
          for (int j = first; j <= t; ++j) {
            z += std::exp(sc[j] - m);
            if (j != jm) z_wo_max += std::exp(sc[j] - m);
          }
          for (int j = first; j <= t; ++j) {
            const double s_new = double(soft_cap(dot(p.q + rowq, krow(p.k_src, j), HD) * p.scale, p.softcap));
            const double others = j == jm ? z_wo_max : z - std::exp(sc[j] - m);
            kest[j] += qk_key_row_effect(sc[j], s_new, m, others, G[j], S);
          }
        }
      }
      for (int j = 0; j < T; ++j) p.k_est[(int64_t(b) * T + j) * KVH + kh] = static_cast<float>(kest[j]);
      p.k_all_est[int64_t(b) * KVH + kh] = static_cast<float>(kall);
    }
  });
}

}  // namespace phi3::cpu
