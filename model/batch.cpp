#include "model/batch.h"

#include <algorithm>
#include <nlohmann/json.hpp>

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
    auto side = [&](const char* key, std::string& q, std::string& a) {
      if (!p.contains(key)) throw Error(where + ": missing key \"" + key + "\"");
      const auto& s = p[key];
      if (!s.is_object()) throw Error(where + ": \"" + key + "\" must be an object with \"question\" and \"answer\"");
      for (const char* f : {"question", "answer"}) {
        if (!s.contains(f)) throw Error(where + ": missing key \"" + key + "." + f + "\"");
        if (!s[f].is_string()) throw Error(where + ": \"" + key + "." + f + "\" must be a string");
      }
      q = s["question"].get<std::string>();
      a = s["answer"].get<std::string>();
      if (q.empty()) throw Error(where + ": \"" + key + ".question\" is empty");
      if (a.empty()) throw Error(where + ": \"" + key + ".answer\" is empty");
    };
    PromptPair pp;
    side("clean", pp.clean, pp.clean_answer);
    side("corrupted", pp.corrupted, pp.corrupted_answer);
    if (pp.clean_answer == pp.corrupted_answer)
      throw Error(where + ": clean and corrupted answers are both '" + pp.clean_answer +
                  "' (the logit difference needs two different answers)");
    out.push_back(pp);
  }
  return out;
}

std::vector<PromptPair> load_pairs(const std::string& path) {
  return parse_pairs(read_text_file(path, "pairs file"), path);
}

int pair_batch_length(const std::vector<PromptPair>& pairs, const Tokenizer& tok, bool add_bos) {
  int longest = 0;
  for (const auto& p : pairs) {
    longest = std::max<int>(longest, static_cast<int>(tok.encode(p.clean, add_bos).size()));
    longest = std::max<int>(longest, static_cast<int>(tok.encode(p.corrupted, add_bos).size()));
  }
  return longest;
}

void check_pairs(const std::vector<PromptPair>& pairs, const Tokenizer& tok, int max_positions,
                 const std::string& source, bool add_bos) {
  for (size_t i = 0; i < pairs.size(); ++i) {
    const PromptPair& p = pairs[i];
    const std::string where = source + ": pair " + std::to_string(i);
    auto answer = [&](const char* side, const std::string& a) {
      try {
        return tok.answer_token(a);
      } catch (const Error& e) {
        throw Error(where + ": \"" + side + ".answer\" " + e.what());
      }
    };
    const int a_clean = answer("clean", p.clean_answer);
    const int a_corr = answer("corrupted", p.corrupted_answer);
    if (a_clean == a_corr)
      throw Error(where + ": clean answer '" + p.clean_answer + "' and corrupted answer '" + p.corrupted_answer +
                  "' are the same token '" + tok.piece(a_clean) + "' (the logit difference needs two different tokens)");
    if (max_positions <= 0) continue;
    for (const auto& [side, text] : {std::pair<const char*, const std::string*>{"clean", &p.clean},
                                     std::pair<const char*, const std::string*>{"corrupted", &p.corrupted}}) {
      const size_t n = tok.encode(*text, add_bos).size();
      if (static_cast<int64_t>(n) > max_positions)
        throw Error(where + ": \"" + side + ".question\" is " + std::to_string(n) +
                    " tokens long" + std::string(add_bos ? " (with BOS)" : "") + ", more than the model's context of " + std::to_string(max_positions) +
                    " (max_position_embeddings in config.json)");
    }
  }
}

PairBatch make_pair_batch(const std::vector<PromptPair>& pairs, const Tokenizer& tok, int pad_id,
                          int max_positions, int T, bool add_bos) {
  PairBatch pb;
  std::vector<std::vector<int>> clean_ids, corrupted_ids;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& p = pairs[i];
    int a_clean = tok.answer_token(p.clean_answer);
    int a_corr = tok.answer_token(p.corrupted_answer);
    auto ic = tok.encode(p.clean, add_bos);
    auto ir = tok.encode(p.corrupted, add_bos);
    for (const auto* ids : {&ic, &ir}) {
      if (max_positions > 0 && static_cast<int>(ids->size()) > max_positions)
        throw Error("pair " + std::to_string(i) + ": prompt has " + std::to_string(ids->size()) +
                    " tokens, longer than the model's context of " + std::to_string(max_positions));
    }
    // Both directions: (clean, corrupted) and the swapped pair.
    auto add_row = [&](const std::string& c, const std::vector<int>& c_ids, int c_ans, const std::string& r,
                       const std::vector<int>& r_ids, int r_ans) {
      pb.clean_prompts.push_back(c);
      pb.corrupted_prompts.push_back(r);
      clean_ids.push_back(c_ids);
      corrupted_ids.push_back(r_ids);
      pb.answer.push_back(c_ans);
      pb.other.push_back(r_ans);
    };
    add_row(p.clean, ic, a_clean, p.corrupted, ir, a_corr);
    add_row(p.corrupted, ir, a_corr, p.clean, ic, a_clean);
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
