// The byte-level alphabet of GPT-2-style BPE: every byte gets a printable code point (bytes
// '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves; the other 68 bytes take 0x100,
// 0x101, ... in byte order), so that a space is "Ġ" (U+0120) and a newline "Ċ" (U+010A).
#pragma once
#include <string>
#include <string_view>

namespace phi3 {

// Each byte of `bytes` as its byte-level character (UTF-8).
std::string to_byte_level(std::string_view bytes);
// The bytes a byte-level token stands for; false (and *out untouched) when some character of
// `token` is not in the byte-level alphabet.
bool from_byte_level(std::string_view token, std::string* out);

}  // namespace phi3
