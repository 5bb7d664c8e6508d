#include "patching/attribution.h"

namespace phi3 {

std::vector<float> attribution(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                               const Gradients& g, Hook hook) {
  const int L = m.cfg.num_hidden_layers, T = base.T, B = base.B;
  const bool per_head = hook_is_per_head(hook);
  const int G = per_head ? m.cfg.num_attention_heads : 1;
  const int W = per_head ? m.cfg.head_dim : m.cfg.hidden_size;
  DeviceArray<float> out(be, size_t(T) * G);
  std::vector<float> result;
  for (int l = 0; l < L; ++l) {
    be.attribution_reduce(out.get(), source.hook_data(hook, l), base.hook_data(hook, l), g.hook_grad(hook, l), B, T,
                          G, W);
    std::vector<float> v = out.download();  // [T, G]
    if (hook == Hook::ZAllPos) {
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

}  // namespace phi3
