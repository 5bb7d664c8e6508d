// --answer-first-token (issue 14 item 5): an answer of more than one token is an error naming its
// pieces, unless the flag is given; then its first piece is the answer and results.json lists the
// answers cut. "shortterm" / "longterm" become [▁short, term] / [▁long, term], so with the flag
// the seed pairs with those answers give exactly the seed experiment's results.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/batch.h"
#include "runtime/tokenizer.h"
#include "test_util.h"

namespace phi3 {
namespace {

using nlohmann::json;

using test::slurp;

std::string seed_pairs() { return test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"; }

// The seed pairs with every answer made two tokens long.
std::string two_token_pairs(const std::string& dir) {
  json j = json::parse(slurp(seed_pairs()));
  for (auto& p : j)
    for (const char* side : {"clean", "corrupted"}) p[side]["answer"] = p[side]["answer"].get<std::string>() + "term";
  const std::string path = dir + "/pairs.json";
  std::ofstream(path) << j.dump(1);
  return path;
}

int run(const std::string& args, const std::string& dir) { return test::run_cli(PHI3_CLI, args, dir); }

TEST(AnswerFirstToken, ListsCutsAndGivesTheFirstPiecesResults) {
  const std::string dir = test::temp_dir("answer_first_token");
  const std::string pairs = two_token_pairs(dir);
  const std::string common = "run --device cpu --hooks resid_pre,attn_out --method both --force ";
  // Without the flag: one error naming the answer, its pieces and the flag.
  ASSERT_EQ(run(common + "--pairs " + pairs + " --out " + dir + "/no", dir), 2);
  const std::string err = slurp(dir + "/stderr.txt");
  for (const char* needle : {"shortterm", "▁short, term", "--answer-first-token"})
    EXPECT_NE(err.find(needle), std::string::npos) << needle << " in: " << err;
  // With it: the same numbers as the seed's one-token answers.
  ASSERT_EQ(run(common + "--pairs " + pairs + " --answer-first-token --out " + dir + "/cut", dir), 0)
      << slurp(dir + "/stderr.txt");
  ASSERT_EQ(run(common + "--pairs " + seed_pairs() + " --out " + dir + "/seed", dir), 0) << slurp(dir + "/stderr.txt");
  const json cut = json::parse(slurp(dir + "/cut/results.json")), seed = json::parse(slurp(dir + "/seed/results.json"));
  ASSERT_EQ(cut["answer_first_token"].size(), 4u);  // 2 pairs x 2 sides
  EXPECT_NE(cut["answer_first_token"][0].get<std::string>().find("'shortterm' -> '▁short'"), std::string::npos)
      << cut["answer_first_token"][0];
  EXPECT_TRUE(seed["answer_first_token"].empty());
  EXPECT_EQ(cut["clean_logit_diff"], seed["clean_logit_diff"]);
  ASSERT_EQ(cut["results"].size(), seed["results"].size());
  for (size_t i = 0; i < seed["results"].size(); ++i) EXPECT_EQ(cut["results"][i]["values"], seed["results"][i]["values"]);
}

TEST(AnswerFirstToken, LeavesOneTokenAndPreTokenizedAnswersAlone) {
  Tokenizer tok = Tokenizer::load_dir(test::source_dir() + "/data/models/tiny-temporal-phi3");
  std::vector<PromptPair> pairs = load_pairs(seed_pairs());
  pairs[0].corrupted_answer_id = 77;  // as if pre-tokenized
  pairs[0].clean_answer = "shortterm";
  const auto cut = use_first_answer_tokens(pairs, tok);
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(pairs[0].clean_answer_id, tok.answer_token("short"));
  EXPECT_EQ(pairs[0].corrupted_answer_id, 77);
  EXPECT_EQ(pairs[1].clean_answer_id, -1);  // one token: untouched
  EXPECT_NE(cut[0].find("pair 0 clean"), std::string::npos);
}

}  // namespace
}  // namespace phi3
