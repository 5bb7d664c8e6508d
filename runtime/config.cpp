// What is derived from a ModelConfig: the rotary frequencies and attention scale. Reading
// config.json into one is the families' business (model/arch/config_json.cpp).
#include "runtime/config.h"

#include <cmath>

#include "runtime/error.h"

namespace phi3 {

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
  const RopeScaling& rs = rope_scaling;
  if (rs.type == "linear") {
    for (float& f : out) f /= rs.factor;
  } else if (rs.type == "llama3") {
    // transformers' _compute_llama3_parameters, in float32 where torch computes on tensors.
    const double old_len = rs.original_max_position_embeddings;
    const double low_wavelen = old_len / rs.low_freq_factor, high_wavelen = old_len / rs.high_freq_factor;
    const float factor = rs.factor;
    const float ramp_den = static_cast<float>(rs.high_freq_factor - rs.low_freq_factor);
    for (float& f : out) {
      const float wavelen = static_cast<float>(2.0 * M_PI) / f;
      float g = wavelen > static_cast<float>(low_wavelen) ? f / factor : f;
      const bool medium = !(wavelen < static_cast<float>(high_wavelen)) && !(wavelen > static_cast<float>(low_wavelen));
      if (medium) {
        const float smooth = (static_cast<float>(old_len) / wavelen - static_cast<float>(rs.low_freq_factor)) / ramp_den;
        g = (1.0f - smooth) * g / factor + smooth * g;
      }
      f = g;
    }
  }
  return out;
}

std::vector<float> ModelConfig::local_inv_freq() const {
  ModelConfig local;  // default rope: no scaling, no LongRoPE factors
  local.rope_theta = rope_local_theta;
  local.rotary_dim = rotary_dim;
  return local.inv_freq(1);
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
