// libFuzzer target: config.json parsing (parse_config_json) and what is derived from an
// accepted config (rotary frequencies, LongRoPE attention scale). Only phi3::Error may come
// out; anything else is a crash.
#include <cmath>
#include <cstdint>
#include <string>

#include "model/arch/config_json.h"
#include "runtime/error.h"

using namespace phi3;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    ModelConfig c = parse_config_json(text, "fuzz/config.json");
    volatile float sink = c.rope_attention_scale();
    // inv_freq allocates rotary_dim / 2 floats: stay within sizes a real model could have.
    if (c.rotary_dim <= (1 << 16)) {
      for (int seq : {1, c.original_max_position_embeddings, c.original_max_position_embeddings + 1})
        for (float f : c.inv_freq(seq)) sink = sink + f;
    }
  } catch (const Error&) {
  }
  return 0;
}
