#include "patching/attribution.h"

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

}  // namespace phi3
