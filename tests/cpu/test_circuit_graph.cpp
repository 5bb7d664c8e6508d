// The circuit graph (issue 13 item 1): node and edge counts at the Phi-3-mini shape (the
// closed form against a brute-force count of has_edge), names, the edge rules, top-k choice and
// pruning to the connected part.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "patching/circuit_graph.h"
#include "runtime/error.h"

namespace phi3 {
namespace {

int64_t brute_force_edges(const CircuitGraph& g) {
  int64_t n = 0;
  for (int u = 0; u < g.n_upstream(); ++u)
    for (int v = 0; v < g.n_downstream(); ++v) n += g.has_edge(u, v);
  return n;
}

TEST(CircuitGraph, Phi3MiniCounts) {
  const CircuitGraph g(32, 32, 32);
  EXPECT_EQ(g.n_upstream(), 1057);
  EXPECT_EQ(g.n_downstream(), 3105);
  EXPECT_EQ(g.n_edges(), 1592881);
  EXPECT_EQ(brute_force_edges(g), g.n_edges());
  EXPECT_EQ(g.count(g.full_mask()), g.n_edges());
  const CircuitGraph gqa(32, 24, 8);  // Phi-4-mini's heads
  EXPECT_EQ(brute_force_edges(gqa), gqa.n_edges());
}

TEST(CircuitGraph, NamesAndEdgeRules) {
  const CircuitGraph g(2, 4, 2);
  using In = CircuitGraph::In;
  EXPECT_EQ(g.upstream_name(g.input()), "input");
  EXPECT_EQ(g.upstream_name(g.head(1, 3)), "a1.h3");
  EXPECT_EQ(g.upstream_name(g.mlp_out(0)), "m0");
  EXPECT_EQ(g.downstream_name(g.head_in(1, 2, In::Q)), "a1.h2<q>");
  EXPECT_EQ(g.downstream_name(g.head_in(0, 1, In::K)), "a0.h1<k>");
  EXPECT_EQ(g.downstream_name(g.head_in(0, 0, In::V)), "a0.h0<v>");
  EXPECT_EQ(g.downstream_name(g.mlp_in(1)), "m1");
  EXPECT_EQ(g.downstream_name(g.logits()), "logits");
  EXPECT_TRUE(g.has_edge(g.input(), g.head_in(0, 0, In::Q)));
  EXPECT_TRUE(g.has_edge(g.head(1, 0), g.mlp_in(1))) << "heads feed their own layer's MLP";
  EXPECT_FALSE(g.has_edge(g.mlp_out(1), g.mlp_in(1)));
  EXPECT_FALSE(g.has_edge(g.head(1, 0), g.head_in(1, 1, In::Q))) << "no edges between heads of one layer";
  EXPECT_TRUE(g.has_edge(g.head(0, 0), g.head_in(1, 1, In::V)));
  EXPECT_TRUE(g.has_edge(g.mlp_out(0), g.head_in(1, 0, In::K)));
  EXPECT_FALSE(g.has_edge(g.mlp_out(1), g.head_in(1, 0, In::K)));
  EXPECT_TRUE(g.has_edge(g.mlp_out(1), g.logits()));
  EXPECT_EQ(brute_force_edges(g), g.n_edges());
  EXPECT_THROW(CircuitGraph(2, 4, 3), Error);
}

TEST(CircuitGraph, TopKTakesTheLargestValidEdges) {
  const CircuitGraph g(3, 4, 2);
  const int U = g.n_upstream(), Dn = g.n_downstream();
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> s(size_t(U) * Dn);
  for (auto& x : s) x = nd(rng);
  // An invalid cell with the largest score of all is never chosen.
  s[size_t(g.mlp_out(2)) * Dn + g.mlp_in(2)] = 100.0f;
  const auto m = g.top_k(s, 10);
  EXPECT_EQ(g.count(m), 10);
  float smallest_in = INFINITY, largest_out = 0;
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < Dn; ++v) {
      if (!g.has_edge(u, v)) {
        EXPECT_EQ(m[size_t(u) * Dn + v], 0);
        continue;
      }
      const float a = std::fabs(s[size_t(u) * Dn + v]);
      if (m[size_t(u) * Dn + v]) smallest_in = std::min(smallest_in, a);
      else largest_out = std::max(largest_out, a);
    }
  EXPECT_GE(smallest_in, largest_out);
  EXPECT_EQ(g.count(g.top_k(s, g.n_edges())), g.n_edges());
  EXPECT_THROW(g.top_k(s, g.n_edges() + 1), Error);
}

TEST(CircuitGraph, PruneKeepsOnlyTheConnectedPart) {
  const CircuitGraph g(2, 4, 2);  // groups of 2 query heads per KV head
  using In = CircuitGraph::In;
  const int Dn = g.n_downstream();
  auto set = [&](CircuitGraph::Mask& m, int u, int v) {
    ASSERT_TRUE(g.has_edge(u, v));
    m[size_t(u) * Dn + v] = 1;
  };
  auto on = [&](const CircuitGraph::Mask& m, int u, int v) { return m[size_t(u) * Dn + v] != 0; };
  CircuitGraph::Mask m = g.empty_mask();
  // A connected chain: input -> a0.h0<q>, a0.h0 -> m0, m0 -> a1.h1<k> (KV head 1: heads 2, 3),
  // a1.h3 -> logits.
  set(m, g.input(), g.head_in(0, 0, In::Q));
  set(m, g.head(0, 0), g.mlp_in(0));
  set(m, g.mlp_out(0), g.head_in(1, 1, In::K));
  set(m, g.head(1, 3), g.logits());
  // Dangling: a head no edge reaches (a0.h2 -> logits), and an input to a head whose output
  // goes nowhere (input -> a1.h0<q>).
  set(m, g.head(0, 2), g.logits());
  set(m, g.input(), g.head_in(1, 0, In::Q));
  CircuitGraph::Mask kept = m;
  EXPECT_EQ(g.prune(kept), 2);
  EXPECT_TRUE(on(kept, g.input(), g.head_in(0, 0, In::Q)));
  EXPECT_TRUE(on(kept, g.head(0, 0), g.mlp_in(0)));
  EXPECT_TRUE(on(kept, g.mlp_out(0), g.head_in(1, 1, In::K))) << "a KV head serves every head of its group";
  EXPECT_TRUE(on(kept, g.head(1, 3), g.logits()));
  EXPECT_FALSE(on(kept, g.head(0, 2), g.logits()));
  EXPECT_FALSE(on(kept, g.input(), g.head_in(1, 0, In::Q)));
  EXPECT_EQ(g.prune(kept), 0) << "a fixpoint";
  // The full graph is connected: nothing to prune.
  CircuitGraph::Mask full = g.empty_mask();
  for (int u = 0; u < g.n_upstream(); ++u)
    for (int v = 0; v < Dn; ++v)
      if (g.has_edge(u, v)) full[size_t(u) * Dn + v] = 1;
  EXPECT_EQ(g.prune(full), 0);
}

}  // namespace
}  // namespace phi3

namespace phi3 {
namespace {

// Greedy choice: exactly k edges, each into the logits or into a node whose head / MLP already
// has a chosen outgoing edge (so pruning can only cut edges without a path from the input);
// the first edge is the largest into the logits; all edges at k = the edge count; a hand-made
// case where greedy and top-k differ.
TEST(CircuitGraph, GreedyGrowsFromTheLogits) {
  const CircuitGraph g(3, 4, 2);
  using In = CircuitGraph::In;
  const int U = g.n_upstream(), Dn = g.n_downstream(), grp = 2;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> s(size_t(U) * Dn);
  for (auto& x : s) x = nd(rng);
  for (int64_t k : {int64_t(1), int64_t(7), int64_t(40), int64_t(150), g.n_edges()}) {
    const CircuitGraph::Mask m = g.greedy(s, k);
    EXPECT_EQ(g.count(m), k);
    std::vector<uint8_t> has_out(U, 0);
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < Dn; ++v)
        if (m[size_t(u) * Dn + v]) {
          EXPECT_TRUE(g.has_edge(u, v));
          has_out[u] = 1;
        }
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < Dn; ++v) {
        if (!m[size_t(u) * Dn + v] || v == g.logits()) continue;
        const int l = g.downstream_layer(v);
        bool reader_in = false;  // the component reading v has a chosen outgoing edge
        if (v == g.mlp_in(l)) reader_in = has_out[g.mlp_out(l)];
        for (int h = 0; h < g.H(); ++h)
          if (v == g.head_in(l, h, In::Q) || v == g.head_in(l, h / grp, In::K) || v == g.head_in(l, h / grp, In::V))
            reader_in = reader_in || has_out[g.head(l, h)];
        EXPECT_TRUE(reader_in) << g.upstream_name(u) << " -> " << g.downstream_name(v) << " at k = " << k;
      }
  }
  // The first edge: the largest |score| into the logits.
  int best = 0;
  for (int u = 1; u < U; ++u)
    if (std::fabs(s[size_t(u) * Dn + g.logits()]) > std::fabs(s[size_t(best) * Dn + g.logits()])) best = u;
  EXPECT_EQ(g.greedy(s, 1)[size_t(best) * Dn + g.logits()], 1);
  // A large score into a node not yet in the circuit waits: top-1 takes it, greedy does not.
  std::vector<float> t(size_t(U) * Dn, 0.01f);
  t[size_t(g.input()) * Dn + g.head_in(0, 0, In::Q)] = 5.0f;
  t[size_t(g.head(0, 0)) * Dn + g.logits()] = 1.0f;
  EXPECT_EQ(g.top_k(t, 1)[size_t(g.input()) * Dn + g.head_in(0, 0, In::Q)], 1);
  const CircuitGraph::Mask g1 = g.greedy(t, 1), g2 = g.greedy(t, 2);
  EXPECT_EQ(g1[size_t(g.head(0, 0)) * Dn + g.logits()], 1);
  EXPECT_EQ(g2[size_t(g.input()) * Dn + g.head_in(0, 0, In::Q)], 1);  // once a0.h0 joined
  try {
    g.greedy(t, g.n_edges() + 1);
    ADD_FAILURE() << "greedy above the edge count must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the graph's"), std::string::npos);
  }
}

}  // namespace
}  // namespace phi3
