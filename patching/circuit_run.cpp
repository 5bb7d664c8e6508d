#include "patching/circuit_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "model/batch.h"
#include "patching/circuit.h"
#include "runtime/error.h"

namespace phi3 {

std::vector<int64_t> default_edge_grid(int64_t n_edges) {
  std::vector<int64_t> g;
  for (int64_t p = 1; p < n_edges; p *= 10)
    for (int64_t f : {1, 2, 5})
      if (p * f < n_edges) g.push_back(p * f);
  g.push_back(n_edges);
  return g;
}

std::vector<int64_t> parse_edge_grid(const std::string& list, int64_t n_edges) {
  std::vector<int64_t> g;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t used = 0;
    long long k = -1;
    try {
      k = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || k < 0)
      throw Error("--edge-grid: '" + item + "' is not a number of edges");
    if (k > n_edges)
      throw Error("--edge-grid: " + item + " is outside the graph's " + std::to_string(n_edges) + " edges");
    g.push_back(k);
  }
  if (g.empty()) throw Error("--edge-grid: no value given");
  std::sort(g.begin(), g.end());
  g.erase(std::unique(g.begin(), g.end()), g.end());
  return g;
}

CircuitRunResult run_circuit(Backend& be, const Model& m, const CircuitOptions& opt) {
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };
  const ModelConfig& c = m.cfg;
  const CircuitGraph g(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads);
  CircuitRunResult r;
  r.method = opt.ig ? "eap-ig" : "eap";
  r.direction = opt.noising ? "noise" : "denoise";
  r.pairs_file = opt.pairs_file;
  r.L = g.L();
  r.H = g.H();
  r.KVH = g.KVH();
  r.n_edges = g.n_edges();
  if (opt.ig && opt.ig_steps < 1)
    throw Error("--ig-steps: EAP-IG needs at least one step, got " + std::to_string(opt.ig_steps));
  if (opt.edges > r.n_edges)
    throw Error("--edges " + std::to_string(opt.edges) + " is more than the graph's " + std::to_string(r.n_edges) +
                " edges (" + std::to_string(g.n_upstream()) + " upstream x " + std::to_string(g.n_downstream()) +
                " downstream nodes)");
  for (int64_t k : opt.grid)
    if (k < 0 || k > r.n_edges)
      throw Error("--edge-grid: " + std::to_string(k) + " is outside the graph's " + std::to_string(r.n_edges) +
                  " edges");

  const std::vector<PromptPair> pairs = load_pairs(opt.pairs_file);
  check_pairs(pairs, m.tok, c.max_position_embeddings, opt.pairs_file, opt.add_bos, c.vocab_size);
  const PairBatch pb = make_pair_batch(pairs, m.tok, c.pad_token_id, c.max_position_embeddings, 0, opt.add_bos);
  r.B = pb.clean.B;
  r.T = pb.clean.T;
  const ForwardState clean = forward(be, m, pb.clean), corr = forward(be, m, pb.corrupted);
  check_finite(be, m, clean, "clean");
  check_finite(be, m, corr, "corrupted");
  r.ld_clean = logit_diff(be, m, clean, pb.answer, pb.other).mean;
  r.ld_corrupted = logit_diff(be, m, corr, pb.answer, pb.other).mean;
  if (!(std::fabs(r.ld_clean - r.ld_corrupted) > 1e-6))
    throw Error(opt.pairs_file + ": the clean and corrupted logit differences are equal (" +
                std::to_string(r.ld_clean) + "); the metric cannot be normalized and no circuit can be scored");
  log("graph: " + std::to_string(g.n_upstream()) + " upstream, " + std::to_string(g.n_downstream()) +
      " downstream nodes, " + std::to_string(r.n_edges) + " edges; " + std::to_string(r.B) + " prompts of " +
      std::to_string(r.T) + " tokens");

  const HeadOutputWeights ow(be, m);
  EdgeScoreOptions so;
  so.ig = opt.ig;
  so.ig_steps = opt.ig_steps;
  so.noising = opt.noising;
  auto t0 = std::chrono::steady_clock::now();
  r.scores = edge_scores(be, m, ow, g, pb, clean, corr, static_cast<float>(1.0 / (r.ld_clean - r.ld_corrupted)), so);
  be.synchronize();
  r.score_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (float s : r.scores)
    if (!std::isfinite(s)) throw Error("edge scores: non-finite value; no results were written");
  log(r.method + " scores of " + std::to_string(r.n_edges) + " edges in " + std::to_string(r.score_seconds) + " s");

  t0 = std::chrono::steady_clock::now();
  auto evaluate = [&](int64_t k) {
    CircuitPoint p;
    p.k = k;
    CircuitGraph::Mask mask = g.top_k(r.scores, k);
    g.prune(mask);
    p.edges = g.count(mask);
    p.logit_diff_per_row = circuit_logit_diff(be, m, ow, g, mask, pb, clean, corr);
    double s = 0;
    for (float v : p.logit_diff_per_row) s += v;
    p.logit_diff = s / std::max<size_t>(1, p.logit_diff_per_row.size());
    ++r.circuit_forwards;
    return std::make_pair(p, mask);
  };
  r.ld_empty = evaluate(0).first.logit_diff;
  r.ld_full = evaluate(r.n_edges).first.logit_diff;
  const double denom = r.ld_full - r.ld_empty;
  const std::vector<int64_t> grid = opt.grid.empty() ? default_edge_grid(r.n_edges) : opt.grid;
  std::vector<CircuitGraph::Mask> masks;
  for (size_t i = 0; i < grid.size(); ++i) {
    auto [p, mask] = evaluate(grid[i]);
    p.faithfulness = (p.logit_diff - r.ld_empty) / denom;
    r.grid.push_back(p);
    masks.push_back(std::move(mask));
    log("circuit of the top " + std::to_string(p.k) + " edges (" + std::to_string(p.edges) +
        " after pruning): faithfulness " + std::to_string(p.faithfulness) + " [" + std::to_string(i + 1) + "/" +
        std::to_string(grid.size()) + "]");
  }
  if (opt.edges >= 0) {
    auto [p, mask] = evaluate(opt.edges);
    p.faithfulness = (p.logit_diff - r.ld_empty) / denom;
    r.chosen = p;
    r.chosen_mask = std::move(mask);
  } else {  // the smallest grid circuit reaching the target (else the most faithful)
    size_t best = 0;
    bool found = false;
    for (size_t i = 0; i < r.grid.size() && !found; ++i)
      if (r.grid[i].faithfulness >= opt.target) best = i, found = true;
    if (!found)
      for (size_t i = 0; i < r.grid.size(); ++i)
        if (r.grid[i].faithfulness > r.grid[best].faithfulness) best = i;
    r.chosen = r.grid[best];
    r.chosen_mask = masks[best];
  }
  be.synchronize();
  r.eval_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace phi3
