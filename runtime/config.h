// Phi3ForCausalLM config.json -> ModelConfig, validated (architecture, required fields,
// types, consistent sizes); every error names config.json and the field.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

struct RopeScaling {
  std::string type;                 // "" (none), "longrope" ("su" is accepted as longrope)
  std::vector<float> short_factor;  // [rot_dim/2]
  std::vector<float> long_factor;   // [rot_dim/2]
  // Optional overrides from rope_scaling / rope_parameters; < 0 when absent:
  float factor = -1.0f;            // default max_position_embeddings / original_max_position_embeddings
  float attention_factor = -1.0f;  // default sqrt(1 + ln(factor) / ln(original)) when factor > 1, else 1
};

struct ModelConfig {
  std::string architecture = "Phi3ForCausalLM";
  int hidden_size = 0;        // D
  int intermediate_size = 0;  // F
  int num_hidden_layers = 0;  // L
  int num_attention_heads = 0;  // H
  int num_key_value_heads = 0;  // KVH (defaults to H when absent)
  int head_dim = 0;             // D / H
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  float partial_rotary_factor = 1.0f;
  int rotary_dim = 0;  // int(head_dim * partial_rotary_factor)
  RopeScaling rope_scaling;
  int sliding_window = 0;  // 0 = none (null in config)
  int max_position_embeddings = 0;
  // Absent from config.json: 4096, as transformers' Phi3Config does (its class default, which
  // it always copies into the rope parameters), not max_position_embeddings.
  int original_max_position_embeddings = 0;
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  int bos_token_id = 1;
  int eos_token_id = 32000;
  int pad_token_id = 32000;

  // inv_freq[i] = 1 / (ext[i] * theta^(2i/rot_dim)), ext = LongRoPE factor (short or long
  // by whether seq_len > original_max_position_embeddings), 1 without scaling. Computed in
  // float32 as torch does: 1 / (ext * theta ** (float(2i) / rot_dim)), the power rounded once.
  std::vector<float> inv_freq(int seq_len) const;
  // LongRoPE attention factor sqrt(1 + ln(max/orig)/ln(orig)) when max > orig, else 1
  // (rope_scaling.factor replaces max/orig and rope_scaling.attention_factor the result when
  // given); 1 without scaling. It multiplies cos and sin.
  float rope_attention_scale() const;
};

ModelConfig parse_config_json(const std::string& text, const std::string& source = "config.json");
ModelConfig load_config(const std::string& model_dir);  // reads model_dir/config.json

}  // namespace phi3
