// libFuzzer target: the pairs file (parse_pairs), then, for accepted files, the checks and
// batching that need the tokenizer (check_pairs, make_pair_batch with the embedded model's
// tokenizer and context). Only phi3::Error may come out; anything else is a crash.
#include <cstdint>
#include <string>

#include "model/batch.h"
#include "runtime/error.h"
#include "runtime/tokenizer.h"

using namespace phi3;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer tok = Tokenizer::load_dir(std::string(PHI3_SOURCE_DIR) + "/data/models/tiny-temporal-phi3");
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    std::vector<PromptPair> pairs = parse_pairs(text, "fuzz/pairs.json");
    check_pairs(pairs, tok, 128, "fuzz/pairs.json");
    PairBatch pb = make_pair_batch(pairs, tok, 1024, 128);
    if (pb.clean.B != 2 * static_cast<int>(pairs.size())) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
