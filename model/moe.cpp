#include "model/moe.h"

#include "runtime/error.h"

namespace phi3 {

void moe_group(const std::vector<int32_t>& ids, int N, int E, int k, std::vector<int32_t>& src,
               std::vector<int32_t>& slot, std::vector<int>& count) {
  const size_t M = size_t(N) * k;
  std::vector<int32_t> e_of(M);
  count.assign(size_t(E), 0);
  for (size_t i = 0; i < M; ++i) {
    const int32_t e = ids[i] >= 0 && ids[i] < E ? ids[i] : static_cast<int32_t>(i % size_t(E));
    e_of[i] = e;
    ++count[size_t(e)];
  }
  std::vector<int32_t> next(size_t(E) + 1, 0);
  for (int e = 0; e < E; ++e) next[size_t(e) + 1] = next[size_t(e)] + count[size_t(e)];
  src.assign(M, 0);
  slot.assign(M, 0);
  for (size_t i = 0; i < M; ++i) {  // token order within each expert
    const int32_t r = next[size_t(e_of[i])]++;
    src[size_t(r)] = static_cast<int32_t>(i / size_t(k));
    slot[i] = r;
  }
}

namespace {
template <typename T>
void ensure(Backend& be, DeviceArray<T>& a, size_t n) {
  if (a.size() != n || (n && !a.get())) a = DeviceArray<T>(be, n);
}
}  // namespace

void moe_forward(Backend& be, const Model& m, int l, const float* x, float* out, int N, MoeActs& a,
                 const std::function<void(float*)>& patch_logits) {
  const ModelConfig& c = m.cfg;
  const LayerWeights& w = m.w.layers.at(static_cast<size_t>(l));
  const int E = c.num_experts, k = c.experts_per_tok, D = c.hidden_size, F = c.moe_intermediate_size;
  const size_t M = size_t(N) * k;
  PHI3_CHECK(c.moe() && static_cast<int>(w.expert_gate_up.size()) == E, "moe_forward: not a MoE layer");
  ensure(be, a.router, size_t(N) * E);
  ensure(be, a.ids, M);
  ensure(be, a.gates, M);
  ensure(be, a.slot, M);
  ensure(be, a.src, M);
  ensure(be, a.x, M * D);
  ensure(be, a.h, M * 2 * F);
  ensure(be, a.act, M * F);
  ensure(be, a.y, M * D);
  if (N == 0) return;
  be.linear_forward(a.router.get(), x, w.router, N, false);
  if (patch_logits) patch_logits(a.router.get());
  be.moe_route_forward(a.ids.get(), a.gates.get(), a.router.get(), N, E, k, c.moe_renorm);
  a.host_ids.assign(M, -1);
  be.download(a.host_ids.data(), a.ids.get(), M * sizeof(int32_t));
  std::vector<int32_t> src, slot;
  moe_group(a.host_ids, N, E, k, src, slot, a.count);
  be.upload(a.src.get(), src.data(), M * sizeof(int32_t));
  be.upload(a.slot.get(), slot.data(), M * sizeof(int32_t));
  be.copy_rows(a.x.get(), D, nullptr, x, D, a.src.get(), static_cast<int>(M), D);
  size_t off = 0;
  for (int e = 0; e < E; ++e) {
    const int n = a.count[size_t(e)];
    if (n) be.linear_forward(a.h.get() + off * 2 * F, a.x.get() + off * D, w.expert_gate_up[size_t(e)], n, false);
    off += size_t(n);
  }
  be.swiglu_forward(a.act.get(), a.h.get(), static_cast<int>(M), F, mlp_act(c));
  off = 0;
  for (int e = 0; e < E; ++e) {
    const int n = a.count[size_t(e)];
    if (n) be.linear_forward(a.y.get() + off * D, a.act.get() + off * F, w.expert_down[size_t(e)], n, false);
    off += size_t(n);
  }
  be.moe_combine_forward(out, a.y.get(), a.slot.get(), a.gates.get(), N, k, D);
}

void moe_backward(Backend& be, const Model& m, int l, const MoeActs& a, const float* dout, float* dx, int N,
                  float* dlogits_out) {
  const ModelConfig& c = m.cfg;
  const LayerWeights& w = m.w.layers.at(static_cast<size_t>(l));
  const int E = c.num_experts, k = c.experts_per_tok, D = c.hidden_size, F = c.moe_intermediate_size;
  const size_t M = size_t(N) * k;
  PHI3_CHECK(a.y.size() == M * D && static_cast<int>(a.count.size()) == E,
             "moe_backward: the forward's MoE activations of layer " + std::to_string(l) + " are not kept");
  if (N == 0) return;
  DeviceArray<float> dy(be, M * D), dgates(be, M), dact(be, M * F), dh(be, M * 2 * F);
  DeviceArray<float> dlogits = dlogits_out ? DeviceArray<float>::borrowed(be, dlogits_out, size_t(N) * E)
                                           : DeviceArray<float>(be, size_t(N) * E);
  be.moe_combine_backward(dy.get(), dgates.get(), dout, a.y.get(), a.slot.get(), a.gates.get(), N, k, D);
  size_t off = 0;
  for (int e = 0; e < E; ++e) {
    const int n = a.count[size_t(e)];
    if (n) be.linear_backward(dact.get() + off * F, dy.get() + off * D, w.expert_down[size_t(e)], n, false);
    off += size_t(n);
  }
  be.swiglu_backward(dh.get(), dact.get(), a.h.get(), static_cast<int>(M), F, mlp_act(c));
  DeviceArray<float>& dxg = dy;  // [M,D] again: d of the grouped inputs
  off = 0;
  for (int e = 0; e < E; ++e) {
    const int n = a.count[size_t(e)];
    if (n) be.linear_backward(dxg.get() + off * D, dh.get() + off * 2 * F, w.expert_gate_up[size_t(e)], n, false);
    off += size_t(n);
  }
  be.moe_combine_forward(dx, dxg.get(), a.slot.get(), nullptr, N, k, D);  // sum of each token's k rows
  be.moe_route_backward(dlogits.get(), dgates.get(), a.router.get(), a.ids.get(), N, E, k, c.moe_renorm);
  be.linear_backward(dx, dlogits.get(), w.router, N, true);
}

}  // namespace phi3
