// Level 2 of the verification ladder: the whole model against `transformers` reference
// dumps (data/reference/*, made by tools/make_reference.py): tokens, logits, every hook
// activation, gradients of the normalized metric, and the TransformerLens-style patching
// results (activation patching within 1e-4 absolute, attribution within 1e-3 relative).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "model/model.h"
#include "patching/circuit.h"
#include "patching/circuit_run.h"
#include "model/arch/config_json.h"
#include "runtime/error.h"
#include "patching/verify.h"
#include "test_util.h"

namespace phi3 {
namespace {

std::vector<std::string> reference_dirs() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(test::source_dir() + "/data/reference"))
    if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json")) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Reference, AllFixturesPresent) {
  auto dirs = reference_dirs();
  // tiny-temporal + at least three random configs (GQA, partial rotary, tied, longrope,
  // sliding window, sharded).
  EXPECT_GE(dirs.size(), 4u);
  EXPECT_NE(std::find(dirs.begin(), dirs.end(), "tiny-temporal"), dirs.end());
}

class ReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTest, MatchesTransformers) {
  auto be = make_cpu_backend();
  VerifyResult r = verify_reference(*be, test::source_dir() + "/data/reference/" + GetParam());
  ASSERT_GT(r.checks.size(), 50u);
  for (const auto& c : r.worst_by_kind())
    std::printf("  %-22s worst %-45s %s err %.3g (tol %.1g)\n", c.kind.c_str(), c.name.c_str(),
                c.relative ? "rel" : "abs", c.err(), c.tol);
  for (const auto& c : r.checks)
    EXPECT_TRUE(c.ok) << c.kind << " " << c.name << ": max_abs " << c.max_abs << " max_ref " << c.max_ref << " err "
                      << c.err() << " > tol " << c.tol;
  std::set<std::string> kinds;
  for (const auto& c : r.checks) kinds.insert(c.kind);
  for (const char* k : {"tokens", "logits", "activation", "gradient", "activation_patching", "attribution_patching"})
    EXPECT_TRUE(kinds.count(k)) << "no check of kind " << k;
  // Circuits: every reference but the post-norm families' (Gemma 2: no additive circuit graph,
  // refused by the engine) has circuit.json and all its kinds are checked.
  const std::string dir = test::source_dir() + "/data/reference/" + GetParam();
  std::ifstream rj(dir + "/reference.json");
  const ModelConfig cfg = load_config(dir + "/" + nlohmann::json::parse(rj)["model"].get<std::string>());
  EXPECT_EQ(std::filesystem::exists(dir + "/circuit.json"), circuits_supported(cfg)) << GetParam();
  if (circuits_supported(cfg))
    for (const char* k : {"edge_scores", "circuit_metric", "circuit_selection", "circuit_consistency"})
      EXPECT_TRUE(kinds.count(k)) << "no check of kind " << k;
  // --metric: where the dump has metrics.json (tools/make_reference.py METRIC_CONFIGS), every
  // other metric's values, gradients, activation patching, attribution and AtP* are checked.
  if (std::filesystem::exists(dir + "/metrics.json")) {
    EXPECT_TRUE(kinds.count("metric_value"));
    for (const char* metric : {"prob-diff", "logprob", "kl"})
      for (const char* what : {": clean and corrupted", ": grad.blocks.0.hook_resid_pre", ": resid_pre activation patching",
                               ": z attribution patching", ": k AtP*"}) {
        const std::string want = std::string(metric) + what;
        EXPECT_TRUE(std::any_of(r.checks.begin(), r.checks.end(),
                                [&](const TensorCheck& c) { return c.name.rfind(want, 0) == 0; }))
            << "no check named " << want << "...";
      }
  }
}

// The references of --metric exist where tools/make_reference.py's METRIC_CONFIGS says.
TEST(Reference, MetricFixturesPresent) {
  for (const char* name : {"tiny-temporal", "rand-gemma2-softcap"}) {
    const std::string dir = test::source_dir() + "/data/reference/" + name;
    EXPECT_TRUE(std::filesystem::exists(dir + "/metrics.json")) << name;
    EXPECT_TRUE(std::filesystem::exists(dir + "/metrics.safetensors")) << name;
  }
}

// Circuits on a post-norm model (Gemma 2) stop at once with the reason, before any work.
TEST(Reference, CircuitsRefusedOnPostNormModels) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/reference/rand-gemma2-softcap/model");
  ASSERT_TRUE(m->cfg.post_norms);
  CircuitOptions opt;
  opt.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
  try {
    run_circuit(*be, *m, opt);
    FAIL() << "circuits ran on a post-norm model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Gemma2ForCausalLM"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("post-norms"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, ReferenceTest, ::testing::ValuesIn(reference_dirs()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace phi3
