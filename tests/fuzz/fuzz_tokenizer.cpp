// libFuzzer target: the tokenizer front end. The first byte picks the mode:
//   0: encode the rest as text with the embedded tokenizer + added tokens (with and without
//      BOS), decode the ids, look up every piece, and try it as an answer word;
//   1: the rest is a tokenizer.model (Tokenizer::load_model_file), then encode a fixed text;
//   2: the rest is an added_tokens.json next to the embedded tokenizer.model (load_dir),
//      then encode a text that holds the added tokens;
//   3: encode the rest as text with the byte-level BPE test tokenizers of tests/data/bpe
//      (Phi-4, Phi-4-mini and Qwen2 layouts: PCRE2 splits, added tokens with lstrip / rstrip,
//      Qwen2's NFC normalizer);
//   4: the rest is a tokenizer.json (load_dir of a directory holding only it), then encode
//      a fixed text with special tokens and mixed scripts.
// Only phi3::Error may come out; anything else is a crash.
#include <cstdint>
#include <filesystem>
#include <string>

#include "fuzz_util.h"
#include "runtime/error.h"
#include "runtime/tokenizer.h"

using namespace phi3;

namespace {
const std::string kModelDir = std::string(PHI3_SOURCE_DIR) + "/data/models/tiny-temporal-phi3";
const std::string kBpeDir = std::string(PHI3_SOURCE_DIR) + "/tests/data/bpe/";

void use(const Tokenizer& tok, const std::string& text) {
  for (bool bos : {true, false}) {
    std::vector<int> ids = tok.encode(text, bos);
    for (int id : ids) {
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();  // encode must give valid ids
      (void)tok.piece(id);
    }
    (void)tok.decode(ids);
  }
  try {
    (void)tok.answer_token(text);
  } catch (const Error&) {
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer embedded = Tokenizer::load_dir(kModelDir);
  static const Tokenizer phi4 = Tokenizer::load_dir(kBpeDir + "phi-4");
  static const Tokenizer phi4mini = Tokenizer::load_dir(kBpeDir + "phi-4-mini");
  static const Tokenizer qwen2 = Tokenizer::load_dir(kBpeDir + "qwen2");  // NFC before the split
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 5;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (mode == 0) {
      use(embedded, rest);
    } else if (mode == 1) {
      const std::string path = fuzz::scratch_dir() + "/tokenizer.model";
      fuzz::write_bytes(path, data + 1, size - 1);
      Tokenizer t = Tokenizer::load_model_file(path);
      use(t, "The goal is to make one cup of cappuccino. The answer is: short");
    } else if (mode == 3) {
      try {
        use(phi4, rest);
      } catch (const Error&) {
      }
      try {
        use(qwen2, rest);
      } catch (const Error&) {
      }
      use(phi4mini, rest);
    } else if (mode == 4) {
      static const std::string dir = [] {
        std::string d = fuzz::scratch_dir() + "/bpe";
        std::filesystem::create_directories(d);
        return d;
      }();
      fuzz::write_bytes(dir + "/tokenizer.json", data + 1, size - 1);
      Tokenizer t = Tokenizer::load_dir(dir);
      use(t, "The goal is: short<|endoftext|> caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac  12345 don't\n\n");
    } else {
      static const std::string dir = [] {
        std::string d = fuzz::scratch_dir() + "/added";
        std::filesystem::create_directories(d);
        std::filesystem::copy_file(kModelDir + "/tokenizer.model", d + "/tokenizer.model",
                                   std::filesystem::copy_options::overwrite_existing);
        return d;
      }();
      fuzz::write_bytes(dir + "/added_tokens.json", data + 1, size - 1);
      Tokenizer t = Tokenizer::load_dir(dir);
      std::string text = "<|end|>short ";
      for (const auto& [content, id] : t.added_tokens()) text += content + " x" + content;
      use(t, text);
    }
  } catch (const Error&) {
  }
  return 0;
}
