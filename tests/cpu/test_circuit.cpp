// Circuit discovery end to end (issue 13): `phi3patch circuit` on the embedded model, its
// files and their consistency, and properties of the scores that must hold exactly. The
// values themselves are checked against the PyTorch reference by verify (test_reference).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "patching/circuit.h"
#include "patching/circuit_run.h"
#include "test_util.h"

namespace phi3 {
namespace {

using test::slurp;

// A model of the repository with the seed pairs' two runs, its graph and head weights.
struct PairRuns {
  explicit PairRuns(const std::string& model_rel)
      : be(make_cpu_backend()),
        m(load_model(*be, test::source_dir() + model_rel)),
        pb(make_pair_batch(load_pairs(test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"),
                           m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings)),
        clean(forward(*be, *m, pb.clean)),
        corr(forward(*be, *m, pb.corrupted)),
        g(m->cfg.num_hidden_layers, m->cfg.num_attention_heads, m->cfg.num_key_value_heads),
        ow(*be, *m) {}
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> m;
  PairBatch pb;
  ForwardState clean, corr;
  CircuitGraph g;
  HeadOutputWeights ow;
};

TEST(Circuit, CommandWritesConsistentOutputs) {
  const std::string out = test::temp_dir("circuit_cli");
  const std::string cmd = std::string(PHI3_CLI) + " circuit --device cpu --out " + out +
                          " --edge-grid 0,10,100,479 --edges 60 >" + out + "/stdout.txt 2>" + out + "/stderr.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(out + "/stderr.txt");
  const auto j = nlohmann::json::parse(slurp(out + "/circuit.json"));
  EXPECT_EQ(j["graph"]["edges"].get<int>(), 479);  // 4 layers, 4 heads, 4 KV heads
  EXPECT_GT(j["timing"]["score_seconds"].get<double>(), 0);
  EXPECT_GT(j["timing"]["eval_seconds"].get<double>(), 0);
  EXPECT_EQ(j["timing"]["circuit_forwards"].get<int>(), 5);  // empty, full, 10, 100, --edges 60 (0 = empty, 479 = full)
  const double clean = j["logit_diff"]["clean"], corr = j["logit_diff"]["corrupted"];
  EXPECT_NEAR(j["logit_diff"]["full_circuit"].get<double>(), clean, 1e-4);
  EXPECT_NEAR(j["logit_diff"]["empty_circuit"].get<double>(), corr, 1e-4);
  const auto& grid = j["faithfulness"];
  ASSERT_EQ(grid.size(), 4u);
  EXPECT_EQ(grid[0]["k"].get<int>(), 0);
  EXPECT_EQ(grid[0]["faithfulness"].get<double>(), 0.0);
  EXPECT_EQ(grid[3]["faithfulness"].get<double>(), 1.0);
  EXPECT_EQ(grid[3]["edges_after_pruning"].get<int>(), 479);
  EXPECT_LE(grid[1]["edges_after_pruning"].get<int>(), 10);
  EXPECT_EQ(j["circuit"]["k"].get<int>(), 60);
  const int chosen = j["circuit"]["edges_after_pruning"];
  EXPECT_GT(chosen, 0);
  EXPECT_LE(chosen, 60);
  EXPECT_EQ(j["circuit"]["edges"].size(), size_t(chosen));
  // edges.csv: every edge once, by |score|, the circuit's flagged.
  std::istringstream csv(slurp(out + "/edges.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line, "rank,upstream,downstream,score,in_circuit");
  int rows = 0, flagged = 0;
  double prev = INFINITY;
  while (std::getline(csv, line)) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    std::string x;
    while (std::getline(ls, x, ',')) f.push_back(x);
    ASSERT_EQ(f.size(), 5u) << line;
    const double s = std::fabs(std::stod(f[3]));
    EXPECT_LE(s, prev) << line;
    prev = s;
    flagged += f[4] == "1";
    ++rows;
  }
  EXPECT_EQ(rows, 479);
  EXPECT_EQ(flagged, chosen);
  for (const char* f : {"faithfulness.svg", "circuit.svg", "report.html"})
    EXPECT_GT(slurp(out + "/" + f).size(), 500u) << f;
  EXPECT_NE(slurp(out + "/stdout.txt").find("faithfulness"), std::string::npos);
}

TEST(Circuit, GreedySelectionFromTheCommand) {
  const std::string out = test::temp_dir("circuit_greedy");
  const std::string cmd = std::string(PHI3_CLI) + " circuit --device cpu --select greedy --method eap --out " + out +
                          " --edge-grid 100,479 >" + out + "/stdout.txt 2>" + out + "/stderr.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(out + "/stderr.txt");
  const auto j = nlohmann::json::parse(slurp(out + "/circuit.json"));
  EXPECT_EQ(j["method"], "eap");
  EXPECT_EQ(j["selection"].get<std::string>().rfind("greedy", 0), 0u);
  EXPECT_EQ(j["faithfulness"][1]["faithfulness"].get<double>(), 1.0);
  EXPECT_LE(j["faithfulness"][0]["edges_after_pruning"].get<int>(), 100);
  EXPECT_GT(j["faithfulness"][0]["edges_after_pruning"].get<int>(), 0);
}

TEST(Circuit, NoisingScoresAreTheNegatedDenoisingOnesForEapIg) {
  const PairRuns r("/data/models/tiny-temporal-phi3");
  Backend* be = r.be.get();
  const Model* m = r.m.get();
  const PairBatch& pb = r.pb;
  const ForwardState &clean = r.clean, &corr = r.corr;
  const CircuitGraph& g = r.g;
  const HeadOutputWeights& ow = r.ow;
  EdgeScoreOptions o;
  o.ig = true;
  o.ig_steps = 3;
  const auto dn = edge_scores(*be, *m, ow, g, pb, clean, corr, 0.1f, o);
  o.noising = true;
  const auto no = edge_scores(*be, *m, ow, g, pb, clean, corr, 0.1f, o);
  ASSERT_EQ(dn.size(), no.size());
  double big = 0;
  for (size_t i = 0; i < dn.size(); ++i) {
    EXPECT_EQ(dn[i], -no[i]) << i;
    big = std::max(big, double(std::fabs(dn[i])));
  }
  EXPECT_GT(big, 1e-3);
  // One IG step is EAP (the corrupted endpoint only).
  o.noising = false;
  o.ig_steps = 1;
  const auto ig1 = edge_scores(*be, *m, ow, g, pb, clean, corr, 0.1f, o);
  o.ig = false;
  const auto eap = edge_scores(*be, *m, ow, g, pb, clean, corr, 0.1f, o);
  for (size_t i = 0; i < eap.size(); ++i) EXPECT_EQ(ig1[i], eap[i]) << i;
  // Cells that are not edges score 0.
  for (int u = 0; u < g.n_upstream(); ++u)
    for (int v = 0; v < g.n_downstream(); ++v)
      if (!g.has_edge(u, v)) {
        EXPECT_EQ(dn[size_t(u) * g.n_downstream() + v], 0.0f);
      }
}

TEST(Circuit, BatchedCircuitForwardsEqualSingleOnes) {
  const PairRuns r("/data/reference/rand-gqa-partial-longrope-sharded/model");
  Backend* be = r.be.get();
  const Model* m = r.m.get();
  const PairBatch& pb = r.pb;
  const ForwardState &clean = r.clean, &corr = r.corr;
  const CircuitGraph& g = r.g;
  const HeadOutputWeights& ow = r.ow;
  std::vector<float> scores(size_t(g.n_upstream()) * g.n_downstream());
  for (size_t i = 0; i < scores.size(); ++i) scores[i] = std::sin(0.37f * float(i));  // an arbitrary order
  std::vector<CircuitGraph::Mask> masks;
  for (int64_t k : {int64_t(0), int64_t(5), int64_t(20), int64_t(40), int64_t(60), g.n_edges()}) masks.push_back(g.top_k(scores, k));
  const auto one = circuit_logit_diffs(*be, *m, ow, g, masks, pb, clean, corr, 0, 1);
  const auto all = circuit_logit_diffs(*be, *m, ow, g, masks, pb, clean, corr, 0, 0);
  const auto four = circuit_logit_diffs(*be, *m, ow, g, masks, pb, clean, corr, 0, 4);  // chunks of 4 and 2
  ASSERT_EQ(one.size(), masks.size());
  ASSERT_EQ(all.size(), masks.size());
  ASSERT_EQ(four.size(), masks.size());
  const LogitDiff lc = logit_diff(*be, *m, clean, pb.answer, pb.other), lk = logit_diff(*be, *m, corr, pb.answer, pb.other);
  for (size_t i = 0; i < masks.size(); ++i)
    for (int b = 0; b < pb.clean.B; ++b) {
      // A circuit's rows sit elsewhere in a bigger GEMM: equal to rounding (this random config's
      // near one-hot attention amplifies it; measured 1.2e-5 of an LD of 1.56).
      EXPECT_NEAR(all[i][b], one[i][b], 1e-4) << i << " " << b;
      EXPECT_NEAR(four[i][b], one[i][b], 1e-4) << i << " " << b;
      if (i == 0) {
        EXPECT_NEAR(one[i][b], lk.per_row[b], 1e-4);  // the empty circuit is the corrupted run
      }
      if (i + 1 == masks.size()) {
        EXPECT_NEAR(one[i][b], lc.per_row[b], 1e-4);  // the full one the clean run
      }
    }
}

// --batch: the 48-pair file in batches of 5 pairs (10 batches, the last of 3) gives the scores
// and every circuit's per-row logit differences of the whole file in one batch (the rows are
// independent; only summation order differs).
TEST(Circuit, PairBatchesGiveTheWholeFilesResults) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/models/tiny-temporal-phi3");
  CircuitOptions o;
  o.pairs_file = test::source_dir() + "/data/temporal_scope_pairs.json";
  o.ig_steps = 2;
  o.grid = {10, 50, 200};
  const CircuitRunResult one = run_circuit(*be, *m, o);
  o.batch_pairs = 5;
  const CircuitRunResult many = run_circuit(*be, *m, o);
  EXPECT_EQ(one.batches, 1);
  EXPECT_EQ(many.batches, 10);
  EXPECT_EQ(many.B, one.B);
  EXPECT_EQ(many.B, 96);
  EXPECT_EQ(many.T, one.T);
  EXPECT_NEAR(many.ld_clean, one.ld_clean, 1e-5);
  EXPECT_NEAR(many.ld_corrupted, one.ld_corrupted, 1e-5);
  ASSERT_EQ(many.scores.size(), one.scores.size());
  double big = 0, diff = 0;
  for (size_t i = 0; i < one.scores.size(); ++i) {
    big = std::max(big, double(std::fabs(one.scores[i])));
    diff = std::max(diff, double(std::fabs(one.scores[i] - many.scores[i])));
  }
  EXPECT_GT(big, 1e-3);
  EXPECT_LT(diff, 1e-5 * big) << "largest score " << big;
  ASSERT_EQ(many.grid.size(), one.grid.size());
  for (size_t k = 0; k < one.grid.size(); ++k) {
    EXPECT_EQ(many.grid[k].edges, one.grid[k].edges) << "k = " << one.grid[k].k;
    ASSERT_EQ(many.grid[k].logit_diff_per_row.size(), 96u);
    for (size_t row = 0; row < 96; ++row)
      EXPECT_NEAR(many.grid[k].logit_diff_per_row[row], one.grid[k].logit_diff_per_row[row], 1e-4) << k << " " << row;
    EXPECT_NEAR(many.grid[k].faithfulness, one.grid[k].faithfulness, 1e-5);
  }
  EXPECT_NEAR(many.ld_full, one.ld_clean, 1e-4);  // the full circuit is the clean run
}

TEST(Circuit, EdgeGridParsing) {
  EXPECT_EQ(parse_edge_grid("100,10,10,0", 479), (std::vector<int64_t>{0, 10, 100}));
  EXPECT_EQ(default_edge_grid(479), (std::vector<int64_t>{1, 2, 5, 10, 20, 50, 100, 200, 479}));
  EXPECT_EQ(default_edge_grid(1000), (std::vector<int64_t>{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}));
  EXPECT_NE(test::error_of([] { parse_edge_grid("10,480", 479); }).find("480 is outside the graph's 479 edges"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { parse_edge_grid("ten", 479); }).find("'ten' is not a number"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse_edge_grid("-5", 479); }).find("'-5'"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse_edge_grid(",", 479); }).find("no value"), std::string::npos);
}

}  // namespace
}  // namespace phi3
