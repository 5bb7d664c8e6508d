// LlamaForCausalLM (Llama 3.1 / 3.2 / 3.3, DeepSeek-R1-Distill-Llama): separate q/k/v and
// gate/up, optional biases (attention_bias: q, k, v and o; mlp_bias: gate, up and down),
// head_dim from the config, rope_scaling llama3 or linear (dynamic is refused: it changes
// with the prompt length), tied embeddings on 3.2.
#include "model/arch/architecture.h"

namespace phi3 {

Architecture llama_architecture() {
  Architecture a;
  a.hf_class = "LlamaForCausalLM";
  a.model_type = "llama";
  separate_projections(a);
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    read_head_dim(f, c, /*may_differ=*/true);
    full_rotary_only(f, rope);
    if (f.present("attention_bias")) c.qkv_bias = c.o_bias = f.boolean("attention_bias");
    if (f.present("mlp_bias")) c.mlp_bias = f.boolean("mlp_bias");
    read_rope_type(rope, c, {"llama3", "linear"});
  };
  return a;
}

}  // namespace phi3
