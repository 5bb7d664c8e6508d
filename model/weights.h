// Model weights on a backend's device, loaded from a Hugging Face Phi3ForCausalLM
// checkpoint directory and checked against the config (names, shapes, finiteness).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/config.h"

namespace phi3 {

// One layer on the device, in the fused layout whatever the checkpoint's (model/arch/):
// separate q/k/v and gate/up tensors are concatenated by rows at load; biases ride on their
// Weight (Weight::bias) where the config has them.
struct LayerWeights {
  const float* ln1 = nullptr;  // input_layernorm.weight [D]
  const float* ln2 = nullptr;  // post_attention_layernorm.weight [D]
  const float* ln1_b = nullptr;  // norm_layer: the LayerNorms' biases [D] (GPT-2 ln_1.bias, ln_2.bias)
  const float* ln2_b = nullptr;
  Weight qkv;      // q|k|v rows [(H+2KVH)*HD, D] (qkv_proj, or q_proj, k_proj, v_proj)
  Weight o;        // self_attn.o_proj.weight [D, H*HD]
  Weight gate_up;  // gate|up rows [2F, D] (gate_up_proj, or gate_proj, up_proj)
  Weight down;     // mlp.down_proj.weight [D, F]
  const float* q_norm = nullptr;  // self_attn.q_norm.weight [HD] (qk_norm models), else null
  const float* k_norm = nullptr;  // self_attn.k_norm.weight [HD]
  const float* post_attn = nullptr;  // post_norms: post_attention_layernorm.weight [D] (Gemma 2)
  const float* post_mlp = nullptr;   // post_norms: post_feedforward_layernorm.weight [D]
  // MoE layers (ModelConfig::moe; gate_up / down unused): the router [E, D] and per expert its
  // gate|up rows [2F, D] and down [D, F] (F = moe_intermediate_size), from the per-expert hub
  // tensors or sliced out of transformers 5's fused experts.gate_up_proj [E, 2F, D] /
  // experts.down_proj [E, D, F].
  Weight router;
  std::vector<Weight> expert_gate_up, expert_down;
};

class ModelWeights {
 public:
  // Loads every tensor the config implies; throws naming the tensor on a missing or extra
  // tensor, a shape that disagrees with config.json, or a NaN/Inf value.
  static ModelWeights load(Backend& be, const std::string& model_dir, const ModelConfig& cfg);
  // Random weights of the right shapes (tests, benchmarks): N(0, std) from `seed`.
  static ModelWeights random(Backend& be, const ModelConfig& cfg, uint32_t seed, float std);
  // Allocated but never written (a tracing backend that computes nothing: bench --predict).
  static ModelWeights placeholder(Backend& be, const ModelConfig& cfg);

  Weight embed;    // model.embed_tokens.weight [V, D]
  Weight lm_head;  // lm_head.weight [V, D] (= embed when tied)
  const float* final_norm = nullptr;  // model.norm.weight [D]
  const float* final_norm_b = nullptr;  // norm_layer: its bias [D] (GPT-2 ln_f.bias)
  Weight pos_embed;  // pos_embed: the learned position embeddings [max_position_embeddings, D] (wpe)
  std::vector<LayerWeights> layers;
  size_t bytes = 0;  // device bytes held

 private:
  std::vector<DeviceArray<uint8_t>> storage_;
  const void* keep(Backend& be, const std::vector<uint8_t>& host);
  const void* reserve(Backend& be, size_t bytes);
  friend struct WeightLoader;
};

// The expected tensor names and shapes of a checkpoint of cfg's family for `cfg`.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;  // as the checkpoint holds it
  bool transposed = false;  // held [in, out] (GPT-2's Conv1D): transposed at load into [out, in]
};
// fused_experts: MoE experts as transformers 5 holds them (one [E, 2F, D] gate_up_proj and one
// [E, D, F] down_proj per layer) instead of the hub's per-expert tensors.
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& cfg, bool fused_experts = false);
// One layer's checkpoint tensors, grouped by the device tensor they form (rows in order).
struct LayerPlan {
  ExpectedTensor ln1, ln2;
  std::vector<ExpectedTensor> ln1_bias, ln2_bias;  // one each with norm_layer
  std::vector<ExpectedTensor> qkv, qkv_bias, o, o_bias, gate_up, gate_up_bias, down, down_bias;
  std::vector<ExpectedTensor> q_norm, k_norm;  // one each with qk_norm
  std::vector<ExpectedTensor> post_attn, post_mlp;  // one each with post_norms
  // MoE: the router, then per expert its gate|up parts and its down part (hub layout), or one
  // fused tensor each holding every expert (fused_experts: expert_gate_up / expert_down size 1).
  std::vector<ExpectedTensor> router;
  std::vector<std::vector<ExpectedTensor>> expert_gate_up, expert_down;
  bool fused_experts = false;
};
LayerPlan layer_plan(const ModelConfig& cfg, int layer, bool fused_experts = false);

}  // namespace phi3
