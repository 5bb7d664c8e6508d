// Everything is checked before the weights load (issue 30 item 3): a bad pairs file, a
// misspelt key, an unknown hook, circuits on Gemma 2, an answer of several tokens, a prompt
// longer than the context are reported from config.json and the tokenizer alone. The
// checkpoints here are "multi-GB" cheaply: the published config.json of Phi-3-mini and Gemma-2-2B
// beside the embedded tokenizer, and a model.safetensors that is a sparse 8 GiB file of garbage.
// Each error must be the validation error (not the weights') and come back in under a second.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "patching/cli/commands.h"
#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

void spit(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

// The embedded tokenizer with `config`, and weights that would fail (and take long) to read.
void make_checkpoint(const std::string& dir, const json& config) {
  fs::create_directories(dir);
  const std::string src = test::source_dir() + "/data/models/tiny-temporal-phi3";
  for (const char* f : {"tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(src + "/" + f, dir + "/" + f, fs::copy_options::overwrite_existing);
  spit(dir + "/config.json", config.dump(2));
  spit(dir + "/model.safetensors", "this is not a safetensors header");
  fs::resize_file(dir + "/model.safetensors", uintmax_t(8) << 30);  // sparse: no disk used
}

json good_pairs() {
  return json::array({{{"clean", {{"question", "The goal is to win the race today. The answer is:"}, {"answer", "short"}}},
                       {"corrupted", {{"question", "The goal is to win the race this decade. The answer is:"},
                                      {"answer", "long"}}}}});
}

class Validation : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("validation");
    phi3_ = dir_ + "/phi-3-mini";
    gemma_ = dir_ + "/gemma-2-2b";
    make_checkpoint(phi3_, config_like("phi-3-mini"));
    make_checkpoint(gemma_, config_like("gemma-2-2b"));
    pairs_ = dir_ + "/pairs.json";
    spit(pairs_, good_pairs().dump(2));
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs the CLI; returns its "phi3patch: error: " line and checks exit 2 in under a second.
  std::string error_of(const std::string& args) {
    const auto t0 = std::chrono::steady_clock::now();
    const int code = test::run_cli(PHI3_CLI, args, dir_);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string err = test::slurp(dir_ + "/stderr.txt");
    EXPECT_EQ(code, 2) << args << "\n" << err;
    EXPECT_LT(s, 1.0) << args << ": took " << s << " s\n" << err;
    EXPECT_EQ(err.find("loading "), std::string::npos) << args << ": weights were loaded\n" << err;
    const size_t at = err.find("phi3patch: error: ");
    if (at == std::string::npos) return "";
    return err.substr(at + 18, err.find('\n', at) - at - 18);
  }
  std::string with_pairs(const json& p) {
    spit(pairs_, p.dump(2));
    return " --device cpu --pairs " + quote(pairs_);
  }

  std::string dir_, phi3_, gemma_, pairs_;
};

// The control: with good inputs the run gets as far as the weights, which fail to read.
TEST_F(Validation, GoodInputsReachTheWeights) {
  const int code = test::run_cli(PHI3_CLI, "forward --device cpu --model " + quote(phi3_) + " --pairs " + quote(pairs_), dir_);
  const std::string err = test::slurp(dir_ + "/stderr.txt");
  EXPECT_EQ(code, 2);
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
}

TEST_F(Validation, BadPairsJson) {
  spit(pairs_, "[{\"clean\": ");
  const std::string e = error_of("run --device cpu --model " + quote(phi3_) + " --pairs " + quote(pairs_) +
                                 " --out " + quote(dir_ + "/out"));
  EXPECT_EQ(e.rfind(pairs_ + ": not valid JSON: ", 0), 0u) << e;
  EXPECT_FALSE(fs::exists(dir_ + "/out")) << "--out was touched before the inputs were checked";
}

TEST_F(Validation, MisspeltPairsKey) {
  json p = good_pairs();
  p[0]["clean"].erase("answer");
  p[0]["clean"]["answr"] = "short";
  const std::string args = with_pairs(p);
  const std::string want = pairs_ + ": pair 0: unknown key \"clean.answr\"; did you mean \"clean.answer\"?";
  EXPECT_EQ(error_of("run --model " + quote(phi3_) + args + " --out " + quote(dir_ + "/out")), want);
  EXPECT_EQ(error_of("forward --model " + quote(phi3_) + args), want);
  EXPECT_EQ(error_of("circuit --model " + quote(phi3_) + args + " --out " + quote(dir_ + "/outc")), want);
  // A key missing with nothing close to it: the old message.
  p[0]["clean"].erase("answr");
  EXPECT_EQ(error_of("run --model " + quote(phi3_) + with_pairs(p)), pairs_ + ": pair 0: missing key \"clean.answer\"");
}

TEST_F(Validation, UnknownHookAndLayer) {
  EXPECT_EQ(error_of("run --device cpu --model " + quote(phi3_) + " --hooks resid_pr"),
            "unknown hook 'resid_pr'; did you mean resid_pre? (known: resid_pre, resid_mid, resid_post, attn_out, "
            "mlp_out, z, z_all_pos, q, q_all_pos, k, k_all_pos, v, v_all_pos, pattern, pattern_all_pos, mlp_post, router, or "
            "their TransformerLens names such as hook_resid_pre, attn.hook_z, blocks.3.hook_resid_pre)");
  // A layer in a TransformerLens name is checked against config.json (Phi-3-mini: 32 layers).
  EXPECT_EQ(error_of("run --device cpu --model " + quote(phi3_) + " --pairs " + quote(pairs_) +
                     " --hooks blocks.40.hook_resid_pre"),
            "--hooks: blocks.40.hook_resid_pre: layer 40 is outside the model's 32 layers (0-31)");
}

TEST_F(Validation, CircuitOnGemma2) {
  const std::string e = error_of("circuit --device cpu --model " + quote(gemma_) + " --pairs " + quote(pairs_) +
                                 " --out " + quote(dir_ + "/outc"));
  EXPECT_EQ(e.rfind("circuits: Gemma2ForCausalLM normalizes every attention and MLP output before the residual add", 0),
            0u)
      << e;
  EXPECT_FALSE(fs::exists(dir_ + "/outc"));
  // --edge-grid is checked against the graph of the config alone too.
  EXPECT_EQ(error_of("circuit --device cpu --model " + quote(phi3_) + " --pairs " + quote(pairs_) +
                     " --edge-grid 10,abc --out " + quote(dir_ + "/outc")),
            "--edge-grid: 'abc' is not a number of edges");
}

TEST_F(Validation, AnswerOfSeveralTokens) {
  json p = good_pairs();
  p[0]["clean"]["answer"] = "tomorrow";
  const std::string e = error_of("run --model " + quote(phi3_) + with_pairs(p));
  EXPECT_EQ(e.rfind(pairs_ + ": pair 0: \"clean.answer\" answer 'tomorrow' is not a single token", 0), 0u) << e;
  EXPECT_EQ(error_of("forward --model " + quote(phi3_) + with_pairs(p)), e);
}

TEST_F(Validation, PromptLongerThanTheContext) {
  json p = good_pairs();
  std::string q;
  for (int i = 0; i < 700; ++i) q += "The goal is to plan ahead. ";  // > 4096 tokens
  p[0]["corrupted"]["question"] = q + "The answer is:";
  const std::string args = with_pairs(p);
  for (const std::string cmd : {"run", "forward", "circuit"}) {
    const std::string out = cmd == "forward" ? std::string() : " --out " + quote(dir_ + "/o-" + cmd);
    const std::string e = error_of(cmd + " --model " + quote(phi3_) + args + out);
    EXPECT_EQ(e.rfind(pairs_ + ": pair 0: \"corrupted.question\" is ", 0), 0u) << cmd << ": " << e;
    EXPECT_NE(e.find("4096"), std::string::npos) << e;
  }
}

TEST_F(Validation, OptionsOfOtherCommands) {
  EXPECT_EQ(error_of("accuracy --device cpu --model " + quote(phi3_) + " --split heldot"),
            "--split: expected train, heldout or all, got 'heldot'; did you mean heldout?");
  EXPECT_EQ(error_of("bench --device cpu --model " + quote(phi3_) + " --hooks attn_otu"),
            "unknown hook 'attn_otu'; did you mean attn_out? (known: resid_pre, resid_mid, resid_post, attn_out, "
            "mlp_out, z, z_all_pos, q, q_all_pos, k, k_all_pos, v, v_all_pos, pattern, pattern_all_pos, mlp_post, router, or "
            "their TransformerLens names such as hook_resid_pre, attn.hook_z, blocks.3.hook_resid_pre)");
}

}  // namespace
}  // namespace phi3
