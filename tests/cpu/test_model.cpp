// The Phi-3 model on the CPU backend, checked without transformers: padding invariance,
// the embedded model's held-out accuracy, and the whole backward pass against finite
// differences of the metric.
#include <gtest/gtest.h>

#include <cmath>

#include "model/backward.h"
#include "model/forward.h"
#include "patching/accuracy.h"
#include "patching/attribution.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "test_util.h"

namespace phi3 {
namespace {

std::string tiny_dir() { return test::source_dir() + "/data/models/tiny-temporal-phi3"; }
std::string seed_pairs() { return test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"; }

TEST(Model, LoadsEmbeddedModel) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  EXPECT_EQ(m->cfg.num_hidden_layers, 4);
  EXPECT_GE(m->cfg.num_hidden_layers, 4);
  EXPECT_EQ(m->tok.answer_token("short") != m->tok.answer_token("long"), true);
  EXPECT_GT(m->w.bytes, 0u);
}

// A prompt alone and left-padded inside a batch give the same last-position logits
// (TransformerLens position semantics, pad keys masked).
TEST(Model, PaddingInvariance) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  auto pairs = load_pairs(seed_pairs());
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings, 40);
  ForwardState batch = forward(*be, *m, pb.clean);
  auto batch_logits = last_logits(*be, *m, batch);
  const int V = m->cfg.vocab_size;
  for (int b = 0; b < pb.clean.B; ++b) {
    Batch alone = make_batch({m->tok.encode(pb.clean_prompts[b], true)}, m->cfg.pad_token_id);
    ASSERT_EQ(alone.pad[0], 0);
    ASSERT_GT(pb.clean.pad[b], 0) << "every row is padded at T=40";
    ForwardState s = forward(*be, *m, alone);
    auto l = last_logits(*be, *m, s);
    std::vector<float> row(batch_logits.begin() + size_t(b) * V, batch_logits.begin() + size_t(b + 1) * V);
    auto d = test::compare(row, l);
    // fp32, same ops on the same rows; only BLAS blocking may differ.
    EXPECT_LT(d.max_abs, 1e-5) << "row " << b << ": " << d.str();
  }
}

// Activations and gradients by TransformerLens name, with shapes; bad names are errors.
// Clean and corrupted in one 2B-row pass (attribution's one pass): each half equals its own
// forward (to GEMM rounding: BLAS results move in the last bits with the row count), and
// attribution from the halves equals attribution from two passes.
TEST(Model, PairForwardHalvesEqualSeparateForwards) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  auto pairs = load_pairs(seed_pairs());
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
  ForwardOptions fo;
  fo.keep_pattern = true;
  PairForward p = forward_pair(*be, *m, pb.clean, pb.corrupted, fo);
  ForwardState c = forward(*be, *m, pb.clean, fo), r = forward(*be, *m, pb.corrupted, fo);
  ASSERT_EQ(p.clean.B, c.B);
  EXPECT_EQ(p.corrupted.batch.tokens, pb.corrupted.tokens);
  EXPECT_EQ(p.corrupted.batch.pad, pb.corrupted.pad);
  for (const std::string name : {"logits", "blocks.2.hook_resid_pre", "blocks.3.attn.hook_z", "blocks.1.hook_mlp_out",
                                 "blocks.0.attn.hook_pattern"}) {
    for (int half = 0; half < 2; ++half) {
      const ForwardState& a = half ? p.corrupted : p.clean;
      const ForwardState& b = half ? r : c;
      std::vector<float> va = a.activation(*be, *m, name).download(*be), vb = b.activation(*be, *m, name).download(*be);
      test::Diff d = test::compare(va, vb);
      EXPECT_LT(d.rel(), 1e-5) << name << " half " << half << ": " << d.str();
    }
  }
  LogitDiff lc = logit_diff(*be, *m, c, pb.answer, pb.other), lr = logit_diff(*be, *m, r, pb.answer, pb.other);
  const float scale = static_cast<float>(1.0 / (lc.mean - lr.mean));
  Gradients g1 = backward(*be, *m, r, pb.answer, pb.other, scale);
  Gradients g2 = backward(*be, *m, p.corrupted, pb.answer, pb.other, scale);
  for (Hook h : {Hook::ResidPre, Hook::AttnOut, Hook::Z}) {
    test::Diff d = test::compare(attribution(*be, *m, p.corrupted, p.clean, g2, h), attribution(*be, *m, r, c, g1, h));
    EXPECT_LT(d.rel(), 1e-4) << hook_name(h) << ": " << d.str();
  }
}

TEST(Model, HookAccessByName) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  Batch b = make_batch({{1, 5, 6, 7, 8}, {1, 9, 10}}, m->cfg.pad_token_id);
  ForwardOptions fo;
  fo.keep_pattern = true;
  ForwardState s = forward(*be, *m, b, fo);
  const int64_t H = m->cfg.num_attention_heads, HD = m->cfg.head_dim, D = m->cfg.hidden_size;
  TensorView q = s.activation(*be, *m, "blocks.2.attn.hook_q");
  EXPECT_EQ(q.shape, (std::vector<int64_t>{2, 5, H, HD}));
  EXPECT_EQ(q.row_stride, m->qkv_width());
  // hook_v sits after q and k inside the fused rows and equals the separate v cache.
  auto v = s.activation(*be, *m, "blocks.2.attn.hook_v").download(*be);
  std::vector<float> cache(v.size());
  be->download(cache.data(), s.layers[2].v.get(), cache.size() * sizeof(float));
  EXPECT_EQ(v, cache);
  EXPECT_EQ(s.activation(*be, *m, "blocks.0.attn.hook_pattern").shape, (std::vector<int64_t>{2, H, 5, 5}));
  EXPECT_EQ(s.activation(*be, *m, "logits").shape[2], m->cfg.vocab_size);
  // resid_post of layer l is resid_pre of layer l+1.
  EXPECT_EQ(s.activation(*be, *m, "blocks.1.hook_resid_post").download(*be),
            s.activation(*be, *m, "blocks.2.hook_resid_pre").download(*be));
  Gradients g = backward(*be, *m, s, {281, 279}, {279, 281}, 1.0f);
  EXPECT_EQ(g.gradient(*be, *m, 2, 5, "blocks.3.hook_attn_out").download(*be),
            g.gradient(*be, *m, 2, 5, "blocks.3.hook_resid_mid").download(*be));
  EXPECT_EQ(g.gradient(*be, *m, 2, 5, "blocks.0.hook_resid_pre").shape, (std::vector<int64_t>{2, 5, D}));
  for (const char* bad : {"blocks.9.hook_resid_pre", "blocks.x.hook_z", "block.0.hook_resid_pre", "blocks.0.hook_nope"})
    EXPECT_THROW(s.activation(*be, *m, bad), Error) << bad;
  EXPECT_THROW(g.gradient(*be, *m, 2, 5, "blocks.0.attn.hook_pattern"), Error);
  // A plain forward keeps no pattern (O(T) per layer): asking for it says so.
  ForwardState np = forward(*be, *m, b);
  EXPECT_EQ(np.layers[0].pattern.size(), 0u);
  EXPECT_THROW(np.activation(*be, *m, "blocks.0.attn.hook_pattern"), Error);
}

// The backward recomputes the attention probabilities from the forward's per-row softmax stats:
// without a kept pattern every gradient is bitwise the one of a pass that kept it, and the
// activations of the pass hold no [B,H,T,T] buffer.
TEST(Model, BackwardWithoutPatternIsBitwiseTheSame) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  auto pairs = load_pairs(seed_pairs());
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
  ForwardOptions keep;
  keep.keep_pattern = true;
  ForwardState with = forward(*be, *m, pb.corrupted, keep), without = forward(*be, *m, pb.corrupted);
  BackwardOptions bo;
  bo.keep_dpattern = true;
  Gradients gw = backward(*be, *m, with, pb.answer, pb.other, 0.5f, bo);
  Gradients gn = backward(*be, *m, without, pb.answer, pb.other, 0.5f, bo);
  const int B = pb.corrupted.B, T = pb.corrupted.T;
  for (int l = 0; l < m->cfg.num_hidden_layers; ++l) {
    for (const char* h : {"hook_resid_pre", "hook_resid_mid", "attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v"}) {
      const std::string name = "blocks." + std::to_string(l) + "." + h;
      EXPECT_EQ(gw.gradient(*be, *m, B, T, name).download(*be), gn.gradient(*be, *m, B, T, name).download(*be)) << name;
    }
    EXPECT_EQ(gw.dpattern[l].download(), gn.dpattern[l].download()) << "d pattern, layer " << l;
  }
  const size_t H = m->cfg.num_attention_heads, L = m->cfg.num_hidden_layers;
  EXPECT_EQ(forward_arena_bytes(*m, B, T, true) - forward_arena_bytes(*m, B, T, false),
            L * Arena::padded(B * H * T * T * sizeof(float)));
}

TEST(Model, HeldOutAccuracyAtLeast95Percent) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  auto r = dataset_accuracy(*be, *m, test::source_dir() + "/data/raw/temporal_scope_caa.json", "heldout");
  ASSERT_GE(r.items, 60);
  EXPECT_GE(r.accuracy(), 0.95) << r.correct << "/" << r.items;
}

TEST(Model, SeedPairsAnsweredCorrectly) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  for (const char* file : {"/data/temporal_scope_for_attribution_patching.json", "/data/temporal_scope_pairs.json"}) {
    auto pairs = load_pairs(test::source_dir() + file);
    PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
    ForwardOptions fo;
    fo.keep_pattern = false;
    ForwardState s = forward(*be, *m, pb.clean, fo);
    LogitDiff ld = logit_diff(*be, *m, s, pb.answer, pb.other);
    for (int b = 0; b < pb.clean.B; ++b) EXPECT_GT(ld.per_row[b], 1.0f) << file << " row " << b;
  }
}

// d metric / d resid_pre[l] (and z) against central differences of the whole model along
// a random direction at one position: an end-to-end check of every backward op together.
TEST(Model, BackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, tiny_dir());
  auto pairs = load_pairs(seed_pairs());
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
  const int B = pb.clean.B, T = pb.clean.T, D = m->cfg.hidden_size;
  ForwardState s = forward(*be, *m, pb.corrupted);
  Gradients g = backward(*be, *m, s, pb.answer, pb.other, 1.0f);
  for (int l : {0, 2}) {
    for (int pos : {T - 1, T - 8}) {
      // Direction: random at (all rows, pos).
      // Scaled by each row's rms so that eps is a relative perturbation (RMSNorm is
      // strongly curved for small inputs).
      std::vector<float> dir = test::random_vec(size_t(B) * D, 100 + l * 31 + pos);
      {
        std::vector<float> act(size_t(B) * T * D);
        be->download(act.data(), s.layers[l].resid_pre.get(), act.size() * sizeof(float));
        for (int b = 0; b < B; ++b) {
          double ss = 0;
          for (int d = 0; d < D; ++d) ss += double(act[(size_t(b) * T + pos) * D + d]) * act[(size_t(b) * T + pos) * D + d];
          const float rms = static_cast<float>(std::sqrt(ss / D));
          for (int d = 0; d < D; ++d) dir[size_t(b) * D + d] *= rms;
        }
      }
      std::vector<float> grad(size_t(B) * T * D);
      be->download(grad.data(), g.layers[l].resid_pre.get(), grad.size() * sizeof(float));
      double analytic = 0;
      for (int b = 0; b < B; ++b)
        for (int d = 0; d < D; ++d) analytic += double(grad[(size_t(b) * T + pos) * D + d]) * dir[size_t(b) * D + d];
      // Perturbed runs: patch resid_pre[l] at pos with base +- eps*dir through a source state.
      auto metric_at = [&](float eps) {
        ForwardState src = forward(*be, *m, pb.corrupted);
        std::vector<float> act(size_t(B) * T * D);
        be->download(act.data(), src.layers[l].resid_pre.get(), act.size() * sizeof(float));
        for (int b = 0; b < B; ++b)
          for (int d = 0; d < D; ++d) act[(size_t(b) * T + pos) * D + d] += eps * dir[size_t(b) * D + d];
        be->upload(src.layers[l].resid_pre.get(), act.data(), act.size() * sizeof(float));
        PatchSpec p{Hook::ResidPre, l, pos, -1};
        ForwardOptions fo;
        fo.patch = &p;
        fo.source = &src;
        ForwardState r = forward(*be, *m, pb.corrupted, fo);
        return logit_diff(*be, *m, r, pb.answer, pb.other).mean;
      };
      const float eps = 2e-3f;
      double numeric = (metric_at(eps) - metric_at(-eps)) / (2 * eps);
      // fp32 forward with eps=1e-2: truncation O(eps^2) and rounding ~1e-6/eps.
      EXPECT_NEAR(analytic, numeric, 2e-3 * std::max(1.0, std::fabs(numeric)))
          << "layer " << l << " pos " << pos;
    }
  }
}

}  // namespace
}  // namespace phi3
