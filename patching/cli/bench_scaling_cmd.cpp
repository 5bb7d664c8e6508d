// `mpirun -np N phi3patch bench ...`: the distributed speed-up, measured side by side in one
// run. First rank 0 alone runs the experiment (attribution + exact activation patching of
// the bench's hooks) on its own share of the machine (one GPU; on CPUs, cores / ranks per
// node threads) while the others wait; then all N ranks run the same experiment together.
// Reports both wall times, the speed-up and parallel efficiency, each rank's work and the
// imbalance, and the largest difference between the two results (they must agree).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "patching/experiment.h"
#include "patching/batch_result.h"
#include "runtime/comm.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {
using Clock = std::chrono::steady_clock;

double max_diff(const ExperimentResult& a, const ExperimentResult& b) {
  double m = 0;
  for (size_t i = 0; i < a.results.size() && i < b.results.size(); ++i)
    for (size_t k = 0; k < a.results[i].values.size(); ++k)
      m = std::max(m, std::fabs(a.results[i].values[k] - b.results[i].values[k]));
  return m;
}
}  // namespace

int cmd_bench_scaling(const Args& a, Comm& comm) {
  const int N = comm.size();
  const std::string model_dir = a.get("model", default_path("data/models/tiny-temporal-phi3"));
  ExperimentOptions opt;
  opt.pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  opt.hooks = parse_hook_list(a.get("hooks", "resid_pre,attn_out,mlp_out"));
  opt.batch_pairs = a.get_int("batch", 0);
  const std::string method = a.get("method", "both");
  if (method != "both" && method != "attribution" && method != "activation")
    throw Error("--method: expected attribution, activation or both, got '" + method + "'" +
                did_you_mean(method, {"attribution", "activation", "both"}));
  opt.attribution = method != "activation";
  opt.activation = method != "attribution";
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> m;
  // The config, tokenizer and pairs are checked before any weight is read.
  comm.agree_on([&] {
    m = load_model_meta(model_dir);
    check_experiment_inputs(*m, opt);
  });
  comm.agree_on([&] {
    be = make_backend(a.get("device", "auto"), a.has("fp32"));
    load_weights(*be, *m);
  });
  opt.mem_budget = static_cast<size_t>(a.get_double("mem-budget", 0) * 1024 * 1024);
  const int repeat = std::max(1, a.get_int("repeat", 3));
  if (comm.root())
    std::cerr << "[bench] " << model_dir << " on " << be->name() << ": 1 rank, then " << N << " ranks, best of "
              << repeat << std::endl;

  // N = 1: rank 0 alone (the others wait without spinning).
  ExperimentResult r1, rn;
  double t1 = 1e30, tn = 1e30;
  if (comm.root()) {
    for (int i = 0; i < repeat; ++i) {
      const auto t0 = Clock::now();
      r1 = run_experiment(*be, *m, opt, Comm::self());
      t1 = std::min(t1, std::chrono::duration<double>(Clock::now() - t0).count());
    }
  }
  comm.barrier();
  for (int i = 0; i < repeat; ++i) {
    comm.barrier();
    const auto t0 = Clock::now();
    ExperimentResult r = run_experiment(*be, *m, opt, comm);
    comm.barrier();
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    if (t < tn) {
      tn = t;
      rn = std::move(r);
    }
  }
  if (!comm.root()) return 0;

  const nlohmann::json rs = ranks_summary(rn.ranks);
  const double imb_evals = rs["imbalance_token_layer_evals"], imb_secs = rs["imbalance_seconds"];
  const double diff = max_diff(r1, rn);
  nlohmann::json j = {{"model", model_dir},
                      {"device", be->name()},
                      {"pairs", opt.pairs_file},
                      {"batch_pairs", opt.batch_pairs},
                      {"prompts", rn.n_prompts},
                      {"T", rn.T},
                      {"hooks", a.get("hooks", "resid_pre,attn_out,mlp_out")},
                      {"method", method},
                      {"ranks", N},
                      {"per_rank_threads_note", "N = 1 is rank 0 alone with one rank's share of the node"},
                      {"seconds_1_rank", t1},
                      {"seconds_n_ranks", tn},
                      {"speedup", t1 / tn},
                      {"efficiency", t1 / tn / N},
                      {"imbalance_token_layer_evals", imb_evals},
                      {"imbalance_seconds", imb_secs},
                      {"max_abs_diff_vs_1_rank", diff},
                      {"work_ranks", rs["ranks"]},
                      {"repeat", repeat}};
  std::printf("device: %s (per rank)\nmodel: %s, %d prompts, T=%d\n", be->name().c_str(), model_dir.c_str(),
              rn.n_prompts, rn.T);
  std::printf("1 rank:  %10.3f s\n%d ranks: %10.3f s  -> speed-up %.2fx, parallel efficiency %.0f%%\n", t1, N, tn,
              t1 / tn, 100.0 * t1 / tn / N);
  for (const auto& w : rn.ranks)
    std::printf("  rank %d: %d batches, %lld token-layer evals, %lld patched runs, %.3f s computing\n", w.rank,
                w.batches, (long long)w.token_layer_evals, (long long)w.patched_runs, w.seconds);
  std::printf("imbalance (max/mean - 1): %.2f%% of token-layer evals, %.2f%% of seconds\n", 100 * imb_evals,
              100 * imb_secs);
  std::printf("max |difference| of the %d-rank results from the 1-rank results: %.3g\n", N, diff);
  if (a.has("json")) write_file_atomic(a.get("json", ""), j.dump(2) + "\n");
  return 0;
}

}  // namespace phi3
