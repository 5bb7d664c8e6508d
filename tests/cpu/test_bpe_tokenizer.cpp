// BPE tokenizers (tokenizer.json): the test tokenizers of tests/data/bpe in the byte-level
// layouts of Phi-4, Phi-4-mini, GPT-2, Qwen2, Llama 3 and OLMoE and the SentencePiece-style ones of
// Gemma 3 and Mistral / Mixtral (made by tools/make_bpe_tokenizers.py) against the ids and decoded
// strings Hugging Face `tokenizers` gave for every text of the 2,400-string corpus (and the new
// layouts' texts around their added tokens);
// BOS rules; the Split behaviors; UTF-8 errors; long words; load errors naming the field.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/bpe_model.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/tokenizer.h"
#include "runtime/unicode_regex.h"
#include "runtime/utf8.h"
#include "test_util.h"

namespace phi3 {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using test::error_of;

std::string bpe_dir(const std::string& layout) { return test::source_dir() + "/tests/data/bpe/" + layout; }

const json& corpus() {
  static const json j = json::parse(read_text_file(test::source_dir() + "/tests/data/bpe/corpus.json", "corpus"));
  return j;
}
const json& expected() {
  static const json j = json::parse(read_text_file(test::source_dir() + "/tests/data/bpe/expected.json", "expected"));
  return j;
}

std::string show(const std::vector<int>& ids) {
  std::string s;
  for (int id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return "[" + s + "]";
}

class BpeCorpus : public ::testing::TestWithParam<std::string> {};

TEST_P(BpeCorpus, EqualsHuggingFaceOnEveryText) {
  const std::string layout = GetParam();
  Tokenizer tok = Tokenizer::load_dir(bpe_dir(layout));
  const bool sp = layout == "gemma3" || layout.rfind("mistral", 0) == 0 || layout == "metaspace";
  EXPECT_EQ(tok.kind(), sp ? "SentencePiece-style BPE" : "byte-level BPE");
  const json& want = expected()[layout];
  json texts = corpus()["texts"];
  ASSERT_GE(texts.size(), 2000u);
  if (want.contains("extra_texts"))
    for (const json& t : want["extra_texts"]) texts.push_back(t);
  ASSERT_EQ(want["ids"].size(), texts.size());
  EXPECT_EQ(tok.vocab_size(), want["vocab_size"].get<int>());
  int id_mismatches = 0, text_mismatches = 0;
  size_t tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    const std::vector<int> ids = tok.encode(text, false);
    const std::vector<int> ref = want["ids"][i].get<std::vector<int>>();
    tokens += ids.size();
    if (ids != ref && ++id_mismatches <= 5)
      ADD_FAILURE() << layout << " text " << i << " '" << text << "': ids " << show(ids) << ", Hugging Face "
                    << show(ref);
    const std::string dec = tok.decode(ref);
    const std::string dec_ref = want["decoded"][i].is_null() ? text : want["decoded"][i].get<std::string>();
    if (dec != dec_ref && ++text_mismatches <= 5)
      ADD_FAILURE() << layout << " text " << i << ": decoded '" << dec << "', Hugging Face '" << dec_ref << "'";
  }
  EXPECT_EQ(id_mismatches, 0) << "of " << texts.size() << " texts";
  EXPECT_EQ(text_mismatches, 0) << "of " << texts.size() << " texts";
  EXPECT_GT(tokens, 40000u);  // the corpus is not trivially short
}

INSTANTIATE_TEST_SUITE_P(Layouts, BpeCorpus,
                         ::testing::Values("phi-4", "phi-4-mini", "gpt2", "gpt2-prefix", "qwen2", "llama3", "olmoe",
                                           "gemma3", "mistral", "mistral-v3", "metaspace"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(BpeTokenizer, BosFollowsTheTokenizerConfig) {
  // Phi-4: bos_token named, no add_bos_token (GPT2Tokenizer's default: none).
  Tokenizer phi4 = Tokenizer::load_dir(bpe_dir("phi-4"));
  EXPECT_FALSE(phi4.bos_by_default());
  EXPECT_EQ(phi4.piece(phi4.bos_id()), "<|endoftext|>");
  EXPECT_EQ(phi4.encode("Hello", true).front(), phi4.bos_id());
  EXPECT_EQ(phi4.encode("Hello", false), expected()["phi-4"]["bos_ids"].get<std::vector<int>>());
  // Phi-4-mini: add_bos_token false.
  Tokenizer mini = Tokenizer::load_dir(bpe_dir("phi-4-mini"));
  EXPECT_FALSE(mini.bos_by_default());
  EXPECT_EQ(mini.piece(mini.bos_id()), "<|endoftext|>");
  // A TemplateProcessing post-processor that starts with a special token: BOS by default.
  Tokenizer pre = Tokenizer::load_dir(bpe_dir("gpt2-prefix"));
  EXPECT_TRUE(pre.bos_by_default());
  EXPECT_EQ(pre.encode("Hello", true), expected()["gpt2-prefix"]["bos_ids"].get<std::vector<int>>());
  // Without tokenizer_config.json and with a ByteLevel post-processor: no BOS token at all.
  Tokenizer bare = Tokenizer::load_tokenizer_json_file(bpe_dir("gpt2") + "/tokenizer.json");
  EXPECT_FALSE(bare.bos_by_default());
  EXPECT_EQ(bare.bos_id(), -1);
  EXPECT_THAT(error_of([&] { bare.encode("Hello", true); }), HasSubstr("has no BOS token (use --no-bos)"));
}

// SentencePiece-style tokenizer.json: the answer is the "▁word" pieces whichever way the file
// marks a word start (Gemma's Replace only: from " word"; Mistral's Prepend normalizer and
// v3's Metaspace prefix: from "word" itself), BOS from the TemplateProcessing, and a character
// outside the vocabulary as its <0xNN> byte pieces.
TEST(BpeTokenizer, SentencePieceStyleAnswersBosAndByteFallback) {
  for (const char* layout : {"gemma3", "mistral", "mistral-v3"}) {
    SCOPED_TRACE(layout);
    Tokenizer tok = Tokenizer::load_dir(bpe_dir(layout));
    const std::vector<int> ids = tok.answer_tokens("short");
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(tok.piece(ids[0]).rfind("\u2581", 0), 0u) << tok.piece(ids[0]);  // starts with "▁"
    EXPECT_EQ(tok.answer_tokens(" short"), ids);
    std::string joined;
    for (int id : ids) joined += tok.piece(id);
    EXPECT_EQ(joined, "\u2581short");
    EXPECT_TRUE(tok.bos_by_default());
    EXPECT_EQ(tok.encode("Hello", true), expected()[layout]["bos_ids"].get<std::vector<int>>());
    // "ꙮ" is past the trained alphabet: its three UTF-8 bytes, and back.
    const std::vector<int> odd = tok.encode("\xea\x99\xae", false);
    std::string pieces;
    for (int id : odd) pieces += tok.piece(id);
    EXPECT_THAT(pieces, HasSubstr("<0xEA><0x99><0xAE>"));
    EXPECT_THAT(tok.decode(odd), HasSubstr("\xea\x99\xae"));
  }
}

TEST(BpeTokenizer, AnswersAreWordsAfterASpace) {
  Tokenizer tok = Tokenizer::load_dir(bpe_dir("phi-4"));
  const std::vector<int> with_space = tok.encode(" short", false);
  EXPECT_EQ(tok.answer_tokens("short"), with_space);
  EXPECT_EQ(tok.answer_tokens(" short"), with_space);
  ASSERT_EQ(with_space.size(), 1u) << "the test vocabulary learned ' short' from the temporal prompts";
  EXPECT_EQ(tok.piece(with_space[0]), "\xc4\xa0short");  // "Ġshort"
  EXPECT_EQ(tok.answer_token("short"), with_space[0]);
  EXPECT_EQ(tok.label(with_space[0]), " short");  // reports show the decoded text
  EXPECT_EQ(tok.label(tok.added_tokens().at("<|im_end|>")), "<|im_end|>");
  EXPECT_EQ(tok.label(999999), "<id 999999>");
  EXPECT_THAT(error_of([&] { tok.answer_token("cappuccinoesque"); }),
              HasSubstr("answer 'cappuccinoesque' is not a single token: it becomes ["));
}

TEST(BpeTokenizer, AddedTokensStripUnicodeWhiteSpaceWhereFlagged) {
  // Phi-4's added tokens have lstrip and rstrip: the white space around them (NBSP and
  // ideographic space included) is part of the token, as in Hugging Face.
  Tokenizer tok = Tokenizer::load_dir(bpe_dir("phi-4"));
  const int im_end = tok.added_tokens().at("<|im_end|>");
  EXPECT_EQ(tok.encode("a \xc2\xa0<|im_end|>\xe3\x80\x80 b", false), tok.encode("a<|im_end|>b", false));
  EXPECT_THAT(tok.encode("<|im_end|>", false), ElementsAre(im_end));
  // Phi-4-mini's <|endoftext|> has neither flag: the spaces stay text.
  Tokenizer mini = Tokenizer::load_dir(bpe_dir("phi-4-mini"));
  EXPECT_NE(mini.encode("a <|endoftext|> b", false), mini.encode("a<|endoftext|>b", false));
}

TEST(BpeTokenizer, InvalidUtf8IsAClearError) {
  Tokenizer tok = Tokenizer::load_dir(bpe_dir("phi-4-mini"));
  EXPECT_THAT(error_of([&] { tok.encode("ok \xff", false); }),
              HasSubstr("the text is not valid UTF-8: byte 0xFF at offset 3"));
  EXPECT_THAT(error_of([&] { tok.encode("abc\xe2\x82", false); }), HasSubstr("byte 0xE2 at offset 3"));  // cut short
  EXPECT_THAT(error_of([&] { tok.encode("\xc0\xaf", false); }), HasSubstr("byte 0xC0 at offset 0"));  // overlong
  EXPECT_THAT(error_of([&] { tok.encode("x\xed\xa0\x80", false); }), HasSubstr("offset 1"));     // surrogate
  EXPECT_THAT(error_of([&] { tok.encode("\x80", false); }), HasSubstr("byte 0x80 at offset 0"));  // continuation
  EXPECT_EQ(error_of([&] { tok.encode("caf\xc3\xa9 \xf0\x9f\x91\x8d", false); }), "");
}

TEST(BpeTokenizer, DecodeReplacesBrokenUtf8AsHuggingFace) {
  // A byte-level token can hold part of a character; decoding a cut sequence gives U+FFFD per
  // maximal invalid subpart (Rust's from_utf8_lossy).
  EXPECT_EQ(utf8_lossy("a\xe2\x82z"), "a\xef\xbf\xbdz");
  EXPECT_EQ(utf8_lossy("\xff\xfe"), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x91"), "\xef\xbf\xbd");
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // surrogate: 3 subparts
  Tokenizer tok = Tokenizer::load_dir(bpe_dir("gpt2"));
  const std::vector<int> ids = tok.encode("\xf0\x9f\xa6\xa9", false);  // 🦩, not in the training text
  ASSERT_GT(ids.size(), 1u);
  EXPECT_EQ(tok.decode(ids), "\xf0\x9f\xa6\xa9");
  EXPECT_EQ(tok.decode({ids[0]}), "\xef\xbf\xbd");
  EXPECT_EQ(tok.label(ids[0]).rfind("<0xF0>", 0), 0u) << tok.label(ids[0]);  // part of a character: its bytes
}

TEST(BpeTokenizer, SplitBehaviorsAsHuggingFace) {
  // Expected pieces from tokenizers.pre_tokenizers.Split(Regex("[a-z]"), behavior, invert).
  UnicodeRegex re("[a-z]", "test");
  using V = std::vector<std::string>;
  auto split = [&](const char* t, SplitBehavior b, bool inv) { return split_by_regex(t, re, b, inv); };
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kRemoved, false), (V{"12", "34"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kRemoved, true), (V{"a", "b", "c", "d"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kIsolated, false), (V{"a", "b", "12", "c", "d", "34"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kIsolated, true), (V{"a", "b", "12", "c", "d", "34"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kMergedWithPrevious, false), (V{"a", "b", "12c", "d", "34"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kMergedWithPrevious, true), (V{"a", "b12", "c", "d34"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kMergedWithNext, false), (V{"a", "b12", "c", "d34"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kMergedWithNext, true), (V{"a", "b", "12c", "d", "34"}));
  EXPECT_EQ(split("ab12cd34", SplitBehavior::kContiguous, false), (V{"ab", "12", "cd", "34"}));
  EXPECT_EQ(split("12ab", SplitBehavior::kMergedWithPrevious, false), (V{"12a", "b"}));
  EXPECT_EQ(split("12ab", SplitBehavior::kMergedWithNext, true), (V{"12a", "b"}));
  EXPECT_EQ(split("ab", SplitBehavior::kRemoved, false), V{});
  EXPECT_EQ(split("", SplitBehavior::kIsolated, false), V{});
}

TEST(BpeTokenizer, UnicodeClassesComeFromPcre2) {
  // \p{Lu} / \p{Ll} are case-sensitive classes; \s is Unicode White_Space (not U+180E or U+200B).
  UnicodeRegex upper("\\p{Lu}+", "test"), space("\\s+", "test"), number("\\p{N}{1,3}", "test");
  EXPECT_EQ(upper.find_all("abÉTÉxΣ"), (std::vector<std::pair<size_t, size_t>>{{2, 7}, {8, 10}}));
  EXPECT_EQ(space.find_all("a\xc2\xa0\xe3\x80\x80" "b\xe1\xa0\x8e" "c\xe2\x80\x8b"),
            (std::vector<std::pair<size_t, size_t>>{{1, 6}}));
  EXPECT_EQ(number.find_all("\xd9\xa3\xd9\xa4\xd9\xa5\xd9\xa6"), (std::vector<std::pair<size_t, size_t>>{{0, 6}, {6, 8}}));
  EXPECT_TRUE(is_unicode_white_space(0x3000));
  EXPECT_FALSE(is_unicode_white_space(0x200B));
  EXPECT_THAT(error_of([] { UnicodeRegex bad("(?<open", "tokenizer.json: pre_tokenizer"); }),
              HasSubstr("tokenizer.json: pre_tokenizer: cannot compile the regex '(?<open'"));
}

TEST(BpeTokenizer, LongWordsAreNotQuadratic) {
  // One 200,000-character word (no split point) and a 1 MB text: merging by rank with a heap
  // is O(n log n) per word; a quadratic merge would take minutes here.
  Tokenizer tok = Tokenizer::load_dir(bpe_dir("phi-4-mini"));
  std::string word, text;
  for (int i = 0; i < 50000; ++i) word += "goal";
  for (int i = 0; i < 20000; ++i) text += "The goal is to make one cup of coffee. ";
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int> a = tok.encode(word, false);
  const std::vector<int> b = tok.encode(text, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(tok.decode(a), word);
  EXPECT_EQ(tok.decode(b), text);
  EXPECT_LT(a.size(), word.size());  // merges happened
  EXPECT_EQ(tok.encode(text, false), b);  // the word cache gives the same ids
  EXPECT_LT(s, 20.0) << "encoding 1 MB took " << s << " s";
}

// Qwen2's NFC normalizer runs on the text between added tokens: a decomposed accent becomes
// the composed one's ids; Llama 3 starts with <|begin_of_text|> from its template, Qwen2 with
// nothing (its tokenizer_config.json has bos_token null).
TEST(BpeTokenizer, QwenNormalizesAndLlamaStartsWithBos) {
  Tokenizer qwen = Tokenizer::load_dir(bpe_dir("qwen2"));
  EXPECT_EQ(qwen.encode("Ame\u0301lie caf\u0065\u0301", false), qwen.encode("Am\u00e9lie caf\u00e9", false));
  EXPECT_EQ(qwen.encode("\u212b", false), qwen.encode("\u00c5", false)) << "the Angstrom sign is a singleton";
  EXPECT_NE(qwen.encode("\ufb01", false), qwen.encode("fi", false)) << "NFC keeps compatibility forms";
  EXPECT_EQ(qwen.decode(qwen.encode("Ame\u0301lie", false)), "Am\u00e9lie");
  EXPECT_FALSE(qwen.bos_by_default());
  EXPECT_LT(qwen.bos_id(), 0);
  Tokenizer llama = Tokenizer::load_dir(bpe_dir("llama3"));
  EXPECT_TRUE(llama.bos_by_default());
  const auto ids = llama.encode("Hello", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(llama.piece(ids[0]), "<|begin_of_text|>");
  EXPECT_EQ(ids, expected()["llama3"]["bos_ids"].get<std::vector<int>>());
  // Tokens are not normalized inside added tokens, which are matched first.
  EXPECT_EQ(qwen.encode("<|im_start|>e\u0301", false).front(), qwen.added_tokens().at("<|im_start|>"));
}

// ---- load errors ---------------------------------------------------------------------------

std::string with_edit(const std::string& tag, const std::function<void(json&)>& edit) {
  const std::string dir = test::temp_dir("bpe_" + tag);
  json j = json::parse(read_text_file(bpe_dir("gpt2") + "/tokenizer.json", "tokenizer.json"));
  edit(j);
  std::ofstream(dir + "/tokenizer.json") << j.dump();
  return dir;
}

TEST(BpeTokenizer, SingleWordAddedTokensAsHuggingFace) {
  // The GPT-2-layout test tokenizer with <|endoftext|> made single_word; ids from Hugging Face
  // tokenizers 0.23 on the same file. A word character (Unicode \w: letters, marks, decimal
  // digits, '_'; not '½' or '-') beside the token makes it text.
  const std::string dir = with_edit("single_word", [](json& j) { j["added_tokens"][0]["single_word"] = true; });
  Tokenizer tok = Tokenizer::load_dir(dir);
  const std::vector<int> as_text = {27, 91, 590, 67, 402, 766, 1334, 91, 29};
  auto text_after = [&](std::vector<int> head) {
    head.insert(head.end(), as_text.begin(), as_text.end());
    return head;
  };
  EXPECT_EQ(tok.encode("<|endoftext|>", false), (std::vector<int>{2048}));
  EXPECT_EQ(tok.encode(" <|endoftext|> ", false), (std::vector<int>{220, 2048, 220}));
  EXPECT_EQ(tok.encode("<|endoftext|><|endoftext|>", false), (std::vector<int>{2048, 2048}));
  EXPECT_EQ(tok.encode("a<|endoftext|>", false), text_after({64}));
  EXPECT_EQ(tok.encode("\u00e9<|endoftext|>", false), text_after({291}));
  EXPECT_EQ(tok.encode("\u0301<|endoftext|>", false), text_after({1202}));  // a combining mark
  EXPECT_EQ(tok.encode("\u216b<|endoftext|>", false), text_after({1611}));  // Ⅻ: a letter number
  EXPECT_EQ(tok.encode("\u00bd<|endoftext|>", false), (std::vector<int>{1773, 2048}));  // ½: not \w
  std::vector<int> dash = text_after({12});
  dash.push_back(87);
  EXPECT_EQ(tok.encode("-<|endoftext|>x", false), dash);
  std::vector<int> under = {87, 1651, 91, 590, 67, 402, 766, 1334, 91, 29, 62};
  EXPECT_EQ(tok.encode("x <|endoftext|>_", false), under);
}

TEST(BpeTokenizer, LoadErrorsNameTheField) {
  auto err = [](const std::string& tag, const std::function<void(json&)>& edit) {
    const std::string dir = with_edit(tag, edit);
    return error_of([&] { Tokenizer::load_dir(dir); });
  };
  EXPECT_THAT(err("lowercase", [](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }),
              HasSubstr("normalizer {\"type\":\"Lowercase\"} is not supported (NFC, NFD, NFKC, NFKD"));
  EXPECT_THAT(err("seq", [](json& j) {
                j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Strip"}}}}};
              }),
              HasSubstr("normalizer.normalizers[1]: normalizer {\"type\":\"Strip\"} is not supported"));
  EXPECT_THAT(err("regexreplace", [](json& j) {
                j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}};
              }),
              HasSubstr("Replace pattern {\"Regex\":\" +\"} is not supported (a non-empty {\"String\": ...}"));
  EXPECT_THAT(err("whitespace", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }),
              HasSubstr("pre-tokenizer type 'Whitespace' is not supported"));
  EXPECT_THAT(err("meta", [](json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}, {"prepend_scheme", "sometimes"}}; }),
              HasSubstr("Metaspace prepend_scheme \"sometimes\" is not always, first or never"));
  EXPECT_THAT(err("nobyte", [](json& j) { j["pre_tokenizer"] = nullptr; }),
              HasSubstr("pre_tokenizer has no ByteLevel step, but the decoder is ByteLevel"));
  EXPECT_THAT(err("fallback", [](json& j) { j["model"]["byte_fallback"] = true; }),
              HasSubstr("'byte_fallback' = true is not supported (byte-level BPE covers every byte already)"));
  EXPECT_THAT(err("spdecoder", [](json& j) {
                j["pre_tokenizer"] = {{"type", "Metaspace"}};
                j["decoder"] = {{"type", "WordPiece"}};
              }),
              HasSubstr("decoder {\"type\":\"WordPiece\"} is not supported (ByteLevel for byte-level BPE; Replace"));
  EXPECT_THAT(err("regex", [](json& j) {
                j["pre_tokenizer"] = {{"type", "Sequence"},
                                      {"pretokenizers",
                                       {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                                         {"behavior", "Isolated"}, {"invert", false}},
                                        {{"type", "ByteLevel"}}}}};
              }),
              HasSubstr("pre_tokenizer.pretokenizers[0] (Split): cannot compile the regex '(unclosed'"));
  EXPECT_THAT(err("behavior", [](json& j) {
                j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
              }),
              HasSubstr("unknown Split behavior 'Sideways'"));
  EXPECT_THAT(err("dropout", [](json& j) { j["model"]["dropout"] = 0.1; }),
              HasSubstr("model: 'dropout' = 0.1 is not supported"));
  EXPECT_THAT(err("merge", [](json& j) { j["model"]["merges"].push_back("Ġ zzzq"); }),
              HasSubstr("model.merges[1792]: 'zzzq' is not in the vocabulary"));
  EXPECT_THAT(err("merge2", [](json& j) { j["model"]["merges"].push_back("a b c"); }),
              HasSubstr("model.merges[1792]: 'a b c' is not two pieces separated by one space"));
  EXPECT_THAT(err("dupid", [](json& j) { j["model"]["vocab"]["zzzq"] = 5; }),
              HasSubstr("model.vocab: id 5 is given to both"));
  EXPECT_THAT(err("wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }),
              HasSubstr("model: type 'WordPiece' is not supported here"));
  EXPECT_THAT(err("decoder", [](json& j) { j["decoder"] = {{"type", "Metaspace"}}; }),
              HasSubstr("decoder {\"type\":\"Metaspace\"} is not supported"));
  EXPECT_THAT(err("added", [](json& j) { j["added_tokens"][0]["id"] = 5; }),
              HasSubstr("added token '<|endoftext|>': id 5 is already byte-level BPE piece"));
  EXPECT_THAT(err("notjson", [](json& j) { j = json::array(); }), HasSubstr("expected a JSON object"));
}

TEST(BpeTokenizer, ChoosesTheTokenizerFileOrSaysWhatIsMissing) {
  const std::string empty = test::temp_dir("bpe_none");
  EXPECT_THAT(error_of([&] { Tokenizer::load_dir(empty); }),
              HasSubstr("has no tokenizer: expected tokenizer.model (SentencePiece: Phi-3, Phi-3.5, Mistral, Gemma 2 and 3) or "
                        "tokenizer.json (byte-level BPE: Phi-4, Qwen2/2.5, Qwen3, Llama 3.x, GPT-2, OLMoE; "
                        "SentencePiece-style BPE: Gemma 3, Mistral / Mixtral)"));
  std::ofstream(empty + "/vocab.json") << "{}";
  std::ofstream(empty + "/merges.txt") << "";
  EXPECT_THAT(error_of([&] { Tokenizer::load_dir(empty); }), HasSubstr("it has vocab.json + merges.txt"));
  // SentencePiece wins where both files are there (the added tokens then come from tokenizer.json).
  EXPECT_EQ(Tokenizer::load_dir(test::source_dir() + "/data/models/tiny-temporal-phi3").kind(), "SentencePiece");
  const std::string bad = with_edit("badjson", [](json&) {});
  std::ofstream(bad + "/tokenizer.json") << "{\"model\": ";
  EXPECT_THAT(error_of([&] { Tokenizer::load_dir(bad); }), HasSubstr("tokenizer.json: not valid JSON"));
  const std::string cfg = with_edit("badcfg", [](json&) {});
  std::ofstream(cfg + "/tokenizer_config.json") << R"({"bos_token": "<|nope|>"})";
  EXPECT_THAT(error_of([&] { Tokenizer::load_dir(cfg); }),
              HasSubstr("tokenizer_config.json: bos_token '<|nope|>' is not a token of the tokenizer"));
}

}  // namespace
}  // namespace phi3
