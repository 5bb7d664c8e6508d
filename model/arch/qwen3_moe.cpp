// Qwen3MoeForCausalLM (Qwen3-30B-A3B, Qwen3-235B-A22B): the Qwen3 attention (per-head q/k
// RMSNorm, head_dim from the config, biases iff attention_bias) with a sparse MoE block as every
// layer's MLP (mlp.gate router [E, D]; mlp.experts.E.gate_proj / up_proj / down_proj of width
// moe_intermediate_size): softmax, top num_experts_per_tok, renormalised iff norm_topk_prob.
// Dense layers among them (mlp_only_layers, decoder_sparse_step > 1) are refused.
#include "model/arch/architecture.h"

namespace phi3 {

Architecture qwen3_moe_architecture() {
  Architecture a;
  a.hf_class = "Qwen3MoeForCausalLM";
  a.model_type = "qwen3_moe";
  qwen_moe_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    if (!f.present("head_dim")) c.head_dim = 128;  // Qwen3MoeConfig's default
    full_rotary_only(f, rope);
    if (f.present("attention_bias")) c.qkv_bias = c.o_bias = f.boolean("attention_bias");
    c.qk_norm = true;
    read_qwen_windows(f, c);
    read_rope_type(rope, c, {"linear", "llama3"});
    if (f.present("mlp_only_layers")) {
      const nlohmann::json& v = f.at("mlp_only_layers");
      if (!v.is_array()) f.fail("mlp_only_layers", "expected a list of layer indices");
      if (!v.empty())
        f.fail("mlp_only_layers", "dense MLP layers among the MoE layers are not supported (only [] is)");
    }
    if (f.present("decoder_sparse_step") && f.integer("decoder_sparse_step") != 1)
      f.fail("decoder_sparse_step", "only 1 (every layer a MoE block) is supported, got " +
                                        std::to_string(f.integer("decoder_sparse_step")));
    read_moe(f, c, "moe_intermediate_size", /*renorm_default=*/true, /*always_renorm=*/false);
  };
  return a;
}

}  // namespace phi3
