// GPT2LMHeadModel (GPT-2 small / medium / large / xl, DistilGPT-2): the classic pre-norm block
// - LayerNorm with a bias (ln_1, ln_2, ln_f; layer_norm_epsilon) instead of RMSNorm (norm_layer);
// - learned absolute position embeddings wpe added to the token embeddings (pos_embed), no rotary;
// - a non-gated MLP: c_fc, gelu_new (the tanh GELU), c_proj (mlp_gated false);
// - Conv1D projections held [in, out] (transposed at load); q|k|v fused in c_attn; biases on
//   every projection; multi-head attention (no GQA) scaled by head_dim^-1/2; lm_head tied to wte.
// Config fields under GPT-2's names (n_embd, n_layer, n_head, n_inner (null: 4 n_embd),
// n_positions); checkpoint names h.N.* with or without a "transformer." prefix.
// Refused: scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn, scale_attn_weights false,
// add_cross_attention, an activation_function other than the tanh GELU.
#include "model/arch/architecture.h"
#include "model/weights.h"

namespace phi3 {

namespace {

LayerPlan gpt2_layer_plan(const ModelConfig& c, int l) {
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  const std::string p = "h." + std::to_string(l) + ".";
  LayerPlan lp;
  lp.ln1 = {p + "ln_1.weight", {D}};
  lp.ln1_bias = {{p + "ln_1.bias", {D}}};
  lp.ln2 = {p + "ln_2.weight", {D}};
  lp.ln2_bias = {{p + "ln_2.bias", {D}}};
  lp.qkv = {{p + "attn.c_attn.weight", {D, 3 * D}, true}};
  lp.qkv_bias = {{p + "attn.c_attn.bias", {3 * D}}};
  lp.o = {{p + "attn.c_proj.weight", {D, D}, true}};
  lp.o_bias = {{p + "attn.c_proj.bias", {D}}};
  lp.gate_up = {{p + "mlp.c_fc.weight", {D, F}, true}};
  lp.gate_up_bias = {{p + "mlp.c_fc.bias", {F}}};
  lp.down = {{p + "mlp.c_proj.weight", {F, D}, true}};
  lp.down_bias = {{p + "mlp.c_proj.bias", {D}}};
  return lp;
}

}  // namespace

Architecture gpt2_architecture() {
  Architecture a;
  a.hf_class = "GPT2LMHeadModel";
  a.model_type = "gpt2";
  a.qkv_parts = {"attn.c_attn"};
  a.gate_up_parts = {"mlp.c_fc"};
  a.layer_plan = gpt2_layer_plan;
  a.embed_name = "wte.weight";
  a.pos_embed_name = "wpe.weight";
  a.final_norm_name = "ln_f.weight";
  a.final_norm_bias_name = "ln_f.bias";
  a.optional_prefix = "transformer.";
  a.ignored_suffixes = {".attn.bias", ".attn.masked_bias"};
  a.attribute_map = {{"hidden_size", "n_embd"},
                     {"num_hidden_layers", "n_layer"},
                     {"num_attention_heads", "n_head"},
                     {"intermediate_size", "n_inner"},
                     {"max_position_embeddings", "n_positions"},
                     {"rms_norm_eps", "layer_norm_epsilon"}};
  a.configure = [](const ConfigFields& f, const ConfigFields& rope, ModelConfig& c) {
    (void)rope;
    if (f.present("num_key_value_heads") && f.positive_int("num_key_value_heads") != c.num_attention_heads)
      f.fail("num_key_value_heads", "GPT-2 has no grouped-query attention");
    c.num_key_value_heads = c.num_attention_heads;
    read_head_dim(f, c, /*may_differ=*/false);
    if (c.intermediate_size == 0) c.intermediate_size = 4 * c.hidden_size;  // n_inner null
    if (!f.present("layer_norm_epsilon")) c.rms_norm_eps = 1e-5f;           // GPT2Config's default
    if (!f.present("n_positions")) c.max_position_embeddings = 1024;
    const std::string act = f.present("activation_function") ? f.string("activation_function") : "gelu_new";
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      f.fail("activation_function", "'" + act + "' is not supported (only the tanh GELU: gelu_new, gelu_pytorch_tanh)");
    if (f.present("scale_attn_by_inverse_layer_idx") && f.boolean("scale_attn_by_inverse_layer_idx"))
      f.fail("scale_attn_by_inverse_layer_idx", "true is not supported (scores scaled by 1/(layer+1))");
    if (f.present("reorder_and_upcast_attn") && f.boolean("reorder_and_upcast_attn"))
      f.fail("reorder_and_upcast_attn", "true is not supported");
    if (f.present("scale_attn_weights") && !f.boolean("scale_attn_weights"))
      f.fail("scale_attn_weights", "false is not supported (scores are scaled by head_dim^-1/2)");
    if (f.present("add_cross_attention") && f.boolean("add_cross_attention"))
      f.fail("add_cross_attention", "true is not supported (a decoder-only model is)");
    if (!f.present("tie_word_embeddings")) c.tie_word_embeddings = true;  // GPT2Config's default
    if (!f.present("bos_token_id")) c.bos_token_id = 50256;
    if (!f.present("eos_token_id")) c.eos_token_id = 50256;
    if (!f.present("pad_token_id") && !f.present("eos_token_id")) c.pad_token_id = 50256;
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.norm_layer = true;
    c.mlp_gated = false;
    c.pos_embed = true;
    c.partial_rotary_factor = 0.0f;
  };
  return a;
}

}  // namespace phi3
