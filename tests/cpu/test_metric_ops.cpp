// The metric ops (metric_forward / metric_backward, kernels/cpu/metric.cpp) through the CPU
// backend: every kind's forward against a double-precision reference written from the
// formulas (DESIGN §3, model/metric.h), its gradient against central finite differences of
// the op's own forward, strided rows, reference rows, large logits (max subtraction), and the
// logit difference equal bit for bit to the logit_diff ops.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/op_math.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "test_util.h"

namespace phi3 {
namespace {

using test::random_vec;

Backend& be() {
  static std::unique_ptr<Backend> b = make_cpu_backend();
  return *b;
}

const MetricKind kKinds[] = {MetricKind::LogitDiff, MetricKind::ProbDiff, MetricKind::LogProb, MetricKind::KL};
const char* kind_str(MetricKind k) {
  static const char* n[] = {"logit-diff", "prob-diff", "logprob", "kl"};
  return n[static_cast<int>(k)];
}

// log-softmax of a row in double.
std::vector<double> log_softmax(const float* x, int V) {
  double mx = x[0];
  for (int v = 1; v < V; ++v) mx = std::max(mx, double(x[v]));
  double s = 0;
  for (int v = 0; v < V; ++v) s += std::exp(double(x[v]) - mx);
  std::vector<double> lp(V);
  for (int v = 0; v < V; ++v) lp[v] = double(x[v]) - mx - std::log(s);
  return lp;
}

// The metric of a row from the formulas, in double; ref: the reference log-probabilities.
double reference(MetricKind k, const float* x, int V, int a, int o, const float* ref) {
  const std::vector<double> lp = log_softmax(x, V);
  switch (k) {
    case MetricKind::LogitDiff: return double(x[a]) - x[o];
    case MetricKind::ProbDiff: return std::exp(lp[a]) - std::exp(lp[o]);
    case MetricKind::LogProb: return lp[a];
    case MetricKind::KL: {
      double s = 0;
      for (int v = 0; v < V; ++v)
        if (ref[v] != -INFINITY) s += std::exp(double(ref[v])) * (double(ref[v]) - lp[v]);
      return s;
    }
  }
  return 0;
}

// B rows of V logits `stride` apart, answers, others and R reference rows (kl).
struct Case {
  int B = 4, V = 37, stride = 41, R = 3;
  std::vector<float> logits, ref;
  std::vector<int32_t> ans = {3, 0, 36, 12}, other = {7, 36, 2, 12};  // last: ans == other
  std::vector<int32_t> ref_row = {2, 0, 1, 2};
  explicit Case(float lo = -4.0f, float hi = 4.0f, uint32_t seed = 900) {
    logits = random_vec(size_t(B) * stride, seed, lo, hi);
    ref.resize(size_t(R) * V);
    const auto src = random_vec(size_t(R) * V, seed + 1, -3.0f, 3.0f);
    for (int r = 0; r < R; ++r) {
      const auto lp = log_softmax(src.data() + size_t(r) * V, V);
      for (int v = 0; v < V; ++v) ref[size_t(r) * V + v] = static_cast<float>(lp[v]);
    }
    ref[size_t(1) * V + 5] = -INFINITY;  // a token of probability 0 in a reference row
  }
  MetricParams params(MetricKind k) const {
    MetricParams p;
    p.kind = k;
    p.ans = ans.data();
    p.other = other.data();
    p.ref_logprobs = ref.data();
    p.ref_row = ref_row.data();
    p.stride = stride;
    p.B = B;
    p.V = V;
    return p;
  }
};

TEST(Metric, ForwardMatchesFormulas) {
  const Case c;
  for (MetricKind k : kKinds) {
    std::vector<float> out(c.B);
    be().metric_forward(out.data(), c.logits.data(), c.params(k));
    for (int b = 0; b < c.B; ++b) {
      const double want = reference(k, c.logits.data() + size_t(b) * c.stride, c.V, c.ans[b], c.other[b],
                                    c.ref.data() + size_t(c.ref_row[b]) * c.V);
      EXPECT_NEAR(out[b], want, 2e-6 * std::max(1.0, std::fabs(want))) << kind_str(k) << " row " << b;
    }
  }
  // Values that must hold whatever the logits: prob-diff and logit-diff of ans == other are 0,
  // logprob is negative, kl is positive.
  std::vector<float> out(c.B);
  be().metric_forward(out.data(), c.logits.data(), c.params(MetricKind::ProbDiff));
  EXPECT_EQ(out[3], 0.0f);
  be().metric_forward(out.data(), c.logits.data(), c.params(MetricKind::LogProb));
  for (float v : out) EXPECT_LT(v, 0.0f);
  be().metric_forward(out.data(), c.logits.data(), c.params(MetricKind::KL));
  for (float v : out) EXPECT_GT(v, 0.0f);
}

TEST(Metric, LogitDiffKindIsTheLogitDiffOpBitForBit) {
  const Case c;
  std::vector<float> a(c.B), b(c.B);
  be().metric_forward(a.data(), c.logits.data(), c.params(MetricKind::LogitDiff));
  be().logit_diff_forward(b.data(), c.logits.data(), c.stride, c.ans.data(), c.other.data(), c.B);
  EXPECT_EQ(a, b);
  std::vector<float> da(size_t(c.B) * c.stride, 9.0f), db = da;
  be().metric_backward(da.data(), c.stride, c.logits.data(), c.params(MetricKind::LogitDiff), 0.25f);
  be().logit_diff_backward(db.data(), c.stride, c.ans.data(), c.other.data(), 0.25f, c.B, c.V);
  EXPECT_EQ(da, db);
}

// d/dlogits of L = sum_b R_b metric(row b), against central differences of the op's forward.
TEST(Metric, BackwardMatchesFiniteDifferences) {
  for (MetricKind k : kKinds) {
    Case c;
    const auto R = random_vec(c.B, 77, -1.0f, 1.0f);
    auto f = [&]() {
      std::vector<float> out(c.B);
      be().metric_forward(out.data(), c.logits.data(), c.params(k));
      double s = 0;
      for (int b = 0; b < c.B; ++b) s += double(out[b]) * R[b];
      return s;
    };
    // The op's gradient, scaled per row by R_b (one row at a time: scale is per call).
    std::vector<float> grad(size_t(c.B) * c.stride, 5.0f);
    for (int b = 0; b < c.B; ++b) {
      MetricParams p = c.params(k);
      p.B = 1;
      p.ans = c.ans.data() + b;
      p.other = c.other.data() + b;
      p.ref_row = c.ref_row.data() + b;
      be().metric_backward(grad.data() + size_t(b) * c.stride, c.stride, c.logits.data() + size_t(b) * c.stride, p, R[b]);
    }
    double worst = 0, gmax = 0;
    const float eps = 1e-2f;
    for (int b = 0; b < c.B; ++b)
      for (int v = 0; v < c.stride; ++v) {
        const size_t i = size_t(b) * c.stride + v;
        if (v >= c.V) {  // between V and the stride: untouched
          EXPECT_EQ(grad[i], 5.0f);
          continue;
        }
        const float x0 = c.logits[i], xp = x0 + eps, xm = x0 - eps;
        c.logits[i] = xp;
        const double lp = f();
        c.logits[i] = xm;
        const double lm = f();
        c.logits[i] = x0;
        const double num = (lp - lm) / (double(xp) - xm);
        worst = std::max(worst, std::fabs(num - grad[i]));
        gmax = std::max(gmax, std::fabs(num));
      }
    EXPECT_GT(gmax, 1e-3) << kind_str(k);
    EXPECT_LE(worst, 2e-3 * std::max(gmax, 1e-2)) << kind_str(k) << ": worst |fd - analytic| " << worst
                                                  << " (largest fd " << gmax << ")";
  }
}

// Large logits: the max is subtracted before exp, so nothing overflows; a row against its
// own log-probabilities has KL exactly 0 and gradient p - q ~ 0.
TEST(Metric, LargeLogitsAndSelfKl) {
  Case c(80.0f, 120.0f, 901);
  for (MetricKind k : kKinds) {
    std::vector<float> out(c.B);
    be().metric_forward(out.data(), c.logits.data(), c.params(k));
    for (int b = 0; b < c.B; ++b) {
      EXPECT_TRUE(std::isfinite(out[b])) << kind_str(k);
      const double want = reference(k, c.logits.data() + size_t(b) * c.stride, c.V, c.ans[b], c.other[b],
                                    c.ref.data() + size_t(c.ref_row[b]) * c.V);
      EXPECT_NEAR(out[b], want, 1e-5 * std::max(1.0, std::fabs(want))) << kind_str(k) << " row " << b;
    }
  }
  // Reference rows = the rows' own log-probabilities, rounded as the engine stores them.
  std::vector<float> own(size_t(c.B) * c.V);
  for (int b = 0; b < c.B; ++b) {
    const float* x = c.logits.data() + size_t(b) * c.stride;
    const double lse = metric_row_lse(x, c.V);
    for (int v = 0; v < c.V; ++v) own[size_t(b) * c.V + v] = metric_log_prob(x[v], lse);
  }
  MetricParams p = c.params(MetricKind::KL);
  p.ref_logprobs = own.data();
  p.ref_row = nullptr;
  std::vector<float> out(c.B), g(size_t(c.B) * c.V);
  be().metric_forward(out.data(), c.logits.data(), p);
  for (float v : out) EXPECT_EQ(v, 0.0f);
  be().metric_backward(g.data(), c.V, c.logits.data(), p, 1.0f);
  for (float v : g) EXPECT_LE(std::fabs(v), 1e-6f);
}

// The real vocabulary size: softmax sums over 32064 logits.
TEST(Metric, Phi3Vocabulary) {
  const int V = 32064;
  const auto logits = random_vec(V, 903, -12.0f, 12.0f);
  const std::vector<int32_t> ans = {31999}, other = {17};
  std::vector<float> ref(V);
  const auto lp = log_softmax(random_vec(V, 904, -12.0f, 12.0f).data(), V);
  for (int v = 0; v < V; ++v) ref[v] = static_cast<float>(lp[v]);
  for (MetricKind k : kKinds) {
    MetricParams p;
    p.kind = k;
    p.ans = ans.data();
    p.other = other.data();
    p.ref_logprobs = ref.data();
    p.stride = V;
    p.B = 1;
    p.V = V;
    float out = 0;
    be().metric_forward(&out, logits.data(), p);
    const double want = reference(k, logits.data(), V, ans[0], other[0], ref.data());
    EXPECT_NEAR(out, want, 2e-6 * std::max(1.0, std::fabs(want))) << kind_str(k);
    // The gradient of a softmax metric sums to 0 over the vocabulary (shift invariance).
    std::vector<float> g(V);
    be().metric_backward(g.data(), V, logits.data(), p, 1.0f);
    double s = 0;
    for (float v : g) s += v;
    EXPECT_NEAR(s, 0.0, 1e-5) << kind_str(k);
  }
}

TEST(Metric, RefusesMissingInputs) {
  const Case c;
  MetricParams p = c.params(MetricKind::KL);
  p.ref_logprobs = nullptr;
  std::vector<float> out(c.B);
  EXPECT_NE(test::error_of([&] { be().metric_forward(out.data(), c.logits.data(), p); }).find("reference log-prob"),
            std::string::npos);
  p = c.params(MetricKind::ProbDiff);
  p.other = nullptr;
  EXPECT_NE(test::error_of([&] { be().metric_forward(out.data(), c.logits.data(), p); }).find("other"),
            std::string::npos);
  p = c.params(MetricKind::LogProb);
  p.other = nullptr;  // logprob needs no other token
  EXPECT_EQ(test::error_of([&] { be().metric_forward(out.data(), c.logits.data(), p); }), "");
}

}  // namespace
}  // namespace phi3
