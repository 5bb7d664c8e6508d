// UTF-8 validation, splitting and lossy decoding (Unicode's "maximal subpart" replacement).
#include "runtime/utf8.h"

#include <cstdio>

#include "runtime/error.h"

namespace phi3 {

namespace {

uint8_t byte_at(std::string_view s, size_t i) { return static_cast<uint8_t>(s[i]); }

bool is_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

// The length of the longest prefix at s[i] that could still begin a valid sequence (the
// "maximal subpart" that one U+FFFD replaces), at least 1.
size_t maximal_subpart(std::string_view s, size_t i) {
  const uint8_t b0 = byte_at(s, i);
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 1;
  else if (b0 == 0xE0) need = 2, lo = 0xA0;
  else if (b0 >= 0xE1 && b0 <= 0xEC) need = 2;
  else if (b0 == 0xED) need = 2, hi = 0x9F;
  else if (b0 >= 0xEE && b0 <= 0xEF) need = 2;
  else if (b0 == 0xF0) need = 3, lo = 0x90;
  else if (b0 >= 0xF1 && b0 <= 0xF3) need = 3;
  else if (b0 == 0xF4) need = 3, hi = 0x8F;
  else return 1;
  size_t k = 1;
  for (; k <= need && i + k < s.size(); ++k) {
    const uint8_t b = byte_at(s, i + k);
    if (k == 1 ? (b < lo || b > hi) : !is_cont(b)) break;
  }
  return k;
}

}  // namespace

size_t utf8_sequence_length(std::string_view s, size_t i) {
  const size_t n = maximal_subpart(s, i);
  const uint8_t b0 = byte_at(s, i);
  const size_t want = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
  if (b0 < 0x80) return 1;
  return n == want ? n : 0;
}

void check_utf8(std::string_view s, const std::string& what) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence_length(s, i);
    if (n == 0) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", byte_at(s, i));
      throw Error(what + " is not valid UTF-8: byte " + hex + " at offset " + std::to_string(i) +
                  " does not start a valid character");
    }
    i += n;
  }
}

std::vector<std::string_view> utf8_chars(std::string_view s) {
  std::vector<std::string_view> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8_sequence_length(s, i);
    if (n == 0) n = 1;  // callers pass valid text; never loop forever on bad bytes
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

void append_utf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t utf8_prev_start(std::string_view s, size_t i, size_t floor) {
  size_t k = i - 1;
  while (k > floor && is_cont(byte_at(s, k))) --k;
  return k;
}

char32_t next_code_point(std::string_view s, size_t* i) {
  const uint8_t b0 = byte_at(s, *i);
  size_t n = utf8_sequence_length(s, *i);
  if (n <= 1) {
    ++*i;
    return b0;
  }
  char32_t cp = b0 & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (byte_at(s, *i + k) & 0x3F);
  *i += n;
  return cp;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const size_t n = utf8_sequence_length(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      i += maximal_subpart(bytes, i);
    }
  }
  return out;
}

std::string replace_all(const std::string& s, const std::string& pattern, const std::string& content) {
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = s.find(pattern, at)) != std::string::npos; at = hit + pattern.size())
    out.append(s, at, hit - at).append(content);
  return out.append(s, at, std::string::npos);
}

}  // namespace phi3
