// SentencePiece tokenizer + Hugging Face added tokens (added_tokens.json, or the
// "added_tokens" list of tokenizer.json). Special tokens inside text (e.g. "<|end|>") are
// matched before SentencePiece sees the text, as HF does.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece { class SentencePieceProcessor; }

namespace phi3 {

class Tokenizer {
 public:
  // Loads dir/tokenizer.model (+ dir/added_tokens.json or dir/tokenizer.json if present).
  static Tokenizer load_dir(const std::string& dir);
  static Tokenizer load_model_file(const std::string& tokenizer_model_path);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int> encode(const std::string& text, bool add_bos) const;
  std::string decode(const std::vector<int>& ids) const;
  std::string piece(int id) const;            // "▁short", "<|endoftext|>", ...
  int piece_count() const;                    // SentencePiece pieces
  int vocab_size() const;                     // max id + 1 including added tokens
  int bos_id() const;
  // The single token an answer word becomes (encoded as a word: "short" -> "▁short").
  // Throws naming the answer and the pieces when it is not exactly one token.
  int answer_token(const std::string& answer) const;
  const std::map<std::string, int>& added_tokens() const { return added_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::map<std::string, int> added_;
  std::map<int, std::string> added_by_id_;
};

}  // namespace phi3
