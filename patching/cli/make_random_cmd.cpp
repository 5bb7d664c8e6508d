// `phi3patch make-random --like SHAPE --out DIR` (SHAPE: model_shapes.cpp, e.g. phi-3-mini, qwen2.5-3b):
// a Hugging Face layout checkpoint (config.json, bf16 safetensors shards + index, the
// embedded tokenizer) with the real shapes and seeded random weights, so the same weights
// load here and in `transformers` for benchmarks without a download.
#include <cmath>
#include <cstdint>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "model/arch/config_json.h"
#include "model/weights.h"
#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/safetensors.h"

namespace phi3 {

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
  if (dtype != "bf16" && dtype != "f32")
    throw Error("--dtype: expected bf16 or f32, got '" + dtype + "'" + did_you_mean(dtype, {"bf16", "f32"}));
  // The default is the smallest shape (tiny: 4 layers, d=64, under 1 MiB); a real model's shape
  // writes gigabytes (phi-3-mini: 7.6 GB).
  nlohmann::json cj = config_like(a.get("like", "tiny"), a.get_int("layers", 0));
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
