// The fused forms of the CPU ops (issue 15 item 3/5) against the unfused ops they replace,
// bit for bit: GEMM inputs written in bf16 by RMSNorm / SwiGLU / attention (GemmOut), the
// residual add folded into RMSNorm and into the GEMM (accumulate), the one-kernel rotary
// + qkv split with a cos/sin table, and the device-side no-op test (rows_equal). The CUDA
// twins are held to the same CPU results in tests/gpu/test_ops_gpu.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/op_math.h"
#include "model/forward.h"
#include "runtime/backend.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "test_util.h"

namespace phi3 {
namespace {

using test::random_vec;

Backend& be() {
  static std::unique_ptr<Backend> b = make_cpu_backend();
  return *b;
}

void expect_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0) << what << " differs at " << i << ": " << got[i] << " vs " << want[i];
}

std::vector<uint16_t> rounded(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_bf16_bits(v[i]);
  return h;
}

TEST(FusedOps, RmsnormWritesTheCastOfItsOutput) {
  const int N = 5, D = 48;
  const auto x = random_vec(size_t(N) * D, 1, -3, 3), w = random_vec(D, 2);
  std::vector<float> out(x.size()), rstd(N), rstd2(N, NAN);
  be().rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, 1e-5f);
  std::vector<uint16_t> h(x.size(), 0xffff);
  be().rmsnorm_forward(GemmOut(nullptr, h.data()), rstd2.data(), x.data(), w.data(), N, D, 1e-5f);
  EXPECT_EQ(h, rounded(out));
  expect_bits(rstd2, rstd, "rstd");
  // Both at once.
  std::vector<float> out2(x.size());
  std::vector<uint16_t> h2(x.size());
  be().rmsnorm_forward(GemmOut(out2.data(), h2.data()), nullptr, x.data(), w.data(), N, D, 1e-5f);
  expect_bits(out2, out, "out");
  EXPECT_EQ(h2, h);
  EXPECT_THROW(be().rmsnorm_forward(GemmOut(), nullptr, x.data(), w.data(), N, D, 1e-5f), Error);
}

TEST(FusedOps, AddRmsnormEqualsAddThenRmsnorm) {
  const int N = 7, D = 64;
  const auto a = random_vec(size_t(N) * D, 3, -2, 2), b = random_vec(size_t(N) * D, 4, -2, 2), w = random_vec(D, 5);
  std::vector<float> sum(a.size()), out(a.size()), rstd(N);
  be().add(sum.data(), a.data(), b.data(), int64_t(a.size()));
  be().rmsnorm_forward(out.data(), rstd.data(), sum.data(), w.data(), N, D, 1e-6f);
  std::vector<float> sum2(a.size()), out2(a.size()), rstd2(N);
  std::vector<uint16_t> h(a.size());
  be().add_rmsnorm_forward(sum2.data(), GemmOut(out2.data(), h.data()), rstd2.data(), a.data(), b.data(), w.data(), N,
                           D, 1e-6f);
  expect_bits(sum2, sum, "sum");
  expect_bits(out2, out, "out");
  expect_bits(rstd2, rstd, "rstd");
  EXPECT_EQ(h, rounded(out));
  // In place: the sum over its first input (the residual stream).
  auto x = a;
  std::vector<float> out3(a.size());
  be().add_rmsnorm_forward(x.data(), out3.data(), nullptr, x.data(), b.data(), w.data(), N, D, 1e-6f);
  expect_bits(x, sum, "in-place sum");
  expect_bits(out3, out, "in-place out");
}

TEST(FusedOps, SwigluWritesTheCastOfItsOutput) {
  const int N = 3, F = 40;
  const auto gu = random_vec(size_t(N) * 2 * F, 6, -4, 4);
  std::vector<float> out(size_t(N) * F);
  be().swiglu_forward(out.data(), gu.data(), N, F);
  std::vector<uint16_t> h(out.size());
  be().swiglu_forward(GemmOut(nullptr, h.data()), gu.data(), N, F);
  EXPECT_EQ(h, rounded(out));
}

TEST(FusedOps, LinearAccumulateAddsToTheOutput) {
  const int N = 4, in = 96, outw = 24;
  const auto x = random_vec(size_t(N) * in, 7), W = random_vec(size_t(outw) * in, 8), y0 = random_vec(size_t(N) * outw, 9);
  const Weight w{W.data(), DType::F32, outw, in};
  std::vector<float> y(y0.size());
  be().linear_forward(y.data(), x.data(), w, N, false);
  auto acc = y0;
  be().linear_forward(acc.data(), x.data(), w, N, true);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(acc[i], y0[i] + y[i], 1e-5f * (1 + std::fabs(y[i]))) << i;
  // The CPU backend computes in fp32: a bf16-only input is refused, naming the need.
  std::vector<uint16_t> h(x.size());
  try {
    be().linear_forward(y.data(), GemmIn(nullptr, h.data()), w, N, false);
    ADD_FAILURE() << "a bf16-only input was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp32 input"), std::string::npos) << e.what();
  }
}

TEST(FusedOps, RotaryTableAndQkvSplitEqualTheSeparateOps) {
  for (int rot : {8, 6}) {  // full and partial rotary (head dim 8)
    const int N = 9, H = 4, KVH = 2, HD = 8, QW = H * HD, KVW = KVH * HD, W = QW + 2 * KVW;
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; ++i) inv[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / rot));
    std::vector<int32_t> pos(N);
    for (int n = 0; n < N; ++n) pos[n] = (n * 7 + 3) % 40;
    const RopeParams plain{inv.data(), rot, 0.9f};
    const auto qkv = random_vec(size_t(N) * W, 10);
    std::vector<float> q(size_t(N) * QW), k(size_t(N) * KVW), v(size_t(N) * KVW);
    be().rotary_forward(q.data(), QW, qkv.data(), W, pos.data(), N, H, HD, plain);
    be().rotary_forward(k.data(), KVW, qkv.data() + QW, W, pos.data(), N, KVH, HD, plain);
    be().copy_rows(v.data(), KVW, nullptr, qkv.data() + QW + KVW, W, nullptr, N, KVW);

    Batch batch;
    batch.pos = pos;
    const int n_pos = rope_table_positions(batch);
    EXPECT_EQ(n_pos, *std::max_element(pos.begin(), pos.end()) + 1);
    const std::vector<float> table = rope_cos_sin_table(inv, 0.9f, n_pos);
    RopeParams tab = plain;
    tab.cos_sin = table.data();
    tab.n_pos = n_pos;
    std::vector<float> q2(q.size()), k2(k.size()), v2(v.size());
    be().rotary_qkv_forward(q2.data(), k2.data(), v2.data(), qkv.data(), pos.data(), N, H, KVH, HD, tab);
    expect_bits(q2, q, "q rot " + std::to_string(rot));
    expect_bits(k2, k, "k rot " + std::to_string(rot));
    expect_bits(v2, v, "v rot " + std::to_string(rot));
    // Backward with the table too.
    std::vector<float> d1(q.size()), d2(q.size());
    be().rotary_backward(d1.data(), QW, q.data(), QW, pos.data(), N, H, HD, plain);
    be().rotary_backward(d2.data(), QW, q.data(), QW, pos.data(), N, H, HD, tab);
    expect_bits(d2, d1, "backward with table");
    // A position outside the table is refused.
    tab.n_pos = 5;
    EXPECT_THROW(be().rotary_qkv_forward(q2.data(), k2.data(), v2.data(), qkv.data(), pos.data(), N, H, KVH, HD, tab),
                 Error);
  }
}

TEST(FusedOps, RowsEqualMarksBitwiseEqualGroups) {
  const int B = 3, T = 5, G = 4, W = 6;
  const auto a = random_vec(size_t(B) * T * G * W, 11);
  auto c = a;
  // (t=1, g=2) differs in batch row 2 only; (t=3, g=0) by the sign of a zero (bits, not value).
  c[((size_t(2) * T + 1) * G + 2) * W + 5] += 1.0f;
  const size_t z = ((size_t(0) * T + 3) * G + 0) * W + 1;
  auto a2 = a;
  a2[z] = 0.0f;
  c[z] = -0.0f;
  std::vector<uint8_t> eq(size_t(T) * G, 7);
  be().rows_equal(eq.data(), a2.data(), c.data(), B, T, G, W, int64_t(G) * W);
  for (int t = 0; t < T; ++t)
    for (int g = 0; g < G; ++g) {
      const bool want = !((t == 1 && g == 2) || (t == 3 && g == 0));
      EXPECT_EQ(eq[size_t(t) * G + g], want ? 1 : 0) << "t " << t << " g " << g;
    }
}

// AtP* key fix: the O(1) row update equals recomputing the softmax with the one score moved.
TEST(QkFix, KeyRowEffectEqualsRecomputedSoftmax) {
  const std::vector<double> s = {0.3, -1.2, 2.5, 0.0, 9.0};
  const std::vector<double> G = {0.7, -0.4, 1.1, 0.2, -2.0};
  auto softmax = [](std::vector<double> v) {
    double mx = *std::max_element(v.begin(), v.end()), z = 0;
    for (double& x : v) z += (x = std::exp(x - mx));
    for (double& x : v) x /= z;
    return v;
  };
  const std::vector<double> A = softmax(s);
  double S = 0;
  for (size_t j = 0; j < A.size(); ++j) S += A[j] * G[j];
  for (size_t p = 0; p < A.size(); ++p)
    for (double delta : {-30.0, -1.0, 0.5, 4.0, 40.0}) {
      auto s2 = s;
      s2[p] += delta;
      const std::vector<double> A2 = softmax(s2);
      double want = 0;
      for (size_t j = 0; j < A.size(); ++j) want += (A2[j] - A[j]) * G[j];
      const double m = *std::max_element(s.begin(), s.end());
      double others = 0;
      for (size_t j = 0; j < s.size(); ++j)
        if (j != p) others += std::exp(s[j] - m);
      EXPECT_NEAR(qk_key_row_effect(s[p], s[p] + delta, m, others, G[p], S), want, 1e-12 * (1 + std::fabs(want)))
          << p << " " << delta;
    }
  // A saturated row (one key at ~1 - 1e-17): moving that key down gives the other keys its
  // mass, exactly, where 1 - A would have cancelled to 0.
  const double big = 40.0;
  const double est = qk_key_row_effect(big, 0.0, big, std::exp(-big) + std::exp(-big), 1.0, 1.0);
  EXPECT_NEAR(est, 1.0 / 3.0 - 1.0, 1e-9);  // G = 1 on the moved key only: A' - A = 1/3 - 1
  EXPECT_TRUE(std::isfinite(qk_key_row_effect(0.0, 1e6, 0.0, 1.0, 1.0, 0.3)));  // clamped, finite
}

// AtP*'s QK fix with Gemma 2's soft-capped scores: the query and key estimates equal the
// softmax of the capped scores recomputed with the source query / key (double, brute force).
TEST(QkFix, SoftcappedEstimatesEqualRecomputedSoftmax) {
  const int T = 7, H = 2, KVH = 1, HD = 8, pad = 1;
  const float scale = 1.0f / std::sqrt(float(HD)), cap = 0.5f;
  auto q = test::random_vec(size_t(T) * H * HD, 901, -1.5f, 1.5f), k = test::random_vec(size_t(T) * KVH * HD, 902, -1.5f, 1.5f);
  auto qs = test::random_vec(q.size(), 903, -1.5f, 1.5f), ks = test::random_vec(k.size(), 904, -1.5f, 1.5f);
  auto v = test::random_vec(k.size(), 905);
  const std::vector<int32_t> pads = {pad};
  const std::vector<AttnSegment> segs = {{0, 0, 0, 0, 0}};
  std::vector<float> z(q.size()), pat(size_t(H) * T * T, 0.0f);
  AttnParams ap;
  ap.q = q.data(); ap.k = k.data(); ap.v = v.data(); ap.z = z.data(); ap.pattern = pat.data();
  ap.pad = pads.data(); ap.segs = segs.data(); ap.n_segs = 1;
  ap.q_stride = ap.z_stride = H * HD; ap.kv_stride = ap.cache_stride = KVH * HD;
  ap.T = T; ap.H = H; ap.KVH = KVH; ap.HD = HD; ap.scale = scale; ap.softcap = cap;
  be().attention_forward(ap);
  const auto G = test::random_vec(pat.size(), 906);
  std::vector<float> qe(size_t(T) * H), ke(size_t(T) * KVH), ka(KVH);
  QkFixParams p;
  p.q = q.data(); p.k = k.data(); p.q_src = qs.data(); p.k_src = ks.data(); p.pattern = pat.data();
  p.dpattern = G.data(); p.pad = pads.data(); p.q_est = qe.data(); p.k_est = ke.data(); p.k_all_est = ka.data();
  p.q_stride = H * HD; p.kv_stride = KVH * HD; p.B = 1; p.T = T; p.H = H; p.KVH = KVH; p.HD = HD;
  p.scale = scale; p.softcap = cap;
  be().attn_qk_fix(p);
  // Row t of head h with query qv and keys key(j): softmax over pad..t of cap*tanh(scale q.k/cap).
  auto row = [&](const float* qv, const std::function<const float*(int)>& key, int t) {
    std::vector<double> a(T, 0.0);
    double mx = -INFINITY, sum = 0;
    for (int j = pad; j <= t; ++j) {
      double d = 0;
      for (int e = 0; e < HD; ++e) d += double(qv[e]) * key(j)[e];
      a[j] = cap * std::tanh(d * scale / cap);
      mx = std::max(mx, a[j]);
    }
    for (int j = pad; j <= t; ++j) sum += (a[j] = std::exp(a[j] - mx));
    for (int j = pad; j <= t; ++j) a[j] /= sum;
    return a;
  };
  auto base_key = [&](int j) { return k.data() + size_t(j) * HD; };
  double moved = 0;
  for (int h = 0; h < H; ++h)
    for (int t = pad; t < T; ++t) {
      const auto a0 = row(q.data() + (size_t(t) * H + h) * HD, base_key, t);
      const auto a1 = row(qs.data() + (size_t(t) * H + h) * HD, base_key, t);
      double want = 0;
      for (int j = pad; j <= t; ++j) {
        EXPECT_NEAR(pat[(size_t(h) * T + t) * T + j], a0[j], 1e-6);  // the capped pattern itself
        want += (a1[j] - a0[j]) * G[(size_t(h) * T + t) * T + j];
      }
      EXPECT_NEAR(qe[size_t(t) * H + h], want, 1e-5 * (1 + std::fabs(want))) << "query t " << t << " h " << h;
      moved = std::max(moved, std::fabs(want));
    }
  for (int pk = pad; pk < T; ++pk) {  // key pk of kv head 0, shared by both heads
    auto key = [&](int j) { return j == pk ? ks.data() + size_t(j) * HD : k.data() + size_t(j) * HD; };
    double want = 0;
    for (int h = 0; h < H; ++h)
      for (int t = pk; t < T; ++t) {
        const auto a0 = row(q.data() + (size_t(t) * H + h) * HD, base_key, t);
        const auto a1 = row(q.data() + (size_t(t) * H + h) * HD, key, t);
        for (int j = pad; j <= t; ++j) want += (a1[j] - a0[j]) * G[(size_t(h) * T + t) * T + j];
      }
    EXPECT_NEAR(ke[pk], want, 1e-5 * (1 + std::fabs(want))) << "key " << pk;
  }
  EXPECT_GT(moved, 1e-3);
}

}  // namespace
}  // namespace phi3
