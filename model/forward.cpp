#include "model/forward.h"

#include <algorithm>
#include <functional>
#include <cmath>
#include <type_traits>

#include "kernels/op_math.h"
#include "model/finite_check.h"
#include "model/qk_norm.h"
#include "runtime/error.h"

namespace phi3 {

std::vector<float> rope_inv_freq(const ModelConfig& cfg, int seq_len) { return cfg.inv_freq(seq_len); }

namespace {

// One layer's internals (everything but resid_pre) in the order forward_layer_buffers takes them.
void plan_layer_internals(ArenaPlan& p, const Model& m, size_t N, int B, int T, bool keep_pattern, bool gemm16,
                          bool keep_mlp_post) {
  const ModelConfig& c = m.cfg;
  const size_t D = c.hidden_size, F = c.intermediate_size;
  auto gemm_in = [&](size_t n) { p.add_gemm_in(gemm16, n); };
  gemm_in(N * D);                                                         // ln1
  p.add<float>(N);                                                        // rstd1
  p.add<float>(N * m.qkv_width()).add<float>(N * m.q_width());            // qkv, q_rot
  p.add<float>(N * m.kv_width()).add<float>(N * m.kv_width());            // k_rot, v
  p.add<float>(N * m.q_width());                                          // z
  if (gemm16) p.add<uint16_t>(N * m.q_width());                           // z16
  if (keep_pattern) p.add<float>(size_t(B) * c.num_attention_heads * T * T);
  p.add<float>(N * D).add<float>(N * D);                                  // attn_out, resid_mid
  if (c.moe()) {  // ln2 in fp32 (gathered by expert); the MoE buffers live outside the arena
    p.add<float>(N * D).add<float>(N);
  } else {
    gemm_in(N * D);                                                       // ln2
    p.add<float>(N);                                                      // rstd2
    p.add<float>(N * m.gate_up_width());                                  // gate_up
    gemm_in(N * F);                                                       // act
    if (gemm16 && keep_mlp_post) p.add<float>(N * F);                     // act in fp32 too
  }
  p.add<float>(N * D);                                                    // mlp_out
  if (c.post_norms) p.add<float>(N * D).add<float>(N * D).add<float>(N).add<float>(N);
  p.add<float>(size_t(B) * c.num_attention_heads * T * 2);                // stats
}

// What a sweep cache keeps per layer (the buffers the exact sweep reads), in take_sweep_cache's order.
void plan_sweep_cache(ArenaPlan& p, const Model& m, size_t N, int B, int T, bool keep_pattern, bool keep_act,
                      const SweepCacheKeep& k) {
  const ModelConfig& c = m.cfg;
  const size_t D = c.hidden_size;
  if (k.qkv) p.add<float>(N * m.qkv_width());
  p.add<float>(N * m.kv_width()).add<float>(N * m.kv_width());  // k_rot, v
  if (k.z) p.add<float>(N * m.q_width());
  if (keep_pattern) p.add<float>(size_t(B) * c.num_attention_heads * T * T);
  if (k.attn_out) p.add<float>(N * D);
  if (k.resid_mid) p.add<float>(N * D);
  if (k.mlp_out) p.add<float>(N * D);
  if (keep_act) p.add<float>(N * c.intermediate_size);  // act (fp32: mlp_post nodes)
}

// Takes one layer's internals from the arena (plan_layer_internals' order) and returns the GEMM
// inputs ln1, ln2, act as the producing ops write them.
struct LayerGemmIns {
  GemmOut ln1, ln2, act;
};
LayerGemmIns take_layer_internals(Arena& A, const Model& m, LayerActs& a, size_t N, int B, int T, bool keep_pattern,
                                  bool g16, bool keep_act32) {
  const ModelConfig& c = m.cfg;
  const size_t D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads;
  LayerGemmIns g;
  g.ln1 = A.take_gemm_in(g16, a.ln1, a.ln1_16, N * D);
  a.rstd1 = A.take<float>(N);
  a.qkv = A.take<float>(N * m.qkv_width());
  a.q_rot = A.take<float>(N * m.q_width());
  a.k_rot = A.take<float>(N * m.kv_width());
  a.v = A.take<float>(N * m.kv_width());
  a.z = A.take<float>(N * m.q_width());
  if (g16) a.z16 = A.take<uint16_t>(N * m.q_width());
  if (keep_pattern) a.pattern = A.take<float>(size_t(B) * H * T * T);
  a.attn_out = A.take<float>(N * D);
  a.resid_mid = A.take<float>(N * D);
  if (c.moe()) {  // (plan_layer_internals) ln2 in fp32, no dense MLP buffers
    a.ln2 = A.take<float>(N * D);
    g.ln2 = GemmOut(a.ln2.get());
    a.rstd2 = A.take<float>(N);
  } else {
    g.ln2 = A.take_gemm_in(g16, a.ln2, a.ln2_16, N * D);
    a.rstd2 = A.take<float>(N);
    a.gate_up = A.take<float>(N * m.gate_up_width());
    g.act = A.take_gemm_in(g16, a.act, a.act16, N * F);
    if (keep_act32) {  // both: the fp32 neurons kept, the bf16 rounding for the GEMM
      a.act = A.take<float>(N * F);
      g.act.f32 = a.act.get();
    }
  }
  a.mlp_out = A.take<float>(N * D);
  if (c.post_norms) {
    a.attn_raw = A.take<float>(N * D);
    a.mlp_raw = A.take<float>(N * D);
    a.rstd_pa = A.take<float>(N);
    a.rstd_pm = A.take<float>(N);
  }
  a.stats = A.take<float>(size_t(B) * H * T * 2);
  return g;
}

// A sweep-cache layer: the kept buffers from the arena, every other one borrowed from `scratch`
// (one set shared by all layers: it holds the last layer's values once the pass is done).
LayerGemmIns take_sweep_cache(Arena& A, const Model& m, LayerActs& a, const LayerActs& scratch,
                              const LayerGemmIns& sg, size_t N, int B, int T, bool keep_pattern, bool keep_act,
                              const SweepCacheKeep& k) {
  Backend& be = A.backend();
  auto share = [&](const auto& x) {
    using Elem = std::remove_const_t<std::remove_pointer_t<decltype(x.get())>>;
    return x.get() ? DeviceArray<Elem>::borrowed(be, const_cast<Elem*>(x.get()), x.size()) : DeviceArray<Elem>();
  };
  const ModelConfig& c = m.cfg;
  const size_t D = c.hidden_size;
  a.qkv = k.qkv ? A.take<float>(N * m.qkv_width()) : share(scratch.qkv);
  a.k_rot = A.take<float>(N * m.kv_width());
  a.v = A.take<float>(N * m.kv_width());
  a.z = k.z ? A.take<float>(N * m.q_width()) : share(scratch.z);
  if (keep_pattern) a.pattern = A.take<float>(size_t(B) * c.num_attention_heads * T * T);
  a.attn_out = k.attn_out ? A.take<float>(N * D) : share(scratch.attn_out);
  a.resid_mid = k.resid_mid ? A.take<float>(N * D) : share(scratch.resid_mid);
  a.mlp_out = k.mlp_out ? A.take<float>(N * D) : share(scratch.mlp_out);
  LayerGemmIns g = sg;
  if (keep_act) {
    a.act = A.take<float>(N * c.intermediate_size);
    g.act.f32 = a.act.get();
  } else {
    a.act = share(scratch.act);
  }
  a.ln1 = share(scratch.ln1);
  a.ln1_16 = share(scratch.ln1_16);
  a.rstd1 = share(scratch.rstd1);
  a.q_rot = share(scratch.q_rot);
  a.z16 = share(scratch.z16);
  a.ln2 = share(scratch.ln2);
  a.ln2_16 = share(scratch.ln2_16);
  a.rstd2 = share(scratch.rstd2);
  a.gate_up = share(scratch.gate_up);
  a.act16 = share(scratch.act16);
  a.attn_raw = share(scratch.attn_raw);
  a.mlp_raw = share(scratch.mlp_raw);
  a.rstd_pa = share(scratch.rstd_pa);
  a.rstd_pm = share(scratch.rstd_pm);
  a.stats = share(scratch.stats);
  return g;
}

}  // namespace

size_t forward_arena_bytes(const Model& m, int B, int T, bool keep_pattern, bool gemm16, bool keep_mlp_post,
                           bool checkpoint, bool sweep_cache, const SweepCacheKeep& cache_keep) {
  const ModelConfig& c = m.cfg;
  const size_t N = size_t(B) * T, D = c.hidden_size;
  ArenaPlan p;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    p.add<float>(N * D);  // resid_pre
    if (sweep_cache) {
      if (l == 0) plan_layer_internals(p, m, N, B, T, false, gemm16, false);  // the shared scratch
      plan_sweep_cache(p, m, N, B, T, keep_pattern, keep_mlp_post, cache_keep);
    } else if (!checkpoint || l == 0) {
      plan_layer_internals(p, m, N, B, T, keep_pattern, gemm16, keep_mlp_post);
    }
  }
  p.add<float>(N * D);                 // resid_final
  p.add_gemm_in(gemm16, N * D);        // ln_f
  p.add<float>(N).add<float>(N * size_t(c.vocab_size));  // rstd_f, logits
  return p.bytes();
}

size_t moe_pass_bytes(const Model& m, int B, int T) {
  const ModelConfig& c = m.cfg;
  if (!c.moe()) return 0;
  const size_t N = size_t(B) * T, M = N * c.experts_per_tok, D = c.hidden_size, F = c.moe_intermediate_size;
  const size_t per_layer = N * c.num_experts * 4 + M * 4 * 4 + M * (2 * D + 3 * F) * 4;
  return per_layer * c.num_hidden_layers;
}

size_t layer_arena_bytes(const Model& m, int B, int T, bool gemm16, bool keep_mlp_post) {
  ArenaPlan p;
  plan_layer_internals(p, m, size_t(B) * T, B, T, false, gemm16, keep_mlp_post);
  return p.bytes();
}

std::vector<float> rope_cos_sin_table(const std::vector<float>& inv_freq, float attn_scale, int n_pos) {
  const size_t half = inv_freq.size();
  std::vector<float> t(size_t(n_pos) * half * 2);
  for (int p = 0; p < n_pos; ++p)
    for (size_t i = 0; i < half; ++i)
      rope_angle(p, inv_freq[i], attn_scale, &t[(size_t(p) * half + i) * 2], &t[(size_t(p) * half + i) * 2 + 1]);
  return t;
}

int rope_table_positions(const Batch& batch) {
  int32_t mx = 0;
  for (int32_t p : batch.pos) mx = std::max(mx, p);
  return mx + 1;
}

AttnParams attention_params(const Model& m, int T, int layer) {
  const ModelConfig& c = m.cfg;
  AttnParams ap;
  ap.q_stride = m.q_width();
  ap.kv_stride = m.kv_width();
  ap.cache_stride = m.kv_width();
  ap.z_stride = m.q_width();
  ap.T = T;
  ap.H = c.num_attention_heads;
  ap.KVH = c.num_key_value_heads;
  ap.HD = c.head_dim;
  ap.window = c.window(layer);
  ap.scale = c.attn_scale > 0 ? c.attn_scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ap.softcap = c.attn_softcap;
  return ap;
}

AttnParams plain_attention_params(const Model& m, const ForwardState& s, const LayerActs& a, int layer,
                                  const AttnSegment* segs) {
  AttnParams ap = attention_params(m, s.T, layer);
  ap.q = a.q_rot.get();
  ap.k = a.k_rot.get();
  ap.v = a.v.get();
  ap.z = a.z.get();
  ap.pattern = a.pattern.size() ? a.pattern.get() : nullptr;
  ap.stats = a.stats.size() ? a.stats.get() : nullptr;
  ap.pad = s.pad.get();
  ap.segs = segs;
  ap.n_segs = s.B;
  return ap;
}

void split_hook_name(const std::string& name, int n_layers, int& layer, std::string& hook) {
  const std::string prefix = "blocks.";
  size_t dot = name.find('.', prefix.size());
  if (name.compare(0, prefix.size(), prefix) != 0 || dot == std::string::npos)
    throw Error("unknown activation name '" + name + "' (expected blocks.<layer>.<hook> or logits)");
  const std::string num = name.substr(prefix.size(), dot - prefix.size());
  if (num.empty() || num.size() > 6 || num.find_first_not_of("0123456789") != std::string::npos)
    throw Error("unknown activation name '" + name + "': bad layer '" + num + "'");
  layer = std::stoi(num);
  if (layer >= n_layers)
    throw Error("activation '" + name + "': the model has " + std::to_string(n_layers) + " layers");
  hook = name.substr(dot + 1);
}

TensorView ForwardState::activation(const Backend& be, const Model& m, const std::string& name) const {
  const int64_t Bn = B, Tn = T, N = Bn * T, D = m.cfg.hidden_size, H = m.cfg.num_attention_heads;
  const int64_t KVH = m.cfg.num_key_value_heads, HD = m.cfg.head_dim;
  const int64_t QW = m.q_width(), KVW = m.kv_width(), QKVW = m.qkv_width();
  if (name == "logits") return make_view(be, logits.get(), {Bn, Tn, m.cfg.vocab_size}, N, m.cfg.vocab_size, m.cfg.vocab_size);
  int l;
  std::string h;
  split_hook_name(name, static_cast<int>(layers.size()), l, h);
  const LayerActs& a = layers[l];
  if (checkpointed && h != "hook_resid_pre" && h != "hook_resid_post")
    throw Error("activation '" + name + "': a checkpointed forward pass keeps only each layer's input");
  if (sweep_cache) {
    const SweepCacheKeep& k = cache_keep;
    const bool qkv = h == "attn.hook_q" || h == "attn.hook_k" || h == "attn.hook_v";
    if (h == "attn.hook_rot_q" || (h == "mlp.hook_post" && !keep_mlp_post) || (qkv && !k.qkv) ||
        (h == "attn.hook_z" && !k.z) || (h == "hook_attn_out" && !k.attn_out) ||
        (h == "hook_resid_mid" && !k.resid_mid) || (h == "hook_mlp_out" && !k.mlp_out))
      throw Error("activation '" + name + "': not kept by a sweep-cache forward pass");
  }
  if (h == "hook_resid_pre") return make_view(be, a.resid_pre.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_resid_mid") return make_view(be, a.resid_mid.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_resid_post") return make_view(be, resid_post(l), {Bn, Tn, D}, N, D, D);
  if (h == "hook_attn_out") return make_view(be, a.attn_out.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_mlp_out") return make_view(be, a.mlp_out.get(), {Bn, Tn, D}, N, D, D);
  if (h == "attn.hook_q") return make_view(be, a.qkv.get(), {Bn, Tn, H, HD}, N, QW, QKVW);
  if (h == "attn.hook_k") return make_view(be, a.qkv.get() + QW, {Bn, Tn, KVH, HD}, N, KVW, QKVW);
  if (h == "attn.hook_v") return make_view(be, a.qkv.get() + QW + KVW, {Bn, Tn, KVH, HD}, N, KVW, QKVW);
  if (h == "attn.hook_rot_q") return make_view(be, a.q_rot.get(), {Bn, Tn, H, HD}, N, QW, QW);
  if (h == "attn.hook_rot_k") return make_view(be, a.k_rot.get(), {Bn, Tn, KVH, HD}, N, KVW, KVW);
  if (h == "attn.hook_z") return make_view(be, a.z.get(), {Bn, Tn, H, HD}, N, QW, QW);
  if (h == "mlp.hook_post") {
    const int64_t F = m.cfg.intermediate_size;
    if (!a.act.size())
      throw Error("activation '" + name + "': the fp32 MLP output was not kept by this forward pass (bf16 GEMM inputs)");
    return make_view(be, a.act.get(), {Bn, Tn, F}, N, F, F);
  }
  if (h == "mlp.hook_router") {  // MoE: the router logits
    const int64_t E = m.cfg.num_experts;
    if (!a.moe.router.size()) throw Error("activation '" + name + "': only a mixture-of-experts model has a router");
    return make_view(be, a.moe.router.get(), {Bn, Tn, E}, N, E, E);
  }
  if (h == "attn.hook_pattern") {
    if (!a.pattern.size()) throw Error("activation '" + name + "': the pattern was not kept by this forward pass");
    return make_view(be, a.pattern.get(), {Bn, H, Tn, Tn}, Bn * H * Tn, Tn, Tn);
  }
  throw Error("unknown activation name '" + name + "'");
}

void check_hook_supported(Hook h, const ModelConfig& c) {
  if (h == Hook::MlpPost && c.moe())
    throw Error("hook mlp_post (MLP neurons) does not exist on a mixture-of-experts model (" + c.architecture +
                "): its MLP is " + std::to_string(c.num_experts) + " experts; use mlp_out or router instead");
  if (h == Hook::Router && !c.moe())
    throw Error("hook router (a mixture-of-experts block's router logits) does not exist on " + c.architecture +
                ", a dense model");
}

SweepCacheKeep sweep_cache_keep(const std::vector<Hook>& hooks) {
  SweepCacheKeep k;
  k.qkv = k.z = k.attn_out = k.resid_mid = k.mlp_out = false;
  for (Hook h : hooks) {
    const Hook b = hook_base(h);
    k.qkv = k.qkv || b == Hook::Q || b == Hook::K || b == Hook::V;
    k.z = k.z || b == Hook::Z || hook_is_pattern(h);
    k.attn_out = k.attn_out || h == Hook::AttnOut;
    k.resid_mid = k.resid_mid || h == Hook::ResidMid || h == Hook::MlpOut || h == Hook::MlpPost;
    k.mlp_out = k.mlp_out || h == Hook::MlpOut;
    k.resid_mid = k.resid_mid || h == Hook::Router;  // (the router's logits are the MoE block's own)
  }
  return k;
}

int64_t hook_stride(Hook h, const Model& m) {
  if (h == Hook::MlpPost) return m.cfg.intermediate_size;
  if (h == Hook::Router) return m.cfg.num_experts;
  if (hook_is_qkv(h)) return m.qkv_width();
  if (hook_is_per_head(h)) return m.q_width();
  return m.cfg.hidden_size;
}
int hook_heads(Hook h, const ModelConfig& c) {
  if (h == Hook::MlpPost) return c.intermediate_size;
  if (hook_is_kv(h)) return c.num_key_value_heads;
  return hook_is_per_head(h) ? c.num_attention_heads : 1;
}
int hook_group_width(Hook h, const ModelConfig& c) {
  if (h == Hook::MlpPost) return 1;
  if (h == Hook::Router) return c.num_experts;
  return hook_is_per_head(h) ? c.head_dim : c.hidden_size;
}

namespace {
// z = pattern v over the values of s's layer l, every head ([B*T, H*HD] rows).
ApplyPatternParams apply_pattern_params(const Model& m, const ForwardState& s, int l, const float* pattern, float* z) {
  const ModelConfig& c = m.cfg;
  ApplyPatternParams pp;
  pp.pattern = pattern;
  pp.v = s.layers.at(l).v.get();
  pp.pad = s.pad.get();
  pp.z = z;
  pp.kv_stride = m.kv_width();
  pp.z_stride = m.q_width();
  pp.B = s.B;
  pp.T = s.T;
  pp.H = c.num_attention_heads;
  pp.KVH = c.num_key_value_heads;
  pp.HD = c.head_dim;
  pp.h0 = 0;
  pp.nh = c.num_attention_heads;
  return pp;
}
}  // namespace

DeviceArray<float> z_from_pattern(Backend& be, const Model& m, const float* pattern, const ForwardState& s, int l) {
  DeviceArray<float> z(be, size_t(s.B) * s.T * m.q_width());
  be.attn_apply_pattern(apply_pattern_params(m, s, l, pattern, z.get()));
  return z;
}

const float* hook_data_of(const LayerActs& a, const float* resid_post, int q_width, int kv_width, Hook h) {
  switch (h) {
    case Hook::Q:
    case Hook::QAllPos: return a.qkv.get();
    case Hook::K:
    case Hook::KAllPos: return a.qkv.get() + q_width;
    case Hook::V:
    case Hook::VAllPos: return a.qkv.get() + q_width + kv_width;
    case Hook::ResidPre: return a.resid_pre.get();
    case Hook::ResidMid: return a.resid_mid.get();
    case Hook::ResidPost: return resid_post;
    case Hook::AttnOut: return a.attn_out.get();
    case Hook::MlpOut: return a.mlp_out.get();
    case Hook::Z:
    case Hook::ZAllPos: return a.z.get();
    case Hook::Pattern:
    case Hook::PatternAllPos:
      if (!a.pattern.size()) throw Error("hook_pattern was not kept by this forward pass");
      return a.pattern.get();
    case Hook::MlpPost:
      if (!a.act.size()) throw Error("hook_mlp_post was not kept in fp32 by this forward pass (ForwardOptions::keep_mlp_post)");
      return a.act.get();
    case Hook::Router:
      if (!a.moe.router.size()) throw Error("hook_router exists only on a mixture-of-experts model's forward pass");
      return a.moe.router.get();
  }
  return nullptr;
}

const float* ForwardState::hook_data(Hook h, int l) const {
  const LayerActs& a = layers.at(l);
  if (checkpointed && h != Hook::ResidPre && h != Hook::ResidPost)
    throw Error(hook_name(h) + " of layer " + std::to_string(l) +
                " is not kept by a checkpointed forward pass (recompute the layer: recompute_layer)");
  if (sweep_cache) {
    const SweepCacheKeep& k = cache_keep;
    const Hook b = hook_base(h);
    const bool kept = h == Hook::ResidPre || h == Hook::ResidPost ||
                      ((b == Hook::Q || b == Hook::K || b == Hook::V) && k.qkv) || (b == Hook::Z && k.z) ||
                      (hook_is_pattern(h) && layers.at(l).pattern.size()) || (h == Hook::AttnOut && k.attn_out) ||
                      (h == Hook::ResidMid && k.resid_mid) || (h == Hook::MlpOut && k.mlp_out) ||
                      (h == Hook::MlpPost && keep_mlp_post) || (h == Hook::Router && layers.at(l).moe.router.size());
    if (!kept) throw Error(hook_name(h) + " was not kept by this sweep-cache forward pass (ForwardOptions::cache_keep)");
  }
  return hook_data_of(a, resid_post(l), q_width, kv_width, h);
}

namespace {

// Writes the source run's value of the patched hook into `dst` (the hook's pointer in this
// run, rows `stride` apart; `src` the same in the source run). Rows b*T+pos for every b
// (every position when pos < 0); for per-head hooks only head `head`'s slice of `width`.
void apply_patch(Backend& be, float* dst, const float* src, int64_t stride, int width, const PatchSpec& p,
                 const ForwardState& s, int head_dim) {
  std::vector<int32_t> rows;
  for (int b = 0; b < s.B; ++b) {
    if (p.pos >= 0) {
      rows.push_back(b * s.T + p.pos);
    } else {
      for (int t = 0; t < s.T; ++t) rows.push_back(b * s.T + t);
    }
  }
  DeviceArray<int32_t> idx = to_device(be, rows);
  if (hook_is_per_head(p.hook)) {
    const int gw = p.hook == Hook::MlpPost ? 1 : head_dim;  // a neuron, or a head's slice
    const int off = p.head * gw;
    be.copy_rows(dst + off, stride, idx.get(), src + off, stride, idx.get(), static_cast<int>(rows.size()), gw);
  } else {
    be.copy_rows(dst, stride, idx.get(), src, stride, idx.get(), static_cast<int>(rows.size()), width);
  }
}

// Where one layer's output goes: the next layer's input (resid_pre) and its norm (the next
// layer's ln1, or the final norm's output), written by one fused add + norm.
struct NextLayer {
  float* resid;
  GemmOut ln;
  float* rstd;
  const float* w;
  const float* b;  // the norm's bias (LayerNorm), else null
  bool last;  // the final norm
};

// One layer of the forward pass over s's batch, with the optional patch of ForwardOptions.
struct LayerPass {
  Backend& be;
  const Model& m;
  const ForwardState& s;
  const ForwardOptions& opt;
  const AttnSegment* segs;

  bool patched_at(Hook h, int l) const { return opt.patch && opt.patch->layer == l && hook_base(opt.patch->hook) == h; }
  // dst: the hook's activation in this run (rows `stride` apart).
  void patch_here(Hook h, int l, float* dst, int64_t stride, int width) const {
    if (!patched_at(h, l)) return;
    PatchSpec p = *opt.patch;
    if (hook_all_pos(p.hook)) p.pos = -1;
    apply_patch(be, dst, opt.source->hook_data(opt.patch->hook, l), stride, width, p, s, m.cfg.head_dim);
  }

  // From a.resid_pre (and, with ln1_done, its norm already in ln1) to a's internals; with
  // `next`, the layer's output into next (returns whether next.ln was written), else the
  // output is not formed (a recomputation: the next layer's input is kept already).
  bool run(int l, LayerActs& a, GemmOut ln1, GemmOut ln2, GemmOut act, bool ln1_done, const NextLayer* next) const {
    const ModelConfig& c = m.cfg;
    const LayerWeights& w = m.w.layers[l];
    const int B = s.B, T = s.T, N = B * T;
    const int D = c.hidden_size, F = c.intermediate_size;
    const int H = c.num_attention_heads, KVH = c.num_key_value_heads, HD = c.head_dim;
    const int QKVW = m.qkv_width(), QW = m.q_width(), KVW = m.kv_width();
    const PatchSpec* patch = opt.patch;
    if (patched_at(Hook::ResidPre, l)) {
      patch_here(Hook::ResidPre, l, a.resid_pre.get(), D, D);
      ln1_done = false;
    }
    if (!ln1_done)
      be.rmsnorm_forward(ln1, a.rstd1.get(), a.resid_pre.get(), w.ln1, N, D, c.rms_norm_eps, c.norm_layer, w.ln1_b);
    be.linear_forward(a.qkv.get(), ln1, w.qkv, N, false);
    patch_here(Hook::Q, l, a.qkv.get(), QKVW, QW);
    patch_here(Hook::K, l, a.qkv.get() + QW, QKVW, KVW);
    patch_here(Hook::V, l, a.qkv.get() + QW + KVW, QKVW, KVW);
    DeviceArray<float> qkn;  // q and k normalized per head (Qwen3), else unused
    be.rotary_qkv_forward(a.q_rot.get(), a.k_rot.get(), a.v.get(), qk_norm_input(be, m, l, a.qkv.get(), N, qkn),
                          s.pos.get(), N, H, KVH, HD, s.layer_rope(c, l));

    // The attention op writes every element of the pattern (zeros off the visible set): no zeroing.
    AttnParams ap = plain_attention_params(m, s, a, l, segs);
    ap.z16 = a.z16.get();
    ap.tensor_cores = be.gemm_in_bf16();  // bf16 mode: attention on tensor cores too
    DeviceArray<float> own_pattern;  // a patched pattern when the pass keeps none
    if (patched_at(Hook::Pattern, l) && !a.pattern.size()) {
      own_pattern = DeviceArray<float>(be, size_t(B) * H * T * T);
      ap.pattern = own_pattern.get();
    }
    be.attention_forward(ap);
    GemmIn z_in(a.z.get(), a.z16.get());
    if (patched_at(Hook::Z, l)) {
      patch_here(Hook::Z, l, a.z.get(), QW, QW);
      z_in.bf16 = nullptr;  // the bf16 copy is stale: the GEMM rounds the patched z itself
    }
    if (patched_at(Hook::Pattern, l)) {
      // The source run's pattern rows of the patched head (one query row, or all), then that
      // head's z from the patched pattern.
      std::vector<int32_t> rows;
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t)
          if (hook_all_pos(patch->hook) || t == patch->pos) rows.push_back((b * H + patch->head) * T + t);
      DeviceArray<int32_t> idx = to_device(be, rows);
      be.copy_rows(ap.pattern, T, idx.get(), opt.source->hook_data(Hook::Pattern, l), T, idx.get(),
                   static_cast<int>(rows.size()), T);
      ApplyPatternParams pp = apply_pattern_params(m, s, l, ap.pattern, a.z.get());
      pp.h0 = patch->head;  // that head's z only
      pp.nh = 1;
      be.attn_apply_pattern(pp);
      z_in.bf16 = nullptr;
    }

    if (c.post_norms) {  // attn_out = RMSNorm(o_proj(z)) (Gemma 2's post_attention_layernorm)
      be.linear_forward(a.attn_raw.get(), z_in, w.o, N, false);
      be.rmsnorm_forward(a.attn_out.get(), a.rstd_pa.get(), a.attn_raw.get(), w.post_attn, N, D, c.rms_norm_eps);
    } else {
      be.linear_forward(a.attn_out.get(), z_in, w.o, N, false);
    }
    patch_here(Hook::AttnOut, l, a.attn_out.get(), D, D);
    if (patched_at(Hook::ResidMid, l)) {
      be.add(a.resid_mid.get(), a.resid_pre.get(), a.attn_out.get(), int64_t(N) * D);
      patch_here(Hook::ResidMid, l, a.resid_mid.get(), D, D);
      be.rmsnorm_forward(ln2, a.rstd2.get(), a.resid_mid.get(), w.ln2, N, D, c.rms_norm_eps, c.norm_layer, w.ln2_b);
    } else {
      be.add_rmsnorm_forward(a.resid_mid.get(), ln2, a.rstd2.get(), a.resid_pre.get(), a.attn_out.get(), w.ln2, N, D,
                             c.rms_norm_eps, c.norm_layer, w.ln2_b);
    }

    if (c.moe()) {  // the sparse MoE block (model/moe.h): routing recomputed from this run's input
      std::function<void(float*)> patch_logits;
      if (patched_at(Hook::Router, l))
        patch_logits = [&](float* logits) { patch_here(Hook::Router, l, logits, c.num_experts, c.num_experts); };
      moe_forward(be, m, l, ln2.f32, a.mlp_out.get(), N, a.moe, patch_logits);
    } else {
    be.linear_forward(a.gate_up.get(), ln2, w.gate_up, N, false);
    be.swiglu_forward(act, a.gate_up.get(), N, F, mlp_act(c));
    GemmIn act_in(act);
    if (patched_at(Hook::MlpPost, l)) {
      patch_here(Hook::MlpPost, l, a.act.get(), F, F);
      act_in.bf16 = nullptr;  // the GEMM rounds the patched neurons itself
    }
    if (c.post_norms) {  // mlp_out = RMSNorm(down(act)) (post_feedforward_layernorm)
      be.linear_forward(a.mlp_raw.get(), act_in, w.down, N, false);
      be.rmsnorm_forward(a.mlp_out.get(), a.rstd_pm.get(), a.mlp_raw.get(), w.post_mlp, N, D, c.rms_norm_eps);
    } else {
      be.linear_forward(a.mlp_out.get(), act_in, w.down, N, false);
    }
    }
    patch_here(Hook::MlpOut, l, a.mlp_out.get(), D, D);
    if (!next) return false;

    // resid_post, written straight into the next layer's resid_pre (or resid_final), and
    // the next norm (ln1 of layer l+1, or the final norm) in the same kernel.
    if (patched_at(Hook::ResidPost, l)) {
      be.add(next->resid, a.resid_mid.get(), a.mlp_out.get(), int64_t(N) * D);
      patch_here(Hook::ResidPost, l, next->resid, D, D);
      if (next->last)
        be.rmsnorm_forward(next->ln, next->rstd, next->resid, next->w, N, D, c.rms_norm_eps, c.norm_layer, next->b);
      return false;
    }
    be.add_rmsnorm_forward(next->resid, next->ln, next->rstd, a.resid_mid.get(), a.mlp_out.get(), next->w, N, D,
                           c.rms_norm_eps, c.norm_layer, next->b);
    return true;
  }
};

std::vector<AttnSegment> plain_segments(int B, int T) {
  std::vector<AttnSegment> segs(B);
  for (int b = 0; b < B; ++b) segs[b] = AttnSegment{b, 0, b * T, 0, b * T};
  return segs;
}

}  // namespace

ForwardState forward(Backend& be, const Model& m, const Batch& batch, const ForwardOptions& opt) {
  const ModelConfig& c = m.cfg;
  const int B = batch.B, T = batch.T, L = c.num_hidden_layers;
  const int D = c.hidden_size, V = c.vocab_size;
  const int N = B * T;
  for (int32_t t : batch.tokens)
    if (t < 0 || t >= V) throw Error("token id " + std::to_string(t) + " is outside the vocabulary (" + std::to_string(V) + ")");
  for (int32_t p : batch.pos) {
    if (p < 0) throw Error("negative position " + std::to_string(p) + " in the batch");
    if (c.pos_embed && p >= c.max_position_embeddings)
      throw Error("position " + std::to_string(p) + " is past the model's learned position embeddings (" +
                  std::to_string(c.max_position_embeddings) + ", n_positions / max_position_embeddings in config.json)");
  }
  if (opt.patch) {
    PHI3_CHECK(opt.source && opt.source->B == B && opt.source->T == T, "forward: patch source has another batch shape");
    PHI3_CHECK(opt.patch->layer >= 0 && opt.patch->layer < L, "forward: patch layer out of range");
  }
  PHI3_CHECK(!opt.checkpoint || (!opt.patch && !opt.keep_pattern),
             "forward: a checkpointed pass (layer inputs only) takes no patch and keeps no pattern");
  PHI3_CHECK(!(opt.checkpoint && opt.sweep_cache), "forward: checkpoint and sweep_cache exclude each other");
  if (opt.patch) check_hook_supported(opt.patch->hook, c);
  if (c.moe() && opt.patch && opt.patch->hook == Hook::MlpPost)
    throw Error("hook mlp_post (MLP neurons) does not exist on a mixture-of-experts model (" + c.architecture +
                "): its MLP is " + std::to_string(c.num_experts) + " experts; patch mlp_out instead");
  const bool g16 = be.gemm_in_bf16();

  ForwardState s;
  const bool keep_act32 = g16 && (opt.keep_mlp_post || (opt.patch && opt.patch->hook == Hook::MlpPost));
  // A sweep cache keeps the fp32 neurons per layer when they are patched or attributed.
  const bool cache_act = opt.keep_mlp_post || (opt.patch && opt.patch->hook == Hook::MlpPost);
  s.arena = std::make_shared<Arena>(be,
                                    forward_arena_bytes(m, B, T, opt.keep_pattern, g16,
                                                        opt.sweep_cache ? cache_act : keep_act32, opt.checkpoint,
                                                        opt.sweep_cache, opt.cache_keep),
                                    "forward pass of " + std::to_string(B) + " x " + std::to_string(T) + " tokens");
  Arena& A = *s.arena;
  s.B = B;
  s.T = T;
  s.batch = batch;
  s.checkpointed = opt.checkpoint;
  s.sweep_cache = opt.sweep_cache;
  if (opt.sweep_cache) s.cache_keep = opt.cache_keep;
  s.keep_mlp_post = opt.sweep_cache ? cache_act : keep_act32;
  s.tokens = to_device(be, batch.tokens);
  s.pos = to_device(be, batch.pos);
  s.pad = to_device(be, batch.pad);
  const std::vector<float> inv_freq = c.inv_freq(batch.max_seq_len());
  s.inv_freq = to_device(be, inv_freq);
  s.rope.inv_freq = s.inv_freq.get();
  s.rope.rot_dim = c.rotary_dim;
  s.rope.attn_scale = c.rope_attention_scale();
  s.rope.n_pos = rope_table_positions(batch);
  s.rope_table = to_device(be, rope_cos_sin_table(inv_freq, s.rope.attn_scale, s.rope.n_pos));
  s.rope.cos_sin = s.rope_table.size() ? s.rope_table.get() : nullptr;
  if (c.rope_local_theta > 0) {  // the local base (Gemma 3's sliding layers): its own table
    const std::vector<float> local = c.local_inv_freq();
    s.inv_freq_local = to_device(be, local);
    s.rope_local.inv_freq = s.inv_freq_local.get();
    s.rope_local.rot_dim = c.rotary_dim;
    s.rope_local.attn_scale = 1.0f;
    s.rope_local.n_pos = s.rope.n_pos;
    s.rope_table_local = to_device(be, rope_cos_sin_table(local, 1.0f, s.rope_local.n_pos));
    s.rope_local.cos_sin = s.rope_table_local.size() ? s.rope_table_local.get() : nullptr;
  }
  DeviceArray<AttnSegment> dsegs = to_device(be, plain_segments(B, T));
  s.q_width = m.q_width();
  s.kv_width = m.kv_width();

  // Every buffer first (the fused residual add + norm writes the next layer's ln1). A
  // checkpointed pass keeps only each layer's input; its internals share one set of buffers.
  s.layers.resize(L);
  std::vector<LayerGemmIns> gi(L);
  LayerActs scratch;         // checkpoint / sweep cache: the internals every layer shares
  LayerGemmIns scratch_in;   // (sweep cache) its GEMM inputs
  for (int l = 0; l < L; ++l) {
    LayerActs& a = s.layers[l];
    a.resid_pre = A.take<float>(size_t(N) * D);
    if (opt.sweep_cache) {
      if (l == 0) scratch_in = take_layer_internals(A, m, scratch, N, B, T, false, g16, false);
      gi[l] = take_sweep_cache(A, m, a, scratch, scratch_in, N, B, T, opt.keep_pattern, cache_act, opt.cache_keep);
    } else if (!opt.checkpoint) {
      gi[l] = take_layer_internals(A, m, a, N, B, T, opt.keep_pattern, g16, keep_act32);
    } else if (l == 0) {
      gi[0] = take_layer_internals(A, m, scratch, N, B, T, false, g16, keep_act32);
    } else {
      gi[l] = gi[0];
    }
  }
  s.resid_final = A.take<float>(size_t(N) * D);
  const GemmOut ln_f = A.take_gemm_in(g16, s.ln_f, s.ln_f16, size_t(N) * D);
  s.rstd_f = A.take<float>(N);
  s.logits = A.take<float>(size_t(N) * V);

  if (opt.input_embeddings) {
    be.copy(s.layers[0].resid_pre.get(), opt.input_embeddings, size_t(N) * D * sizeof(float));
  } else {
    be.embedding_forward(s.layers[0].resid_pre.get(), s.tokens.get(), m.w.embed, N,
                         c.embed_scale > 0 ? c.embed_scale : 1.0f);
    if (c.pos_embed) {  // + the learned position embedding of each token's position (pad rows: 0)
      DeviceArray<float> pe(be, size_t(N) * D);
      be.embedding_forward(pe.get(), s.pos.get(), m.w.pos_embed, N);
      be.add(s.layers[0].resid_pre.get(), s.layers[0].resid_pre.get(), pe.get(), int64_t(N) * D);
    }
  }
  const LayerPass pass{be, m, s, opt, dsegs.get()};
  bool ln1_done = false;  // layer l's ln1 already written by the previous layer's fused add
  for (int l = 0; l < L; ++l) {
    LayerActs& a = opt.checkpoint ? scratch : s.layers[l];
    if (opt.checkpoint) a.resid_pre = DeviceArray<float>::borrowed(be, s.layers[l].resid_pre.get(), size_t(N) * D);
    const bool last = l + 1 == L;
    const NextLayer next{last ? s.resid_final.get() : s.layers[l + 1].resid_pre.get(), last ? ln_f : gi[l + 1].ln1,
                         last ? s.rstd_f.get() : (opt.checkpoint ? scratch.rstd1.get() : s.layers[l + 1].rstd1.get()),
                         last ? m.w.final_norm : m.w.layers[l + 1].ln1,
                         last ? m.w.final_norm_b : m.w.layers[l + 1].ln1_b, last};
    ln1_done = pass.run(l, a, gi[l].ln1, gi[l].ln2, gi[l].act, ln1_done, &next);
  }
  be.linear_forward(s.logits.get(), ln_f, m.w.lm_head, N, false);
  if (c.final_softcap > 0) be.softcap_forward(s.logits.get(), int64_t(N) * V, c.final_softcap);
  return s;
}

LayerActs recompute_layer(Backend& be, const Model& m, const ForwardState& s, int l, std::shared_ptr<Arena>& arena) {
  PHI3_CHECK(l >= 0 && l < static_cast<int>(s.layers.size()), "recompute_layer: layer out of range");
  const int B = s.B, T = s.T;
  const size_t N = size_t(B) * T;
  const bool g16 = be.gemm_in_bf16();
  arena = std::make_shared<Arena>(be, layer_arena_bytes(m, B, T, g16, s.keep_mlp_post),
                                  "layer " + std::to_string(l) + " recomputed for " + std::to_string(B) + " x " +
                                      std::to_string(T) + " tokens");
  LayerActs a;
  a.resid_pre = DeviceArray<float>::borrowed(be, s.layers[l].resid_pre.get(), N * m.cfg.hidden_size);
  const LayerGemmIns g = take_layer_internals(*arena, m, a, N, B, T, false, g16, s.keep_mlp_post);
  DeviceArray<AttnSegment> dsegs = to_device(be, plain_segments(B, T));
  const ForwardOptions none;
  const LayerPass pass{be, m, s, none, dsegs.get()};
  pass.run(l, a, g.ln1, g.ln2, g.act, false, nullptr);
  return a;
}

std::vector<float> last_logits(Backend& be, const Model& m, const ForwardState& s) {
  const int V = m.cfg.vocab_size;
  std::vector<float> out(size_t(s.B) * V);
  for (int b = 0; b < s.B; ++b)
    be.download(out.data() + size_t(b) * V, s.logits.get() + (size_t(b) * s.T + s.T - 1) * V, V * sizeof(float));
  return out;
}

LogitDiff logit_diff(Backend& be, const Model& m, const ForwardState& s, const std::vector<int32_t>& answer,
                     const std::vector<int32_t>& other) {
  const int V = m.cfg.vocab_size;
  PHI3_CHECK(static_cast<int>(answer.size()) == s.B && static_cast<int>(other.size()) == s.B,
             "logit_diff: answer/other must have one token per batch row");
  DeviceArray<int32_t> da = to_device(be, answer), dothr = to_device(be, other);
  DeviceArray<float> ld(be, s.B);
  // Rows T-1 of each batch row: stride T*V between them.
  be.logit_diff_forward(ld.get(), s.logits.get() + size_t(s.T - 1) * V, int64_t(s.T) * V, da.get(), dothr.get(), s.B);
  LogitDiff r;
  r.per_row = ld.download();
  double sum = 0;
  for (float x : r.per_row) sum += x;
  r.mean = sum / s.B;
  return r;
}

void check_finite(Backend& be, const Model& m, const ForwardState& s, const char* run_name) {
  const int64_t N = s.N();
  const int L = static_cast<int>(s.layers.size());
  FiniteCheck fc(be, 4 * size_t(L) + 2);  // one flag a tensor, one download at the end
  auto scan = [&](const float* p, size_t n, int l, const char* hook) {
    const std::string where = (l >= 0 ? "blocks." + std::to_string(l) + "." : std::string()) + hook;
    const std::string run = run_name;
    fc.check(p, int64_t(n), int64_t(n) / std::max<int64_t>(N, 1), [run, where](const std::string& v, int64_t row) {
      return run + " run: non-finite value (" + v + ") first appears at " + where + ", row " + std::to_string(row);
    });
  };
  const int D = m.cfg.hidden_size;
  for (int l = 0; l < L; ++l) {
    const LayerActs& a = s.layers[l];
    scan(a.resid_pre.get(), size_t(N) * D, l, "hook_resid_pre");
    if (s.checkpointed) continue;  // the internals are not kept
    if (s.sweep_cache) {  // only what this cache kept
      if (s.cache_keep.z) scan(a.z.get(), size_t(N) * m.q_width(), l, "attn.hook_z");
      if (s.cache_keep.attn_out) scan(a.attn_out.get(), size_t(N) * D, l, "hook_attn_out");
      if (s.cache_keep.mlp_out) scan(a.mlp_out.get(), size_t(N) * D, l, "hook_mlp_out");
      continue;
    }
    scan(a.z.get(), size_t(N) * m.q_width(), l, "attn.hook_z");
    scan(a.attn_out.get(), size_t(N) * D, l, "hook_attn_out");
    scan(a.mlp_out.get(), size_t(N) * D, l, "hook_mlp_out");
  }
  scan(s.resid_final.get(), size_t(N) * D, L - 1, "hook_resid_post");
  scan(s.logits.get(), size_t(N) * m.cfg.vocab_size, -1, "logits");
  fc.throw_first();
}

ForwardState ForwardState::rows(Backend& be, int b0, int nb) const {
  PHI3_CHECK(b0 >= 0 && nb >= 0 && b0 + nb <= B, "forward state: rows out of range");
  PHI3_CHECK(layers.empty() || !layers[0].moe.y.size() || (b0 == 0 && nb == B),
             "forward state: the rows of a mixture-of-experts pass cannot be split (its expert rows are grouped "
             "across the batch)");
  ForwardState v;
  v.arena = arena;
  v.B = nb;
  v.T = T;
  const size_t r0 = size_t(b0) * T, n = size_t(nb) * T, N_all = size_t(B) * T;
  auto slice = [&](const auto& a) {
    using Elem = std::remove_pointer_t<decltype(a.get())>;
    if (!a.get() || N_all == 0) return DeviceArray<Elem>();
    const size_t w = a.size() / N_all;  // elements per row ([B,H,T,T] patterns: H*T per row)
    return DeviceArray<Elem>::borrowed(be, a.get() + r0 * w, n * w);
  };
  v.batch.B = nb;
  v.batch.T = T;
  v.batch.tokens.assign(batch.tokens.begin() + r0, batch.tokens.begin() + r0 + n);
  v.batch.pos.assign(batch.pos.begin() + r0, batch.pos.begin() + r0 + n);
  v.batch.pad.assign(batch.pad.begin() + b0, batch.pad.begin() + b0 + nb);
  for (const LayerActs& l : layers) {
    LayerActs x;
    x.resid_pre = slice(l.resid_pre);
    x.ln1 = slice(l.ln1);
    x.ln1_16 = slice(l.ln1_16);
    x.rstd1 = slice(l.rstd1);
    x.qkv = slice(l.qkv);
    x.q_rot = slice(l.q_rot);
    x.k_rot = slice(l.k_rot);
    x.v = slice(l.v);
    x.z = slice(l.z);
    x.z16 = slice(l.z16);
    x.pattern = slice(l.pattern);
    x.stats = slice(l.stats);
    x.attn_out = slice(l.attn_out);
    x.resid_mid = slice(l.resid_mid);
    x.ln2 = slice(l.ln2);
    x.ln2_16 = slice(l.ln2_16);
    x.rstd2 = slice(l.rstd2);
    x.gate_up = slice(l.gate_up);
    x.act = slice(l.act);
    x.act16 = slice(l.act16);
    x.mlp_out = slice(l.mlp_out);
    x.attn_raw = slice(l.attn_raw);
    x.mlp_raw = slice(l.mlp_raw);
    if (l.moe.y.size()) {  // the whole batch (checked above): the MoE buffers borrowed as they are
      auto all = [&](const auto& a) {
        using Elem = std::remove_const_t<std::remove_pointer_t<decltype(a.get())>>;
        return DeviceArray<Elem>::borrowed(be, const_cast<Elem*>(a.get()), a.size());
      };
      x.moe.router = all(l.moe.router);
      x.moe.ids = all(l.moe.ids);
      x.moe.gates = all(l.moe.gates);
      x.moe.slot = all(l.moe.slot);
      x.moe.src = all(l.moe.src);
      x.moe.x = all(l.moe.x);
      x.moe.h = all(l.moe.h);
      x.moe.act = all(l.moe.act);
      x.moe.y = all(l.moe.y);
      x.moe.count = l.moe.count;
      x.moe.host_ids = l.moe.host_ids;
    }
    x.rstd_pa = slice(l.rstd_pa);
    x.rstd_pm = slice(l.rstd_pm);
    v.layers.push_back(std::move(x));
  }
  v.resid_final = slice(resid_final);
  v.ln_f = slice(ln_f);
  v.ln_f16 = slice(ln_f16);
  v.rstd_f = slice(rstd_f);
  v.logits = slice(logits);
  v.tokens = slice(tokens);
  v.pos = slice(pos);
  v.pad = DeviceArray<int32_t>::borrowed(be, pad.get() + b0, size_t(nb));
  v.inv_freq = DeviceArray<float>::borrowed(be, inv_freq.get(), inv_freq.size());
  v.rope_table = DeviceArray<float>::borrowed(be, rope_table.get(), rope_table.size());
  v.rope = rope;
  v.inv_freq_local = DeviceArray<float>::borrowed(be, inv_freq_local.get(), inv_freq_local.size());
  v.rope_table_local = DeviceArray<float>::borrowed(be, rope_table_local.get(), rope_table_local.size());
  v.rope_local = rope_local;
  v.checkpointed = checkpointed;
  v.sweep_cache = sweep_cache;
  v.cache_keep = cache_keep;
  v.keep_mlp_post = keep_mlp_post;
  v.q_width = q_width;
  v.kv_width = kv_width;
  return v;
}

PairForward forward_pair(Backend& be, const Model& m, const Batch& clean, const Batch& corrupted,
                         const ForwardOptions& opt) {
  PHI3_CHECK(clean.T == corrupted.T && clean.B == corrupted.B, "forward_pair: the batches differ in shape");
  Batch both;
  both.B = clean.B + corrupted.B;
  both.T = clean.T;
  for (const Batch* b : {&clean, &corrupted}) {
    both.tokens.insert(both.tokens.end(), b->tokens.begin(), b->tokens.end());
    both.pos.insert(both.pos.end(), b->pos.begin(), b->pos.end());
    both.pad.insert(both.pad.end(), b->pad.begin(), b->pad.end());
  }
  PairForward p;
  if (m.cfg.moe()) {  // the grouped expert rows span the batch: two passes, views of themselves
    p.clean = forward(be, m, clean, opt);
    p.corrupted = forward(be, m, corrupted, opt);
    return p;  // (both stays empty)
  }
  p.both = forward(be, m, both, opt);
  p.clean = p.both.rows(be, 0, clean.B);
  p.corrupted = p.both.rows(be, clean.B, corrupted.B);
  return p;
}

}  // namespace phi3
