#include "patching/circuit_run.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cmath>
#include <sstream>

#include "model/batch.h"
#include "patching/memory_plan.h"
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

CircuitInputs check_circuit_inputs(const Model& m, const CircuitOptions& opt) {
  const ModelConfig& c = m.cfg;
  check_circuit_support(c);
  const CircuitGraph g(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads);
  const int64_t n_edges = g.n_edges();
  if (opt.ig && opt.ig_steps < 1)
    throw Error("--ig-steps: EAP-IG needs at least one step, got " + std::to_string(opt.ig_steps));
  if (opt.edges > n_edges)
    throw Error("--edges " + std::to_string(opt.edges) + " is more than the graph's " + std::to_string(n_edges) +
                " edges (" + std::to_string(g.n_upstream()) + " upstream x " + std::to_string(g.n_downstream()) +
                " downstream nodes)");
  for (int64_t k : opt.grid)
    if (k < 0 || k > n_edges)
      throw Error("--edge-grid: " + std::to_string(k) + " is outside the graph's " + std::to_string(n_edges) + " edges");
  if (opt.batch_pairs < 0) throw Error("--batch: expected a positive number of pairs");
  CircuitInputs in;
  in.pairs = opt.pairs_text.empty() ? load_pairs(opt.pairs_file) : parse_pairs(opt.pairs_text, opt.pairs_file);
  check_tokenizable(in.pairs, m.tok, opt.pairs_file);
  if (opt.answer_first_token) in.answers_cut = use_first_answer_tokens(in.pairs, m.tok);
  check_pairs(in.pairs, m.tok, c.max_position_embeddings, opt.pairs_file, opt.add_bos, c.vocab_size, opt.mix);
  in.T = pair_batch_length(in.pairs, m.tok, opt.add_bos);
  return in;
}

CircuitRunResult run_circuit(Backend& be, const Model& m, const CircuitOptions& opt, Comm& comm) {
  auto log = [&](const std::string& s) {
    if (opt.log && comm.root()) opt.log(s);
  };
  const ModelConfig& c = m.cfg;
  const CircuitGraph g(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads);
  CircuitRunResult r;
  r.method = opt.ig ? "eap-ig" : "eap";
  r.direction = opt.noising ? "noise" : "denoise";
  r.selection = opt.greedy ? "greedy" : "top-k";
  r.pairs_file = opt.pairs_file;
  r.architecture = m.cfg.architecture;
  r.family = m.cfg.family;
  r.L = g.L();
  r.H = g.H();
  r.KVH = g.KVH();
  r.n_edges = g.n_edges();

  // The pairs, in batches of opt.batch_pairs padded to one length (bad input: one agreed error).
  std::vector<PromptPair> pairs;
  int per_batch = 0;
  auto t0 = std::chrono::steady_clock::now();  // scoring: from the first runs to the scores
  comm.agree_on([&] {
    CircuitInputs in = check_circuit_inputs(m, opt);
    pairs = std::move(in.pairs);
    r.answers_cut = std::move(in.answers_cut);
    r.T = in.T;
    r.mix = opt.mix;
    per_batch = opt.batch_pairs > 0 ? std::min<int>(opt.batch_pairs, static_cast<int>(pairs.size()))
                                    : static_cast<int>(pairs.size());
    // The memory plan (memory_plan.h), before any work: the scores of a batch hold every upstream
    // difference of its rows at once. Without --batch the largest batch that fits is taken
    // (halving); a batch that cannot fit stops here with the sizes.
    const size_t avail = plannable_bytes(be.free_memory());  // less the plan's margin (memory_plan.h)
    auto peak = [&](int n) {
      const PairBatch pb = make_pair_batch(std::vector<PromptPair>(pairs.begin(), pairs.begin() + n), m.tok,
                                           c.pad_token_id, c.max_position_embeddings, r.T, opt.add_bos, opt.mix);
      return circuit_scores_peak_bytes(be, m, pb, opt.ig, opt.ig_steps);
    };
    size_t need = peak(per_batch);
    while (opt.batch_pairs == 0 && per_batch > 1 && need > avail) need = peak(per_batch = (per_batch + 1) / 2);
    auto mib = [](size_t b) { return std::to_string(b >> 20) + " MiB"; };
    if (need > avail)
      throw OutOfMemory(std::string(opt.ig ? "EAP-IG" : "EAP") + " scores of " + std::to_string(per_batch) + " pair(s) of " +
                  std::to_string(r.T) + " tokens need " + mib(need) + " beyond the weights, more than the " +
                  mib(avail) + " available" +
                  (per_batch > 1 ? " (use --batch 1: " + mib(peak(1)) + ")" : std::string(" (shorter prompts)")) +
                  "; nothing was computed");
    if (opt.batch_pairs == 0 && per_batch < static_cast<int>(pairs.size()))
      log("memory plan: " + std::to_string(per_batch) + " pairs per batch (" + mib(need) + " each; all " +
          std::to_string(pairs.size()) + " at once would not fit the " + mib(avail) + " available)");
  });
  r.batches = (static_cast<int>(pairs.size()) + per_batch - 1) / per_batch;
  // One batch's pairs, its two runs and logit differences. With one batch the
  // runs are made once and kept; with several each pass below runs them again (the memory of
  // one batch at a time).
  struct Runs {
    PairBatch pb;
    ForwardState clean, corr;
  };
  auto runs_of = [&](int bi) {
    Runs x;
    const size_t lo = size_t(bi) * per_batch, hi = std::min(pairs.size(), lo + per_batch);
    x.pb = make_pair_batch(std::vector<PromptPair>(pairs.begin() + lo, pairs.begin() + hi), m.tok, c.pad_token_id,
                           c.max_position_embeddings, r.T, opt.add_bos, opt.mix);
    x.clean = forward(be, m, x.pb.clean);
    x.corr = forward(be, m, x.pb.corrupted);
    check_finite(be, m, x.clean, "clean");
    check_finite(be, m, x.corr, "corrupted");
    return x;
  };
  Runs kept;
  auto runs = [&](int bi) -> const Runs& {
    if (r.batches == 1 && kept.pb.clean.B > 0) return kept;
    kept = runs_of(bi);
    return kept;
  };
  comm.agree_on([&] {
    t0 = std::chrono::steady_clock::now();
    double sum_clean = 0, sum_corr = 0;
    for (int bi = 0; bi < r.batches; ++bi) {
      const Runs& x = runs(bi);
      const int rows = x.pb.clean.B;
      sum_clean += logit_diff(be, m, x.clean, x.pb.answer, x.pb.other).mean * rows;
      sum_corr += logit_diff(be, m, x.corr, x.pb.answer, x.pb.other).mean * rows;
      r.B += rows;
    }
    r.ld_clean = sum_clean / r.B;
    r.ld_corrupted = sum_corr / r.B;
    if (!(std::fabs(r.ld_clean - r.ld_corrupted) > 1e-6))
      throw Error(opt.pairs_file + ": the clean and corrupted logit differences are equal (" +
                  std::to_string(r.ld_clean) + "); the metric cannot be normalized and no circuit can be scored");
  });
  log("graph: " + std::to_string(g.n_upstream()) + " upstream, " + std::to_string(g.n_downstream()) +
      " downstream nodes, " + std::to_string(r.n_edges) + " edges; " + std::to_string(r.B) + " prompts of " +
      std::to_string(r.T) + " tokens" + (r.batches > 1 ? " in " + std::to_string(r.batches) + " batches" : ""));

  const HeadOutputWeights ow(be, m);
  EdgeScoreOptions so;
  so.ig = opt.ig;
  so.ig_steps = opt.ig_steps;
  so.noising = opt.noising;
  {  // rank 0 scores, every rank gets the scores
    std::string blob;
    comm.agree_on([&] {
      if (!comm.root()) return;
      // Each batch's scores are of its mean metric; the file's mean weighs them by rows.
      const float scale = static_cast<float>(1.0 / (r.ld_clean - r.ld_corrupted));
      for (int bi = 0; bi < r.batches; ++bi) {
        const Runs& x = runs(bi);
        const std::vector<float> s = edge_scores(be, m, ow, g, x.pb, x.clean, x.corr, scale, so);
        const double w = double(x.pb.clean.B) / r.B;  // 1 for one batch: its scores exactly
        r.scores.resize(s.size(), 0.0f);
        for (size_t i = 0; i < s.size(); ++i) r.scores[i] += static_cast<float>(w * s[i]);
      }
      blob.assign(reinterpret_cast<const char*>(r.scores.data()), r.scores.size() * sizeof(float));
    });
    blob = comm.bcast(blob);
    r.scores.resize(blob.size() / sizeof(float));
    std::memcpy(r.scores.data(), blob.data(), blob.size());
  }
  be.synchronize();
  r.score_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (float s : r.scores)
    if (!std::isfinite(s)) throw Error("edge scores: non-finite value; no results were written");
  log(r.method + " scores of " + std::to_string(r.n_edges) + " edges in " + std::to_string(r.score_seconds) + " s");

  // Every circuit (empty, full, the grid, an explicit --edges) in batched forwards.
  t0 = std::chrono::steady_clock::now();
  const std::vector<int64_t> grid = opt.grid.empty() ? default_edge_grid(r.n_edges) : opt.grid;
  std::vector<int64_t> ks = {0, r.n_edges};
  ks.insert(ks.end(), grid.begin(), grid.end());
  if (opt.edges >= 0) ks.push_back(opt.edges);
  // Pruning often makes several k the same circuit (small k: empty; large k: full): each
  // distinct circuit is run once, so equal circuits report equal values.
  std::vector<CircuitGraph::Mask> masks, distinct;
  std::vector<size_t> which;
  for (int64_t k : ks) {
    masks.push_back(opt.greedy ? g.greedy(r.scores, k) : g.top_k(r.scores, k));
    g.prune(masks.back());
    const auto it = std::find(distinct.begin(), distinct.end(), masks.back());
    which.push_back(size_t(it - distinct.begin()));
    if (it == distinct.end()) distinct.push_back(masks.back());
  }
  log("evaluating " + std::to_string(distinct.size()) + " distinct circuits exactly (empty, full, " +
      std::to_string(grid.size()) + " grid points" + (opt.edges >= 0 ? ", --edges" : "") + ")");
  // This rank's share of the distinct circuits (round robin), gathered on rank 0.
  std::vector<CircuitGraph::Mask> mine;
  for (size_t i = comm.rank(); i < distinct.size(); i += comm.size()) mine.push_back(distinct[i]);
  std::vector<std::vector<float>> mine_ld(mine.size());  // per circuit: every row of every batch
  comm.agree_on([&] {
    if (mine.empty()) return;
    for (int bi = 0; bi < r.batches; ++bi) {
      const Runs& x = runs(bi);
      const auto part = circuit_logit_diffs(be, m, ow, g, mine, x.pb, x.clean, x.corr, opt.mem_budget);
      for (size_t i = 0; i < mine.size(); ++i) mine_ld[i].insert(mine_ld[i].end(), part[i].begin(), part[i].end());
    }
  });
  std::string blob;
  for (const auto& v : mine_ld) blob.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  const std::vector<std::string> parts = comm.gather(blob);
  r.world_size = comm.size();
  std::vector<std::vector<float>> dlds(distinct.size(), std::vector<float>(size_t(r.B)));
  if (comm.root()) {
    for (int rk = 0; rk < comm.size(); ++rk) {
      size_t j = 0;
      int count = 0;
      for (size_t i = rk; i < distinct.size(); i += comm.size(), ++j, ++count) {
        PHI3_CHECK(parts[rk].size() >= (j + 1) * r.B * sizeof(float), "circuit: short result from a rank");
        std::memcpy(dlds[i].data(), parts[rk].data() + j * r.B * sizeof(float), r.B * sizeof(float));
      }
      r.circuits_per_rank.push_back(count);
    }
  }
  std::vector<std::vector<float>> lds;
  for (size_t w : which) lds.push_back(dlds[w]);
  r.circuit_forwards = static_cast<int>(distinct.size());
  auto point = [&](size_t i) {
    CircuitPoint p;
    p.k = ks[i];
    p.edges = g.count(masks[i]);
    p.logit_diff_per_row = lds[i];
    double s = 0;
    for (float v : lds[i]) s += v;
    p.logit_diff = s / std::max<size_t>(1, lds[i].size());
    return p;
  };
  r.ld_empty = point(0).logit_diff;
  r.ld_full = point(1).logit_diff;
  const double denom = r.ld_full - r.ld_empty;
  for (size_t i = 2; i < 2 + grid.size(); ++i) {
    CircuitPoint p = point(i);
    p.faithfulness = (p.logit_diff - r.ld_empty) / denom;
    log("circuit of " + std::to_string(p.k) + " edges by " + r.selection + " (" + std::to_string(p.edges) +
        " after pruning): faithfulness " + std::to_string(p.faithfulness));
    r.grid.push_back(p);
  }
  if (opt.edges >= 0) {
    r.chosen = point(ks.size() - 1);
    r.chosen.faithfulness = (r.chosen.logit_diff - r.ld_empty) / denom;
    r.chosen_mask = masks.back();
  } else {  // the smallest grid circuit reaching the target (else the most faithful)
    size_t best = 0;
    bool found = false;
    for (size_t i = 0; i < r.grid.size() && !found; ++i)
      if (r.grid[i].faithfulness >= opt.target) best = i, found = true;
    if (!found)
      for (size_t i = 0; i < r.grid.size(); ++i)
        if (r.grid[i].faithfulness > r.grid[best].faithfulness) best = i;
    r.chosen = r.grid[best];
    r.chosen_mask = masks[2 + best];
  }
  be.synchronize();
  r.eval_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace phi3
