#include "runtime/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/json_util.h"
#include "runtime/utf8.h"

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

std::string string_field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string())
    throw Error(where + ": '" + key + "' must be a string, got " + (j.contains(key) ? json_brief(j[key]) : "nothing"));
  return j[key].get<std::string>();
}

void add_steps(const nlohmann::json& j, const std::string& where, std::vector<Normalizer::Step>* out) {
  if (j.is_null()) return;
  const std::string type = j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
  if (type == "Sequence" && j.contains("normalizers") && j["normalizers"].is_array()) {
    for (size_t i = 0; i < j["normalizers"].size(); ++i)
      add_steps(j["normalizers"][i], where + ".normalizers[" + std::to_string(i) + "]", out);
    return;
  }
  Normalizer::Step s;
  for (auto f : {Normalizer::Form::NFC, Normalizer::Form::NFD, Normalizer::Form::NFKC, Normalizer::Form::NFKD})
    if (type == form_name(f)) {
      s.form = f;
      out->push_back(s);
      return;
    }
  if (type == "Replace") {
    const nlohmann::json& p = j.contains("pattern") ? j["pattern"] : nlohmann::json();
    if (!p.is_object() || !p.contains("String") || !p["String"].is_string() || p["String"].get<std::string>().empty())
      throw Error(where + ": Replace pattern " + json_brief(p) +
                  " is not supported (a non-empty {\"String\": ...}; a Regex pattern is not)");
    s.kind = Normalizer::Step::Kind::kReplace;
    s.pattern = p["String"].get<std::string>();
    s.content = string_field(j, "content", where);
    out->push_back(s);
    return;
  }
  if (type == "Prepend") {
    s.kind = Normalizer::Step::Kind::kPrepend;
    s.content = string_field(j, "prepend", where);
    out->push_back(s);
    return;
  }
  throw Error(where + ": normalizer " + json_brief(j) +
              " is not supported (NFC, NFD, NFKC, NFKD, Replace of a String, Prepend, or a Sequence of them; "
              "others change the ids)");
}

std::string step_name(const Normalizer::Step& s) {
  switch (s.kind) {
    case Normalizer::Step::Kind::kForm: return form_name(s.form);
    case Normalizer::Step::Kind::kReplace: return "Replace";
    case Normalizer::Step::Kind::kPrepend: return "Prepend";
  }
  return "?";
}

std::string unicode_form(const std::string& cur, Normalizer::Form f) {
  int options = UTF8PROC_STABLE;
  if (f == Normalizer::Form::NFC || f == Normalizer::Form::NFKC) options |= UTF8PROC_COMPOSE;
  else options |= UTF8PROC_DECOMPOSE;
  if (f == Normalizer::Form::NFKC || f == Normalizer::Form::NFKD) options |= UTF8PROC_COMPAT;
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cur.data()),
                                          static_cast<utf8proc_ssize_t>(cur.size()), &dst,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    std::free(dst);
    throw Error(std::string("tokenizer: ") + form_name(f) + " normalization failed: " + utf8proc_errmsg(n));
  }
  std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

}  // namespace

Normalizer Normalizer::from_json(const nlohmann::json& j, const std::string& where) {
  Normalizer n;
  add_steps(j, where, &n.steps_);
  return n;
}

bool Normalizer::prepends() const {
  for (const Step& s : steps_)
    if (s.kind == Step::Kind::kPrepend) return true;
  return false;
}

std::string Normalizer::apply(std::string_view text) const {
  std::string cur(text);
  for (const Step& s : steps_) {
    switch (s.kind) {
      case Step::Kind::kForm: cur = unicode_form(cur, s.form); break;
      case Step::Kind::kReplace: cur = replace_all(cur, s.pattern, s.content); break;
      case Step::Kind::kPrepend:
        if (!cur.empty()) cur.insert(0, s.content);  // Hugging Face: only a non-empty stretch
        break;
    }
  }
  return cur;
}

std::string Normalizer::describe() const {
  if (steps_.empty()) return "none";
  if (steps_.size() == 1) return step_name(steps_[0]);
  std::string s = "Sequence[";
  for (size_t i = 0; i < steps_.size(); ++i) s += std::string(i ? ", " : "") + step_name(steps_[i]);
  return s + "]";
}

}  // namespace phi3
