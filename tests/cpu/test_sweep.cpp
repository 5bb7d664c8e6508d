// Level 4 of the verification ladder: the exact fast sweep equals the naive
// one-forward-per-patch sweep (fp32, within 1e-5) for every hook on every reference config
// and the embedded model; facts that must hold on the embedded model; work accounting.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "patching/sweep.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "test_util.h"

namespace phi3 {
namespace {

struct SweepSetup {
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<Model> m;
  PairBatch pb;
  ForwardState clean, corrupted;
  explicit SweepSetup(const std::string& model_dir, int extra_pad = 0) {
    m = load_model(*be, model_dir);
    auto pairs = load_pairs(test::source_dir() + "/data/temporal_scope_for_attribution_patching.json");
    int T = pair_batch_length(pairs, m->tok) + extra_pad;
    pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings, T);
    ForwardOptions fo;
    fo.keep_pattern = true;  // the pattern hooks are swept too
    clean = forward(*be, *m, pb.clean, fo);
    corrupted = forward(*be, *m, pb.corrupted, fo);
  }
};

std::vector<std::string> model_dirs() {
  std::vector<std::string> out = {"data/models/tiny-temporal-phi3"};
  for (const auto& e : std::filesystem::directory_iterator(test::source_dir() + "/data/reference"))
    if (std::filesystem::exists(e.path() / "model" / "config.json"))
      out.push_back("data/reference/" + e.path().filename().string() + "/model");
  std::sort(out.begin(), out.end());
  return out;
}

class FastVsNaive : public ::testing::TestWithParam<std::tuple<std::string, Hook>> {};

TEST_P(FastVsNaive, Equal) {
  auto [dir, hook] = GetParam();
  // Two extra pad columns: every row is padded, so pad positions are swept too.
  SweepSetup s(test::source_dir() + "/" + dir, 2);
  // router exists only on mixtures of experts, mlp_post only on dense models (refused elsewhere).
  if (hook == Hook::Router && !s.m->cfg.moe()) GTEST_SKIP() << "router: a dense model has none";
  if (hook == Hook::MlpPost && s.m->cfg.moe()) GTEST_SKIP() << "mlp_post: a mixture of experts has none";
  SweepOptions naive;
  naive.naive = true;
  SweepResult f = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, hook);
  // Neurons (L x T x F targets): the naive reference on a spread sample of about 600 of
  // them, every layer, position and neuron residue represented; the fast sweep does all.
  const int64_t n_all = static_cast<int64_t>(f.targets.size());
  std::vector<int64_t> sample;
  const int64_t k = std::max<int64_t>(1, n_all / 600);
  for (int64_t i = 0; i < n_all; ++i) {
    const PatchSpec& t = f.targets[i];
    if (k == 1 || (t.head + t.layer + t.pos) % k == 0) sample.push_back(i);
  }
  naive.only = &sample;
  SweepResult n = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, hook, naive);
  ASSERT_EQ(f.ld.size(), n.ld.size());
  ASSERT_EQ(f.targets.size(), n.targets.size());
  const int B = s.pb.clean.B;
  double worst = 0, scale = 0;
  for (int64_t i : sample)
    for (int b = 0; b < B; ++b) {
      worst = std::max(worst, double(std::fabs(f.ld[i * B + b] - n.ld[i * B + b])));
      scale = std::max(scale, double(std::fabs(n.ld[i * B + b])));
    }
  // fp32: identical math on identical rows; BLAS blocking may reorder sums (~1e-7 relative).
  EXPECT_LT(worst, 1e-5 * std::max(1.0, scale)) << hook_name(hook) << " on " << dir;
  EXPECT_EQ(n.work.patched_runs, static_cast<int64_t>(sample.size()));
  if (k > 1) {
    EXPECT_GT(sample.size(), 400u);
  }
  EXPECT_EQ(f.work.patched_runs + f.work.skipped_noop + f.work.skipped_causal, static_cast<int64_t>(f.targets.size()));
  if (k == 1) {
    EXPECT_LT(f.work.token_layer_evals, n.work.token_layer_evals);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllHooks, FastVsNaive,
    ::testing::Combine(::testing::ValuesIn(model_dirs()),
                       ::testing::ValuesIn(all_hooks())),
    [](const auto& info) {
      std::string n = std::get<0>(info.param) + "_" + hook_name(std::get<1>(info.param));
      for (auto& ch : n)
        if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

double normalized(const SweepSetup& s, const SweepResult& r, size_t target) {
  const int B = s.pb.clean.B;
  double ld = 0;
  for (int b = 0; b < B; ++b) ld += r.ld[target * B + b];
  ld /= B;
  double lc = logit_diff(*s.be, *s.m, s.clean, s.pb.answer, s.pb.other).mean;
  double lr = logit_diff(*s.be, *s.m, s.corrupted, s.pb.answer, s.pb.other).mean;
  return (ld - lr) / (lc - lr);
}

TEST(Sweep, LastLayerResidPostAtLastPositionIsOne) {
  SweepSetup s(test::source_dir() + "/data/models/tiny-temporal-phi3");
  const int L = s.m->cfg.num_hidden_layers, T = s.pb.clean.T;
  for (bool naive : {false, true}) {
    SweepOptions o;
    o.naive = naive;
    SweepResult r = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::ResidPost, o);
    const size_t idx = size_t(L - 1) * T + (T - 1);
    ASSERT_EQ(r.targets[idx].layer, L - 1);
    ASSERT_EQ(r.targets[idx].pos, T - 1);
    EXPECT_NEAR(normalized(s, r, idx), 1.0, 1e-6) << (naive ? "naive" : "fast");
  }
}

// Patches whose clean and corrupted values are bitwise identical give exactly 0.
TEST(Sweep, IdenticalValuesGiveExactlyZero) {
  SweepSetup s(test::source_dir() + "/data/models/tiny-temporal-phi3", 3);
  const int B = s.pb.clean.B, T = s.pb.clean.T, D = s.m->cfg.hidden_size;
  for (Hook h : {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut}) {
    for (bool naive : {false, true}) {
      SweepOptions o;
      o.naive = naive;
      SweepResult r = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, h, o);
      int identical = 0;
      for (size_t i = 0; i < r.targets.size(); ++i) {
        const auto& t = r.targets[i];
        std::vector<float> a(size_t(B) * T * D), c(size_t(B) * T * D);
        s.be->download(a.data(), s.clean.hook_data(h, t.layer), a.size() * 4);
        s.be->download(c.data(), s.corrupted.hook_data(h, t.layer), c.size() * 4);
        bool same = true;
        for (int b = 0; b < B; ++b)
          same = same && std::memcmp(&a[(size_t(b) * T + t.pos) * D], &c[(size_t(b) * T + t.pos) * D], D * 4) == 0;
        if (!same) continue;
        ++identical;
        EXPECT_EQ(normalized(s, r, i), 0.0) << hook_name(h) << " L" << t.layer << " pos " << t.pos;
      }
      // Three pad columns shared by every row (and the shared BOS embedding) exist.
      EXPECT_GE(identical, 3) << hook_name(h);
      if (!naive) {
        EXPECT_GE(r.work.skipped_noop, identical);
      }
    }
  }
}

// The same results whatever the chunking (a tiny memory budget forces many chunks).
TEST(Sweep, ChunkingDoesNotChangeResults) {
  SweepSetup s(test::source_dir() + "/data/models/tiny-temporal-phi3");
  SweepResult one = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::ResidPre);
  SweepOptions o;
  o.mem_budget = 200 * 1024;
  SweepResult many = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::ResidPre, o);
  EXPECT_EQ(one.work.chunks, 1);
  EXPECT_GT(many.work.chunks, 3);
  for (size_t i = 0; i < one.ld.size(); ++i) EXPECT_NEAR(one.ld[i], many.ld[i], 1e-5) << i;
}

// A sweep of a chosen target list (the exact check of an attribution prefilter's top
// candidates) gives the full sweep's values there, NaN elsewhere, and only their work; the
// naive sweep honours the list too, and an index out of range is refused.
TEST(Sweep, OnlyChosenTargets) {
  SweepSetup s(test::source_dir() + "/data/models/tiny-temporal-phi3");
  const int B = s.pb.clean.B;
  SweepResult full = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::K);
  const std::vector<int64_t> chosen = {3, 40, 41, 200, static_cast<int64_t>(full.targets.size()) - 1};
  for (bool naive : {false, true}) {
    SweepOptions o;
    o.only = &chosen;
    o.naive = naive;
    SweepResult part = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::K, o);
    ASSERT_EQ(part.ld.size(), full.ld.size());
    for (size_t i = 0; i < full.targets.size(); ++i) {
      const bool want = std::find(chosen.begin(), chosen.end(), int64_t(i)) != chosen.end();
      for (int b = 0; b < B; ++b) {
        if (want)
          EXPECT_NEAR(part.ld[i * B + b], full.ld[i * B + b], 1e-5) << "target " << i << (naive ? " naive" : "");
        else
          EXPECT_TRUE(std::isnan(part.ld[i * B + b])) << "target " << i;
      }
    }
    EXPECT_LE(part.work.patched_runs + part.work.skipped_noop + part.work.skipped_causal, int64_t(chosen.size()));
    EXPECT_EQ(part.work.naive_token_layer_evals, int64_t(chosen.size()) * full.work.naive_token_layer_evals /
                                                     int64_t(full.targets.size()));
  }
  const std::vector<int64_t> bad = {int64_t(full.targets.size())};
  SweepOptions o;
  o.only = &bad;
  EXPECT_THROW(activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::K, o), Error);
}

// Chunks spread over several concurrent lanes (streams on CUDA, threads on the CPU) give
// the same results as one lane.
TEST(Sweep, ConcurrentLanesGiveSameResults) {
  SweepSetup s(test::source_dir() + "/data/models/tiny-temporal-phi3");
  SweepResult one = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::Z);
  SweepOptions o;
  o.streams = 3;
  SweepResult many = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, Hook::Z, o);
  EXPECT_EQ(one.work.streams, 1);
  EXPECT_EQ(many.work.streams, 3);
  EXPECT_GE(many.work.chunks, 6);
  EXPECT_EQ(one.work.token_layer_evals, many.work.token_layer_evals);
  for (size_t i = 0; i < one.ld.size(); ++i) EXPECT_NEAR(one.ld[i], many.ld[i], 1e-5) << i;
}

// Work accounting on the seed batch: the fast sweep does at most 30% of the naive work.
TEST(Sweep, FastWorkAtMost30PercentOfNaive) {
  SweepSetup s(test::source_dir() + "/data/models/tiny-temporal-phi3");
  for (Hook h : {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut}) {
    SweepResult r = activation_sweep(*s.be, *s.m, s.corrupted, s.clean, s.pb.answer, s.pb.other, h);
    const int L = s.m->cfg.num_hidden_layers, T = s.pb.clean.T, B = s.pb.clean.B;
    EXPECT_EQ(r.work.naive_token_layer_evals, int64_t(L) * T * int64_t(B) * T * L);
    EXPECT_LE(double(r.work.token_layer_evals), 0.30 * r.work.naive_token_layer_evals) << hook_name(h);
  }
}

// Noising (corrupted values into the clean run): patching every layer's resid_post at T-1
// of the last layer gives the corrupted metric, 0.
TEST(Sweep, NoisingLastLayerResidPostIsZero) {
  SweepSetup s(test::source_dir() + "/data/models/tiny-temporal-phi3");
  const int L = s.m->cfg.num_hidden_layers, T = s.pb.clean.T;
  SweepResult r = activation_sweep(*s.be, *s.m, s.clean, s.corrupted, s.pb.answer, s.pb.other, Hook::ResidPost);
  EXPECT_NEAR(normalized(s, r, size_t(L - 1) * T + (T - 1)), 0.0, 1e-6);
}

}  // namespace
}  // namespace phi3
