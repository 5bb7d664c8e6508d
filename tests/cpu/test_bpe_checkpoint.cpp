// A Phi3ForCausalLM checkpoint whose only tokenizer is tokenizer.json (byte-level BPE): the
// Phi-4-mini-shaped model of data/reference/rand-phi4mini-bpe runs end to end through the CLI
// (tokenize, forward, run; text and pre-tokenized pairs) with no BOS, as its
// tokenizer_config.json says, and gives the transformers reference's token ids and logit
// differences; labels are the tokens' decoded text. A config vocabulary below the tokenizer's
// ids, and a directory without a tokenizer, are clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using test::slurp;

std::string ref_dir() { return test::source_dir() + "/data/reference/rand-phi4mini-bpe"; }
std::string model_dir() { return ref_dir() + "/model"; }
const json& reference() {
  static const json j = json::parse(slurp(ref_dir() + "/reference.json"));
  return j;
}

int run(const std::string& args, const std::string& dir) { return test::run_cli(PHI3_CLI, args, dir); }

TEST(BpeCheckpoint, TokenizeGivesTheReferenceIdsWithoutBos) {
  const std::string dir = test::temp_dir("bpe_ckpt_tokenize");
  const std::string prompt = reference()["clean_prompts"][0].get<std::string>();
  ASSERT_EQ(run("tokenize --model " + model_dir() + " '" + prompt + "'", dir), 0) << slurp(dir + "/stderr.txt");
  std::string want = "ids:";
  for (int id : reference()["clean_token_ids"][0].get<std::vector<int>>()) want += " " + std::to_string(id);
  const std::string out = slurp(dir + "/stdout.txt");
  EXPECT_NE(out.find(want + "\n"), std::string::npos) << out;
  EXPECT_NE(out.find("pieces: The \xc4\xa0goal \xc4\xa0is"), std::string::npos) << out;  // "Ġgoal"
  EXPECT_NE(out.find("decoded: " + prompt + "\n"), std::string::npos) << out;
  EXPECT_FALSE(reference()["bos"].get<bool>());
}

TEST(BpeCheckpoint, BosOnRequest) {
  const std::string dir = test::temp_dir("bpe_ckpt_bos");
  // --bos prepends the tokenizer's BOS token (<|endoftext|>) where the config asks for none.
  ASSERT_EQ(run("tokenize --bos --model " + model_dir() + " 'The goal'", dir), 0) << slurp(dir + "/stderr.txt");
  const std::string bos = std::to_string(reference()["pad_id"].get<int>());  // bos = eos = pad here
  EXPECT_NE(slurp(dir + "/stdout.txt").find("ids: " + bos + " "), std::string::npos) << slurp(dir + "/stdout.txt");
  EXPECT_NE(slurp(dir + "/stdout.txt").find("pieces: <|endoftext|> The"), std::string::npos);
  ASSERT_EQ(run("run --device cpu --bos --model " + model_dir() + " --hooks resid_pre --out " + dir + "/out --force", dir),
            0)
      << slurp(dir + "/stderr.txt");
  const auto r = nlohmann::json::parse(slurp(dir + "/out/results.json"));
  EXPECT_TRUE(r["bos"].get<bool>());
  EXPECT_EQ(r["T"].get<int>(), reference()["T"].get<int>() + 1);
  EXPECT_EQ(run("forward --bos --no-bos --model " + model_dir(), dir), 2);
  EXPECT_NE(slurp(dir + "/stderr.txt").find("--bos and --no-bos: give one of them"), std::string::npos);
  // A tokenizer without a BOS token cannot honour --bos.
  fs::create_directories(dir + "/nobos");
  fs::copy(test::source_dir() + "/tests/data/bpe/gpt2/tokenizer.json", dir + "/nobos/tokenizer.json");
  EXPECT_EQ(run("tokenize --bos --model " + dir + "/nobos hello", dir), 2);
  EXPECT_NE(slurp(dir + "/stderr.txt").find("--bos: the byte-level BPE tokenizer has no BOS token"), std::string::npos)
      << slurp(dir + "/stderr.txt");
  ASSERT_EQ(run("tokenize --model " + dir + "/nobos hello", dir), 0);
}

TEST(BpeCheckpoint, ForwardAndRunMatchTheReference) {
  const std::string dir = test::temp_dir("bpe_ckpt_run");
  ASSERT_EQ(run("forward --device cpu --model " + model_dir(), dir), 0) << slurp(dir + "/stderr.txt");
  const std::string fwd = slurp(dir + "/stdout.txt");
  // The padded prompts are the labels (decoded tokens) joined: the text itself, after the pads.
  EXPECT_NE(fwd.find("<|endoftext|>The goal is to become a future president."), std::string::npos) << fwd;
  ASSERT_EQ(run("run --device cpu --model " + model_dir() + " --hooks resid_pre,attn_out --method both --out " + dir +
                    "/out --force",
                dir),
            0)
      << slurp(dir + "/stderr.txt");
  const json r = json::parse(slurp(dir + "/out/results.json"));
  EXPECT_FALSE(r["bos"].get<bool>());
  EXPECT_EQ(r["T"].get<int>(), reference()["T"].get<int>());
  EXPECT_NEAR(r["clean_logit_diff"].get<double>(), reference()["clean_logit_diff"].get<double>(), 1e-4);
  ASSERT_EQ(r["position_labels"].size(), size_t(reference()["T"].get<int>()));
  EXPECT_EQ(r["position_labels"][0], "0:The");  // clean row 0 is not padded
  EXPECT_EQ(r["position_labels"][1], "1: goal");
}

TEST(BpeCheckpoint, PreTokenizedPairsUseTheVocabulary) {
  const std::string dir = test::temp_dir("bpe_ckpt_ids");
  const json& ref = reference();
  json pairs = json::array();
  for (int p = 0; p < 2; ++p) {  // clean rows 0 and 2 are the pairs' clean prompts
    pairs.push_back({{"clean", {{"ids", ref["clean_token_ids"][2 * p]}, {"answer_id", ref["answer_ids"][2 * p]}}},
                     {"corrupted", {{"ids", ref["corrupted_token_ids"][2 * p]}, {"answer_id", ref["other_ids"][2 * p]}}}});
  }
  std::ofstream(dir + "/pairs.json") << pairs.dump();
  ASSERT_EQ(run("run --device cpu --model " + model_dir() + " --pairs " + dir + "/pairs.json --hooks resid_pre --out " +
                    dir + "/out --force",
                dir),
            0)
      << slurp(dir + "/stderr.txt");
  const json r = json::parse(slurp(dir + "/out/results.json"));
  EXPECT_NEAR(r["clean_logit_diff"].get<double>(), ref["clean_logit_diff"].get<double>(), 1e-4);
  EXPECT_EQ(r["position_labels"][1], "1: goal");
  // An id past the vocabulary is refused, naming it.
  pairs[0]["clean"]["ids"][3] = 4160;
  std::ofstream(dir + "/bad.json") << pairs.dump();
  EXPECT_EQ(run("run --device cpu --model " + model_dir() + " --pairs " + dir + "/bad.json --out " + dir + "/bad", dir), 2);
  EXPECT_NE(slurp(dir + "/stderr.txt").find("4160"), std::string::npos) << slurp(dir + "/stderr.txt");
}

TEST(BpeCheckpoint, VocabularyAndTokenizerErrors) {
  const std::string dir = test::temp_dir("bpe_ckpt_errors");
  const std::string copy = dir + "/model";
  fs::copy(model_dir(), copy);
  json cfg = json::parse(slurp(copy + "/config.json"));
  cfg["vocab_size"] = 4000;  // below the tokenizer's 4108 ids
  std::ofstream(copy + "/config.json") << cfg.dump(1);
  EXPECT_EQ(run("forward --device cpu --model " + copy, dir), 2);
  EXPECT_NE(slurp(dir + "/stderr.txt").find("the tokenizer has 4108 tokens but config.json vocab_size is 4000"),
            std::string::npos)
      << slurp(dir + "/stderr.txt");
  fs::remove(copy + "/tokenizer.json");
  EXPECT_EQ(run("tokenize --model " + copy + " hello", dir), 2);
  EXPECT_NE(slurp(dir + "/stderr.txt").find("has no tokenizer: expected tokenizer.model"), std::string::npos)
      << slurp(dir + "/stderr.txt");
}

}  // namespace
}  // namespace phi3
