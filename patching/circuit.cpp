#include "patching/circuit.h"

#include <cstring>

#include "model/backward.h"
#include "model/qk_norm.h"
#include "runtime/error.h"

namespace phi3 {

namespace {

// Rows [r0, r0 + n) of a row-major weight, as a weight of its own.
Weight row_slice(const Weight& W, int64_t r0, int64_t n) {
  Weight s = W;
  s.data = static_cast<const uint8_t*>(W.data) + size_t(r0) * W.cols * dtype_size(W.dtype);
  s.rows = n;
  s.bias = W.bias ? W.bias + r0 : nullptr;
  return s;
}

// A device matrix of fp32 rows as a weight (GEMM operand), checked against cuBLAS's int sizes.
Weight as_weight(const float* p, int64_t rows, int64_t cols) {
  if (cols > INT32_MAX || rows > INT32_MAX)
    throw Error("circuit: a batch of " + std::to_string(cols) +
                " activation values per node is too large for one GEMM; use fewer pairs (--batch)");
  return Weight{p, DType::F32, rows, cols};
}

}  // namespace

bool circuits_supported(const ModelConfig& c) { return !c.post_norms && !c.moe(); }

void check_circuit_support(const ModelConfig& c) {
  if (c.moe())
    throw Error("circuits: " + c.architecture + " is a mixture-of-experts model; the circuit graph has no nodes per "
                "expert and its MLP edges assume one dense MLP per layer, so EAP / EAP-IG scores and exact circuits "
                "are not supported for it (activation and attribution patching are)");
  if (!circuits_supported(c))
    throw Error("circuits: " + c.architecture + " normalizes every attention and MLP output before the residual add "
                "(post-norms), so a head's write to the stream is not the sum of its edges; EAP / EAP-IG scores and "
                "exact circuits need additive writes and are not supported for it (activation and attribution "
                "patching are)");
}

HeadOutputWeights::HeadOutputWeights(Backend& be, const Model& m) : HD_(m.cfg.head_dim) {
  check_circuit_support(m.cfg);
  for (const LayerWeights& w : m.w.layers) {
    const size_t es = dtype_size(w.o.dtype), rows = size_t(w.o.rows), cols = size_t(w.o.cols);
    std::vector<uint8_t> src(rows * cols * es), dst(src.size());
    be.download(src.data(), w.o.data, src.size());
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) std::memcpy(&dst[(c * rows + r) * es], &src[(r * cols + c) * es], es);
    store_.emplace_back(be, dst.size());
    store_.back().upload(dst);
    ot_.push_back(Weight{store_.back().get(), w.o.dtype, w.o.cols, w.o.rows});
  }
}

Weight HeadOutputWeights::head(int l, int h) const { return row_slice(ot_.at(l), int64_t(h) * HD_, HD_); }

void upstream_differences(Backend& be, const Model& m, const HeadOutputWeights& ow, const ForwardState& x,
                          const ForwardState& y, float* out) {
  const ModelConfig& c = m.cfg;
  const int L = c.num_hidden_layers, H = c.num_attention_heads, HD = c.head_dim, D = c.hidden_size;
  const int QW = m.q_width();
  PHI3_CHECK(x.B == y.B && x.T == y.T, "circuit: the two runs differ in shape");
  const int N = static_cast<int>(x.N());
  const size_t ND = size_t(N) * D;
  const CircuitGraph g(L, H, c.num_key_value_heads);
  be.sub(out, x.layers[0].resid_pre.get(), y.layers[0].resid_pre.get(), int64_t(ND));
  DeviceArray<float> dz(be, size_t(N) * QW), zh(be, size_t(N) * HD);
  for (int l = 0; l < L; ++l) {
    be.sub(dz.get(), x.layers[l].z.get(), y.layers[l].z.get(), int64_t(N) * QW);
    for (int h = 0; h < H; ++h) {
      be.copy_rows(zh.get(), HD, nullptr, dz.get() + size_t(h) * HD, QW, nullptr, N, HD);
      be.linear_backward(out + size_t(g.head(l, h)) * ND, zh.get(), ow.head(l, h), N, false);
    }
    be.sub(out + size_t(g.mlp_out(l)) * ND, x.layers[l].mlp_out.get(), y.layers[l].mlp_out.get(), int64_t(ND));
  }
}

void downstream_gradients(Backend& be, const Model& m, const ForwardState& s, const Gradients& gr, int l,
                          float* out) {
  const ModelConfig& c = m.cfg;
  const int L = c.num_hidden_layers, H = c.num_attention_heads, KVH = c.num_key_value_heads, HD = c.head_dim;
  const int D = c.hidden_size, F = c.intermediate_size, QKVW = m.qkv_width();
  const int N = static_cast<int>(s.N());
  const size_t ND = size_t(N) * D;
  PHI3_CHECK(l >= 0 && l <= L && static_cast<int>(gr.layers.size()) == L, "circuit: bad downstream layer");
  if (l == L) {  // the logits read resid_final, which feeds nothing else
    be.copy(out, gr.layers[L - 1].resid_post.get(), ND * sizeof(float));
    return;
  }
  const LayerActs& a = s.layers[l];
  const LayerWeights& w = m.w.layers[l];
  const LayerGrads& lg = gr.layers[l];
  DeviceArray<float> dy(be, size_t(N) * HD), dln(be, ND);
  // q of every head, then k and v of every KV head: column block i of the qkv row and rows
  // [i*HD, (i+1)*HD) of qkv_proj, in CircuitGraph's order.
  for (int i = 0; i < H + 2 * KVH; ++i) {
    be.copy_rows(dy.get(), HD, nullptr, lg.qkv.get() + size_t(i) * HD, QKVW, nullptr, N, HD);
    be.linear_backward(dln.get(), dy.get(), row_slice(w.qkv, int64_t(i) * HD, HD), N, false);
    float* gi = out + size_t(i) * ND;
    be.zero(gi, ND * sizeof(float));
    be.rmsnorm_backward(gi, dln.get(), a.resid_pre.get(), w.ln1, a.rstd1.get(), N, D, m.cfg.norm_layer);
  }
  DeviceArray<float> dact(be, size_t(N) * F), dgu(be, size_t(N) * m.gate_up_width());
  be.linear_backward(dact.get(), lg.resid_post.get(), w.down, N, false);
  be.swiglu_backward(dgu.get(), dact.get(), a.gate_up.get(), N, F, mlp_act(m.cfg));
  be.linear_backward(dln.get(), dgu.get(), w.gate_up, N, false);
  float* gm = out + size_t(H + 2 * KVH) * ND;
  be.zero(gm, ND * sizeof(float));
  be.rmsnorm_backward(gm, dln.get(), a.resid_mid.get(), w.ln2, a.rstd2.get(), N, D, m.cfg.norm_layer);
}

std::vector<float> edge_scores(Backend& be, const Model& m, const HeadOutputWeights& ow, const CircuitGraph& g,
                               const PairBatch& pb, const ForwardState& clean, const ForwardState& corrupted,
                               float scale, const EdgeScoreOptions& opt) {
  if (opt.ig && opt.ig_steps < 1)
    throw Error("--ig-steps: EAP-IG needs at least one step, got " + std::to_string(opt.ig_steps));
  const int L = g.L(), U = g.n_upstream(), Dn = g.n_downstream(), per_layer = g.per_layer_down();
  const int D = m.cfg.hidden_size, N = static_cast<int>(clean.N());
  const size_t ND = size_t(N) * D;
  DeviceArray<float> delta(be, size_t(U) * ND);
  if (opt.noising)
    upstream_differences(be, m, ow, corrupted, clean, delta.get());
  else
    upstream_differences(be, m, ow, clean, corrupted, delta.get());
  std::vector<double> acc(size_t(U) * Dn, 0.0);
  DeviceArray<float> G(be, size_t(per_layer) * ND), y(be, size_t(per_layer) * U);
  // Adds weight x (the scores of run s with gradients gr) into acc, one GEMM per layer.
  auto score_run = [&](const ForwardState& s, const Gradients& gr, double weight) {
    for (int lv = 0; lv <= L; ++lv) {
      const int Vl = lv < L ? per_layer : 1;
      const int v0 = lv < L ? g.head_in(lv, 0, CircuitGraph::In::Q) : g.logits();
      const int Ul = lv < L ? g.mlp_out(lv) : U;  // upstream nodes written before the layer's MLP reads
      downstream_gradients(be, m, s, gr, lv, G.get());
      be.linear_forward(y.get(), G.get(), as_weight(delta.get(), Ul, int64_t(ND)), Vl, false);
      std::vector<float> h(size_t(Vl) * Ul);
      be.download(h.data(), y.get(), h.size() * sizeof(float));
      for (int r = 0; r < Vl; ++r)
        for (int u = 0; u < Ul; ++u)
          if (g.has_edge(u, v0 + r)) acc[size_t(u) * Dn + v0 + r] += weight * h[size_t(r) * Ul + u];
    }
  };
  if (!opt.ig) {
    const ForwardState& base = opt.noising ? clean : corrupted;
    const Gradients gr = backward(be, m, base, pb.answer, pb.other, scale);
    score_run(base, gr, 1.0);
  } else {
    std::vector<float> xc(ND), xk(ND), x(ND);
    be.download(xc.data(), clean.layers[0].resid_pre.get(), ND * sizeof(float));
    be.download(xk.data(), corrupted.layers[0].resid_pre.get(), ND * sizeof(float));
    DeviceArray<float> dx(be, ND);
    for (int k = 0; k < opt.ig_steps; ++k) {
      const float a = static_cast<float>(k) / static_cast<float>(opt.ig_steps);
      for (size_t i = 0; i < ND; ++i) x[i] = xk[i] + a * (xc[i] - xk[i]);
      dx.upload(x);
      ForwardOptions fo;
      fo.input_embeddings = dx.get();
      const ForwardState s = forward(be, m, pb.corrupted, fo);
      const Gradients gr = backward(be, m, s, pb.answer, pb.other, scale);
      score_run(s, gr, 1.0 / opt.ig_steps);
    }
  }
  return std::vector<float>(acc.begin(), acc.end());
}

std::vector<std::vector<float>> circuit_logit_diffs(Backend& be, const Model& m, const HeadOutputWeights& ow,
                                                    const CircuitGraph& g, const std::vector<CircuitGraph::Mask>& masks,
                                                    const PairBatch& pb, const ForwardState& clean,
                                                    const ForwardState& corr, size_t mem_budget,
                                                    int max_circuits) {
  const ModelConfig& c = m.cfg;
  const int L = c.num_hidden_layers, H = c.num_attention_heads, KVH = c.num_key_value_heads, HD = c.head_dim;
  const int D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int QW = m.q_width(), KVW = m.kv_width(), QKVW = m.qkv_width();
  const int B = clean.B, T = clean.T, N = static_cast<int>(clean.N()), U = g.n_upstream(), Dn = g.n_downstream();
  const int n_in = H + 2 * KVH;  // q/k/v downstream nodes per layer
  const size_t ND = size_t(N) * D;
  PHI3_CHECK(corr.B == B && corr.T == T, "circuit: the clean and corrupted runs differ in shape");
  for (const auto& mask : masks) PHI3_CHECK(mask.size() == size_t(U) * Dn, "circuit: mask of the wrong size");
  std::vector<std::vector<float>> out;
  if (masks.empty()) return out;

  // Circuits per batched forward: the per-circuit buffers (every upstream difference and the
  // assembled inputs of one layer dominate) within the budget.
  const size_t per_circuit =
      sizeof(float) * (size_t(U + 1 + n_in) * ND + size_t(N) * (QKVW + 3 * QW + 2 * KVW + 3 * F + 4 * D + 2 * HD));
  const size_t budget = mem_budget ? mem_budget : std::max<size_t>(be.free_memory() / 4, size_t(64) << 20);
  size_t fit = std::min<size_t>(masks.size(), budget / per_circuit);
  if (max_circuits > 0) fit = std::min<size_t>(fit, size_t(max_circuits));
  const int C = static_cast<int>(std::max<size_t>(1, fit));
  const int R = C * N;  // rows of one batched forward
  if (R > INT32_MAX / std::max(D, QKVW)) throw Error("circuit: too many rows in one batched forward");

  // Per circuit: slot 0 = the corrupted stream where the nodes being assembled read, slot
  // 1 + u = a_u(current) - a_u(corrupted) (zero until the forward reaches u).
  const int S = U + 1;
  DeviceArray<float> dcur(be, size_t(C) * S * ND), X(be, size_t(C) * n_in * ND);
  DeviceArray<float> xi(be, size_t(R) * D), ln(be, size_t(R) * D), rstd(be, R), y(be, size_t(R) * HD);
  DeviceArray<float> qkv(be, size_t(R) * QKVW), q(be, size_t(R) * QW), k(be, size_t(R) * KVW),
      v(be, size_t(R) * KVW), z(be, size_t(R) * QW), dz(be, size_t(R) * QW), zh(be, size_t(R) * HD),
      ah(be, size_t(R) * D);
  DeviceArray<float> gu(be, size_t(R) * m.gate_up_width()), act(be, size_t(R) * F), mo(be, size_t(R) * D);
  DeviceArray<float> xl(be, size_t(C) * B * D), lnl(be, size_t(C) * B * D), rstdl(be, size_t(C) * B),
      logits(be, size_t(C) * B * V), ld(be, size_t(C) * B);
  DeviceArray<float> coef(be, size_t(C) * n_in * S);
  // Index arrays: gather node i's rows of every circuit (from X + i*ND), scatter a [R, D]
  // result into slot s of every circuit (at dcur + s*ND), the last position of every row.
  std::vector<int32_t> gather(R), scatter(R), last(size_t(C) * B);
  for (int cc = 0; cc < C; ++cc)
    for (int n = 0; n < N; ++n) {
      gather[size_t(cc) * N + n] = cc * n_in * N + n;
      scatter[size_t(cc) * N + n] = cc * S * N + n;
    }
  for (int cc = 0; cc < C; ++cc)
    for (int b = 0; b < B; ++b) last[size_t(cc) * B + b] = cc * N + b * T + T - 1;
  // The clean batch repeated once per circuit: positions, pads, sequences, answers.
  std::vector<int32_t> pos, pad, ans, oth;
  std::vector<AttnSegment> segs;
  for (int cc = 0; cc < C; ++cc) {
    pos.insert(pos.end(), clean.batch.pos.begin(), clean.batch.pos.end());
    pad.insert(pad.end(), clean.batch.pad.begin(), clean.batch.pad.end());
    ans.insert(ans.end(), pb.answer.begin(), pb.answer.end());
    oth.insert(oth.end(), pb.other.begin(), pb.other.end());
    for (int b = 0; b < B; ++b) {
      const int sb = cc * B + b;
      segs.push_back(AttnSegment{sb, 0, sb * T, 0, sb * T});
    }
  }
  DeviceArray<int32_t> dgather = to_device(be, gather), dscatter = to_device(be, scatter), dlast = to_device(be, last);
  DeviceArray<int32_t> dpos = to_device(be, pos), dpad = to_device(be, pad), dans = to_device(be, ans),
                       doth = to_device(be, oth);
  DeviceArray<AttnSegment> dsegs = to_device(be, segs);

  for (size_t first = 0; first < masks.size(); first += C) {
    const int nc = static_cast<int>(std::min<size_t>(C, masks.size() - first));
    const int Rn = nc * N;
    auto slot = [&](int cc, int s) { return dcur.get() + (size_t(cc) * S + s) * ND; };
    be.zero(dcur.get(), dcur.size() * sizeof(float));
    for (int cc = 0; cc < nc; ++cc)
      be.sub(slot(cc, 1 + g.input()), clean.layers[0].resid_pre.get(), corr.layers[0].resid_pre.get(), int64_t(ND));
    // X[cc] rows [0, n) = inputs of downstream nodes v0 .. v0+n-1 of circuit cc: the
    // corrupted stream (slot 0) plus the differences of its edges into them.
    auto assemble = [&](int v0, int n, int Ul, const float* resid_corr) {
      std::vector<float> h(size_t(nc) * n * (Ul + 1), 0.f);
      for (int cc = 0; cc < nc; ++cc) {
        const CircuitGraph::Mask& mask = masks[first + cc];
        for (int r = 0; r < n; ++r) {
          float* row = &h[(size_t(cc) * n + r) * (Ul + 1)];
          row[0] = 1.f;
          for (int u = 0; u < Ul; ++u)
            if (mask[size_t(u) * Dn + v0 + r] && g.has_edge(u, v0 + r)) row[1 + u] = 1.f;
        }
      }
      be.upload(coef.get(), h.data(), h.size() * sizeof(float));
      for (int cc = 0; cc < nc; ++cc) {
        be.copy(slot(cc, 0), resid_corr, ND * sizeof(float));
        be.linear_backward(X.get() + size_t(cc) * n * ND, coef.get() + size_t(cc) * n * (Ul + 1),
                           Weight{slot(cc, 0), DType::F32, Ul + 1, int64_t(ND)}, n, false);
      }
    };
    for (int l = 0; l < L; ++l) {
      const LayerWeights& w = m.w.layers[l];
      const LayerActs& ca = corr.layers[l];
      assemble(g.head_in(l, 0, CircuitGraph::In::Q), n_in, g.mlp_out(l), ca.resid_pre.get());
      for (int i = 0; i < n_in; ++i) {
        be.copy_rows(xi.get(), D, nullptr, X.get() + size_t(i) * ND, D, dgather.get(), Rn, D);
        be.rmsnorm_forward(ln.get(), rstd.get(), xi.get(), w.ln1, Rn, D, c.rms_norm_eps, c.norm_layer, w.ln1_b);
        be.linear_forward(y.get(), ln.get(), row_slice(w.qkv, int64_t(i) * HD, HD), Rn, false);
        be.copy_rows(qkv.get() + size_t(i) * HD, QKVW, nullptr, y.get(), HD, nullptr, Rn, HD);
      }
      DeviceArray<float> qkn;  // q and k normalized per head (Qwen3)
      be.rotary_qkv_forward(q.get(), k.get(), v.get(), qk_norm_input(be, m, l, qkv.get(), Rn, qkn), dpos.get(), Rn, H,
                            KVH, HD, clean.layer_rope(c, l));
      AttnParams ap = attention_params(m, T, l);
      ap.q = q.get();
      ap.k = k.get();
      ap.v = v.get();
      ap.z = z.get();
      ap.pad = dpad.get();
      ap.segs = dsegs.get();
      ap.n_segs = nc * B;
      be.attention_forward(ap);
      for (int cc = 0; cc < nc; ++cc)
        be.sub(dz.get() + size_t(cc) * N * QW, z.get() + size_t(cc) * N * QW, ca.z.get(), int64_t(N) * QW);
      for (int h = 0; h < H; ++h) {
        be.copy_rows(zh.get(), HD, nullptr, dz.get() + size_t(h) * HD, QW, nullptr, Rn, HD);
        be.linear_backward(ah.get(), zh.get(), ow.head(l, h), Rn, false);
        be.copy_rows(dcur.get() + size_t(1 + g.head(l, h)) * ND, D, dscatter.get(), ah.get(), D, nullptr, Rn, D);
      }
      assemble(g.mlp_in(l), 1, g.mlp_out(l), ca.resid_mid.get());  // X: [nc * N, D]
      be.rmsnorm_forward(ln.get(), rstd.get(), X.get(), w.ln2, Rn, D, c.rms_norm_eps, c.norm_layer, w.ln2_b);
      be.linear_forward(gu.get(), ln.get(), w.gate_up, Rn, false);
      be.swiglu_forward(act.get(), gu.get(), Rn, F, mlp_act(c));
      be.linear_forward(mo.get(), act.get(), w.down, Rn, false);
      for (int cc = 0; cc < nc; ++cc)
        be.sub(slot(cc, 1 + g.mlp_out(l)), mo.get() + size_t(cc) * ND, ca.mlp_out.get(), int64_t(ND));
    }
    assemble(g.logits(), 1, U, corr.resid_final.get());
    be.copy_rows(xl.get(), D, nullptr, X.get(), D, dlast.get(), nc * B, D);
    be.rmsnorm_forward(lnl.get(), rstdl.get(), xl.get(), m.w.final_norm, nc * B, D, c.rms_norm_eps, c.norm_layer, m.w.final_norm_b);
    be.linear_forward(logits.get(), lnl.get(), m.w.lm_head, nc * B, false);
    if (c.final_softcap > 0) be.softcap_forward(logits.get(), int64_t(nc) * B * V, c.final_softcap);
    be.logit_diff_forward(ld.get(), logits.get(), V, dans.get(), doth.get(), nc * B);
    std::vector<float> h(size_t(nc) * B);
    be.download(h.data(), ld.get(), h.size() * sizeof(float));
    for (int cc = 0; cc < nc; ++cc) out.emplace_back(h.begin() + size_t(cc) * B, h.begin() + size_t(cc + 1) * B);
  }
  return out;
}

}  // namespace phi3
