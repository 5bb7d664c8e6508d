// Pre-tokenizer steps of tokenizer.json (Split, ByteLevel, Metaspace, Sequence); see pretokenizer.h.
#include "runtime/pretokenizer.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "runtime/byte_level.h"
#include "runtime/error.h"
#include "runtime/json_util.h"
#include "runtime/unicode_regex.h"

namespace phi3 {

using json = nlohmann::json;

namespace {

// GPT-2's own split, used by ByteLevel when use_regex is true.
const char kGpt2Pattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

const std::shared_ptr<UnicodeRegex>& gpt2_regex() {
  static const auto re = std::make_shared<UnicodeRegex>(kGpt2Pattern, "ByteLevel pre-tokenizer");
  return re;
}

// A literal as a PCRE2 pattern: ASCII punctuation escaped, everything else as is.
std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u) && c != ' ') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

bool flag(const json& j, const char* key, bool dflt, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) throw Error(where + ": '" + key + "' must be true or false, got " + json_brief(j[key]));
  return j[key].get<bool>();
}

SplitBehavior parse_behavior(const json& j, const std::string& where) {
  if (!j.contains("behavior") || !j["behavior"].is_string())
    throw Error(where + ": Split needs a 'behavior' string");
  const std::string b = j["behavior"].get<std::string>();
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  throw Error(where + ": unknown Split behavior '" + b +
              "' (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)");
}

void add_steps(const json& j, const std::string& where, std::vector<PreTokenizerStep>* steps) {
  if (j.is_null()) return;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw Error(where + ": a pre-tokenizer must be an object with a 'type', got " + json_brief(j));
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      throw Error(where + ": Sequence needs a 'pretokenizers' list");
    for (size_t i = 0; i < j["pretokenizers"].size(); ++i)
      add_steps(j["pretokenizers"][i], where + ".pretokenizers[" + std::to_string(i) + "]", steps);
    return;
  }
  PreTokenizerStep s;
  if (type == "Split") {
    s.kind = PreTokenizerStep::Kind::kSplit;
    const json& p = j.contains("pattern") ? j["pattern"] : json();
    if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
      s.regex = std::make_shared<UnicodeRegex>(p["Regex"].get<std::string>(), where + " (Split)");
    else if (p.is_object() && p.contains("String") && p["String"].is_string())
      s.regex = std::make_shared<UnicodeRegex>(escape_literal(p["String"].get<std::string>()), where + " (Split)");
    else
      throw Error(where + ": Split needs a pattern {\"Regex\": ...} or {\"String\": ...}, got " + json_brief(p));
    s.behavior = parse_behavior(j, where);
    s.invert = flag(j, "invert", false, where);
  } else if (type == "ByteLevel") {
    s.kind = PreTokenizerStep::Kind::kByteLevel;
    s.add_prefix_space = flag(j, "add_prefix_space", true, where);
    s.use_regex = flag(j, "use_regex", true, where);
  } else if (type == "Metaspace") {
    s.kind = PreTokenizerStep::Kind::kMetaspace;
    s.replacement = "\u2581";
    if (j.contains("replacement") && !j["replacement"].is_null()) {
      if (!j["replacement"].is_string() || j["replacement"].get<std::string>().empty())
        throw Error(where + ": Metaspace 'replacement' must be a one-character string, got " + json_brief(j["replacement"]));
      s.replacement = j["replacement"].get<std::string>();
    }
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string p = j["prepend_scheme"].is_string() ? j["prepend_scheme"].get<std::string>() : "";
      if (p == "always") s.prepend = PreTokenizerStep::Prepend::kAlways;
      else if (p == "first") s.prepend = PreTokenizerStep::Prepend::kFirst;
      else if (p == "never") s.prepend = PreTokenizerStep::Prepend::kNever;
      else throw Error(where + ": Metaspace prepend_scheme " + json_brief(j["prepend_scheme"]) + " is not always, first or never");
    } else {  // the older layout
      s.prepend = flag(j, "add_prefix_space", true, where) ? PreTokenizerStep::Prepend::kAlways
                                                            : PreTokenizerStep::Prepend::kNever;
    }
    s.split = flag(j, "split", true, where);
  } else {
    throw Error(where + ": pre-tokenizer type '" + type +
                "' is not supported (supported: Split, ByteLevel, Metaspace, Sequence of them — the tokenizers "
                "of Phi-4, Qwen2/2.5, Qwen3, Llama 3.x, GPT-2, Gemma and Mistral)");
  }
  steps->push_back(std::move(s));
}

}  // namespace

std::vector<std::string> split_by_regex(std::string_view text, const UnicodeRegex& re, SplitBehavior behavior,
                                        bool invert) {
  // (begin, end, is_match) over the whole text, as Hugging Face's find_matches lays it out.
  struct Part {
    size_t b, e;
    bool match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  for (auto [b, e] : re.find_all(text)) {
    if (b != prev) parts.push_back({prev, b, invert});
    parts.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != text.size()) parts.push_back({prev, text.size(), invert});

  std::vector<Part> kept;  // `match` now means nothing; ranges to keep
  switch (behavior) {
    case SplitBehavior::kIsolated:
      kept = parts;
      break;
    case SplitBehavior::kRemoved:
      for (const auto& p : parts)
        if (!p.match) kept.push_back(p);
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& p : parts) {
        if (p.match == previous_match && !kept.empty()) kept.back().e = p.e;
        else kept.push_back(p);
        previous_match = p.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& p : parts) {
        if (p.match && !previous_match && !kept.empty()) kept.back().e = p.e;
        else kept.push_back(p);
        previous_match = p.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->match && !previous_match && !kept.empty()) kept.back().b = it->b;
        else kept.push_back(*it);
        previous_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
  }
  std::vector<std::string> out;
  out.reserve(kept.size());
  for (const auto& p : kept)
    if (p.e > p.b) out.emplace_back(text.substr(p.b, p.e - p.b));
  return out;
}

PreTokenizer PreTokenizer::from_json(const json& j, const std::string& where) {
  PreTokenizer p;
  add_steps(j, where, &p.steps_);
  return p;
}

bool PreTokenizer::has_byte_level() const {
  for (const auto& s : steps_)
    if (s.kind == PreTokenizerStep::Kind::kByteLevel) return true;
  return false;
}

bool PreTokenizer::prepends_at_start() const {
  for (const auto& s : steps_)
    if (s.kind == PreTokenizerStep::Kind::kMetaspace && s.prepend != PreTokenizerStep::Prepend::kNever) return true;
  return false;
}

namespace {

// Metaspace on one piece (Hugging Face's Metaspace::pre_tokenize): spaces become the
// replacement, which is prepended (always; first: only to the piece that begins the input)
// unless the piece starts with it; with split, each replacement starts a new word.
void metaspace(const PreTokenizerStep& s, std::string piece, bool at_input_start, std::vector<std::string>* out) {
  std::string r;
  for (size_t at = 0;;) {
    const size_t hit = piece.find(' ', at);
    r.append(piece, at, hit == std::string::npos ? std::string::npos : hit - at);
    if (hit == std::string::npos) break;
    r += s.replacement;
    at = hit + 1;
  }
  const bool prepend = s.prepend == PreTokenizerStep::Prepend::kAlways ||
                       (s.prepend == PreTokenizerStep::Prepend::kFirst && at_input_start);
  if (prepend && r.compare(0, s.replacement.size(), s.replacement) != 0) r.insert(0, s.replacement);
  if (!s.split) {
    out->push_back(std::move(r));
    return;
  }
  size_t begin = 0;  // MergedWithNext: each replacement opens a word
  for (size_t hit = r.find(s.replacement, 1); hit != std::string::npos; hit = r.find(s.replacement, hit + 1)) {
    if (hit > begin) out->push_back(r.substr(begin, hit - begin));
    begin = hit;
  }
  if (begin < r.size()) out->push_back(r.substr(begin));
}

}  // namespace

std::vector<std::string> PreTokenizer::apply(std::string_view text, bool starts_input) const {
  std::vector<std::string> pieces;
  if (text.empty()) return pieces;
  pieces.emplace_back(text);
  for (const auto& s : steps_) {
    std::vector<std::string> next;
    next.reserve(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string& piece = pieces[i];
      if (s.kind == PreTokenizerStep::Kind::kSplit) {
        for (auto& w : split_by_regex(piece, *s.regex, s.behavior, s.invert)) next.push_back(std::move(w));
        continue;
      }
      if (s.kind == PreTokenizerStep::Kind::kMetaspace) {
        metaspace(s, std::move(piece), starts_input && i == 0, &next);
        continue;
      }
      if (s.add_prefix_space && piece[0] != ' ') piece.insert(piece.begin(), ' ');
      if (s.use_regex) {
        for (auto& w : split_by_regex(piece, *gpt2_regex(), SplitBehavior::kIsolated, false))
          next.push_back(to_byte_level(w));
      } else {
        next.push_back(to_byte_level(piece));
      }
    }
    pieces.swap(next);
  }
  return pieces;
}

}  // namespace phi3
