#include "model/model.h"

#include <nlohmann/json.hpp>

#include "model/arch/config_json.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

std::unique_ptr<Model> load_model_meta(const std::string& dir) {
  if (!dir_exists(dir)) {
    if (file_exists(dir))
      throw Error("model directory '" + dir + "' is a file; --model takes the checkpoint directory (config.json, "
                  "*.safetensors, tokenizer.model)");
    throw Error("model directory '" + dir + "' does not exist");
  }
  auto m = std::make_unique<Model>();
  m->dir = dir;
  m->cfg = load_config(dir);
  if (Tokenizer::present_in(dir) || dir_exists(path_join(dir, "tokenizer.model"))) {
    m->tok = Tokenizer::load_dir(dir);
  } else {
    // No tokenizer files: pre-tokenized pairs only (batch.h check_tokenizable refuses text).
    // BOS is config.json's bos_token_id, prepended unless tokenizer_config.json (where present)
    // says add_bos_token false, as the SentencePiece default and TransformerLens do.
    bool bos = true;
    const std::string tc = path_join(dir, "tokenizer_config.json");
    if (file_exists(tc)) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(read_text_file(tc, "tokenizer_config.json"));
      } catch (const nlohmann::json::exception& e) {
        throw Error(tc + ": not valid JSON: " + e.what());
      }
      if (j.is_object() && j.contains("add_bos_token") && j["add_bos_token"].is_boolean())
        bos = j["add_bos_token"].get<bool>();
    }
    m->tok = Tokenizer::none(m->cfg.bos_token_id, bos);
  }
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
  return m;
}

void load_weights(Backend& be, Model& m) { m.w = ModelWeights::load(be, m.dir, m.cfg); }

std::unique_ptr<Model> load_model(Backend& be, const std::string& dir) {
  auto m = load_model_meta(dir);
  load_weights(be, *m);
  return m;
}

}  // namespace phi3
