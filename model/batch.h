// Prompt batches with TransformerLens semantics (DESIGN §2): BOS prepended, rows
// left-padded to a common length T with the pad token, rotary positions starting at 0 on
// each row's first real token (pad positions get position 0).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace phi3 {

class Tokenizer;

struct Batch {
  int B = 0;
  int T = 0;
  std::vector<int32_t> tokens;  // [B*T]
  std::vector<int32_t> pad;     // [B] left pads per row
  std::vector<int32_t> pos;     // [B*T] rotary position ids
  int32_t max_seq_len() const;  // longest real row (max position + 1)
};

// Left-pads token rows to T (T = 0: the longest row). Throws if a row is empty or longer than T.
Batch make_batch(const std::vector<std::vector<int>>& rows, int pad_id, int T = 0);

// One clean/corrupted prompt pair with single-token answers. The pairs file is a JSON list
// [{"clean": SIDE, "corrupted": SIDE}], each SIDE either text, {"question", "answer"} (the
// answer a word that must be one token), or pre-tokenized, {"ids": [int, ...], "answer_id":
// int} (ids without BOS; "question" and "answer" may label them). Pre-tokenized prompts need no tokenizer,
// so a benchmark checkpoint can be fed the real Phi-3 ids of a prompt (data/seed_phi3_ids.json).
// A side may name the wrong answer of its metric: "wrong" (a word, text sides; a label on
// pre-tokenized ones) or "wrong_id" (pre-tokenized). A prompt row whose clean prompt is that
// side then measures logit[answer] - logit[wrong]; without it the wrong answer is the other
// side's answer (so the two answers must differ). IOI pairs, whose clean and corrupted
// answers can be the same name, give "wrong".
struct PromptPair {
  std::string clean, corrupted;                // question text (pre-tokenized: its label or "")
  std::string clean_answer, corrupted_answer;  // answer word (pre-tokenized: its label or "")
  std::vector<int> clean_ids, corrupted_ids;   // pre-tokenized prompt ids (no BOS), else empty
  int clean_answer_id = -1, corrupted_answer_id = -1;  // pre-tokenized answer ids, else -1
  std::string clean_wrong, corrupted_wrong;    // "wrong": the word (text side) or its label; "" when not given
  int clean_wrong_id = -1, corrupted_wrong_id = -1;    // "wrong_id" (or a cut --answer-first-token word), else -1
  bool clean_has_wrong() const { return clean_wrong_id >= 0 || (clean_ids.empty() && !clean_wrong.empty()); }
  bool corrupted_has_wrong() const {
    return corrupted_wrong_id >= 0 || (corrupted_ids.empty() && !corrupted_wrong.empty());
  }

  static PromptPair text(std::string clean_q, std::string corrupted_q, std::string clean_a, std::string corrupted_a) {
    PromptPair p;
    p.clean = std::move(clean_q);
    p.corrupted = std::move(corrupted_q);
    p.clean_answer = std::move(clean_a);
    p.corrupted_answer = std::move(corrupted_a);
    return p;
  }
};
std::vector<PromptPair> load_pairs(const std::string& path);  // validates, names the culprit
std::vector<PromptPair> parse_pairs(const std::string& json_text, const std::string& source);

// --answer-first-token: every text answer (and "wrong" word) that is more than one token is
// replaced by its first piece (as the pre-tokenized answer_id; the word stays its label). Returns
// one line per answer cut ("pair 3 clean: ' cappuccino' -> '▁capp' (id 812) of [▁capp, uccino]").
std::vector<std::string> use_first_answer_tokens(std::vector<PromptPair>& pairs, const Tokenizer& tok);

// One side's prompt ids (BOS first when add_bos) and answer id, tokenized or as given.
std::vector<int> prompt_ids(const Tokenizer& tok, const std::string& text, const std::vector<int>& ids, bool add_bos);
int answer_id(const Tokenizer& tok, const std::string& word, int id);

// Whether the checkpoint had tokenizer files (a Tokenizer::none() stands in where it had none:
// pre-tokenized pairs only).
bool has_tokenizer(const Tokenizer& tok);

// The seed's batch: every pair mixed both ways. Clean rows [p0.clean, p0.corrupted, p1.clean,
// ...], corrupted rows [p0.corrupted, p0.clean, ...]; answer(b) = clean row's answer token,
// other(b) = the clean row's side's "wrong" token where given, else the corrupted row's answer
// token; both batches share one T. mix = false (--no-mix): only the pairs as given, clean
// rows [p0.clean, p1.clean, ...], corrupted rows [p0.corrupted, ...].
struct PairBatch {
  std::vector<std::string> clean_prompts, corrupted_prompts;
  Batch clean, corrupted;
  std::vector<int32_t> answer, other;  // [B]
};
// add_bos: prepend BOS (`<s>`) to every prompt (the default, as Phi-3-mini's original
// tokenizer config does); later Phi-3 revisions add none, so it is the caller's choice.
PairBatch make_pair_batch(const std::vector<PromptPair>& pairs, const Tokenizer& tok, int pad_id,
                          int max_positions, int T = 0, bool add_bos = true, bool mix = true);
int pair_batch_length(const std::vector<PromptPair>& pairs, const Tokenizer& tok, bool add_bos = true);  // longest row

// Checks what parse_pairs cannot without a model: every answer (and "wrong" word) is exactly
// one token (else names the pair, the answer and the pieces it became), each prompt row's
// answer and wrong answer are different tokens (with mix, the swapped rows' too), every
// pre-tokenized id is inside the model's vocabulary (vocab_size; <= 0: the tokenizer's), every
// prompt (with BOS) fits the model's context (max_positions tokens; <= 0: no limit), and
// that text prompts have a tokenizer. Errors start with `source` (the pairs file).
void check_pairs(const std::vector<PromptPair>& pairs, const Tokenizer& tok, int max_positions,
                 const std::string& source, bool add_bos = true, int vocab_size = 0, bool mix = true);

// Throws, naming the first text side, when the checkpoint has no tokenizer files
// (has_tokenizer) and a pair is not pre-tokenized.
void check_tokenizable(const std::vector<PromptPair>& pairs, const Tokenizer& tok, const std::string& source);

}  // namespace phi3
