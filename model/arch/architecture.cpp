#include "model/arch/architecture.h"

#include <algorithm>

#include "runtime/json_util.h"

namespace phi3 {

// Defined one per file in model/arch/.
Architecture phi3_architecture();
Architecture qwen2_architecture();
Architecture llama_architecture();
Architecture mistral_architecture();
Architecture qwen3_architecture();
Architecture gemma2_architecture();
Architecture gemma3_text_architecture();
Architecture gemma3_multimodal_architecture();
Architecture gpt2_architecture();
Architecture mixtral_architecture();
Architecture qwen3_moe_architecture();
Architecture olmoe_architecture();

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> all = {phi3_architecture(), qwen2_architecture(), llama_architecture(),
                                                mistral_architecture(), qwen3_architecture(),
                                                gemma2_architecture(), gemma3_text_architecture(),
                                                gemma3_multimodal_architecture(), gpt2_architecture(),
                                                mixtral_architecture(), qwen3_moe_architecture(),
                                                olmoe_architecture()};
  return all;
}

namespace {
std::string supported_list() {
  std::string s;
  for (const auto& a : architectures()) s += (s.empty() ? "" : ", ") + a.hf_class + " (" + a.model_type + ")";
  return s;
}
}  // namespace

const Architecture& architecture_for(const ConfigFields& f) {
  if (f.present("architectures")) {
    const nlohmann::json& list = f.at("architectures");
    if (!list.is_array()) f.fail("architectures", "expected a list of strings, got " + describe(list));
    const Architecture* found = nullptr;
    for (const nlohmann::json& s : list) {
      if (!s.is_string()) f.fail("architectures", "expected a list of strings, got an entry " + describe(s));
      for (const auto& a : architectures())
        if (!found && s.get<std::string>() == a.hf_class) found = &a;
    }
    if (!found) f.fail("architectures", "no supported architecture in " + json_brief(list) + " (supported: " + supported_list() + ")");
    if (f.present("model_type") && f.string("model_type") != found->model_type)
      f.fail("model_type", "expected '" + found->model_type + "' for " + found->hf_class + ", got '" +
                               f.string("model_type") + "'");
    return *found;
  }
  if (!f.present("model_type")) f.fail("architectures", "missing, and no model_type either (supported: " + supported_list() + ")");
  const std::string mt = f.string("model_type");
  for (const auto& a : architectures())
    if (a.model_type == mt) return a;
  f.fail("model_type", "unsupported model_type '" + mt + "' (supported: " + supported_list() + ")");
}

const Architecture& architecture_named(const std::string& model_type) {
  for (const auto& a : architectures())
    if (a.model_type == model_type) return a;
  throw Error("unknown model family '" + model_type + "' (supported: " + supported_list() + ")");
}

void separate_projections(Architecture& a) {
  a.qkv_parts = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
  a.gate_up_parts = {"mlp.gate_proj", "mlp.up_proj"};
}

void qwen_moe_projections(Architecture& a) {
  separate_projections(a);
  a.gate_up_parts.clear();
  a.moe_block = "mlp";
  a.expert_gate_up_parts = {"gate_proj", "up_proj"};
  a.expert_down_part = "down_proj";
}

void read_head_dim(const ConfigFields& f, ModelConfig& c, bool may_differ) {
  const bool divides = c.hidden_size % c.num_attention_heads == 0;
  if (f.present("head_dim")) {
    const int hd = f.positive_int("head_dim");
    if (!may_differ && (!divides || hd != c.hidden_size / c.num_attention_heads))
      f.fail("head_dim", std::to_string(hd) + " differs from hidden_size / num_attention_heads = " +
                             std::to_string(c.hidden_size / c.num_attention_heads) + " (this family has no other layout)");
    c.head_dim = hd;
    return;
  }
  if (!divides)
    f.fail("num_attention_heads", std::to_string(c.num_attention_heads) + " does not divide hidden_size " +
                                      std::to_string(c.hidden_size) + " (and no head_dim is given)");
  c.head_dim = c.hidden_size / c.num_attention_heads;
}

void window_all_layers(const ConfigFields& f, ModelConfig& c) {
  int w = 0;
  if (f.present("sliding_window")) {
    const int64_t v = f.integer("sliding_window");
    if (v < 0) f.fail("sliding_window", "must be positive or null, got " + std::to_string(v));
    w = static_cast<int>(v);
  }
  c.sliding_window = w;
  c.layer_window.assign(static_cast<size_t>(c.num_hidden_layers), w);
}

void full_rotary_only(const ConfigFields& f, const ConfigFields& rope) {
  for (const ConfigFields* x : {&rope, &f})
    if (x->present("partial_rotary_factor") && x->number("partial_rotary_factor") != 1.0)
      x->fail("partial_rotary_factor", "must be 1 for this architecture (only Phi3ForCausalLM rotates part of a head)");
}

bool read_layer_types(const ConfigFields& f, ModelConfig& c, int window) {
  if (!f.present("layer_types")) return false;
  const nlohmann::json& t = f.at("layer_types");
  if (!t.is_array() || t.size() != static_cast<size_t>(c.num_hidden_layers))
    f.fail("layer_types", "expected a list of " + std::to_string(c.num_hidden_layers) + " strings");
  for (size_t l = 0; l < t.size(); ++l) {
    const std::string s = t[l].is_string() ? t[l].get<std::string>() : "";
    if (s == "sliding_attention") c.layer_window[l] = window;
    else if (s != "full_attention")
      f.fail("layer_types", "entry " + std::to_string(l) + " must be full_attention or sliding_attention");
  }
  return true;
}

void read_qwen_windows(const ConfigFields& f, ModelConfig& c) {
  const bool use = f.present("use_sliding_window") && f.boolean("use_sliding_window");
  int w = 0;
  if (use && f.present("sliding_window")) {
    const int64_t v = f.integer("sliding_window");
    if (v <= 0) f.fail("sliding_window", "must be positive or null, got " + std::to_string(v));
    w = static_cast<int>(v);
  }
  c.sliding_window = w;
  c.layer_window.assign(static_cast<size_t>(c.num_hidden_layers), 0);
  if (!read_layer_types(f, c, w) && w > 0) {
    const int first = f.present("max_window_layers") ? static_cast<int>(f.integer("max_window_layers")) : 28;
    for (int l = std::max(0, first); l < c.num_hidden_layers; ++l) c.layer_window[static_cast<size_t>(l)] = w;
  }
}

void read_moe(const ConfigFields& f, ModelConfig& c, const char* width_field, bool renorm_default, bool always_renorm) {
  const char* ef = f.present("num_local_experts") ? "num_local_experts" : "num_experts";
  if (!f.present(ef)) f.fail("num_local_experts", "missing (a mixture-of-experts model needs its expert count)");
  c.num_experts = f.positive_int(ef);
  if (c.num_experts > 4096) f.fail(ef, std::to_string(c.num_experts) + " is not a plausible expert count (at most 4096)");
  c.experts_per_tok = f.present("num_experts_per_tok") ? f.positive_int("num_experts_per_tok") : 2;
  if (c.experts_per_tok > c.num_experts)
    f.fail("num_experts_per_tok", std::to_string(c.experts_per_tok) + " exceeds the " + std::to_string(c.num_experts) +
                                      " experts");
  c.moe_intermediate_size = f.present(width_field) ? f.positive_int(width_field) : c.intermediate_size;
  c.moe_renorm = always_renorm || (f.present("norm_topk_prob") ? f.boolean("norm_topk_prob") : renorm_default);
  if (always_renorm && f.present("norm_topk_prob") && !f.boolean("norm_topk_prob"))
    f.fail("norm_topk_prob", "false is not supported for " + c.architecture + " (its router always renormalises)");
}

void read_rope_type(const ConfigFields& r, ModelConfig& c, const std::vector<std::string>& allowed) {
  std::string type = "default";
  const char* field = r.present("rope_type") ? "rope_type" : "type";
  if (r.present(field)) type = r.string(field);
  if (type == "su") type = "longrope";
  bool ok = type == "default";
  for (const auto& a : allowed) ok = ok || a == type;
  if (!ok) {
    std::string list;
    for (const auto& a : allowed) list += a + ", ";
    r.fail(field, "unsupported rope type '" + type + "' for " + c.architecture + " (supported: " + list + "or none)");
  }
  if (type == "default") return;
  c.rope_scaling.type = type;
  if (type == "linear" || type == "llama3") {
    if (!r.present("factor")) r.fail("factor", "missing (required for " + type + ")");
    c.rope_scaling.factor = static_cast<float>(r.positive_number("factor"));
  }
  if (type == "llama3") {
    for (const char* k : {"low_freq_factor", "high_freq_factor"})
      if (!r.present(k)) r.fail(k, "missing (required for llama3)");
    c.rope_scaling.low_freq_factor = r.positive_number("low_freq_factor");
    c.rope_scaling.high_freq_factor = r.positive_number("high_freq_factor");
    if (!(c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor))
      r.fail("high_freq_factor", "must be larger than low_freq_factor");
    if (!r.present("original_max_position_embeddings"))
      r.fail("original_max_position_embeddings", "missing (required for llama3)");
    c.rope_scaling.original_max_position_embeddings = r.positive_int("original_max_position_embeddings");
  }
}

}  // namespace phi3
