// SentencePiece tokenizer + Hugging Face added tokens (added_tokens.json, or the
// "added_tokens" list of tokenizer.json). Special tokens inside text (e.g. "<|end|>") are
// matched before SentencePiece sees the text, as HF does (leftmost, longest first; the
// lstrip/rstrip flags of tokenizer.json entries eat ASCII whitespace beside the token).
// Plain text is encoded exactly as SentencePiece does (dummy prefix "▁" added, runs of
// spaces kept), which is what the real Phi-3 test vectors show ("Hello" -> ▁Hello,
// " Hello" -> ▁ ▁Hello, " " -> ▁▁). The dummy prefix goes only on text that starts the
// input: text after an added token gets none ("<|end|>short" -> <|end|> short), as in
// transformers' LlamaTokenizer with legacy=False (Metaspace prepend_scheme "first").
// transformers 5 also adds no prefix when the text starts with a space (" Hello" -> ▁Hello);
// the Phi-3 vectors (HF tokenizer.json of 2024) and SentencePiece do, and so do we.
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
  std::string label(int id) const;            // piece(id), or "<id N>" for an id the tokenizer lacks
  int piece_count() const;                    // SentencePiece pieces
  int vocab_size() const;                     // max id + 1 including added tokens
  int bos_id() const;
  // The single token an answer word becomes (encoded as a word: "short" -> "▁short"; one
  // leading space, as TransformerLens writes answers, is ignored: " short" -> "▁short").
  // Throws naming the answer and the pieces when it is not exactly one token.
  int answer_token(const std::string& answer) const;
  // Every token an answer word becomes (the same encoding; throws on an empty answer).
  std::vector<int> answer_tokens(const std::string& answer) const;
  const std::map<std::string, int>& added_tokens() const { return added_; }

 private:
  void add_token(const std::string& content, int id, bool lstrip, bool rstrip, const std::string& source);
  void load_added_tokens_json(const std::string& path);
  void load_tokenizer_json(const std::string& path);

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_no_prefix_;  // add_dummy_prefix off
  std::map<std::string, int> added_;
  std::map<int, std::string> added_by_id_;
  std::map<int, std::pair<bool, bool>> strip_;  // added id -> (lstrip, rstrip)
};

}  // namespace phi3
