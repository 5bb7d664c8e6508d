// PCRE2 wrapper: compile once (JIT when the platform has it), find all matches per call with
// its own match data, so one regex serves concurrent callers.
#include "runtime/unicode_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <memory>

#include "runtime/error.h"
#include "runtime/utf8.h"

namespace phi3 {

std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  int class_depth = 0;  // inside [...] (nested POSIX-style classes count too)
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      if (e == 's') out += "\\p{White_Space}";
      else if (e == 'S') out += "\\P{White_Space}";
      else if (e == 'h') out += class_depth ? "[:xdigit:]" : "[[:xdigit:]]";
      else if (e == 'H') out += class_depth ? "[:^xdigit:]" : "[^[:xdigit:]]";
      else out += {'\\', e};
      continue;
    }
    if (c == '[') ++class_depth;
    else if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

bool is_unicode_white_space(char32_t cp) {
  static const UnicodeRegex re("\\A\\s\\z", "White_Space test");
  std::string c;
  append_utf8(&c, cp);
  return !re.find_all(c).empty();
}

UnicodeRegex::UnicodeRegex(const std::string& pattern, const std::string& where) : pattern_(pattern) {
  const std::string translated = onig_to_pcre2(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), PCRE2_UTF | PCRE2_UCP,
                        &err, &offset, nullptr);
  if (!code_) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(where + ": cannot compile the regex '" + pattern + "': " + reinterpret_cast<const char*>(msg) +
                " (at offset " + std::to_string(offset) + " of the PCRE2 form '" + translated + "')");
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

UnicodeRegex::~UnicodeRegex() {
  if (code_) pcre2_code_free(code_);
}

UnicodeRegex::UnicodeRegex(UnicodeRegex&& o) noexcept : pattern_(std::move(o.pattern_)), code_(o.code_), jit_(o.jit_) {
  o.code_ = nullptr;
}

UnicodeRegex& UnicodeRegex::operator=(UnicodeRegex&& o) noexcept {
  if (this != &o) {
    if (code_) pcre2_code_free(code_);
    pattern_ = std::move(o.pattern_);
    code_ = o.code_;
    jit_ = o.jit_;
    o.code_ = nullptr;
  }
  return *this;
}

std::vector<std::pair<size_t, size_t>> UnicodeRegex::find_all(std::string_view text) const {
  PHI3_CHECK(code_, "regex: not compiled");
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
  PHI3_CHECK(md, "regex: out of memory for match data");
  std::vector<std::pair<size_t, size_t>> out;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start < text.size()) {
    int rc = pcre2_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // a pathological input for the JIT stack: interpret instead
      rc = pcre2_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw Error("regex '" + pattern_ + "': matching failed at offset " + std::to_string(start) + ": " +
                  reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(b, e);
      start = e;
    } else {  // an empty match: step over one character
      start = b + std::max<size_t>(1, utf8_sequence_length(text, b));
    }
  }
  return out;
}

}  // namespace phi3
