#include "runtime/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/json_util.h"

namespace phi3 {

namespace {

const char* form_name(Normalizer::Form f) {
  switch (f) {
    case Normalizer::Form::NFC: return "NFC";
    case Normalizer::Form::NFD: return "NFD";
    case Normalizer::Form::NFKC: return "NFKC";
    case Normalizer::Form::NFKD: return "NFKD";
  }
  return "?";
}

void add_steps(const nlohmann::json& j, const std::string& where, std::vector<Normalizer::Form>* out) {
  if (j.is_null()) return;
  const std::string type = j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
  if (type == "Sequence" && j.contains("normalizers") && j["normalizers"].is_array()) {
    for (size_t i = 0; i < j["normalizers"].size(); ++i)
      add_steps(j["normalizers"][i], where + ".normalizers[" + std::to_string(i) + "]", out);
    return;
  }
  for (auto f : {Normalizer::Form::NFC, Normalizer::Form::NFD, Normalizer::Form::NFKC, Normalizer::Form::NFKD})
    if (type == form_name(f)) {
      out->push_back(f);
      return;
    }
  throw Error(where + ": normalizer " + json_brief(j) +
              " is not supported (NFC, NFD, NFKC, NFKD or a Sequence of them; others change the ids)");
}

}  // namespace

Normalizer Normalizer::from_json(const nlohmann::json& j, const std::string& where) {
  Normalizer n;
  add_steps(j, where, &n.steps_);
  return n;
}

std::string Normalizer::apply(std::string_view text) const {
  std::string cur(text);
  for (Form f : steps_) {
    int options = UTF8PROC_STABLE;
    if (f == Form::NFC || f == Form::NFKC) options |= UTF8PROC_COMPOSE;
    else options |= UTF8PROC_DECOMPOSE;
    if (f == Form::NFKC || f == Form::NFKD) options |= UTF8PROC_COMPAT;
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cur.data()),
                                            static_cast<utf8proc_ssize_t>(cur.size()), &dst,
                                            static_cast<utf8proc_option_t>(options));
    if (n < 0) {
      std::free(dst);
      throw Error(std::string("tokenizer: ") + form_name(f) + " normalization failed: " + utf8proc_errmsg(n));
    }
    cur.assign(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
    std::free(dst);
  }
  return cur;
}

std::string Normalizer::describe() const {
  if (steps_.empty()) return "none";
  if (steps_.size() == 1) return form_name(steps_[0]);
  std::string s = "Sequence[";
  for (size_t i = 0; i < steps_.size(); ++i) s += std::string(i ? ", " : "") + form_name(steps_[i]);
  return s + "]";
}

}  // namespace phi3
