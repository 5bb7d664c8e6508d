// One description per decoder family: the config.json it reads (architectures / model_type),
// the family's own config fields, and how its checkpoint tensors map onto the engine's fused
// device layout (q|k|v rows in one matrix, gate|up rows in another). Kernels, sweeps and
// patching never see a family: they read ModelConfig's flags (biases, rope type, per-layer
// windows). Adding a family = one file here that defines its Architecture, plus its entry in
// architectures() (architecture.cpp), plus tests.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/config.h"
#include "runtime/config_fields.h"

namespace phi3 {

struct LayerPlan;  // model/weights.h

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
  // Where the decoder's tensors sit in the checkpoint: the prefix that stands for "model." and
  // the name of the untied lm_head, per layout; the first layout whose embed_tokens the
  // checkpoint holds is read (Gemma3ForConditionalGeneration: the older hub layout
  // language_model.model.* or transformers 5's model.language_model.*).
  struct WeightLayout {
    std::string body = "model.";
    std::string lm_head = "lm_head.weight";
  };
  std::vector<WeightLayout> weight_layouts = {WeightLayout{}};
  // Checkpoint tensors under these prefixes are not the decoder's (a vision tower, a projector):
  // skipped, with one line on stderr naming `ignored_what`.
  std::vector<std::string> ignored_prefixes;
  std::string ignored_what;
  // The config.json field that holds the decoder's config ("text_config" of a multimodal
  // config), or "": the top level. Top-level tie_word_embeddings and token ids apply where the
  // nested config has none.
  std::string text_config;
  // Values the family's config class defaults to, used where config.json has no such field
  // (a sparse text_config names only what differs from them).
  nlohmann::json config_defaults = nlohmann::json::object();
  // Checkpoint naming where it is not Llama's (model.layers.N.*, model.embed_tokens,
  // model.norm): a layer's tensors (null: layer_plan's Llama naming from the parts above), the
  // embeddings, the final norm (and its bias with norm_layer), the position embeddings (pos_embed).
  std::function<LayerPlan(const ModelConfig& c, int layer)> layer_plan;
  std::string embed_name = "model.embed_tokens.weight";
  std::string final_norm_name = "model.norm.weight";
  std::string final_norm_bias_name;
  std::string pos_embed_name;
  // A prefix a checkpoint may put before every name (GPT-2's "transformer."), found at load.
  std::string optional_prefix;
  // Buffers some checkpoints carry that are no weights (GPT-2's causal masks attn.bias).
  std::vector<std::string> ignored_suffixes;
  // config.json's names of the common fields where the family's differ (GPT-2: hidden_size is
  // n_embd), as transformers' attribute_map.
  std::map<std::string, std::string> attribute_map;
  // MoE families: the block's module under model.layers.N. ("block_sparse_moe", "mlp"), its
  // router ("gate"), and per expert (experts.E.<part>.weight) the gate and up parts, the down part.
  std::string moe_block;
  std::vector<std::string> expert_gate_up_parts;
  std::string expert_down_part;
};

// The Llama layout of a layer's projections (Qwen2, Llama, Mistral): separate q/k/v, gate/up.
void separate_projections(Architecture& a);
// The Llama attention and a MoE block under mlp. (router mlp.gate, experts mlp.experts.E.gate_proj
// / up_proj / down_proj): Qwen3-MoE, OLMoE.
void qwen_moe_projections(Architecture& a);

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
