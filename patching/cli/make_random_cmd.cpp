// `phi3patch make-random --like phi-3-mini|phi-3-medium|phi-4-mini|tiny --out DIR`:
// a Hugging Face layout checkpoint (config.json, bf16 safetensors shards + index, the
// embedded tokenizer) with the real shapes and seeded random weights, so the same weights
// load here and in `transformers` for benchmarks without a download.
#include <cmath>
#include <cstdint>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "model/weights.h"
#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/safetensors.h"

namespace phi3 {

namespace {
// The published config.json of other families' checkpoints (their shapes; the tokenizer ids
// are the real ones, the embedded test tokenizer's ids all lie below every vocab_size).
nlohmann::json other_family_shape(const std::string& like) {
  using nlohmann::json;
  const json common = {{"hidden_act", "silu"}, {"attention_dropout", 0.0}, {"initializer_range", 0.02},
                       {"torch_dtype", "bfloat16"}, {"use_cache", true}};
  json j;
  if (like == "qwen2.5-3b" || like == "qwen2.5-7b") {
    const bool small = like == "qwen2.5-3b";
    j = {{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"bos_token_id", 151643},
         {"eos_token_id", 151643}, {"hidden_size", small ? 2048 : 3584}, {"intermediate_size", small ? 11008 : 18944},
         {"num_hidden_layers", small ? 36 : 28}, {"num_attention_heads", small ? 16 : 28},
         {"num_key_value_heads", small ? 2 : 4}, {"max_position_embeddings", small ? 32768 : 131072},
         {"max_window_layers", small ? 36 : 28}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
         {"sliding_window", small ? 32768 : 131072}, {"use_sliding_window", false},
         {"tie_word_embeddings", small}, {"vocab_size", small ? 151936 : 152064}};
  } else if (like == "llama-3.2-1b" || like == "llama-3.1-8b") {
    const bool small = like == "llama-3.2-1b";
    j = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"attention_bias", false},
         {"mlp_bias", false}, {"bos_token_id", 128000}, {"eos_token_id", 128001},
         {"hidden_size", small ? 2048 : 4096}, {"intermediate_size", small ? 8192 : 14336},
         {"num_hidden_layers", small ? 16 : 32}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
         {"head_dim", small ? 64 : 128}, {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-5},
         {"rope_theta", 500000.0}, {"pretraining_tp", 1}, {"tie_word_embeddings", small}, {"vocab_size", 128256},
         {"rope_scaling", {{"factor", small ? 32.0 : 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}}}};
  } else if (like == "qwen3-8b") {
    j = {{"architectures", {"Qwen3ForCausalLM"}}, {"model_type", "qwen3"}, {"attention_bias", false},
         {"bos_token_id", 151643}, {"eos_token_id", 151645}, {"head_dim", 128}, {"hidden_size", 4096},
         {"intermediate_size", 12288}, {"num_hidden_layers", 36}, {"num_attention_heads", 32},
         {"num_key_value_heads", 8}, {"max_position_embeddings", 40960}, {"max_window_layers", 36},
         {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0}, {"sliding_window", nullptr},
         {"use_sliding_window", false}, {"tie_word_embeddings", false}, {"vocab_size", 151936}};
  } else if (like == "mistral-7b") {  // Mistral-7B-v0.1: the sliding-window one
    j = {{"architectures", {"MistralForCausalLM"}}, {"model_type", "mistral"}, {"bos_token_id", 1},
         {"eos_token_id", 2}, {"hidden_size", 4096}, {"intermediate_size", 14336}, {"num_hidden_layers", 32},
         {"num_attention_heads", 32}, {"num_key_value_heads", 8}, {"max_position_embeddings", 32768},
         {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"sliding_window", 4096}, {"tie_word_embeddings", false},
         {"vocab_size", 32000}};
  } else {
    return json();
  }
  j.update(common);
  return j;
}
}  // namespace

std::string like_shapes() {
  return "phi-3-mini, phi-3-medium, phi-4-mini, tiny, qwen2.5-3b, qwen2.5-7b, llama-3.2-1b, llama-3.1-8b, mistral-7b, "
         "qwen3-8b";
}

nlohmann::json config_like(const std::string& like, int layers_override) {
  nlohmann::json j = {{"architectures", {"Phi3ForCausalLM"}}, {"model_type", "phi3"}, {"hidden_act", "silu"},
                      {"bos_token_id", 1},   {"eos_token_id", 32000},  {"pad_token_id", 32000},
                      {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"rope_scaling", nullptr},
                      {"attention_bias", false}, {"torch_dtype", "bfloat16"}, {"tie_word_embeddings", false},
                      {"sliding_window", 2047}, {"max_position_embeddings", 4096},
                      {"original_max_position_embeddings", 4096}, {"vocab_size", 32064}};
  if (like == "phi-3-mini") {
    j.update({{"hidden_size", 3072}, {"intermediate_size", 8192}, {"num_hidden_layers", 32},
              {"num_attention_heads", 32}, {"num_key_value_heads", 32}});
  } else if (like == "phi-3-medium") {
    j.update({{"hidden_size", 5120}, {"intermediate_size", 17920}, {"num_hidden_layers", 40},
              {"num_attention_heads", 40}, {"num_key_value_heads", 10}});
  } else if (like == "phi-4-mini") {
    j.update({{"hidden_size", 3072}, {"intermediate_size", 8192}, {"num_hidden_layers", 32},
              {"num_attention_heads", 24}, {"num_key_value_heads", 8}, {"vocab_size", 200064},
              {"partial_rotary_factor", 0.75}, {"tie_word_embeddings", true}, {"sliding_window", nullptr},
              {"max_position_embeddings", 131072}, {"original_max_position_embeddings", 4096},
              {"rope_theta", 10000.0}, {"bos_token_id", 199999}, {"eos_token_id", 199999},
              {"pad_token_id", 199999}});
    std::vector<double> sf(48), lf(48);
    for (int i = 0; i < 48; ++i) {
      sf[i] = 1.0 + 0.05 * i;
      lf[i] = 1.0 + 0.5 * i;
    }
    j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", sf}, {"long_factor", lf}};
  } else if (like == "tiny") {
    j.update({{"hidden_size", 64}, {"intermediate_size", 128}, {"num_hidden_layers", 4}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 1032}, {"pad_token_id", 1024}, {"eos_token_id", 1024},
              {"max_position_embeddings", 512}, {"original_max_position_embeddings", 512}});
  } else if (const auto other = other_family_shape(like); !other.is_null()) {
    j = other;
  } else {
    throw Error("--like: expected one of " + like_shapes() + ", got '" + like + "'");
  }
  if (layers_override > 0) j["num_hidden_layers"] = layers_override;
  return j;
}

// Fast seeded normal-ish values (sum of uniforms), filled in parallel by blocks so the
// result depends only on the seed and the tensor index.
namespace {

std::vector<float> random_values(int64_t n, uint64_t seed, float std, bool is_norm) {
  std::vector<float> v(n);
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  const int64_t block = 1 << 20;
  const int64_t nblocks = (n + block - 1) / block;
  auto work = [&](int tid) {
    for (int64_t bl = tid; bl < nblocks; bl += threads) {
      uint64_t s = seed * 0x9E3779B97F4A7C15ull + bl * 0xBF58476D1CE4E5B9ull + 1;
      auto next = [&]() {  // xorshift64*
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return (s * 0x2545F4914F6CDD1Dull) >> 40;  // 24 bits
      };
      for (int64_t i = bl * block; i < std::min(n, (bl + 1) * block); ++i) {
        float u = (next() + next() + next() + next()) / float(1 << 24) - 2.0f;  // mean 0, var 1/3
        v[i] = is_norm ? 1.0f + 0.05f * u : u * std * 1.7320508f;
      }
    }
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) ts.emplace_back(work, t);
  for (auto& t : ts) t.join();
  return v;
}

}  // namespace

int cmd_make_random(const Args& a) {
  const std::string out = a.get("out", "");
  if (out.empty()) throw Error("make-random: --out DIR is required");
  if (file_exists(path_join(out, "config.json")) && !a.has("force"))
    throw Error("make-random: '" + out + "' already holds a checkpoint; pass --force to overwrite");
  const std::string dtype = a.get("dtype", "bf16");
  if (dtype != "bf16" && dtype != "f32") throw Error("--dtype: expected bf16 or f32, got '" + dtype + "'");
  nlohmann::json cj = config_like(a.get("like", "phi-3-mini"), a.get_int("layers", 0));
  cj["torch_dtype"] = dtype == "bf16" ? "bfloat16" : "float32";
  ModelConfig cfg = parse_config_json(cj.dump(), "generated config");
  make_dirs(out);
  const uint64_t seed = static_cast<uint64_t>(a.get_int("seed", 0));
  const size_t shard_bytes = size_t(a.get_int("shard-mb", 2000)) << 20;
  const float std = 0.02f;

  auto tensors = expected_tensors(cfg);
  nlohmann::json weight_map = nlohmann::json::object();
  std::vector<std::vector<size_t>> shards(1);
  size_t cur = 0, total = 0;
  const size_t esize = dtype == "bf16" ? 2 : 4;
  for (size_t i = 0; i < tensors.size(); ++i) {
    int64_t n = 1;
    for (auto d : tensors[i].shape) n *= d;
    size_t bytes = size_t(n) * esize;
    if (cur > 0 && cur + bytes > shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += bytes;
    total += bytes;
  }
  const size_t S = shards.size();
  for (size_t s = 0; s < S; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, S);
    std::string fname = S == 1 ? "model.safetensors" : name;
    std::vector<TensorToWrite> tw;
    for (size_t i : shards[s]) {
      const auto& t = tensors[i];
      int64_t n = 1;
      for (auto d : t.shape) n *= d;
      const bool is_bias = t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0;
      auto vals = random_values(n, seed * 1000003ull + i, std, t.shape.size() == 1 && !is_bias);
      tw.push_back(dtype == "bf16" ? tensor_bf16(t.name, t.shape, vals) : tensor_f32(t.name, t.shape, vals));
      weight_map[t.name] = fname;
    }
    write_safetensors(path_join(out, fname), tw, {{"format", "pt"}});
    std::cerr << "[make-random] wrote " << fname << " (" << shards[s].size() << " tensors)" << std::endl;
  }
  if (S > 1) {
    nlohmann::json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(path_join(out, "model.safetensors.index.json"), idx.dump(2) + "\n");
  }
  write_file_atomic(path_join(out, "config.json"), cj.dump(2) + "\n");
  // The embedded tokenizer (its ids are all < vocab_size of every shape above).
  const std::string tdir = default_path("data/models/tiny-temporal-phi3");
  for (const char* f : {"tokenizer.model", "added_tokens.json"})
    write_file_atomic(path_join(out, f), read_text_file(path_join(tdir, f), "embedded tokenizer"));
  std::cout << "wrote " << out << ": " << cfg.num_hidden_layers << " layers, d=" << cfg.hidden_size << ", "
            << total / (1 << 20) << " MiB of " << dtype << " weights in " << S << " file(s)\n";
  return 0;
}

}  // namespace phi3
