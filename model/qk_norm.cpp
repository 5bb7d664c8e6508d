#include "model/qk_norm.h"

namespace phi3 {

namespace {

// One part (q: H heads from column 0, or k: KVH heads after q) of the qkv rows as a dense
// [N * heads, HD] matrix, the rows of the RMSNorm op.
void gather(Backend& be, float* dense, const float* qkv, int qkvw, int col, int N, int width) {
  be.copy_rows(dense, width, nullptr, qkv + col, qkvw, nullptr, N, width);
}

}  // namespace

const float* qk_norm_input(Backend& be, const Model& m, int l, const float* qkv, int N, DeviceArray<float>& scratch) {
  const ModelConfig& c = m.cfg;
  if (!c.qk_norm) return qkv;
  const LayerWeights& w = m.w.layers[static_cast<size_t>(l)];
  const int HD = c.head_dim, QKVW = m.qkv_width(), QW = m.q_width(), KVW = m.kv_width();
  // [N, QKVW] result, then one part's dense rows before and after the norm and their rstd: one
  // allocation that the caller keeps (the sweeps call this per layer and chunk).
  const size_t need = size_t(N) * (QKVW + 2 * QW + c.num_attention_heads);
  if (scratch.size() < need) scratch = DeviceArray<float>(be, need);
  float* out = scratch.get();
  float* x = out + size_t(N) * QKVW;
  float* y = x + size_t(N) * QW;
  float* rstd = y + size_t(N) * QW;
  for (int part = 0; part < 2; ++part) {
    const int col = part == 0 ? 0 : QW, width = part == 0 ? QW : KVW;
    const int rw = c.qk_norm_full ? width : HD, heads = width / rw;  // norm rows: heads, or all of q / k
    gather(be, x, qkv, QKVW, col, N, width);
    be.rmsnorm_forward(y, rstd, x, part == 0 ? w.q_norm : w.k_norm, N * heads, rw, c.rms_norm_eps);
    be.copy_rows(out + col, QKVW, nullptr, y, width, nullptr, N, width);
  }
  be.copy_rows(out + QW + KVW, QKVW, nullptr, qkv + QW + KVW, QKVW, nullptr, N, KVW);  // v as is
  return out;
}

void qk_norm_backward(Backend& be, const Model& m, int l, float* dqkv, const float* qkv, int N) {
  const ModelConfig& c = m.cfg;
  if (!c.qk_norm) return;
  const LayerWeights& w = m.w.layers[static_cast<size_t>(l)];
  const int HD = c.head_dim, QKVW = m.qkv_width(), QW = m.q_width(), KVW = m.kv_width();
  DeviceArray<float> x(be, size_t(N) * QW), y(be, size_t(N) * QW), rstd(be, size_t(N) * c.num_attention_heads);
  DeviceArray<float> dy(be, size_t(N) * QW), dx(be, size_t(N) * QW);
  for (int part = 0; part < 2; ++part) {
    const int col = part == 0 ? 0 : QW, width = part == 0 ? QW : KVW;
    const int rw = c.qk_norm_full ? width : HD, heads = width / rw;
    const float* nw = part == 0 ? w.q_norm : w.k_norm;
    gather(be, x.get(), qkv, QKVW, col, N, width);
    be.rmsnorm_forward(y.get(), rstd.get(), x.get(), nw, N * heads, rw, c.rms_norm_eps);  // rstd again
    gather(be, dy.get(), dqkv, QKVW, col, N, width);
    be.zero(dx.get(), size_t(N) * width * sizeof(float));
    be.rmsnorm_backward(dx.get(), dy.get(), x.get(), nw, rstd.get(), N * heads, rw);
    be.copy_rows(dqkv + col, QKVW, nullptr, dx.get(), width, nullptr, N, width);
  }
}

}  // namespace phi3
