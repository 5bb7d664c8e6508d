// MixtralForCausalLM (Mixtral 8x7B / 8x22B): the Mistral attention (no biases, head_dim from
// the config, one sliding window for every layer, usually null) with every MLP a sparse
// mixture of experts (block_sparse_moe): router `gate` [E, D], softmax over the E logits, the
// top num_experts_per_tok renormalised to sum 1, each expert a SwiGLU MLP w1 (gate), w3 (up),
// w2 (down) of width intermediate_size.
#include "model/arch/architecture.h"

namespace phi3 {

Architecture mixtral_architecture() {
  Architecture a;
  a.hf_class = "MixtralForCausalLM";
  a.model_type = "mixtral";
  separate_projections(a);
  a.gate_up_parts.clear();
  a.moe_block = "block_sparse_moe";
  a.expert_gate_up_parts = {"w1", "w3"};
  a.expert_down_part = "w2";
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    full_rotary_only(f, rope);
    window_all_layers(f, c);
    read_rope_type(rope, c, {"linear", "llama3"});
    read_moe(f, c, "intermediate_size", /*renorm_default=*/true, /*always_renorm=*/true);
  };
  return a;
}

}  // namespace phi3
