// The normalizer of a tokenizer.json ("normalizer"), applied to the text between added tokens
// before the pre-tokenizer, as Hugging Face tokenizers does: null (none), the Unicode forms
// NFC (Qwen2, Qwen2.5, Qwen3), NFD, NFKC, NFKD (through utf8proc, a maintained Unicode
// library), Replace with a String pattern (SentencePiece-converted files: " " -> "▁", Gemma,
// Llama 2, Mistral), Prepend ("▁" on every non-empty stretch: the legacy Llama 2 / Mistral
// files), or a Sequence of them. Anything else (Lowercase, a Regex Replace, Strip, ...) would
// change the ids and is refused at load, naming the field.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace phi3 {

class Normalizer {
 public:
  enum class Form { NFC, NFD, NFKC, NFKD };
  struct Step {
    enum class Kind { kForm, kReplace, kPrepend } kind = Kind::kForm;
    Form form = Form::NFC;
    std::string pattern, content;  // Replace: every `pattern` by `content`; Prepend: `content`
  };
  static Normalizer from_json(const nlohmann::json& j, const std::string& where);
  bool identity() const { return steps_.empty(); }
  // Whether a Prepend step puts a word-start mark before every stretch of text.
  bool prepends() const;
  // `text` must be valid UTF-8 (the tokenizer checks it first).
  std::string apply(std::string_view text) const;
  std::string describe() const;  // "NFC", "none", "Sequence[NFD, NFKC]", "Sequence[Prepend, Replace]"

 private:
  std::vector<Step> steps_;
};

}  // namespace phi3
