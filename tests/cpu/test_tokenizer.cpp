// Tokenizer: the real Phi-3 vocabulary (tokenizer.model in the shared reference folder, read in
// place) against the ids in FACTS.md and all test vectors of llama.cpp's
// ggml-vocab-phi-3.gguf.inp/.out (made with the HF Phi-3 tokenizer); added tokens; answers;
// load errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/tokenizer.h"
#include "runtime/tokenizer_model.h"
#include "test_util.h"

namespace phi3 {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

const char kSeed1[] =
    "The goal is to make one cup of cappuccino. Is this a short-term or long-term goal? The answer is:";
const char kSeed2[] =
    "The goal is to become a future president. Is this a short-term or long-term goal? The answer is:";
const std::vector<int> kSeed1Ids = {450, 7306, 338,  304,   1207,  697, 18002, 310,  274,  932,
                                    29884, 617, 1789, 29889, 1317, 445, 263,   3273, 29899, 8489,
                                    470, 1472, 29899, 8489, 7306, 29973, 450,  1234, 338,  29901};
const std::vector<int> kSeed2Ids = {450,  7306, 338,  304,   4953, 263,  5434, 6673,  29889,
                                    1317, 445,  263,  3273,  29899, 8489, 470, 1472,  29899,
                                    8489, 7306, 29973, 450,  1234, 338,   29901};

std::string model_path() { return path_join(test::shared_reference_dir(), "tokenizer.model"); }

// Skips the test (with the reason) when the reference tokenizer is absent.
#define REQUIRE_PHI3_TOKENIZER()                                                                   \
  do {                                                                                             \
    if (!file_exists(model_path()))                                                                \
      GTEST_SKIP() << "no Phi-3 tokenizer at " << model_path() << " (see shared/phi3-reference)"; \
  } while (0)

using test::error_of;

TEST(Tokenizer, Phi3Basics) {
  REQUIRE_PHI3_TOKENIZER();
  Tokenizer t = Tokenizer::load_model_file(model_path());
  EXPECT_EQ(t.piece_count(), 32000);
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.piece(0), "<unk>");
  EXPECT_EQ(t.piece(1), "<s>");
  EXPECT_EQ(t.piece(3273), "\xe2\x96\x81short");
  EXPECT_EQ(t.piece(1472), "\xe2\x96\x81long");
  EXPECT_EQ(t.piece(29871), "\xe2\x96\x81");
  EXPECT_EQ(t.piece(13), "<0x0A>");
  EXPECT_THAT(error_of([&] { t.piece(32000); }), HasSubstr("token id 32000 is not in the vocabulary"));
  EXPECT_THAT(error_of([&] { t.piece(-1); }), HasSubstr("token id -1"));
}

TEST(Tokenizer, Phi3FactsEncodings) {
  REQUIRE_PHI3_TOKENIZER();
  Tokenizer t = Tokenizer::load_model_file(model_path());
  EXPECT_EQ(t.encode(kSeed1, false), kSeed1Ids);
  EXPECT_EQ(t.encode(kSeed2, false), kSeed2Ids);
  std::vector<int> bos1 = {1};
  bos1.insert(bos1.end(), kSeed1Ids.begin(), kSeed1Ids.end());
  EXPECT_EQ(t.encode(kSeed1, true), bos1);
  EXPECT_THAT(t.encode("short", false), ElementsAre(3273));
  EXPECT_THAT(t.encode("long", false), ElementsAre(1472));
  EXPECT_THAT(t.encode("short", true), ElementsAre(1, 3273));
  EXPECT_THAT(t.encode("The answer is: short", false), ElementsAre(450, 1234, 338, 29901, 3273));
  EXPECT_THAT(t.encode("The answer is: long", false), ElementsAre(450, 1234, 338, 29901, 1472));
  EXPECT_THAT(t.encode(" short", false), ElementsAre(29871, 3273));
  EXPECT_THAT(t.encode("Short", false), ElementsAre(13899));
  EXPECT_THAT(t.encode("Long", false), ElementsAre(6242));
  EXPECT_THAT(t.encode("short-term", false), ElementsAre(3273, 29899, 8489));
  EXPECT_TRUE(t.encode("", false).empty());
  EXPECT_THAT(t.encode("", true), ElementsAre(1));
  // dotnet/machinelearning's Phi-3 tokenizer test sentence (its leading BOS dropped)
  EXPECT_THAT(t.encode("Can you provide ways to eat combinations of bananas and dragonfruits?", false),
              ElementsAreArray({1815, 366, 3867, 5837, 304, 17545, 18240, 310, 9892, 16397, 322, 8338, 265, 29888,
                                21211, 29973}));

  EXPECT_EQ(t.decode(kSeed1Ids), kSeed1);
  EXPECT_EQ(t.decode(bos1), kSeed1);  // BOS is not text
  EXPECT_EQ(t.decode({3273, 1472}), "short long");
  EXPECT_EQ(t.decode({29871, 3273}), " short");
}

TEST(Tokenizer, Phi3AnswerTokens) {
  REQUIRE_PHI3_TOKENIZER();
  Tokenizer t = Tokenizer::load_model_file(model_path());
  EXPECT_EQ(t.answer_token("short"), 3273);
  EXPECT_EQ(t.answer_token("long"), 1472);
  EXPECT_EQ(t.answer_token(" short"), 3273);  // TransformerLens-style leading space
  EXPECT_THAT(error_of([&] { t.answer_token("short-term"); }),
              HasSubstr("answer 'short-term' is not a single token: it becomes [\xe2\x96\x81short, -, term]"));
  EXPECT_THAT(error_of([&] { t.answer_token(""); }), HasSubstr("answer '' is empty"));
}

// llama.cpp's test-tokenizer-0 format: cases separated by "\n__ggml_vocab_test__\n" (the
// text of a case is everything between separators, newlines included); line k of .out is
// the ids of case k, without BOS.
struct VocabCase {
  std::string text;
  std::vector<int> ids;
};

std::vector<VocabCase> read_vocab_cases(const std::string& stem) {
  const std::string raw = read_text_file(stem + ".inp", "vocab test inputs");
  std::vector<std::string> lines;
  {
    std::istringstream out(read_text_file(stem + ".out", "vocab test outputs"));
    for (std::string line; std::getline(out, line);) lines.push_back(line);
  }
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < raw.size();) {
    size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(raw.substr(pos));
      break;
    }
    inputs.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  EXPECT_EQ(inputs.size(), lines.size()) << "cases in .inp vs lines in .out";
  std::vector<VocabCase> cases;
  for (size_t i = 0; i < inputs.size() && i < lines.size(); ++i) {
    VocabCase c{inputs[i], {}};
    std::istringstream ids(lines[i]);
    for (int id; ids >> id;) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  return cases;
}

TEST(Tokenizer, Phi3GgmlVocabTestVectors) {
  REQUIRE_PHI3_TOKENIZER();
  const std::string stem = path_join(test::shared_reference_dir(), "ggml-vocab-phi-3.gguf");
  if (!file_exists(stem + ".inp") || !file_exists(stem + ".out"))
    GTEST_SKIP() << "no llama.cpp vocab test vectors at " << stem << ".inp/.out";
  Tokenizer t = Tokenizer::load_model_file(model_path());
  std::vector<VocabCase> cases = read_vocab_cases(stem);
  ASSERT_EQ(cases.size(), 46u);
  int empty_cases = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(t.encode(cases[i].text, false), cases[i].ids) << "case " << i << ": \"" << cases[i].text << "\"";
    empty_cases += cases[i].text.empty();
  }
  EXPECT_EQ(empty_cases, 1);
  // A few cases spelled out, to show how the file was read.
  EXPECT_EQ(cases[3].text, " ");
  EXPECT_THAT(cases[3].ids, ElementsAre(259));  // "▁▁": dummy prefix + the space
  EXPECT_EQ(cases[9].text, "\n\n\n");
  EXPECT_THAT(cases[9].ids, ElementsAre(29871, 13, 13, 13));
  EXPECT_EQ(cases[12].text, " Hello world");
  EXPECT_THAT(cases[12].ids, ElementsAre(29871, 15043, 3186));
}

// A tokenizer directory made of the real model plus our own added_tokens.json.
class AddedTokens : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!file_exists(model_path()))
      GTEST_SKIP() << "no Phi-3 tokenizer at " << model_path() << " (see shared/phi3-reference)";
    dir_ = test::temp_dir("tokenizer-added");
    std::ifstream in(model_path(), std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    write_file_atomic(path_join(dir_, "tokenizer.model"), ss.str());
  }
  void TearDown() override {
    if (!dir_.empty() && !HasFailure()) std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(AddedTokens, FromAddedTokensJson) {
  write_file_atomic(path_join(dir_, "added_tokens.json"),
                    R"({"<|endoftext|>": 32000, "<|assistant|>": 32001, "<|end|>": 32007, "<|user|>": 32010,
                        "<|end|>x": 32011})");
  Tokenizer t = Tokenizer::load_dir(dir_);
  EXPECT_EQ(t.added_tokens().size(), 5u);
  EXPECT_EQ(t.vocab_size(), 32012);
  EXPECT_EQ(t.piece(32007), "<|end|>");
  // Split out before SentencePiece; the dummy prefix only at the very start of the text.
  EXPECT_THAT(t.encode("Hello<|end|>world", false), ElementsAre(15043, 32007, 11526));
  EXPECT_THAT(t.encode("<|end|>short", false), ElementsAre(32007, 12759));
  EXPECT_THAT(t.encode("<|end|> short", false), ElementsAre(32007, 3273));
  EXPECT_THAT(t.encode("short<|end|>", true), ElementsAre(1, 3273, 32007));
  EXPECT_THAT(t.encode("<|user|>\nCount to 3<|end|>\n<|assistant|>", false),
              ElementsAre(32010, 13, 3981, 304, 29871, 29941, 32007, 13, 32001));
  EXPECT_THAT(t.encode("a<|end|><|user|>b<|endoftext|>", false), ElementsAre(263, 32007, 32010, 29890, 32000));
  // Longest match first: "<|end|>x" is its own token.
  EXPECT_THAT(t.encode("<|end|>x<|end|>", false), ElementsAre(32011, 32007));
  // Without the added tokens the same text is plain SentencePiece text.
  Tokenizer plain = Tokenizer::load_model_file(path_join(dir_, "tokenizer.model"));
  EXPECT_GT(plain.encode("<|end|>", false).size(), 1u);

  EXPECT_EQ(t.decode({15043, 32007, 11526}), "Hello<|end|>world");
  EXPECT_EQ(t.decode({32010, 13, 3981}), "<|user|>\nCount");
  EXPECT_EQ(t.answer_token("<|end|>"), 32007);
  EXPECT_THAT(error_of([&] { t.decode({32050}); }), HasSubstr("cannot decode token id 32050"));
}

TEST_F(AddedTokens, FromTokenizerJsonWithStripFlags) {
  write_file_atomic(path_join(dir_, "tokenizer.json"), R"({"version": "1.0", "added_tokens": [
      {"id": 0, "content": "<unk>", "special": true},
      {"id": 1, "content": "<s>", "special": true},
      {"id": 32000, "content": "<|endoftext|>", "lstrip": false, "rstrip": false, "special": true},
      {"id": 32007, "content": "<|end|>", "lstrip": false, "rstrip": true, "special": true},
      {"id": 32010, "content": "<|user|>", "lstrip": true, "rstrip": true, "special": true}]})");
  Tokenizer t = Tokenizer::load_dir(dir_);
  EXPECT_EQ(t.added_tokens().at("<|end|>"), 32007);
  EXPECT_EQ(t.vocab_size(), 32011);
  // rstrip eats the whitespace after the token, lstrip the whitespace before it.
  EXPECT_THAT(t.encode("Hi<|end|>\n  there", false), ElementsAre(6324, 32007, 12711));
  EXPECT_THAT(t.encode("Hi  <|user|> there", false), ElementsAre(6324, 32010, 12711));
  EXPECT_THAT(t.encode("<s>short", false), ElementsAre(1, 12759));
  EXPECT_THAT(t.encode("<|endoftext|> short", false), ElementsAre(32000, 3273));
}

TEST_F(AddedTokens, AddedTokensJsonWinsOverTokenizerJson) {
  write_file_atomic(path_join(dir_, "added_tokens.json"), R"({"<|end|>": 32007})");
  write_file_atomic(path_join(dir_, "tokenizer.json"), R"({"added_tokens": [{"id": 32001, "content": "<|a|>"}]})");
  Tokenizer t = Tokenizer::load_dir(dir_);
  EXPECT_EQ(t.added_tokens().size(), 1u);
  EXPECT_EQ(t.added_tokens().count("<|end|>"), 1u);
}

TEST_F(AddedTokens, BadAddedTokens) {
  const std::string p = path_join(dir_, "added_tokens.json");
  auto load_error = [&](const std::string& text) {
    write_file_atomic(p, text);
    return error_of([&] { Tokenizer::load_dir(dir_); });
  };
  EXPECT_THAT(load_error("{oops"), HasSubstr(p + ": not valid JSON"));
  EXPECT_THAT(load_error("[1]"), HasSubstr(p + ": expected an object"));
  EXPECT_THAT(load_error(R"({"<|end|>": "32007"})"),
              HasSubstr(p + ": added token '<|end|>': id must be a non-negative integer, got \"32007\""));
  EXPECT_THAT(load_error(R"({"<|end|>": -3})"), HasSubstr("id must be a non-negative integer"));
  EXPECT_THAT(load_error(R"({"<|a|>": 32001, "<|b|>": 32001})"),
              HasSubstr("added token '<|b|>': id 32001 is also given to '<|a|>'"));
  EXPECT_THAT(load_error(R"({"<|end|>": 5})"), HasSubstr("added token '<|end|>': id 5 is already SentencePiece piece"));
  EXPECT_THAT(load_error(R"({"": 32001})"), HasSubstr("has empty content"));
  std::remove(p.c_str());
  write_file_atomic(path_join(dir_, "tokenizer.json"), R"({"added_tokens": [{"content": "<|a|>"}]})");
  EXPECT_THAT(error_of([&] { Tokenizer::load_dir(dir_); }),
              HasSubstr("tokenizer.json: added_tokens[0] ('<|a|>'): 'id' must be a non-negative integer"));
}

TEST(Tokenizer, LoadErrors) {
  const std::string dir = test::temp_dir("tokenizer-errors");
  const std::string missing = path_join(dir, "tokenizer.model");
  EXPECT_THAT(error_of([&] { Tokenizer::load_model_file(missing); }),
              HasSubstr("tokenizer model '" + missing + "' does not exist"));
  EXPECT_THAT(error_of([&] { Tokenizer::load_dir(dir); }),
              HasSubstr("'" + dir + "' has no tokenizer: expected tokenizer.model (SentencePiece: Phi-3, Phi-3.5, Mistral, Gemma 2 and 3) or "
                        "tokenizer.json (byte-level BPE: Phi-4, Qwen2/2.5, Qwen3, Llama 3.x, GPT-2, OLMoE; "
                        "SentencePiece-style BPE: Gemma 3, Mistral / Mixtral)"));
  EXPECT_THAT(error_of([&] { Tokenizer::load_dir(path_join(dir, "nope")); }),
              HasSubstr("tokenizer directory '" + path_join(dir, "nope") + "' does not exist"));
  write_file_atomic(missing, "this is not a protobuf at all, just some text\n");
  EXPECT_THAT(error_of([&] { Tokenizer::load_model_file(missing); }),
              HasSubstr("tokenizer model '" + missing + "' is not a SentencePiece model"));
  write_file_atomic(missing, "");
  EXPECT_THAT(error_of([&] { Tokenizer::load_model_file(missing); }), HasSubstr("tokenizer model '" + missing + "'"));
  EXPECT_THAT(error_of([&] { Tokenizer::load_model_file(dir); }), HasSubstr("is a directory"));

  Tokenizer empty;
  EXPECT_THAT(error_of([&] { empty.encode("x", false); }), HasSubstr("no model loaded"));
}

// Gemma's layout (tools/make_sp_tokenizers.py: SentencePiece BPE with byte fallback, digits
// split, no dummy prefix, white space kept, <bos> = 2 added by tokenizer_config.json): the ids
// and text of every string of the 2,400-string corpus equal SentencePiece's, which are also
// transformers' GemmaTokenizer's (the generator checked: hf_agrees).
TEST(Tokenizer, GemmaLayoutEqualsSentencePieceAndTransformers) {
  const std::string dir = test::source_dir() + "/tests/data/sp/gemma";
  Tokenizer tok = Tokenizer::load_dir(dir);
  EXPECT_EQ(tok.kind(), "SentencePiece");
  const auto corpus =
      nlohmann::json::parse(read_text_file(test::source_dir() + "/tests/data/bpe/corpus.json", "corpus"))["texts"];
  const auto want =
      nlohmann::json::parse(read_text_file(test::source_dir() + "/tests/data/sp/expected.json", "expected"))["gemma"];
  ASSERT_TRUE(want["hf_agrees"].get<bool>());
  ASSERT_EQ(want["ids"].size(), corpus.size());
  int id_bad = 0, text_bad = 0;
  size_t tokens = 0, byte_pieces = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string text = corpus[i].get<std::string>();
    const std::vector<int> ids = tok.encode(text, false), ref = want["ids"][i].get<std::vector<int>>();
    tokens += ids.size();
    for (int id : ids) byte_pieces += tok.piece(id).rfind("<0x", 0) == 0;
    if (ids != ref && ++id_bad <= 5) ADD_FAILURE() << "text " << i << " '" << text << "': ids differ";
    const std::string dec_ref = want["decoded"][i].is_null() ? text : want["decoded"][i].get<std::string>();
    if (tok.decode(ref) != dec_ref && ++text_bad <= 5) ADD_FAILURE() << "text " << i << ": decoded '" << tok.decode(ref) << "'";
  }
  EXPECT_EQ(id_bad, 0);
  EXPECT_EQ(text_bad, 0);
  EXPECT_GT(tokens, 40000u);
  EXPECT_GT(byte_pieces, 100u);  // the byte fallback is exercised (CJK, emoji outside the vocabulary)
  EXPECT_TRUE(tok.bos_by_default());
  EXPECT_EQ(tok.encode("Hello", true), want["bos_ids"].get<std::vector<int>>());  // [<bos> = 2, Hello]
  EXPECT_EQ(tok.piece(tok.encode("short", false)[0]).rfind("\xE2\x96\x81", 0), std::string::npos)
      << "no dummy prefix in Gemma's layout";
}

// ---- a SentencePiece model written by hand (ModelProto wire format) ----
void put_varint(std::string* s, uint64_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    s->push_back(static_cast<char>(v ? (b | 0x80) : b));
  } while (v);
}
void put_bytes(std::string* s, int field, const std::string& bytes) {
  put_varint(s, (uint64_t(field) << 3) | 2);
  put_varint(s, bytes.size());
  *s += bytes;
}
void put_int(std::string* s, int field, uint64_t v) {
  put_varint(s, uint64_t(field) << 3);
  put_varint(s, v);
}

// A unigram model over `pieces` (<unk>, <s>, </s> first) whose vocabulary holds both "short"
// (word-internal) and "▁short" (word start), with SentencePiece's normalizer flags as given.
std::string hand_sp_model(bool add_dummy_prefix) {
  const std::string S = "\xE2\x96\x81";  // ▁
  struct P {
    std::string piece;
    float score;
    int type;  // 1 normal, 2 unknown, 3 control
  };
  const std::vector<P> pieces = {{"<unk>", 0, 2}, {"<s>", 0, 3},       {"</s>", 0, 3},       {S, -3, 1},
                                 {"s", -8, 1},    {"h", -8, 1},        {"o", -8, 1},         {"r", -8, 1},
                                 {"t", -8, 1},    {"l", -8, 1},        {"n", -8, 1},         {"g", -8, 1},
                                 {"sh", -4, 1},   {"ort", -4, 1},      {"short", -2, 1},     {S + "short", -2, 1},
                                 {"long", -2, 1}, {S + "long", -2, 1}, {"The", -2, 1},       {S + "answer", -2, 1}};
  std::string model;
  for (const P& p : pieces) {
    std::string m;
    put_bytes(&m, 1, p.piece);
    uint32_t bits;
    std::memcpy(&bits, &p.score, 4);
    put_varint(&m, (2u << 3) | 5);
    for (int k = 0; k < 4; ++k) m.push_back(static_cast<char>((bits >> (8 * k)) & 0xff));
    put_int(&m, 3, static_cast<uint64_t>(p.type));
    put_bytes(&model, 1, m);
  }
  std::string trainer;
  put_int(&trainer, 3, 1);  // model_type UNIGRAM
  put_bytes(&model, 2, trainer);
  std::string norm;
  put_bytes(&norm, 1, "identity");
  put_int(&norm, 3, add_dummy_prefix);
  put_int(&norm, 4, 0);  // remove_extra_whitespaces off (Gemma)
  put_int(&norm, 5, 1);  // escape_whitespaces: " " -> ▁
  put_bytes(&model, 3, norm);
  return model;
}

// Issue 30 item 7: without a dummy prefix (Gemma's layout) "short" alone is the word-internal
// piece, but an answer is the word after a space, whose token is ▁short — as with the prefix
// (Llama, Phi-3) and in byte-level BPE (Ġshort).
TEST(Tokenizer, AnswerIsTheWordAfterASpaceWithAndWithoutDummyPrefix) {
  const std::string S = "\xE2\x96\x81";
  for (bool prefix : {false, true}) {
    SCOPED_TRACE(prefix ? "add_dummy_prefix on" : "add_dummy_prefix off (Gemma)");
    const std::string dir = test::temp_dir(prefix ? "sp-prefix" : "sp-noprefix");
    const std::string path = dir + "/tokenizer.model";
    {
      std::ofstream f(path, std::ios::binary);
      f << hand_sp_model(prefix);
    }
    Tokenizer tok = Tokenizer::load_model_file(path);
    const int word_start = tok.model().piece_id(S + "short"), inside = tok.model().piece_id("short");
    ASSERT_GE(word_start, 0);
    ASSERT_GE(inside, 0);
    ASSERT_NE(word_start, inside);
    // The vocabulary tells the two apart in running text.
    if (prefix) {
      EXPECT_EQ(tok.encode("short", false), std::vector<int>{word_start});
    } else {
      EXPECT_EQ(tok.encode("short", false), std::vector<int>{inside}) << "no dummy prefix: the bare word";
      EXPECT_EQ(tok.encode(" short", false), std::vector<int>{word_start});
    }
    EXPECT_EQ(tok.answer_token("short"), word_start);
    EXPECT_EQ(tok.answer_token(" short"), word_start);  // TransformerLens' leading space: the same
    EXPECT_EQ(tok.answer_tokens("short"), std::vector<int>{word_start});
    EXPECT_EQ(tok.answer_token("long"), tok.model().piece_id(S + "long"));
    EXPECT_EQ(tok.piece(tok.answer_token("answer")), S + "answer");
  }
}

// The committed Gemma-layout tokenizer (no dummy prefix): every answer id is a word-start piece.
TEST(Tokenizer, GemmaLayoutAnswersStartWithTheSpaceMark) {
  Tokenizer tok = Tokenizer::load_dir(test::source_dir() + "/tests/data/sp/gemma");
  for (const char* w : {"short", "long", "the", "answer"}) {
    const std::vector<int> ids = tok.answer_tokens(w);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(tok.piece(ids[0]).rfind("\xE2\x96\x81", 0), 0u) << w << " -> " << tok.piece(ids[0]);
    EXPECT_EQ(ids, tok.encode(std::string(" ") + w, false)) << w;
  }
}

}  // namespace
}  // namespace phi3
