// The decoder families (model/arch/, issue 23): each config.json layout parses into the
// flags the engine runs on (biases, per-layer windows, head_dim, rope type), the expected
// checkpoint tensors follow the family's layout, llama3 / linear rope frequencies equal
// transformers', and what a family cannot be is refused naming the field.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "model/arch/architecture.h"
#include "model/weights.h"
#include "model/arch/config_json.h"
#include "test_util.h"

namespace phi3 {
namespace {

using json = nlohmann::json;
using test::error_of;
using ::testing::HasSubstr;

ModelConfig parse(const json& j) { return parse_config_json(j.dump(), "config.json"); }

// Qwen2.5-3B's config.json (the seed's second model), as published.
json qwen25_3b() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 32768, "max_window_layers": 36,
    "model_type": "qwen2", "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
    "use_sliding_window": false, "vocab_size": 151936})");
}

// Llama-3.1-8B's config.json, as published.
json llama31_8b() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
    "vocab_size": 128256})");
}

// Mistral-Nemo's shape: head_dim 128 while hidden_size / heads = 160.
json mistral_nemo() {
  return json::parse(R"({
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 5120,
    "head_dim": 128, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 40,
    "num_key_value_heads": 8, "max_position_embeddings": 1024000, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false, "vocab_size": 131072})");
}

TEST(Arch, EveryFamilyIsListed) {
  std::vector<std::string> names;
  for (const auto& a : architectures()) names.push_back(a.hf_class);
  EXPECT_THAT(names, ::testing::ElementsAre("Phi3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM",
                                            "MistralForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM",
                                            "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration",
                                            "GPT2LMHeadModel", "MixtralForCausalLM", "Qwen3MoeForCausalLM",
                                            "OlmoeForCausalLM"));
}

// openai-community/gpt2's config.json, as published: GPT-2's field names, its flags, and the
// fields the engine cannot honour refused before any weight is read.
json gpt2_hub() {
  return json::parse(R"({
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
    "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
    "vocab_size": 50257})");
}

TEST(Arch, Gpt2FromThePublishedConfig) {
  const ModelConfig c = parse_config_json(gpt2_hub().dump(), "gpt2");
  EXPECT_EQ(c.family, "gpt2");
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.intermediate_size, 3072);  // n_inner absent: 4 n_embd
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.num_key_value_heads, 12);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 1024);
  EXPECT_EQ(c.rotary_dim, 0);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_TRUE(c.norm_layer && c.pos_embed && !c.mlp_gated);
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_id, 50256);
  EXPECT_EQ(c.pad_token_id, 50256);
  // The tensors as the hub checkpoint names them (Conv1D [in, out]; with or without "transformer.").
  const auto t = expected_tensors(c);
  EXPECT_EQ(t.front().name, "wte.weight");
  EXPECT_EQ(t[1].name, "wpe.weight");
  EXPECT_EQ(t[1].shape, (std::vector<int64_t>{1024, 768}));
  bool c_attn = false;
  for (const auto& e : t)
    if (e.name == "h.0.attn.c_attn.weight") {
      c_attn = true;
      EXPECT_EQ(e.shape, (std::vector<int64_t>{768, 2304}));
      EXPECT_TRUE(e.transposed);
    }
  EXPECT_TRUE(c_attn);
  EXPECT_EQ(t.back().name, "ln_f.bias");
  // An explicit n_inner.
  json j = gpt2_hub();
  j["n_inner"] = 1000;
  EXPECT_EQ(parse_config_json(j.dump(), "gpt2").intermediate_size, 1000);
  // What is refused, naming the field.
  const std::vector<std::pair<std::string, json>> bad = {
      {"scale_attn_by_inverse_layer_idx", true}, {"reorder_and_upcast_attn", true},
      {"scale_attn_weights", false}, {"add_cross_attention", true}, {"activation_function", "relu"}};
  for (const auto& [field, value] : bad) {
    json k = gpt2_hub();
    k[field] = value;
    EXPECT_THAT(error_of([&] { parse_config_json(k.dump(), "gpt2"); }), HasSubstr("'" + field + "'")) << field;
  }
}

// The mixtures of experts from their published configs (Mixtral-8x7B-v0.1, Qwen3-30B-A3B,
// OLMoE-1B-7B-0924; sizes as on the hub): every MoE flag, and the refusals naming the field.
TEST(Arch, MoeFromThePublishedConfigs) {
  const ModelConfig mx = parse_config_json(R"({
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "output_router_logits": false, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
    "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 32000})");
  EXPECT_EQ(mx.num_experts, 8);
  EXPECT_EQ(mx.experts_per_tok, 2);
  EXPECT_EQ(mx.moe_intermediate_size, 14336);
  EXPECT_TRUE(mx.moe_renorm);
  EXPECT_FALSE(mx.qk_norm);
  EXPECT_EQ(mx.window(31), 0);
  EXPECT_EQ(mx.head_dim, 128);
  const ModelConfig q = parse_config_json(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "bos_token_id": 151643,
    "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32,
    "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": null,
    "tie_word_embeddings": false, "use_sliding_window": false, "vocab_size": 151936})");
  EXPECT_EQ(q.num_experts, 128);
  EXPECT_EQ(q.experts_per_tok, 8);
  EXPECT_EQ(q.moe_intermediate_size, 768);
  EXPECT_TRUE(q.moe_renorm);
  EXPECT_TRUE(q.qk_norm);
  EXPECT_FALSE(q.qk_norm_full);
  const ModelConfig o = parse_config_json(R"({
    "architectures": ["OlmoeForCausalLM"], "attention_bias": false, "clip_qkv": null, "eos_token_id": 50279,
    "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 1024, "max_position_embeddings": 4096,
    "model_type": "olmoe", "norm_topk_prob": false, "num_attention_heads": 16, "num_experts": 64,
    "num_experts_per_tok": 8, "num_hidden_layers": 16, "num_key_value_heads": 16, "pad_token_id": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0, "tie_word_embeddings": false,
    "vocab_size": 50304})");
  EXPECT_EQ(o.num_experts, 64);
  EXPECT_EQ(o.moe_intermediate_size, 1024);
  EXPECT_FALSE(o.moe_renorm);
  EXPECT_TRUE(o.qk_norm);
  EXPECT_TRUE(o.qk_norm_full);
  // q/k norm weights over the whole widths (OLMoE), per head (Qwen3-MoE)
  const LayerPlan lo = layer_plan(o, 0), lq = layer_plan(q, 0);
  EXPECT_EQ(lo.q_norm.at(0).shape, (std::vector<int64_t>{2048}));
  EXPECT_EQ(lq.q_norm.at(0).shape, (std::vector<int64_t>{128}));
  EXPECT_EQ(lq.router.at(0).name, "model.layers.0.mlp.gate.weight");
  EXPECT_EQ(lq.expert_gate_up.size(), 128u);
  EXPECT_EQ(lq.expert_down.at(5).at(0).name, "model.layers.0.mlp.experts.5.down_proj.weight");
  EXPECT_EQ(layer_plan(mx, 3).expert_gate_up.at(7).at(1).name, "model.layers.3.block_sparse_moe.experts.7.w3.weight");
  EXPECT_EQ(layer_plan(mx, 0, true).expert_gate_up.at(0).at(0).shape, (std::vector<int64_t>{8, 2 * 14336, 4096}));

  auto error_of = [](const std::string& json) {
    try {
      parse_config_json(json, "config.json");
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string base = R"("architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "num_experts": 4)";
  EXPECT_THAT(error_of("{" + base + R"(, "mlp_only_layers": [1]})"), ::testing::HasSubstr("field 'mlp_only_layers'"));
  EXPECT_THAT(error_of("{" + base + R"(, "decoder_sparse_step": 2})"),
              ::testing::HasSubstr("field 'decoder_sparse_step': only 1"));
  EXPECT_THAT(error_of("{" + base + R"(, "num_experts_per_tok": 5})"),
              ::testing::HasSubstr("field 'num_experts_per_tok': 5 exceeds the 4 experts"));
  EXPECT_THAT(error_of(R"({"architectures": ["OlmoeForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "num_experts": 4, "clip_qkv": 8.0})"),
              ::testing::HasSubstr("field 'clip_qkv'"));
  EXPECT_THAT(error_of(R"({"architectures": ["MixtralForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100})"),
              ::testing::HasSubstr("field 'num_local_experts': missing"));
}

// Gemma-2-2B's config.json, as published: every Gemma 2 flag from it.
TEST(Arch, Gemma2FromThePublishedConfig) {
  const ModelConfig c = parse_config_json(R"({
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
    "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
    "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": true, "vocab_size": 256000})");
  EXPECT_EQ(c.family, "gemma2");
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_TRUE(c.tie_word_embeddings);  // Gemma2Config's default, absent from the file
  EXPECT_TRUE(c.mlp_gelu_tanh && c.post_norms && c.norm_offset);
  EXPECT_FLOAT_EQ(c.embed_scale, 48.0f);   // sqrt(2304)
  EXPECT_FLOAT_EQ(c.attn_scale, 0.0625f);  // 256^-1/2
  EXPECT_FLOAT_EQ(c.attn_softcap, 50.0f);
  EXPECT_FLOAT_EQ(c.final_softcap, 30.0f);
  EXPECT_EQ(c.pad_token_id, 0);
  ASSERT_EQ(c.layer_window.size(), 26u);
  for (int l = 0; l < 26; ++l) EXPECT_EQ(c.window(l), l % 2 == 0 ? 4096 : 0) << l;  // sliding on even layers
  EXPECT_THROW(parse_config_json(R"({"architectures": ["Gemma2ForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
    "hidden_activation": "silu"})"), Error);
}

// google/gemma-3-4b-it's config.json as published: a sparse text_config (what it omits comes
// from Gemma3TextConfig's defaults: 8 heads, 4 kv heads, head_dim 256, query_pre_attn_scalar
// 256, vocab 262208, rope_theta 1e6, rope_local_base_freq 10000, sliding_window_pattern 6).
json gemma3_4b_it() {
  return json::parse(R"({
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02,
    "mm_tokens_per_image": 256, "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": false}})");
}

// google/gemma-3-1b-it's config.json as published (Gemma3ForCausalLM, no rope scaling).
json gemma3_1b_it() {
  return json::parse(R"({
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "attn_logit_softcapping": null, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
    "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": true, "vocab_size": 262144})");
}

// inv_freq[i] of base theta over head_dim 256, as torch computes it (float32 power).
float gemma3_freq(double theta, int i) {
  return 1.0f / static_cast<float>(std::pow(theta, static_cast<double>(static_cast<float>(2 * i) / 256.0f)));
}

TEST(Arch, Gemma3MultimodalFromThePublishedConfig) {
  const ModelConfig c = parse(gemma3_4b_it());
  EXPECT_EQ(c.family, "gemma3");
  EXPECT_EQ(c.architecture, "Gemma3ForConditionalGeneration");
  EXPECT_EQ(c.hidden_size, 2560);
  EXPECT_EQ(c.intermediate_size, 10240);
  EXPECT_EQ(c.num_hidden_layers, 34);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.vocab_size, 262208);
  EXPECT_EQ(c.eos_token_id, 1);  // the top level's [1, 106]
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.qk_norm && c.norm_offset && c.post_norms && c.mlp_gelu_tanh);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  EXPECT_FLOAT_EQ(c.embed_scale, static_cast<float>(std::sqrt(2560.0)));
  EXPECT_FLOAT_EQ(c.attn_scale, 0.0625f);  // query_pre_attn_scalar 256
  EXPECT_EQ(c.attn_softcap, 0.0f);
  EXPECT_EQ(c.final_softcap, 0.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  ASSERT_EQ(c.layer_window.size(), 34u);
  for (int l = 0; l < 34; ++l) {
    const bool full = (l + 1) % 6 == 0;  // layers 5, 11, 17, 23, 29
    EXPECT_EQ(c.window(l), full ? 0 : 1024) << l;
    EXPECT_EQ(c.local_rope(l), !full) << l;
  }
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c.rope_local_theta, 1e4f);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 8.0f);
  const std::vector<float> global = c.inv_freq(100), local = c.local_inv_freq();
  ASSERT_EQ(global.size(), 128u);
  ASSERT_EQ(local.size(), 128u);
  for (int i : {0, 1, 64, 127}) {
    EXPECT_FLOAT_EQ(global[i], gemma3_freq(1e6, i) / 8.0f) << i;
    EXPECT_FLOAT_EQ(local[i], gemma3_freq(1e4, i)) << i;
  }
  const LayerPlan p = layer_plan(c, 5);  // canonical names; the loader maps them (weight_layouts)
  ASSERT_EQ(p.q_norm.size(), 1u);
  EXPECT_EQ(p.q_norm[0].name, "model.layers.5.self_attn.q_norm.weight");
  EXPECT_EQ(p.q_norm[0].shape, (std::vector<int64_t>{256}));
  ASSERT_EQ(p.post_attn.size(), 1u);
  EXPECT_EQ(p.ln2.name, "model.layers.5.pre_feedforward_layernorm.weight");
  EXPECT_EQ(p.qkv[0].shape, (std::vector<int64_t>{8 * 256, 2560}));
  const Architecture& a = architecture_named("gemma3");
  ASSERT_EQ(a.weight_layouts.size(), 2u);
  EXPECT_EQ(a.weight_layouts[0].body, "language_model.model.");
  EXPECT_EQ(a.weight_layouts[1].body, "model.language_model.");
}

TEST(Arch, Gemma3TextFromThePublishedConfig) {
  const ModelConfig c = parse(gemma3_1b_it());
  EXPECT_EQ(c.family, "gemma3_text");
  EXPECT_EQ(c.architecture, "Gemma3ForCausalLM");
  EXPECT_EQ(c.hidden_size, 1152);
  EXPECT_EQ(c.num_hidden_layers, 26);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 1);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.intermediate_size, 6912);
  EXPECT_EQ(c.vocab_size, 262144);
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_TRUE(c.tie_word_embeddings);  // Gemma3TextConfig's default, absent from the file
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c.rope_local_theta, 1e4f);
  EXPECT_EQ(c.attn_softcap, 0.0f);
  EXPECT_EQ(c.final_softcap, 0.0f);
  for (int l = 0; l < 26; ++l) EXPECT_EQ(c.window(l), (l + 1) % 6 == 0 ? 0 : 512) << l;
  EXPECT_EQ(c.inv_freq(10)[3], gemma3_freq(1e6, 3));  // unscaled
  // layer_types wins over sliding_window_pattern; soft-caps are honoured when set.
  json j = gemma3_1b_it();
  j["num_hidden_layers"] = 3;
  j["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
  j["attn_logit_softcapping"] = 50.0;
  j["final_logit_softcapping"] = 30.0;
  const ModelConfig t = parse(j);
  EXPECT_EQ(t.window(0), 0);
  EXPECT_EQ(t.window(1), 512);
  EXPECT_FALSE(t.local_rope(0));
  EXPECT_TRUE(t.local_rope(1));
  EXPECT_FLOAT_EQ(t.attn_softcap, 50.0f);
  EXPECT_FLOAT_EQ(t.final_softcap, 30.0f);
}

// transformers 5 saves the rotary parameters keyed by layer type.
TEST(Arch, Gemma3RopeParametersByLayerType) {
  json j = gemma3_1b_it();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("rope_local_base_freq");
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 500000.0}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 20000.0}}}};
  const ModelConfig c = parse(j);
  EXPECT_FLOAT_EQ(c.rope_theta, 5e5f);
  EXPECT_FLOAT_EQ(c.rope_local_theta, 2e4f);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 8.0f);
  j["rope_parameters"]["sliding_attention"]["rope_type"] = "linear";
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'rope_parameters.sliding_attention.rope_type'"));
  j["rope_parameters"]["sliding_attention"]["rope_type"] = "default";
  j["rope_parameters"]["full_attention"]["rope_type"] = "yarn";
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'rope_parameters.full_attention.rope_type'"));
}

TEST(Arch, Gemma3Refusals) {
  json j = gemma3_4b_it();
  j.erase("text_config");
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'text_config': missing"));
  j = gemma3_4b_it();
  j["text_config"]["use_bidirectional_attention"] = true;
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'text_config.use_bidirectional_attention'"));
  j = gemma3_1b_it();
  j["attention_bias"] = true;
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'attention_bias'"));
  j = gemma3_1b_it();
  j["hidden_activation"] = "silu";
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'hidden_activation'"));
  j = gemma3_1b_it();
  j["sliding_window"] = 0;
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'sliding_window'"));
  // The decoder's fields are copied (defaults added): a hostile nesting is refused, not recursed.
  json deep = json::array();
  for (int i = 0; i < 40; ++i) deep = json::array({deep});
  j = gemma3_4b_it();
  j["text_config"]["junk"] = deep;
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("'junk': nests more than 32 levels deep"));
}

// Qwen3-0.6B's config.json, as published: head_dim 128 while hidden_size / heads = 64.
json qwen3_06b() {
  return json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})");
}

TEST(Arch, Qwen3QkNorm) {
  ModelConfig c = parse(qwen3_06b());
  EXPECT_EQ(c.family, "qwen3");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  EXPECT_EQ(c.window(27), 0);
  const LayerPlan p = layer_plan(c, 3);
  ASSERT_EQ(p.q_norm.size(), 1u);
  EXPECT_EQ(p.q_norm[0].name, "model.layers.3.self_attn.q_norm.weight");
  EXPECT_EQ(p.k_norm[0].shape, (std::vector<int64_t>{128}));
  EXPECT_EQ(p.qkv[0].shape, (std::vector<int64_t>{16 * 128, 1024}));
  json j = qwen3_06b();
  j.erase("head_dim");
  EXPECT_EQ(parse(j).head_dim, 128) << "Qwen3Config's default head_dim, not 1024 / 16";
  j["attention_bias"] = true;
  c = parse(j);
  EXPECT_TRUE(c.qkv_bias && c.o_bias);
  // Other families have no q/k norm tensors.
  EXPECT_TRUE(layer_plan(parse(qwen25_3b()), 0).q_norm.empty());
}

TEST(Arch, Qwen25ThreeB) {
  const ModelConfig c = parse(qwen25_3b());
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(c.family, "qwen2");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rotary_dim, 128);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  ASSERT_EQ(c.layer_window.size(), 36u);
  for (int l = 0; l < 36; ++l) EXPECT_EQ(c.window(l), 0) << "use_sliding_window false: no window";
  EXPECT_FALSE(c.pad_token_from_config);
  const auto t = expected_tensors(c);
  std::set<std::string> names;
  for (const auto& e : t) names.insert(e.name);
  for (const char* n : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                        "model.layers.0.self_attn.k_proj.bias", "model.layers.35.self_attn.v_proj.bias",
                        "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  for (const char* n : {"model.layers.0.self_attn.o_proj.bias", "lm_head.weight", "model.layers.0.self_attn.qkv_proj.weight"})
    EXPECT_FALSE(names.count(n)) << n;
  const LayerPlan p = layer_plan(c, 0);
  ASSERT_EQ(p.qkv.size(), 3u);
  EXPECT_EQ(p.qkv[0].shape, (std::vector<int64_t>{2048, 2048}));
  EXPECT_EQ(p.qkv[1].shape, (std::vector<int64_t>{256, 2048}));
  EXPECT_EQ(p.qkv_bias[2].shape, (std::vector<int64_t>{256}));
  EXPECT_EQ(p.gate_up[1].shape, (std::vector<int64_t>{11008, 2048}));
}

TEST(Arch, Qwen2SlidingWindowsPerLayer) {
  json j = qwen25_3b();
  j["num_hidden_layers"] = 4;
  j["use_sliding_window"] = true;
  j["sliding_window"] = 16;
  j["max_window_layers"] = 2;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.layer_window, (std::vector<int>{0, 0, 16, 16}));
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "full_attention"};
  c = parse(j);
  EXPECT_EQ(c.layer_window, (std::vector<int>{16, 0, 16, 0})) << "layer_types wins, as in transformers";
  j["layer_types"] = {"sliding_attention", "full"};
  EXPECT_THAT(error_of([&] { parse(j); }), HasSubstr("field 'layer_types': expected a list of 4 strings"));
}

TEST(Arch, Llama31Rope) {
  const ModelConfig c = parse(llama31_8b());
  EXPECT_EQ(c.family, "llama");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_attention_scale(), 1.0f);
  // transformers 5.25 LlamaRotaryEmbedding(config).inv_freq for this config (float32).
  const double hf[64] = {
      1, 0.814617217, 0.663601279, 0.540580988, 0.440366626, 0.358730227, 0.292227834, 0.238053814, 0.193922758,
      0.157972813, 0.128687382, 0.10483095, 0.0853971019, 0.0695659518, 0.0566696189, 0.0461640507, 0.0376060307,
      0.0306345206, 0.0249554086, 0.0203291047, 0.0165604409, 0.0134904198, 0.0109895291, 0.00895225909,
      0.00729266508, 0.00594073068, 0.00483942125, 0.00394227589, 0.00321144611, 0.00216657063, 0.00137189368,
      0.00085675146, 0.000524846022, 0.00031269365, 0.000178507791, 9.55621217e-05, 7.78465546e-05,
      6.34151438e-05, 5.16590699e-05, 4.20823671e-05, 3.42810235e-05, 2.79259093e-05, 2.2748929e-05,
      1.85316694e-05, 1.50962178e-05, 1.22976389e-05, 1.00178686e-05, 8.1607277e-06, 6.64786967e-06,
      5.41546933e-06, 4.41153452e-06, 3.59371188e-06, 2.92749974e-06, 2.38479174e-06, 1.94269251e-06,
      1.58255079e-06, 1.28917316e-06, 1.05018262e-06, 8.55496921e-07, 6.96902532e-07, 5.6770881e-07,
      4.6246538e-07, 3.7673226e-07, 3.06892588e-07};
  const std::vector<float> f = c.inv_freq(31);
  ASSERT_EQ(f.size(), 64u);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(f[i], hf[i], 2e-7 * hf[i]) << "inv_freq[" << i << "]";
  // The three regimes are all present: kept (i = 0), on the ramp (29..34), divided by 8 (35..).
  const std::vector<float> plain = [&] {
    json j = llama31_8b();
    j["rope_scaling"] = nullptr;
    return parse(j).inv_freq(31);
  }();
  EXPECT_EQ(f[0], plain[0]);
  EXPECT_NEAR(f[63], plain[63] / 8, 1e-6 * plain[63]);
  EXPECT_GT(f[31], plain[31] / 8);
  EXPECT_LT(f[31], plain[31]);
}

TEST(Arch, LinearRopeAndBiases) {
  json j = llama31_8b();
  j["hidden_size"] = 64;
  j["num_attention_heads"] = 4;
  j["num_key_value_heads"] = 2;
  j["rope_theta"] = 10000.0;
  j["rope_scaling"] = {{"factor", 2.5}, {"rope_type", "linear"}};
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  const ModelConfig c = parse(j);
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.mlp_bias);
  // transformers 5.25: LlamaRotaryEmbedding inv_freq of this config.
  const float hf[8] = {0.4000000059604645f,   0.12649109959602356f,  0.03999999910593033f,   0.012649111449718475f,
                       0.003999999724328518f, 0.0012649111449718475f, 0.0004000000189989805f, 0.0001264911115868017f};
  const auto f = c.inv_freq(10);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(f[i], hf[i], 1e-7 * hf[i]) << i;
  const LayerPlan p = layer_plan(c, 1);
  ASSERT_EQ(p.o_bias.size(), 1u);
  EXPECT_EQ(p.o_bias[0].name, "model.layers.1.self_attn.o_proj.bias");
  ASSERT_EQ(p.gate_up_bias.size(), 2u);
  EXPECT_EQ(p.gate_up_bias[1].name, "model.layers.1.mlp.up_proj.bias");
  ASSERT_EQ(p.down_bias.size(), 1u);
}

TEST(Arch, MistralHeadDimOfItsOwn) {
  const ModelConfig c = parse(mistral_nemo());
  EXPECT_EQ(c.family, "mistral");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rotary_dim, 128);
  EXPECT_EQ(c.window(0), 0);
  const LayerPlan p = layer_plan(c, 0);
  EXPECT_EQ(p.qkv[0].shape, (std::vector<int64_t>{32 * 128, 5120}));
  EXPECT_EQ(p.o[0].shape, (std::vector<int64_t>{5120, 32 * 128}));
  json j = mistral_nemo();
  j["sliding_window"] = 4096;
  EXPECT_EQ(parse(j).layer_window, std::vector<int>(40, 4096));
}

TEST(Arch, RefusedNamingTheField) {
  struct Case {
    json cfg;
    std::string message;
  };
  std::vector<Case> cases;
  json j = llama31_8b();
  j["rope_scaling"]["rope_type"] = "dynamic";
  cases.push_back({j, "field 'rope_scaling.rope_type': unsupported rope type 'dynamic' for LlamaForCausalLM "
                      "(supported: llama3, linear, or none)"});
  j = llama31_8b();
  j["rope_scaling"].erase("low_freq_factor");
  cases.push_back({j, "field 'rope_scaling.low_freq_factor': missing (required for llama3)"});
  j = llama31_8b();
  j["rope_scaling"]["high_freq_factor"] = 0.5;
  cases.push_back({j, "field 'rope_scaling.high_freq_factor': must be larger than low_freq_factor"});
  j = llama31_8b();
  j["partial_rotary_factor"] = 0.5;
  cases.push_back({j, "field 'partial_rotary_factor': must be 1 for this architecture"});
  j = qwen25_3b();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  cases.push_back({j, "field 'rope_scaling.type': unsupported rope type 'yarn' for Qwen2ForCausalLM"});
  j = llama31_8b();
  j["attention_bias"] = "no";
  cases.push_back({j, "field 'attention_bias': expected true or false, got string"});
  j = qwen25_3b();
  j["model_type"] = "llama";
  cases.push_back({j, "field 'model_type': expected 'qwen2' for Qwen2ForCausalLM, got 'llama'"});
  j = mistral_nemo();
  j.erase("head_dim");
  j["num_attention_heads"] = 48;
  cases.push_back({j, "field 'num_attention_heads': 48 does not divide hidden_size 5120 (and no head_dim is given)"});
  for (const auto& c : cases) EXPECT_THAT(error_of([&] { parse(c.cfg); }), HasSubstr(c.message)) << c.cfg.dump();
}

}  // namespace
}  // namespace phi3
