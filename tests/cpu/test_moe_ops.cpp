// The mixture-of-experts ops (kernels/cpu/moe.cpp) against naive double-precision loops, their
// backwards against finite differences, and the MoE block (model/moe.cpp: router, grouped
// per-expert GEMMs, combine) against a dense loop over every token and its experts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "model/batch.h"
#include "model/forward.h"
#include "model/moe.h"
#include "runtime/safetensors.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "test_util.h"

namespace phi3 {
namespace {

using test::compare;
using test::random_vec;

Backend& be() {
  static std::unique_ptr<Backend> b = make_cpu_backend();
  return *b;
}

// Naive routing of one row in double: the ids (descending p, ties to the lower id) and gates.
void naive_route(const float* x, int E, int k, bool renorm, std::vector<int>& ids, std::vector<double>& g) {
  std::vector<double> p(E);
  double mx = x[0], s = 0;
  for (int e = 0; e < E; ++e) mx = std::max<double>(mx, x[e]);
  for (int e = 0; e < E; ++e) s += p[e] = std::exp(double(x[e]) - mx);
  for (double& v : p) v /= s;
  std::vector<int> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  ids.assign(order.begin(), order.begin() + k);
  g.resize(k);
  double t = 0;
  for (int j = 0; j < k; ++j) t += g[j] = p[ids[j]];
  if (renorm)
    for (double& v : g) v /= t;
}

// The gates of one row as a function of its logits with the selection `ids` fixed (double).
std::vector<double> gates_fixed(const std::vector<double>& x, const std::vector<int>& ids, bool renorm) {
  double mx = x[0], s = 0;
  for (double v : x) mx = std::max(mx, v);
  std::vector<double> p(x.size());
  for (size_t e = 0; e < x.size(); ++e) s += p[e] = std::exp(x[e] - mx);
  std::vector<double> g;
  double t = 0;
  for (int id : ids) t += p[id] / s;
  for (int id : ids) g.push_back(renorm ? (p[id] / s) / t : p[id] / s);
  return g;
}

TEST(MoeOps, RouteForwardMatchesNaive) {
  for (bool renorm : {true, false})
    for (int E : {4, 8, 64})
      for (int k : {1, 2, E == 4 ? 4 : 6}) {
        const int N = 37;
        std::vector<float> logits = random_vec(size_t(N) * E, 11 + E + k, -3.0f, 3.0f);
        std::vector<int32_t> ids(size_t(N) * k);
        std::vector<float> gates(size_t(N) * k);
        be().moe_route_forward(ids.data(), gates.data(), logits.data(), N, E, k, renorm);
        double worst = 0;
        for (int n = 0; n < N; ++n) {
          std::vector<int> rid;
          std::vector<double> rg;
          naive_route(&logits[size_t(n) * E], E, k, renorm, rid, rg);
          for (int j = 0; j < k; ++j) {
            ASSERT_EQ(ids[size_t(n) * k + j], rid[j]) << "row " << n << " slot " << j << " E=" << E << " k=" << k;
            worst = std::max(worst, std::fabs(gates[size_t(n) * k + j] - rg[j]));
          }
        }
        EXPECT_LT(worst, 1e-6) << "E=" << E << " k=" << k << " renorm=" << renorm;
      }
}

TEST(MoeOps, RouteTiesGoToTheLowerExpert) {
  const std::vector<float> logits = {0.5f, 1.0f, 1.0f, 0.5f};  // experts 1 and 2 tie, then 0 and 3
  std::vector<int32_t> ids(3);
  std::vector<float> gates(3);
  be().moe_route_forward(ids.data(), gates.data(), logits.data(), 1, 4, 3, true);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 2, 0}));
  EXPECT_FLOAT_EQ(gates[0], gates[1]);
}

TEST(MoeOps, RouteBackwardMatchesFiniteDifferences) {
  for (bool renorm : {true, false}) {
    const int N = 9, E = 6, k = 2;
    std::vector<float> logits = random_vec(size_t(N) * E, 5, -2.0f, 2.0f);
    std::vector<float> dg = random_vec(size_t(N) * k, 6);
    std::vector<int32_t> ids(size_t(N) * k);
    std::vector<float> gates(size_t(N) * k), dl(size_t(N) * E);
    be().moe_route_forward(ids.data(), gates.data(), logits.data(), N, E, k, renorm);
    be().moe_route_backward(dl.data(), dg.data(), logits.data(), ids.data(), N, E, k, renorm);
    double worst = 0, mag = 0;
    for (int n = 0; n < N; ++n) {
      std::vector<int> sel(ids.begin() + n * k, ids.begin() + (n + 1) * k);
      for (int e = 0; e < E; ++e) {
        std::vector<double> xp(logits.begin() + n * E, logits.begin() + (n + 1) * E), xm = xp;
        const double h = 1e-5;
        xp[e] += h;
        xm[e] -= h;
        const auto gp = gates_fixed(xp, sel, renorm), gm = gates_fixed(xm, sel, renorm);
        double fd = 0;
        for (int j = 0; j < k; ++j) fd += dg[size_t(n) * k + j] * (gp[j] - gm[j]) / (2 * h);
        worst = std::max(worst, std::fabs(fd - dl[size_t(n) * E + e]));
        mag = std::max(mag, std::fabs(fd));
      }
    }
    EXPECT_GT(mag, 0.05);
    EXPECT_LT(worst, 1e-5) << "renorm=" << renorm;
  }
}

TEST(MoeOps, CombineForwardBackwardMatchNaive) {
  const int N = 13, k = 3, D = 10, M = N * k;
  std::vector<int32_t> slot(M);
  std::iota(slot.begin(), slot.end(), 0);
  std::reverse(slot.begin(), slot.end());  // every grouped row used once, in another order
  std::vector<float> y = random_vec(size_t(M) * D, 1), gates = random_vec(M, 2, 0.0f, 1.0f);
  std::vector<float> dout = random_vec(size_t(N) * D, 3);
  std::vector<float> out(size_t(N) * D), dy(size_t(M) * D), dg(M), out1(size_t(N) * D);
  be().moe_combine_forward(out.data(), y.data(), slot.data(), gates.data(), N, k, D);
  be().moe_combine_forward(out1.data(), y.data(), slot.data(), nullptr, N, k, D);
  be().moe_combine_backward(dy.data(), dg.data(), dout.data(), y.data(), slot.data(), gates.data(), N, k, D);
  double e_out = 0, e_out1 = 0, e_dy = 0, e_dg = 0;
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) {
      const int r = slot[size_t(n) * k + j];
      double dot = 0;
      for (int d = 0; d < D; ++d) {
        dot += double(dout[size_t(n) * D + d]) * y[size_t(r) * D + d];
        e_dy = std::max(e_dy, std::fabs(dy[size_t(r) * D + d] - double(gates[size_t(n) * k + j]) * dout[size_t(n) * D + d]));
      }
      e_dg = std::max(e_dg, std::fabs(dg[size_t(n) * k + j] - dot));
    }
  for (int n = 0; n < N; ++n)
    for (int d = 0; d < D; ++d) {
      double s = 0, s1 = 0;
      for (int j = 0; j < k; ++j) {
        s += double(gates[size_t(n) * k + j]) * y[size_t(slot[size_t(n) * k + j]) * D + d];
        s1 += y[size_t(slot[size_t(n) * k + j]) * D + d];
      }
      e_out = std::max(e_out, std::fabs(out[size_t(n) * D + d] - s));
      e_out1 = std::max(e_out1, std::fabs(out1[size_t(n) * D + d] - s1));
    }
  EXPECT_LT(e_out, 1e-6);
  EXPECT_LT(e_out1, 1e-6);
  EXPECT_LT(e_dy, 1e-7);  // (the float product)
  EXPECT_LT(e_dg, 1e-6);
}

TEST(MoeOps, GroupingIsByExpertThenToken) {
  const std::vector<int32_t> ids = {2, 0, 0, 1, 2, 1};  // N = 3 tokens, k = 2
  std::vector<int32_t> src, slot;
  std::vector<int> count;
  moe_group(ids, 3, 3, 2, src, slot, count);
  EXPECT_EQ(count, (std::vector<int>{2, 2, 2}));
  EXPECT_EQ(src, (std::vector<int32_t>{0, 1, 1, 2, 0, 2}));   // expert 0: tokens 0, 1; 1: 1, 2; 2: 0, 2
  EXPECT_EQ(slot, (std::vector<int32_t>{4, 0, 1, 2, 5, 3}));
}

// A small MoE model's block (random weights) against a dense loop, and its backward against
// finite differences of <dout, out(x)> with the routing fixed.
Model moe_model(bool renorm) {
  Model m;
  ModelConfig& c = m.cfg;
  c.architecture = "MixtralForCausalLM";
  c.family = "mixtral";
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.moe_intermediate_size = 24;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.rotary_dim = 8;
  c.vocab_size = 32;
  c.num_experts = 5;
  c.experts_per_tok = 2;
  c.moe_renorm = renorm;
  c.layer_window.assign(1, 0);
  m.w = ModelWeights::random(be(), c, 77, 0.4f);
  return m;
}

std::vector<double> dense_moe(const Model& m, const std::vector<float>& x, int N) {
  const ModelConfig& c = m.cfg;
  const LayerWeights& w = m.w.layers[0];
  const int D = c.hidden_size, F = c.moe_intermediate_size, E = c.num_experts, k = c.experts_per_tok;
  auto mat = [](const Weight& W, int64_t r, int64_t col) { return double(static_cast<const float*>(W.data)[r * W.cols + col]); };
  std::vector<double> out(size_t(N) * D, 0.0);
  for (int n = 0; n < N; ++n) {
    std::vector<float> lg(E);
    for (int e = 0; e < E; ++e) {
      double s = 0;
      for (int d = 0; d < D; ++d) s += mat(w.router, e, d) * x[size_t(n) * D + d];
      lg[e] = static_cast<float>(s);
    }
    std::vector<int> ids;
    std::vector<double> g;
    naive_route(lg.data(), E, k, c.moe_renorm, ids, g);
    for (int j = 0; j < k; ++j) {
      const Weight &gu = w.expert_gate_up[ids[j]], &dn = w.expert_down[ids[j]];
      std::vector<double> a(F);
      for (int f = 0; f < F; ++f) {
        double gt = 0, up = 0;
        for (int d = 0; d < D; ++d) {
          gt += mat(gu, f, d) * x[size_t(n) * D + d];
          up += mat(gu, F + f, d) * x[size_t(n) * D + d];
        }
        a[f] = gt / (1 + std::exp(-gt)) * up;
      }
      for (int d = 0; d < D; ++d) {
        double s = 0;
        for (int f = 0; f < F; ++f) s += mat(dn, d, f) * a[f];
        out[size_t(n) * D + d] += g[j] * s;
      }
    }
  }
  return out;
}

TEST(MoeOps, BlockMatchesDenseLoopAndItsBackwardFiniteDifferences) {
  for (bool renorm : {true, false}) {
    const Model m = moe_model(renorm);
    const int N = 11, D = m.cfg.hidden_size;
    std::vector<float> x = random_vec(size_t(N) * D, 9, -1.5f, 1.5f);
    DeviceArray<float> dx_in = to_device(be(), x), out(be(), size_t(N) * D), dxo(be(), size_t(N) * D);
    MoeActs a;
    moe_forward(be(), m, 0, dx_in.get(), out.get(), N, a);
    const std::vector<float> got = out.download();
    const std::vector<double> ref = dense_moe(m, x, N);
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(got[i] - ref[i]));
    EXPECT_LT(worst, 2e-5) << "renorm=" << renorm;
    // every expert used by some token, some by several
    int used = 0;
    for (int c : a.count) used += c > 0;
    EXPECT_GE(used, 3);

    const std::vector<float> dout = random_vec(size_t(N) * D, 10);
    DeviceArray<float> ddout = to_device(be(), dout);
    moe_backward(be(), m, 0, a, ddout.get(), dxo.get(), N);
    const std::vector<float> dx = dxo.download();
    // finite differences of <dout, out(x)> in double through the dense loop (the routing of
    // the perturbed inputs checked unchanged)
    double werr = 0, mag = 0;
    for (int i = 0; i < N * D; i += 3) {
      const float h = 1e-3f;
      std::vector<float> xp = x, xm = x;
      xp[i] += h;
      xm[i] -= h;
      const auto op = dense_moe(m, xp, N), om = dense_moe(m, xm, N);
      double fd = 0;
      for (size_t j = 0; j < op.size(); ++j) fd += dout[j] * (op[j] - om[j]);
      fd /= 2.0 * h;
      werr = std::max(werr, std::fabs(fd - dx[i]));
      mag = std::max(mag, std::fabs(fd));
    }
    EXPECT_GT(mag, 0.1);
    EXPECT_LT(werr, 2e-3 * mag) << "renorm=" << renorm << " worst " << werr << " of " << mag;
  }
}

// PhiMoE's sparsemixer router (inference) against transformers' own function on seeded logits
// (tests/data/moe/sparsemixer.json from tools/make_sparsemixer_fixture.py: exact ties, masks that
// bite with eps 0.2, logits of scale 0.05 where nothing is masked), and its backward against
// transformers' autograd with the choice and the masks fixed.
TEST(MoeOps, SparsemixerMatchesTransformers) {
  const nlohmann::json j = nlohmann::json::parse(test::slurp(test::source_dir() + "/tests/data/moe/sparsemixer.json"));
  int cases = 0;
  for (const auto& c : j.at("cases")) {
    const int N = c.at("N"), E = c.at("E");
    const float eps = c.at("jitter_eps");
    const auto logits = c.at("logits").get<std::vector<float>>(), dg = c.at("dgates").get<std::vector<float>>();
    std::vector<int32_t> ids(size_t(N) * 2);
    std::vector<float> gates(size_t(N) * 2), dl(size_t(N) * E);
    be().moe_sparsemixer_forward(ids.data(), gates.data(), logits.data(), N, E, eps);
    be().moe_sparsemixer_backward(dl.data(), dg.data(), logits.data(), N, E, eps);
    EXPECT_EQ(ids, c.at("ids").get<std::vector<int32_t>>()) << "E=" << E << " eps=" << eps;
    const auto gd = compare(gates, c.at("gates").get<std::vector<float>>());
    const auto ld = compare(dl, c.at("dlogits").get<std::vector<float>>());
    EXPECT_LT(gd.max_abs, 1e-6) << gd.str();
    EXPECT_LT(ld.max_abs, 1e-6) << ld.str();
    EXPECT_GT(ld.max_ref, 0.01);
    ++cases;
  }
  EXPECT_EQ(cases, 4);
}

// transformers 5's fused expert tensors (mlp.experts.gate_up_proj [E, 2F, D], mlp.experts.down_proj
// [E, D, F], router mlp.gate.weight) load to the same model as the hub's per-expert ones: the
// rand-mixtral-moe checkpoint rewritten fused gives bitwise the same logits.
TEST(MoeOps, FusedExpertLayoutLoadsLikeThePerExpertOne) {
  namespace fs = std::filesystem;
  const std::string src = test::source_dir() + "/data/reference/rand-mixtral-moe/model";
  const std::string dst = test::temp_dir("moe_fused_layout");
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().extension() != ".safetensors")
      fs::copy_file(e.path(), fs::path(dst) / e.path().filename(), fs::copy_options::overwrite_existing);
  SafeTensors st = SafeTensors::open_dir(src);
  const ModelConfig c = load_model_meta(src)->cfg;
  const int E = c.num_experts, F = c.moe_intermediate_size, D = c.hidden_size;
  auto values = [&](const std::string& n) {
    const TensorInfo& t = st.get(n);
    std::vector<float> v(size_t(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = t.value(i);
    return v;
  };
  std::vector<TensorToWrite> out;
  for (const std::string& n : st.names()) {
    if (n.find(".experts.") != std::string::npos) continue;
    std::string name = n;
    const size_t at = name.find("block_sparse_moe.gate");
    if (at != std::string::npos) name.replace(at, 16, "mlp");
    out.push_back(tensor_f32(name, st.get(n).shape, values(n)));
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".block_sparse_moe.experts.";
    std::vector<float> gu, dn;
    for (int e = 0; e < E; ++e) {
      for (const char* w : {"w1", "w3"}) {
        const auto v = values(p + std::to_string(e) + "." + w + ".weight");
        gu.insert(gu.end(), v.begin(), v.end());
      }
      const auto v = values(p + std::to_string(e) + ".w2.weight");
      dn.insert(dn.end(), v.begin(), v.end());
    }
    const std::string q = "model.layers." + std::to_string(l) + ".mlp.experts.";
    out.push_back(tensor_f32(q + "gate_up_proj", {E, 2 * F, D}, gu));
    out.push_back(tensor_f32(q + "down_proj", {E, D, F}, dn));
  }
  write_safetensors(dst + "/model.safetensors", out);
  auto a = load_model(be(), src), b = load_model(be(), dst);
  const nlohmann::json ref = nlohmann::json::parse(test::slurp(src + "/../reference.json"));
  const Batch batch = make_batch(ref.at("clean_token_ids").get<std::vector<std::vector<int>>>(),
                                 ref.at("pad_id").get<int>(), ref.at("T").get<int>());
  const ForwardState sa = forward(be(), *a, batch), sb = forward(be(), *b, batch);
  EXPECT_EQ(sa.logits.download(), sb.logits.download());
  EXPECT_EQ(a->w.bytes, b->w.bytes);
}

}  // namespace
}  // namespace phi3
