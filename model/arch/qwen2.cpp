// Qwen2ForCausalLM (Qwen2, Qwen2.5 0.5B-72B, DeepSeek-R1-Distill-Qwen): separate q/k/v
// projections with biases (o_proj has none), separate gate/up, tied embeddings on the small
// sizes; sliding windows only with use_sliding_window, on the layers transformers picks
// (layer_types when given, else layers >= max_window_layers).
#include "model/arch/architecture.h"

namespace phi3 {

Architecture qwen2_architecture() {
  Architecture a;
  a.hf_class = "Qwen2ForCausalLM";
  a.model_type = "qwen2";
  separate_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    full_rotary_only(f, rope);
    c.qkv_bias = true;
    read_qwen_windows(f, c);
    read_rope_type(rope, c, {"linear", "llama3"});
  };
  return a;
}

}  // namespace phi3
