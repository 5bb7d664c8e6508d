// What the engine needs of a decoder's config.json, whatever its family, and what is derived
// from it (rotary frequencies). Reading config.json into it belongs to the family
// descriptions: parse_config_json / load_config in model/arch/config_json.h.
#pragma once
#include <string>
#include <vector>

namespace phi3 {

struct RopeScaling {
  // "" (none), "longrope" ("su" is accepted as longrope), "linear" (every frequency divided
  // by factor), "llama3" (wavelength-dependent: see ModelConfig::inv_freq)
  std::string type;
  std::vector<float> short_factor;  // [rot_dim/2]
  std::vector<float> long_factor;   // [rot_dim/2]
  // Optional overrides from rope_scaling / rope_parameters; < 0 when absent:
  float factor = -1.0f;            // default max_position_embeddings / original_max_position_embeddings
  float attention_factor = -1.0f;  // default sqrt(1 + ln(factor) / ln(original)) when factor > 1, else 1
  // llama3: frequencies with wavelength above original/low_freq_factor are divided by factor,
  // below original/high_freq_factor kept, a smooth ramp between.
  double low_freq_factor = 0, high_freq_factor = 0;
  int original_max_position_embeddings = 0;
};

// What the engine needs of a decoder's config.json, whatever its family (model/arch/ reads
// each family's own fields into these flags).
struct ModelConfig {
  std::string architecture = "Phi3ForCausalLM";  // the Hugging Face class
  std::string family = "phi3";                   // its model_type (model/arch/)
  int hidden_size = 0;        // D
  int intermediate_size = 0;  // F
  int num_hidden_layers = 0;  // L
  int num_attention_heads = 0;  // H
  int num_key_value_heads = 0;  // KVH (defaults to H when absent)
  int head_dim = 0;             // config.json's head_dim where the family has one, else D / H
  float rms_norm_eps = 1e-5f;  // the norm's eps (GPT-2: layer_norm_epsilon)
  float rope_theta = 10000.0f;
  float partial_rotary_factor = 1.0f;
  int rotary_dim = 0;  // int(head_dim * partial_rotary_factor)
  RopeScaling rope_scaling;
  // A second rotary base for some layers (Gemma 3: the sliding-window layers rotate with
  // rope_local_base_freq and no scaling, the others with rope_theta and rope_scaling); 0: one
  // base for every layer. layer_local_rope [L]: 1 where a layer uses the local base.
  float rope_local_theta = 0.0f;
  std::vector<int> layer_local_rope;
  bool local_rope(int layer) const {
    return rope_local_theta > 0 && !layer_local_rope.empty() && layer_local_rope[static_cast<size_t>(layer)] != 0;
  }
  int sliding_window = 0;  // config.json's window (0 = none); layer_window says where it applies
  std::vector<int> layer_window;  // [L]: each layer's sliding window, 0 = full causal attention
  int window(int layer) const { return layer_window.empty() ? sliding_window : layer_window[static_cast<size_t>(layer)]; }
  bool qkv_bias = false;  // q/k/v projections carry a bias (Qwen2; Llama attention_bias)
  bool o_bias = false;    // o_proj carries a bias (Llama attention_bias)
  bool mlp_bias = false;  // gate/up/down carry biases (Llama mlp_bias)
  bool qk_norm = false;   // per-head RMSNorm of q and k over head_dim before rotary (Qwen3, Gemma 3)
  bool mlp_gelu_tanh = false;  // GeGLU: tanh-GELU of the gate instead of SiLU (Gemma 2)
  // OLMoE: q_norm / k_norm are one RMSNorm over the whole q width (H*HD) and k width (KVH*HD),
  // not per head (with qk_norm set too).
  bool qk_norm_full = false;
  // Mixture of experts (Mixtral, Qwen3-MoE, OLMoE): every layer's MLP is a sparse MoE block of
  // num_experts gated MLPs of width moe_intermediate_size, each token routed to
  // experts_per_tok of them: p = softmax(router logits), the top-k p (torch.topk order), and
  // renormalised to sum 1 when moe_renorm (Mixtral always; Qwen3-MoE / OLMoE norm_topk_prob).
  // 0 experts: a dense MLP.
  int num_experts = 0;
  int experts_per_tok = 0;
  int moe_intermediate_size = 0;
  bool moe_renorm = false;
  bool moe() const { return num_experts > 0; }
  // Gemma 2: RMSNorms scale by (1 + w) (folded into the weights at load); the embeddings are
  // multiplied by embed_scale (sqrt(hidden_size); 0: none); post_norms: an RMSNorm on the
  // attention output and on the MLP output before each residual add (post_attention_ /
  // post_feedforward_layernorm; the MLP's input norm is pre_feedforward_layernorm); attention
  // scores and final logits soft-capped (c tanh(x / c); 0: none); attn_scale: the score scale
  // (query_pre_attn_scalar^-1/2; 0: head_dim^-1/2).
  bool norm_offset = false;
  float embed_scale = 0.0f;
  bool post_norms = false;
  float attn_softcap = 0.0f;
  float final_softcap = 0.0f;
  float attn_scale = 0.0f;
  // GPT-2: LayerNorm instead of RMSNorm (the mean subtracted, a bias added: ln_1, ln_2, ln_f);
  // a non-gated MLP (c_fc, gelu_tanh, c_proj: MlpAct::GeluTanhNoGate); learned absolute position
  // embeddings (wpe, added to the token embeddings at each token's position id; no rotary:
  // rotary_dim 0; positions must stay below max_position_embeddings, its n_positions).
  bool norm_layer = false;
  bool mlp_gated = true;
  bool pos_embed = false;
  int max_position_embeddings = 0;
  // Absent from config.json: 4096, as transformers' Phi3Config does (its class default, which
  // it always copies into the rope parameters), not max_position_embeddings.
  int original_max_position_embeddings = 0;
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  int bos_token_id = 1;
  int eos_token_id = 32000;
  int pad_token_id = 32000;
  bool pad_token_from_config = false;  // pad_token_id given in config.json (else eos / 32000, or the tokenizer's)
  std::string pad_token_source = "config.json pad_token_id";  // where pad_token_id came from

  // inv_freq[i] = 1 / (ext[i] * theta^(2i/rot_dim)), ext = LongRoPE factor (short or long
  // by whether seq_len > original_max_position_embeddings), 1 without scaling. Computed in
  // float32 as torch does: 1 / (ext * theta ** (float(2i) / rot_dim)), the power rounded once.
  // linear: then divided by factor; llama3: then rescaled by wavelength as transformers does.
  std::vector<float> inv_freq(int seq_len) const;
  // LongRoPE attention factor sqrt(1 + ln(max/orig)/ln(orig)) when max > orig, else 1
  // (rope_scaling.factor replaces max/orig and rope_scaling.attention_factor the result when
  // given); 1 without scaling. It multiplies cos and sin.
  float rope_attention_scale() const;
  // The local base's frequencies (rope_local_theta, default rope: no scaling, attention scale 1),
  // computed as inv_freq computes the unscaled ones.
  std::vector<float> local_inv_freq() const;
};

}  // namespace phi3
