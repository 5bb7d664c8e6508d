#include "model/weights.h"

#include <atomic>
#include <climits>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "kernels/cpu/parallel.h"
#include "model/arch/architecture.h"
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
// The first family laid out otherwise than c's (its q|k|v tensors differ) for which `has`
// holds, or null: what a checkpoint of the wrong layout is.
const Architecture* other_layout(const ModelConfig& c, const std::function<bool(const Architecture&)>& has) {
  const Architecture& mine = architecture_named(c.family);
  for (const auto& a : architectures())
    if (a.qkv_parts != mine.qkv_parts && has(a)) return &a;
  return nullptr;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A [rows, cols] matrix of elements `es` bytes wide, transposed to [cols, rows].
std::vector<uint8_t> transpose_bytes(const std::vector<uint8_t>& v, int64_t rows, int64_t cols, size_t es) {
  std::vector<uint8_t> out(v.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      std::memcpy(out.data() + (size_t(c) * rows + r) * es, v.data() + (size_t(r) * cols + c) * es, es);
  return out;
}

// Why a tensor may be unexpected: another family's layout, or a bias the config turns off.
std::string unexpected_hint(const std::string& name, const ModelConfig& c) {
  if (ends_with(name, ".bias"))
    return "; its config.json turns this bias off (attention_bias / mlp_bias false, or a family without it)";
  const Architecture* a = other_layout(c, [&](const Architecture& o) {
    for (const auto* parts : {&o.qkv_parts, &o.gate_up_parts})
      for (const auto& part : *parts)
        if (ends_with(name, part + ".weight")) return true;
    return false;
  });
  return a ? "; it is laid out as a " + a->hf_class + " checkpoint" : "";
}

// When a checkpoint is laid out as another family (its layer-0 projections), says which.
std::string other_layout_hint(const SafeTensors& st, const ModelConfig& c) {
  const Architecture* a = other_layout(c, [&](const Architecture& o) {
    return st.has("model.layers.0." + o.qkv_parts.front() + ".weight");
  });
  return a ? "; the checkpoint has 'model.layers.0." + a->qkv_parts.front() + ".weight', the layout of " + a->hf_class
           : "";
}

}  // namespace

LayerPlan layer_plan(const ModelConfig& c, int l, bool fused_experts) {
  const Architecture& arch = architecture_named(c.family);
  if (arch.layer_plan) return arch.layer_plan(c, l);
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  const int64_t HD = c.head_dim, H = c.num_attention_heads, KVH = c.num_key_value_heads;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  LayerPlan lp;
  lp.ln1 = {p + "input_layernorm.weight", {D}};
  lp.ln2 = {p + "post_attention_layernorm.weight", {D}};
  if (c.post_norms) {  // Gemma 2: post_attention_layernorm normalizes the attention's output
    lp.ln2 = {p + "pre_feedforward_layernorm.weight", {D}};
    lp.post_attn = {{p + "post_attention_layernorm.weight", {D}}};
    lp.post_mlp = {{p + "post_feedforward_layernorm.weight", {D}}};
  }
  // q|k|v rows: one fused tensor, or q, k and v (each with its bias when the config says).
  const std::vector<int64_t> qkv_rows = arch.qkv_parts.size() == 1 ? std::vector<int64_t>{(H + 2 * KVH) * HD}
                                                                   : std::vector<int64_t>{H * HD, KVH * HD, KVH * HD};
  for (size_t i = 0; i < arch.qkv_parts.size(); ++i) {
    lp.qkv.push_back({p + arch.qkv_parts[i] + ".weight", {qkv_rows[i], D}});
    if (c.qkv_bias) lp.qkv_bias.push_back({p + arch.qkv_parts[i] + ".bias", {qkv_rows[i]}});
  }
  if (c.qk_norm) {  // per head, or (qk_norm_full, OLMoE) over the whole q and k widths
    lp.q_norm = {{p + "self_attn.q_norm.weight", {c.qk_norm_full ? H * HD : HD}}};
    lp.k_norm = {{p + "self_attn.k_norm.weight", {c.qk_norm_full ? KVH * HD : HD}}};
  }
  lp.o = {{p + "self_attn.o_proj.weight", {D, H * HD}}};
  if (c.o_bias) lp.o_bias = {{p + "self_attn.o_proj.bias", {D}}};
  if (c.moe()) {
    const int64_t E = c.num_experts, FE = c.moe_intermediate_size;
    // (transformers 5's own module name is mlp for every MoE family, Mixtral's hub name block_sparse_moe)
    const std::string b = p + (fused_experts ? std::string("mlp") : arch.moe_block) + ".";
    lp.router = {{b + "gate.weight", {E, D}}};
    lp.fused_experts = fused_experts;
    if (fused_experts) {
      lp.expert_gate_up = {{{b + "experts.gate_up_proj", {E, 2 * FE, D}}}};
      lp.expert_down = {{{b + "experts.down_proj", {E, D, FE}}}};
      return lp;
    }
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = b + "experts." + std::to_string(e) + ".";
      std::vector<ExpectedTensor> gu;
      for (const auto& part : arch.expert_gate_up_parts) gu.push_back({x + part + ".weight", {FE, D}});
      lp.expert_gate_up.push_back(gu);
      lp.expert_down.push_back({{x + arch.expert_down_part + ".weight", {D, FE}}});
    }
    return lp;
  }
  const int64_t gu_rows = arch.gate_up_parts.size() == 1 ? 2 * F : F;
  for (const auto& part : arch.gate_up_parts) {
    lp.gate_up.push_back({p + part + ".weight", {gu_rows, D}});
    if (c.mlp_bias) lp.gate_up_bias.push_back({p + part + ".bias", {gu_rows}});
  }
  lp.down = {{p + "mlp.down_proj.weight", {D, F}}};
  if (c.mlp_bias) lp.down_bias = {{p + "mlp.down_proj.bias", {D}}};
  return lp;
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c, bool fused_experts) {
  const int64_t D = c.hidden_size, V = c.vocab_size;
  std::vector<ExpectedTensor> t;
  const Architecture& arch = architecture_named(c.family);
  t.push_back({arch.embed_name, {V, D}});
  if (c.pos_embed) t.push_back({arch.pos_embed_name, {c.max_position_embeddings, D}});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerPlan lp = layer_plan(c, l, fused_experts);
    t.push_back(lp.ln1);
    for (const auto* group : {&lp.ln1_bias, &lp.qkv, &lp.qkv_bias, &lp.q_norm, &lp.k_norm, &lp.o, &lp.o_bias, &lp.post_attn})
      t.insert(t.end(), group->begin(), group->end());
    t.push_back(lp.ln2);
    for (const auto* group : {&lp.ln2_bias, &lp.gate_up, &lp.gate_up_bias, &lp.down, &lp.down_bias, &lp.post_mlp, &lp.router})
      t.insert(t.end(), group->begin(), group->end());
    for (size_t e = 0; e < lp.expert_gate_up.size(); ++e) {
      t.insert(t.end(), lp.expert_gate_up[e].begin(), lp.expert_gate_up[e].end());
      t.insert(t.end(), lp.expert_down[e].begin(), lp.expert_down[e].end());
    }
  }
  t.push_back({arch.final_norm_name, {D}});
  if (c.norm_layer) t.push_back({arch.final_norm_bias_name, {D}});
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
  static ModelWeights build(Backend& be, const ModelConfig& c, GetFn get, bool fused_experts = false) {
    ModelWeights w;
    const DType dt = be.weight_dtype();
    // One device tensor from checkpoint tensors whose rows are concatenated in order (the
    // fused q|k|v and gate|up layouts); vectors (norms, biases) are fp32.
    auto fused = [&](const std::vector<ExpectedTensor>& parts, DType t) -> const void* {
      int64_t n = 0;
      for (const auto& e : parts) {
        int64_t k = 1;
        for (int64_t d : e.shape) k *= d;
        n += k;
      }
      std::vector<uint8_t> all;
      for (const auto& e : parts) {
        std::vector<uint8_t> v = get(e.name, t);
        if (v.empty()) return w.reserve(be, size_t(n) * dtype_size(t));
        if (e.transposed) v = transpose_bytes(v, e.shape[0], e.shape[1], dtype_size(t));
        all.insert(all.end(), v.begin(), v.end());
      }
      return w.keep(be, all);
    };
    auto matrix = [&](const std::vector<ExpectedTensor>& parts, const std::vector<ExpectedTensor>& bias) {
      Weight m;
      m.dtype = dt;
      m.cols = parts.front().shape[parts.front().transposed ? 0 : 1];
      for (const auto& e : parts) m.rows += e.shape[e.transposed ? 1 : 0];
      m.data = fused(parts, dt);
      if (!bias.empty()) m.bias = static_cast<const float*>(fused(bias, DType::F32));
      return m;
    };
    auto vec = [&](const ExpectedTensor& e) { return static_cast<const float*>(fused({e}, DType::F32)); };
    // An RMSNorm weight: w, or 1 + w where the family scales by (1 + w) (Gemma), folded here
    // in fp32 so the norm op stays y = x * rstd * w.
    auto norm = [&](const ExpectedTensor& e) -> const float* {
      if (!c.norm_offset) return vec(e);
      std::vector<uint8_t> v = get(e.name, DType::F32);
      if (v.empty()) return static_cast<const float*>(w.reserve(be, size_t(e.shape[0]) * sizeof(float)));
      float* f = reinterpret_cast<float*>(v.data());
      for (size_t i = 0; i < v.size() / sizeof(float); ++i) f[i] += 1.0f;
      return static_cast<const float*>(w.keep(be, v));
    };
    const int64_t D = c.hidden_size, V = c.vocab_size;
    const Architecture& arch = architecture_named(c.family);
    w.embed = matrix({{arch.embed_name, {V, D}}}, {});
    if (c.pos_embed) w.pos_embed = matrix({{arch.pos_embed_name, {c.max_position_embeddings, D}}}, {});
    auto bias_vec = [&](const std::vector<ExpectedTensor>& b) { return b.empty() ? nullptr : vec(b.front()); };
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const LayerPlan p = layer_plan(c, l, fused_experts);
      LayerWeights lw;
      lw.ln1 = norm(p.ln1);
      lw.ln1_b = bias_vec(p.ln1_bias);
      lw.qkv = matrix(p.qkv, p.qkv_bias);
      if (!p.q_norm.empty()) {  // (1 + w) too where the family's norms scale so (Gemma 3)
        lw.q_norm = norm(p.q_norm.front());
        lw.k_norm = norm(p.k_norm.front());
      }
      lw.o = matrix(p.o, p.o_bias);
      if (!p.post_attn.empty()) {
        lw.post_attn = norm(p.post_attn.front());
        lw.post_mlp = norm(p.post_mlp.front());
      }
      lw.ln2 = norm(p.ln2);
      lw.ln2_b = bias_vec(p.ln2_bias);
      if (c.moe()) {
        lw.router = matrix(p.router, {});
        const int64_t E = c.num_experts, FE = c.moe_intermediate_size;
        if (p.fused_experts) {  // one allocation per tensor, each expert's slice a Weight
          for (int part = 0; part < 2; ++part) {
            const ExpectedTensor& t = part == 0 ? p.expert_gate_up[0][0] : p.expert_down[0][0];
            const auto* base = static_cast<const uint8_t*>(fused({{t.name, {t.shape[0] * t.shape[1], t.shape[2]}}}, dt));
            for (int64_t e = 0; e < E; ++e) {
              Weight m;
              m.dtype = dt;
              m.rows = t.shape[1];
              m.cols = t.shape[2];
              m.data = base + size_t(e) * size_t(m.rows * m.cols) * dtype_size(dt);
              (part == 0 ? lw.expert_gate_up : lw.expert_down).push_back(m);
            }
          }
        } else {
          for (int64_t e = 0; e < E; ++e) {
            lw.expert_gate_up.push_back(matrix(p.expert_gate_up[size_t(e)], {}));
            lw.expert_down.push_back(matrix(p.expert_down[size_t(e)], {}));
          }
        }
        (void)FE;
      } else {
        lw.gate_up = matrix(p.gate_up, p.gate_up_bias);
        lw.down = matrix(p.down, p.down_bias);
      }
      w.layers.push_back(lw);
    }
    w.final_norm = norm({arch.final_norm_name, {D}});
    if (c.norm_layer) w.final_norm_b = vec({arch.final_norm_bias_name, {D}});
    w.lm_head = c.tie_word_embeddings ? w.embed : matrix({{"lm_head.weight", {V, D}}}, {});
    return w;
  }
};

namespace {

// The checkpoint's layout of the decoder's tensors (Architecture::weight_layouts): the first
// whose embed_tokens it holds, else the first.
Architecture::WeightLayout layout_of(const SafeTensors& st, const Architecture& arch) {
  for (const auto& l : arch.weight_layouts)
    if (st.has(l.body + "embed_tokens.weight")) return l;
  return arch.weight_layouts.front();
}

// A canonical tensor name (model.*, lm_head.weight: expected_tensors) as the checkpoint names it.
std::string checkpoint_name(const std::string& name, const Architecture::WeightLayout& l) {
  if (name == "lm_head.weight") return l.lm_head;
  if (name.compare(0, 6, "model.") == 0) return l.body + name.substr(6);
  return name;
}

bool starts_with_any(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (name.compare(0, p.size(), p) == 0) return true;
  return false;
}

}  // namespace

ModelWeights ModelWeights::load(Backend& be, const std::string& model_dir, const ModelConfig& cfg) {
  SafeTensors st = SafeTensors::open_dir(model_dir);
  const Architecture& arch = architecture_named(cfg.family);
  const Architecture::WeightLayout layout = layout_of(st, arch);
  // MoE experts: per-expert tensors (the hub's), or transformers 5's fused [E, ...] ones.
  const bool fused_experts =
      cfg.moe() && st.has(checkpoint_name(layer_plan(cfg, 0, true).expert_gate_up.at(0).at(0).name, layout));
  auto expected = expected_tensors(cfg, fused_experts);
  // The family's optional name prefix (GPT-2's "transformer."): used when the checkpoint has it.
  const std::string prefix =
      !arch.optional_prefix.empty() && !st.has(expected.front().name) && st.has(arch.optional_prefix + expected.front().name)
          ? arch.optional_prefix
          : "";
  if (!prefix.empty())
    for (auto& e : expected)
      if (e.name != "lm_head.weight") e.name = prefix + e.name;
  std::set<std::string> wanted;
  for (const auto& e : expected) {
    const std::string name = checkpoint_name(e.name, layout);
    wanted.insert(name);
    if (!st.has(name))
      throw Error(model_dir + ": tensor '" + name + "' is missing from the checkpoint (" + cfg.architecture +
                  " with this config.json has it" + other_layout_hint(st, cfg) + ")");
    const TensorInfo& info = st.get(name);
    if (info.dtype != DType::F32 && info.dtype != DType::BF16 && info.dtype != DType::F16)
      throw Error(info.file + ": tensor '" + name + "' has dtype " + dtype_name(info.dtype) +
                  "; weights must be F32, BF16 or F16");
    if (info.shape != e.shape)
      throw Error(info.file + ": tensor '" + name + "' has shape " + shape_str(info.shape) +
                  " but config.json implies " + shape_str(e.shape));
  }
  size_t ignored = 0;
  for (const auto& name : st.names()) {
    if (wanted.count(name)) continue;
    // Tied checkpoints may still carry lm_head; old exports carry rotary buffers.
    if (name == layout.lm_head && cfg.tie_word_embeddings) continue;
    if (name.size() > 20 && name.compare(name.size() - 20, 20, "rotary_emb.inv_freq") == 0) continue;
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (starts_with_any(name, arch.ignored_prefixes)) {
      ++ignored;
      continue;
    }
    bool buffer = false;
    for (const auto& s : arch.ignored_suffixes) buffer = buffer || ends_with(name, s);
    if (buffer) continue;
    throw Error(st.get(name).file + ": unexpected tensor '" + name + "' (not part of a " + cfg.architecture +
                " with this config.json" + unexpected_hint(name, cfg) + ")");
  }
  if (ignored > 0)
    std::fprintf(stderr, "%s: %zu tensors of %s are ignored (only the text decoder is loaded)\n", model_dir.c_str(),
                 ignored, arch.ignored_what.c_str());
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
  return WeightLoader::build(
      be, cfg,
      [&](const std::string& name, DType dt) {
        const std::string n = name == "lm_head.weight" ? name : prefix + name;
        return decode_tensor(st.get(checkpoint_name(n, layout)), dt);
      },
      fused_experts);
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
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      for (auto& x : v) x = dist(rng);
    } else if (s.size() == 1) {
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
