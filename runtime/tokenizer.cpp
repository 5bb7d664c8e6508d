// SentencePiece + added tokens; see runtime/tokenizer.h for the splitting and prefix rules.
#include "runtime/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/json_util.h"

namespace phi3 {

using json = nlohmann::json;

namespace {

const char kSpaceMark[] = "\xe2\x96\x81";  // "▁" (U+2581)

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// ---- minimal protobuf wire editing, to switch off NormalizerSpec.add_dummy_prefix ----
// ModelProto field 3 = normalizer_spec (message); NormalizerSpec field 3 = add_dummy_prefix.
bool read_varint(const std::string& s, size_t* pos, uint64_t* out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= s.size()) return false;
    uint8_t b = static_cast<uint8_t>(s[(*pos)++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return true;
    }
  }
  return false;
}

void write_varint(std::string* s, uint64_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    s->push_back(static_cast<char>(v ? (b | 0x80) : b));
  } while (v);
}

// Splits a message into (field number, raw bytes of the whole field) pairs.
bool split_fields(const std::string& msg, std::vector<std::pair<uint64_t, std::string>>* out) {
  size_t pos = 0;
  while (pos < msg.size()) {
    const size_t start = pos;
    uint64_t tag = 0, len = 0;
    if (!read_varint(msg, &pos, &tag)) return false;
    switch (tag & 7) {
      case 0:
        if (!read_varint(msg, &pos, &len)) return false;
        break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2:
        if (!read_varint(msg, &pos, &len) || len > msg.size() - pos) return false;
        pos += len;
        break;
      default: return false;  // groups do not occur in sentencepiece models
    }
    if (pos > msg.size()) return false;
    out->emplace_back(tag >> 3, msg.substr(start, pos - start));
  }
  return true;
}

// Returns the serialized model with normalizer_spec.add_dummy_prefix = false.
std::string without_dummy_prefix(const std::string& model, const std::string& path) {
  std::vector<std::pair<uint64_t, std::string>> fields;
  if (!split_fields(model, &fields)) throw Error(path + ": cannot parse the SentencePiece model protobuf");
  std::string out;
  bool done = false;
  for (auto& [num, raw] : fields) {
    if (num != 3 || done) {
      out += raw;
      continue;
    }
    size_t pos = 0;
    uint64_t tag = 0, len = 0;
    read_varint(raw, &pos, &tag);
    if ((tag & 7) != 2 || !read_varint(raw, &pos, &len))
      throw Error(path + ": unexpected normalizer_spec encoding in the SentencePiece model");
    std::vector<std::pair<uint64_t, std::string>> sub;
    if (!split_fields(raw.substr(pos, len), &sub)) throw Error(path + ": cannot parse normalizer_spec");
    std::string spec;
    for (auto& [n, r] : sub)
      if (n != 3) spec += r;
    spec += std::string("\x18\x00", 2);  // field 3, varint 0
    write_varint(&out, (3u << 3) | 2);
    write_varint(&out, spec.size());
    out += spec;
    done = true;
  }
  if (!done) {
    write_varint(&out, (3u << 3) | 2);
    write_varint(&out, 2);
    out += std::string("\x18\x00", 2);
  }
  return out;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load_model_file(const std::string& path) {
  if (!file_exists(path)) {
    if (dir_exists(path)) throw Error("tokenizer model '" + path + "' is a directory, not a file");
    throw Error("tokenizer model '" + path + "' does not exist");
  }
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = t.sp_->Load(path);
  if (!st.ok()) {
    // SentencePiece's status names its own source line; keep only what helps the user.
    std::string why = st.ToString();
    if (why.find("ParseFromArray") != std::string::npos) why = "the file does not parse as a ModelProto";
    while (!why.empty() && (why.back() == ' ' || why.back() == '\n')) why.pop_back();
    throw Error("tokenizer model '" + path + "' is not a SentencePiece model (" + why + ")");
  }
  if (t.sp_->GetPieceSize() <= 0) throw Error("tokenizer model '" + path + "' has no pieces");
  t.sp_no_prefix_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st2 = t.sp_no_prefix_->LoadFromSerializedProto(without_dummy_prefix(t.sp_->serialized_model_proto(), path));
  if (!st2.ok()) throw Error("tokenizer model '" + path + "': cannot build the no-prefix variant: " + st2.ToString());
  return t;
}

Tokenizer Tokenizer::load_dir(const std::string& dir) {
  if (!dir_exists(dir)) throw Error("tokenizer directory '" + dir + "' does not exist");
  Tokenizer t = load_model_file(path_join(dir, "tokenizer.model"));
  const std::string added = path_join(dir, "added_tokens.json");
  const std::string tokjson = path_join(dir, "tokenizer.json");
  if (file_exists(added)) t.load_added_tokens_json(added);
  else if (file_exists(tokjson)) t.load_tokenizer_json(tokjson);
  return t;
}

void Tokenizer::add_token(const std::string& content, int id, bool lstrip, bool rstrip, const std::string& source) {
  const std::string where = source + ": added token '" + content + "'";
  if (content.empty()) throw Error(source + ": added token with id " + std::to_string(id) + " has empty content");
  if (id < 0) throw Error(where + ": id " + std::to_string(id) + " is negative");
  if (id < piece_count()) {
    std::string p = sp_->IdToPiece(id);
    if (p != content)
      throw Error(where + ": id " + std::to_string(id) + " is already SentencePiece piece '" + p + "'");
  }
  auto by_content = added_.find(content);
  if (by_content != added_.end() && by_content->second != id)
    throw Error(where + ": given two ids, " + std::to_string(by_content->second) + " and " + std::to_string(id));
  auto by_id = added_by_id_.find(id);
  if (by_id != added_by_id_.end() && by_id->second != content)
    throw Error(where + ": id " + std::to_string(id) + " is also given to '" + by_id->second + "'");
  added_[content] = id;
  added_by_id_[id] = content;
  strip_[id] = {lstrip, rstrip};
}

void Tokenizer::load_added_tokens_json(const std::string& path) {
  const std::string text = read_text_file(path, "added tokens file");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object())
    throw Error(path + ": expected an object {\"token\": id, ...}, got " + std::string(j.type_name()));
  for (auto it = j.begin(); it != j.end(); ++it) {
    const json& v = it.value();
    if (!(v.is_number_integer() || v.is_number_unsigned()) || v.get<int64_t>() < 0 ||
        v.get<int64_t>() > INT32_MAX)
      throw Error(path + ": added token '" + it.key() + "': id must be a non-negative integer, got " + json_brief(v));
    add_token(it.key(), v.get<int>(), false, false, path);
  }
}

void Tokenizer::load_tokenizer_json(const std::string& path) {
  const std::string text = read_text_file(path, "tokenizer.json");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(path + ": expected a JSON object, got " + std::string(j.type_name()));
  if (!j.contains("added_tokens") || j["added_tokens"].is_null()) return;
  const json& list = j["added_tokens"];
  if (!list.is_array())
    throw Error(path + ": 'added_tokens' must be a list, got " + std::string(list.type_name()));
  for (size_t i = 0; i < list.size(); ++i) {
    const json& e = list[i];
    const std::string where = path + ": added_tokens[" + std::to_string(i) + "]";
    if (!e.is_object()) throw Error(where + ": expected an object, got " + std::string(e.type_name()));
    if (!e.contains("content") || !e["content"].is_string()) throw Error(where + ": 'content' must be a string");
    if (!e.contains("id") || !(e["id"].is_number_integer() || e["id"].is_number_unsigned()) ||
        e["id"].get<int64_t>() < 0 || e["id"].get<int64_t>() > INT32_MAX)
      throw Error(where + " ('" + e["content"].get<std::string>() + "'): 'id' must be a non-negative integer");
    auto flag = [&](const char* k) {
      if (!e.contains(k) || e[k].is_null()) return false;
      if (!e[k].is_boolean()) throw Error(where + ": '" + k + "' must be true or false");
      return e[k].get<bool>();
    };
    add_token(e["content"].get<std::string>(), e["id"].get<int>(), flag("lstrip"), flag("rstrip"), path);
  }
}

std::vector<int> Tokenizer::encode(const std::string& text, bool add_bos) const {
  PHI3_CHECK(sp_, "tokenizer: no model loaded");
  std::vector<int> out;
  if (add_bos) {
    PHI3_CHECK(bos_id() >= 0, "tokenizer: the SentencePiece model has no BOS piece");
    out.push_back(bos_id());
  }
  auto encode_text = [&](size_t begin, size_t end) {
    if (begin >= end) return;
    std::vector<int> ids;
    // The dummy prefix only on text that starts the input.
    auto& sp = begin == 0 ? *sp_ : *sp_no_prefix_;
    auto st = sp.Encode(std::string_view(text.data() + begin, end - begin), &ids);
    if (!st.ok()) throw Error("tokenizer: SentencePiece failed to encode: " + st.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  };

  bool first_byte[256] = {};
  for (const auto& kv : added_) first_byte[static_cast<uint8_t>(kv.first[0])] = true;
  size_t seg = 0, i = 0;
  while (i < text.size()) {
    const std::string* best = nullptr;
    int best_id = -1;
    if (first_byte[static_cast<uint8_t>(text[i])]) {
      for (const auto& [content, id] : added_) {
        if ((!best || content.size() > best->size()) && text.compare(i, content.size(), content) == 0) {
          best = &content;
          best_id = id;
        }
      }
    }
    if (!best) {
      ++i;
      continue;
    }
    const auto strip = strip_.at(best_id);
    size_t text_end = i;
    if (strip.first)
      while (text_end > seg && is_ascii_space(text[text_end - 1])) --text_end;
    encode_text(seg, text_end);
    out.push_back(best_id);
    i += best->size();
    if (strip.second)
      while (i < text.size() && is_ascii_space(text[i])) ++i;
    seg = i;
  }
  encode_text(seg, text.size());
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  PHI3_CHECK(sp_, "tokenizer: no model loaded");
  std::string out;
  bool strip_leading_space = false;
  bool first = true;
  for (int id : ids) {
    if (id >= 0 && id < piece_count()) {
      if (sp_->IsControl(id)) continue;  // <s>, </s>: not text
      if (sp_->IsUnknown(id)) {
        out += " \xe2\x81\x87 ";  // SentencePiece's unk surface " ⁇ "
      } else if (sp_->IsByte(id)) {
        const std::string p = sp_->IdToPiece(id);  // "<0xNN>"
        out.push_back(static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
      } else {
        std::string p = sp_->IdToPiece(id);
        if (first && p.compare(0, 3, kSpaceMark) == 0) strip_leading_space = true;  // the dummy prefix
        for (size_t k = 0; k < p.size();) {
          if (p.compare(k, 3, kSpaceMark) == 0) {
            out.push_back(' ');
            k += 3;
          } else {
            out.push_back(p[k++]);
          }
        }
      }
    } else {
      auto it = added_by_id_.find(id);
      if (it == added_by_id_.end())
        throw Error("tokenizer: cannot decode token id " + std::to_string(id) + " (vocab_size " +
                    std::to_string(vocab_size()) + ")");
      out += it->second;
    }
    first = false;
  }
  if (strip_leading_space && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

std::string Tokenizer::piece(int id) const {
  PHI3_CHECK(sp_, "tokenizer: no model loaded");
  auto it = added_by_id_.find(id);
  if (it != added_by_id_.end()) return it->second;
  if (id >= 0 && id < piece_count()) return sp_->IdToPiece(id);
  throw Error("tokenizer: token id " + std::to_string(id) + " is not in the vocabulary (vocab_size " +
              std::to_string(vocab_size()) + ")");
}

std::string Tokenizer::label(int id) const {
  if (added_by_id_.count(id) || (id >= 0 && id < piece_count())) return piece(id);
  return "<id " + std::to_string(id) + ">";
}

int Tokenizer::piece_count() const { return sp_ ? sp_->GetPieceSize() : 0; }

int Tokenizer::vocab_size() const {
  int n = piece_count();
  if (!added_by_id_.empty()) n = std::max(n, added_by_id_.rbegin()->first + 1);
  return n;
}

int Tokenizer::bos_id() const { return sp_ ? sp_->bos_id() : -1; }

std::vector<int> Tokenizer::answer_tokens(const std::string& answer) const {
  // " short" (TransformerLens / GPT-2 style) means the same word token as "short".
  const std::string word = !answer.empty() && answer[0] == ' ' ? answer.substr(1) : answer;
  if (word.empty()) throw Error("answer '" + answer + "' is empty");
  return encode(word, false);
}

int Tokenizer::answer_token(const std::string& answer) const {
  std::vector<int> ids = answer_tokens(answer);
  if (ids.size() == 1) return ids[0];
  std::string pieces;
  for (size_t i = 0; i < ids.size(); ++i) pieces += (i ? ", " : "") + piece(ids[i]);
  throw Error("answer '" + answer + "' is not a single token: it becomes [" + pieces +
              "] (--answer-first-token uses its first piece)");
}

}  // namespace phi3
