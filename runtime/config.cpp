// config.json -> ModelConfig, following transformers' Phi3Config (5.x): rope parameters come
// from "rope_scaling" when it is set, else from "rope_parameters" (what transformers 5 saves),
// each falling back to the top-level rope_theta / partial_rotary_factor.
#include "runtime/config.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/json_util.h"

namespace phi3 {

using json = nlohmann::json;

namespace {

std::string describe(const json& v) {
  if (v.is_number_float()) return "non-integer number " + v.dump();
  if (v.is_number()) return "number " + v.dump();
  return v.type_name();
}

// Typed field access that names the source and the field in every error.
class Fields {
 public:
  Fields(const json& obj, std::string source, std::string prefix)
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& msg) const {
    throw Error(source_ + ": field '" + prefix_ + field + "': " + msg);
  }
  bool present(const std::string& field) const { return obj_.contains(field) && !obj_[field].is_null(); }
  const json& at(const std::string& field) const { return obj_[field]; }

  int64_t integer(const std::string& field) const {
    const json& v = obj_[field];
    if (!(v.is_number_integer() || v.is_number_unsigned()))
      fail(field, "expected an integer, got " + describe(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max()))
      fail(field, "value " + v.dump() + " is too large");
    int64_t x = v.get<int64_t>();
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
      fail(field, "value " + v.dump() + " is out of range");
    return x;
  }
  int positive_int(const std::string& field) const {
    int64_t x = integer(field);
    if (x <= 0) fail(field, "must be positive, got " + std::to_string(x));
    return static_cast<int>(x);
  }
  int required_positive_int(const std::string& field) const {
    if (!obj_.contains(field)) fail(field, "missing (required)");
    if (obj_[field].is_null()) fail(field, "expected an integer, got null");
    return positive_int(field);
  }
  double number(const std::string& field) const {
    const json& v = obj_[field];
    if (!v.is_number()) fail(field, "expected a number, got " + describe(v));
    double x = v.get<double>();
    if (!std::isfinite(x)) fail(field, "must be finite");
    return x;
  }
  double positive_number(const std::string& field) const {
    double x = number(field);
    if (!(x > 0)) fail(field, "must be positive, got " + obj_[field].dump());
    return x;
  }
  bool boolean(const std::string& field) const {
    const json& v = obj_[field];
    if (!v.is_boolean()) fail(field, "expected true or false, got " + describe(v));
    return v.get<bool>();
  }
  std::string string(const std::string& field) const {
    const json& v = obj_[field];
    if (!v.is_string()) fail(field, "expected a string, got " + describe(v));
    return v.get<std::string>();
  }
  std::vector<float> number_list(const std::string& field) const {
    const json& v = obj_[field];
    if (!v.is_array()) fail(field, "expected a list of numbers, got " + describe(v));
    std::vector<float> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number())
        fail(field, "expected a list of numbers, entry " + std::to_string(i) + " is " + describe(v[i]));
      double x = v[i].get<double>();
      if (!std::isfinite(x) || !(x > 0))
        fail(field, "entry " + std::to_string(i) + " must be a positive finite number, got " + v[i].dump());
      out.push_back(static_cast<float>(x));  // torch.tensor(list, dtype=float32)
    }
    return out;
  }

 private:
  const json& obj_;
  std::string source_;
  std::string prefix_;
};

}  // namespace

ModelConfig parse_config_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(source + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(source + ": expected a JSON object, got " + std::string(j.type_name()));
  Fields f(j, source, "");
  ModelConfig c;

  // ---- architecture
  if (f.present("architectures")) {
    const json& a = f.at("architectures");
    if (!a.is_array()) f.fail("architectures", "expected a list of strings, got " + describe(a));
    bool found = false;
    for (const json& s : a) {
      if (!s.is_string()) f.fail("architectures", "expected a list of strings, got an entry " + describe(s));
      if (s.get<std::string>() == "Phi3ForCausalLM") found = true;
    }
    if (!found) f.fail("architectures", "must contain 'Phi3ForCausalLM', got " + json_brief(a));
    if (f.present("model_type") && f.string("model_type") != "phi3")
      f.fail("model_type", "expected 'phi3' for Phi3ForCausalLM, got '" + f.string("model_type") + "'");
  } else {
    if (!f.present("model_type")) f.fail("architectures", "missing, and no model_type 'phi3' either");
    std::string mt = f.string("model_type");
    if (mt != "phi3") f.fail("model_type", "expected 'phi3' (or architectures [\"Phi3ForCausalLM\"]), got '" + mt + "'");
  }

  // ---- sizes
  c.hidden_size = f.required_positive_int("hidden_size");
  c.intermediate_size = f.required_positive_int("intermediate_size");
  c.num_hidden_layers = f.required_positive_int("num_hidden_layers");
  c.num_attention_heads = f.required_positive_int("num_attention_heads");
  c.vocab_size = f.required_positive_int("vocab_size");
  c.num_key_value_heads =
      f.present("num_key_value_heads") ? f.positive_int("num_key_value_heads") : c.num_attention_heads;
  if (c.hidden_size % c.num_attention_heads != 0)
    f.fail("num_attention_heads", std::to_string(c.num_attention_heads) + " does not divide hidden_size " +
                                      std::to_string(c.hidden_size));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    f.fail("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                      std::to_string(c.num_attention_heads));
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (f.present("head_dim") && f.positive_int("head_dim") != c.head_dim)
    f.fail("head_dim", std::to_string(f.integer("head_dim")) + " differs from hidden_size / num_attention_heads = " +
                           std::to_string(c.head_dim) + " (only that layout is supported)");

  if (f.present("rms_norm_eps")) c.rms_norm_eps = static_cast<float>(f.positive_number("rms_norm_eps"));
  c.max_position_embeddings = f.present("max_position_embeddings") ? f.positive_int("max_position_embeddings") : 4096;
  c.original_max_position_embeddings =
      f.present("original_max_position_embeddings") ? f.positive_int("original_max_position_embeddings") : 4096;
  if (f.present("sliding_window")) {
    int64_t w = f.integer("sliding_window");
    if (w < 0) f.fail("sliding_window", "must be positive or null, got " + std::to_string(w));
    c.sliding_window = static_cast<int>(w);
  }
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
  c.pad_token_id = f.present("pad_token_id") ? token_id("pad_token_id", 32000)
                   : j.contains("pad_token_id")  ? c.eos_token_id  // null: pad with eos
                                                 : 32000;

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
  Fields r(rope, source, rope_field + ".");
  double theta = 10000.0;
  if (r.present("rope_theta")) theta = r.positive_number("rope_theta");
  else if (f.present("rope_theta")) theta = f.positive_number("rope_theta");
  c.rope_theta = static_cast<float>(theta);
  double prf = 1.0;
  const bool prf_in_rope = r.present("partial_rotary_factor");
  if (prf_in_rope) prf = r.number("partial_rotary_factor");
  else if (f.present("partial_rotary_factor")) prf = f.number("partial_rotary_factor");
  if (!(prf > 0 && prf <= 1)) {
    std::string msg = "must be in (0, 1], got " + std::to_string(prf);
    if (prf_in_rope) r.fail("partial_rotary_factor", msg);
    f.fail("partial_rotary_factor", msg);
  }
  c.partial_rotary_factor = static_cast<float>(prf);
  c.rotary_dim = static_cast<int>(c.head_dim * prf);  // python int(head_dim * factor)
  if (c.rotary_dim <= 0 || c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim)
    f.fail("partial_rotary_factor", "gives rotary_dim " + std::to_string(c.rotary_dim) + " for head_dim " +
                                        std::to_string(c.head_dim) + "; it must be even and in [2, head_dim]");

  std::string type = "default";
  if (r.present("rope_type")) type = r.string("rope_type");
  else if (r.present("type")) type = r.string("type");
  if (type == "su") type = "longrope";
  if (type == "longrope") {
    c.rope_scaling.type = "longrope";
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
  } else if (type != "default") {
    r.fail(r.present("rope_type") ? "rope_type" : "type",
           "unsupported rope type '" + type + "' (supported: longrope, su, or none)");
  }
  return c;
}

ModelConfig load_config(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "config.json");
  return parse_config_json(read_text_file(path, "model config"), path);
}

std::vector<float> ModelConfig::inv_freq(int seq_len) const {
  const int half = rotary_dim / 2;
  const std::vector<float>* ext = nullptr;
  if (rope_scaling.type == "longrope")
    ext = seq_len > original_max_position_embeddings ? &rope_scaling.long_factor : &rope_scaling.short_factor;
  PHI3_CHECK(!ext || static_cast<int>(ext->size()) == half,
             "inv_freq: longrope factor list has " + std::to_string(ext->size()) + " entries, expected " +
                 std::to_string(half));
  std::vector<float> out(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    // torch: arange(0, dim, 2).float() / dim  (float32 division)
    const float x = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    // torch: base ** x in float32; rounded once from double (torch's CPU powf agrees with
    // this to the bit for nearly every entry, and is otherwise 1 ulp away)
    const float p = static_cast<float>(std::pow(static_cast<double>(rope_theta), static_cast<double>(x)));
    const float denom = ext ? (*ext)[static_cast<size_t>(i)] * p : p;
    out[static_cast<size_t>(i)] = 1.0f / denom;
  }
  return out;
}

float ModelConfig::rope_attention_scale() const {
  if (rope_scaling.type != "longrope") return 1.0f;
  if (rope_scaling.attention_factor >= 0) return rope_scaling.attention_factor;
  const double orig = original_max_position_embeddings;
  const double factor = rope_scaling.factor >= 0 ? rope_scaling.factor : max_position_embeddings / orig;
  if (factor <= 1.0) return 1.0f;
  return static_cast<float>(std::sqrt(1.0 + std::log(factor) / std::log(orig)));
}

}  // namespace phi3
