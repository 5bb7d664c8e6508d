// BPE from tokenizer.json (byte-level, or SentencePiece-style with byte fallback): load, merge
// by rank, decode through the byte map or the decoder chain.
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

std::string decoder_string(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string()) throw Error(where + ": '" + key + "' must be a string");
  return j[key].get<std::string>();
}

// The decoder chain of a SentencePiece-style tokenizer.json (Replace, ByteFallback, Fuse,
// Strip, Metaspace, or a Sequence of them).
void add_decoder_steps(const json& j, const std::string& where, std::vector<BpeModel::DecodeStep>* out) {
  const std::string type = j.is_object() ? j.value("type", "") : "";
  if (type == "Sequence" && j.contains("decoders") && j["decoders"].is_array()) {
    for (size_t i = 0; i < j["decoders"].size(); ++i)
      add_decoder_steps(j["decoders"][i], where + ".decoders[" + std::to_string(i) + "]", out);
    return;
  }
  BpeModel::DecodeStep d;
  using K = BpeModel::DecodeStep::Kind;
  if (type == "Replace") {
    const json& p = j.contains("pattern") ? j["pattern"] : json();
    if (!p.is_object() || !p.contains("String") || !p["String"].is_string() || p["String"].get<std::string>().empty())
      throw Error(where + ": Replace decoder pattern " + json_brief(p) + " is not supported (a non-empty String)");
    d.kind = K::kReplace;
    d.a = p["String"].get<std::string>();
    d.b = decoder_string(j, "content", where);
  } else if (type == "ByteFallback") {
    d.kind = K::kByteFallback;
  } else if (type == "Fuse") {
    d.kind = K::kFuse;
  } else if (type == "Strip") {
    d.kind = K::kStrip;
    d.a = decoder_string(j, "content", where);
    if (utf8_chars(d.a).size() != 1) throw Error(where + ": Strip 'content' must be one character");
    for (const char* k : {"start", "stop"})
      if (!j.contains(k) || !j[k].is_number_integer() || j[k].get<int64_t>() < 0)
        throw Error(where + ": Strip needs a non-negative integer '" + k + "'");
    d.start = static_cast<int>(j["start"].get<int64_t>());
    d.stop = static_cast<int>(j["stop"].get<int64_t>());
  } else if (type == "Metaspace") {
    d.kind = K::kMetaspace;
    d.a = j.contains("replacement") && j["replacement"].is_string() ? j["replacement"].get<std::string>() : "\u2581";
    const std::string scheme = j.contains("prepend_scheme") && j["prepend_scheme"].is_string()
                                   ? j["prepend_scheme"].get<std::string>()
                                   : (j.value("add_prefix_space", true) ? "always" : "never");
    d.start = scheme == "never" ? 0 : 1;
  } else {
    throw Error(where + ": decoder " + json_brief(j) +
                " is not supported (ByteLevel for byte-level BPE; Replace, ByteFallback, Fuse, Strip, Metaspace "
                "or a Sequence of them for SentencePiece-style BPE)");
  }
  out->push_back(d);
}

// <0xNN> -> NN; -1 for any other piece.
int byte_piece(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = t[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// One decoder step over the tokens' texts, as Hugging Face's decode_chain of that decoder.
std::vector<std::string> decode_step(const BpeModel::DecodeStep& d, std::vector<std::string> tokens) {
  using K = BpeModel::DecodeStep::Kind;
  switch (d.kind) {
    case K::kReplace:
      for (auto& t : tokens) t = replace_all(t, d.a, d.b);
      return tokens;
    case K::kFuse: {
      std::string all;
      for (const auto& t : tokens) all += t;
      return {all};
    }
    case K::kStrip:  // up to `start` leading and `stop` trailing copies of the character, per token
      for (auto& t : tokens) {
        size_t b = 0, e = t.size();
        for (int i = 0; i < d.start && t.compare(b, d.a.size(), d.a) == 0 && b < e; ++i) b += d.a.size();
        for (int i = 0; i < d.stop && e >= b + d.a.size() && t.compare(e - d.a.size(), d.a.size(), d.a) == 0; ++i)
          e -= d.a.size();
        t = t.substr(b, e - b);
      }
      return tokens;
    case K::kMetaspace:  // the replacement is a space, except in the first token where a prefix was added
      for (size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = replace_all(tokens[i], d.a, i == 0 && d.start ? "" : " ");
      return tokens;
    case K::kByteFallback: {  // runs of <0xNN> become their bytes, or one U+FFFD per byte if not UTF-8
      std::vector<std::string> out;
      std::string bytes;
      int n_bytes = 0;
      auto flush = [&] {
        if (!n_bytes) return;
        if (utf8_lossy(bytes) == bytes) {
          out.push_back(bytes);
        } else {
          for (int i = 0; i < n_bytes; ++i) out.push_back("\xEF\xBF\xBD");
        }
        bytes.clear();
        n_bytes = 0;
      };
      for (auto& t : tokens) {
        const int v = byte_piece(t);
        if (v >= 0) {
          bytes.push_back(static_cast<char>(v));
          ++n_bytes;
          continue;
        }
        flush();
        out.push_back(std::move(t));
      }
      flush();
      return out;
    }
  }
  return tokens;
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
  m->norm_ = Normalizer::from_json(j.contains("normalizer") ? j["normalizer"] : json(), path + ": normalizer");
  m->pre_ = PreTokenizer::from_json(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), path + ": pre_tokenizer");
  m->byte_level_ = m->pre_.has_byte_level();
  const json decoder = j.contains("decoder") ? j["decoder"] : json();
  if (m->byte_level_) {
    require_unset(model, "byte_fallback", where, "byte-level BPE covers every byte already");
    check_decoder(decoder, path + ": decoder");
  } else {
    // SentencePiece-style BPE (Gemma, Llama 2, Mistral converted to tokenizer.json): pieces of
    // characters with "▁" for spaces, unknown characters as <0xNN> byte pieces.
    if (model.contains("byte_fallback") && !model["byte_fallback"].is_null()) {
      if (!model["byte_fallback"].is_boolean()) throw Error(where + ": 'byte_fallback' must be true or false");
      m->byte_fallback_ = model["byte_fallback"].get<bool>();
    }
    if (decoder.is_object() && decoder.value("type", "") == "ByteLevel")
      throw Error(path + ": pre_tokenizer has no ByteLevel step, but the decoder is ByteLevel: byte-level BPE needs "
                         "both (a SentencePiece-style BPE decodes with Replace/ByteFallback/Fuse or Metaspace)");
    if (decoder.is_null())
      throw Error(path + ": decoder is missing (a SentencePiece-style BPE needs Replace/ByteFallback/Fuse or Metaspace)");
    add_decoder_steps(decoder, path + ": decoder", &m->decode_steps_);
  }
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

std::string BpeModel::kind() const { return byte_level_ ? "byte-level BPE" : "SentencePiece-style BPE"; }

std::string BpeModel::answer_text(const std::string& word) const {
  // The word as it follows a space: where the tokenizer marks the start of the text itself
  // (a Prepend normalizer, a Metaspace prefix), the word alone already is.
  if (!byte_level_ && (norm_.prepends() || pre_.prepends_at_start())) return word;
  return " " + word;
}

std::string BpeModel::label(int id) const {
  const std::string& p = pieces_.at(id);
  if (!byte_level_) return p;
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
    if (it == vocab_.end() && byte_fallback_) {
      // Hugging Face's byte fallback: the character's UTF-8 bytes as <0xNN> pieces when all exist.
      std::vector<int> bytes;
      for (unsigned char b : c) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto bt = vocab_.find(name);
        if (bt == vocab_.end()) break;
        bytes.push_back(bt->second);
      }
      if (bytes.size() == c.size()) {
        for (int b : bytes) syms.push_back({b, 0, 0, true});
        pending_unk = false;
        continue;
      }
    }
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

void BpeModel::encode(std::string_view text, bool starts_input, std::vector<int>* out) const {
  if (norm_.identity()) {
    for (const std::string& word : pre_.apply(text, starts_input)) encode_word(word, out);
  } else {
    for (const std::string& word : pre_.apply(norm_.apply(text), starts_input)) encode_word(word, out);
  }
}

std::string BpeModel::decode(const std::vector<int>& ids, const std::map<int, std::string>& added) const {
  auto token_of = [&](int id) -> const std::string& {
    auto a = added.find(id);
    if (a != added.end()) return a->second;
    if (has_piece(id)) return pieces_[id];
    throw Error("tokenizer: cannot decode token id " + std::to_string(id) + " (not a piece or added token)");
  };
  if (!byte_level_) {  // the decoder chain over every token's text, added tokens included
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int id : ids) tokens.push_back(token_of(id));
    for (const DecodeStep& d : decode_steps_) tokens = decode_step(d, std::move(tokens));
    std::string text;
    for (const auto& t : tokens) text += t;
    return utf8_lossy(text);
  }
  std::string bytes;
  for (int id : ids) {
    const std::string* token = &token_of(id);
    // The ByteLevel decoder: a token whose characters are all byte-level stands for those
    // bytes; any other token (an added "<|im_start|>" is byte-level too) is taken as its text.
    if (!from_byte_level(*token, &bytes)) bytes += *token;
  }
  return utf8_lossy(bytes);
}

}  // namespace phi3
