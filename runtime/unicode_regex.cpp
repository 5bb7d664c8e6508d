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
  static const UnicodeRegex re("\\s", "White_Space test");
  std::string c;
  append_utf8(&c, cp);
  return re.match_at(c, 0) == c.size();
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

namespace {

using MatchData = std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)>;

MatchData match_data(pcre2_code* code) {
  MatchData md(pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
  PHI3_CHECK(md, "regex: out of memory for match data");
  return md;
}

// One pcre2_match from `start` (options: PCRE2_ANCHORED or 0); false when nothing matches.
bool match_once(pcre2_code* code, const std::string& pattern, std::string_view text, size_t start, uint32_t options,
                pcre2_match_data* md) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  options |= PCRE2_NO_UTF_CHECK;
  int rc = pcre2_match(code, subject, text.size(), start, options, md, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // a pathological input for the JIT stack: interpret instead
    rc = pcre2_match(code, subject, text.size(), start, options | PCRE2_NO_JIT, md, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    throw Error("regex '" + pattern + "': matching failed at offset " + std::to_string(start) + ": " +
                reinterpret_cast<const char*>(msg));
  }
  return true;
}

}  // namespace

size_t UnicodeRegex::match_at(std::string_view text, size_t at) const {
  PHI3_CHECK(code_, "regex: not compiled");
  if (at >= text.size()) return 0;
  MatchData md = match_data(code_);
  if (!match_once(code_, pattern_, text, at, PCRE2_ANCHORED, md.get())) return 0;
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
  return ov[1] - ov[0];
}

std::vector<std::pair<size_t, size_t>> UnicodeRegex::find_all(std::string_view text) const {
  PHI3_CHECK(code_, "regex: not compiled");
  MatchData md = match_data(code_);
  std::vector<std::pair<size_t, size_t>> out;
  size_t start = 0;
  while (start < text.size()) {
    if (!match_once(code_, pattern_, text, start, 0, md.get())) break;
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
