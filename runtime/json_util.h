// A short, bounded rendering of a JSON value for error messages. Never recurses into
// nested values (nlohmann's dump() does, so a hostile file nested a million levels deep would
// overflow the stack) and never prints more than `max_chars`.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace phi3 {

inline std::string json_brief(const nlohmann::json& v, size_t max_chars = 120) {
  auto cut = [&](std::string s) {
    if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
    return s;
  };
  if (v.is_primitive()) return cut(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  bool flat = v.size() <= 64;
  for (auto it = v.begin(); flat && it != v.end(); ++it) flat = it->is_primitive();
  if (flat) return cut(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return std::string(v.is_array() ? "a list of " : "an object with ") + std::to_string(v.size()) +
         (v.is_array() ? " entries" : " keys");
}

}  // namespace phi3
