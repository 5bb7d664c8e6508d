// `circuit --export mib` (patching/circuit_mib.h): the MIB circuit-localization layout of a
// circuit run on the GPT-2 reference model (MHA, pre-norms): EAP-IG's names, every edge of the
// graph once with the run's score, in_graph from the reported circuit; refused on GQA.
#include <gtest/gtest.h>

#include <set>

#include "model/model.h"
#include "patching/circuit_mib.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(CircuitMib, GraphJsonOfTheGpt2Reference) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/reference/rand-gpt2-tiny/model");
  check_mib_support(m->cfg);
  CircuitOptions o;
  o.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
  o.ig_steps = 2;
  o.grid = {5, 20};
  o.edges = 20;
  const CircuitRunResult r = run_circuit(*be, *m, o);
  const auto j = mib_graph_json(r, m->cfg.hidden_size);
  const int L = 3, H = 4;
  EXPECT_EQ(j["cfg"]["n_layers"], L);
  EXPECT_EQ(j["cfg"]["n_heads"], H);
  EXPECT_EQ(j["cfg"]["parallel_attn_mlp"], false);
  EXPECT_EQ(j["cfg"]["d_model"], 48);
  // Nodes: input, a<l>.h<h>, m<l>, logits.
  EXPECT_EQ(j["nodes"].size(), size_t(1 + L * (H + 1) + 1));
  for (const char* n : {"input", "a0.h0", "a2.h3", "m0", "m2", "logits"}) EXPECT_TRUE(j["nodes"].contains(n)) << n;
  // Edges: EAP-IG's Graph.from_model count for L layers of H heads, non-parallel attention/MLP.
  int64_t expect = 0, stream = 1;
  for (int l = 0; l < L; ++l) {
    expect += stream * 3 * H;  // into every head's q, k, v
    stream += H;
    expect += stream;  // into the MLP
    stream += 1;
  }
  expect += stream;  // into the logits
  const CircuitGraph g(L, H, H);
  EXPECT_EQ(int64_t(j["edges"].size()), expect);
  EXPECT_EQ(int64_t(j["edges"].size()), g.n_edges());
  // The first and last edges in the library's order, and names of each kind.
  EXPECT_EQ(j["edges"].begin().key(), "input->a0.h0<q>");
  EXPECT_EQ((--j["edges"].end()).key(), "m2->logits");
  for (const char* e : {"input->a1.h2<k>", "a0.h3->m0", "a0.h1->a2.h0<v>", "m1->a2.h3<q>", "a2.h3->logits"})
    EXPECT_TRUE(j["edges"].contains(e)) << e;
  EXPECT_FALSE(j["edges"].contains("a1.h0->a1.h1<q>"));  // a head does not feed its own layer's heads
  // Scores are the run's, in_graph the reported circuit's edges.
  const size_t Dn = size_t(g.n_downstream());
  int64_t in_graph = 0;
  for (int u = 0; u < g.n_upstream(); ++u)
    for (int v = 0; v < g.n_downstream(); ++v) {
      if (!g.has_edge(u, v)) continue;
      const auto& e = j["edges"][g.upstream_name(u) + "->" + g.downstream_name(v)];
      EXPECT_EQ(e["score"].get<float>(), r.scores[size_t(u) * Dn + v]);
      EXPECT_EQ(e["in_graph"].get<bool>(), r.chosen_mask[size_t(u) * Dn + v] != 0);
      in_graph += e["in_graph"].get<bool>();
    }
  EXPECT_EQ(in_graph, r.chosen.edges);
  EXPECT_GT(in_graph, 0);
  EXPECT_TRUE(j["nodes"]["logits"]["in_graph"].get<bool>());
}

TEST(CircuitMib, RefusedOnGqa) {
  auto m = load_model_meta(test::source_dir() + "/data/reference/rand-qwen2-bias-swa/model");
  try {
    check_mib_support(m->cfg);
    FAIL() << "GQA accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key/value heads"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace phi3
