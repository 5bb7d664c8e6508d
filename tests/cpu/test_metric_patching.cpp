// --metric end to end on the CPU backend (model/metric.h): for every metric, the exact fast
// sweep equals a naive recomputation (one full forward per patch, the metric computed here
// in double from the downloaded logits by its formula), the backward pass's gradient equals
// a directional finite difference of the metric, and the logit difference is bit for bit
// what the answer/other entry points give. On the embedded Phi-3 and on Gemma 2's reference
// model (final-logit soft-capping between the logits and the metric).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "model/backward.h"
#include "model/metric.h"
#include "patching/attribution.h"
#include "patching/sweep.h"
#include "test_util.h"

namespace phi3 {
namespace {

const MetricKind kKinds[] = {MetricKind::LogitDiff, MetricKind::ProbDiff, MetricKind::LogProb, MetricKind::KL};

struct MetricRuns {
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<Model> m;
  PairBatch pb;
  ForwardState clean, corrupted;
  explicit MetricRuns(const std::string& dir) {
    m = load_model(*be, test::source_dir() + "/" + dir);
    auto pairs = load_pairs(test::source_dir() + "/data/temporal_scope_for_attribution_patching.json");
    const int T = pair_batch_length(pairs, m->tok) + 1;  // one pad column: pad positions swept too
    pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings, T);
    ForwardOptions fo;
    fo.keep_pattern = true;  // pattern hooks and the QK fix use them
    clean = forward(*be, *m, pb.clean, fo);
    corrupted = forward(*be, *m, pb.corrupted, fo);
  }
  MetricSpec spec(MetricKind k) const { return make_metric_spec(*be, *m, k, pb.answer, pb.other, clean); }
};

// The metric of every batch row of a run from its last-position logits, in double, by the
// formulas of model/metric.h (clean: the clean run's logits, for kl).
std::vector<double> naive_metric(MetricKind k, const std::vector<float>& logits, const std::vector<float>& clean,
                                 const PairBatch& pb, int V) {
  auto log_softmax = [V](const float* x) {
    double mx = x[0], s = 0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, double(x[v]));
    for (int v = 0; v < V; ++v) s += std::exp(double(x[v]) - mx);
    std::vector<double> lp(V);
    for (int v = 0; v < V; ++v) lp[v] = double(x[v]) - mx - std::log(s);
    return lp;
  };
  std::vector<double> out;
  for (size_t b = 0; b < pb.answer.size(); ++b) {
    const float* x = logits.data() + b * V;
    const auto lp = log_softmax(x);
    const int a = pb.answer[b], o = pb.other[b];
    switch (k) {
      case MetricKind::LogitDiff: out.push_back(double(x[a]) - x[o]); break;
      case MetricKind::ProbDiff: out.push_back(std::exp(lp[a]) - std::exp(lp[o])); break;
      case MetricKind::LogProb: out.push_back(lp[a]); break;
      case MetricKind::KL: {
        const auto lc = log_softmax(clean.data() + b * V);
        double s = 0;
        for (int v = 0; v < V; ++v) s += std::exp(lc[v]) * (lc[v] - lp[v]);
        out.push_back(s);
        break;
      }
    }
  }
  return out;
}

const char* kModels[] = {"data/models/tiny-temporal-phi3", "data/reference/rand-gemma2-softcap/model"};

class MetricPatching : public ::testing::TestWithParam<const char*> {};

// The clean and corrupted runs' values: kl of the clean run is exactly 0 (its own reference),
// and every metric matches the formulas.
TEST_P(MetricPatching, CleanAndCorruptedValues) {
  MetricRuns s(GetParam());
  const int V = s.m->cfg.vocab_size;
  const auto cl = last_logits(*s.be, *s.m, s.clean), co = last_logits(*s.be, *s.m, s.corrupted);
  for (MetricKind k : kKinds) {
    const MetricSpec spec = s.spec(k);
    const LogitDiff mc = metric_values(*s.be, *s.m, s.clean, spec), mr = metric_values(*s.be, *s.m, s.corrupted, spec);
    const auto wc = naive_metric(k, cl, cl, s.pb, V), wr = naive_metric(k, co, cl, s.pb, V);
    for (size_t b = 0; b < wc.size(); ++b) {
      EXPECT_NEAR(mc.per_row[b], wc[b], 1e-5 * std::max(1.0, std::fabs(wc[b]))) << metric_name(k) << " row " << b;
      EXPECT_NEAR(mr.per_row[b], wr[b], 1e-5 * std::max(1.0, std::fabs(wr[b]))) << metric_name(k) << " row " << b;
      if (k == MetricKind::KL) {
        EXPECT_EQ(mc.per_row[b], 0.0f);
        EXPECT_GT(mr.per_row[b], 0.0f);
      }
    }
    EXPECT_GT(std::fabs(mc.mean - mr.mean), 1e-6) << metric_name(k) << ": the normalisation needs M_clean != M_corr";
  }
}

// Fast sweep == one full forward per patch with the metric recomputed from its logits here.
TEST_P(MetricPatching, FastSweepEqualsNaiveRecomputation) {
  MetricRuns s(GetParam());
  const int B = s.pb.clean.B, V = s.m->cfg.vocab_size;
  const auto cl = last_logits(*s.be, *s.m, s.clean);
  for (Hook hook : {Hook::ResidPre, Hook::Z, Hook::Pattern}) {
    for (MetricKind k : kKinds) {
      const SweepResult f = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.spec(k), hook);
      double worst = 0, scale = 0;
      int checked = 0;
      for (size_t i = 0; i < f.targets.size(); i += std::max<size_t>(1, f.targets.size() / 40)) {
        ForwardOptions fo;
        fo.keep_pattern = false;
        fo.patch = &f.targets[i];
        fo.source = &s.clean;
        const ForwardState p = forward(*s.be, *s.m, s.corrupted.batch, fo);
        const auto want = naive_metric(k, last_logits(*s.be, *s.m, p), cl, s.pb, V);
        for (int b = 0; b < B; ++b) {
          worst = std::max(worst, std::fabs(f.ld[i * B + b] - want[b]));
          scale = std::max(scale, std::fabs(want[b]));
        }
        ++checked;
      }
      EXPECT_GT(checked, 10);
      EXPECT_LT(worst, 2e-5 * std::max(1.0, scale)) << metric_name(k) << " " << hook_name(hook) << " on " << GetParam();
    }
  }
}

// d metric / d resid_pre of layer 0 (the input embeddings) against a central difference of
// the metric along a random direction (the run with input_embeddings moved by +-eps dir).
TEST_P(MetricPatching, GradientMatchesDirectionalDifference) {
  MetricRuns s(GetParam());
  const int B = s.pb.clean.B, T = s.pb.clean.T, D = s.m->cfg.hidden_size;
  const size_t n = size_t(B) * T * D;
  std::vector<float> emb(n);
  s.be->download(emb.data(), s.corrupted.layers[0].resid_pre.get(), n * sizeof(float));
  const auto dir = test::random_vec(n, 4242, -1.0f, 1.0f);
  for (MetricKind k : kKinds) {
    const MetricSpec spec = s.spec(k);
    const Gradients g = backward(*s.be, *s.m, s.corrupted, spec, 1.0f);
    std::vector<float> grad(n);
    s.be->download(grad.data(), g.layers[0].resid_pre.get(), n * sizeof(float));
    double analytic = 0;
    for (size_t i = 0; i < n; ++i) analytic += double(grad[i]) * dir[i];
    auto metric_at = [&](double eps) {
      std::vector<float> e(n);
      for (size_t i = 0; i < n; ++i) e[i] = static_cast<float>(emb[i] + eps * dir[i]);
      const auto de = to_device(*s.be, e);
      ForwardOptions fo;
      fo.input_embeddings = de.get();
      return metric_values(*s.be, *s.m, forward(*s.be, *s.m, s.corrupted.batch, fo), spec).mean;
    };
    // eps: small enough for the third-order term, large enough for fp32 logits (the
    // fp32 noise of a metric difference is ~1e-5 here: the floor of the tolerance).
    const double eps = 3e-3;
    const double numeric = (metric_at(eps) - metric_at(-eps)) / (2 * eps);
    EXPECT_GT(std::fabs(analytic), 1e-5) << metric_name(k);
    EXPECT_NEAR(analytic, numeric, 1e-2 * std::fabs(numeric) + 3e-5) << metric_name(k) << " on " << GetParam();
  }
}

// The logit difference through a MetricSpec is the answer/other entry points bit for bit
// (sweep, backward, AtP*).
TEST_P(MetricPatching, LogitDiffUnchanged) {
  MetricRuns s(GetParam());
  const MetricSpec spec = s.spec(MetricKind::LogitDiff);
  EXPECT_TRUE(spec.ref_logprobs.empty());
  const SweepResult a = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, spec, Hook::ResidPre);
  const SweepResult b = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::ResidPre);
  EXPECT_EQ(a.ld, b.ld);
  const LogitDiff la = metric_values(*s.be, *s.m, s.corrupted, spec);
  const LogitDiff lb = logit_diff(*s.be, *s.m, s.corrupted, s.pb.answer, s.pb.other);
  EXPECT_EQ(la.per_row, lb.per_row);
  EXPECT_EQ(la.mean, lb.mean);
  const Gradients ga = backward(*s.be, *s.m, s.corrupted, spec, 0.5f);
  const Gradients gb = backward(*s.be, *s.m, s.corrupted, s.pb.answer, s.pb.other, 0.5f);
  EXPECT_EQ(ga.layers[0].resid_pre.download(), gb.layers[0].resid_pre.download());
}

INSTANTIATE_TEST_SUITE_P(Models, MetricPatching, ::testing::ValuesIn(kModels), [](const auto& info) {
  std::string n = std::filesystem::path(info.param).filename() == "model"
                      ? std::filesystem::path(info.param).parent_path().filename().string()
                      : std::filesystem::path(info.param).filename().string();
  for (auto& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
});

// AtP* accepts every metric: its GradDrop passes start from the metric's gradient (unsigned
// estimates, finite, not all zero), and the logit difference's are the old entry point's.
TEST(MetricAtpStar, EveryMetric) {
  MetricRuns s("data/models/tiny-temporal-phi3");
  const std::vector<Hook> hooks = {Hook::ResidPre, Hook::K};
  const auto old = atp_star(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, 1.0f, hooks);
  for (MetricKind k : kKinds) {
    const auto st = atp_star(*s.be, *s.m, s.corrupted, s.clean, s.spec(k), 1.0f, hooks);
    ASSERT_EQ(st.size(), hooks.size());
    for (size_t h = 0; h < hooks.size(); ++h) {
      double total = 0;
      for (float v : st[h]) {
        ASSERT_TRUE(std::isfinite(v)) << metric_name(k);
        EXPECT_GE(v, 0.0f);
        total += v;
      }
      EXPECT_GT(total, 0.0) << metric_name(k) << " " << hook_name(hooks[h]);
      if (k == MetricKind::LogitDiff) EXPECT_EQ(st[h], old[h]);
    }
  }
}

TEST(MetricNames, ParseAndRefuse) {
  for (MetricKind k : kKinds) EXPECT_EQ(parse_metric(metric_name(k)), k);
  const std::string e = test::error_of([] { parse_metric("logit_diff"); });
  EXPECT_NE(e.find("'logit_diff'"), std::string::npos) << e;
  EXPECT_NE(e.find("--metric"), std::string::npos) << e;
  EXPECT_NE(e.find("logit-diff|prob-diff|logprob|kl"), std::string::npos) << e;
  EXPECT_EQ(per_prompt_key(MetricKind::LogitDiff), "per_prompt_logit_diff");
  EXPECT_EQ(per_prompt_key(MetricKind::KL), "per_prompt_kl");
}

}  // namespace
}  // namespace phi3
