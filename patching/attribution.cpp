#include "patching/attribution.h"

#include <cmath>

#include "model/finite_check.h"
#include "model/qk_norm.h"
#include "runtime/error.h"

namespace phi3 {

namespace {

// Appends one layer's [T, G] values in the result layout: as they are, or summed over
// positions for an all-position hook.
void append_layer(std::vector<float>& out, const float* v, int T, int G, bool all_pos) {
  if (!all_pos) {
    out.insert(out.end(), v, v + size_t(T) * G);
    return;
  }
  for (int h = 0; h < G; ++h) {
    double s = 0;
    for (int t = 0; t < T; ++t) s += v[size_t(t) * G + h];
    out.push_back(static_cast<float>(s));
  }
}

// The source, base and gradient pointers of one layer of `hook` (a z-reduction for pattern hooks,
// see reduce_hook).
struct LayerPtrs {
  const float *source, *base, *grad;
};

// One reduction (one launch, one download) of the layers given: summed over batch rows
// ([1][cells]) or per row ([B][cells]), the (layer, row) pairs passed to the op as its "layers"
// of one row each; cells in layer order, each layer in the result layout.
std::vector<std::vector<float>> reduce_layers(Backend& be, const Model& m, Hook hook, bool per_row, int B, int T,
                                              const std::vector<LayerPtrs>& layers) {
  const int G = hook_heads(hook, m.cfg), W = hook_group_width(hook, m.cfg);
  const int64_t stride = hook_stride(hook, m);
  const int nl = static_cast<int>(layers.size());
  const int R = per_row ? B : 1, n = nl * R;
  std::vector<const float*> ptrs(size_t(3) * n);  // a | c | grad
  for (int l = 0; l < nl; ++l)
    for (int r = 0; r < R; ++r) {
      const size_t i = size_t(l) * R + r, off = size_t(r) * T * stride;
      ptrs[i] = layers[l].source + off;
      ptrs[n + i] = layers[l].base + off;
      ptrs[2 * n + i] = layers[l].grad + off;
    }
  DeviceArray<const float*> dptrs = to_device(be, ptrs);
  DeviceArray<float> out(be, size_t(n) * T * G);
  be.attribution_reduce(out.get(), dptrs.get(), dptrs.get() + n, dptrs.get() + 2 * n, n, per_row ? 1 : B, T, G, W,
                        stride);
  const std::vector<float> all = out.download();  // [nl, R, T, G]
  std::vector<std::vector<float>> res(R);
  for (int r = 0; r < R; ++r)
    for (int l = 0; l < nl; ++l) append_layer(res[r], all.data() + (size_t(l) * R + r) * T * G, T, G, hook_all_pos(hook));
  return res;
}

// The attribution of `hook` in one reduction over every layer.
std::vector<std::vector<float>> reduce_hook(Backend& be, const Model& m, const ForwardState& base,
                                            const ForwardState& source, const Gradients& g, Hook hook, bool per_row) {
  const int L = m.cfg.num_hidden_layers;
  // A pattern node acts on the metric through its head's z = A v only, so its estimate
  // sum_j dA[t,j] dM/dA[t,j] = dM/dz_t . (A_src v - A_base v)_t: a z-hook reduction over the z
  // of the two patterns (base values; the same op for both, so equal rows cancel exactly).
  // This is the gradient of z = A v with respect to every entry of A, also where the base
  // run masks a key the source run attends (rows with different padding).
  const bool pattern = hook_is_pattern(hook);
  std::vector<DeviceArray<float>> zs(pattern ? L : 0), zb(pattern ? L : 0);
  for (int l = 0; pattern && l < L; ++l) {
    zs[l] = z_from_pattern(be, m, source.hook_data(hook, l), base, l);
    zb[l] = z_from_pattern(be, m, base.hook_data(hook, l), base, l);
  }
  std::vector<LayerPtrs> layers(L);
  for (int l = 0; l < L; ++l)
    layers[l] = {pattern ? zs[l].get() : source.hook_data(hook, l), pattern ? zb[l].get() : base.hook_data(hook, l),
                 g.hook_grad(pattern ? Hook::Z : hook, l)};
  return reduce_layers(be, m, hook, per_row, base.B, base.T, layers);
}

}  // namespace

std::vector<float> attribution(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                               const Gradients& g, Hook hook) {
  return reduce_hook(be, m, base, source, g, hook, false)[0];
}

std::vector<std::vector<float>> attribution_per_prompt(Backend& be, const Model& m, const ForwardState& base,
                                                       const ForwardState& source, const Gradients& g, Hook hook) {
  return reduce_hook(be, m, base, source, g, hook, true);
}

std::vector<float> attribution_qk_fix(Backend& be, const Model& m, const ForwardState& base,
                                      const ForwardState& source, const Gradients& g, Hook hook) {
  const std::vector<std::vector<float>> per = qk_fix_per_prompt(be, m, base, source, g, hook);
  std::vector<float> sum(per.empty() ? 0 : per[0].size());
  for (size_t i = 0; i < sum.size(); ++i) {
    double s = 0;
    for (const auto& v : per) s += v[i];
    sum[i] = static_cast<float>(s);
  }
  return sum;
}

std::vector<std::vector<float>> qk_fix_per_prompt(Backend& be, const Model& m, const ForwardState& base,
                                                  const ForwardState& source, const Gradients& g, Hook hook) {
  const Hook hb = hook_base(hook);
  if (hb != Hook::Q && hb != Hook::K)
    throw Error("the AtP* QK fix applies to q and k hooks, not " + hook_name(hook));
  const ModelConfig& c = m.cfg;
  const int L = c.num_hidden_layers, B = base.B, T = base.T, H = c.num_attention_heads, KVH = c.num_key_value_heads;
  const int HD = c.head_dim, N = B * T;
  PHI3_CHECK(static_cast<int>(g.dpattern.size()) == L, "qk fix: the backward did not keep d pattern");
  DeviceArray<float> qs(be, size_t(N) * m.q_width()), ks(be, size_t(N) * m.kv_width()), vs(be, size_t(N) * m.kv_width());
  DeviceArray<float> q_est(be, size_t(N) * H), k_est(be, size_t(N) * KVH), k_all(be, size_t(B) * KVH);
  const int heads = hb == Hook::Q ? H : KVH;
  std::vector<std::vector<float>> res(B);
  for (int l = 0; l < L; ++l) {
    const LayerActs& a = base.layers[l];
    PHI3_CHECK(a.pattern.size() > 0, "qk fix: the base forward did not keep the pattern");
    // The source run's pre-rotary q and k, rotated at the base run's positions.
    DeviceArray<float> qkn;  // the source's q and k normalized per head (Qwen3)
    be.rotary_qkv_forward(qs.get(), ks.get(), vs.get(), qk_norm_input(be, m, l, source.layers[l].qkv.get(), N, qkn),
                          base.pos.get(), N, H, KVH, HD,
                          base.layer_rope(c, l));
    QkFixParams p;
    p.q = a.q_rot.get();
    p.k = a.k_rot.get();
    p.q_src = qs.get();
    p.k_src = ks.get();
    p.pattern = a.pattern.get();
    p.dpattern = g.dpattern[l].get();
    p.pad = base.pad.get();
    p.q_est = q_est.get();
    p.k_est = k_est.get();
    p.k_all_est = k_all.get();
    p.q_stride = m.q_width();
    p.kv_stride = m.kv_width();
    p.B = B;
    p.T = T;
    p.H = H;
    p.KVH = KVH;
    p.HD = HD;
    const AttnParams ap = attention_params(m, T, l);  // the model's score scale and soft-cap
    p.window = ap.window;
    p.scale = ap.scale;
    p.softcap = ap.softcap;
    be.attn_qk_fix(p);
    if (hook == Hook::KAllPos) {
      const std::vector<float> all = k_all.download();  // [B, KVH]
      for (int b = 0; b < B; ++b) res[b].insert(res[b].end(), all.begin() + size_t(b) * KVH, all.begin() + size_t(b + 1) * KVH);
      continue;
    }
    // q_all_pos: each row's softmax sees only its own query, so the rows' estimates add up.
    const std::vector<float> rows = (hb == Hook::Q ? q_est : k_est).download();  // [B*T, heads]
    for (int b = 0; b < B; ++b) append_layer(res[b], rows.data() + size_t(b) * T * heads, T, heads, hook_all_pos(hook));
  }
  return res;
}

std::vector<std::vector<std::vector<float>>> attribution_streamed(Backend& be, const Model& m, const ForwardState& base,
                                                                 const ForwardState& source,
                                                                 const std::vector<int32_t>& answer,
                                                                 const std::vector<int32_t>& other, float scale,
                                                                 const std::vector<Hook>& hooks, bool per_row,
                                                                 BackwardOptions bo, const std::string& check_name) {
  return attribution_streamed(be, m, base, source, logit_diff_spec(answer, other), scale, hooks, per_row, std::move(bo),
                              check_name);
}

std::vector<std::vector<std::vector<float>>> attribution_streamed(Backend& be, const Model& m, const ForwardState& base,
                                                                 const ForwardState& source, const MetricSpec& metric,
                                                                 float scale, const std::vector<Hook>& hooks,
                                                                 bool per_row, BackwardOptions bo,
                                                                 const std::string& check_name) {
  const int L = m.cfg.num_hidden_layers, B = base.B, T = base.T;
  for (Hook h : hooks)
    if (hook_is_pattern(h)) throw Error("attribution of " + hook_name(h) + " needs the attention patterns: not in a streamed pass");
  bool internals = false;  // a hook inside the layer: the source layer is recomputed too
  for (Hook h : hooks) internals = internals || (h != Hook::ResidPre && h != Hook::ResidPost);
  const int R = per_row ? B : 1;
  std::vector<std::vector<std::vector<float>>> layer_rows(hooks.size() * L);
  bo.keep_layers = false;
  // The gradient checks: one flag a tensor, read once after the pass.
  FiniteCheck fc(be, check_name.empty() ? 0 : kFiniteChecksPerLayer * L);
  bo.on_layer = [&](int l, const LayerActs& a, const Gradients& g) {
    if (!check_name.empty()) {
      check_finite_layer(fc, m, g, l, check_name.c_str());
      fc.flush();  // launched before this layer's gradients are freed
    }
    std::shared_ptr<Arena> arena;
    LayerActs recomputed;
    const LayerActs* src = &source.layers[l];
    if (source.checkpointed && internals) {
      recomputed = recompute_layer(be, m, source, l, arena);
      src = &recomputed;
    }
    for (size_t k = 0; k < hooks.size(); ++k) {
      const Hook h = hooks[k];
      const LayerPtrs p{hook_data_of(*src, source.resid_post(l), source.q_width, source.kv_width, h),
                        hook_data_of(a, base.resid_post(l), base.q_width, base.kv_width, h), g.hook_grad(h, l)};
      layer_rows[k * L + l] = reduce_layers(be, m, h, per_row, B, T, {p});
    }
  };
  backward(be, m, base, metric, scale, bo);
  fc.throw_first();
  std::vector<std::vector<std::vector<float>>> out(hooks.size(), std::vector<std::vector<float>>(R));
  for (size_t k = 0; k < hooks.size(); ++k)
    for (int l = 0; l < L; ++l)
      for (int r = 0; r < R; ++r) {
        const std::vector<float>& v = layer_rows[k * L + l][r];
        out[k][r].insert(out[k][r].end(), v.begin(), v.end());
      }
  return out;
}

std::vector<std::vector<float>> atp_star(Backend& be, const Model& m, const ForwardState& base,
                                         const ForwardState& source, const std::vector<int32_t>& answer,
                                         const std::vector<int32_t>& other, float scale,
                                         const std::vector<Hook>& hooks) {
  return atp_star(be, m, base, source, logit_diff_spec(answer, other), scale, hooks);
}

std::vector<std::vector<float>> atp_star(Backend& be, const Model& m, const ForwardState& base,
                                         const ForwardState& source, const MetricSpec& metric, float scale,
                                         const std::vector<Hook>& hooks) {
  const int L = m.cfg.num_hidden_layers;
  bool qk = false;
  bool neurons = false;
  for (Hook h : hooks) qk = qk || hook_base(h) == Hook::Q || hook_base(h) == Hook::K;
  for (Hook h : hooks) neurons = neurons || h == Hook::MlpPost;
  std::vector<std::vector<double>> acc(hooks.size());
  auto add_abs = [&](size_t k, const std::vector<std::vector<float>>& per) {
    if (acc[k].empty()) acc[k].assign(per.empty() ? 0 : per[0].size(), 0.0);
    for (const auto& v : per)
      for (size_t i = 0; i < v.size(); ++i) acc[k][i] += std::fabs(double(v[i]));
  };
  if (base.checkpointed && qk)
    throw Error("AtP*'s QK fix needs every layer's [B,H,T,T] attention pattern, which a checkpointed (long-prompt) "
                "pass does not keep: use attribution for q and k there, or a shorter prompt");
  for (int drop = 0; drop < L; ++drop) {
    BackwardOptions bo;
    bo.keep_dpattern = qk;
    bo.drop_layer = drop;
    bo.keep_dmlp_post = neurons;
    if (base.checkpointed) {  // one layer's gradients at a time, layers recomputed
      const auto per = attribution_streamed(be, m, base, source, metric, scale, hooks, true, bo, "");
      for (size_t k = 0; k < hooks.size(); ++k) add_abs(k, per[k]);
      continue;
    }
    const Gradients g = backward(be, m, base, metric, scale, bo);
    for (size_t k = 0; k < hooks.size(); ++k) {
      const Hook h = hooks[k];
      add_abs(k, (hook_base(h) == Hook::Q || hook_base(h) == Hook::K) ? qk_fix_per_prompt(be, m, base, source, g, h)
                                                                      : attribution_per_prompt(be, m, base, source, g, h));
    }
  }
  std::vector<std::vector<float>> out(hooks.size());
  const double norm = 1.0 / std::max(1, L - 1);
  for (size_t k = 0; k < hooks.size(); ++k)
    for (double v : acc[k]) out[k].push_back(static_cast<float>(v * norm));
  return out;
}

}  // namespace phi3
