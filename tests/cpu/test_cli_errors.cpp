// Robustness of the CLI (issue 7): every bad input gives exit status 2 and one line
// "phi3patch: error: ..." naming the culprit (file, field, tensor, token pieces, option),
// nothing is half-written, non-finite values are reported with their layer and hook, and
// Ctrl-C stops a sweep cleanly. Each case copies the embedded model (and/or pairs file)
// into a temp directory, breaks one thing and runs the real binary (PHI3_CLI).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "model/backward.h"
#include "model/batch.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/arch/config_json.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"
#include "test_util.h"

namespace phi3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

using test::slurp;

void spit(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

struct CliResult {
  int code = -1;
  std::string out, err;
  // The "phi3patch: error: " lines of stderr.
  std::vector<std::string> error_lines() const {
    std::vector<std::string> v;
    std::istringstream ss(err);
    for (std::string line; std::getline(ss, line);)
      if (line.rfind("phi3patch: error: ", 0) == 0) v.push_back(line);
    return v;
  }
};

std::string model_src() { return test::source_dir() + "/data/models/tiny-temporal-phi3"; }
std::string pairs_src() { return test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"; }

// Files under `dir` (relative names), recursively.
std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> s;
  if (!fs::is_directory(dir)) return s;
  for (const auto& e : fs::recursive_directory_iterator(dir)) s.insert(fs::relative(e.path(), dir).string());
  return s;
}

// A safetensors file split into its JSON header and data section.
struct StFile {
  json header;
  std::string data;
};
StFile read_st(const std::string& path) {
  std::string b = slurp(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(b[i]);
  StFile f;
  f.header = json::parse(b.substr(8, n));
  f.data = b.substr(8 + n);
  return f;
}
void write_st(const std::string& path, const StFile& f) {
  std::string h = f.header.dump();
  while (h.size() % 8) h += ' ';
  std::string b(8, '\0');
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((uint64_t(h.size()) >> (8 * i)) & 0xff);
  spit(path, b + h + f.data);
}

class CliErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = test::temp_dir(std::string("cli-") + info->name());
    out_ = dir_ + "/out";
    pairs_ = pairs_src();
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }

  // A private copy of the embedded model, to break.
  const std::string& model() {
    if (model_.empty()) {
      model_ = dir_ + "/model";
      fs::copy(model_src(), model_, fs::copy_options::recursive);
    }
    return model_;
  }
  std::string model_file(const std::string& name) { return model() + "/" + name; }

  json config() { return json::parse(slurp(model_file("config.json"))); }
  void set_config(const json& j) { spit(model_file("config.json"), j.dump(2)); }
  void edit_config(const std::function<void(json&)>& fn) {
    json j = config();
    fn(j);
    set_config(j);
  }
  void edit_header(const std::function<void(json&)>& fn) {
    StFile f = read_st(model_file("model.safetensors"));
    fn(f.header);
    write_st(model_file("model.safetensors"), f);
  }
  // Rewrites model.safetensors through the library's writer after `fn` edits the f32 tensors.
  void edit_tensors(const std::function<void(std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>&)>& fn) {
    std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> t;
    {
      SafeTensors st = SafeTensors::open_file(model_src() + "/model.safetensors");
      for (const auto& n : st.names()) t[n] = {st.get(n).shape, st.to_f32(n)};
    }
    fn(t);
    std::vector<TensorToWrite> w;
    for (const auto& [n, sv] : t) w.push_back(tensor_f32(n, sv.first, sv.second));
    write_safetensors(model_file("model.safetensors"), w);
  }
  std::string write_pairs(const std::string& text) {
    pairs_ = dir_ + "/pairs.json";
    spit(pairs_, text);
    return pairs_;
  }
  std::string write_pairs(const json& j) { return write_pairs(j.dump(1)); }
  json good_pairs() { return json::parse(slurp(pairs_src())); }

  CliResult cli(const std::string& args) {
    CliResult r;
    const std::string o = dir_ + "/stdout.txt", e = dir_ + "/stderr.txt";
    const std::string cmd = quote(PHI3_CLI) + " " + args + " >" + quote(o) + " 2>" + quote(e) + " </dev/null";
    int st = std::system(cmd.c_str());
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    r.out = slurp(o);
    r.err = slurp(e);
    return r;
  }
  // `run` on the (possibly broken) model copy and pairs, quick settings.
  CliResult run(const std::string& extra = "") {
    const std::string m = model_.empty() ? model_src() : model_;
    return cli("run --device cpu --model " + quote(m) + " --pairs " + quote(pairs_) + " --out " + quote(out_) +
               " --hooks resid_pre --method attribution " + extra);
  }

  // Exit status 2 (or `code`), exactly one error line, last on stderr, naming every needle;
  // no results.json in --out.
  void expect_error(const CliResult& r, const std::vector<std::string>& needles, int code = 2) {
    SCOPED_TRACE("stderr:\n" + r.err);
    EXPECT_EQ(r.code, code);
    auto lines = r.error_lines();
    if (std::getenv("PHI3_SHOW_ERRORS")) std::printf("    [exit %d] %s", r.code, r.err.c_str());
    ASSERT_EQ(lines.size(), 1u) << "expected exactly one 'phi3patch: error:' line";
    std::string last = r.err;
    while (!last.empty() && last.back() == '\n') last.pop_back();
    last = last.substr(last.rfind('\n') == std::string::npos ? 0 : last.rfind('\n') + 1);
    EXPECT_EQ(last, lines[0]) << "the error must be the last line of stderr";
    for (const auto& n : needles) EXPECT_NE(lines[0].find(n), std::string::npos) << "message does not name '" << n << "'";
    EXPECT_FALSE(fs::exists(out_ + "/results.json")) << "a failed run wrote results.json";
    for (const auto& f : listing(out_)) EXPECT_EQ(f.find(".tmp."), std::string::npos) << "temporary file left: " << f;
  }

  std::string dir_, out_, model_, pairs_;
};

// ---- model directory and config.json ------------------------------------------------

TEST_F(CliErrors, ModelDirMissing) {
  model_ = dir_ + "/no-such-model";
  expect_error(run(), {"no-such-model", "does not exist"});
}

TEST_F(CliErrors, ModelDirIsAFile) {
  model_ = dir_ + "/plain-file";
  spit(model_, "x");
  expect_error(run(), {"plain-file", "is a file"});
}

TEST_F(CliErrors, ConfigMissing) {
  fs::remove(model_file("config.json"));
  expect_error(run(), {"config.json"});
}

TEST_F(CliErrors, ConfigUnreadable) {
  fs::remove(model_file("config.json"));
  fs::create_directory(model_file("config.json"));  // root can read any file; a directory it cannot
  expect_error(run(), {"config.json", "directory"});
}

TEST_F(CliErrors, ConfigNotJson) {
  spit(model_file("config.json"), "{\"hidden_size\": 64,,}");
  expect_error(run(), {"config.json", "not valid JSON"});
}

TEST_F(CliErrors, ConfigWrongType) {
  edit_config([](json& j) { j["hidden_size"] = "64"; });
  expect_error(run(), {"config.json", "hidden_size", "expected an integer"});
}

TEST_F(CliErrors, ConfigMissingField) {
  edit_config([](json& j) { j.erase("num_hidden_layers"); });
  expect_error(run(), {"config.json", "num_hidden_layers", "missing"});
}

TEST_F(CliErrors, ConfigUnsupportedArchitecture) {
  edit_config([](json& j) {
    j["architectures"] = {"MambaForCausalLM"};
    j["model_type"] = "mamba";
  });
  expect_error(run(), {"config.json", "architectures", "MambaForCausalLM", "supported", "LlamaForCausalLM",
                       "Qwen2ForCausalLM", "GPT2LMHeadModel", "MixtralForCausalLM"});
}

// A Llama config over Phi-3 tensors, a Qwen2 config over tensors without q/k/v biases: the
// tensor is named, and the layout the checkpoint does have.
TEST_F(CliErrors, ConfigOfAnotherFamilyThanTheTensors) {
  edit_config([](json& j) {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
  });
  expect_error(run(), {"tensor 'model.layers.0.self_attn.q_proj.weight' is missing", "LlamaForCausalLM",
                       "'model.layers.0.self_attn.qkv_proj.weight', the layout of Phi3ForCausalLM"});
}

TEST_F(CliErrors, ConfigHeadsDoNotDivideHiddenSize) {
  edit_config([](json& j) {
    j["num_attention_heads"] = 5;
    j["num_key_value_heads"] = 5;
  });
  expect_error(run(), {"config.json", "num_attention_heads", "hidden_size"});
}

TEST_F(CliErrors, ConfigKvHeadsDoNotDivideHeads) {
  edit_config([](json& j) { j["num_key_value_heads"] = 3; });
  expect_error(run(), {"config.json", "num_key_value_heads"});
}

TEST_F(CliErrors, ConfigNegativeSize) {
  edit_config([](json& j) { j["intermediate_size"] = -128; });
  expect_error(run(), {"config.json", "intermediate_size", "positive"});
}

TEST_F(CliErrors, ConfigVocabSmallerThanTokenizer) {
  edit_config([](json& j) { j["vocab_size"] = 100; });
  expect_error(run(), {"config.json", "vocab_size"});
}

// ---- safetensors ----------------------------------------------------------------------

TEST_F(CliErrors, SafetensorsMissing) {
  fs::remove(model_file("model.safetensors"));
  expect_error(run(), {"model.safetensors"});
}

TEST_F(CliErrors, SafetensorsTruncated) {
  const std::string p = model_file("model.safetensors");
  fs::resize_file(p, fs::file_size(p) / 2);
  expect_error(run(), {"model.safetensors", "tensor '", "past the end"});
}

TEST_F(CliErrors, SafetensorsShorterThanHeaderLength) {
  const std::string p = model_file("model.safetensors");
  fs::resize_file(p, 5);
  expect_error(run(), {"model.safetensors", "too short"});
}

TEST_F(CliErrors, SafetensorsHeaderLengthBeyondFile) {
  const std::string p = model_file("model.safetensors");
  std::string b = slurp(p);
  const uint64_t n = b.size() + 1000;
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  spit(p, b);
  expect_error(run(), {"model.safetensors", "header length " + std::to_string(n)});
}

TEST_F(CliErrors, SafetensorsHeaderNotJson) {
  const std::string p = model_file("model.safetensors");
  std::string b = slurp(p);
  b[8] = '[';
  b[9] = '{';
  b[10] = ':';
  spit(p, b);
  expect_error(run(), {"model.safetensors", "not valid JSON"});
}

TEST_F(CliErrors, SafetensorsOffsetsOutOfRange) {
  size_t data_size = read_st(model_file("model.safetensors")).data.size();
  edit_header([&](json& h) { h["model.norm.weight"]["data_offsets"] = {data_size, data_size + 256}; });
  expect_error(run(), {"model.safetensors", "model.norm.weight", "data_offsets", "past the end"});
}

TEST_F(CliErrors, SafetensorsOffsetsOverlap) {
  edit_header([&](json& h) {
    h["model.norm.weight"]["data_offsets"] = h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  });
  expect_error(run(), {"model.safetensors", "model.norm.weight", "model.layers.0.input_layernorm.weight", "overlap"});
}

TEST_F(CliErrors, SafetensorsDtypeSizeMismatch) {
  edit_header([&](json& h) { h["model.norm.weight"]["dtype"] = "BF16"; });
  expect_error(run(), {"model.safetensors", "model.norm.weight", "BF16"});
}

TEST_F(CliErrors, SafetensorsIntegerDtypeForWeight) {
  edit_header([&](json& h) { h["model.layers.2.input_layernorm.weight"]["dtype"] = "I32"; });
  expect_error(run(), {"model.safetensors", "model.layers.2.input_layernorm.weight", "I32"});
}

TEST_F(CliErrors, SafetensorsUnsupportedDtype) {
  edit_header([&](json& h) { h["model.norm.weight"]["dtype"] = "F64"; });
  expect_error(run(), {"model.safetensors", "model.norm.weight", "F64"});
}

TEST_F(CliErrors, SafetensorsShapeMismatch) {
  edit_header([&](json& h) { h["model.norm.weight"]["shape"] = {32, 2}; });
  expect_error(run(), {"model.safetensors", "model.norm.weight", "[32, 2]", "[64]"});
}

TEST_F(CliErrors, SafetensorsMissingTensor) {
  edit_tensors([](auto& t) { t.erase("model.layers.2.mlp.down_proj.weight"); });
  expect_error(run(), {"model.layers.2.mlp.down_proj.weight", "missing"});
}

TEST_F(CliErrors, SafetensorsExtraTensor) {
  edit_tensors([](auto& t) { t["model.layers.9.self_attn.qkv_proj.weight"] = {{2, 2}, {1, 2, 3, 4}}; });
  expect_error(run(), {"model.safetensors", "model.layers.9.self_attn.qkv_proj.weight", "unexpected"});
}

TEST_F(CliErrors, SafetensorsNaNWeight) {
  edit_tensors([](auto& t) { t.at("model.layers.1.self_attn.o_proj.weight").second[5] = NAN; });
  expect_error(run(), {"model.safetensors", "model.layers.1.self_attn.o_proj.weight", "non-finite", "nan",
                       "index 5"});
}

TEST_F(CliErrors, SafetensorsInfWeight) {
  edit_tensors([](auto& t) { t.at("model.embed_tokens.weight").second[1234] = -INFINITY; });
  expect_error(run(), {"model.safetensors", "model.embed_tokens.weight", "non-finite", "inf", "index 1234"});
}

// Splits the checkpoint into two shards + index; `keep_second` false leaves shard 2 out.
void write_sharded(const std::string& dir, bool keep_second) {
  SafeTensors st = SafeTensors::open_file(model_src() + "/model.safetensors");
  std::vector<TensorToWrite> a, b;
  json wm = json::object();
  for (const auto& n : st.names()) {
    const bool second = n.find("layers.3.") != std::string::npos || n == "lm_head.weight";
    (second ? b : a).push_back(tensor_f32(n, st.get(n).shape, st.to_f32(n)));
    wm[n] = second ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  write_safetensors(dir + "/model-00001-of-00002.safetensors", a);
  if (keep_second) write_safetensors(dir + "/model-00002-of-00002.safetensors", b);
  spit(dir + "/model.safetensors.index.json", json{{"metadata", json::object()}, {"weight_map", wm}}.dump(1));
  fs::remove(dir + "/model.safetensors");
}

TEST_F(CliErrors, ShardIndexNamesMissingShard) {
  write_sharded(model(), false);
  expect_error(run(), {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist"});
}

TEST_F(CliErrors, ShardIndexNotJson) {
  write_sharded(model(), true);
  spit(model_file("model.safetensors.index.json"), "{\"weight_map\": ");
  expect_error(run(), {"model.safetensors.index.json", "not valid JSON"});
}

TEST_F(CliErrors, ShardedCheckpointLoads) {  // the positive control of the two above
  write_sharded(model(), true);
  CliResult r = run();
  EXPECT_EQ(r.code, 0) << r.err;
}

// ---- tokenizer ------------------------------------------------------------------------

TEST_F(CliErrors, TokenizerNotSentencePiece) {
  spit(model_file("tokenizer.model"), "this is a text file, not a SentencePiece model\n");
  expect_error(run(), {"tokenizer.model", "not a SentencePiece model"});
}

TEST_F(CliErrors, TokenizerMissing) {
  fs::remove(model_file("tokenizer.model"));
  expect_error(run(), {"has no tokenizer", "tokenizer.model", "tokenizer.json"});
}

TEST_F(CliErrors, AddedTokensNotJson) {
  spit(model_file("added_tokens.json"), "{\"<|end|>\": ");
  expect_error(run(), {"added_tokens.json", "not valid JSON"});
}

// ---- pairs file -----------------------------------------------------------------------

TEST_F(CliErrors, PairsMissing) {
  pairs_ = dir_ + "/no-such-pairs.json";
  expect_error(run(), {"no-such-pairs.json"});
}

TEST_F(CliErrors, PairsNotJson) {
  write_pairs(std::string("[{\"clean\": {\"question\": \"x\"}"));
  expect_error(run(), {"pairs.json", "not valid JSON"});
}

TEST_F(CliErrors, PairsEmptyFile) {
  write_pairs(std::string(""));
  expect_error(run(), {"pairs.json", "empty"});
}

TEST_F(CliErrors, PairsEmptyList) {
  write_pairs(std::string("[]"));
  expect_error(run(), {"pairs.json", "empty"});
}

TEST_F(CliErrors, PairsNotAList) {
  write_pairs(std::string("{\"clean\": 1}"));
  expect_error(run(), {"pairs.json", "list"});
}

TEST_F(CliErrors, PairsMissingKey) {
  json p = good_pairs();
  p[1].erase("corrupted");
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 1", "\"corrupted\""});
}

TEST_F(CliErrors, PairsMissingAnswer) {
  json p = good_pairs();
  p[0]["clean"].erase("answer");
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "clean.answer"});
}

TEST_F(CliErrors, PairsQuestionNotString) {
  json p = good_pairs();
  p[0]["corrupted"]["question"] = 42;
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "corrupted.question", "string"});
}

TEST_F(CliErrors, PairsAnswerNotSingleToken) {
  const std::string answer = "shortermost";
  Tokenizer tok = Tokenizer::load_dir(model_src());
  std::vector<int> ids = tok.encode(answer, false);
  ASSERT_GT(ids.size(), 1u) << "pick an answer that is several tokens";
  std::string pieces;
  for (size_t i = 0; i < ids.size(); ++i) pieces += (i ? ", " : "") + tok.piece(ids[i]);
  json p = good_pairs();
  p[1]["corrupted"]["answer"] = answer;
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 1", "corrupted.answer", answer, "[" + pieces + "]"});
}

TEST_F(CliErrors, PairsAnswersEqual) {
  json p = good_pairs();
  p[0]["corrupted"]["answer"] = p[0]["clean"]["answer"];
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "both '" + p[0]["clean"]["answer"].get<std::string>() + "'"});
}

TEST_F(CliErrors, PairsAnswersSameToken) {
  json p = good_pairs();
  p[1]["corrupted"]["answer"] = " " + p[1]["clean"]["answer"].get<std::string>();
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 1", "same token"});
}

// Pre-tokenized pairs ({"ids", "answer_id"}): the ids are checked against the model's vocabulary.
json ids_pairs() {
  return json::parse(R"([{"clean": {"ids": [5, 6, 7], "answer_id": 9}, "corrupted": {"ids": [5, 8], "answer_id": 10}}])");
}

TEST_F(CliErrors, PairsIdsOutsideVocabulary) {
  json p = ids_pairs();
  p[0]["corrupted"]["ids"][1] = 1032;  // the embedded model has 1032 tokens
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "corrupted.ids\"[1]", "1032", "outside the vocabulary"});
}

TEST_F(CliErrors, PairsAnswerIdOutsideVocabulary) {
  json p = ids_pairs();
  p[0]["clean"]["answer_id"] = 5000;
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "clean.answer_id", "5000", "outside the vocabulary"});
}

TEST_F(CliErrors, PairsIdsNotIntegers) {
  json p = ids_pairs();
  p[0]["clean"]["ids"][2] = -3;
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "clean.ids\"[2]", "-3", "not a token id"});
  p[0]["clean"]["ids"][2] = "7";
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "clean.ids\"[2]", "not a token id"});
}

TEST_F(CliErrors, PairsIdsWithoutAnswerId) {
  json p = ids_pairs();
  p[0]["corrupted"].erase("answer_id");
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "corrupted.answer_id"});
}

TEST_F(CliErrors, PairsIdsEmptyOrSameAnswer) {
  json p = ids_pairs();
  p[0]["clean"]["ids"] = json::array();
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "clean.ids", "non-empty"});
  p = ids_pairs();
  p[0]["corrupted"]["answer_id"] = 9;
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 0", "answer ids are both 9"});
}

TEST_F(CliErrors, PromptLongerThanContext) {
  edit_config([](json& j) { j["max_position_embeddings"] = 16; });
  expect_error(run(), {"temporal_scope_for_attribution_patching.json", "pair 0", "clean.question", "16",
                       "max_position_embeddings"});
}

TEST_F(CliErrors, PromptLongerThanContextInLaterPair) {
  json p = good_pairs();
  std::string q;
  for (int i = 0; i < 40; ++i) q += "The goal is to plan a very long time ahead. ";
  p[1]["corrupted"]["question"] = q + "The answer is:";
  write_pairs(p);
  expect_error(run(), {"pairs.json", "pair 1", "corrupted.question", "128"});
}

// ---- options and output directory -----------------------------------------------------

TEST_F(CliErrors, UnknownHook) {
  expect_error(cli("run --hooks resid_pre,resid_middle --out " + quote(out_)), {"unknown hook 'resid_middle'"});
}

TEST_F(CliErrors, UnknownOption) {
  expect_error(cli("run --frobnicate 3 --out " + quote(out_)), {"unknown option '--frobnicate'"});
}

TEST_F(CliErrors, OptionWithoutValue) {
  expect_error(cli("run --hooks"), {"--hooks", "needs a value"});
}

TEST_F(CliErrors, BadOptionValues) {
  expect_error(cli("run --batch two --out " + quote(out_)), {"--batch", "'two'"});
  expect_error(cli("run --method exact --out " + quote(out_)), {"--method", "'exact'"});
  expect_error(cli("run --direction sideways --out " + quote(out_)), {"--direction", "'sideways'"});
  expect_error(cli("run --metric kl-div --out " + quote(out_)),
               {"--metric", "'kl-div'", "logit-diff|prob-diff|logprob|kl"});
  expect_error(cli("run --mem-budget -5 --out " + quote(out_)), {"--mem-budget", "'-5'"});
  expect_error(run("--device tpu"), {"--device", "'tpu'"});
}

// Long prompts (issue 25): bad --positions / --recompute values, and a memory budget too small for
// one pair's estimates, refused before any work (exit 3: out of memory, with the sizes).
TEST_F(CliErrors, LongPromptOptions) {
  expect_error(cli("run --positions 3:1 --out " + quote(out_)), {"--positions", "3:1", "empty"});
  expect_error(cli("run --positions 99999 --out " + quote(out_)), {"--positions", "99999", "T = "});
  expect_error(cli("run --positions 1 --method attribution --out " + quote(out_)), {"--positions", "activation"});
  expect_error(cli("run --recompute maybe --out " + quote(out_)), {"--recompute", "'maybe'"});
  expect_error(cli("run --recompute on --out " + quote(out_)), {"--recompute on", "exact sweep"});
  expect_error(run("--mem-budget 0.001"), {"estimates", "MiB", "one pair needs", "nothing was computed"}, 3);
}

// --method lists and --verify-top: combinations that cannot run are refused before any work.
TEST_F(CliErrors, MethodAndVerifyTopMisuse) {
  expect_error(cli("run --method atp-star,exact --out " + quote(out_)), {"--method", "'exact'"});
  expect_error(cli("run --method , --out " + quote(out_)), {"--method", "no method"});
  expect_error(cli("run --method both --verify-top 5 --out " + quote(out_)), {"--verify-top", "activation"});
  expect_error(cli("run --method attribution --verify-top 0 --out " + quote(out_)), {"--verify-top", "positive"});
  expect_error(cli("run --method atp-star --verify-top -3 --out " + quote(out_)), {"--verify-top", "'-3'"});
  // More nodes than the hooks have: resid_pre of the embedded model is 4 layers x T.
  expect_error(cli("run --device cpu --method atp-star --hooks resid_pre,z_all_pos --verify-top 100000 --out " +
                   quote(out_)),
               {"--verify-top 100000", "nodes of the chosen hooks"});
}

TEST_F(CliErrors, UnknownCommand) {
  expect_error(cli("frobnicate"), {"unknown command 'frobnicate'"});
}

TEST_F(CliErrors, OutDirUnderRegularFile) {
  spit(dir_ + "/afile", "x");
  out_ = dir_ + "/afile/out";
  expect_error(run(), {"afile/out", "cannot create directory"});
}

TEST_F(CliErrors, OutDirIsRegularFile) {
  out_ = dir_ + "/afile";
  spit(out_, "x");
  CliResult r = run();
  expect_error(r, {"afile", "is a file"});
  EXPECT_EQ(slurp(out_), "x");
}

TEST_F(CliErrors, ExistingResultsNeedForce) {
  fs::create_directories(out_);
  spit(out_ + "/results.json", "{\"earlier\": true}\n");
  CliResult r = run();
  SCOPED_TRACE(r.err);
  EXPECT_EQ(r.code, 2);
  ASSERT_EQ(r.error_lines().size(), 1u);
  EXPECT_NE(r.error_lines()[0].find("results.json"), std::string::npos);
  EXPECT_NE(r.error_lines()[0].find("--force"), std::string::npos);
  EXPECT_EQ(slurp(out_ + "/results.json"), "{\"earlier\": true}\n");
}

// ---- guarantees: no partial output, --force, non-finite values, Ctrl-C ------------------

TEST_F(CliErrors, FailedRunLeavesEarlierResultsUntouched) {
  CliResult ok = run();
  ASSERT_EQ(ok.code, 0) << ok.err;
  const std::string before = slurp(out_ + "/results.json");
  const auto files = listing(out_);
  ASSERT_TRUE(files.count("resid_pre_attribution.csv"));
  // A bad hook, then a failure after the output directory was accepted (bad pairs), both
  // with --force: nothing in --out changes.
  CliResult bad_hook = run("--force --hooks resid_pre,nope");
  EXPECT_EQ(bad_hook.code, 2);
  write_pairs(std::string("[]"));
  CliResult bad_pairs = run("--force");
  EXPECT_EQ(bad_pairs.code, 2) << bad_pairs.err;
  EXPECT_EQ(slurp(out_ + "/results.json"), before);
  EXPECT_EQ(listing(out_), files);
}

TEST_F(CliErrors, ForceOverwrites) {
  CliResult a = run();
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(json::parse(slurp(out_ + "/results.json"))["results"][0]["hook"], "resid_pre");
  CliResult b = run("--hooks mlp_out");  // refused without --force
  EXPECT_EQ(b.code, 2);
  CliResult c = run("--force --hooks mlp_out --method both");
  ASSERT_EQ(c.code, 0) << c.err;
  json j = json::parse(slurp(out_ + "/results.json"));
  ASSERT_EQ(j["results"].size(), 2u);
  EXPECT_EQ(j["results"][0]["hook"], "mlp_out");
  EXPECT_TRUE(fs::exists(out_ + "/mlp_out_activation.csv"));
  for (const auto& f : listing(out_)) EXPECT_EQ(f.find(".tmp."), std::string::npos) << f;
}

TEST_F(CliErrors, NonFiniteActivationNamesLayerAndHook) {
  // Finite weights (so loading accepts them) large enough that layer 1's MLP overflows.
  edit_tensors([](auto& t) {
    for (auto& x : t.at("model.layers.1.post_attention_layernorm.weight").second) x = 3e38f;
  });
  CliResult r = run("--method both");
  expect_error(r, {"non-finite", "blocks.1.hook_mlp_out"});
  EXPECT_FALSE(fs::exists(out_ + "/resid_pre_attribution.csv"));
}

TEST_F(CliErrors, ForwardCommandChecksToo) {
  edit_tensors([](auto& t) {
    for (auto& x : t.at("model.layers.1.post_attention_layernorm.weight").second) x = 3e38f;
  });
  expect_error(cli("forward --device cpu --model " + quote(model())), {"non-finite", "blocks.1.hook_mlp_out"});
}

// `phi3patch circuit`: K above the edge count, zero IG steps, a grid outside the graph, unknown
// methods; nothing written.
TEST_F(CliErrors, CircuitMisuse) {
  const std::string base = "circuit --device cpu --model " + quote(model_src()) + " --pairs " + quote(pairs_) +
                           " --out " + quote(out_) + " ";
  expect_error(cli(base + "--edges 480"), {"--edges 480", "479 edges"});
  expect_error(cli(base + "--ig-steps 0"), {"--ig-steps", "at least one step"});
  expect_error(cli(base + "--edge-grid 5,1000"), {"--edge-grid", "1000", "479 edges"});
  expect_error(cli(base + "--method acdc"), {"--method", "eap", "acdc"});
  expect_error(cli(base + "--method eap --ig-steps 3"), {"--ig-steps", "eap-ig"});
  expect_error(cli(base + "--edges 0"), {"--edges", "positive"});
  expect_error(cli(base + "--select best"), {"--select", "top-k", "greedy", "best"});
  expect_error(cli(base + "--metric kl"), {"--metric kl", "logit-diff", "phi3patch run"});
  expect_error(cli(base + "--metric ratio"), {"--metric", "'ratio'"});
  for (const char* f : {"circuit.json", "edges.csv", "report.html"}) EXPECT_FALSE(fs::exists(out_ + "/" + f)) << f;
}

TEST_F(CliErrors, OutOfMemoryNamesSizeAndRemedy) {
  // A checkpoint whose embedding and lm_head need 2 x 256 GiB: a sparse file (no disk used,
  // all-zero weights), so only the memory check can refuse it. Exit status 3.
  const int64_t V = int64_t(1) << 30;
  edit_config([&](json& j) { j["vocab_size"] = V; });
  StFile f = read_st(model_src() + "/model.safetensors");
  json h = json::object();
  uint64_t off = 0;
  for (auto it = f.header.begin(); it != f.header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    std::vector<int64_t> shape = it.value()["shape"].get<std::vector<int64_t>>();
    if (it.key() == "model.embed_tokens.weight" || it.key() == "lm_head.weight") shape[0] = V;
    uint64_t n = 4;
    for (auto d : shape) n *= static_cast<uint64_t>(d);
    h[it.key()] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  write_st(model_file("model.safetensors"), StFile{h, ""});
  std::error_code ec;
  fs::resize_file(model_file("model.safetensors"), fs::file_size(model_file("model.safetensors")) + off, ec);
  if (ec) GTEST_SKIP() << "this file system cannot hold a 512 GiB sparse file: " << ec.message();
  CliResult r = run();
  expect_error(r, {"the weights need 524", "MiB", "free", "smaller model"}, 3);
}

TEST_F(CliErrors, CtrlCStopsCleanly) {
  const std::string err_path = dir_ + "/ctrlc-stderr.txt";
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    int nul = ::open("/dev/null", O_WRONLY);
    ::dup2(nul, 1);
    const std::string m = model_src(), p = pairs_src();
    ::execl(PHI3_CLI, PHI3_CLI, "run", "--device", "cpu", "--model", m.c_str(), "--pairs", p.c_str(), "--out",
            out_.c_str(), "--naive", "--hooks", "z", "--method", "activation", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Signal once the sweep has started (or after 0.3 s past loading, whichever is first).
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  bool exited = false;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    if (slurp(err_path).find("batch 1/1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!exited) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (::waitpid(pid, &status, WNOHANG) == pid) exited = true;
  }
  if (exited) GTEST_SKIP() << "the run finished before it could be interrupted:\n" << slurp(err_path);
  ASSERT_EQ(::kill(pid, SIGINT), 0);
  const auto t_sig = std::chrono::steady_clock::now();
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  const double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_sig).count();
  const std::string err = slurp(err_path);
  SCOPED_TRACE(err);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    GTEST_SKIP() << "the run finished before the signal was handled";
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_TRUE(WEXITSTATUS(status) == 130 || WEXITSTATUS(status) == 2) << WEXITSTATUS(status);
  EXPECT_NE(err.find("phi3patch: error: interrupted"), std::string::npos);
  EXPECT_LT(stop_s, 10.0) << "stopping took too long";
  EXPECT_FALSE(fs::exists(out_ + "/results.json"));
  for (const auto& f : listing(out_)) ADD_FAILURE() << "file left in --out after Ctrl-C: " << f;
}

// ---- library: gradient scan ---------------------------------------------------------

TEST(NonFiniteGradients, NamedByLayerAndHook) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, model_src());
  auto pairs = load_pairs(pairs_src());
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
  ForwardState s = forward(*be, *m, pb.corrupted);
  Gradients g = backward(*be, *m, s, pb.answer, pb.other, 1.0f);
  EXPECT_NO_THROW(check_finite(*be, *m, g, "backward"));
  struct Case {
    int layer;
    const char* hook;
    DeviceArray<float> LayerGrads::*field;
  };
  for (const Case& c : {Case{2, "attn.hook_z", &LayerGrads::z}, Case{0, "hook_resid_pre", &LayerGrads::resid_pre},
                        Case{3, "hook_resid_post", &LayerGrads::resid_post}}) {
    Gradients g2 = backward(*be, *m, s, pb.answer, pb.other, 1.0f);
    DeviceArray<float>& a = g2.layers[c.layer].*c.field;
    std::vector<float> h = a.download();
    const size_t width = h.size() / static_cast<size_t>(s.N());
    h[3 * width + 1] = NAN;  // row 3
    a.upload(h);
    try {
      check_finite(*be, *m, g2, "backward");
      ADD_FAILURE() << "no error for a NaN in " << c.hook;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("blocks." + std::to_string(c.layer) + "." + c.hook), std::string::npos) << msg;
      EXPECT_NE(msg.find("row 3"), std::string::npos) << msg;
      EXPECT_NE(msg.find("non-finite gradient"), std::string::npos) << msg;
    }
  }
}

TEST(PairsCheck, NamesSourcePairAndPieces) {
  Tokenizer tok = Tokenizer::load_dir(model_src());
  std::vector<PromptPair> pairs = {PromptPair::text("The goal is x. The answer is:", "The goal is y. The answer is:", "short", "long"),
                                   PromptPair::text("a", "b", "short", "longest-ever")};
  try {
    check_pairs(pairs, tok, 128, "mine.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("mine.json: pair 1: \"corrupted.answer\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("longest-ever"), std::string::npos) << msg;
  }
  pairs.pop_back();
  EXPECT_NO_THROW(check_pairs(pairs, tok, 128, "mine.json"));
  EXPECT_THROW(check_pairs(pairs, tok, 5, "mine.json"), Error);
}

// Hostile nesting (found by fuzzing): error messages must not recurse into the value
// (nlohmann's dump() and copy do), or a file nested a million levels deep overflows the stack.
TEST(HostileJson, DeepNestingIsAnErrorNotACrash) {
  const int n = 1000000;
  const std::string deep = std::string(n, '[') + std::string(n, ']');
  const std::string dir = test::temp_dir("deep-json");
  {
    const std::string h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[" + deep + "],\"data_offsets\":[0,0]}}";
    std::string b(8, '\0');
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((uint64_t(h.size()) >> (8 * i)) & 0xff);
    spit(dir + "/deep.safetensors", b + h);
    EXPECT_THROW(SafeTensors::open_file(dir + "/deep.safetensors"), Error);
  }
  {
    const std::string h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" + deep + "}}";
    std::string b(8, '\0');
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((uint64_t(h.size()) >> (8 * i)) & 0xff);
    spit(dir + "/deep2.safetensors", b + h);
    EXPECT_THROW(SafeTensors::open_file(dir + "/deep2.safetensors"), Error);
  }
  std::string cfg = slurp(model_src() + "/config.json");
  const std::string base = cfg.substr(0, cfg.rfind('}'));
  EXPECT_THROW(parse_config_json(base + ", \"eos_token_id\": [" + deep + "]}"), Error);
  EXPECT_THROW(parse_config_json(base + ", \"architectures\": [" + deep + "]}"), Error);
  {
    json j = json::parse(cfg);
    j.erase("rope_scaling");
    std::string t = j.dump();
    t = t.substr(0, t.rfind('}')) + ", \"rope_scaling\": {\"rope_type\": " + deep + "}}";
    EXPECT_THROW(parse_config_json(t), Error);
  }
  EXPECT_THROW(parse_pairs("[" + deep + "]", "deep.json"), Error);
  EXPECT_THROW(parse_pairs("[{\"clean\": " + deep + "}]", "deep.json"), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace phi3
