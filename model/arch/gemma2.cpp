// Gemma2ForCausalLM (Gemma 2 2B / 9B / 27B): the Llama layout of the projections with
// - RMSNorms that scale by (1 + w), folded into the weights at load (norm_offset);
// - the embeddings multiplied by sqrt(hidden_size) (embed_scale);
// - a second RMSNorm after attention (post_attention_layernorm) and after the MLP
//   (post_feedforward_layernorm) on each block's output before its residual add, the MLP's
//   input norm being pre_feedforward_layernorm (post_norms);
// - GeGLU with the tanh-approximated GELU (hidden_activation gelu_pytorch_tanh);
// - attention scores scaled by query_pre_attn_scalar^-1/2 and soft-capped at
//   attn_logit_softcapping, final logits soft-capped at final_logit_softcapping;
// - sliding-window attention on every other layer (layer_types; by default layers 0, 2, ...).
// head_dim from the config (256), tied embeddings by default, no biases.
#include <cmath>

#include "model/arch/architecture.h"

namespace phi3 {

Architecture gemma2_architecture() {
  Architecture a;
  a.hf_class = "Gemma2ForCausalLM";
  a.model_type = "gemma2";
  separate_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    if (!f.present("head_dim")) c.head_dim = 256;  // Gemma2Config's default
    full_rotary_only(f, rope);
    read_rope_type(rope, c, {});
    if (f.present("attention_bias") && f.boolean("attention_bias"))
      f.fail("attention_bias", "Gemma 2 has no attention biases; true is not supported");
    const char* act_field = f.present("hidden_activation") ? "hidden_activation" : "hidden_act";
    const std::string act = f.present(act_field) ? f.string(act_field) : "gelu_pytorch_tanh";
    if (act != "gelu_pytorch_tanh" && act != "gelu_tanh")
      f.fail(act_field, "'" + act + "' is not supported (Gemma 2 uses gelu_pytorch_tanh)");
    c.mlp_gelu_tanh = true;
    if (!f.present("tie_word_embeddings")) c.tie_word_embeddings = true;  // Gemma2Config's default
    c.norm_offset = true;
    c.post_norms = true;
    c.embed_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
    const double qpas = f.present("query_pre_attn_scalar") ? f.positive_number("query_pre_attn_scalar") : 256.0;
    c.attn_scale = static_cast<float>(std::pow(qpas, -0.5));
    auto cap = [&](const char* field, double dflt) {
      if (!f.present(field)) return static_cast<float>(dflt);
      return static_cast<float>(f.positive_number(field));
    };
    c.attn_softcap = cap("attn_logit_softcapping", 50.0);
    c.final_softcap = cap("final_logit_softcapping", 30.0);
    // Windows: layer_types where given, else sliding on the even layers (0, 2, ...).
    int w = 4096;
    if (f.present("sliding_window")) {
      const int64_t v = f.integer("sliding_window");
      if (v <= 0) f.fail("sliding_window", "must be positive, got " + std::to_string(v));
      w = static_cast<int>(v);
    }
    c.sliding_window = w;
    c.layer_window.assign(static_cast<size_t>(c.num_hidden_layers), 0);
    if (!read_layer_types(f, c, w))
      for (int l = 0; l < c.num_hidden_layers; l += 2) c.layer_window[static_cast<size_t>(l)] = w;
  };
  return a;
}

}  // namespace phi3
