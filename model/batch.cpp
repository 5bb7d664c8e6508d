#include "model/batch.h"

#include <algorithm>
#include <climits>
#include <tuple>
#include <nlohmann/json.hpp>

#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/tokenizer.h"

namespace phi3 {

int32_t Batch::max_seq_len() const {
  int32_t m = 0;
  for (int b = 0; b < B; ++b) m = std::max<int32_t>(m, T - pad[b]);
  return m;
}

Batch make_batch(const std::vector<std::vector<int>>& rows, int pad_id, int T) {
  Batch bt;
  bt.B = static_cast<int>(rows.size());
  PHI3_CHECK(bt.B > 0, "batch: no prompts");
  int longest = 0;
  for (const auto& r : rows) longest = std::max<int>(longest, static_cast<int>(r.size()));
  bt.T = T > 0 ? T : longest;
  PHI3_CHECK(longest <= bt.T, "batch: a prompt has " + std::to_string(longest) +
                                  " tokens, more than the batch length " + std::to_string(bt.T));
  bt.tokens.assign(static_cast<size_t>(bt.B) * bt.T, pad_id);
  bt.pos.assign(static_cast<size_t>(bt.B) * bt.T, 0);
  bt.pad.resize(bt.B);
  for (int b = 0; b < bt.B; ++b) {
    const auto& r = rows[b];
    PHI3_CHECK(!r.empty(), "batch: prompt " + std::to_string(b) + " is empty");
    int pad = bt.T - static_cast<int>(r.size());
    bt.pad[b] = pad;
    for (size_t i = 0; i < r.size(); ++i) {
      bt.tokens[static_cast<size_t>(b) * bt.T + pad + i] = r[i];
      bt.pos[static_cast<size_t>(b) * bt.T + pad + i] = static_cast<int32_t>(i);
    }
  }
  return bt;
}

std::vector<PromptPair> parse_pairs(const std::string& text, const std::string& source) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos)
    throw Error(source + ": the file is empty (expected a JSON list of {\"clean\", \"corrupted\"} pairs)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(source + ": not valid JSON: " + e.what());
  }
  if (!j.is_array()) throw Error(source + ": expected a JSON list of {\"clean\", \"corrupted\"} pairs");
  if (j.empty()) throw Error(source + ": the list of pairs is empty");
  std::vector<PromptPair> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string where = source + ": pair " + std::to_string(i);
    const auto& p = j[i];
    if (!p.is_object()) throw Error(where + ": expected an object with keys \"clean\" and \"corrupted\"");
    // A missing key: where the object has a key close to it that is not one of `known`, name that
    // key as written and suggest the missing one ("clean.answr": did you mean "clean.answer"?).
    auto missing = [&](const nlohmann::json& obj, const std::string& prefix, const std::string& key,
                       const std::vector<std::string>& known, const std::string& note) {
      for (auto it = obj.begin(); it != obj.end(); ++it) {
        if (std::find(known.begin(), known.end(), it.key()) != known.end()) continue;
        if (!closest_name(it.key(), {key}).empty())
          throw Error(where + ": unknown key \"" + prefix + it.key() + "\"; did you mean \"" + prefix + key + "\"?");
      }
      throw Error(where + ": missing key \"" + prefix + key + "\"" + note);
    };
    static const std::vector<std::string> kPairKeys = {"clean", "corrupted"};
    static const std::vector<std::string> kSideKeys = {"question", "answer", "ids", "answer_id", "wrong", "wrong_id"};
    auto side = [&](const char* key, std::string& q, std::string& a, std::vector<int>& ids, int& aid, std::string& w,
                    int& wid) {
      if (!p.contains(key)) missing(p, "", key, kPairKeys, "");
      const auto& s = p[key];
      if (!s.is_object())
        throw Error(where + ": \"" + key + "\" must be an object with \"question\" and \"answer\" (or \"ids\" and " +
                    "\"answer_id\")");
      auto token_id = [&](const char* f) {
        const auto& v = s[f];
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
          throw Error(where + ": \"" + key + "." + f + "\" is " + v.dump() + ", not a token id");
        return v.get<int>();
      };
      if (s.contains("ids") || s.contains("answer_id")) {  // pre-tokenized
        if (!s.contains("ids")) missing(s, std::string(key) + ".", "ids", kSideKeys, " (it has \"answer_id\")");
        if (!s.contains("answer_id")) missing(s, std::string(key) + ".", "answer_id", kSideKeys, " (it has \"ids\")");
        if (!s["ids"].is_array() || s["ids"].empty())
          throw Error(where + ": \"" + key + ".ids\" must be a non-empty list of token ids");
        for (size_t k = 0; k < s["ids"].size(); ++k) {
          const auto& v = s["ids"][k];
          if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
            throw Error(where + ": \"" + key + ".ids\"[" + std::to_string(k) + "] is " + v.dump() +
                        ", not a token id (a non-negative integer)");
          ids.push_back(v.get<int>());
        }
        aid = token_id("answer_id");
        if (s.contains("wrong_id")) wid = token_id("wrong_id");
        for (auto [f, dst] : {std::pair<const char*, std::string*>{"question", &q}, {"answer", &a}, {"wrong", &w}}) {
          if (!s.contains(f)) continue;  // optional labels
          if (!s[f].is_string()) throw Error(where + ": \"" + key + "." + f + "\" must be a string");
          *dst = s[f].get<std::string>();
        }
        if (s.contains("wrong") && wid < 0)
          throw Error(where + ": \"" + key + ".wrong\" labels a pre-tokenized side's wrong answer: give its id as \"" +
                      key + ".wrong_id\"");
        if (wid >= 0 && wid == aid)
          throw Error(where + ": \"" + key + ".wrong_id\" and \"" + key + ".answer_id\" are both " +
                      std::to_string(aid) + " (the logit difference needs two different tokens)");
        return;
      }
      for (const char* f : {"question", "answer"}) {
        if (!s.contains(f)) missing(s, std::string(key) + ".", f, kSideKeys, "");
        if (!s[f].is_string()) throw Error(where + ": \"" + key + "." + f + "\" must be a string");
      }
      q = s["question"].get<std::string>();
      a = s["answer"].get<std::string>();
      if (q.empty()) throw Error(where + ": \"" + key + ".question\" is empty");
      if (a.empty()) throw Error(where + ": \"" + key + ".answer\" is empty");
      if (s.contains("wrong_id"))
        throw Error(where + ": \"" + key + ".wrong_id\" belongs to a pre-tokenized side (with \"ids\" and " +
                    "\"answer_id\"); a text side names its wrong answer as a word, \"" + key + ".wrong\"");
      if (s.contains("wrong")) {
        if (!s["wrong"].is_string()) throw Error(where + ": \"" + key + ".wrong\" must be a string");
        w = s["wrong"].get<std::string>();
        if (w.empty()) throw Error(where + ": \"" + key + ".wrong\" is empty");
        if (w == a)
          throw Error(where + ": \"" + key + ".wrong\" and \"" + key + ".answer\" are both '" + a +
                      "' (the logit difference needs two different answers)");
      }
    };
    PromptPair pp;
    side("clean", pp.clean, pp.clean_answer, pp.clean_ids, pp.clean_answer_id, pp.clean_wrong, pp.clean_wrong_id);
    side("corrupted", pp.corrupted, pp.corrupted_answer, pp.corrupted_ids, pp.corrupted_answer_id, pp.corrupted_wrong,
         pp.corrupted_wrong_id);
    // Without a "wrong" answer on either side each side's wrong answer is the other's answer.
    const bool no_wrong = !pp.clean_has_wrong() && !pp.corrupted_has_wrong();
    const char* give_wrong = pp.clean_ids.empty() ? "give each side a \"wrong\" answer (e.g. the other name of an IOI "
                                                    "pair), the token the metric compares the answer with"
                                                  : "give each side a \"wrong_id\", the token the metric compares the "
                                                    "answer with";
    if (no_wrong && pp.clean_answer_id >= 0 && pp.clean_answer_id == pp.corrupted_answer_id)
      throw Error(where + ": clean and corrupted answer ids are both " + std::to_string(pp.clean_answer_id) +
                  " (the logit difference needs two different answers: " + give_wrong + ")");
    if (no_wrong && pp.clean_answer_id < 0 && pp.corrupted_answer_id < 0 && pp.clean_answer == pp.corrupted_answer)
      throw Error(where + ": clean and corrupted answers are both '" + pp.clean_answer +
                  "' (the logit difference needs two different answers: " + give_wrong + ")");
    out.push_back(pp);
  }
  return out;
}

std::vector<PromptPair> load_pairs(const std::string& path) {
  return parse_pairs(read_text_file(path, "pairs file"), path);
}

std::vector<int> prompt_ids(const Tokenizer& tok, const std::string& text, const std::vector<int>& ids, bool add_bos) {
  if (ids.empty()) return tok.encode(text, add_bos);
  std::vector<int> out;
  if (add_bos) out.push_back(tok.bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

bool has_tokenizer(const Tokenizer& tok) { return tok.kind() != "none"; }

void check_tokenizable(const std::vector<PromptPair>& pairs, const Tokenizer& tok, const std::string& source) {
  if (has_tokenizer(tok)) return;
  for (size_t i = 0; i < pairs.size(); ++i)
    for (const auto& [side, ids] : {std::pair<const char*, const std::vector<int>*>{"clean", &pairs[i].clean_ids},
                                    {"corrupted", &pairs[i].corrupted_ids}})
      if (ids->empty())
        throw Error(source + ": pair " + std::to_string(i) + ": \"" + side +
                    ".question\" is text, but the checkpoint has no tokenizer files (neither tokenizer.model nor "
                    "tokenizer.json) to tokenize it: give the pairs pre-tokenized ({\"ids\": [...], \"answer_id\": N}, "
                    "ids without BOS) or copy the tokenizer files into the model directory");
}

std::vector<std::string> use_first_answer_tokens(std::vector<PromptPair>& pairs, const Tokenizer& tok) {
  std::vector<std::string> cut;
  for (size_t i = 0; i < pairs.size(); ++i) {
    PromptPair& p = pairs[i];
    using Word = std::tuple<const char*, const std::string*, int*>;
    for (auto [side, word, id] : {Word{"clean", &p.clean_answer, &p.clean_answer_id},
                                  Word{"corrupted", &p.corrupted_answer, &p.corrupted_answer_id},
                                  Word{"clean wrong", &p.clean_wrong, &p.clean_wrong_id},
                                  Word{"corrupted wrong", &p.corrupted_wrong, &p.corrupted_wrong_id}}) {
      if (*id >= 0 || word->empty()) continue;  // pre-tokenized, or no "wrong"
      if (!has_tokenizer(tok)) continue;        // check_tokenizable names it
      const std::vector<int> ids = tok.answer_tokens(*word);
      if (ids.size() < 2) continue;
      std::string pieces;
      for (size_t k = 0; k < ids.size(); ++k) pieces += (k ? ", " : "") + tok.piece(ids[k]);
      *id = ids[0];
      cut.push_back("pair " + std::to_string(i) + " " + side + ": '" + *word + "' -> '" + tok.piece(ids[0]) +
                    "' (id " + std::to_string(ids[0]) + ") of [" + pieces + "]");
    }
  }
  return cut;
}

int answer_id(const Tokenizer& tok, const std::string& word, int id) { return id >= 0 ? id : tok.answer_token(word); }

int pair_batch_length(const std::vector<PromptPair>& pairs, const Tokenizer& tok, bool add_bos) {
  int longest = 0;
  for (const auto& p : pairs) {
    longest = std::max<int>(longest, static_cast<int>(prompt_ids(tok, p.clean, p.clean_ids, add_bos).size()));
    longest = std::max<int>(longest, static_cast<int>(prompt_ids(tok, p.corrupted, p.corrupted_ids, add_bos).size()));
  }
  return longest;
}

void check_pairs(const std::vector<PromptPair>& pairs, const Tokenizer& tok, int max_positions,
                 const std::string& source, bool add_bos, int vocab_size, bool mix) {
  check_tokenizable(pairs, tok, source);
  const int V = vocab_size > 0 ? vocab_size : tok.vocab_size();
  for (size_t i = 0; i < pairs.size(); ++i) {
    const PromptPair& p = pairs[i];
    const std::string where = source + ": pair " + std::to_string(i);
    auto answer = [&](const std::string& key, const std::string& a, int id) {
      if (id >= 0) {
        if (id >= V)
          throw Error(where + ": \"" + key + "_id\" " + std::to_string(id) + " is outside the vocabulary (" +
                      std::to_string(V) + " tokens)");
        return id;
      }
      try {
        return tok.answer_token(a);
      } catch (const Error& e) {
        throw Error(where + ": \"" + key + "\" " + e.what());
      }
    };
    const int a_clean = answer("clean.answer", p.clean_answer, p.clean_answer_id);
    const int a_corr = answer("corrupted.answer", p.corrupted_answer, p.corrupted_answer_id);
    const int w_clean = p.clean_has_wrong() ? answer("clean.wrong", p.clean_wrong, p.clean_wrong_id) : -1;
    const int w_corr = p.corrupted_has_wrong() ? answer("corrupted.wrong", p.corrupted_wrong, p.corrupted_wrong_id) : -1;
    // The rows: clean side against its wrong answer (else the corrupted answer), and with mix the
    // swapped row the same way.
    auto row = [&](const char* side, const char* other_side, int a, int w, int a_other, bool other_pretok) {
      if (w >= 0) {
        if (w == a)
          throw Error(where + ": " + side + " answer '" + tok.label(a) + "' and its wrong answer '" + tok.label(w) +
                      "' are the same token (the logit difference needs two different tokens)");
        return;
      }
      if (a != a_other) return;
      const std::string key = std::string(side) + (other_pretok ? ".wrong_id" : ".wrong");
      if (std::string(side) == "clean" || (!p.clean_has_wrong() && !p.corrupted_has_wrong()))
        throw Error(where + ": clean answer '" + tok.label(a_clean) + "' and corrupted answer '" + tok.label(a_corr) +
                    "' are the same token (the logit difference needs two different tokens: give \"" + key +
                    "\", the token the " + side + " answer is compared with)");
      throw Error(where + ": the " + std::string(side) + " side has no \"" + key + "\", and its answer '" + tok.label(a) +
                  "' is the " + other_side + " answer too: the swapped pair (every pair is mixed both ways; --no-mix " +
                  "uses only the pair as given) needs \"" + key + "\"");
    };
    row("clean", "corrupted", a_clean, w_clean, a_corr, !p.clean_ids.empty());
    if (mix) row("corrupted", "clean", a_corr, w_corr, a_clean, !p.corrupted_ids.empty());
    for (const auto* ids : {&p.clean_ids, &p.corrupted_ids})
      for (size_t k = 0; k < ids->size(); ++k)
        if ((*ids)[k] >= V)
          throw Error(where + ": \"" + (ids == &p.clean_ids ? "clean" : "corrupted") + ".ids\"[" + std::to_string(k) +
                      "] = " + std::to_string((*ids)[k]) + " is outside the vocabulary (" + std::to_string(V) +
                      " tokens)");
    if (max_positions <= 0) continue;
    for (const auto& [side, text, ids] :
         {std::tuple<const char*, const std::string*, const std::vector<int>*>{"clean", &p.clean, &p.clean_ids},
          std::tuple<const char*, const std::string*, const std::vector<int>*>{"corrupted", &p.corrupted,
                                                                               &p.corrupted_ids}}) {
      size_t n = 0;
      try {
        n = prompt_ids(tok, *text, *ids, add_bos).size();
      } catch (const Error& e) {
        throw Error(where + ": \"" + side + ".question\": " + e.what());
      }
      if (static_cast<int64_t>(n) > max_positions)
        throw Error(where + ": \"" + side + (ids->empty() ? ".question" : ".ids") + "\" is " + std::to_string(n) +
                    " tokens long" + std::string(add_bos ? " (with BOS)" : "") + ", more than the model's context of " + std::to_string(max_positions) +
                    " (max_position_embeddings in config.json)");
    }
  }
}

PairBatch make_pair_batch(const std::vector<PromptPair>& pairs, const Tokenizer& tok, int pad_id,
                          int max_positions, int T, bool add_bos, bool mix) {
  PairBatch pb;
  std::vector<std::vector<int>> clean_ids, corrupted_ids;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& p = pairs[i];
    const int a_clean = answer_id(tok, p.clean_answer, p.clean_answer_id);
    const int a_corr = answer_id(tok, p.corrupted_answer, p.corrupted_answer_id);
    // The token each side's answer is compared with: its "wrong" answer, else the other side's.
    const int w_clean = p.clean_has_wrong() ? answer_id(tok, p.clean_wrong, p.clean_wrong_id) : a_corr;
    const int w_corr = p.corrupted_has_wrong() ? answer_id(tok, p.corrupted_wrong, p.corrupted_wrong_id) : a_clean;
    auto ic = prompt_ids(tok, p.clean, p.clean_ids, add_bos);
    auto ir = prompt_ids(tok, p.corrupted, p.corrupted_ids, add_bos);
    for (const auto* ids : {&ic, &ir}) {
      if (max_positions > 0 && static_cast<int>(ids->size()) > max_positions)
        throw Error("pair " + std::to_string(i) + ": prompt has " + std::to_string(ids->size()) +
                    " tokens, longer than the model's context of " + std::to_string(max_positions));
    }
    // Both directions: (clean, corrupted) and the swapped pair (mix), else the first alone.
    auto add_row = [&](const std::string& c, const std::vector<int>& c_ids, int c_ans, const std::string& r,
                       const std::vector<int>& r_ids, int c_other) {
      pb.clean_prompts.push_back(c);
      pb.corrupted_prompts.push_back(r);
      clean_ids.push_back(c_ids);
      corrupted_ids.push_back(r_ids);
      pb.answer.push_back(c_ans);
      pb.other.push_back(c_other);
    };
    // A pre-tokenized prompt without a label shows as its pieces.
    auto text = [&](const std::string& t, const std::vector<int>& ids) {
      if (!t.empty() || ids.empty()) return t;
      std::string s;
      for (int id : ids) s += tok.label(id);
      return s;
    };
    const std::string tc = text(p.clean, p.clean_ids), tr = text(p.corrupted, p.corrupted_ids);
    add_row(tc, ic, a_clean, tr, ir, w_clean);
    if (mix) add_row(tr, ir, a_corr, tc, ic, w_corr);
  }
  int longest = 0;
  for (auto* rows : {&clean_ids, &corrupted_ids})
    for (const auto& r : *rows) longest = std::max<int>(longest, static_cast<int>(r.size()));
  if (T <= 0) T = longest;
  pb.clean = make_batch(clean_ids, pad_id, T);
  pb.corrupted = make_batch(corrupted_ids, pad_id, T);
  return pb;
}

}  // namespace phi3
