// A loaded Phi-3 model: config, tokenizer, weights on a backend.
#pragma once
#include <memory>
#include <string>

#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/config.h"
#include "runtime/tokenizer.h"

namespace phi3 {

struct Model {
  std::string dir;
  ModelConfig cfg;
  Tokenizer tok;
  ModelWeights w;
  int qkv_width() const { return (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim; }
  int q_width() const { return cfg.num_attention_heads * cfg.head_dim; }
  int kv_width() const { return cfg.num_key_value_heads * cfg.head_dim; }
  // The MLP's first projection's width: gate|up (2F), or F without a gate (GPT-2's c_fc).
  int gate_up_width() const { return cfg.mlp_gated ? 2 * cfg.intermediate_size : cfg.intermediate_size; }
};

// The gated MLP's activation the config asks for (SwiGLU, or GeGLU for Gemma 2).
inline MlpAct mlp_act(const ModelConfig& c) {
  if (!c.mlp_gated) return MlpAct::GeluTanhNoGate;
  return c.mlp_gelu_tanh ? MlpAct::GeluTanh : MlpAct::Silu;
}

// Loads config.json, the tokenizer and the weights of `dir` onto `be`. Checks that the
// tokenizer and config agree (ids inside vocab_size). The same as load_model_meta, then
// load_weights.
std::unique_ptr<Model> load_model(Backend& be, const std::string& dir);
// config.json and the tokenizer alone (no weight is read: m->w stays empty), with the same
// checks: what the CLI validates a job against before the weights load.
std::unique_ptr<Model> load_model_meta(const std::string& dir);
// The weights of a load_model_meta model onto `be`.
void load_weights(Backend& be, Model& m);

}  // namespace phi3
