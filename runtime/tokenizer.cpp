// The tokenizer facade: choose the model, load added tokens and BOS settings, split text at
// added tokens; see runtime/tokenizer.h.
#include "runtime/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/bpe_model.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/json_util.h"
#include "runtime/sentencepiece_model.h"
#include "runtime/unicode_regex.h"
#include "runtime/utf8.h"

namespace phi3 {

using json = nlohmann::json;

namespace {

// The start of the run of Unicode white space that ends at text[end] (not before `floor`).
size_t white_space_run_start(const std::string& text, size_t floor, size_t end) {
  size_t b = end;
  while (b > floor) {
    const size_t k = utf8_prev_start(text, b, floor);
    size_t at = k;
    if (!is_unicode_white_space(next_code_point(text, &at))) break;
    b = k;
  }
  return b;
}

// The end of the run of Unicode white space that starts at text[begin].
size_t white_space_run_end(const std::string& text, size_t begin) {
  static const UnicodeRegex run("\\s+", "White_Space run");
  return begin + run.match_at(text, begin);
}

// Whether the character just before (before = true) or at `at` is a word character: Unicode
// \w as Hugging Face's single_word test has it (alphabetic, marks, decimal digits, connector
// punctuation, joiners).
bool touches_word(const std::string& text, size_t at, bool before) {
  static const UnicodeRegex word("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]", "word test");
  if (before ? at == 0 : at >= text.size()) return false;
  return word.match_at(text, before ? utf8_prev_start(text, at) : at) > 0;
}

json parse_json_file(const std::string& path, const std::string& what) {
  const std::string text = read_text_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load_model_file(const std::string& path) {
  Tokenizer t;
  t.model_ = SentencePieceModel::load(path);
  return t;
}

Tokenizer Tokenizer::load_tokenizer_json_file(const std::string& path) {
  if (!file_exists(path)) {
    if (dir_exists(path)) throw Error("tokenizer.json '" + path + "' is a directory, not a file");
    throw Error("tokenizer.json '" + path + "' does not exist");
  }
  const json j = parse_json_file(path, "tokenizer.json");
  if (!j.is_object()) throw Error(path + ": expected a JSON object, got " + std::string(j.type_name()));
  Tokenizer t;
  t.model_ = BpeModel::from_json(j, path);
  t.load_added_tokens_list(j, path);
  return t;
}

Tokenizer Tokenizer::none(int bos_id, bool bos_by_default) {
  Tokenizer t;
  t.bos_id_ = bos_id;
  t.bos_default_ = bos_by_default && bos_id >= 0 ? 1 : 0;
  return t;
}

bool Tokenizer::present_in(const std::string& dir) {
  return file_exists(path_join(dir, "tokenizer.model")) || file_exists(path_join(dir, "tokenizer.json"));
}

Tokenizer Tokenizer::load_dir(const std::string& dir) {
  if (!dir_exists(dir)) throw Error("tokenizer directory '" + dir + "' does not exist");
  const std::string spm = path_join(dir, "tokenizer.model");
  const std::string added = path_join(dir, "added_tokens.json");
  const std::string tokjson = path_join(dir, "tokenizer.json");
  Tokenizer t;
  if (file_exists(spm) || dir_exists(spm)) {
    t = load_model_file(spm);
    if (file_exists(added)) t.load_added_tokens_json(added);
    else if (file_exists(tokjson)) t.load_added_tokens_list(parse_json_file(tokjson, "tokenizer.json"), tokjson);
  } else if (file_exists(tokjson)) {
    t = load_tokenizer_json_file(tokjson);
  } else {
    std::string hint;
    if (file_exists(path_join(dir, "vocab.json")) && file_exists(path_join(dir, "merges.txt")))
      hint = " (it has vocab.json + merges.txt: save the tokenizer with a current Hugging Face tokenizers "
             "or transformers to get tokenizer.json, which also records the pre-tokenizer those files lack)";
    throw Error("'" + dir + "' has no tokenizer: expected tokenizer.model (SentencePiece: Phi-3, Phi-3.5, "
                "Mistral, Gemma 2 and 3) or tokenizer.json (byte-level BPE: Phi-4, Qwen2/2.5, Qwen3, Llama 3.x, "
                "GPT-2, OLMoE; SentencePiece-style BPE: Gemma 3, Mistral / Mixtral)" + hint);
  }
  const std::string config = path_join(dir, "tokenizer_config.json");
  if (file_exists(config)) t.load_tokenizer_config(config);
  return t;
}

void Tokenizer::add_token(const std::string& content, int id, AddedFlags flags, const std::string& source) {
  const std::string where = source + ": added token '" + content + "'";
  if (content.empty()) throw Error(source + ": added token with id " + std::to_string(id) + " has empty content");
  if (id < 0) throw Error(where + ": id " + std::to_string(id) + " is negative");
  check_utf8(content, where);
  if (model_->has_piece(id)) {
    std::string p = model_->piece(id);
    if (p != content)
      throw Error(where + ": id " + std::to_string(id) + " is already " + model_->kind() + " piece '" + p + "'");
  }
  auto by_content = added_.find(content);
  if (by_content != added_.end() && by_content->second != id)
    throw Error(where + ": given two ids, " + std::to_string(by_content->second) + " and " + std::to_string(id));
  auto by_id = added_by_id_.find(id);
  if (by_id != added_by_id_.end() && by_id->second != content)
    throw Error(where + ": id " + std::to_string(id) + " is also given to '" + by_id->second + "'");
  added_[content] = id;
  added_by_id_[id] = content;
  flags_[id] = flags;
}

void Tokenizer::load_added_tokens_json(const std::string& path) {
  const json j = parse_json_file(path, "added tokens file");
  if (!j.is_object())
    throw Error(path + ": expected an object {\"token\": id, ...}, got " + std::string(j.type_name()));
  for (auto it = j.begin(); it != j.end(); ++it) {
    const json& v = it.value();
    if (!(v.is_number_integer() || v.is_number_unsigned()) || v.get<int64_t>() < 0 ||
        v.get<int64_t>() > INT32_MAX)
      throw Error(path + ": added token '" + it.key() + "': id must be a non-negative integer, got " + json_brief(v));
    add_token(it.key(), v.get<int>(), AddedFlags{}, path);
  }
}

void Tokenizer::load_added_tokens_list(const json& j, const std::string& path) {
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
    AddedFlags f;
    f.lstrip = flag("lstrip");
    f.rstrip = flag("rstrip");
    f.single_word = flag("single_word");
    add_token(e["content"].get<std::string>(), e["id"].get<int>(), f, path);
  }
}

void Tokenizer::load_tokenizer_config(const std::string& path) {
  const json j = parse_json_file(path, "tokenizer_config.json");
  if (!j.is_object()) throw Error(path + ": expected a JSON object, got " + std::string(j.type_name()));
  if (j.contains("add_bos_token") && !j["add_bos_token"].is_null()) {
    if (!j["add_bos_token"].is_boolean())
      throw Error(path + ": 'add_bos_token' must be true or false, got " + json_brief(j["add_bos_token"]));
    bos_default_ = j["add_bos_token"].get<bool>() ? 1 : 0;
  }
  // bos_token / pad_token: a string or {"content": ...} naming a token of the tokenizer.
  auto special = [&](const char* key) {
    if (!j.contains(key) || j[key].is_null()) return -1;
    const json& b = j[key];
    std::string content;
    if (b.is_string()) content = b.get<std::string>();
    else if (b.is_object() && b.contains("content") && b["content"].is_string()) content = b["content"].get<std::string>();
    else throw Error(path + ": '" + key + "' must be a string or {\"content\": ...}, got " + json_brief(b));
    auto it = added_.find(content);
    const int id = it != added_.end() ? it->second : model_->piece_id(content);
    if (id < 0) throw Error(path + ": " + key + " '" + content + "' is not a token of the tokenizer");
    return id;
  };
  if (const int id = special("bos_token"); id >= 0) bos_id_ = id;
  pad_id_ = special("pad_token");
}

std::vector<int> Tokenizer::encode(const std::string& text, bool add_bos) const {
  PHI3_CHECK(model_, "tokenizer: no model loaded");
  check_utf8(text, "tokenizer: the text");
  std::vector<int> out;
  if (add_bos) {
    PHI3_CHECK(bos_id() >= 0, "tokenizer: the " + model_->kind() + " tokenizer has no BOS token (use --no-bos)");
    out.push_back(bos_id());
  }
  auto encode_text = [&](size_t begin, size_t end) {
    if (begin < end) model_->encode(std::string_view(text.data() + begin, end - begin), begin == 0, &out);
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
    const AddedFlags& f = flags_.at(best_id);
    if (f.single_word && (touches_word(text, i, true) || touches_word(text, i + best->size(), false))) {
      i += best->size();  // not a match; the search goes on after it, as Hugging Face's
      continue;
    }
    encode_text(seg, f.lstrip ? white_space_run_start(text, seg, i) : i);
    out.push_back(best_id);
    i += best->size();
    if (f.rstrip) i = white_space_run_end(text, i);
    seg = i;
  }
  encode_text(seg, text.size());
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  PHI3_CHECK(model_, "tokenizer: no model loaded");
  for (int id : ids)
    if (!has_id(id))
      throw Error("tokenizer: cannot decode token id " + std::to_string(id) + " (vocab_size " +
                  std::to_string(vocab_size()) + ")");
  return model_->decode(ids, added_by_id_);
}

bool Tokenizer::has_id(int id) const { return added_by_id_.count(id) || (model_ && model_->has_piece(id)); }

std::string Tokenizer::piece(int id) const {
  PHI3_CHECK(model_, "tokenizer: no model loaded");
  auto it = added_by_id_.find(id);
  if (it != added_by_id_.end()) return it->second;
  if (model_->has_piece(id)) return model_->piece(id);
  throw Error("tokenizer: token id " + std::to_string(id) + " is not in the vocabulary (vocab_size " +
              std::to_string(vocab_size()) + ")");
}

std::string Tokenizer::label(int id) const {
  if (added_by_id_.count(id)) return added_by_id_.at(id);
  if (model_ && model_->has_piece(id)) return model_->label(id);
  return "<id " + std::to_string(id) + ">";
}

int Tokenizer::piece_count() const { return model_ ? model_->piece_count() : 0; }

int Tokenizer::vocab_size() const {
  int n = piece_count();
  if (!added_by_id_.empty()) n = std::max(n, added_by_id_.rbegin()->first + 1);
  return n;
}

int Tokenizer::bos_id() const { return bos_id_ >= 0 ? bos_id_ : model_ ? model_->bos_id() : -1; }

bool Tokenizer::bos_by_default() const {
  if (bos_default_ >= 0) return bos_default_ == 1;
  return model_ && model_->bos_by_default() && bos_id() >= 0;
}

std::string Tokenizer::kind() const { return model_ ? model_->kind() : "none"; }

std::vector<int> Tokenizer::answer_tokens(const std::string& answer) const {
  // " short" (TransformerLens / GPT-2 style) means the same word token as "short".
  const std::string word = !answer.empty() && answer[0] == ' ' ? answer.substr(1) : answer;
  if (word.empty()) throw Error("answer '" + answer + "' is empty");
  // An added token ("<|end|>") is that token, with or without the space before it.
  if (auto it = added_.find(word); it != added_.end()) return {it->second};
  return encode(model_->answer_text(word), false);
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
