// A 512-token batch: the exact sweep completes chunk by chunk inside a small memory budget
// and its values equal full patched forward passes at sampled targets.
#include <gtest/gtest.h>

#include <cmath>

#include "patching/sweep.h"
#include "runtime/config.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(SweepLong, FiveHundredTokensWithinMemoryBudget) {
  auto be = make_cpu_backend();
  Model m;
  m.dir = "random GQA model";
  m.cfg = parse_config_json(R"({"architectures": ["Phi3ForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1032,
      "max_position_embeddings": 1024, "original_max_position_embeddings": 1024, "pad_token_id": 1024,
      "eos_token_id": 1024, "sliding_window": 300})");
  m.tok = Tokenizer::load_dir(test::source_dir() + "/data/models/tiny-temporal-phi3");
  m.w = ModelWeights::random(*be, m.cfg, 7, 0.3f);
  std::string clean, corrupted;
  for (int i = 0; i < 40; ++i) clean += "The goal is to make one cup of coffee this afternoon. ";
  corrupted = clean;
  clean += "The goal is to make one cup of cappuccino. Is this a short-term or long-term goal? The answer is:";
  corrupted += "The goal is to become a future president. Is this a short-term or long-term goal? The answer is:";
  PairBatch pb = make_pair_batch({{clean, corrupted, "short", "long"}}, m.tok, m.cfg.pad_token_id,
                                 m.cfg.max_position_embeddings);
  ASSERT_GE(pb.clean.T, 500);
  ForwardState c = forward(*be, m, pb.clean), r = forward(*be, m, pb.corrupted);

  SweepOptions o;
  o.mem_budget = 8u << 20;  // 8 MiB of work buffers per chunk
  SweepResult s = activation_sweep(*be, m, r, c, pb.answer, pb.other, Hook::ResidPre, o);
  EXPECT_GT(s.work.chunks, 10) << "a 512-token sweep cannot fit 8 MiB at once";
  EXPECT_LE(double(s.work.token_layer_evals), 0.4 * s.work.naive_token_layer_evals);
  for (float v : s.ld) ASSERT_TRUE(std::isfinite(v));

  // Sampled targets against one full patched forward each (the naive definition).
  const int T = pb.clean.T, B = pb.clean.B;
  for (auto [l, p] : {std::pair{0, T - 60}, {1, T - 1}, {2, T - 30}, {0, T - 5}}) {
    PatchSpec spec{Hook::ResidPre, l, p, -1};
    ForwardOptions fo;
    fo.keep_pattern = false;
    fo.patch = &spec;
    fo.source = &c;
    ForwardState f = forward(*be, m, pb.corrupted, fo);
    LogitDiff ld = logit_diff(*be, m, f, pb.answer, pb.other);
    for (int b = 0; b < B; ++b)
      EXPECT_NEAR(s.ld[(size_t(l) * T + p) * B + b], ld.per_row[b], 1e-5) << "layer " << l << " pos " << p;
  }
}

}  // namespace
}  // namespace phi3
