// run (patching/experiment.h): the job set up on every rank (inputs, methods, memory plan),
// its phases in order (batches, aggregation, --verify-top, comparisons, figures) from
// patching/experiment_*.cpp, and check_methods.
#include <algorithm>
#include <map>
#include <memory>

#include "patching/checkpoint.h"
#include "patching/experiment_job.h"
#include "patching/positions.h"

namespace phi3 {

using namespace experiment_detail;

void check_methods(const ExperimentOptions& opt) {
  if (!opt.attribution && !opt.activation && !opt.atp_star) throw Error("--method: no method chosen");
  if (opt.verify_top < 0) throw Error("--verify-top: expected a positive number of nodes");
  if (opt.verify_top > 0 && opt.activation)
    throw Error("--verify-top with the activation method: exact patching of every node already runs; "
                "choose --method atp-star or attribution to verify only the top nodes");
  if (opt.verify_top > 0 && !opt.attribution && !opt.atp_star)
    throw Error("--verify-top needs an estimate to rank the nodes by (--method atp-star or attribution)");
  if (!opt.positions.empty() && !opt.activation)
    throw Error("--positions restricts the exact sweep: it needs --method activation (or both / all)");
}

ExperimentResult run_experiment(Backend& be, const Model& m, const ExperimentOptions& options, Comm& comm) {
  const auto t_all = Clock::now();
  ExperimentOptions opt = options;  // --verify-top's own choice of methods (auto_methods) may drop AtP*
  const int N = comm.size();
  Job job{be, m, opt, {}, 0, 0, 0, m.cfg.num_hidden_layers, m.cfg.num_attention_heads, {}, {}, {}, {}, false, {}};
  int code = 2;
  // ---- the job, identical on every rank ----------------------------------------------------
  std::vector<int> region;  // --positions: the exact sweep of each hook only there (all-position hooks: every target)
  agree_attempt(comm, job, code, [&] {
    ExperimentInputs in = check_experiment_inputs(m, opt);
    job.pairs = std::move(in.pairs);
    job.answers_cut = std::move(in.answers_cut);
    job.T = in.T;
    region = std::move(in.positions);
    job.layers = std::move(in.layers);
    job.per_batch = opt.batch_pairs > 0 ? opt.batch_pairs : static_cast<int>(job.pairs.size());
  });
  job.n_batches = (static_cast<int>(job.pairs.size()) + job.per_batch - 1) / job.per_batch;
  // --positions and --layers: the exact sweep of each hook only there (all-position hooks:
  // every target of the layers).
  auto build_accs = [&] {
    job.accs.clear();
    for (Hook h : opt.hooks) {
      if (opt.attribution) job.accs.push_back({h, Method::Attribution, {}});
      if (opt.atp_star) job.accs.push_back({h, Method::AtpStar, {}});
      if (opt.activation) {
        AccSpec a{h, Method::Activation, {}};
        const std::vector<PatchSpec> targets = sweep_targets(h, job.L, job.T, hook_heads(h, m.cfg));
        for (size_t t = 0; (!region.empty() || !job.layers.empty()) && t < targets.size(); ++t)
          if ((region.empty() || targets[t].pos < 0 || std::binary_search(region.begin(), region.end(), targets[t].pos)) &&
              job.in_layers(targets[t].layer))
            a.only.push_back(static_cast<int64_t>(t));
        job.accs.push_back(std::move(a));
      }
    }
    job.set_targets();
  };
  build_accs();
  if (opt.auto_methods && opt.verify_top > 0)
    job.log("--verify-top " + std::to_string(opt.verify_top) + " without --method: AtP* and AtP estimate every node" +
            (job.layers.empty() ? std::string() : " of --layers " + opt.layers) + ", the top " +
            std::to_string(opt.verify_top) + " by |AtP*| are patched exactly (no full sweep)");
  // --verify-top's own choice: AtP* where it can run, else AtP alone (rank 0 decides).
  auto drop_atp_star = [&] {
    opt.atp_star = false;
    build_accs();
  };
  bool star_dropped = false;
  std::string star_why;
  agree_attempt(comm, job, code, [&] {
    if (opt.auto_methods && opt.atp_star && opt.attribution) {
      const int per_batch = job.per_batch, n_batches = job.n_batches;
      try {
        plan_memory(job);
        return;
      } catch (const std::exception& e) {
        star_why = e.what();
        star_dropped = true;
        job.per_batch = per_batch;
        job.n_batches = n_batches;
        drop_atp_star();
      }
    }
    plan_memory(job);
  });
  if (opt.auto_methods && opt.verify_top > 0) {
    const bool dropped = comm.bcast(comm.root() ? std::string(star_dropped ? "1" : "0") : std::string()) == "1";
    if (dropped && !star_dropped) drop_atp_star();
    agree_attempt(comm, job, code, [&] {
      if (dropped || !star_dropped) return;
      opt.atp_star = true;  // this rank alone could not plan AtP*: rank 0's methods, planned again
      build_accs();
      plan_memory(job);
    });
    if (dropped) job.log("AtP* cannot run here (" + star_why + "); AtP ranks the nodes instead");
  }
  // Every rank runs the same batches: rank 0's plan (free memory can differ between ranks; the
  // checkpointing choice may differ, its results are the same bits).
  job.per_batch = std::stoi(comm.bcast(std::to_string(job.per_batch)));
  job.n_batches = (static_cast<int>(job.pairs.size()) + job.per_batch - 1) / job.per_batch;

  ExperimentResult R;
  R.model_dir = m.dir;
  R.architecture = m.cfg.architecture;
  R.family = m.cfg.family;
  R.pad_token_id = m.cfg.pad_token_id;
  R.pad_token_source = m.cfg.pad_token_source;
  R.device = be.name();
  R.pairs_file = opt.pairs_file;
  R.direction = opt.noising ? "noise" : "denoise";
  R.add_bos = opt.add_bos;
  R.answers_cut = job.answers_cut;
  R.T = job.T;
  R.exact_positions = region;
  R.exact_layers = job.layers;
  R.mix = opt.mix;
  R.world_size = N;
  if (N > 1)
    job.log(std::to_string(N) + " ranks: batches dealt to ranks, each round's patches split across them by cost");

  std::map<int, BatchResult> done;
  nlohmann::json fp;
  std::unique_ptr<CheckpointDir> ckpt, verify_ckpt;
  if (!opt.checkpoint_out.empty()) {
    ckpt = std::make_unique<CheckpointDir>(opt.checkpoint_out);
    verify_ckpt = std::make_unique<CheckpointDir>(opt.checkpoint_out, "checkpoints-verify");
    fp = job_fingerprint(opt, m, be, job.T, job.n_batches);
  }
  RankWork rw;
  rw.rank = comm.rank();
  R.memory = job.memory;
  be.synchronize();
  const size_t allocated_before = be.allocated_bytes();
  be.reset_peak_allocated();
  R.resumed_batches = run_batches(job, comm, ckpt.get(), fp, done, rw, code);
  if (be.tracks_allocations()) {
    be.synchronize();
    const size_t peak = be.peak_allocated_bytes();
    R.memory.measured = true;
    R.memory.measured_peak_bytes = peak > allocated_before ? peak - allocated_before : 0;
  }
  if (comm.root()) {
    aggregate_batches(job, done, R);
    aggregate_results(job, done, R);
  }

  // ---- --verify-top: exact patching of the best-ranked nodes, every batch again -------------
  if (opt.verify_top > 0) {
    R.verify_ranked_by = opt.atp_star ? "atp-star" : "attribution";
    Job verify = job;
    std::string chosen;
    if (comm.root()) {
      nlohmann::json list = nlohmann::json::array();
      for (const AccSpec& a : choose_verify(job, R, R.verify_ranked_by))
        list.push_back({{"hook", hook_name(a.hook)}, {"targets", a.only}});
      chosen = list.dump();
    }
    const std::string chosen_all = comm.bcast(chosen);
    verify.accs.clear();
    for (const auto& e : nlohmann::json::parse(chosen_all))
      verify.accs.push_back({parse_hook(e["hook"].get<std::string>()), Method::Verify,
                             e["targets"].get<std::vector<int64_t>>()});
    verify.set_targets();
    job.log("exact check of the top " + std::to_string(opt.verify_top) + " nodes by |" +
            (opt.atp_star ? "AtP*" : "AtP") + "|");
    nlohmann::json vfp = fp;
    if (ckpt) vfp["verify"] = nlohmann::json::parse(chosen_all);
    std::map<int, BatchResult> vdone;
    run_batches(verify, comm, verify_ckpt.get(), vfp, vdone, rw, code);
    if (comm.root()) {
      aggregate_results(verify, vdone, R);
      list_verified(verify, R);
    }
  }

  // ---- per-rank work, then the comparisons (rank 0) ------------------------------------------
  std::vector<std::string> all = comm.gather(to_json(rw).dump());
  if (!comm.root()) return R;
  for (const auto& s : all) {
    const RankWork w = rank_work_from_json(nlohmann::json::parse(s));
    R.ranks.push_back(w);
    R.forward_seconds += w.forward_seconds;
  }
  PHI3_CHECK(static_cast<int>(done.size()) == job.n_batches, "distributed run lost batches");
  compare_estimates(job, R);
  pattern_figures(job, R);
  R.wall_seconds = since(t_all);
  job.log("done in " + std::to_string(since(t_all)) + " s");
  return R;
}

}  // namespace phi3
