#include "patching/attribution.h"

#include <cmath>

#include "runtime/error.h"

namespace phi3 {

std::vector<float> attribution(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                               const Gradients& g, Hook hook) {
  const int L = m.cfg.num_hidden_layers, T = base.T, B = base.B;
  const int G = hook_heads(hook, m.cfg), W = hook_group_width(hook, m.cfg);
  const int64_t stride = hook_stride(hook, m);
  // Every layer in one reduction into one [L, T, G] buffer, then one download per hook.
  std::vector<const float*> ptrs(size_t(3) * L);  // a | c | grad, L each
  for (int l = 0; l < L; ++l) {
    ptrs[l] = source.hook_data(hook, l);
    ptrs[L + l] = base.hook_data(hook, l);
    ptrs[2 * L + l] = g.hook_grad(hook, l);
  }
  DeviceArray<const float*> dptrs = to_device(be, ptrs);
  DeviceArray<float> out(be, size_t(L) * T * G);
  be.attribution_reduce(out.get(), dptrs.get(), dptrs.get() + L, dptrs.get() + 2 * L, L, B, T, G, W, stride);
  const std::vector<float> all = out.download();
  std::vector<float> result;
  for (int l = 0; l < L; ++l) {
    const std::vector<float> v(all.begin() + size_t(l) * T * G, all.begin() + size_t(l + 1) * T * G);  // [T, G]
    if (hook_all_pos(hook)) {
      for (int h = 0; h < G; ++h) {
        double s = 0;
        for (int t = 0; t < T; ++t) s += v[size_t(t) * G + h];
        result.push_back(static_cast<float>(s));
      }
    } else {
      result.insert(result.end(), v.begin(), v.end());
    }
  }
  return result;
}

std::vector<std::vector<float>> attribution_per_prompt(Backend& be, const Model& m, const ForwardState& base,
                                                       const ForwardState& source, const Gradients& g, Hook hook) {
  const int L = m.cfg.num_hidden_layers, T = base.T, B = base.B;
  const int G = hook_heads(hook, m.cfg), W = hook_group_width(hook, m.cfg);
  const int64_t stride = hook_stride(hook, m);
  // (layer, batch row) pairs as the op's "layers", one row each: one launch, one download.
  const int LB = L * B;
  std::vector<const float*> ptrs(size_t(3) * LB);
  for (int l = 0; l < L; ++l)
    for (int b = 0; b < B; ++b) {
      const size_t i = size_t(l) * B + b, off = size_t(b) * T * stride;
      ptrs[i] = source.hook_data(hook, l) + off;
      ptrs[LB + i] = base.hook_data(hook, l) + off;
      ptrs[2 * LB + i] = g.hook_grad(hook, l) + off;
    }
  DeviceArray<const float*> dptrs = to_device(be, ptrs);
  DeviceArray<float> out(be, size_t(LB) * T * G);
  be.attribution_reduce(out.get(), dptrs.get(), dptrs.get() + LB, dptrs.get() + 2 * LB, LB, 1, T, G, W, stride);
  const std::vector<float> all = out.download();  // [L, B, T, G]
  std::vector<std::vector<float>> res(B);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l) {
      const float* v = all.data() + (size_t(l) * B + b) * T * G;
      if (hook_all_pos(hook)) {
        for (int h = 0; h < G; ++h) {
          double s = 0;
          for (int t = 0; t < T; ++t) s += v[size_t(t) * G + h];
          res[b].push_back(static_cast<float>(s));
        }
      } else {
        res[b].insert(res[b].end(), v, v + size_t(T) * G);
      }
    }
  return res;
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
    be.rotary_qkv_forward(qs.get(), ks.get(), vs.get(), source.layers[l].qkv.get(), base.pos.get(), N, H, KVH, HD,
                          base.rope);
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
    p.window = c.sliding_window;
    p.scale = 1.0f / std::sqrt(static_cast<float>(HD));
    be.attn_qk_fix(p);
    if (hook == Hook::KAllPos) {
      const std::vector<float> all = k_all.download();  // [B, KVH]
      for (int b = 0; b < B; ++b) res[b].insert(res[b].end(), all.begin() + size_t(b) * KVH, all.begin() + size_t(b + 1) * KVH);
      continue;
    }
    const std::vector<float> rows = (hb == Hook::Q ? q_est : k_est).download();  // [B*T, heads]
    for (int b = 0; b < B; ++b) {
      if (hook_all_pos(hook)) {  // q_all_pos: each row's softmax sees only its own query
        for (int h = 0; h < heads; ++h) {
          double s = 0;
          for (int t = 0; t < T; ++t) s += rows[(size_t(b) * T + t) * heads + h];
          res[b].push_back(static_cast<float>(s));
        }
      } else {
        res[b].insert(res[b].end(), rows.begin() + size_t(b) * T * heads, rows.begin() + size_t(b + 1) * T * heads);
      }
    }
  }
  return res;
}

std::vector<std::vector<float>> atp_star(Backend& be, const Model& m, const ForwardState& base,
                                         const ForwardState& source, const std::vector<int32_t>& answer,
                                         const std::vector<int32_t>& other, float scale,
                                         const std::vector<Hook>& hooks) {
  const int L = m.cfg.num_hidden_layers;
  bool qk = false;
  for (Hook h : hooks) qk = qk || hook_base(h) == Hook::Q || hook_base(h) == Hook::K;
  std::vector<std::vector<double>> acc(hooks.size());
  for (int drop = 0; drop < L; ++drop) {
    BackwardOptions bo;
    bo.keep_dpattern = qk;
    bo.drop_layer = drop;
    const Gradients g = backward(be, m, base, answer, other, scale, bo);
    for (size_t k = 0; k < hooks.size(); ++k) {
      const Hook h = hooks[k];
      const auto per = (hook_base(h) == Hook::Q || hook_base(h) == Hook::K) ? qk_fix_per_prompt(be, m, base, source, g, h)
                                                                            : attribution_per_prompt(be, m, base, source, g, h);
      if (acc[k].empty()) acc[k].assign(per.empty() ? 0 : per[0].size(), 0.0);
      for (const auto& v : per)
        for (size_t i = 0; i < v.size(); ++i) acc[k][i] += std::fabs(double(v[i]));
    }
  }
  std::vector<std::vector<float>> out(hooks.size());
  const double norm = 1.0 / std::max(1, L - 1);
  for (size_t k = 0; k < hooks.size(); ++k)
    for (double v : acc[k]) out[k].push_back(static_cast<float>(v * norm));
  return out;
}

}  // namespace phi3
