#include "long_sweep_case.h"

#include <string>

#include "model/arch/config_json.h"
#include "test_util.h"

namespace phi3::test {

LongSweepCase make_long_sweep_case(Backend& be) {
  LongSweepCase c;
  Model& m = c.model;
  m.dir = "random GQA model";
  m.cfg = parse_config_json(R"({"architectures": ["Phi3ForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1032,
      "max_position_embeddings": 1024, "original_max_position_embeddings": 1024, "pad_token_id": 1024,
      "eos_token_id": 1024, "sliding_window": 300})");
  m.tok = Tokenizer::load_dir(source_dir() + "/data/models/tiny-temporal-phi3");
  m.w = ModelWeights::random(be, m.cfg, 7, 0.3f);
  std::string clean;
  for (int i = 0; i < 40; ++i) clean += "The goal is to make one cup of coffee this afternoon. ";
  std::string corrupted = clean;
  clean += "The goal is to make one cup of cappuccino. Is this a short-term or long-term goal? The answer is:";
  corrupted += "The goal is to become a future president. Is this a short-term or long-term goal? The answer is:";
  c.batch = make_pair_batch({PromptPair::text(clean, corrupted, "short", "long")}, m.tok, m.cfg.pad_token_id,
                            m.cfg.max_position_embeddings);
  return c;
}

}  // namespace phi3::test
