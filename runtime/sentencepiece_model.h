// The SentencePiece model of a tokenizer (tokenizer.model: Phi-3, Llama 2). Plain text is
// encoded exactly as SentencePiece does (dummy prefix "▁" added, runs of spaces kept), which is
// what the real Phi-3 test vectors show ("Hello" -> ▁Hello, " Hello" -> ▁ ▁Hello, " " -> ▁▁).
// The dummy prefix goes only on text that starts the input: text after an added token gets
// none ("<|end|>short" -> <|end|> short), as in transformers' LlamaTokenizer with legacy=False
// (Metaspace prepend_scheme "first"). transformers 5 also adds no prefix when the text starts
// with a space (" Hello" -> ▁Hello); the Phi-3 vectors (HF tokenizer.json of 2024) and
// SentencePiece do, and so do we.
#pragma once
#include <memory>
#include <string>

#include "runtime/tokenizer_model.h"

namespace sentencepiece { class SentencePieceProcessor; }

namespace phi3 {

class SentencePieceModel : public TokenizerModel {
 public:
  // Throws naming the path when it is missing, a directory, or not a SentencePiece model.
  static std::unique_ptr<SentencePieceModel> load(const std::string& path);
  ~SentencePieceModel() override;

  std::string kind() const override { return "SentencePiece"; }
  int piece_count() const override;
  bool has_piece(int id) const override { return id >= 0 && id < piece_count(); }
  std::string piece(int id) const override;
  int piece_id(const std::string& piece) const override;
  void encode(std::string_view text, bool starts_input, std::vector<int>* out) const override;
  std::string decode(const std::vector<int>& ids, const std::map<int, std::string>& added) const override;
  // The word as it follows a space: the dummy prefix marks it where the model adds one (Llama,
  // Phi-3: "short" -> ▁short); without one (Gemma) the space itself does (" short" -> ▁short,
  // where "short" alone would be the word-internal piece).
  std::string answer_text(const std::string& word) const override { return dummy_prefix_ ? word : " " + word; }
  int bos_id() const override;
  bool bos_by_default() const override { return true; }  // LlamaTokenizer's add_bos_token default

 private:
  SentencePieceModel();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_no_prefix_;  // add_dummy_prefix off
  // The model's normalizer adds a dummy prefix (Llama, Phi-3; not Gemma): decode then drops the
  // leading space it became, as SentencePiece does.
  bool dummy_prefix_ = true;
};

}  // namespace phi3
