// OlmoeForCausalLM (OLMoE-1B-7B): the Llama attention with q_norm / k_norm as one RMSNorm over
// the whole q width and k width (not per head: qk_norm_full), no biases, and a sparse MoE block
// as every layer's MLP (mlp.gate router [E, D]; mlp.experts.E.gate_proj / up_proj / down_proj of
// width intermediate_size): softmax, top num_experts_per_tok, renormalised iff norm_topk_prob
// (default false). clip_qkv is refused.
#include "model/arch/architecture.h"

namespace phi3 {

Architecture olmoe_architecture() {
  Architecture a;
  a.hf_class = "OlmoeForCausalLM";
  a.model_type = "olmoe";
  qwen_moe_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/false);
    full_rotary_only(f, rope);
    if (f.present("attention_bias") && f.boolean("attention_bias"))
      f.fail("attention_bias", "OLMoE has no attention biases; true is not supported");
    if (f.present("clip_qkv")) f.fail("clip_qkv", "clipping q/k/v is not supported (only null)");
    c.qk_norm = true;
    c.qk_norm_full = true;
    read_rope_type(rope, c, {"linear"});
    read_moe(f, c, "intermediate_size", /*renorm_default=*/false, /*always_renorm=*/false);
  };
  return a;
}

}  // namespace phi3
