// The pre-tokenizer of a Hugging Face tokenizer.json: the steps that cut text into the words
// BPE encodes separately. Supported (what Phi-4, Phi-4-mini and GPT-2-family tokenizers use):
//   Split      {"pattern": {"Regex": "..."} or {"String": "..."}, "behavior", "invert"}
//              behavior Removed | Isolated | MergedWithPrevious | MergedWithNext | Contiguous
//   ByteLevel  {"add_prefix_space", "use_regex"}: a space before every piece that lacks one,
//              optionally GPT-2's own split, then every byte as its byte-level character
//   Sequence   {"pretokenizers": [...]} of the above
// Anything else is refused at load with the step's type named, never silently skipped.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace phi3 {

class UnicodeRegex;

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  std::shared_ptr<UnicodeRegex> regex;  // Split: the pattern (a String pattern is escaped into one)
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;        // ByteLevel
  bool use_regex = true;                // ByteLevel
};

class PreTokenizer {
 public:
  // From tokenizer.json's "pre_tokenizer" (null: the whole text is one word); `where` names
  // the file in errors.
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& where);
  // The words of `text` (valid UTF-8), byte-level mapped where a ByteLevel step says so.
  std::vector<std::string> apply(std::string_view text) const;
  bool has_byte_level() const;
  const std::vector<PreTokenizerStep>& steps() const { return steps_; }

 private:
  std::vector<PreTokenizerStep> steps_;
};

// One Split: the pieces of `text` cut at the regex's matches, as `behavior` and `invert` say
// (the semantics of Hugging Face's NormalizedString::split).
std::vector<std::string> split_by_regex(std::string_view text, const UnicodeRegex& re, SplitBehavior behavior,
                                        bool invert);

}  // namespace phi3
