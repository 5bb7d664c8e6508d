// The CPU ops (kernels/cpu/*.cpp) through the CPU backend, which is the fp32 reference of
// the whole engine (DESIGN §8 step 1):
//  - every forward against a naive double-precision reference written from the formulas of
//    kernels/ops.h / DESIGN §1-2 (not from the op code);
//  - every backward against central finite differences of the op's own fp32 forward on the
//    scalar loss L = sum(out * R), R random, accumulated in double;
//  - the shared per-element math of kernels/op_math.h directly.
// Cases are named by their parameters, e.g. Attention/AttnTest.Forward/T7_H4_KVH2_HD8_pad2_0_win3,
// and each failure also prints the ggml-style description ATTENTION(T=7,H=4,...).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "test_util.h"

namespace phi3 {
namespace {

using test::compare;
using test::Diff;
using test::random_vec;

Backend& be() {
  static std::unique_ptr<Backend> b = make_cpu_backend();
  return *b;
}

double loss(const std::vector<float>& out, const std::vector<float>& R) {
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += static_cast<double>(out[i]) * R[i];
  return s;
}

// At most `max` indices spread evenly over [0, n) (all of them when n <= max).
std::vector<size_t> sample(size_t n, size_t max = 400) {
  std::vector<size_t> idx;
  if (n <= max) {
    idx.resize(n);
    std::iota(idx.begin(), idx.end(), size_t{0});
  } else {
    for (size_t k = 0; k < max; ++k) idx.push_back((k * n + n / (2 * max)) / max);
  }
  return idx;
}

// Central differences of f() w.r.t. x[i], i in idx, perturbing x in place (fp32); the actual
// fp32 step (x+eps) - (x-eps) is the divisor.
std::vector<float> fd_grad(std::vector<float>& x, const std::vector<size_t>& idx, float eps,
                           const std::function<double()>& f) {
  std::vector<float> g;
  g.reserve(idx.size());
  for (size_t i : idx) {
    const float x0 = x[i], xp = x0 + eps, xm = x0 - eps;
    x[i] = xp;
    const double lp = f();
    x[i] = xm;
    const double lm = f();
    x[i] = x0;
    g.push_back(static_cast<float>((lp - lm) / (static_cast<double>(xp) - xm)));
  }
  return g;
}

// analytic[idx] against numeric (same order): worst error relative to the largest numeric
// entry, or to `floor` when the gradient is smaller than that (a nearly flat function).
void expect_grad(const std::vector<float>& analytic, const std::vector<size_t>& idx,
                 const std::vector<float>& numeric, double tol, const std::string& what,
                 double floor = 0.0) {
  for (float a : analytic) ASSERT_TRUE(std::isfinite(a)) << what << ": non-finite gradient";
  std::vector<float> a;
  for (size_t i : idx) a.push_back(analytic[i]);
  const Diff d = compare(a, numeric);
  EXPECT_TRUE(d.finite && d.max_abs <= tol * std::max(d.max_ref, floor))
      << what << " vs finite differences (tol " << tol << ", floor " << floor << "): " << d.str()
      << " at sample " << d.worst << " = element " << idx[d.worst];
}

void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol,
                  const std::string& what) {
  const Diff d = compare(got, ref);
  EXPECT_TRUE(d.finite && d.rel() <= tol) << what << " (tol " << tol << "): " << d.str();
}

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

// ======================================================================================
// op_math.h helpers
// ======================================================================================

TEST(OpMath, SiluAndSiluGrad) {
  for (double g = -12.0; g <= 12.0; g += 0.173) {
    const float gf = static_cast<float>(g);
    const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(gf)));
    // fp32 evaluation of closed forms: a few ulp.
    EXPECT_NEAR(silu(gf), gf * s, 1e-6 * std::max(1.0, std::fabs(g))) << "g=" << g;
    EXPECT_NEAR(silu_grad(gf), s * (1 + gf * (1 - s)), 1e-6) << "g=" << g;
    // FD of the fp32 silu with eps=1e-2: truncation eps^2/6 |silu'''| <= 2e-5, rounding
    // ulp(|silu|)/eps <= 1e-4 for |g| <= 12.
    const float eps = 1e-2f;
    const double fd = (static_cast<double>(silu(gf + eps)) - silu(gf - eps)) /
                      (static_cast<double>(gf + eps) - (gf - eps));
    EXPECT_NEAR(silu_grad(gf), fd, 2e-4) << "g=" << g;
  }
}

TEST(OpMath, RmsnormDxMatchesFD) {
  for (int D : {1, 7, 64}) {
    const auto x = random_vec(D, 11 + D), w = random_vec(D, 12 + D, 0.5f, 1.5f),
               dy = random_vec(D, 13 + D);
    const float eps = 1e-5f;
    // L(x) = sum_i dy_i * x_i * w_i / sqrt(mean(x^2) + eps), all in double.
    auto L = [&](const std::vector<double>& xd) {
      double ss = 0;
      for (double v : xd) ss += v * v;
      const double r = 1.0 / std::sqrt(ss / D + eps);
      double l = 0;
      for (int i = 0; i < D; ++i) l += dy[i] * xd[i] * w[i] * r;
      return l;
    };
    double ss = 0, dot = 0;
    for (int i = 0; i < D; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float rstd = rmsnorm_rstd(static_cast<float>(ss), D, eps);
    EXPECT_NEAR(rstd, 1.0 / std::sqrt(ss / D + eps), 1e-6 * rstd);
    for (int i = 0; i < D; ++i) dot += static_cast<double>(w[i]) * dy[i] * x[i];
    for (int i = 0; i < D; ++i) {
      auto xp = test::to_double(x), xm = xp;
      const double h = 1e-5;  // double FD: error ~ h^2 + 1e-16/h, far below the fp32 1e-5
      xp[i] += h;
      xm[i] -= h;
      const double fd = (L(xp) - L(xm)) / (2 * h);
      const float dx = rmsnorm_dx(x[i], w[i], dy[i], rstd, static_cast<float>(dot), D);
      EXPECT_NEAR(dx, fd, 1e-5 * std::max(1.0, std::fabs(fd))) << "D=" << D << " i=" << i;
    }
  }
}

TEST(OpMath, RopeRotateBackIsTheTranspose) {
  const auto v = random_vec(400, 5, -2.0f, 2.0f);
  for (size_t i = 0; i + 6 <= v.size(); i += 6) {
    float c, s;
    rope_angle(static_cast<int32_t>(i), v[i + 4] + 2.5f, 1.0f + 0.1f * v[i + 5], &c, &s);
    float ao, bo, dai, dbi;
    rope_rotate(v[i], v[i + 1], c, s, &ao, &bo);
    rope_rotate_back(v[i + 2], v[i + 3], c, s, &dai, &dbi);
    // <R x, d> == <x, R^T d> up to fp32 rounding of a handful of products.
    EXPECT_NEAR(static_cast<double>(ao) * v[i + 2] + static_cast<double>(bo) * v[i + 3],
                static_cast<double>(v[i]) * dai + static_cast<double>(v[i + 1]) * dbi, 2e-5);
  }
}

TEST(OpMath, AttnFirstKeyAgreesWithVisible) {
  for (int T : {1, 5, 9})
    for (int pad = 0; pad < T; ++pad)
      for (int window : {0, 1, 2, 3, 8})
        for (int t = 0; t < T; ++t)
          for (int j = 0; j < T; ++j) {
            const bool rule = j >= pad && j <= t && t >= pad && (window <= 0 || t - j < window);
            EXPECT_EQ(attn_visible(t, j, pad, window), rule);
            if (t >= pad) {
              EXPECT_EQ(rule, j >= attn_first_key(t, pad, window) && j <= t)
                  << "T=" << T << " pad=" << pad << " window=" << window << " t=" << t;
            }
          }
}

TEST(OpMath, SoftmaxGradMatchesFD) {
  const int n = 9;
  const auto s = random_vec(n, 21, -3.0f, 3.0f), dp = random_vec(n, 22);
  auto softmax = [&](std::vector<double> x) {
    double mx = *std::max_element(x.begin(), x.end()), sum = 0;
    for (auto& v : x) sum += (v = std::exp(v - mx));
    for (auto& v : x) v /= sum;
    return x;
  };
  const auto p = softmax(test::to_double(s));
  double sum_p_dp = 0;
  for (int j = 0; j < n; ++j) sum_p_dp += p[j] * dp[j];
  for (int j = 0; j < n; ++j) {
    auto sp = test::to_double(s), sm = sp;
    sp[j] += 1e-6;
    sm[j] -= 1e-6;
    const auto pp = softmax(sp), pm = softmax(sm);
    double fd = 0;  // d/ds_j sum_k dp_k p_k
    for (int k = 0; k < n; ++k) fd += dp[k] * (pp[k] - pm[k]) / 2e-6;
    const float ds = softmax_grad(static_cast<float>(p[j]), dp[j], static_cast<float>(sum_p_dp));
    EXPECT_NEAR(ds, fd, 1e-6) << "j=" << j;  // fp32 products of O(1) terms
  }
}

// ======================================================================================
// Embedding
// ======================================================================================

// Gemma: the looked-up rows times sqrt(D), in fp32 (bf16 rows widened first).
TEST(Embedding, ScaledRows) {
  const int V = 10, D = 6;
  const std::vector<int32_t> ids = {3, 0, 9};
  const auto table = random_vec(V * D, 33);
  std::vector<uint16_t> bf(V * D);
  for (int i = 0; i < V * D; ++i) bf[i] = float_to_bf16_bits(table[i]);
  const float s = std::sqrt(2304.0f);
  std::vector<float> out(3 * D, NAN);
  be().embedding_forward(out.data(), ids.data(), Weight{bf.data(), DType::BF16, V, D}, 3, s);
  for (int i = 0; i < 3; ++i)
    for (int d = 0; d < D; ++d) EXPECT_EQ(out[i * D + d], bf16_bits_to_float(bf[ids[i] * D + d]) * s);
}

// Soft-capping (Gemma 2's final logits): c tanh(x / c) and its backward from the capped values.
TEST(Softcap, ForwardAndBackward) {
  const float c = 30.0f;
  auto x = random_vec(257, 34, -120.0f, 120.0f);
  std::vector<float> y = x;
  be().softcap_forward(y.data(), int64_t(y.size()), c);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(y[i], c * std::tanh(double(x[i]) / c), 4e-6 * c) << i;
    EXPECT_LT(std::fabs(y[i]), c + 1e-4f);
  }
  auto dy = random_vec(x.size(), 35);
  std::vector<float> dx = dy;
  be().softcap_backward(dx.data(), y.data(), int64_t(dx.size()), c);
  for (size_t i = 0; i < x.size(); ++i) {
    const double t = std::tanh(double(x[i]) / c);
    EXPECT_NEAR(dx[i], dy[i] * (1 - t * t), 1e-5) << i;  // d/dx c tanh(x/c) = 1 - tanh^2
  }
}

TEST(Embedding, F32Bf16F16Lookup) {
  const int V = 10, D = 6;
  const std::vector<int32_t> ids = {3, 0, 9, 3, 7};
  const int N = static_cast<int>(ids.size());
  const auto table = random_vec(V * D, 31);
  std::vector<float> out(N * D, NAN);
  be().embedding_forward(out.data(), ids.data(), Weight{table.data(), DType::F32, V, D}, N);
  for (int i = 0; i < N; ++i)
    for (int d = 0; d < D; ++d) EXPECT_EQ(out[i * D + d], table[ids[i] * D + d]);

  std::vector<uint16_t> bf(V * D);
  for (int i = 0; i < V * D; ++i) bf[i] = float_to_bf16_bits(table[i]);
  be().embedding_forward(out.data(), ids.data(), Weight{bf.data(), DType::BF16, V, D}, N);
  for (int i = 0; i < N; ++i)
    for (int d = 0; d < D; ++d) EXPECT_EQ(out[i * D + d], bf16_bits_to_float(bf[ids[i] * D + d]));

  // F16: 1, -2, 1/3 (rounded), 65504 (max), 2^-24 (smallest subnormal), 0.
  const std::vector<uint16_t> h = {0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0001, 0x0000};
  const std::vector<float> hv = {1.0f, -2.0f, 0.333251953125f, 65504.0f, 5.9604644775390625e-8f, 0};
  const int32_t id0 = 0;
  std::vector<float> o6(6);
  be().embedding_forward(o6.data(), &id0, Weight{h.data(), DType::F16, 1, 6}, 1);
  for (int d = 0; d < 6; ++d) EXPECT_EQ(o6[d], hv[d]) << "d=" << d;
}

TEST(Embedding, OutOfRangeIdThrows) {
  const auto table = random_vec(4 * 3, 1);
  std::vector<float> out(3);
  for (int32_t bad : {-1, 4}) {
    try {
      be().embedding_forward(out.data(), &bad, Weight{table.data(), DType::F32, 4, 3}, 1);
      ADD_FAILURE() << "no error for id " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
  }
}

// ======================================================================================
// RMSNorm
// ======================================================================================

struct NormCase { int N, D; };
std::string norm_name(const testing::TestParamInfo<NormCase>& i) {
  return "N" + std::to_string(i.param.N) + "_D" + std::to_string(i.param.D);
}
class RmsnormTest : public testing::TestWithParam<NormCase> {};

TEST_P(RmsnormTest, ForwardAndBackward) {
  const auto [N, D] = GetParam();
  SCOPED_TRACE("RMS_NORM(N=" + std::to_string(N) + ",D=" + std::to_string(D) + ")");
  const float eps = 1e-5f;
  auto x = random_vec(size_t(N) * D, 100 + D, -2.0f, 2.0f);
  const auto w = random_vec(D, 101 + D, 0.5f, 1.5f), R = random_vec(size_t(N) * D, 102 + D);
  std::vector<float> out(size_t(N) * D), rstd(N);
  be().rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, eps);

  std::vector<double> ref(out.size()), ref_rstd(N);
  for (int n = 0; n < N; ++n) {
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double(x[n * D + d]) * x[n * D + d];
    ref_rstd[n] = 1.0 / std::sqrt(ss / D + eps);
    for (int d = 0; d < D; ++d) ref[n * D + d] = x[n * D + d] * ref_rstd[n] * w[d];
  }
  // fp32 products of three terms and one sqrt: a few ulp.
  expect_close(out, to_float(ref), 2e-6, "out");
  expect_close(rstd, to_float(ref_rstd), 2e-6, "rstd");

  // Backward accumulates: start from a random dx and subtract it.
  const auto dx0 = random_vec(x.size(), 103);
  auto dx = dx0;
  be().rmsnorm_backward(dx.data(), R.data(), x.data(), w.data(), rstd.data(), N, D);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= dx0[i];
  const auto idx = sample(x.size(), 300);
  const auto num = fd_grad(x, idx, 1e-2f, [&] {
    be().rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, eps);
    return loss(out, R);
  });
  // eps=1e-2: truncation ~eps^2 |f'''| ~ 1e-4; the fp32 rounding of a perturbed row's D
  // outputs gives ~sqrt(D) * 6e-8 / 2e-2 ~ 2e-4 at D=3072. Floor 1: the natural gradient
  // scale |R w rstd| ~ 1 (at D=1, out ~ sign(x) w is flat and dx ~ eps_norm is ~1e-3).
  expect_grad(dx, idx, num, 2e-3, "dx", 1.0);
}

INSTANTIATE_TEST_SUITE_P(Rmsnorm, RmsnormTest,
                         testing::Values(NormCase{1, 1}, NormCase{5, 7}, NormCase{3, 64},
                                         NormCase{13, 96}, NormCase{4, 3072}),
                         norm_name);

// LayerNorm (GPT-2): the norm op with center and a bias, against a double loop; the fused
// residual add + norm gives the same; the backward against finite differences.
class LayernormTest : public testing::TestWithParam<NormCase> {};

TEST_P(LayernormTest, ForwardAndBackward) {
  const auto [N, D] = GetParam();
  SCOPED_TRACE("LAYER_NORM(N=" + std::to_string(N) + ",D=" + std::to_string(D) + ")");
  const float eps = 1e-5f;
  auto x = random_vec(size_t(N) * D, 200 + D, -2.0f, 3.0f);  // mean far from 0: centering matters
  const auto w = random_vec(D, 201 + D, 0.5f, 1.5f), bias = random_vec(D, 204 + D);
  const auto R = random_vec(size_t(N) * D, 202 + D);
  std::vector<float> out(size_t(N) * D), rstd(N);
  be().rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, eps, true, bias.data());

  std::vector<double> ref(out.size()), ref_rstd(N);
  for (int n = 0; n < N; ++n) {
    double mu = 0, ss = 0;
    for (int d = 0; d < D; ++d) mu += x[n * D + d];
    mu /= D;
    for (int d = 0; d < D; ++d) ss += (x[n * D + d] - mu) * (x[n * D + d] - mu);
    ref_rstd[n] = 1.0 / std::sqrt(ss / D + eps);
    for (int d = 0; d < D; ++d) ref[n * D + d] = (x[n * D + d] - mu) * ref_rstd[n] * w[d] + bias[d];
  }
  expect_close(out, to_float(ref), 1e-5, "out");
  expect_close(rstd, to_float(ref_rstd), 1e-5, "rstd");
  // Not an RMSNorm: without center the output differs.
  std::vector<float> rms(out.size());
  be().rmsnorm_forward(rms.data(), rstd.data(), x.data(), w.data(), N, D, eps);
  double diff = 0;
  for (size_t i = 0; i < out.size(); ++i) diff = std::max(diff, double(std::fabs(out[i] - rms[i])));
  EXPECT_GT(diff, 1e-2);

  // The fused residual add: sum = a + b, then the same LayerNorm of sum.
  const auto a = random_vec(x.size(), 205 + D, -1.0f, 2.0f);
  std::vector<float> b(x.size()), sum(x.size()), out2(out.size()), rstd2(N);
  for (size_t i = 0; i < x.size(); ++i) b[i] = x[i] - a[i];
  be().add_rmsnorm_forward(sum.data(), out2.data(), rstd2.data(), a.data(), b.data(), w.data(), N, D, eps, true,
                           bias.data());
  std::vector<float> out3(out.size()), rstd3(N);
  be().rmsnorm_forward(out3.data(), rstd3.data(), sum.data(), w.data(), N, D, eps, true, bias.data());
  expect_close(out2, out3, 0, "fused add + norm");
  expect_close(out2, to_float(ref), 1e-4, "fused add + norm vs reference");

  be().rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, eps, true, bias.data());
  const auto dx0 = random_vec(x.size(), 203);
  auto dx = dx0;
  be().rmsnorm_backward(dx.data(), R.data(), x.data(), w.data(), rstd.data(), N, D, true);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= dx0[i];
  const auto idx = sample(x.size(), 300);
  const auto num = fd_grad(x, idx, 1e-2f, [&] {
    be().rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, eps, true, bias.data());
    return loss(out, R);
  });
  expect_grad(dx, idx, num, 2e-3, "dx", 1.0);
}

INSTANTIATE_TEST_SUITE_P(Layernorm, LayernormTest,
                         testing::Values(NormCase{1, 2}, NormCase{5, 7}, NormCase{13, 48}, NormCase{4, 768}),
                         norm_name);

// ======================================================================================
// Linear
// ======================================================================================

struct LinCase { int N, in, out; };
std::string lin_name(const testing::TestParamInfo<LinCase>& i) {
  return "N" + std::to_string(i.param.N) + "_in" + std::to_string(i.param.in) + "_out" +
         std::to_string(i.param.out);
}
class LinearTest : public testing::TestWithParam<LinCase> {};

// A bias (Weight::bias: Qwen2's q/k/v, Llama's attention_bias / mlp_bias) is added to every
// output row, after the product and before or on top of the accumulated value; the backward
// ignores it (no weight gradients). The reference adds it in double.
TEST(Linear, BiasAddedToEveryRow) {
  const int N = 5, in = 17, out = 33;
  const auto x = random_vec(size_t(N) * in, 210), W = random_vec(size_t(out) * in, 211), b = random_vec(out, 212);
  const auto base = random_vec(size_t(N) * out, 213);
  Weight w{W.data(), DType::F32, out, in};
  w.bias = b.data();
  std::vector<float> y(size_t(N) * out, NAN), ya = base;
  be().linear_forward(y.data(), x.data(), w, N, false);
  be().linear_forward(ya.data(), x.data(), w, N, true);
  std::vector<double> yref(y.size()), yaref(y.size());
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < out; ++o) {
      double acc = b[o];
      for (int i = 0; i < in; ++i) acc += double(x[n * in + i]) * W[size_t(o) * in + i];
      yref[size_t(n) * out + o] = acc;
      yaref[size_t(n) * out + o] = acc + base[size_t(n) * out + o];
    }
  expect_close(y, to_float(yref), 1e-6, "y = x W^T + b");
  expect_close(ya, to_float(yaref), 1e-6, "y += x W^T + b");
  const auto dy = random_vec(y.size(), 214);
  std::vector<float> dx1(x.size()), dx2(x.size());
  be().linear_backward(dx1.data(), dy.data(), w, N, false);
  w.bias = nullptr;
  be().linear_backward(dx2.data(), dy.data(), w, N, false);
  EXPECT_EQ(dx1, dx2) << "the bias does not enter the activation gradient";
}

TEST_P(LinearTest, ForwardBackwardVsNaive) {
  const auto [N, in, out] = GetParam();
  SCOPED_TRACE("LINEAR(N=" + std::to_string(N) + ",in=" + std::to_string(in) +
               ",out=" + std::to_string(out) + ")");
  auto x = random_vec(size_t(N) * in, 200 + in);
  const auto W = random_vec(size_t(out) * in, 201 + out), dy = random_vec(size_t(N) * out, 202);
  const Weight w{W.data(), DType::F32, out, in};
  std::vector<float> y(size_t(N) * out, NAN);
  be().linear_forward(y.data(), x.data(), w, N, false);
  std::vector<double> yref(y.size(), 0.0), dxref(x.size(), 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < out; ++o) {
      double acc = 0;
      for (int i = 0; i < in; ++i) acc += double(x[n * in + i]) * W[size_t(o) * in + i];
      yref[size_t(n) * out + o] = acc;
      for (int i = 0; i < in; ++i) dxref[size_t(n) * in + i] += double(dy[size_t(n) * out + o]) * W[size_t(o) * in + i];
    }
  // fp32 sums of `in` (resp. `out`) terms: rounding ~ sqrt(terms) * 6e-8 relative to the
  // largest output; 1e-5 covers 3072 terms with margin.
  expect_close(y, to_float(yref), 1e-5, "y");

  std::vector<float> dx(x.size(), NAN);
  be().linear_backward(dx.data(), dy.data(), w, N, /*accumulate=*/false);
  expect_close(dx, to_float(dxref), 1e-5, "dx");
  const auto base = random_vec(x.size(), 203);
  auto dxa = base;
  be().linear_backward(dxa.data(), dy.data(), w, N, /*accumulate=*/true);
  for (size_t i = 0; i < dxa.size(); ++i) dxref[i] += base[i];
  expect_close(dxa, to_float(dxref), 1e-5, "dx (accumulate)");

  if (size_t(N) * in * out <= 100000) {  // FD too, where cheap: linear, so only rounding
    const auto idx = sample(x.size(), 200);
    const auto num = fd_grad(x, idx, 1e-2f, [&] {
      be().linear_forward(y.data(), x.data(), w, N, false);
      return loss(y, dy);
    });
    expect_grad(dx, idx, num, 1e-3, "dx");
  }
}

INSTANTIATE_TEST_SUITE_P(Linear, LinearTest,
                         testing::Values(LinCase{1, 1, 1}, LinCase{5, 7, 3}, LinCase{17, 64, 48},
                                         LinCase{3, 3072, 96}, LinCase{2, 96, 3072}),
                         lin_name);

TEST(Linear, NonF32WeightThrows) {
  std::vector<uint16_t> W(12);
  std::vector<float> x(4), y(3);
  const Weight w{W.data(), DType::BF16, 3, 4};
  EXPECT_THROW(be().linear_forward(y.data(), x.data(), w, 1, false), Error);
  EXPECT_THROW(be().linear_backward(x.data(), y.data(), w, 1, false), Error);
}

// ======================================================================================
// Rotary
// ======================================================================================

struct RopeCase { int N, heads, HD, rot; float scale; };
std::string rope_name(const testing::TestParamInfo<RopeCase>& i) {
  const auto& c = i.param;
  return "N" + std::to_string(c.N) + "_heads" + std::to_string(c.heads) + "_HD" +
         std::to_string(c.HD) + "_rot" + std::to_string(c.rot) + "_scale" +
         std::to_string(int(std::lround(c.scale * 100)));
}
class RotaryTest : public testing::TestWithParam<RopeCase> {
 protected:
  void SetUp() override {
    const auto& c = GetParam();
    for (int i = 0; i < c.rot / 2; ++i)
      inv_freq.push_back(static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / c.rot)));
    for (int n = 0; n < c.N; ++n) pos.push_back((n * 37 + 5) % 131);  // up to 130
    rope = RopeParams{inv_freq.data(), c.rot, c.scale};
  }
  std::vector<float> inv_freq;
  std::vector<int32_t> pos;
  RopeParams rope;
};

TEST_P(RotaryTest, ForwardVsNaive) {
  const auto& c = GetParam();
  const int W = c.heads * c.HD;
  const auto x = random_vec(size_t(c.N) * W, 300);
  std::vector<float> y(x.size(), NAN);
  be().rotary_forward(y.data(), W, x.data(), W, pos.data(), c.N, c.heads, c.HD, rope);
  std::vector<double> ref(x.size());
  const int half = c.rot / 2;
  for (int n = 0; n < c.N; ++n)
    for (int h = 0; h < c.heads; ++h) {
      const size_t o = size_t(n) * W + size_t(h) * c.HD;
      for (int i = 0; i < half; ++i) {
        // The angle is formed in fp32 like HF (position_ids.float() @ inv_freq.float()).
        const double th = static_cast<float>(pos[n]) * inv_freq[i];
        const double cs = std::cos(th) * c.scale, sn = std::sin(th) * c.scale;
        ref[o + i] = x[o + i] * cs - x[o + i + half] * sn;
        ref[o + i + half] = x[o + i + half] * cs + x[o + i] * sn;
      }
      for (int d = c.rot; d < c.HD; ++d) ref[o + d] = x[o + d];
    }
  // cosf/sinf of the same fp32 angle are within an ulp or two; two products per output.
  expect_close(y, to_float(ref), 1e-6, "rotary out");
  for (int n = 0; n < c.N; ++n)  // pass-through dims are exact copies
    for (int h = 0; h < c.heads; ++h)
      for (int d = c.rot; d < c.HD; ++d)
        ASSERT_EQ(y[size_t(n) * W + h * c.HD + d], x[size_t(n) * W + h * c.HD + d]);
}

TEST_P(RotaryTest, InPlaceInStridedBufferEqualsOutOfPlace) {
  const auto& c = GetParam();
  const int W = c.heads * c.HD;
  const int64_t stride = W + 2 * c.HD + 3;  // q followed by other columns, like a qkv row
  const auto buf0 = random_vec(size_t(c.N) * stride, 301);
  std::vector<float> oop(size_t(c.N) * W, NAN);
  be().rotary_forward(oop.data(), W, buf0.data(), stride, pos.data(), c.N, c.heads, c.HD, rope);
  auto buf = buf0;
  be().rotary_forward(buf.data(), stride, buf.data(), stride, pos.data(), c.N, c.heads, c.HD, rope);
  for (int n = 0; n < c.N; ++n)
    for (int64_t d = 0; d < stride; ++d) {
      const float want = d < W ? oop[size_t(n) * W + d] : buf0[size_t(n) * stride + d];
      ASSERT_EQ(buf[size_t(n) * stride + d], want) << "row " << n << " col " << d;
    }
  // Backward in place too.
  std::vector<float> boop(size_t(c.N) * W, NAN);
  be().rotary_backward(boop.data(), W, buf0.data(), stride, pos.data(), c.N, c.heads, c.HD, rope);
  buf = buf0;
  be().rotary_backward(buf.data(), stride, buf.data(), stride, pos.data(), c.N, c.heads, c.HD, rope);
  for (int n = 0; n < c.N; ++n)
    for (int d = 0; d < W; ++d) ASSERT_EQ(buf[size_t(n) * stride + d], boop[size_t(n) * W + d]);
}

TEST_P(RotaryTest, BackwardMatchesFD) {
  const auto& c = GetParam();
  const int W = c.heads * c.HD;
  auto x = random_vec(size_t(c.N) * W, 302);
  const auto R = random_vec(x.size(), 303);
  std::vector<float> y(x.size()), dx(x.size(), NAN);
  be().rotary_backward(dx.data(), W, R.data(), W, pos.data(), c.N, c.heads, c.HD, rope);
  const auto idx = sample(x.size(), 300);
  const auto num = fd_grad(x, idx, 1e-2f, [&] {
    be().rotary_forward(y.data(), W, x.data(), W, pos.data(), c.N, c.heads, c.HD, rope);
    return loss(y, R);
  });
  // Linear in x: only fp32 rounding of the perturbed outputs, ~1e-7 / 1e-2 relative.
  expect_grad(dx, idx, num, 1e-4, "din");
}

INSTANTIATE_TEST_SUITE_P(Rotary, RotaryTest,
                         testing::Values(RopeCase{3, 2, 8, 8, 1.0f}, RopeCase{7, 3, 12, 4, 1.19f},
                                         RopeCase{5, 2, 6, 0, 1.0f},  // rot_dim 0: a copy
                                         RopeCase{31, 32, 96, 96, 1.0f},  // Phi-3-mini
                                         RopeCase{9, 4, 128, 96, 1.1902f}),  // Phi-4-mini: partial + LongRoPE scale
                         rope_name);

// ======================================================================================
// Attention
// ======================================================================================

struct AttnCase {
  int T, H, KVH, HD, window;
  std::vector<int32_t> pads;  // one per batch row
  float softcap = 0.0f;       // Gemma 2's score soft-capping (0: none)
};
std::string attn_desc(const AttnCase& c) {
  std::ostringstream os;
  os << "ATTENTION(T=" << c.T << ",H=" << c.H << ",KVH=" << c.KVH << ",HD=" << c.HD << ",pad=[";
  for (size_t i = 0; i < c.pads.size(); ++i) os << (i ? "," : "") << c.pads[i];
  os << "],window=" << c.window << ",softcap=" << c.softcap << ")";
  return os.str();
}
std::string attn_name(const testing::TestParamInfo<AttnCase>& i) {
  const auto& c = i.param;
  std::string s = "T" + std::to_string(c.T) + "_H" + std::to_string(c.H) + "_KVH" +
                  std::to_string(c.KVH) + "_HD" + std::to_string(c.HD) + "_pad";
  for (size_t k = 0; k < c.pads.size(); ++k) s += (k ? "_" : "") + std::to_string(c.pads[k]);
  return s + "_win" + std::to_string(c.window) + (c.softcap > 0 ? "_cap" + std::to_string(int(c.softcap * 10)) : "");
}

// Naive attention of one sequence in double, straight from the semantics of DESIGN §2:
// key j visible from query t iff pad <= j <= t and (window <= 0 or t - j < window); pad
// queries give z = 0 and a zero pattern row. q/k/v(t) return row pointers of position t.
struct NaiveAttn {
  std::vector<double> z;    // [T, H*HD]
  std::vector<double> pat;  // [H, T, T]
  std::vector<double> lse;  // [H, T] log-sum-exp of each query row's (capped) scores
};
NaiveAttn naive_attention(const std::function<const float*(int)>& q,
                          const std::function<const float*(int)>& k,
                          const std::function<const float*(int)>& v, const AttnCase& c, int pad,
                          double scale) {
  const int T = c.T, H = c.H, HD = c.HD, group = c.H / c.KVH;
  NaiveAttn r{std::vector<double>(size_t(T) * H * HD, 0.0), std::vector<double>(size_t(H) * T * T, 0.0),
              std::vector<double>(size_t(H) * T, -INFINITY)};
  for (int h = 0; h < H; ++h) {
    const int kh = h / group;
    for (int t = pad; t < T; ++t) {
      std::vector<double> s(T, -INFINITY);
      double mx = -INFINITY;
      for (int j = 0; j < T; ++j) {
        if (!(j >= pad && j <= t && (c.window <= 0 || t - j < c.window))) continue;
        double d = 0;
        for (int e = 0; e < HD; ++e) d += double(q(t)[h * HD + e]) * k(j)[kh * HD + e];
        s[j] = c.softcap > 0 ? c.softcap * std::tanh(d * scale / c.softcap) : d * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j < T; ++j) sum += (s[j] = std::exp(s[j] - mx));
      r.lse[size_t(h) * T + t] = mx + std::log(sum);
      for (int j = 0; j < T; ++j) {
        const double p = s[j] / sum;
        r.pat[(size_t(h) * T + t) * T + j] = p;
        for (int e = 0; e < HD; ++e) r.z[size_t(t) * H * HD + h * HD + e] += p * v(j)[kh * HD + e];
      }
    }
  }
  return r;
}

// A plain pass laid out like the model's: one qkv buffer [B*T, (H+2KVH)*HD] (q | k | v),
// segment i holding batch row B-1-i at rows i*T (so segment order != batch order).
struct AttnPlain {
  AttnCase c;
  int B, S;  // S = qkv row stride
  float scale;
  std::vector<float> qkv;
  std::vector<AttnSegment> segs;
  mutable std::vector<float> stats;  // [B, H, T, 2] softmax (max, sum): written by the forward, read by the backward
  explicit AttnPlain(const AttnCase& cs, uint32_t seed) : c(cs) {
    B = static_cast<int>(c.pads.size());
    S = (c.H + 2 * c.KVH) * c.HD;
    scale = 1.0f / std::sqrt(static_cast<float>(c.HD));
    qkv = random_vec(size_t(B) * c.T * S, seed, -1.5f, 1.5f);
    for (int i = 0; i < B; ++i) segs.push_back(AttnSegment{B - 1 - i, 0, i * c.T, 0, i * c.T});
    stats.assign(size_t(B) * c.H * c.T * 2, 0.0f);
  }
  int seg_of(int b) const { return B - 1 - b; }
  const float* row(int b, int t) const { return qkv.data() + size_t(seg_of(b) * c.T + t) * S; }
  AttnParams params(float* z, float* pattern) const {
    AttnParams p;
    p.q = qkv.data();
    p.k = qkv.data() + c.H * c.HD;
    p.v = qkv.data() + (c.H + c.KVH) * c.HD;
    p.z = z;
    p.pattern = pattern;
    p.pad = c.pads.data();
    p.segs = segs.data();
    p.n_segs = B;
    p.q_stride = p.kv_stride = S;
    p.z_stride = c.H * c.HD;
    p.T = c.T; p.H = c.H; p.KVH = c.KVH; p.HD = c.HD;
    p.window = c.window;
    p.scale = scale;
    p.softcap = c.softcap;
    p.stats = stats.data();
    return p;
  }
  size_t z_size() const { return size_t(B) * c.T * c.H * c.HD; }
  size_t pattern_size() const { return size_t(B) * c.H * c.T * c.T; }
};

class AttnTest : public testing::TestWithParam<AttnCase> {};

// fp32 dot products over HD <= 96 and softmax sums over <= 31 keys: errors of a few ulp
// times sqrt(terms) ~ 1e-6 of the largest output; 1e-5 leaves a 10x margin.
constexpr double kAttnTol = 1e-5;

TEST_P(AttnTest, ForwardVsNaive) {
  const AttnCase& c = GetParam();
  SCOPED_TRACE(attn_desc(c));
  const AttnPlain a(c, 400);
  std::vector<float> z(a.z_size(), NAN), pat(a.pattern_size(), 7.0f);  // sentinels: all written
  std::vector<float> stats(size_t(a.B) * c.H * c.T * 2, 7.0f);
  AttnParams ap = a.params(z.data(), pat.data());
  ap.stats = stats.data();
  be().attention_forward(ap);
  const int HHD = c.H * c.HD;
  for (int b = 0; b < a.B; ++b) {
    auto q = [&](int t) { return a.row(b, t); };
    auto k = [&](int t) { return a.row(b, t) + HHD; };
    auto v = [&](int t) { return a.row(b, t) + HHD + c.KVH * c.HD; };
    const NaiveAttn ref = naive_attention(q, k, v, c, c.pads[b], a.scale);
    const size_t z0 = size_t(a.seg_of(b)) * c.T * HHD, p0 = size_t(b) * c.H * c.T * c.T;
    expect_close(std::vector<float>(z.begin() + z0, z.begin() + z0 + c.T * HHD), to_float(ref.z),
                 kAttnTol, "z of batch row " + std::to_string(b));
    expect_close(std::vector<float>(pat.begin() + p0, pat.begin() + p0 + ref.pat.size()),
                 to_float(ref.pat), kAttnTol, "pattern of batch row " + std::to_string(b));
    for (int t = 0; t < c.pads[b]; ++t)  // pad queries: exact zeros
      for (int e = 0; e < HHD; ++e) ASSERT_EQ(z[z0 + size_t(t) * HHD + e], 0.0f);
    for (int h = 0; h < c.H; ++h)
      for (int t = 0; t < c.T; ++t) {
        const float* st = &stats[((size_t(b) * c.H + h) * c.T + t) * 2];  // (m, l): lse = m + log l
        const double want = ref.lse[size_t(h) * c.T + t];
        if (t < c.pads[b]) {
          ASSERT_TRUE(std::isinf(st[0]) && st[0] < 0 && st[1] == 0.0f) << "pad query stats " << st[0] << " " << st[1];
        } else {
          ASSERT_GE(st[1], 1.0f) << "the row's maximum contributes exp(0) = 1";
          ASSERT_NEAR(st[0] + std::log(double(st[1])), want, 1e-5 * std::max(1.0, std::fabs(want)))
              << "lse b=" << b << " h=" << h << " t=" << t;
        }
      }
  }
}

// z from a given pattern (patching hook_pattern): applied to the attention's own pattern it
// gives the attention's z (pad query rows exactly 0); only heads [h0, h0 + nh) are written.
TEST_P(AttnTest, ApplyPatternOfItsOwnPatternGivesZ) {
  const AttnCase& c = GetParam();
  SCOPED_TRACE(attn_desc(c));
  const AttnPlain a(c, 401);
  std::vector<float> z(a.z_size(), NAN), pat(a.pattern_size(), 0.0f);
  be().attention_forward(a.params(z.data(), pat.data()));
  const int HHD = c.H * c.HD, KVW = c.KVH * c.HD, T = c.T;
  std::vector<float> v(size_t(a.B) * T * KVW), zb(size_t(a.B) * T * HHD);  // batch-row order
  for (int b = 0; b < a.B; ++b)
    for (int t = 0; t < T; ++t) {
      std::copy_n(a.row(b, t) + HHD + KVW, KVW, v.begin() + (size_t(b) * T + t) * KVW);
      std::copy_n(z.begin() + (size_t(a.seg_of(b)) * T + t) * HHD, HHD, zb.begin() + (size_t(b) * T + t) * HHD);
    }
  ApplyPatternParams p;
  p.pattern = pat.data();
  p.v = v.data();
  p.pad = c.pads.data();
  p.kv_stride = KVW;
  p.z_stride = HHD;
  p.B = a.B;
  p.T = T;
  p.H = c.H;
  p.KVH = c.KVH;
  p.HD = c.HD;
  p.h0 = 0;
  p.nh = c.H;
  std::vector<float> z2(zb.size(), NAN);
  p.z = z2.data();
  be().attn_apply_pattern(p);
  expect_close(z2, zb, kAttnTol, "z = pattern @ v");
  for (int b = 0; b < a.B; ++b)
    for (int t = 0; t < c.pads[b]; ++t)
      for (int e = 0; e < HHD; ++e) ASSERT_EQ(z2[(size_t(b) * T + t) * HHD + e], 0.0f);
  // One head only: the others' columns are left alone.
  const int h = c.H - 1;
  std::vector<float> z3(zb.size(), 7.0f);
  p.z = z3.data();
  p.h0 = h;
  p.nh = 1;
  be().attn_apply_pattern(p);
  for (size_t r = 0; r < size_t(a.B) * T; ++r)
    for (int e = 0; e < HHD; ++e) {
      if (e / c.HD == h) ASSERT_EQ(z3[r * HHD + e], z2[r * HHD + e]);
      else ASSERT_EQ(z3[r * HHD + e], 7.0f);
    }
}

// Packed prefix-cache segments (the exact sweep): positions < fresh_start read the cache (the
// corrupted run), the others the packed rows (a patched run with different values); queries
// from q_start on. Several segments per batch row, packed in one call.
TEST_P(AttnTest, PackedPrefixCacheSegmentsVsNaive) {
  const AttnCase& c = GetParam();
  SCOPED_TRACE(attn_desc(c));
  const int T = c.T, B = static_cast<int>(c.pads.size()), HHD = c.H * c.HD, KHD = c.KVH * c.HD;
  const AttnPlain cache(c, 401);   // corrupted run, qkv layout
  const AttnPlain patched(c, 402); // values of the patched runs at fresh positions
  const std::vector<std::pair<int, int>> kinds = {
      {0, 0}, {T / 2, T / 2}, {1 < T ? 1 : 0, T - 1}, {T - 1, T - 1}, {T / 3, (2 * T) / 3}};
  std::vector<AttnSegment> segs;
  int kv_rows = 0, q_rows = 0;
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < 2; ++r) {
      const auto [fresh, qs] = kinds[(2 * b + r) % kinds.size()];
      segs.push_back(AttnSegment{b, fresh, kv_rows, qs, q_rows});
      kv_rows += T - fresh;
      q_rows += T - qs;
    }
  // Packed buffers: q [q_rows, HHD] dense; k|v [kv_rows, 2*KHD].
  std::vector<float> q(size_t(q_rows) * HHD), kv(size_t(kv_rows) * 2 * KHD);
  for (const auto& s : segs) {
    for (int t = s.q_start; t < T; ++t)
      std::memcpy(&q[size_t(s.q_row + t - s.q_start) * HHD], patched.row(s.batch, t), sizeof(float) * HHD);
    for (int t = s.fresh_start; t < T; ++t)
      std::memcpy(&kv[size_t(s.kv_row + t - s.fresh_start) * 2 * KHD], patched.row(s.batch, t) + HHD,
                  sizeof(float) * 2 * KHD);
  }
  // The cache in batch order (row b*T + t), qkv layout, k|v columns used.
  std::vector<float> cache_qkv(size_t(B) * T * cache.S);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      std::memcpy(&cache_qkv[size_t(b * T + t) * cache.S], cache.row(b, t), sizeof(float) * cache.S);

  AttnParams p = cache.params(nullptr, nullptr);
  p.q = q.data();
  p.k = kv.data();
  p.v = kv.data() + KHD;
  p.k_cache = cache_qkv.data() + HHD;
  p.v_cache = cache_qkv.data() + HHD + KHD;
  p.q_stride = HHD;
  p.kv_stride = 2 * KHD;
  p.cache_stride = cache.S;
  p.segs = segs.data();
  p.n_segs = static_cast<int>(segs.size());
  std::vector<float> z(size_t(q_rows) * HHD, NAN);
  p.z = z.data();
  be().attention_forward(p);

  for (size_t si = 0; si < segs.size(); ++si) {
    const AttnSegment& s = segs[si];
    auto src = [&](int j) { return j < s.fresh_start ? cache.row(s.batch, j) : patched.row(s.batch, j); };
    const NaiveAttn ref = naive_attention([&](int t) { return patched.row(s.batch, t); },
                                          [&](int j) { return src(j) + HHD; },
                                          [&](int j) { return src(j) + HHD + KHD; }, c,
                                          c.pads[s.batch], cache.scale);
    const size_t n = size_t(T - s.q_start) * HHD;
    expect_close(std::vector<float>(z.begin() + size_t(s.q_row) * HHD, z.begin() + size_t(s.q_row) * HHD + n),
                 to_float(std::vector<double>(ref.z.begin() + size_t(s.q_start) * HHD, ref.z.end())),
                 kAttnTol,
                 "segment " + std::to_string(si) + " (b=" + std::to_string(s.batch) +
                     " fresh_start=" + std::to_string(s.fresh_start) + " q_start=" +
                     std::to_string(s.q_start) + ")");
  }
}

// With the same keys, a prefix-cached segment (fresh_start = f, q_start >= f) and a last-only
// segment (q_start = T-1) reproduce the rows of the plain full pass.
TEST_P(AttnTest, PrefixCacheAndLastOnlyEqualFullPass) {
  const AttnCase& c = GetParam();
  SCOPED_TRACE(attn_desc(c));
  const int T = c.T, B = static_cast<int>(c.pads.size()), HHD = c.H * c.HD, KHD = c.KVH * c.HD;
  const AttnPlain a(c, 403);
  std::vector<float> zfull(a.z_size());
  be().attention_forward(a.params(zfull.data(), nullptr));
  auto full_row = [&](int b, int t) { return &zfull[(size_t(a.seg_of(b)) * T + t) * HHD]; };

  for (int f : {0, 1, T / 2, T - 1}) {
    if (f >= T) continue;
    for (int qs : {f, T - 1}) {
      // Packed rows: positions >= f of every batch row, in the plain layout's qkv format.
      std::vector<AttnSegment> segs;
      std::vector<float> packed;
      for (int b = 0; b < B; ++b) {
        segs.push_back(AttnSegment{b, f, b * (T - f), qs, b * (T - f) + (qs - f)});
        for (int t = f; t < T; ++t) packed.insert(packed.end(), a.row(b, t), a.row(b, t) + a.S);
      }
      std::vector<float> cache(size_t(B) * T * a.S);
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t) {
          // Cache rows at positions >= f must never be read: poison them.
          float* dst = &cache[size_t(b * T + t) * a.S];
          if (t < f) std::memcpy(dst, a.row(b, t), sizeof(float) * a.S);
          else std::fill(dst, dst + a.S, NAN);
        }
      AttnParams p = a.params(nullptr, nullptr);
      p.q = packed.data();
      p.k = packed.data() + HHD;
      p.v = packed.data() + HHD + KHD;
      p.k_cache = cache.data() + HHD;
      p.v_cache = cache.data() + HHD + KHD;
      p.cache_stride = a.S;
      p.segs = segs.data();
      std::vector<float> z(size_t(B) * (T - f) * HHD, NAN);
      p.z = z.data();
      be().attention_forward(p);
      for (int b = 0; b < B; ++b)
        for (int t = qs; t < T; ++t) {
          const float* got = &z[size_t(segs[b].q_row + t - qs) * HHD];
          // Same keys, same fp32 arithmetic in the same order: equal to rounding (1e-6 abs
          // on O(1) values allows a different summation order in a future optimisation).
          for (int e = 0; e < HHD; ++e)
            ASSERT_NEAR(got[e], full_row(b, t)[e], 1e-6)
                << "fresh_start=" << f << " q_start=" << qs << " b=" << b << " t=" << t << " e=" << e;
        }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Attention, AttnTest,
    testing::Values(AttnCase{7, 4, 4, 8, 0, {0, 2}},            // MHA, one padded row
                    AttnCase{7, 4, 2, 8, 3, {2, 0}},            // GQA, window 3
                    AttnCase{13, 6, 2, 16, 0, {0, 5, 12}},      // GQA 3:1, pad leaving 1 token
                    AttnCase{13, 2, 1, 5, 4, {3}},              // MQA, odd HD, window 4
                    AttnCase{31, 8, 2, 16, 8, {1, 0}},          // GQA, window 8 < T
                    AttnCase{31, 32, 32, 96, 0, {0, 4, 9, 1}},  // Phi-3-mini heads (threaded)
                    AttnCase{1, 2, 1, 4, 0, {0}},               // a single token
                    AttnCase{13, 4, 2, 8, 0, {0, 5}, 0.5f},     // soft-capped scores (Gemma 2), biting
                    AttnCase{31, 8, 4, 16, 8, {1, 0}, 1.0f}),   // soft-capped with a window
    attn_name);

class AttnBackwardTest : public testing::TestWithParam<AttnCase> {};

TEST_P(AttnBackwardTest, MatchesFD) {
  const AttnCase& c = GetParam();
  SCOPED_TRACE(attn_desc(c));
  AttnPlain a(c, 404);
  const auto R = random_vec(a.z_size(), 405);
  std::vector<float> z(a.z_size()), pat(a.pattern_size(), 0.0f);
  be().attention_forward(a.params(z.data(), pat.data()));
  // dq | dk | dv interleaved in one buffer of the qkv layout; NaN first: all overwritten.
  std::vector<float> dqkv(a.qkv.size(), NAN);
  AttnBackwardParams bp;
  bp.fwd = a.params(z.data(), pat.data());
  bp.dz = R.data();
  bp.dq = dqkv.data();
  bp.dk = dqkv.data() + c.H * c.HD;
  bp.dv = dqkv.data() + (c.H + c.KVH) * c.HD;
  be().attention_backward(bp);

  // Each sampled element costs two forwards: 400 on the Phi-3-mini head shape (1500 took
  // 64 s under ASan), 1500 elsewhere.
  const auto idx = sample(a.qkv.size(), c.H * c.HD > 1024 ? 400 : 1500);
  const auto num = fd_grad(a.qkv, idx, 1e-2f, [&] {
    be().attention_forward(a.params(z.data(), nullptr));
    return loss(z, R);
  });
  // eps=1e-2 on O(1) inputs: truncation eps^2 |f'''|/6 ~ 1e-5, fp32 rounding of the
  // perturbed outputs ~1e-7 * sqrt(T*HD) / 2e-2 ~ 1e-4 of an O(1) gradient.
  expect_grad(dqkv, idx, num, 1e-3, "dq|dk|dv");
  // Pad positions carry no gradient at all (masked keys, zeroed queries): exact zeros.
  for (int b = 0; b < a.B; ++b)
    for (int t = 0; t < c.pads[b]; ++t)
      for (int e = 0; e < a.S; ++e) ASSERT_EQ(dqkv[(size_t(a.seg_of(b)) * c.T + t) * a.S + e], 0.0f) << "b=" << b << " t=" << t;
}

// The backward as it was when the forward kept the pattern (the storing scheme): the same loop
// order and float arithmetic over a stored [B,H,T,T] pattern. The recomputing backward must
// give the same bits: it recomputes each row's probabilities with the forward's expressions.
void backward_from_pattern(const AttnPlain& a, const float* pat, const float* dz, float* dq, float* dk, float* dv) {
  const AttnCase& c = a.c;
  const int T = c.T, H = c.H, HD = c.HD, group = c.H / c.KVH, S = a.S;
  for (int i = 0; i < a.B; ++i) {
    const AttnSegment& sg = a.segs[i];
    const int b = sg.batch, pad = c.pads[b];
    for (int kh = 0; kh < c.KVH; ++kh) {
      const int64_t kcol = int64_t(kh) * HD;
      for (int t = 0; t < T; ++t) {
        std::fill_n(dk + int64_t(sg.kv_row + t) * S + kcol, HD, 0.0f);
        std::fill_n(dv + int64_t(sg.kv_row + t) * S + kcol, HD, 0.0f);
        std::fill_n(dq + int64_t(sg.q_row + t) * S + kcol * group, group * HD, 0.0f);
      }
      std::vector<float> dp(T);
      for (int h = kh * group; h < (kh + 1) * group; ++h) {
        const int64_t qcol = int64_t(h) * HD;
        for (int t = pad; t < T; ++t) {
          const float* prow = pat + ((int64_t(b) * H + h) * T + t) * T;
          const float* q = a.qkv.data() + int64_t(sg.q_row + t) * S + qcol;
          const float* dzr = dz + int64_t(sg.q_row + t) * (H * HD) + qcol;
          float* dqr = dq + int64_t(sg.q_row + t) * S + qcol;
          const int first = attn_first_key(t, pad, c.window);
          float sum_p_dp = 0.0f;
          for (int j = first; j <= t; ++j) {
            const float* v = a.qkv.data() + int64_t(sg.kv_row + j) * S + (H + c.KVH) * HD + kcol;
            float acc = 0.0f;
            for (int d = 0; d < HD; ++d) acc += dzr[d] * v[d];
            dp[j] = acc;
            sum_p_dp += prow[j] * dp[j];
          }
          for (int j = first; j <= t; ++j) {
            const float* k = a.qkv.data() + int64_t(sg.kv_row + j) * S + H * HD + kcol;
            float ds = softmax_grad(prow[j], dp[j], sum_p_dp) * a.scale;
            if (c.softcap > 0.0f) {
              float acc = 0.0f;
              for (int d = 0; d < HD; ++d) acc += q[d] * k[d];
              ds *= soft_cap_grad(soft_cap(acc * a.scale, c.softcap), c.softcap);
            }
            float* dkr = dk + int64_t(sg.kv_row + j) * S + kcol;
            float* dvr = dv + int64_t(sg.kv_row + j) * S + kcol;
            for (int d = 0; d < HD; ++d) {
              dqr[d] += ds * k[d];
              dkr[d] += ds * q[d];
              dvr[d] += prow[j] * dzr[d];
            }
          }
        }
      }
    }
  }
}

TEST_P(AttnBackwardTest, RecomputingEqualsStoringBitwise) {
  const AttnCase& c = GetParam();
  SCOPED_TRACE(attn_desc(c));
  AttnPlain a(c, 410);
  const auto R = random_vec(a.z_size(), 411);
  std::vector<float> z(a.z_size()), pat(a.pattern_size(), 0.0f);
  be().attention_forward(a.params(z.data(), pat.data()));
  std::vector<float> got(a.qkv.size(), 0.0f), want(a.qkv.size(), 0.0f);
  AttnBackwardParams bp;
  bp.fwd = a.params(z.data(), nullptr);  // no pattern: recomputed from the stats
  bp.dz = R.data();
  bp.dq = got.data();
  bp.dk = got.data() + c.H * c.HD;
  bp.dv = got.data() + (c.H + c.KVH) * c.HD;
  be().attention_backward(bp);
  backward_from_pattern(a, pat.data(), R.data(), want.data(), want.data() + c.H * c.HD,
                        want.data() + (c.H + c.KVH) * c.HD);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
}

TEST(AttnBackward, RejectsNonPlainPass) {
  AttnPlain a(AttnCase{5, 2, 1, 4, 0, {0}}, 1);
  std::vector<float> z(a.z_size()), pat(a.pattern_size()), d(a.qkv.size());
  AttnBackwardParams bp;
  bp.fwd = a.params(z.data(), nullptr);
  bp.dz = z.data();
  bp.dq = bp.dk = bp.dv = d.data();
  bp.fwd.stats = nullptr;
  EXPECT_THROW(be().attention_backward(bp), Error);  // no softmax stats
  bp.fwd.stats = a.stats.data();
  a.segs[0].q_start = a.segs[0].fresh_start = 2;
  bp.fwd.k_cache = bp.fwd.v_cache = a.qkv.data();
  EXPECT_THROW(be().attention_backward(bp), Error);  // a prefix segment
}

INSTANTIATE_TEST_SUITE_P(
    Attention, AttnBackwardTest,
    testing::Values(AttnCase{7, 2, 2, 4, 0, {0, 3}},         // MHA, padded row
                    AttnCase{7, 4, 2, 8, 3, {2, 0}},         // GQA, window 3
                    AttnCase{13, 6, 2, 8, 0, {0, 5, 12}},    // GQA 3:1, heavy padding
                    AttnCase{13, 4, 1, 6, 5, {3, 0}},        // MQA, window 5
                    AttnCase{31, 8, 2, 16, 8, {1, 0}},       // T=31, window 8 (sampled)
                    AttnCase{29, 32, 32, 96, 0, {0, 3, 1, 0}},   // the Phi-3-mini head shape (sampled)
                    AttnCase{13, 4, 2, 8, 0, {0, 5}, 0.5f},      // soft-capped scores (Gemma 2)
                    AttnCase{31, 8, 4, 16, 8, {1, 0}, 1.0f}),    // soft-capped with a window
    attn_name);

// The threaded split must not change a single bit (static per-task ownership).
TEST(Threads, ResultsIndependentOfThreadCount) {
  const AttnCase c{31, 32, 8, 96, 0, {0, 4, 9, 1}};
  AttnPlain a(c, 406);
  const auto R = random_vec(a.z_size(), 407);
  auto run = [&](int threads) {
    cpu::set_num_threads(threads);
    std::vector<float> z(a.z_size()), pat(a.pattern_size()), d(a.qkv.size());
    be().attention_forward(a.params(z.data(), pat.data()));
    AttnBackwardParams bp;
    bp.fwd = a.params(z.data(), pat.data());
    bp.dz = R.data();
    bp.dq = d.data();
    bp.dk = d.data() + c.H * c.HD;
    bp.dv = d.data() + (c.H + c.KVH) * c.HD;
    be().attention_backward(bp);
    const int N = 256, D = 3072;
    const auto x = random_vec(size_t(N) * D, 408), w = random_vec(D, 409);
    std::vector<float> out(x.size()), rstd(N), dx(x.size(), 0.0f);
    be().rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, 1e-5f);
    be().rmsnorm_backward(dx.data(), x.data(), x.data(), w.data(), rstd.data(), N, D);
    std::vector<float> all = z;
    for (const auto* v : {&pat, &d, &out, &dx}) all.insert(all.end(), v->begin(), v->end());
    return all;
  };
  const auto one = run(1), three = run(3);
  cpu::set_num_threads(0);
  ASSERT_EQ(one.size(), three.size());
  EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0);
}

// ======================================================================================
// SwiGLU
// ======================================================================================

struct GluCase { int N, F; };
std::string glu_name(const testing::TestParamInfo<GluCase>& i) {
  return "N" + std::to_string(i.param.N) + "_F" + std::to_string(i.param.F);
}
class SwigluTest : public testing::TestWithParam<GluCase> {};

TEST_P(SwigluTest, ForwardAndBackward) {
  const auto [N, F] = GetParam();
  SCOPED_TRACE("SWIGLU(N=" + std::to_string(N) + ",F=" + std::to_string(F) + ")");
  auto gu = random_vec(size_t(N) * 2 * F, 500, -6.0f, 6.0f);
  const auto R = random_vec(size_t(N) * F, 501);
  std::vector<float> out(size_t(N) * F, NAN);
  be().swiglu_forward(out.data(), gu.data(), N, F);
  std::vector<double> ref(out.size());
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < F; ++f) {
      const double g = gu[size_t(n) * 2 * F + f], u = gu[size_t(n) * 2 * F + F + f];
      ref[size_t(n) * F + f] = g / (1 + std::exp(-g)) * u;
    }
  expect_close(out, to_float(ref), 2e-6, "out");  // expf + 3 fp32 ops: a few ulp

  std::vector<float> dgu(gu.size(), NAN);
  be().swiglu_backward(dgu.data(), R.data(), gu.data(), N, F);
  const auto idx = sample(gu.size(), 400);
  const auto num = fd_grad(gu, idx, 1e-2f, [&] {
    be().swiglu_forward(out.data(), gu.data(), N, F);
    return loss(out, R);
  });
  // Element-wise: truncation eps^2/6 |silu'''| |u| <= 1e-4; rounding ulp(36)/2e-2 ~ 2e-4,
  // both against gradients up to ~6.
  expect_grad(dgu, idx, num, 1e-3, "dgu");
}

INSTANTIATE_TEST_SUITE_P(Swiglu, SwigluTest,
                         testing::Values(GluCase{1, 1}, GluCase{5, 7}, GluCase{3, 8192}),
                         glu_name);

// GeGLU (Gemma 2): out = gelu_tanh(g) * u, HF's gelu_pytorch_tanh in double as the reference.
class GegluTest : public testing::TestWithParam<GluCase> {};

TEST_P(GegluTest, ForwardAndBackward) {
  const auto [N, F] = GetParam();
  SCOPED_TRACE("GEGLU(N=" + std::to_string(N) + ",F=" + std::to_string(F) + ")");
  auto gu = random_vec(size_t(N) * 2 * F, 510, -6.0f, 6.0f);
  const auto R = random_vec(size_t(N) * F, 511);
  std::vector<float> out(size_t(N) * F, NAN);
  be().swiglu_forward(out.data(), gu.data(), N, F, MlpAct::GeluTanh);
  std::vector<double> ref(out.size());
  const double k = std::sqrt(2.0 / M_PI);
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < F; ++f) {
      const double g = gu[size_t(n) * 2 * F + f], u = gu[size_t(n) * 2 * F + F + f];
      ref[size_t(n) * F + f] = 0.5 * g * (1 + std::tanh(k * (g + 0.044715 * g * g * g))) * u;
    }
  expect_close(out, to_float(ref), 2e-6, "out");
  // The two activations differ (a GeGLU silently computing SiLU would pass nothing below).
  std::vector<float> silu_out(out.size());
  be().swiglu_forward(silu_out.data(), gu.data(), N, F, MlpAct::Silu);
  double diff = 0;
  for (size_t i = 0; i < out.size(); ++i) diff = std::max(diff, double(std::fabs(out[i] - silu_out[i])));
  EXPECT_GT(diff, 1e-2);

  std::vector<float> dgu(gu.size(), NAN);
  be().swiglu_backward(dgu.data(), R.data(), gu.data(), N, F, MlpAct::GeluTanh);
  const auto idx = sample(gu.size(), 400);
  const auto num = fd_grad(gu, idx, 1e-2f, [&] {
    be().swiglu_forward(out.data(), gu.data(), N, F, MlpAct::GeluTanh);
    return loss(out, R);
  });
  expect_grad(dgu, idx, num, 1e-3, "dgu");
}

INSTANTIATE_TEST_SUITE_P(Geglu, GegluTest, testing::Values(GluCase{1, 1}, GluCase{5, 7}, GluCase{3, 9216}),
                         glu_name);

// The non-gated MLP's GELU (GPT-2's gelu_new): out = gelu_tanh(x), x [N, F] (no up half).
TEST_P(GegluTest, NoGate) {
  const auto [N, F] = GetParam();
  auto x = random_vec(size_t(N) * F, 520, -6.0f, 6.0f);
  const auto R = random_vec(size_t(N) * F, 521);
  std::vector<float> out(size_t(N) * F, NAN);
  be().swiglu_forward(out.data(), x.data(), N, F, MlpAct::GeluTanhNoGate);
  std::vector<double> ref(out.size());
  const double k = std::sqrt(2.0 / M_PI);
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = x[i];
    ref[i] = 0.5 * g * (1 + std::tanh(k * (g + 0.044715 * g * g * g)));
  }
  expect_close(out, to_float(ref), 2e-6, "out");
  std::vector<float> dx(x.size(), NAN);
  be().swiglu_backward(dx.data(), R.data(), x.data(), N, F, MlpAct::GeluTanhNoGate);
  const auto idx = sample(x.size(), 400);
  const auto num = fd_grad(x, idx, 1e-2f, [&] {
    be().swiglu_forward(out.data(), x.data(), N, F, MlpAct::GeluTanhNoGate);
    return loss(out, R);
  });
  expect_grad(dx, idx, num, 1e-3, "dx");
}

// ======================================================================================
// Elementwise: add, copy_rows
// ======================================================================================

TEST(Elementwise, AddAliased) {
  const auto a = random_vec(37, 600), b = random_vec(37, 601);
  std::vector<float> out(37), x = a;
  be().add(out.data(), a.data(), b.data(), 37);
  be().add(x.data(), x.data(), b.data(), 37);  // out aliases a
  for (int i = 0; i < 37; ++i) {
    EXPECT_EQ(out[i], a[i] + b[i]);
    EXPECT_EQ(x[i], out[i]);
  }
}

TEST(Elementwise, CopyRows) {
  const int n_src = 6, src_stride = 9, dst_stride = 7, width = 5, n_dst = 8;
  const auto src = random_vec(size_t(n_src) * src_stride, 602);
  const auto dst0 = random_vec(size_t(n_dst) * dst_stride, 603);
  const std::vector<int32_t> di = {7, 0, 3}, si = {5, 5, 1};
  struct Case { const int32_t* d; const int32_t* s; int n; const char* what; };
  for (const Case& k : {Case{nullptr, nullptr, 4, "identity"}, Case{di.data(), nullptr, 3, "dst_idx"},
                        Case{nullptr, si.data(), 3, "src_idx"}, Case{di.data(), si.data(), 3, "both"}}) {
    auto dst = dst0;
    be().copy_rows(dst.data(), dst_stride, k.d, src.data(), src_stride, k.s, k.n, width);
    auto want = dst0;
    for (int i = 0; i < k.n; ++i)
      for (int w = 0; w < width; ++w)
        want[size_t(k.d ? k.d[i] : i) * dst_stride + w] = src[size_t(k.s ? k.s[i] : i) * src_stride + w];
    EXPECT_EQ(dst, want) << k.what;
  }
}

// ======================================================================================
// Metric: logit difference
// ======================================================================================

TEST(Metric, LogitDiffForwardBackward) {
  const int B = 4, V = 11, stride = 13;
  const auto logits = random_vec(size_t(B) * stride, 700, -5.0f, 5.0f);
  const std::vector<int32_t> ans = {3, 0, 10, 6}, other = {7, 10, 2, 6};  // last: ans == other
  std::vector<float> ld(B);
  be().logit_diff_forward(ld.data(), logits.data(), stride, ans.data(), other.data(), B);
  for (int b = 0; b < B; ++b)
    EXPECT_EQ(ld[b], logits[b * stride + ans[b]] - logits[b * stride + other[b]]);

  const float scale = 0.25f;
  std::vector<float> dl(size_t(B) * stride, 9.0f);  // the stride gap keeps its 9s
  be().logit_diff_backward(dl.data(), stride, ans.data(), other.data(), scale, B, V);
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < stride; ++j) {
      float want = j >= V ? 9.0f : 0.0f;
      if (j < V && ans[b] != other[b]) want = j == ans[b] ? scale : j == other[b] ? -scale : 0.0f;
      EXPECT_EQ(dl[b * stride + j], want) << "b=" << b << " j=" << j;
    }
}

// ======================================================================================
// Attribution reduce
// ======================================================================================

struct AttrCase { int B, T, G, W; };
std::string attr_name(const testing::TestParamInfo<AttrCase>& i) {
  const auto& c = i.param;
  return "B" + std::to_string(c.B) + "_T" + std::to_string(c.T) + "_G" + std::to_string(c.G) +
         "_W" + std::to_string(c.W);
}
class AttributionTest : public testing::TestWithParam<AttrCase> {};

TEST_P(AttributionTest, VsNaive) {
  const auto [B, T, G, W] = GetParam();
  const size_t n = size_t(B) * T * G * W;
  const auto a = random_vec(n, 800), c = random_vec(n, 801), g = random_vec(n, 802);
  // Two layers in one call: the second with clean and corrupted swapped (its sums negate).
  std::vector<float> out2(size_t(2) * T * G, NAN);
  const float* pa[2] = {a.data(), c.data()};
  const float* pc[2] = {c.data(), a.data()};
  const float* pg[2] = {g.data(), g.data()};
  be().attribution_reduce(out2.data(), pa, pc, pg, 2, B, T, G, W, int64_t(G) * W);
  const std::vector<float> out(out2.begin(), out2.begin() + size_t(T) * G);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out2[out.size() + i], -out[i]) << i;
  std::vector<double> ref(out.size(), 0.0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < G; ++k)
        for (int w = 0; w < W; ++w) {
          const size_t i = (size_t(b) * T + t) * G * W + size_t(k) * W + w;
          ref[size_t(t) * G + k] += (double(a[i]) - c[i]) * g[i];
        }
  // Double accumulation, one final rounding to fp32.
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 1e-6 * std::max(1.0, std::fabs(ref[i])));
}

INSTANTIATE_TEST_SUITE_P(Attribution, AttributionTest,
                         testing::Values(AttrCase{1, 1, 1, 1}, AttrCase{2, 7, 1, 64},
                                         AttrCase{3, 5, 4, 8}, AttrCase{4, 31, 32, 96}),
                         attr_name);

// ======================================================================================
// The backend object itself
// ======================================================================================

TEST(CpuBackend, SelectionAndMemory) {
  auto b = make_backend("cpu");
  EXPECT_EQ(b->kind(), DeviceKind::CPU);
  EXPECT_EQ(b->name().rfind("cpu (OpenBLAS, ", 0), 0u) << b->name();
  EXPECT_EQ(b->weight_dtype(), DType::F32);
  EXPECT_GT(b->free_memory(), 0u);
  try {
    make_backend("tpu");
    ADD_FAILURE() << "no error for device tpu";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tpu"), std::string::npos) << e.what();
  }
  if (!cuda_available()) {
    EXPECT_EQ(make_backend("auto")->kind(), DeviceKind::CPU);
  }
#if !defined(PHI3_WITH_CUDA)
  EXPECT_FALSE(cuda_available());
  EXPECT_THROW(make_backend("cuda"), Error);
#endif

  const std::vector<float> v = random_vec(1000, 900);
  DeviceArray<float> d = to_device(*b, v);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(d.get()) % 64, 0u);
  EXPECT_EQ(d.download(), v);
  DeviceArray<float> e(*b, v.size());
  b->copy(e.get(), d.get(), v.size() * sizeof(float));
  EXPECT_EQ(e.download(), v);
  b->zero(e.get(), v.size() * sizeof(float));
  EXPECT_EQ(e.download(), std::vector<float>(v.size(), 0.0f));
#if !defined(__SANITIZE_ADDRESS__)  // ASan aborts on absurd sizes instead of returning null
  EXPECT_THROW(b->alloc(size_t{1} << 62), OutOfMemory);
  EXPECT_THROW(b->alloc(std::numeric_limits<size_t>::max()), OutOfMemory);
#endif
}

}  // namespace
}  // namespace phi3
