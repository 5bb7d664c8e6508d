// The published shapes `make-random --like` and `bench --predict --like` build: each
// checkpoint's config.json fields that decide its size and its op variants (the tokenizer ids
// are the real ones; the embedded test tokenizer's ids all lie below every vocab_size).
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "patching/cli/commands.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"

namespace phi3 {

namespace {

using nlohmann::json;

// One Llama-style checkpoint's size (architecture-specific fields come from its family).
struct Shape {
  const char* name;
  const char* family;  // qwen2, llama3.1, llama3.2, mistral, mistral-nemo, qwen3, gemma2, gemma3-1b, gemma3,
                       // qwen3_moe, olmoe, mixtral
  int hidden, inter, layers, heads, kv_heads, head_dim;  // head_dim 0: hidden / heads, not written
  int vocab;
  bool tied;
  int max_pos;
  int experts = 0, topk = 0, moe_inter = 0;  // mixture of experts: E, k, expert width (0: dense)
};

// Sizes from each model's config.json on the Hugging Face hub.
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {"qwen2.5-0.5b", "qwen2", 896, 4864, 24, 14, 2, 0, 151936, true, 32768},
      {"qwen2.5-1.5b", "qwen2", 1536, 8960, 28, 12, 2, 0, 151936, true, 32768},
      {"qwen2.5-3b", "qwen2", 2048, 11008, 36, 16, 2, 0, 151936, true, 32768},
      {"qwen2.5-7b", "qwen2", 3584, 18944, 28, 28, 4, 0, 152064, false, 131072},
      {"qwen2.5-14b", "qwen2", 5120, 13824, 48, 40, 8, 0, 152064, false, 131072},
      {"qwen2.5-32b", "qwen2", 5120, 27648, 64, 40, 8, 0, 152064, false, 131072},
      {"qwen2.5-72b", "qwen2", 8192, 29568, 80, 64, 8, 0, 152064, false, 131072},
      {"llama-3.2-1b", "llama3.2", 2048, 8192, 16, 32, 8, 64, 128256, true, 131072},
      {"llama-3.2-3b", "llama3.2", 3072, 8192, 28, 24, 8, 128, 128256, true, 131072},
      {"llama-3.1-8b", "llama3.1", 4096, 14336, 32, 32, 8, 128, 128256, false, 131072},
      {"llama-3.1-70b", "llama3.1", 8192, 28672, 80, 64, 8, 128, 128256, false, 131072},
      {"mistral-7b", "mistral", 4096, 14336, 32, 32, 8, 0, 32000, false, 32768},
      {"mistral-nemo-12b", "mistral-nemo", 5120, 14336, 40, 32, 8, 128, 131072, false, 1024000},
      {"qwen3-0.6b", "qwen3", 1024, 3072, 28, 16, 8, 128, 151936, true, 40960},
      {"qwen3-1.7b", "qwen3", 2048, 6144, 28, 16, 8, 128, 151936, true, 40960},
      {"qwen3-4b", "qwen3", 2560, 9728, 36, 32, 8, 128, 151936, true, 40960},
      {"qwen3-8b", "qwen3", 4096, 12288, 36, 32, 8, 128, 151936, false, 40960},
      {"qwen3-14b", "qwen3", 5120, 17408, 40, 40, 8, 128, 151936, false, 40960},
      {"qwen3-32b", "qwen3", 5120, 25600, 64, 64, 8, 128, 151936, false, 40960},
      {"gemma-2-2b", "gemma2", 2304, 9216, 26, 8, 4, 256, 256000, true, 8192},
      {"gemma-2-9b", "gemma2", 3584, 14336, 42, 16, 8, 256, 256000, true, 8192},
      {"gemma-2-27b", "gemma2", 4608, 36864, 46, 32, 16, 128, 256000, true, 8192},
      // Gemma 3: the text decoder (4B / 12B / 27B: text_config of Gemma3ForConditionalGeneration),
      // written as a Gemma3ForCausalLM
      {"gemma-3-1b", "gemma3-1b", 1152, 6912, 26, 4, 1, 256, 262144, true, 32768},
      {"gemma-3-4b", "gemma3", 2560, 10240, 34, 8, 4, 256, 262208, true, 131072},
      {"gemma-3-12b", "gemma3", 3840, 15360, 48, 16, 8, 256, 262208, true, 131072},
      {"gemma-3-27b", "gemma3", 5376, 21504, 62, 32, 16, 128, 262208, true, 131072},
      {"qwen3-30b-a3b", "qwen3_moe", 2048, 6144, 48, 32, 4, 128, 151936, false, 40960, 128, 8, 768},
      {"olmoe-1b-7b", "olmoe", 2048, 1024, 16, 16, 16, 0, 50304, false, 4096, 64, 8, 1024},
      {"mixtral-8x7b", "mixtral", 4096, 14336, 32, 32, 8, 0, 32000, false, 32768, 8, 2, 14336},
      // Phi-3.5-MoE's sizes (16 experts of width 6400, top 2) in the Mixtral layout: the engine
      // does not load PhimoeForCausalLM (LayerNorm with biases, the sparsemixer router); its
      // weights and activations take the same memory as this stand-in's.
      {"phi-3.5-moe", "mixtral", 4096, 6400, 32, 32, 8, 0, 32064, false, 131072, 16, 2, 6400},
  };
  return s;
}

json family_fields(const Shape& s) {
  const std::string f = s.family;
  if (f == "qwen2")
    return {{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"bos_token_id", 151643},
            {"eos_token_id", 151643}, {"max_window_layers", s.layers}, {"rms_norm_eps", 1e-6},
            {"rope_theta", 1000000.0}, {"sliding_window", s.max_pos}, {"use_sliding_window", false}};
  if (f == "llama3.1" || f == "llama3.2")
    return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"attention_bias", false},
            {"mlp_bias", false}, {"bos_token_id", 128000}, {"eos_token_id", 128001}, {"rms_norm_eps", 1e-5},
            {"rope_theta", 500000.0}, {"pretraining_tp", 1},
            {"rope_scaling", {{"factor", f == "llama3.2" ? 32.0 : 8.0}, {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192},
                              {"rope_type", "llama3"}}}};
  if (f == "mistral")  // Mistral-7B-v0.1: the sliding-window one
    return {{"architectures", {"MistralForCausalLM"}}, {"model_type", "mistral"}, {"bos_token_id", 1},
            {"eos_token_id", 2}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"sliding_window", 4096}};
  if (f == "mistral-nemo")
    return {{"architectures", {"MistralForCausalLM"}}, {"model_type", "mistral"}, {"bos_token_id", 1},
            {"eos_token_id", 2}, {"rms_norm_eps", 1e-5}, {"rope_theta", 1000000.0}, {"sliding_window", nullptr}};
  if (f == "qwen3")
    return {{"architectures", {"Qwen3ForCausalLM"}}, {"model_type", "qwen3"}, {"attention_bias", false},
            {"bos_token_id", 151643}, {"eos_token_id", 151645}, {"max_window_layers", s.layers},
            {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0}, {"sliding_window", nullptr},
            {"use_sliding_window", false}};
  if (f == "gemma2")  // query_pre_attn_scalar: 256 on 2B / 9B, hidden / heads = 144 on 27B
    return {{"architectures", {"Gemma2ForCausalLM"}}, {"model_type", "gemma2"}, {"bos_token_id", 2},
            {"eos_token_id", 1}, {"pad_token_id", 0}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
            {"hidden_act", "gelu_pytorch_tanh"}, {"hidden_activation", "gelu_pytorch_tanh"},
            {"query_pre_attn_scalar", s.head_dim == 256 ? 256 : s.hidden / s.heads},
            {"attn_logit_softcapping", 50.0}, {"final_logit_softcapping", 30.0}, {"sliding_window", 4096},
            {"attention_bias", false}};
  if (f == "gemma3" || f == "gemma3-1b") {  // query_pre_attn_scalar: 256, hidden / heads = 168 on 27B
    json j = {{"architectures", {"Gemma3ForCausalLM"}}, {"model_type", "gemma3_text"}, {"bos_token_id", 2},
              {"eos_token_id", 1}, {"pad_token_id", 0}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
              {"rope_local_base_freq", 10000.0}, {"sliding_window_pattern", 6},
              {"hidden_act", "gelu_pytorch_tanh"}, {"hidden_activation", "gelu_pytorch_tanh"},
              {"query_pre_attn_scalar", s.head_dim == 256 ? 256 : s.hidden / s.heads},
              {"attn_logit_softcapping", nullptr}, {"final_logit_softcapping", nullptr},
              {"sliding_window", f == "gemma3-1b" ? 512 : 1024}, {"attention_bias", false}, {"rope_scaling", nullptr}};
    if (f == "gemma3") j["rope_scaling"] = {{"factor", 8.0}, {"rope_type", "linear"}};
    return j;
  }
  if (f == "qwen3_moe")
    return {{"architectures", {"Qwen3MoeForCausalLM"}}, {"model_type", "qwen3_moe"}, {"attention_bias", false},
            {"bos_token_id", 151643}, {"eos_token_id", 151645}, {"max_window_layers", s.layers},
            {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0}, {"sliding_window", nullptr},
            {"use_sliding_window", false}, {"num_experts", s.experts}, {"num_experts_per_tok", s.topk},
            {"moe_intermediate_size", s.moe_inter}, {"norm_topk_prob", true}, {"decoder_sparse_step", 1},
            {"mlp_only_layers", json::array()}};
  if (f == "olmoe")
    return {{"architectures", {"OlmoeForCausalLM"}}, {"model_type", "olmoe"}, {"attention_bias", false},
            {"bos_token_id", nullptr}, {"eos_token_id", 50279}, {"pad_token_id", 1}, {"rms_norm_eps", 1e-5},
            {"rope_theta", 10000.0}, {"clip_qkv", nullptr}, {"num_experts", s.experts},
            {"num_experts_per_tok", s.topk}, {"norm_topk_prob", false}};
  if (f == "mixtral")
    return {{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"}, {"bos_token_id", 1},
            {"eos_token_id", 2}, {"rms_norm_eps", 1e-5}, {"rope_theta", 1000000.0}, {"sliding_window", nullptr},
            {"num_local_experts", s.experts}, {"num_experts_per_tok", s.topk}};
  throw Error(std::string("model_shapes: no family ") + s.family);  // not reached: the table names known ones
}

json shape_config(const Shape& s) {
  json j = {{"hidden_size", s.hidden}, {"intermediate_size", s.inter}, {"num_hidden_layers", s.layers},
            {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv_heads}, {"vocab_size", s.vocab},
            {"tie_word_embeddings", s.tied}, {"max_position_embeddings", s.max_pos}, {"hidden_act", "silu"},
            {"attention_dropout", 0.0}, {"initializer_range", 0.02}, {"torch_dtype", "bfloat16"},
            {"use_cache", true}};
  j.update(family_fields(s));  // the family's own values win (Gemma's activation)
  if (s.head_dim > 0) j["head_dim"] = s.head_dim;
  return j;
}

json phi3_config(const std::string& like) {
  json j = {{"architectures", {"Phi3ForCausalLM"}}, {"model_type", "phi3"}, {"hidden_act", "silu"},
            {"bos_token_id", 1},   {"eos_token_id", 32000},  {"pad_token_id", 32000},
            {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"rope_scaling", nullptr},
            {"attention_bias", false}, {"torch_dtype", "bfloat16"}, {"tie_word_embeddings", false},
            {"sliding_window", 2047}, {"max_position_embeddings", 4096},
            {"original_max_position_embeddings", 4096}, {"vocab_size", 32064}};
  if (like == "phi-3-mini") {
    j.update({{"hidden_size", 3072}, {"intermediate_size", 8192}, {"num_hidden_layers", 32},
              {"num_attention_heads", 32}, {"num_key_value_heads", 32}});
  } else if (like == "phi-3-mini-128k") {  // Phi-3-mini-128k / Phi-3.5-mini: LongRoPE to 131,072 positions
    j.update({{"hidden_size", 3072}, {"intermediate_size", 8192}, {"num_hidden_layers", 32},
              {"num_attention_heads", 32}, {"num_key_value_heads", 32}, {"sliding_window", 262144},
              {"max_position_embeddings", 131072}, {"original_max_position_embeddings", 4096}});
    std::vector<double> sf(48), lf(48);  // the published lists' length (head_dim / 2); values illustrative
    for (int i = 0; i < 48; ++i) {
      sf[i] = 1.0 + 0.02 * i;
      lf[i] = 1.0 + 0.9 * i;
    }
    j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", sf}, {"long_factor", lf}};
  } else if (like == "phi-3-medium") {
    j.update({{"hidden_size", 5120}, {"intermediate_size", 17920}, {"num_hidden_layers", 40},
              {"num_attention_heads", 40}, {"num_key_value_heads", 10}});
  } else if (like == "phi-4-mini") {
    j.update({{"hidden_size", 3072}, {"intermediate_size", 8192}, {"num_hidden_layers", 32},
              {"num_attention_heads", 24}, {"num_key_value_heads", 8}, {"vocab_size", 200064},
              {"partial_rotary_factor", 0.75}, {"tie_word_embeddings", true}, {"sliding_window", nullptr},
              {"max_position_embeddings", 131072}, {"original_max_position_embeddings", 4096},
              {"rope_theta", 10000.0}, {"bos_token_id", 199999}, {"eos_token_id", 199999},
              {"pad_token_id", 199999}});
    std::vector<double> sf(48), lf(48);
    for (int i = 0; i < 48; ++i) {
      sf[i] = 1.0 + 0.05 * i;
      lf[i] = 1.0 + 0.5 * i;
    }
    j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", sf}, {"long_factor", lf}};
  } else if (like == "tiny") {
    j.update({{"hidden_size", 64}, {"intermediate_size", 128}, {"num_hidden_layers", 4}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 1032}, {"pad_token_id", 1024}, {"eos_token_id", 1024},
              {"max_position_embeddings", 512}, {"original_max_position_embeddings", 512}});
  } else {
    return json();
  }
  return j;
}

const char* const kPhi3Shapes[] = {"phi-3-mini", "phi-3-mini-128k", "phi-3-medium", "phi-4-mini", "tiny"};

// GPT-2 (openai-community/gpt2, -medium, -large, -xl): config.json under GPT-2's own names.
json gpt2_config(const std::string& like) {
  int d = 0, layers = 0, heads = 0;
  if (like == "gpt2") d = 768, layers = 12, heads = 12;
  else if (like == "gpt2-medium") d = 1024, layers = 24, heads = 16;
  else if (like == "gpt2-large") d = 1280, layers = 36, heads = 20;
  else if (like == "gpt2-xl") d = 1600, layers = 48, heads = 25;
  else return json();
  return {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"activation_function", "gelu_new"},
          {"bos_token_id", 50256}, {"eos_token_id", 50256}, {"layer_norm_epsilon", 1e-5}, {"n_ctx", 1024},
          {"n_embd", d}, {"n_head", heads}, {"n_inner", nullptr}, {"n_layer", layers}, {"n_positions", 1024},
          {"scale_attn_weights", true}, {"tie_word_embeddings", true}, {"vocab_size", 50257},
          {"torch_dtype", "float32"}};
}
const char* const kGpt2Shapes[] = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"};

}  // namespace

std::vector<std::string> like_shape_names() {
  std::vector<std::string> out(std::begin(kPhi3Shapes), std::end(kPhi3Shapes));
  for (const Shape& s : shapes()) out.push_back(s.name);
  out.insert(out.end(), std::begin(kGpt2Shapes), std::end(kGpt2Shapes));
  return out;
}

std::string like_shapes() {
  std::string out;
  for (const std::string& n : like_shape_names()) out += (out.empty() ? "" : ", ") + n;
  return out;
}

nlohmann::json config_like(const std::string& like, int layers_override) {
  json j = phi3_config(like);
  if (j.is_null()) j = gpt2_config(like);
  if (j.is_null())
    for (const Shape& s : shapes())
      if (like == s.name) j = shape_config(s);
  if (j.is_null())
    throw Error("--like: unknown shape '" + like + "'" + did_you_mean(like, like_shape_names()) + " (expected one of " +
                like_shapes() + ")");
  if (layers_override > 0) j[j.contains("n_layer") ? "n_layer" : "num_hidden_layers"] = layers_override;
  return j;
}

}  // namespace phi3
