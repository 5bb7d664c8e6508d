#include "model/model.h"

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
