// The pairs format and the sweep's scope (issue 30 item 5): --no-mix (only the pairs as
// given), explicit wrong answers per side ("wrong" / "wrong_id": IOI pairs whose two answers are
// the same word), --layers, --verify-top choosing its own methods, and pre-tokenized pairs on a
// checkpoint without tokenizer files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/batch.h"
#include "model/forward.h"
#include "patching/experiment.h"
#include "patching/positions.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string tiny_dir() { return test::source_dir() + "/data/models/tiny-temporal-phi3"; }
std::string seed_pairs() { return test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"; }

struct PairsOptions : ::testing::Test {
  static void SetUpTestSuite() {
    be_ = make_cpu_backend().release();
    m_ = load_model(*be_, tiny_dir()).release();
  }
  static void TearDownTestSuite() {
    delete m_;
    delete be_;
  }
  static Backend* be_;
  static Model* m_;
};
Backend* PairsOptions::be_ = nullptr;
Model* PairsOptions::m_ = nullptr;

const MatrixResult& find(const ExperimentResult& R, Hook h, const std::string& method) {
  for (const auto& r : R.results)
    if (r.hook == h && r.method == method) return r;
  throw Error("no " + hook_name(h) + " " + method + " result");
}
bool has(const ExperimentResult& R, const std::string& method) {
  for (const auto& r : R.results)
    if (r.method == method) return true;
  return false;
}

// ---- --no-mix ------------------------------------------------------------------------------

// Without mixing the run has one prompt per pair, and each prompt's values are, bit for bit, the mixed run's
// for the same (unswapped) row: rows 0 and 2 of the mixed batch [p0, p0 swapped, p1, p1 swapped].
TEST_F(PairsOptions, NoMixKeepsTheUnswappedRows) {
  ExperimentOptions opt;
  opt.pairs_file = seed_pairs();
  opt.hooks = {Hook::ResidPre, Hook::AttnOut};
  const ExperimentResult mixed = run_experiment(*be_, *m_, opt);
  opt.mix = false;
  const ExperimentResult one = run_experiment(*be_, *m_, opt);
  ASSERT_EQ(mixed.n_prompts, 4);
  ASSERT_EQ(one.n_prompts, 2);
  EXPECT_TRUE(mixed.mix);
  EXPECT_FALSE(one.mix);
  EXPECT_EQ(one.T, mixed.T);
  const BatchSummary &a = mixed.batches.at(0), &b = one.batches.at(0);
  const std::vector<int> rows = {0, 2};
  ASSERT_EQ(b.clean_prompts.size(), 2u);
  for (int k = 0; k < 2; ++k) {
    const int r = rows[k];
    EXPECT_EQ(b.clean_prompts[k], a.clean_prompts[r]);
    EXPECT_EQ(b.corrupted_prompts[k], a.corrupted_prompts[r]);
    EXPECT_EQ(b.clean_tokens[k], a.clean_tokens[r]);
    EXPECT_EQ(b.answer[k], a.answer[r]);
    EXPECT_EQ(b.other[k], a.other[r]);
    EXPECT_EQ(b.clean_ld_rows[k], a.clean_ld_rows[r]);
    EXPECT_EQ(b.corrupted_ld_rows[k], a.corrupted_ld_rows[r]);
  }
  // Exact patching: every node's per-prompt logit difference is the mixed run's for that row.
  for (Hook h : opt.hooks) {
    SCOPED_TRACE(hook_name(h));
    const MatrixResult &fm = find(mixed, h, "activation"), &f1 = find(one, h, "activation");
    ASSERT_EQ(f1.per_prompt_ld.size(), fm.per_prompt_ld.size());
    for (size_t i = 0; i < f1.per_prompt_ld.size(); ++i) {
      ASSERT_EQ(f1.per_prompt_ld[i].size(), 2u);
      for (int k = 0; k < 2; ++k) EXPECT_EQ(f1.per_prompt_ld[i][k], fm.per_prompt_ld[i][rows[k]]) << "node " << i;
    }
    EXPECT_EQ(f1.work.patched_runs, fm.work.patched_runs) << "a patched run holds every prompt of the batch";
    EXPECT_LT(f1.work.token_layer_evals, fm.work.token_layer_evals) << "half the prompts";
  }
}

// ---- "wrong" / "wrong_id" ---------------------------------------------------------------------

// The logits at the last position of one prompt (no padding, BOS first).
std::vector<float> last(const Model& m, Backend& be, const std::string& text) {
  const Batch b = make_batch({m.tok.encode(text, true)}, m.cfg.pad_token_id);
  return last_logits(be, m, forward(be, m, b));
}

// An IOI-like pair: both sides' answer is the same word, each side names its own wrong answer.
// Every row's logit difference is logit[answer] - logit[wrong of the row's clean side], on the
// clean and the corrupted prompt, as a direct forward of each prompt gives it.
TEST_F(PairsOptions, WrongAnswerPerSide) {
  const std::string q1 = "The goal is to make one cup of cappuccino. Is this a short-term or long-term goal? The answer is:";
  const std::string q2 = "The goal is to become a future president. Is this a short-term or long-term goal? The answer is:";
  const std::string A = " short", W1 = " long", W2 = " goal";
  const json pairs = json::array({{{"clean", {{"question", q1}, {"answer", A}, {"wrong", W1}}},
                                   {"corrupted", {{"question", q2}, {"answer", A}, {"wrong", W2}}}}});
  const Tokenizer& tok = m_->tok;
  const int a = tok.answer_token(A), w1 = tok.answer_token(W1), w2 = tok.answer_token(W2);
  ASSERT_NE(a, w1);
  ASSERT_NE(w1, w2);
  const std::vector<float> l1 = last(*m_, *be_, q1), l2 = last(*m_, *be_, q2);
  ExperimentOptions opt;
  opt.pairs_file = "ioi.json";
  opt.pairs_text = pairs.dump();
  opt.hooks = {Hook::ResidPre};
  const ExperimentResult R = run_experiment(*be_, *m_, opt);
  const BatchSummary& s = R.batches.at(0);
  ASSERT_EQ(s.answer, (std::vector<int32_t>{a, a}));
  ASSERT_EQ(s.other, (std::vector<int32_t>{w1, w2})) << "row 0: the clean side's wrong; row 1 (swapped): the corrupted side's";
  // row 0: clean q1, corrupted q2, metric logit[A] - logit[W1]; row 1: clean q2, corrupted q1, logit[A] - logit[W2]
  EXPECT_NEAR(s.clean_ld_rows[0], l1[a] - l1[w1], 1e-4);
  EXPECT_NEAR(s.corrupted_ld_rows[0], l2[a] - l2[w1], 1e-4);
  EXPECT_NEAR(s.clean_ld_rows[1], l2[a] - l2[w2], 1e-4);
  EXPECT_NEAR(s.corrupted_ld_rows[1], l1[a] - l1[w2], 1e-4);
  EXPECT_NEAR(R.clean_ld, 0.5 * ((l1[a] - l1[w1]) + (l2[a] - l2[w2])), 1e-4);

  // The same pair pre-tokenized ("answer_id", "wrong_id") gives the same bits.
  const json ids = json::array({{{"clean", {{"ids", tok.encode(q1, false)}, {"answer_id", a}, {"wrong_id", w1}}},
                                 {"corrupted", {{"ids", tok.encode(q2, false)}, {"answer_id", a}, {"wrong_id", w2}}}}});
  opt.pairs_text = ids.dump();
  const ExperimentResult P = run_experiment(*be_, *m_, opt);
  EXPECT_EQ(P.batches.at(0).clean_ld_rows, s.clean_ld_rows);
  EXPECT_EQ(P.batches.at(0).corrupted_ld_rows, s.corrupted_ld_rows);
  EXPECT_EQ(find(P, Hook::ResidPre, "activation").values, find(R, Hook::ResidPre, "activation").values);

  // --no-mix: only row 0; the corrupted side then needs no "wrong".
  const json one_wrong = json::array({{{"clean", {{"question", q1}, {"answer", A}, {"wrong", W1}}},
                                       {"corrupted", {{"question", q2}, {"answer", A}}}}});
  opt.pairs_text = one_wrong.dump();
  const std::string mixed_err = test::error_of([&] { run_experiment(*be_, *m_, opt); });
  EXPECT_NE(mixed_err.find("\"corrupted.wrong\""), std::string::npos) << mixed_err;
  EXPECT_NE(mixed_err.find("--no-mix"), std::string::npos) << mixed_err;
  opt.mix = false;
  const ExperimentResult N = run_experiment(*be_, *m_, opt);
  ASSERT_EQ(N.n_prompts, 1);
  EXPECT_EQ(N.batches.at(0).other, (std::vector<int32_t>{w1}));
  EXPECT_NEAR(N.batches.at(0).clean_ld_rows[0], l1[a] - l1[w1], 1e-4);
  EXPECT_NEAR(N.batches.at(0).corrupted_ld_rows[0], l2[a] - l2[w1], 1e-4);
}

TEST(PairsFormat, WrongKeysAndTheirErrors) {
  auto err = [](const std::string& text) { return test::error_of([&] { parse_pairs(text, "p.json"); }); };
  // Without "wrong" the same answer on both sides is refused, naming the key that fixes it.
  std::string e = err(R"([{"clean": {"question": "a", "answer": " Mary"}, "corrupted": {"question": "b", "answer": " Mary"}}])");
  EXPECT_NE(e.find("both ' Mary'"), std::string::npos) << e;
  EXPECT_NE(e.find("\"wrong\""), std::string::npos) << e;
  e = err(R"([{"clean": {"ids": [5], "answer_id": 7}, "corrupted": {"ids": [6], "answer_id": 7}}])");
  EXPECT_NE(e.find("answer ids are both 7"), std::string::npos) << e;
  EXPECT_NE(e.find("\"wrong_id\""), std::string::npos) << e;
  // A wrong answer equal to the answer; wrong_id on a text side; a pre-tokenized label without its id.
  e = err(R"([{"clean": {"question": "a", "answer": "x", "wrong": "x"}, "corrupted": {"question": "b", "answer": "y"}}])");
  EXPECT_NE(e.find("\"clean.wrong\" and \"clean.answer\" are both 'x'"), std::string::npos) << e;
  e = err(R"([{"clean": {"question": "a", "answer": "x", "wrong_id": 3}, "corrupted": {"question": "b", "answer": "y"}}])");
  EXPECT_NE(e.find("\"clean.wrong_id\" belongs to a pre-tokenized side"), std::string::npos) << e;
  e = err(R"([{"clean": {"ids": [5], "answer_id": 7, "wrong": "x"}, "corrupted": {"ids": [6], "answer_id": 8}}])");
  EXPECT_NE(e.find("\"clean.wrong_id\""), std::string::npos) << e;
  e = err(R"([{"clean": {"ids": [5], "answer_id": 7, "wrong_id": 7}, "corrupted": {"ids": [6], "answer_id": 8}}])");
  EXPECT_NE(e.find("\"clean.wrong_id\" and \"clean.answer_id\" are both 7"), std::string::npos) << e;
  e = err(R"([{"clean": {"ids": [5], "answer_id": 7, "wrong_id": -2}, "corrupted": {"ids": [6], "answer_id": 8}}])");
  EXPECT_NE(e.find("\"clean.wrong_id\" is -2, not a token id"), std::string::npos) << e;
  e = err(R"([{"clean": {"question": "a", "answer": "x", "wrong": 3}, "corrupted": {"question": "b", "answer": "y"}}])");
  EXPECT_NE(e.find("\"clean.wrong\" must be a string"), std::string::npos) << e;
  // Accepted: same answers with a wrong answer on both sides; labels with ids.
  EXPECT_EQ(err(R"([{"clean": {"question": "a", "answer": "x", "wrong": "y"}, "corrupted": {"question": "b", "answer": "x", "wrong": "z"}}])"), "");
  EXPECT_EQ(err(R"([{"clean": {"ids": [5], "answer_id": 7, "wrong_id": 8, "wrong": "w"}, "corrupted": {"ids": [6], "answer_id": 7, "wrong_id": 8}}])"), "");
}

// ---- --layers ------------------------------------------------------------------------------

TEST(Layers, Syntax) {
  EXPECT_EQ(parse_layers("0,2", 4), (std::vector<int>{0, 2}));
  EXPECT_EQ(parse_layers("1:3", 4), (std::vector<int>{1, 2}));
  EXPECT_EQ(parse_layers("-1", 4), (std::vector<int>{3}));
  EXPECT_EQ(parse_layers("-2:", 4), (std::vector<int>{2, 3}));
  EXPECT_EQ(parse_layers("3,0:2,3", 4), (std::vector<int>{0, 1, 3}));
  for (const char* bad : {"4", "-5", "2:1", "a", "1:2:3", "", "0:5"}) {
    const std::string e = test::error_of([&] { parse_layers(bad, 4); });
    EXPECT_NE(e.find("--layers"), std::string::npos) << bad << ": " << e;
  }
  EXPECT_NE(test::error_of([&] { parse_layers("7", 4); }).find("it has 4 layers, 0..3"), std::string::npos);
}

// Only the chosen layers: exact values bit for bit the full sweep's there, NaN elsewhere, the
// estimates too; fewer patched runs; comparisons over the swept nodes; --verify-top ranks only
// inside the chosen layers.
TEST_F(PairsOptions, LayersRestrictEveryMethod) {
  ExperimentOptions opt;
  opt.pairs_file = seed_pairs();
  opt.hooks = {Hook::ResidPre, Hook::Z, Hook::ZAllPos};
  const ExperimentResult full = run_experiment(*be_, *m_, opt);
  opt.layers = "0,-1";  // layers 0 and 3
  const ExperimentResult part = run_experiment(*be_, *m_, opt);
  EXPECT_EQ(part.exact_layers, (std::vector<int>{0, 3}));
  EXPECT_TRUE(full.exact_layers.empty());
  const int H = m_->cfg.num_attention_heads;
  for (Hook h : opt.hooks) {
    SCOPED_TRACE(hook_name(h));
    for (const char* method : {"activation", "attribution"}) {
      SCOPED_TRACE(method);
      const MatrixResult &f = find(full, h, method), &p = find(part, h, method);
      ASSERT_EQ(f.values.size(), p.values.size());
      ASSERT_EQ(f.rows, p.rows);
      const size_t nc = f.cols.size();
      int inside = 0;
      for (size_t i = 0; i < f.values.size(); ++i) {
        const size_t row = i / nc;
        const int layer = h == Hook::Z ? static_cast<int>(row) / H : static_cast<int>(row);
        if (layer == 0 || layer == 3) {
          ++inside;
          EXPECT_EQ(p.values[i], f.values[i]) << "cell " << i;
          if (std::string(method) == "activation") {
            EXPECT_EQ(p.per_prompt_ld[i], f.per_prompt_ld[i]) << "cell " << i;
          }
        } else {
          EXPECT_TRUE(std::isnan(p.values[i])) << "cell " << i << " (layer " << layer << "): " << p.values[i];
        }
      }
      EXPECT_EQ(inside * 2, static_cast<int>(f.values.size())) << "half the layers";
    }
    const MatrixResult &fa = find(full, h, "activation"), &pa = find(part, h, "activation");
    EXPECT_GT(pa.work.patched_runs, 0);
    EXPECT_LT(pa.work.patched_runs, fa.work.patched_runs) << "only the chosen layers are patched";
  }
  ASSERT_EQ(part.comparisons.size(), 3u);
  for (const auto& c : part.comparisons) EXPECT_TRUE(std::isfinite(c.pearson)) << hook_name(c.hook);

  // --verify-top inside the layers: every verified node is in layer 0 or 3.
  opt.activation = false;
  opt.verify_top = 6;
  const ExperimentResult v = run_experiment(*be_, *m_, opt);
  ASSERT_EQ(v.verified.size(), 6u);
  for (const auto& n : v.verified) EXPECT_TRUE(n.row.rfind("L0", 0) == 0 || n.row.rfind("L3", 0) == 0) << n.row;
  // Bad values name the option.
  opt.layers = "4";
  EXPECT_NE(test::error_of([&] { run_experiment(*be_, *m_, opt); }).find("--layers"), std::string::npos);
}

// ---- --verify-top without --method -------------------------------------------------------------

// auto_methods (the CLI's --verify-top K without --method): AtP* and AtP rank, the top K are
// patched exactly, no full sweep; where AtP* cannot run (q/k hooks on a checkpointed pass,
// --recompute on) AtP ranks alone.
TEST_F(PairsOptions, VerifyTopPicksItsMethods) {
  ExperimentOptions opt;
  opt.pairs_file = seed_pairs();
  opt.hooks = {Hook::Z, Hook::Q, Hook::K};
  opt.verify_top = 5;
  opt.attribution = opt.atp_star = true;
  opt.activation = false;
  opt.auto_methods = true;
  const ExperimentResult R = run_experiment(*be_, *m_, opt);
  EXPECT_TRUE(has(R, "atp-star"));
  EXPECT_TRUE(has(R, "attribution"));
  EXPECT_TRUE(has(R, "verified"));
  EXPECT_FALSE(has(R, "activation")) << "no full sweep";
  EXPECT_EQ(R.verify_ranked_by, "atp-star");
  EXPECT_EQ(R.verified.size(), 5u);
  opt.recompute = "on";
  const ExperimentResult A = run_experiment(*be_, *m_, opt);
  EXPECT_FALSE(has(A, "atp-star"));
  EXPECT_TRUE(has(A, "attribution"));
  EXPECT_EQ(A.verify_ranked_by, "attribution");
  EXPECT_EQ(A.verified.size(), 5u);
  // Chosen by the user, AtP* there is an error, as before.
  opt.auto_methods = false;
  EXPECT_NE(test::error_of([&] { run_experiment(*be_, *m_, opt); }).find("--recompute on"), std::string::npos);
}

// ---- a checkpoint without tokenizer files --------------------------------------------------------

// The embedded model copied without tokenizer.model, added_tokens.json, tokenizer_config.json
// and special_tokens_map.json runs pre-tokenized pairs with the values of the full checkpoint
// (BOS from config.json's bos_token_id); text pairs are refused naming the missing files.
TEST_F(PairsOptions, PreTokenizedPairsWithoutTokenizerFiles) {
  const std::string dir = test::temp_dir("no_tokenizer");
  const std::string copy = dir + "/model";
  fs::create_directories(copy);
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
    fs::copy_file(tiny_dir() + "/" + f, copy + "/" + f);
  auto text = load_pairs(seed_pairs());
  json j = json::array();
  for (const auto& p : text)
    j.push_back({{"clean", {{"ids", m_->tok.encode(p.clean, false)}, {"answer_id", m_->tok.answer_token(p.clean_answer)}}},
                 {"corrupted",
                  {{"ids", m_->tok.encode(p.corrupted, false)}, {"answer_id", m_->tok.answer_token(p.corrupted_answer)}}}});
  const std::string ids_file = dir + "/ids.json";
  std::ofstream(ids_file) << j.dump();

  ExperimentOptions opt;
  opt.hooks = {Hook::ResidPre, Hook::Z};
  opt.pairs_file = seed_pairs();
  const ExperimentResult with = run_experiment(*be_, *m_, opt);
  auto bare = load_model(*be_, copy);
  EXPECT_FALSE(has_tokenizer(bare->tok));
  EXPECT_EQ(bare->tok.bos_id(), 1);
  EXPECT_TRUE(bare->tok.bos_by_default());
  opt.pairs_file = ids_file;
  const ExperimentResult without = run_experiment(*be_, *bare, opt);
  EXPECT_EQ(without.batches.at(0).clean_tokens, with.batches.at(0).clean_tokens);
  EXPECT_EQ(without.clean_ld, with.clean_ld);
  EXPECT_EQ(without.corrupted_ld, with.corrupted_ld);
  for (Hook h : opt.hooks)
    for (const char* method : {"activation", "attribution"})
      EXPECT_EQ(find(without, h, method).values, find(with, h, method).values) << hook_name(h) << " " << method;
  EXPECT_NE(without.position_labels.back().find("<id "), std::string::npos) << "labels without pieces";

  opt.pairs_file = seed_pairs();
  const std::string e = test::error_of([&] { run_experiment(*be_, *bare, opt); });
  for (const char* want : {"pair 0", "\"clean.question\" is text", "no tokenizer files", "tokenizer.model", "tokenizer.json"})
    EXPECT_NE(e.find(want), std::string::npos) << want << " in: " << e;

  // The CLI: the same run, and the same refusal.
  const int ok = test::run_cli(PHI3_CLI, "run --device cpu --model " + copy + " --pairs " + ids_file +
                                             " --hooks resid_pre --out " + dir + "/out", dir);
  EXPECT_EQ(ok, 0) << test::slurp(dir + "/stderr.txt");
  const json res = json::parse(test::slurp(dir + "/out/results.json"));
  EXPECT_EQ(res["bos"], true);
  EXPECT_EQ(test::run_cli(PHI3_CLI, "run --device cpu --model " + copy + " --out " + dir + "/out2", dir), 2);
  const std::string err = test::slurp(dir + "/stderr.txt");
  EXPECT_NE(err.find("no tokenizer files (neither tokenizer.model nor tokenizer.json)"), std::string::npos) << err;
}

// The options as a user types them: --verify-top alone, --layers and --no-mix land in
// results.json; bad values are one line naming the option.
TEST(PairsCli, OptionsThroughTheBinary) {
  const std::string dir = test::temp_dir("pairs_cli");
  auto results = [&](const std::string& out) { return json::parse(test::slurp(dir + "/" + out + "/results.json")); };
  auto methods = [](const json& r) {
    std::vector<std::string> m;
    for (const auto& e : r["results"]) m.push_back(e["method"].get<std::string>());
    return m;
  };
  ASSERT_EQ(test::run_cli(PHI3_CLI, "run --device cpu --hooks z --verify-top 3 --out " + dir + "/a", dir), 0)
      << test::slurp(dir + "/stderr.txt");
  EXPECT_NE(test::slurp(dir + "/stderr.txt").find("--verify-top 3 without --method"), std::string::npos);
  json r = results("a");
  EXPECT_EQ(methods(r), (std::vector<std::string>{"attribution", "atp-star", "verified"}));
  EXPECT_EQ(r["exact_layers"], "all");
  EXPECT_EQ(r["mixed"], true);
  ASSERT_EQ(test::run_cli(PHI3_CLI, "run --device cpu --hooks resid_pre --layers 1:3 --no-mix --out " + dir + "/b", dir), 0)
      << test::slurp(dir + "/stderr.txt");
  r = results("b");
  EXPECT_EQ(r["exact_layers"], json({1, 2}));
  EXPECT_EQ(r["mixed"], false);
  EXPECT_EQ(methods(r), (std::vector<std::string>{"attribution", "activation"}));
  // A layer in a TransformerLens hook name selects it, as --layers does.
  ASSERT_EQ(test::run_cli(PHI3_CLI, "run --device cpu --hooks blocks.3.hook_resid_pre,blocks.0.attn.hook_z "
                          "--method activation --out " + dir + "/c", dir), 0)
      << test::slurp(dir + "/stderr.txt");
  r = results("c");
  EXPECT_EQ(r["exact_layers"], json({0, 3}));
  EXPECT_EQ(r["results"][0]["hook"], "resid_pre");
  EXPECT_EQ(r["results"][1]["hook"], "z");
  for (const auto& [args, want] : std::vector<std::pair<std::string, std::string>>{
           {"--hooks blocks.1.hook_resid_pre --layers 2", "--layers and a layer in --hooks"},
           {"--layers 4", "--layers: layer 4 is outside the model (it has 4 layers, 0..3)"},
           {"--layers x", "--layers: 'x' is not a layer"},
           {"--layers 3:1", "--layers: range 3:1 is empty"},
           {"--verify-top 0", "--verify-top: expected a positive number"},
           {"--verify-top 3 --method activation", "--verify-top with the activation method"}}) {
    EXPECT_EQ(test::run_cli(PHI3_CLI, "run --device cpu " + args + " --out " + dir + "/bad", dir), 2) << args;
    EXPECT_NE(test::slurp(dir + "/stderr.txt").find(want), std::string::npos) << args << ": " << test::slurp(dir + "/stderr.txt");
  }
}

}  // namespace
}  // namespace phi3
