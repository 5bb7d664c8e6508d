// Unicode-aware regular expressions for tokenizer pre-tokenization: PCRE2 in UTF + UCP mode
// (\p{L}, \p{N}, \p{Lu}, ... from PCRE2's own Unicode tables), JIT-compiled when available.
// Patterns come from tokenizer.json, written for Oniguruma (what Hugging Face tokenizers use);
// the few escapes whose meaning differs are rewritten first (see onig_to_pcre2).
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

typedef struct pcre2_real_code_8 pcre2_code_8;

namespace phi3 {

// An Oniguruma pattern rewritten for PCRE2: \s / \S become \p{White_Space} / \P{White_Space}
// (Oniguruma's Unicode \s; PCRE2's UCP \s also takes U+180E), \h / \H (hex digit in Oniguruma,
// horizontal space in PCRE2) become [[:xdigit:]] / [^[:xdigit:]] (bare) or [:xdigit:] /
// [:^xdigit:] (inside a class). Everything else passes through.
std::string onig_to_pcre2(const std::string& pattern);

// Whether code point cp has Unicode's White_Space property (Rust's char::is_whitespace, which
// Hugging Face uses to strip around added tokens), from PCRE2's tables.
bool is_unicode_white_space(char32_t cp);

class UnicodeRegex {
 public:
  // Compiles `pattern` (Oniguruma syntax, rewritten by onig_to_pcre2); throws naming `where`,
  // the pattern and PCRE2's message with the offset of the error.
  UnicodeRegex(const std::string& pattern, const std::string& where);
  ~UnicodeRegex();
  UnicodeRegex(UnicodeRegex&& o) noexcept;
  UnicodeRegex& operator=(UnicodeRegex&& o) noexcept;
  UnicodeRegex(const UnicodeRegex&) = delete;
  UnicodeRegex& operator=(const UnicodeRegex&) = delete;

  // [begin, end) byte offsets of the successive non-overlapping, non-empty matches in `text`
  // (valid UTF-8: the caller checks), leftmost first.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  // The length of the match anchored at text[at] (0: none, or an empty one).
  size_t match_at(std::string_view text, size_t at) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  pcre2_code_8* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace phi3
