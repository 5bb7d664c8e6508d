// Qwen3ForCausalLM (Qwen3 0.6B-32B dense): the Qwen2 layout without q/k/v biases (unless
// attention_bias, which also gives o_proj one), with a per-head RMSNorm of q and k over
// head_dim before rotary (self_attn.q_norm / k_norm, eps = rms_norm_eps), head_dim from the
// config (128: not hidden_size / heads on the small sizes), windows as Qwen2 reads them.
#include "model/arch/architecture.h"

namespace phi3 {

Architecture qwen3_architecture() {
  Architecture a;
  a.hf_class = "Qwen3ForCausalLM";
  a.model_type = "qwen3";
  separate_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    if (!f.present("head_dim")) c.head_dim = 128;  // Qwen3Config's default, not hidden_size / heads
    full_rotary_only(f, rope);
    if (f.present("attention_bias")) c.qkv_bias = c.o_bias = f.boolean("attention_bias");
    c.qk_norm = true;
    read_qwen_windows(f, c);
    read_rope_type(rope, c, {"linear", "llama3"});
  };
  return a;
}

}  // namespace phi3
