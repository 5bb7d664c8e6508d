#include "model/weights.h"

#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "kernels/cpu/parallel.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace phi3 {

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// Host bytes of `values` in the device's weight dtype.
std::vector<uint8_t> encode(const std::vector<float>& values, DType dt) {
  std::vector<uint8_t> out(values.size() * dtype_size(dt));
  if (dt == DType::F32) {
    std::memcpy(out.data(), values.data(), out.size());
  } else if (dt == DType::BF16) {
    auto* p = reinterpret_cast<uint16_t*>(out.data());
    for (size_t i = 0; i < values.size(); ++i) p[i] = float_to_bf16_bits(values[i]);
  } else {
    throw Error(std::string("weights: unsupported device weight dtype ") + dtype_name(dt));
  }
  return out;
}
}  // namespace

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t HD = c.head_dim, H = c.num_attention_heads, KVH = c.num_key_value_heads;
  std::vector<ExpectedTensor> t;
  t.push_back({"model.embed_tokens.weight", {V, D}});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {D}});
    t.push_back({p + "self_attn.qkv_proj.weight", {(H + 2 * KVH) * HD, D}});
    t.push_back({p + "self_attn.o_proj.weight", {D, H * HD}});
    t.push_back({p + "post_attention_layernorm.weight", {D}});
    t.push_back({p + "mlp.gate_up_proj.weight", {2 * F, D}});
    t.push_back({p + "mlp.down_proj.weight", {D, F}});
  }
  t.push_back({"model.norm.weight", {D}});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {V, D}});
  return t;
}

const void* ModelWeights::keep(Backend& be, const std::vector<uint8_t>& host) {
  DeviceArray<uint8_t> a(be, host.size());
  a.upload(host);
  const void* p = a.get();
  bytes += host.size();
  storage_.push_back(std::move(a));
  return p;
}

const void* ModelWeights::reserve(Backend& be, size_t n) {
  DeviceArray<uint8_t> a(be, n);
  const void* p = a.get();
  bytes += n;
  storage_.push_back(std::move(a));
  return p;
}

// A checkpoint tensor in the device dtype `dt`, converted and checked for NaN/Inf on every
// core (parallel_for over blocks of elements); the first non-finite element is the one an
// error names.
std::vector<uint8_t> decode_tensor(const TensorInfo& t, DType dt) {
  const int64_t n = t.numel();
  std::vector<uint8_t> out(size_t(n) * dtype_size(dt));
  std::atomic<int64_t> first_bad{INT64_MAX};
  cpu::parallel_for(n, 16.0 * double(n), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float v = t.value(i);
      if (!std::isfinite(v)) {
        int64_t cur = first_bad.load();
        while (i < cur && !first_bad.compare_exchange_weak(cur, i)) {
        }
        return;
      }
      if (dt == DType::F32) {
        std::memcpy(out.data() + 4 * i, &v, 4);
      } else if (t.dtype == DType::BF16) {
        std::memcpy(out.data() + 2 * i, t.data + 2 * i, 2);  // bf16 to bf16: the same bits
      } else {
        const uint16_t h = float_to_bf16_bits(v);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
    }
  });
  const int64_t bad = first_bad.load();
  if (bad != INT64_MAX)
    throw Error(t.file + ": tensor '" + t.name + "' holds a non-finite value (" + std::to_string(t.value(bad)) +
                ") at flat index " + std::to_string(bad));
  return out;
}

struct WeightLoader {
  // Builds ModelWeights from a function giving each expected tensor's bytes in a dtype
  // (empty: allocate only, for placeholder weights).
  template <typename GetFn>
  static ModelWeights build(Backend& be, const ModelConfig& c, GetFn get) {
    ModelWeights w;
    const DType dt = be.weight_dtype();
    auto place = [&](const std::string& name, DType t, int64_t n) {
      std::vector<uint8_t> v = get(name, t);
      return v.empty() ? w.reserve(be, size_t(n) * dtype_size(t)) : w.keep(be, v);
    };
    auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
      Weight m;
      m.data = place(name, dt, rows * cols);
      m.dtype = dt;
      m.rows = rows;
      m.cols = cols;
      return m;
    };
    auto vec = [&](const std::string& name) {
      return static_cast<const float*>(place(name, DType::F32, c.hidden_size));
    };
    const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
    const int64_t HD = c.head_dim, H = c.num_attention_heads, KVH = c.num_key_value_heads;
    w.embed = matrix("model.embed_tokens.weight", V, D);
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      LayerWeights lw;
      lw.ln1 = vec(p + "input_layernorm.weight");
      lw.qkv = matrix(p + "self_attn.qkv_proj.weight", (H + 2 * KVH) * HD, D);
      lw.o = matrix(p + "self_attn.o_proj.weight", D, H * HD);
      lw.ln2 = vec(p + "post_attention_layernorm.weight");
      lw.gate_up = matrix(p + "mlp.gate_up_proj.weight", 2 * F, D);
      lw.down = matrix(p + "mlp.down_proj.weight", D, F);
      w.layers.push_back(lw);
    }
    w.final_norm = vec("model.norm.weight");
    w.lm_head = c.tie_word_embeddings ? w.embed : matrix("lm_head.weight", V, D);
    return w;
  }
};

ModelWeights ModelWeights::load(Backend& be, const std::string& model_dir, const ModelConfig& cfg) {
  SafeTensors st = SafeTensors::open_dir(model_dir);
  auto expected = expected_tensors(cfg);
  std::set<std::string> wanted;
  for (const auto& e : expected) {
    wanted.insert(e.name);
    if (!st.has(e.name))
      throw Error(model_dir + ": tensor '" + e.name + "' is missing from the checkpoint");
    const TensorInfo& info = st.get(e.name);
    if (info.dtype != DType::F32 && info.dtype != DType::BF16 && info.dtype != DType::F16)
      throw Error(info.file + ": tensor '" + e.name + "' has dtype " + dtype_name(info.dtype) +
                  "; weights must be F32, BF16 or F16");
    if (info.shape != e.shape)
      throw Error(info.file + ": tensor '" + e.name + "' has shape " + shape_str(info.shape) +
                  " but config.json implies " + shape_str(e.shape));
  }
  for (const auto& name : st.names()) {
    if (wanted.count(name)) continue;
    // Tied checkpoints may still carry lm_head; old exports carry rotary buffers.
    if (name == "lm_head.weight" && cfg.tie_word_embeddings) continue;
    if (name.size() > 20 && name.compare(name.size() - 20, 20, "rotary_emb.inv_freq") == 0) continue;
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    throw Error(st.get(name).file + ": unexpected tensor '" + name +
                "' (not part of a Phi3ForCausalLM with this config.json)");
  }
  // Say up front when the weights cannot fit, with the sizes, instead of failing part-way.
  size_t need = 0;
  for (const auto& e : expected) {
    size_t n = 1;
    for (int64_t d : e.shape) n *= static_cast<size_t>(d);
    need += n * (e.shape.size() == 1 ? sizeof(float) : dtype_size(be.weight_dtype()));
  }
  const size_t avail = be.free_memory();
  if (avail > 0 && need > avail) {
    auto mib = [](size_t b) { return std::to_string((b + (1u << 20) - 1) >> 20); };
    std::string hint = be.kind() == DeviceKind::CUDA && be.weight_dtype() == DType::F32
                           ? "drop --fp32 (bf16 weights need half)"
                           : "use a smaller model or a device with more memory";
    throw OutOfMemory(model_dir + ": the weights need " + mib(need) + " MiB on " + be.name() + " but only " +
                      mib(avail) + " MiB are free; " + hint);
  }
  return WeightLoader::build(be, cfg, [&](const std::string& name, DType dt) { return decode_tensor(st.get(name), dt); });
}

ModelWeights ModelWeights::random(Backend& be, const ModelConfig& cfg, uint32_t seed, float std) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, std);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& e : expected_tensors(cfg)) shapes[e.name] = e.shape;
  return WeightLoader::build(be, cfg, [&](const std::string& name, DType dt) {
    const auto& s = shapes.at(name);
    int64_t n = 1;
    for (auto d : s) n *= d;
    std::vector<float> v(n);
    if (s.size() == 1) {
      for (auto& x : v) x = 1.0f + 0.1f * dist(rng) / std;  // norm weights near 1
    } else {
      for (auto& x : v) x = dist(rng);
    }
    return encode(v, dt);
  });
}

ModelWeights ModelWeights::placeholder(Backend& be, const ModelConfig& cfg) {
  return WeightLoader::build(be, cfg, [](const std::string&, DType) { return std::vector<uint8_t>{}; });
}

}  // namespace phi3
