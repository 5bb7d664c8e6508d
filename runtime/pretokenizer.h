// The pre-tokenizer of a Hugging Face tokenizer.json: the steps that cut text into the words
// BPE encodes separately. Supported (what Phi-4, Phi-4-mini, GPT-2-family, Gemma and Mistral
// tokenizers use):
//   Split      {"pattern": {"Regex": "..."} or {"String": "..."}, "behavior", "invert"}
//              behavior Removed | Isolated | MergedWithPrevious | MergedWithNext | Contiguous
//   ByteLevel  {"add_prefix_space", "use_regex"}: a space before every piece that lacks one,
//              optionally GPT-2's own split, then every byte as its byte-level character
//   Metaspace  {"replacement", "prepend_scheme" always | first | never (or the older
//              "add_prefix_space"), "split"}: spaces become the replacement ("▁"), which is put
//              before the text (first: only where the text begins the input), and with split
//              each word starts at one
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
  enum class Kind { kSplit, kByteLevel, kMetaspace } kind = Kind::kSplit;
  enum class Prepend { kAlways, kFirst, kNever };
  std::shared_ptr<UnicodeRegex> regex;  // Split: the pattern (a String pattern is escaped into one)
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;        // ByteLevel
  bool use_regex = true;                // ByteLevel
  std::string replacement;              // Metaspace ("▁")
  Prepend prepend = Prepend::kAlways;   // Metaspace
  bool split = true;                    // Metaspace
};

class PreTokenizer {
 public:
  // From tokenizer.json's "pre_tokenizer" (null: the whole text is one word); `where` names
  // the file in errors.
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& where);
  // The words of `text` (valid UTF-8), byte-level mapped where a ByteLevel step says so;
  // starts_input: `text` begins the input (Metaspace's prepend_scheme first).
  std::vector<std::string> apply(std::string_view text, bool starts_input = true) const;
  bool has_byte_level() const;
  // Whether a Metaspace step puts its replacement before text that begins the input.
  bool prepends_at_start() const;
  const std::vector<PreTokenizerStep>& steps() const { return steps_; }

 private:
  std::vector<PreTokenizerStep> steps_;
};

// One Split: the pieces of `text` cut at the regex's matches, as `behavior` and `invert` say
// (the semantics of Hugging Face's NormalizedString::split).
std::vector<std::string> split_by_regex(std::string_view text, const UnicodeRegex& re, SplitBehavior behavior,
                                        bool invert);

}  // namespace phi3
