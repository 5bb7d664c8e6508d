// Qwen2ForCausalLM (Qwen2, Qwen2.5 0.5B-72B, DeepSeek-R1-Distill-Qwen): separate q/k/v
// projections with biases (o_proj has none), separate gate/up, tied embeddings on the small
// sizes; sliding windows only with use_sliding_window, on the layers transformers picks
// (layer_types when given, else layers >= max_window_layers).
#include <algorithm>

#include "model/arch/architecture.h"

namespace phi3 {

Architecture qwen2_architecture() {
  Architecture a;
  a.hf_class = "Qwen2ForCausalLM";
  a.model_type = "qwen2";
  a.examples = "Qwen2, Qwen2.5 0.5B-72B, DeepSeek-R1-Distill-Qwen";
  separate_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    full_rotary_only(f, rope);
    c.qkv_bias = true;
    const bool use = f.present("use_sliding_window") && f.boolean("use_sliding_window");
    int w = 0;
    if (use && f.present("sliding_window")) {
      const int64_t v = f.integer("sliding_window");
      if (v <= 0) f.fail("sliding_window", "must be positive or null, got " + std::to_string(v));
      w = static_cast<int>(v);
    }
    c.sliding_window = w;
    c.layer_window.assign(static_cast<size_t>(c.num_hidden_layers), 0);
    if (f.present("layer_types")) {
      const nlohmann::json& t = f.at("layer_types");
      if (!t.is_array() || t.size() != static_cast<size_t>(c.num_hidden_layers))
        f.fail("layer_types", "expected a list of " + std::to_string(c.num_hidden_layers) + " strings");
      for (size_t l = 0; l < t.size(); ++l) {
        const std::string s = t[l].is_string() ? t[l].get<std::string>() : "";
        if (s == "sliding_attention") c.layer_window[l] = w;
        else if (s != "full_attention")
          f.fail("layer_types", "entry " + std::to_string(l) + " must be full_attention or sliding_attention");
      }
    } else if (w > 0) {
      const int first = f.present("max_window_layers") ? static_cast<int>(f.integer("max_window_layers")) : 28;
      for (int l = std::max(0, first); l < c.num_hidden_layers; ++l) c.layer_window[static_cast<size_t>(l)] = w;
    }
    read_rope_type(rope, c, {"linear", "llama3"});
  };
  return a;
}

}  // namespace phi3
