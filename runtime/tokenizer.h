// A checkpoint's tokenizer: its model (SentencePiece from tokenizer.model, or byte-level BPE
// from tokenizer.json; runtime/tokenizer_model.h) under Hugging Face's added tokens
// (added_tokens.json, or the "added_tokens" list of tokenizer.json). Added tokens inside text
// (e.g. "<|end|>") are matched before the model sees the text, as HF does (leftmost, longest
// first; the lstrip/rstrip flags of tokenizer.json entries eat the Unicode white space
// beside the token; a single_word token is skipped where a word character (Unicode \w:
// alphabetic, marks, decimal digits, connector punctuation) touches it). tokenizer_config.json, when present, names the BOS token (bos_token) and whether
// prompts start with it (add_bos_token); without it SentencePiece prompts start with BOS and
// BPE prompts only when the post-processor's template puts one first.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace phi3 {

class TokenizerModel;

class Tokenizer {
 public:
  // Loads the tokenizer of a checkpoint directory: tokenizer.model (SentencePiece; added
  // tokens from added_tokens.json or tokenizer.json) if present, else tokenizer.json
  // (byte-level BPE); tokenizer_config.json for BOS. Throws naming what is missing or wrong.
  static Tokenizer load_dir(const std::string& dir);
  static bool present_in(const std::string& dir);  // dir holds tokenizer.model or tokenizer.json
  static Tokenizer load_model_file(const std::string& tokenizer_model_path);  // SentencePiece only
  static Tokenizer load_tokenizer_json_file(const std::string& tokenizer_json_path);  // BPE only
  // A checkpoint without tokenizer files (pre-tokenized pairs only): no pieces (kind() "none",
  // labels "<id N>", encode throws), BOS `bos_id` (config.json's; -1: none), prompts start
  // with it when bos_by_default.
  static Tokenizer none(int bos_id, bool bos_by_default);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Throws naming the offset when `text` is not valid UTF-8, and when add_bos is asked of a
  // tokenizer that has no BOS token.
  std::vector<int> encode(const std::string& text, bool add_bos) const;
  std::string decode(const std::vector<int>& ids) const;
  std::string piece(int id) const;            // "▁short", "Ġshort", "<|endoftext|>", ...
  // How reports show a token: the SentencePiece piece ("▁short"), the decoded text of a BPE
  // piece (" short"; <0xNN> bytes for part of a character), or "<id N>" for an id it lacks.
  std::string label(int id) const;
  bool has_id(int id) const;                  // a piece or an added token
  int piece_count() const;                    // ids of the model (below the added tokens, usually)
  int vocab_size() const;                     // max id + 1 including added tokens
  int bos_id() const;                         // -1 when the tokenizer has none
  int pad_id() const { return pad_id_; }      // tokenizer_config.json's pad_token; -1 when none
  bool bos_by_default() const;                // prompts start with BOS unless --no-bos
  std::string kind() const;                   // "SentencePiece", "byte-level BPE"
  // The single token an answer word becomes: the word as it follows a space in running text
  // (SentencePiece "short" -> "▁short", with or without a dummy prefix: Gemma's vocabulary
  // also holds a word-internal "short"; BPE "short" -> "Ġshort"). One leading space, as
  // TransformerLens writes answers, is the same: " short". An added token ("<|end|>") is
  // itself. Throws naming the answer and the pieces when it is not exactly one token.
  int answer_token(const std::string& answer) const;
  // Every token an answer word becomes (the same encoding; throws on an empty answer).
  std::vector<int> answer_tokens(const std::string& answer) const;
  const std::map<std::string, int>& added_tokens() const { return added_; }
  const TokenizerModel& model() const { return *model_; }

 private:
  struct AddedFlags {
    bool lstrip = false, rstrip = false;
    bool single_word = false;  // matched only where no word character touches it
  };
  void add_token(const std::string& content, int id, AddedFlags flags, const std::string& source);
  void load_added_tokens_json(const std::string& path);
  void load_added_tokens_list(const nlohmann::json& tokenizer_json, const std::string& path);
  void load_tokenizer_config(const std::string& path);

  std::unique_ptr<TokenizerModel> model_;
  std::map<std::string, int> added_;
  std::map<int, std::string> added_by_id_;
  std::map<int, AddedFlags> flags_;  // added id -> its flags
  int bos_id_ = -1;           // from tokenizer_config.json's bos_token; else the model's
  int bos_default_ = -1;      // add_bos_token of tokenizer_config.json (0/1); -1: the model's default
  int pad_id_ = -1;           // pad_token of tokenizer_config.json
};

}  // namespace phi3
