// Byte <-> character map of byte-level BPE (built from the rule in byte_level.h).
#include "runtime/byte_level.h"

#include <array>
#include <unordered_map>

#include "runtime/utf8.h"

namespace phi3 {

namespace {

struct ByteMap {
  std::array<std::string, 256> to_char;
  std::unordered_map<char32_t, uint8_t> to_byte;
  ByteMap() {
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = self ? static_cast<char32_t>(b) : next++;
      append_utf8(&to_char[b], cp);
      to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

std::string to_byte_level(std::string_view bytes) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += m.to_char[static_cast<uint8_t>(c)];
  return out;
}

bool from_byte_level(std::string_view token, std::string* out) {
  const ByteMap& m = byte_map();
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    if (utf8_sequence_length(token, i) == 0) return false;
    auto it = m.to_byte.find(next_code_point(token, &i));
    if (it == m.to_byte.end()) return false;
    bytes.push_back(static_cast<char>(it->second));
  }
  out->append(bytes);
  return true;
}

}  // namespace phi3
