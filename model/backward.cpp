#include "model/backward.h"

#include <algorithm>
#include <cmath>

#include "model/finite_check.h"
#include "model/moe.h"
#include "model/qk_norm.h"
#include "runtime/error.h"

namespace phi3 {

const float* Gradients::hook_grad(Hook h, int l) const {
  const LayerGrads& g = layers.at(l);
  if (hook_is_pattern(h)) {  // (zeroed for a dropped layer by backward itself)
    if (dpattern.empty()) throw Error("the gradient of hook_pattern was not kept by this backward pass");
    return dpattern.at(l).get();
  }
  if (h == Hook::MlpPost && l != dropped_layer && !g.act.size())
    throw Error("the gradient of hook_mlp_post was not kept by this backward pass (BackwardOptions::keep_dmlp_post)");
  if (l == dropped_layer && h != Hook::ResidPre && h != Hook::ResidMid && h != Hook::ResidPost)
    return zeros.get();  // GradDrop: the dropped layer's own nodes
  switch (h) {
    case Hook::ResidPre: return g.resid_pre.get();
    case Hook::ResidMid:
    case Hook::AttnOut: return g.resid_mid.get();
    case Hook::ResidPost:
    case Hook::MlpOut: return g.resid_post.get();
    case Hook::Z:
    case Hook::ZAllPos: return g.z.get();
    case Hook::Q:
    case Hook::QAllPos: return g.qkv.get();
    case Hook::K:
    case Hook::KAllPos: return g.qkv.get() + q_width;
    case Hook::V:
    case Hook::VAllPos: return g.qkv.get() + q_width + kv_width;
    case Hook::MlpPost: return g.act.get();
    case Hook::Router:
      if (!g.router.size()) throw Error("hook_router has a gradient only on a mixture-of-experts model");
      return g.router.get();
    default: break;
  }
  return nullptr;
}

TensorView Gradients::gradient(const Backend& be, const Model& m, int B, int T, const std::string& name) const {
  const int64_t Bn = B, Tn = T, N = Bn * T, D = m.cfg.hidden_size, H = m.cfg.num_attention_heads;
  const int64_t KVH = m.cfg.num_key_value_heads, HD = m.cfg.head_dim;
  const int64_t QW = m.q_width(), KVW = m.kv_width(), QKVW = m.qkv_width();
  int l;
  std::string h;
  split_hook_name(name, static_cast<int>(layers.size()), l, h);
  const LayerGrads& g = layers[l];
  if (h == "hook_resid_pre") return make_view(be, g.resid_pre.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_resid_mid" || h == "hook_attn_out") return make_view(be, g.resid_mid.get(), {Bn, Tn, D}, N, D, D);
  if (h == "hook_resid_post" || h == "hook_mlp_out") return make_view(be, g.resid_post.get(), {Bn, Tn, D}, N, D, D);
  if (h == "attn.hook_z") return make_view(be, g.z.get(), {Bn, Tn, H, HD}, N, QW, QW);
  if (h == "attn.hook_q") return make_view(be, g.qkv.get(), {Bn, Tn, H, HD}, N, QW, QKVW);
  if (h == "attn.hook_k") return make_view(be, g.qkv.get() + QW, {Bn, Tn, KVH, HD}, N, KVW, QKVW);
  if (h == "attn.hook_v") return make_view(be, g.qkv.get() + QW + KVW, {Bn, Tn, KVH, HD}, N, KVW, QKVW);
  if (h == "attn.hook_rot_q") return make_view(be, g.q_rot.get(), {Bn, Tn, H, HD}, N, QW, QW);
  if (h == "attn.hook_rot_k") return make_view(be, g.k_rot.get(), {Bn, Tn, KVH, HD}, N, KVW, KVW);
  if (h == "mlp.hook_router" && g.router.size()) {
    const int64_t E = m.cfg.num_experts;
    return make_view(be, g.router.get(), {Bn, Tn, E}, N, E, E);
  }
  throw Error("no gradient is kept for '" + name + "'");
}

Gradients backward(Backend& be, const Model& m, const ForwardState& s, const std::vector<int32_t>& answer,
                   const std::vector<int32_t>& other, float scale, const BackwardOptions& opt) {
  return backward(be, m, s, logit_diff_spec(answer, other), scale, opt);
}

Gradients backward(Backend& be, const Model& m, const ForwardState& s, const MetricSpec& metric, float scale,
                   const BackwardOptions& opt) {
  const bool keep_dpattern = opt.keep_dpattern;
  const ModelConfig& c = m.cfg;
  const int B = s.B, T = s.T, L = c.num_hidden_layers;
  const int D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int H = c.num_attention_heads, KVH = c.num_key_value_heads, HD = c.head_dim;
  const int QKVW = m.qkv_width(), QW = m.q_width(), KVW = m.kv_width();
  const int N = B * T;
  PHI3_CHECK(!s.layers.empty() && (s.checkpointed || s.layers[0].stats.size() > 0),
             "backward: the forward pass must keep the attention stats");
  PHI3_CHECK(!s.sweep_cache, "backward: a sweep-cache forward pass keeps no per-layer norms or MLP inputs");
  PHI3_CHECK(metric.B() == B, "backward: one answer per row");

  // d logits at the last position only: scale/B times d metric(row b) / d logits (logit
  // difference: +scale/B at answer, -scale/B at other).
  DeviceArray<float> dlogits(be, size_t(B) * V);
  metric_dlogits(be, m, s, metric, scale / static_cast<float>(B), dlogits.get());
  if (c.final_softcap > 0) {  // through the final soft-cap: d capped / d raw from the capped logits
    std::vector<int32_t> rows(B);
    for (int b = 0; b < B; ++b) rows[b] = b * T + T - 1;
    DeviceArray<int32_t> drows = to_device(be, rows);
    DeviceArray<float> last(be, size_t(B) * V);
    be.copy_rows(last.get(), V, nullptr, s.logits.get(), V, drows.get(), B, V);
    be.softcap_backward(dlogits.get(), last.get(), int64_t(B) * V, c.final_softcap);
  }
  DeviceArray<float> dln_last(be, size_t(B) * D);
  be.linear_backward(dln_last.get(), dlogits.get(), m.w.lm_head, B, false);
  std::vector<int32_t> last_rows(B);
  for (int b = 0; b < B; ++b) last_rows[b] = b * T + T - 1;
  DeviceArray<int32_t> dlast = to_device(be, last_rows);
  DeviceArray<float> dln_f(be, size_t(N) * D);
  be.zero(dln_f.get(), dln_f.size() * sizeof(float));
  be.copy_rows(dln_f.get(), D, dlast.get(), dln_last.get(), D, nullptr, B, D);

  DeviceArray<float> dresid(be, size_t(N) * D);
  be.zero(dresid.get(), dresid.size() * sizeof(float));
  be.rmsnorm_backward(dresid.get(), dln_f.get(), s.resid_final.get(), m.w.final_norm, s.rstd_f.get(), N, D,
                      c.norm_layer);

  std::vector<AttnSegment> segs(B);
  for (int b = 0; b < B; ++b) segs[b] = AttnSegment{b, 0, b * T, 0, b * T};
  DeviceArray<AttnSegment> dsegs = to_device(be, segs);

  const size_t dense_f = c.moe() ? 0 : size_t(F);  // a MoE model's expert buffers are moe_backward's
  const size_t dense_gu = c.moe() ? 0 : size_t(m.gate_up_width());
  DeviceArray<float> dact(be, size_t(N) * dense_f), dgu(be, size_t(N) * dense_gu), dln(be, size_t(N) * D);
  DeviceArray<float> dv(be, size_t(N) * KVW);
  DeviceArray<float> draw;  // post_norms: d of o_proj's / down_proj's output (before its norm)
  if (c.post_norms) draw = DeviceArray<float>(be, size_t(N) * D);
  // d out -> d raw through a post-norm (Gemma 2), else d out itself.
  auto through_post_norm = [&](const float* dout, const float* raw, const float* w, const float* rstd) -> const float* {
    if (!c.post_norms) return dout;
    be.zero(draw.get(), draw.size() * sizeof(float));
    be.rmsnorm_backward(draw.get(), dout, raw, w, rstd, N, D);
    return draw.get();
  };

  Gradients g;
  g.layers.resize(L);
  g.q_width = QW;
  g.kv_width = KVW;
  if (keep_dpattern) g.dpattern.resize(L);
  PHI3_CHECK(opt.drop_layer >= -1 && opt.drop_layer < L, "backward: drop_layer out of range");
  g.dropped_layer = opt.drop_layer;
  if (opt.drop_layer >= 0) {
    g.zeros = DeviceArray<float>(be, size_t(N) * std::max({D, QKVW, opt.keep_dmlp_post ? F : 0, c.num_experts}));
    be.zero(g.zeros.get(), g.zeros.size() * sizeof(float));
  }
  // Layer l is done: hand it to on_layer, then (keep_layers off) drop what layer l-1 no longer needs.
  std::shared_ptr<Arena> layer_arena;  // a checkpointed pass's recomputed layer
  auto layer_done = [&](int l, const LayerActs& a) {
    if (opt.on_layer) opt.on_layer(l, a, g);
    if (!opt.keep_layers) {
      if (l + 1 < L) g.layers[l + 1] = LayerGrads();
      g.layers[l].resid_post = DeviceArray<float>();
      if (keep_dpattern && l + 1 < L) g.dpattern[l + 1] = DeviceArray<float>();
    }
  };
  for (int l = L - 1; l >= 0; --l) {
    LayerActs recomputed;
    if (s.checkpointed) {
      layer_arena.reset();  // the previous layer's first
      recomputed = recompute_layer(be, m, s, l, layer_arena);
    }
    const LayerActs& a = s.checkpointed ? recomputed : s.layers[l];
    const LayerWeights& w = m.w.layers[l];
    LayerGrads& lg = g.layers[l];
    // d resid_post(l) is d resid_pre(l+1), already computed (the final norm's for the last
    // layer): kept once, borrowed here, no copy.
    if (l == L - 1)
      lg.resid_post = std::move(dresid);
    else
      lg.resid_post = DeviceArray<float>::borrowed(be, g.layers[l + 1].resid_pre.get(), size_t(N) * D);
    const float* dpost = lg.resid_post.get();
    if (l == opt.drop_layer) {  // GradDrop: nothing flows into this layer's blocks
      lg.resid_mid = DeviceArray<float>(be, size_t(N) * D);
      be.copy(lg.resid_mid.get(), dpost, size_t(N) * D * sizeof(float));
      lg.resid_pre = DeviceArray<float>(be, size_t(N) * D);
      be.copy(lg.resid_pre.get(), dpost, size_t(N) * D * sizeof(float));
      if (keep_dpattern) {
        g.dpattern[l] = DeviceArray<float>(be, size_t(B) * H * T * T);
        be.zero(g.dpattern[l].get(), g.dpattern[l].size() * sizeof(float));
      }
      layer_done(l, a);
      continue;  // z, q_rot, k_rot, qkv: see hook_grad (zeros)
    }

    // MLP: resid_post = resid_mid + down(swiglu(gate_up(rmsnorm(resid_mid))))
    if (c.moe()) {  // the MoE block, its routing held fixed (AtP through the gate weights)
      lg.router = DeviceArray<float>(be, size_t(N) * c.num_experts);
      moe_backward(be, m, l, a.moe, dpost, dln.get(), N, lg.router.get());
    } else {
    float* dact_l = dact.get();
    if (opt.keep_dmlp_post) {  // this layer's d hook_mlp_post kept (written in place, no copy)
      lg.act = DeviceArray<float>(be, size_t(N) * F);
      dact_l = lg.act.get();
    }
    be.linear_backward(dact_l, through_post_norm(dpost, a.mlp_raw.get(), w.post_mlp, a.rstd_pm.get()), w.down, N, false);
    be.swiglu_backward(dgu.get(), dact_l, a.gate_up.get(), N, F, mlp_act(m.cfg));
    be.linear_backward(dln.get(), dgu.get(), w.gate_up, N, false);
    }
    lg.resid_mid = DeviceArray<float>(be, size_t(N) * D);
    be.copy(lg.resid_mid.get(), dpost, size_t(N) * D * sizeof(float));
    be.rmsnorm_backward(lg.resid_mid.get(), dln.get(), a.resid_mid.get(), w.ln2, a.rstd2.get(), N, D, c.norm_layer);

    // Attention: resid_mid = resid_pre + o(attn(rotary(qkv(rmsnorm(resid_pre)))))
    lg.z = DeviceArray<float>(be, size_t(N) * QW);
    be.linear_backward(lg.z.get(), through_post_norm(lg.resid_mid.get(), a.attn_raw.get(), w.post_attn, a.rstd_pa.get()),
                       w.o, N, false);
    lg.q_rot = DeviceArray<float>(be, size_t(N) * QW);
    lg.k_rot = DeviceArray<float>(be, size_t(N) * KVW);
    AttnBackwardParams bp;
    bp.fwd = plain_attention_params(m, s, a, l, dsegs.get());
    bp.fwd.tensor_cores = be.gemm_in_bf16();  // as the forward that made the stats
    bp.dz = lg.z.get();
    bp.dq = lg.q_rot.get();
    bp.dk = lg.k_rot.get();
    bp.dv = dv.get();
    if (keep_dpattern) {
      g.dpattern[l] = DeviceArray<float>(be, size_t(B) * H * T * T);
      be.zero(g.dpattern[l].get(), g.dpattern[l].size() * sizeof(float));
      bp.dpattern = g.dpattern[l].get();
    }
    be.attention_backward(bp);
    lg.qkv = DeviceArray<float>(be, size_t(N) * QKVW);
    const RopeParams& rope = s.layer_rope(c, l);
    be.rotary_backward(lg.qkv.get(), QKVW, lg.q_rot.get(), QW, s.pos.get(), N, H, HD, rope);
    be.rotary_backward(lg.qkv.get() + QW, QKVW, lg.k_rot.get(), KVW, s.pos.get(), N, KVH, HD, rope);
    be.copy_rows(lg.qkv.get() + QW + KVW, QKVW, nullptr, dv.get(), KVW, nullptr, N, KVW);
    qk_norm_backward(be, m, l, lg.qkv.get(), a.qkv.get(), N);  // to the pre-norm q/k (hook_q/k)
    be.linear_backward(dln.get(), lg.qkv.get(), w.qkv, N, false);
    lg.resid_pre = DeviceArray<float>(be, size_t(N) * D);
    be.copy(lg.resid_pre.get(), lg.resid_mid.get(), size_t(N) * D * sizeof(float));
    be.rmsnorm_backward(lg.resid_pre.get(), dln.get(), a.resid_pre.get(), w.ln1, a.rstd1.get(), N, D, c.norm_layer);
    layer_done(l, a);
  }
  return g;
}

void check_finite_layer(FiniteCheck& fc, const Model& m, const Gradients& g, int l, const char* run_name) {
  const std::string run = run_name;
  auto scan = [&](const DeviceArray<float>& a, int width, const char* hook) {
    const std::string where = "blocks." + std::to_string(l) + "." + hook;
    fc.check(a.get(), int64_t(a.size()), width, [run, where](const std::string& v, int64_t row) {
      return run + ": non-finite gradient (" + v + ") first appears at " + where + ", row " + std::to_string(row) +
             "; no results were written";
    });
  };
  const int D = m.cfg.hidden_size;
  const LayerGrads& lg = g.layers.at(l);
  scan(lg.resid_post, D, "hook_resid_post");
  scan(lg.resid_mid, D, "hook_resid_mid");
  scan(lg.z, m.q_width(), "attn.hook_z");
  scan(lg.resid_pre, D, "hook_resid_pre");
}

void check_finite(Backend& be, const Model& m, const Gradients& g, const char* run_name) {
  FiniteCheck fc(be, kFiniteChecksPerLayer * g.layers.size());
  for (int l = static_cast<int>(g.layers.size()) - 1; l >= 0; --l) check_finite_layer(fc, m, g, l, run_name);
  fc.throw_first();
}

}  // namespace phi3
