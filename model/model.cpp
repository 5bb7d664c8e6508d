#include "model/model.h"

#include "model/arch/config_json.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

std::unique_ptr<Model> load_model(Backend& be, const std::string& dir) {
  if (!dir_exists(dir)) {
    if (file_exists(dir))
      throw Error("model directory '" + dir + "' is a file; --model takes the checkpoint directory (config.json, "
                  "*.safetensors, tokenizer.model)");
    throw Error("model directory '" + dir + "' does not exist");
  }
  auto m = std::make_unique<Model>();
  m->dir = dir;
  m->cfg = load_config(dir);
  m->tok = Tokenizer::load_dir(dir);
  // config.json without pad_token_id (Qwen2, Llama 3, Mistral): the tokenizer's pad token, as
  // TransformerLens pads, else the config's eos token; results.json records which.
  if (!m->cfg.pad_token_from_config) {
    if (m->tok.pad_id() >= 0) {
      m->cfg.pad_token_id = m->tok.pad_id();
      m->cfg.pad_token_source = "tokenizer_config.json pad_token";
    } else {
      m->cfg.pad_token_source = "eos_token_id (no pad_token_id in config.json, no pad_token in tokenizer_config.json)";
    }
  }
  if (m->tok.vocab_size() > m->cfg.vocab_size)
    throw Error(dir + ": the tokenizer has " + std::to_string(m->tok.vocab_size()) +
                " tokens but config.json vocab_size is " + std::to_string(m->cfg.vocab_size));
  if (m->cfg.pad_token_id < 0 || m->cfg.pad_token_id >= m->cfg.vocab_size)
    throw Error(dir + "/config.json: pad_token_id " + std::to_string(m->cfg.pad_token_id) +
                " is outside the vocabulary");
  m->w = ModelWeights::load(be, dir, m->cfg);
  return m;
}

}  // namespace phi3
