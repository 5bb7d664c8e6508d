// Gemma3ForCausalLM (model_type gemma3_text: Gemma 3 1B, and any text-only export) and the text
// decoder of Gemma3ForConditionalGeneration (model_type gemma3: 4B / 12B / 27B, its config under
// text_config, its weights under language_model.model.* or model.language_model.*; the vision
// tower and the projector are not loaded). Gemma 2's block (post_norms, (1 + w) norms, GeGLU tanh,
// embeddings x sqrt(hidden_size), query_pre_attn_scalar) with
// - a per-head RMSNorm of q and k over head_dim before rotary (qk_norm), by (1 + w) as well
//   (folded at load like every other norm);
// - two rotary bases: the sliding-window layers rotate with rope_local_base_freq (10000) and no
//   scaling, the full-attention layers with rope_theta (1e6) and rope_scaling (linear factor 8 on
//   4B / 12B / 27B) (rope_local_theta, layer_local_rope); transformers 5's rope_parameters keyed
//   by layer type ({"full_attention": {...}, "sliding_attention": {...}}) is read too;
// - layer_types, else sliding_window_pattern (6: every 6th layer full attention);
// - no soft-capping unless attn_logit_softcapping / final_logit_softcapping are set.
// The embedding scale is sqrt(hidden_size) in fp32: transformers casts it to the weights' dtype
// (Gemma3TextScaledWordEmbedding), which is fp32 in the fp32 reference the engine is verified
// against; a bf16 transformers run rounds it to bf16 (50.5 instead of 50.596 on the 4B).
#include <cmath>

#include "model/arch/architecture.h"

namespace phi3 {

namespace {

// Gemma3TextConfig's class defaults (transformers 5.25), for the fields a sparse config omits.
nlohmann::json gemma3_defaults() {
  return {{"vocab_size", 262208},       {"hidden_size", 2304},          {"intermediate_size", 9216},
          {"num_hidden_layers", 26},    {"num_attention_heads", 8},     {"num_key_value_heads", 4},
          {"head_dim", 256},            {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-6},
          {"pad_token_id", 0},          {"eos_token_id", 1},            {"bos_token_id", 2},
          {"tie_word_embeddings", true}, {"query_pre_attn_scalar", 256}, {"sliding_window", 4096},
          {"rope_theta", 1000000.0},    {"rope_local_base_freq", 10000.0}};
}

void configure_gemma3(const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
  read_head_dim(f, c, /*may_differ=*/true);
  full_rotary_only(f, rope);
  if (f.present("attention_bias") && f.boolean("attention_bias"))
    f.fail("attention_bias", "Gemma 3 has no attention biases; true is not supported");
  if (f.present("use_bidirectional_attention") && f.boolean("use_bidirectional_attention"))
    f.fail("use_bidirectional_attention", "only causal attention is supported");
  const char* act_field = f.present("hidden_activation") ? "hidden_activation" : "hidden_act";
  const std::string act = f.present(act_field) ? f.string(act_field) : "gelu_pytorch_tanh";
  if (act != "gelu_pytorch_tanh" && act != "gelu_tanh")
    f.fail(act_field, "'" + act + "' is not supported (Gemma 3 uses gelu_pytorch_tanh)");
  c.mlp_gelu_tanh = true;
  c.norm_offset = true;
  c.post_norms = true;
  c.qk_norm = true;
  c.embed_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
  c.attn_scale = static_cast<float>(std::pow(f.positive_number("query_pre_attn_scalar"), -0.5));
  c.attn_softcap = f.present("attn_logit_softcapping") ? static_cast<float>(f.positive_number("attn_logit_softcapping")) : 0;
  c.final_softcap =
      f.present("final_logit_softcapping") ? static_cast<float>(f.positive_number("final_logit_softcapping")) : 0;

  // Layer types: layer_types, else every sliding_window_pattern-th layer (1-based) full.
  const int64_t w = f.integer("sliding_window");
  if (w <= 0) f.fail("sliding_window", "must be positive, got " + std::to_string(w));
  c.sliding_window = static_cast<int>(w);
  c.layer_window.assign(static_cast<size_t>(c.num_hidden_layers), 0);
  if (!read_layer_types(f, c, c.sliding_window)) {
    const int pattern = f.present("sliding_window_pattern") ? f.positive_int("sliding_window_pattern") : 6;
    for (int l = 0; l < c.num_hidden_layers; ++l)
      if ((l + 1) % pattern != 0) c.layer_window[static_cast<size_t>(l)] = c.sliding_window;
  }
  c.layer_local_rope.assign(static_cast<size_t>(c.num_hidden_layers), 0);
  for (int l = 0; l < c.num_hidden_layers; ++l)
    c.layer_local_rope[static_cast<size_t>(l)] = c.layer_window[static_cast<size_t>(l)] > 0;

  // Rotary: the full-attention layers' parameters and the sliding layers' base.
  double local = f.positive_number("rope_local_base_freq");
  const bool keyed = rope.present("full_attention") || rope.present("sliding_attention");
  if (keyed) {
    for (const char* k : {"full_attention", "sliding_attention"})
      if (rope.present(k) && !rope.at(k).is_object()) rope.fail(k, "expected an object, got " + describe(rope.at(k)));
    static const nlohmann::json kNone = nlohmann::json::object();
    const ConfigFields fr = rope.present("full_attention") ? rope.sub("full_attention") : rope.sub_of(kNone, "full_attention");
    const ConfigFields sr =
        rope.present("sliding_attention") ? rope.sub("sliding_attention") : rope.sub_of(kNone, "sliding_attention");
    if (fr.present("rope_theta")) c.rope_theta = static_cast<float>(fr.positive_number("rope_theta"));
    full_rotary_only(f, fr);
    read_rope_type(fr, c, {"linear", "llama3"});
    if (sr.present("rope_theta")) local = sr.positive_number("rope_theta");
    const char* tf = sr.present("rope_type") ? "rope_type" : "type";
    if (sr.present(tf) && sr.string(tf) != "default")
      sr.fail(tf, "'" + sr.string(tf) + "' is not supported: the sliding layers' rotary takes no scaling");
  } else {
    read_rope_type(rope, c, {"linear", "llama3"});
  }
  c.rope_local_theta = static_cast<float>(local);
}

Architecture gemma3_base() {
  Architecture a;
  separate_projections(a);
  a.configure = configure_gemma3;
  a.config_defaults = gemma3_defaults();
  return a;
}

}  // namespace

Architecture gemma3_text_architecture() {
  Architecture a = gemma3_base();
  a.hf_class = "Gemma3ForCausalLM";
  a.model_type = "gemma3_text";
  return a;
}

Architecture gemma3_multimodal_architecture() {
  Architecture a = gemma3_base();
  a.hf_class = "Gemma3ForConditionalGeneration";
  a.model_type = "gemma3";
  a.text_config = "text_config";
  Architecture::WeightLayout hub, hf5;
  hub.body = "language_model.model.";
  hub.lm_head = "language_model.lm_head.weight";
  hf5.body = "model.language_model.";
  hf5.lm_head = "lm_head.weight";
  a.weight_layouts = {hub, hf5};
  a.ignored_prefixes = {"vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."};
  a.ignored_what = "the vision tower and the multimodal projector";
  return a;
}

}  // namespace phi3
