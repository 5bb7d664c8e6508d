// Phi3ForCausalLM (Phi-3, Phi-3.5, Phi-4, Phi-4-mini): fused qkv_proj and gate_up_proj, no
// biases, partial rotary (partial_rotary_factor), LongRoPE, one sliding window for every layer.
#include "model/arch/architecture.h"

namespace phi3 {

Architecture phi3_architecture() {
  Architecture a;
  a.hf_class = "Phi3ForCausalLM";
  a.model_type = "phi3";
  a.qkv_parts = {"self_attn.qkv_proj"};
  a.gate_up_parts = {"mlp.gate_up_proj"};
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/false);
    // transformers: rope_parameters' value wins over the top-level one.
    double prf = 1.0;
    const bool in_rope = rope.present("partial_rotary_factor");
    if (in_rope) prf = rope.number("partial_rotary_factor");
    else if (f.present("partial_rotary_factor")) prf = f.number("partial_rotary_factor");
    if (!(prf > 0 && prf <= 1)) {
      const std::string msg = "must be in (0, 1], got " + std::to_string(prf);
      if (in_rope) rope.fail("partial_rotary_factor", msg);
      f.fail("partial_rotary_factor", msg);
    }
    c.partial_rotary_factor = static_cast<float>(prf);
    window_all_layers(f, c);
    read_rope_type(rope, c, {"longrope"});
  };
  return a;
}

}  // namespace phi3
