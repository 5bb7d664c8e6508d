// MistralForCausalLM (Mistral 7B, Mistral-Nemo, Ministral): the Llama block without biases,
// head_dim from the config, one sliding window for every layer (sliding_window; null = none).
#include "model/arch/architecture.h"

namespace phi3 {

Architecture mistral_architecture() {
  Architecture a;
  a.hf_class = "MistralForCausalLM";
  a.model_type = "mistral";
  separate_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    full_rotary_only(f, rope);
    window_all_layers(f, c);
    read_rope_type(rope, c, {"linear", "llama3"});
  };
  return a;
}

}  // namespace phi3
