// The published shapes of `make-random --like` / `bench --predict --like`
// (patching/cli/model_shapes.cpp): each parses as its family, and its weights, laid out by the
// loader (placeholders on a TraceBackend that computes nothing), hold the parameter count its
// model card states.
#include <gtest/gtest.h>

#include <map>

#include "model/model.h"
#include "patching/cli/commands.h"
#include "model/arch/config_json.h"
#include "runtime/error.h"
#include "runtime/trace_backend.h"

namespace phi3 {
namespace {

struct Published {
  const char* architecture;
  double params;  // as the model card gives it
};

// Parameter counts from the model cards (Qwen's, Meta's, Mistral's and Microsoft's pages).
const std::map<std::string, Published> kPublished = {
    {"phi-3-mini", {"Phi3ForCausalLM", 3.82e9}},   {"phi-3-medium", {"Phi3ForCausalLM", 13.96e9}},
    {"phi-3-mini-128k", {"Phi3ForCausalLM", 3.82e9}},
    {"phi-4-mini", {"Phi3ForCausalLM", 3.84e9}},   {"qwen2.5-0.5b", {"Qwen2ForCausalLM", 0.49e9}},
    {"qwen2.5-1.5b", {"Qwen2ForCausalLM", 1.54e9}}, {"qwen2.5-3b", {"Qwen2ForCausalLM", 3.09e9}},
    {"qwen2.5-7b", {"Qwen2ForCausalLM", 7.61e9}},   {"qwen2.5-14b", {"Qwen2ForCausalLM", 14.7e9}},
    {"qwen2.5-32b", {"Qwen2ForCausalLM", 32.5e9}},  {"qwen2.5-72b", {"Qwen2ForCausalLM", 72.7e9}},
    {"llama-3.2-1b", {"LlamaForCausalLM", 1.24e9}}, {"llama-3.2-3b", {"LlamaForCausalLM", 3.21e9}},
    {"llama-3.1-8b", {"LlamaForCausalLM", 8.03e9}}, {"llama-3.1-70b", {"LlamaForCausalLM", 70.6e9}},
    {"mistral-7b", {"MistralForCausalLM", 7.24e9}}, {"mistral-nemo-12b", {"MistralForCausalLM", 12.2e9}},
    {"qwen3-0.6b", {"Qwen3ForCausalLM", 0.6e9}},    {"qwen3-1.7b", {"Qwen3ForCausalLM", 1.7e9}},
    {"qwen3-4b", {"Qwen3ForCausalLM", 4.0e9}},      {"qwen3-8b", {"Qwen3ForCausalLM", 8.2e9}},
    {"qwen3-14b", {"Qwen3ForCausalLM", 14.8e9}},    {"qwen3-32b", {"Qwen3ForCausalLM", 32.8e9}},
    {"gemma-2-2b", {"Gemma2ForCausalLM", 2.61e9}},  {"gemma-2-9b", {"Gemma2ForCausalLM", 9.24e9}},
    {"gemma-2-27b", {"Gemma2ForCausalLM", 27.2e9}},
    // Gemma 3: the text decoder alone (4B / 12B / 27B: the cards' 4.3 / 12.2 / 27.4 B less the
    // 0.42 B SigLIP vision encoder and projector, which the engine does not load).
    {"gemma-3-1b", {"Gemma3ForCausalLM", 1.0e9}},   {"gemma-3-4b", {"Gemma3ForCausalLM", 3.88e9}},
    {"gemma-3-12b", {"Gemma3ForCausalLM", 11.77e9}}, {"gemma-3-27b", {"Gemma3ForCausalLM", 26.98e9}},
    // GPT-2: 124 M, 355 M, 774 M, 1.5 B (1,557,611,200) as the model cards and the GPT-2 paper's code give them.
    {"gpt2", {"GPT2LMHeadModel", 124.4e6}},        {"gpt2-medium", {"GPT2LMHeadModel", 354.8e6}},
    {"gpt2-large", {"GPT2LMHeadModel", 774.0e6}},  {"gpt2-xl", {"GPT2LMHeadModel", 1557.6e6}},
    // mixtures of experts: every expert counted (Qwen3-30B-A3B 30.5 B, OLMoE-1B-7B 6.92 B,
    // Mixtral-8x7B 46.7 B, Phi-3.5-MoE 41.9 B in the Mixtral-layout stand-in)
    {"qwen3-30b-a3b", {"Qwen3MoeForCausalLM", 30.5e9}}, {"olmoe-1b-7b", {"OlmoeForCausalLM", 6.92e9}},
    {"mixtral-8x7b", {"MixtralForCausalLM", 46.7e9}},  {"phi-3.5-moe", {"MixtralForCausalLM", 41.9e9}},
};

TEST(ModelShapes, EveryShapeHasItsPublishedSize) {
  int checked = 0;
  for (const std::string& like : like_shape_names()) {
    if (like == "tiny") continue;
    SCOPED_TRACE(like);
    auto it = kPublished.find(like);
    ASSERT_NE(it, kPublished.end()) << "a shape without its published size in this test";
    const ModelConfig cfg = parse_config_json(config_like(like).dump(), like);
    EXPECT_EQ(cfg.architecture, it->second.architecture);
    Trace t;
    TraceBackend tb(nullptr, t, DeviceKind::CUDA, DType::BF16, 0, "count");
    {
      ModelWeights w = ModelWeights::placeholder(tb, cfg);
      // bf16 matrices and embeddings (norms in fp32 are a rounding error); tied embeddings once.
      const double params = tb.used_bytes() / 2.0;
      // Cards round to 2-3 digits (Qwen3-0.6B: 0.6 for 0.596 B).
      EXPECT_NEAR(params, it->second.params, 0.015 * it->second.params);
    }
    EXPECT_EQ(tb.used_bytes(), 0u);  // every placeholder freed
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(kPublished.size()));
}

TEST(ModelShapes, LayersOverrideAndUnknownShape) {
  EXPECT_EQ(config_like("qwen2.5-7b", 2)["num_hidden_layers"], 2);
  try {
    config_like("qwen2.5-9b");
    FAIL() << "accepted an unknown shape";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qwen2.5-9b"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("qwen3-32b"), std::string::npos);  // the list names the shapes
  }
}

}  // namespace
}  // namespace phi3
