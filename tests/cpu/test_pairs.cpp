// Pairs files: the pre-tokenized form ({"ids", "answer_id"}) against the text form, and the
// committed seed ids of the real Phi-3 tokenizer (data/seed_phi3_ids.json).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/batch.h"
#include "model/forward.h"
#include "runtime/file_util.h"
#include "test_util.h"

namespace phi3 {
namespace {

std::string tiny_dir() { return test::source_dir() + "/data/models/tiny-temporal-phi3"; }
std::string seed_pairs() { return test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"; }

// The text pairs re-written as ids (encoded by the model's own tokenizer) make the same batch,
// token for token, and the same logit differences; BOS follows add_bos in both forms.
TEST(Pairs, PreTokenizedEqualsText) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  auto text = load_pairs(seed_pairs());
  nlohmann::json j = nlohmann::json::array();
  for (const auto& p : text)
    j.push_back({{"clean", {{"ids", m->tok.encode(p.clean, false)}, {"answer_id", m->tok.answer_token(p.clean_answer)}}},
                 {"corrupted",
                  {{"ids", m->tok.encode(p.corrupted, false)}, {"answer_id", m->tok.answer_token(p.corrupted_answer)}}}});
  auto ids = parse_pairs(j.dump(), "ids.json");
  ASSERT_EQ(ids.size(), text.size());
  for (bool bos : {true, false}) {
    const int V = m->cfg.vocab_size, P = m->cfg.max_position_embeddings;
    EXPECT_NO_THROW(check_pairs(ids, m->tok, P, "ids.json", bos, V));
    EXPECT_EQ(pair_batch_length(ids, m->tok, bos), pair_batch_length(text, m->tok, bos));
    PairBatch a = make_pair_batch(text, m->tok, m->cfg.pad_token_id, P, 0, bos);
    PairBatch b = make_pair_batch(ids, m->tok, m->cfg.pad_token_id, P, 0, bos);
    EXPECT_EQ(a.clean.tokens, b.clean.tokens);
    EXPECT_EQ(a.corrupted.tokens, b.corrupted.tokens);
    EXPECT_EQ(a.clean.pos, b.clean.pos);
    EXPECT_EQ(a.clean.pad, b.clean.pad);
    EXPECT_EQ(a.answer, b.answer);
    EXPECT_EQ(a.other, b.other);
    EXPECT_EQ(a.clean.tokens[size_t(a.clean.pad[0])] == m->tok.bos_id(), bos);
    // Unlabelled ids show as their pieces.
    std::string pieces;
    for (int id : m->tok.encode(text[0].clean, false)) pieces += m->tok.piece(id);
    EXPECT_EQ(b.clean_prompts[0], pieces);
    LogitDiff la = logit_diff(*be, *m, forward(*be, *m, a.clean), a.answer, a.other);
    LogitDiff lb = logit_diff(*be, *m, forward(*be, *m, b.clean), b.answer, b.other);
    EXPECT_EQ(la.per_row, lb.per_row);
  }
}

// The seed's real Phi-3 ids (tools/make_seed_ids.py, the real tokenizer.model): the first pair
// is what shared/phi3-reference/FACTS.md lists; with BOS the batch is 4 rows of T = 31.
TEST(Pairs, SeedPhi3Ids) {
  auto pairs = load_pairs(test::source_dir() + "/data/seed_phi3_ids.json");
  ASSERT_EQ(pairs.size(), 2u);
  const std::vector<int> first = {450,  7306, 338,  304,   1207,  697,   18002, 310,  274,  932,
                                  29884, 617, 1789, 29889, 1317,  445,   263,   3273, 29899, 8489,
                                  470,  1472, 29899, 8489, 7306, 29973, 450,   1234, 338,  29901};
  EXPECT_EQ(pairs[0].clean_ids, first);
  EXPECT_EQ(pairs[0].corrupted_ids.size(), 25u);
  for (const auto& p : pairs) {
    EXPECT_EQ(p.clean_answer_id, 3273);  // ▁short
    EXPECT_EQ(p.corrupted_answer_id, 1472);  // ▁long
  }
  // Phi-3-mini's vocabulary is 32064; the embedded tokenizer only labels what it knows.
  Tokenizer tok = Tokenizer::load_dir(tiny_dir());
  EXPECT_NO_THROW(check_pairs(pairs, tok, 4096, "seed", true, 32064));
  EXPECT_THROW(check_pairs(pairs, tok, 4096, "seed", true, 0), Error);  // the tiny vocabulary is too small
  EXPECT_EQ(pair_batch_length(pairs, tok, true), 31);
  PairBatch pb = make_pair_batch(pairs, tok, 32000, 4096, 0, true);
  EXPECT_EQ(pb.clean.B, 4);
  EXPECT_EQ(pb.clean.T, 31);
  EXPECT_EQ(pb.answer, (std::vector<int32_t>{3273, 1472, 3273, 1472}));
  EXPECT_EQ(pb.other, (std::vector<int32_t>{1472, 3273, 1472, 3273}));
  EXPECT_EQ(pb.clean_prompts[0], "The goal is to make one cup of cappuccino. Is this a short-term or long-term goal? The answer is:");
}

}  // namespace
}  // namespace phi3
