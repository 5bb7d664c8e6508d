// UTF-8 helpers for the tokenizers: validation with a message that names the offending byte,
// splitting into code points, and lossy decoding (each maximal invalid subpart becomes U+FFFD,
// as Rust's String::from_utf8_lossy and Python's errors="replace" do).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace phi3 {

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 when none starts there.
size_t utf8_sequence_length(std::string_view s, size_t i);
// Throws naming `what`, the byte offset and the byte value when `s` is not valid UTF-8.
void check_utf8(std::string_view s, const std::string& what);
// The code points of valid UTF-8 text, each as its own UTF-8 string.
std::vector<std::string_view> utf8_chars(std::string_view s);
// Appends code point cp (<= 0x10FFFF, not a surrogate) as UTF-8.
void append_utf8(std::string* out, char32_t cp);
// The start of the character that ends just before s[i] (i > 0; not before `floor`).
size_t utf8_prev_start(std::string_view s, size_t i, size_t floor = 0);
// Decodes one code point of valid UTF-8 starting at s[*i]; advances *i.
char32_t next_code_point(std::string_view s, size_t* i);
// Valid UTF-8 with every maximal invalid subpart replaced by U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// `s` with every occurrence of `pattern` (non-empty) replaced by `content`, left to right.
std::string replace_all(const std::string& s, const std::string& pattern, const std::string& content);

}  // namespace phi3
