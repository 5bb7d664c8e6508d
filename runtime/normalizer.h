// The normalizer of a tokenizer.json ("normalizer"), applied to the text between added tokens
// before the pre-tokenizer, as Hugging Face tokenizers does: null (none), the Unicode forms
// NFC (Qwen2, Qwen2.5, Qwen3), NFD, NFKC, NFKD (through utf8proc, a maintained Unicode
// library), or a Sequence of them. Anything else (Lowercase, Replace, Prepend, Strip, ...)
// would change the ids and is refused at load, naming the field.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace phi3 {

class Normalizer {
 public:
  enum class Form { NFC, NFD, NFKC, NFKD };
  static Normalizer from_json(const nlohmann::json& j, const std::string& where);
  bool identity() const { return steps_.empty(); }
  // `text` must be valid UTF-8 (the tokenizer checks it first).
  std::string apply(std::string_view text) const;
  std::string describe() const;  // "NFC", "none", "Sequence[NFD, NFKC]"

 private:
  std::vector<Form> steps_;
};

}  // namespace phi3
