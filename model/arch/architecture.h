// One description per decoder family: the config.json it reads (architectures / model_type),
// the family's own config fields, and how its checkpoint tensors map onto the engine's fused
// device layout (q|k|v rows in one matrix, gate|up rows in another). Kernels, sweeps and
// patching never see a family: they read ModelConfig's flags (biases, rope type, per-layer
// windows). Adding a family = one file here that defines its Architecture, plus its entry in
// architectures() (architecture.cpp), plus tests.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/config.h"
#include "runtime/config_fields.h"

namespace phi3 {

struct Architecture {
  std::string hf_class;    // "Qwen2ForCausalLM"
  std::string model_type;  // "qwen2"
  // The family's own fields, read after the common ones (sizes, eps, token ids, rope theta
  // and type, tie_word_embeddings): head_dim, partial rotary, biases, sliding windows, which
  // rope types it takes. `f` is config.json's top level; `rope` its rope_scaling or
  // rope_parameters object (empty when neither is given).
  std::function<void(const ConfigFields& f, const ConfigFields& rope, ModelConfig& c)> configure;
  // Checkpoint tensors (under model.layers.N.) whose rows, concatenated in this order, form
  // the fused q|k|v projection and the fused gate|up projection (without ".weight").
  std::vector<std::string> qkv_parts;
  std::vector<std::string> gate_up_parts;
  // MoE families: the block's module under model.layers.N. ("block_sparse_moe", "mlp"), its
  // router ("gate"), and per expert (experts.E.<part>.weight) the gate and up parts, the down part.
  std::string moe_block;
  std::vector<std::string> expert_gate_up_parts;
  std::string expert_down_part;
};

// The Llama layout of a layer's projections (Qwen2, Llama, Mistral): separate q/k/v, gate/up.
void separate_projections(Architecture& a);

// Every supported family, in the order docs/families.md lists them.
const std::vector<Architecture>& architectures();
// The family a config.json names (its architectures list, else model_type); throws naming the
// field and listing the supported architectures.
const Architecture& architecture_for(const ConfigFields& f);
// The family of a parsed config (ModelConfig::family).
const Architecture& architecture_named(const std::string& model_type);

// Shared family pieces (architecture.cpp).
// head_dim from config.json when given (any value), else hidden_size / num_attention_heads.
void read_head_dim(const ConfigFields& f, ModelConfig& c, bool may_differ);
// A window for every layer, or none (sliding_window null or absent).
void window_all_layers(const ConfigFields& f, ModelConfig& c);
// Only Phi-3 rotates part of a head: a partial_rotary_factor other than 1 is refused.
void full_rotary_only(const ConfigFields& f, const ConfigFields& rope);
// Qwen2 / Qwen3 windows: none unless use_sliding_window; then layer_types where given, else
// the layers from max_window_layers (default 28) on.
void read_qwen_windows(const ConfigFields& f, ModelConfig& c);
// layer_types (full_attention / sliding_attention per layer) into c.layer_window (sized to the
// layers, zeros), `window` for the sliding ones; false when the config has none.
bool read_layer_types(const ConfigFields& f, ModelConfig& c, int window);
// MoE fields: num_local_experts (or num_experts), num_experts_per_tok, the expert width
// (`width_field`), norm_topk_prob (`renorm` when absent, or always true when `always_renorm`).
void read_moe(const ConfigFields& f, ModelConfig& c, const char* width_field, bool renorm_default, bool always_renorm);
// rope_type among `allowed` (besides default); reads linear and llama3 parameters.
void read_rope_type(const ConfigFields& rope, ModelConfig& c, const std::vector<std::string>& allowed);

}  // namespace phi3
