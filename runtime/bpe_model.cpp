// Byte-level BPE: load from tokenizer.json, merge by rank, decode through the byte map.
#include "runtime/bpe_model.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>

#include "runtime/byte_level.h"
#include "runtime/error.h"
#include "runtime/json_util.h"
#include "runtime/utf8.h"

namespace phi3 {

using json = nlohmann::json;

namespace {

bool is_id(const json& v) {
  return (v.is_number_integer() || v.is_number_unsigned()) && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX;
}

// The part of a tokenizer.json that must be null or absent (or empty) for the ids to be ours.
void require_unset(const json& obj, const char* key, const std::string& where, const std::string& why) {
  if (!obj.contains(key)) return;
  const json& v = obj[key];
  if (v.is_null() || (v.is_string() && v.get<std::string>().empty()) || (v.is_boolean() && !v.get<bool>())) return;
  throw Error(where + ": '" + key + "' = " + json_brief(v) + " is not supported (" + why + ")");
}

void check_decoder(const json& j, const std::string& where) {
  if (j.is_object() && j.value("type", "") == "ByteLevel") return;
  if (j.is_object() && j.value("type", "") == "Sequence" && j.contains("decoders") && j["decoders"].is_array() &&
      !j["decoders"].empty()) {
    for (size_t i = 0; i < j["decoders"].size(); ++i)
      check_decoder(j["decoders"][i], where + ".decoders[" + std::to_string(i) + "]");
    return;
  }
  throw Error(where + ": decoder " + json_brief(j) + " is not supported (byte-level BPE needs the ByteLevel decoder)");
}

// BOS from a TemplateProcessing post-processor whose single-sequence template starts with a
// special token; -1 when there is none. Trailing special tokens (an EOS) are not added: prompts
// are continued, not closed.
int template_bos(const json& j, const std::string& where) {
  if (j.is_null()) return -1;
  const std::string type = j.is_object() ? j.value("type", "") : "";
  if (type == "ByteLevel") return -1;
  if (type == "Sequence" && j.contains("processors") && j["processors"].is_array()) {
    int bos = -1;
    for (size_t i = 0; i < j["processors"].size(); ++i) {
      const int b = template_bos(j["processors"][i], where + ".processors[" + std::to_string(i) + "]");
      if (b >= 0) bos = b;
    }
    return bos;
  }
  if (type != "TemplateProcessing")
    throw Error(where + ": post-processor " + json_brief(j) +
                " is not supported (ByteLevel, TemplateProcessing, or a Sequence of them)");
  if (!j.contains("single") || !j["single"].is_array() || j["single"].empty())
    throw Error(where + ": TemplateProcessing needs a 'single' template list");
  const json& first = j["single"][0];
  if (!first.is_object() || !first.contains("SpecialToken")) return -1;
  const json& st = first["SpecialToken"];
  if (!st.is_object() || !st.contains("id") || !st["id"].is_string())
    throw Error(where + ": TemplateProcessing single[0].SpecialToken needs an 'id' string");
  const std::string name = st["id"].get<std::string>();
  const json* specials = j.contains("special_tokens") && j["special_tokens"].is_object() ? &j["special_tokens"] : nullptr;
  if (!specials || !specials->contains(name) || !(*specials)[name].contains("ids") ||
      !(*specials)[name]["ids"].is_array() || (*specials)[name]["ids"].size() != 1 || !is_id((*specials)[name]["ids"][0]))
    throw Error(where + ": TemplateProcessing special token '" + name + "' needs exactly one id in special_tokens");
  return (*specials)[name]["ids"][0].get<int>();
}

}  // namespace

std::unique_ptr<BpeModel> BpeModel::from_json(const json& j, const std::string& path) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  if (!j.contains("model") || !j["model"].is_object()) throw Error(path + ": no 'model' object");
  const json& model = j["model"];
  const std::string where = path + ": model";
  const std::string type = model.value("type", "BPE");
  if (type != "BPE")
    throw Error(where + ": type '" + type + "' is not supported here (byte-level BPE; SentencePiece comes as tokenizer.model)");
  require_unset(model, "dropout", where, "BPE dropout makes encoding random");
  require_unset(model, "continuing_subword_prefix", where, "not a byte-level BPE setting");
  require_unset(model, "end_of_word_suffix", where, "not a byte-level BPE setting");
  require_unset(model, "byte_fallback", where, "byte-level BPE covers every byte already");
  m->norm_ = Normalizer::from_json(j.contains("normalizer") ? j["normalizer"] : json(), path + ": normalizer");
  m->pre_ = PreTokenizer::from_json(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), path + ": pre_tokenizer");
  if (!m->pre_.has_byte_level())
    throw Error(path + ": pre_tokenizer has no ByteLevel step; only byte-level BPE is supported");
  check_decoder(j.contains("decoder") ? j["decoder"] : json(), path + ": decoder");
  m->template_bos_ = template_bos(j.contains("post_processor") ? j["post_processor"] : json(), path + ": post_processor");

  if (!model.contains("vocab") || !model["vocab"].is_object() || model["vocab"].empty())
    throw Error(where + ": 'vocab' must be a non-empty object {piece: id}");
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!is_id(it.value()))
      throw Error(where + ".vocab['" + it.key() + "']: id must be a non-negative integer, got " + json_brief(it.value()));
    const int id = it.value().get<int>();
    if (id >= static_cast<int>(m->pieces_.size())) {
      m->pieces_.resize(id + 1);
      m->present_.resize(id + 1, false);
    }
    if (m->present_[id])
      throw Error(where + ".vocab: id " + std::to_string(id) + " is given to both '" + m->pieces_[id] + "' and '" +
                  it.key() + "'");
    m->pieces_[id] = it.key();
    m->present_[id] = true;
    m->vocab_[it.key()] = id;
  }
  if (model.contains("merges") && !model["merges"].is_null()) {
    const json& merges = model["merges"];
    if (!merges.is_array()) throw Error(where + ": 'merges' must be a list");
    m->merges_.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); ++r) {
      const json& e = merges[r];
      const std::string at = where + ".merges[" + std::to_string(r) + "]";
      std::string a, b;
      if (e.is_string()) {
        const std::string s = e.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          throw Error(at + ": '" + s + "' is not two pieces separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        throw Error(at + ": expected \"a b\" or [\"a\", \"b\"], got " + json_brief(e));
      }
      auto ia = m->vocab_.find(a), ib = m->vocab_.find(b), iab = m->vocab_.find(a + b);
      if (ia == m->vocab_.end()) throw Error(at + ": '" + a + "' is not in the vocabulary");
      if (ib == m->vocab_.end()) throw Error(at + ": '" + b + "' is not in the vocabulary");
      if (iab == m->vocab_.end()) throw Error(at + ": the merged piece '" + a + b + "' is not in the vocabulary");
      m->merges_[pair_key(ia->second, ib->second)] = {static_cast<int>(r), iab->second};
    }
  }
  if (model.contains("ignore_merges") && !model["ignore_merges"].is_null()) {
    if (!model["ignore_merges"].is_boolean()) throw Error(where + ": 'ignore_merges' must be true or false");
    m->ignore_merges_ = model["ignore_merges"].get<bool>();
  }
  if (model.contains("fuse_unk") && !model["fuse_unk"].is_null()) {
    if (!model["fuse_unk"].is_boolean()) throw Error(where + ": 'fuse_unk' must be true or false");
    m->fuse_unk_ = model["fuse_unk"].get<bool>();
  }
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    if (!model["unk_token"].is_string()) throw Error(where + ": 'unk_token' must be a string");
    auto it = m->vocab_.find(model["unk_token"].get<std::string>());
    if (it == m->vocab_.end())
      throw Error(where + ": unk_token '" + model["unk_token"].get<std::string>() + "' is not in the vocabulary");
    m->unk_id_ = it->second;
  }
  return m;
}

std::string BpeModel::label(int id) const {
  const std::string& p = pieces_.at(id);
  std::string bytes;
  if (!from_byte_level(p, &bytes)) return p;
  if (utf8_lossy(bytes) == bytes) return bytes;
  std::string out;
  for (unsigned char c : bytes) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", c);
    out += hex;
  }
  return out;
}

int BpeModel::piece_id(const std::string& piece) const {
  auto it = vocab_.find(piece);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeModel::merge_word(const std::string& word, std::vector<int>* out) const {
  struct Sym {
    int id, prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  bool pending_unk = false;
  for (std::string_view c : utf8_chars(word)) {
    auto it = vocab_.find(std::string(c));
    if (it == vocab_.end()) {
      if (unk_id_ < 0)
        throw Error("tokenizer: the character '" + std::string(c) + "' of word '" + word +
                    "' is not in the vocabulary and the tokenizer has no unk_token");
      if (fuse_unk_ && pending_unk) continue;  // one unk for the whole run
      syms.push_back({unk_id_, 0, 0, true});
      pending_unk = true;
      continue;
    }
    pending_unk = false;
    syms.push_back({it->second, 0, 0, true});
  }
  const int n = static_cast<int>(syms.size());
  for (int i = 0; i < n; ++i) {
    syms[i].prev = i - 1;
    syms[i].next = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int rank, pos, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    auto it = merges_.find(pair_key(syms[pos].id, syms[syms[pos].next].id));
    if (it != merges_.end()) heap.push({it->second.first, pos, it->second.second});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand top = heap.top();
    heap.pop();
    Sym& s = syms[top.pos];
    if (!s.alive || s.next < 0) continue;
    auto it = merges_.find(pair_key(s.id, syms[s.next].id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;  // stale candidate
    Sym& right = syms[s.next];
    s.id = top.new_id;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) syms[s.next].prev = top.pos;
    push(s.prev);
    push(top.pos);
  }
  for (const Sym& s : syms)
    if (s.alive) out->push_back(s.id);
}

void BpeModel::encode_word(const std::string& word, std::vector<int>* out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int> ids;
  merge_word(word, &ids);
  out->insert(out->end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() < kCacheCapacity) cache_.emplace(word, std::move(ids));
}

void BpeModel::encode(std::string_view text, bool /*starts_input*/, std::vector<int>* out) const {
  if (norm_.identity()) {
    for (const std::string& word : pre_.apply(text)) encode_word(word, out);
  } else {
    for (const std::string& word : pre_.apply(norm_.apply(text))) encode_word(word, out);
  }
}

std::string BpeModel::decode(const std::vector<int>& ids, const std::map<int, std::string>& added) const {
  std::string bytes;
  for (int id : ids) {
    auto a = added.find(id);
    const std::string* token = nullptr;
    if (a != added.end()) token = &a->second;
    else if (has_piece(id)) token = &pieces_[id];
    else throw Error("tokenizer: cannot decode token id " + std::to_string(id) + " (not a piece or added token)");
    // The ByteLevel decoder: a token whose characters are all byte-level stands for those
    // bytes; any other token (an added "<|im_start|>" is byte-level too) is taken as its text.
    if (!from_byte_level(*token, &bytes)) bytes += *token;
  }
  return utf8_lossy(bytes);
}

}  // namespace phi3
