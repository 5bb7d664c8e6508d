// config.json -> ModelConfig, following transformers' Phi3Config (5.x): rope parameters come
// from "rope_scaling" when it is set, else from "rope_parameters" (what transformers 5 saves),
// each falling back to the top-level rope_theta / partial_rotary_factor. The common fields are
// read here, then the family (architecture.h) reads its own.
#include "model/arch/config_json.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/arch/architecture.h"
#include "runtime/config_fields.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/json_util.h"

namespace phi3 {

using json = nlohmann::json;

namespace {

// Whether v nests containers at most `depth` levels deep (copying a json value recurses: a
// hostile file could nest deeply enough to overflow the stack).
bool shallow(const json& v, int depth) {
  if (!v.is_structured()) return true;
  if (depth == 0) return false;
  for (const json& x : v)
    if (!shallow(x, depth - 1)) return false;
  return true;
}

// The decoder's config fields (see parse_config_json).
json decoder_fields(const json& j, const ConfigFields& top, const Architecture& arch) {
  const json* src = &j;
  if (!arch.text_config.empty()) {
    if (!top.present(arch.text_config)) top.fail(arch.text_config, "missing (required for " + arch.hf_class + ")");
    src = &top.at(arch.text_config);
    if (!src->is_object()) top.fail(arch.text_config, "expected an object, got " + describe(*src));
  }
  json out = json::object();
  for (auto it = src->begin(); it != src->end(); ++it) {
    if (!shallow(it.value(), 32)) top.fail(it.key(), "nests more than 32 levels deep");
    out[it.key()] = it.value();
  }
  if (!arch.text_config.empty())  // the multimodal config's own values, where the text config has none
    for (const char* k : {"tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"})
      if (!out.contains(k) && j.contains(k) && shallow(j[k], 2)) out[k] = j[k];
  for (auto it = arch.config_defaults.begin(); it != arch.config_defaults.end(); ++it)
    if (!out.contains(it.key())) out[it.key()] = it.value();
  return out;
}

}  // namespace

ModelConfig parse_config_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(source + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(source + ": expected a JSON object, got " + std::string(j.type_name()));
  ConfigFields top(j, source, "");
  ModelConfig c;

  // ---- architecture: the family description (model/arch/) reads its own fields below
  const Architecture& arch = architecture_for(top);
  // The decoder's fields: the top level, or the nested config the family names (text_config),
  // each completed by the family's class defaults where absent.
  const bool own_fields = !arch.text_config.empty() || !arch.config_defaults.empty();
  const json body = own_fields ? decoder_fields(j, top, arch) : json();
  ConfigFields f(own_fields ? body : j, source, arch.text_config.empty() ? "" : arch.text_config + ".");
  c.architecture = arch.hf_class;
  c.family = arch.model_type;

  // ---- sizes (under the family's own names where it has them: GPT-2's n_embd, n_layer, ...)
  auto field = [&](const char* k) -> std::string {
    const auto it = arch.attribute_map.find(k);
    return it == arch.attribute_map.end() ? k : it->second;
  };
  c.hidden_size = f.required_positive_int(field("hidden_size"));
  // A family that maps it may leave it null (GPT-2's n_inner: 4 * n_embd, set by its configure).
  if (arch.attribute_map.count("intermediate_size"))
    c.intermediate_size = f.present(field("intermediate_size")) ? f.positive_int(field("intermediate_size")) : 0;
  else
    c.intermediate_size = f.required_positive_int("intermediate_size");
  c.num_hidden_layers = f.required_positive_int(field("num_hidden_layers"));
  if (c.num_hidden_layers > 100000)  // per-layer tables are sized by it; real models have ~10-200
    f.fail("num_hidden_layers", std::to_string(c.num_hidden_layers) + " is not a plausible layer count (at most 100000)");
  c.num_attention_heads = f.required_positive_int(field("num_attention_heads"));
  c.vocab_size = f.required_positive_int("vocab_size");
  c.num_key_value_heads =
      f.present("num_key_value_heads") ? f.positive_int("num_key_value_heads") : c.num_attention_heads;
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    f.fail("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                      std::to_string(c.num_attention_heads));

  if (f.present(field("rms_norm_eps"))) c.rms_norm_eps = static_cast<float>(f.positive_number(field("rms_norm_eps")));
  c.max_position_embeddings =
      f.present(field("max_position_embeddings")) ? f.positive_int(field("max_position_embeddings")) : 4096;
  c.original_max_position_embeddings =
      f.present("original_max_position_embeddings") ? f.positive_int("original_max_position_embeddings") : 4096;
  if (f.present("tie_word_embeddings")) c.tie_word_embeddings = f.boolean("tie_word_embeddings");

  // ---- special token ids (no range check against vocab_size: transformers only warns)
  auto token_id = [&](const std::string& field, int dflt) -> int {
    if (!f.present(field)) return dflt;
    int64_t x = f.integer(field);
    if (x < 0) f.fail(field, "must be non-negative, got " + std::to_string(x));
    return static_cast<int>(x);
  };
  c.bos_token_id = token_id("bos_token_id", 1);
  if (f.present("eos_token_id") && f.at("eos_token_id").is_array()) {
    const json& list = f.at("eos_token_id");
    if (list.empty()) f.fail("eos_token_id", "is an empty list");
    if (!(list[0].is_number_integer() || list[0].is_number_unsigned()) || list[0].get<int64_t>() < 0 ||
        list[0].get<int64_t>() > std::numeric_limits<int>::max())
      f.fail("eos_token_id", "expected a non-negative integer or a list of them, got " + json_brief(list));
    c.eos_token_id = list[0].get<int>();
  } else {
    c.eos_token_id = token_id("eos_token_id", 32000);
  }
  // Absent or null: the tokenizer's pad token where it names one (load_model), else eos (or
  // 32000, Phi-3's, when the config names no eos either).
  c.pad_token_id = f.present("pad_token_id")   ? token_id("pad_token_id", 32000)
                   : f.present("eos_token_id") ? c.eos_token_id
                                               : 32000;
  c.pad_token_from_config = f.present("pad_token_id");

  // ---- rotary
  // transformers: rope_parameters = rope_scaling or rope_parameters; values there win over
  // the top-level rope_theta / partial_rotary_factor.
  std::string rope_field;
  if (f.present("rope_scaling")) rope_field = "rope_scaling";
  else if (f.present("rope_parameters")) rope_field = "rope_parameters";
  // By reference: copying a json value recurses, and a hostile file can nest very deep.
  static const json kNoRope = json::object();
  const json& rope = rope_field.empty() ? kNoRope : f.at(rope_field);
  if (!rope.is_object()) f.fail(rope_field, "expected an object or null, got " + describe(rope));
  ConfigFields r(rope, source, rope_field + ".");
  double theta = 10000.0;
  if (r.present("rope_theta")) theta = r.positive_number("rope_theta");
  else if (f.present("rope_theta")) theta = f.positive_number("rope_theta");
  c.rope_theta = static_cast<float>(theta);

  // ---- the family's own fields: head_dim, partial rotary, biases, windows, rope type
  arch.configure(f, r, c);

  c.rotary_dim = static_cast<int>(c.head_dim * static_cast<double>(c.partial_rotary_factor));  // python int(hd * f)
  if (c.pos_embed) c.rotary_dim = 0;  // learned absolute positions: no rotary
  else if (c.rotary_dim <= 0 || c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim)
    f.fail("partial_rotary_factor", "gives rotary_dim " + std::to_string(c.rotary_dim) + " for head_dim " +
                                        std::to_string(c.head_dim) + "; it must be even and in [2, head_dim]");
  if (c.layer_window.empty()) c.layer_window.assign(static_cast<size_t>(c.num_hidden_layers), c.sliding_window);
  if (c.rope_scaling.type == "longrope") {
    const size_t half = static_cast<size_t>(c.rotary_dim / 2);
    for (const char* key : {"short_factor", "long_factor"}) {
      if (!r.present(key)) r.fail(key, "missing (required for longrope)");
      std::vector<float> v = r.number_list(key);
      if (v.size() != half)
        r.fail(key, "has " + std::to_string(v.size()) + " entries but rotary_dim / 2 = " + std::to_string(half));
      (std::string(key) == "short_factor" ? c.rope_scaling.short_factor : c.rope_scaling.long_factor) = v;
    }
    if (r.present("factor")) c.rope_scaling.factor = static_cast<float>(r.positive_number("factor"));
    if (r.present("attention_factor")) {
      double a = r.number("attention_factor");
      if (a < 0) r.fail("attention_factor", "must be non-negative, got " + r.at("attention_factor").dump());
      c.rope_scaling.attention_factor = static_cast<float>(a);
    }
  }
  return c;
}

ModelConfig load_config(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "config.json");
  return parse_config_json(read_text_file(path, "model config"), path);
}

}  // namespace phi3
