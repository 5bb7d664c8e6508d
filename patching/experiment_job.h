// The job of run_experiment as its pieces share it (patching/experiment_*.cpp; not part of
// the public patching/experiment.h): the (hook, method) accumulators, the Job every rank
// knows, a rank's Share of a batch, a batch's Forwards, attempt/agree_attempt, and the
// phases' entry points.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "patching/batch_result.h"
#include "patching/experiment.h"
#include "patching/work_split.h"
#include "runtime/error.h"

namespace phi3 {

class CheckpointDir;

namespace experiment_detail {

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One (hook, method) of the job.
enum class Method { Attribution, AtpStar, Activation, Verify };
inline const char* method_name(Method m) {
  switch (m) {
    case Method::Attribution: return "attribution";
    case Method::AtpStar: return "atp-star";
    case Method::Activation: return "activation";
    case Method::Verify: return "verified";
  }
  return "?";
}
struct AccSpec {
  Hook hook;
  Method method;
  // Verify: the chosen targets; Activation with --positions: the targets in the region
  // (sweep_targets indices, ascending; empty: every target). Matrix cells outside are NaN.
  std::vector<int64_t> only;
  bool sweep() const { return method == Method::Activation || method == Method::Verify; }
  bool restricted() const { return method == Method::Verify || !only.empty(); }
};

// What every rank knows about the job (one phase of it: the estimates and full sweeps, then
// the exact check of the --verify-top nodes).
struct Job {
  Backend& be;
  const Model& m;
  const ExperimentOptions& opt;
  std::vector<PromptPair> pairs;
  int T = 0, per_batch = 0, n_batches = 0, L = 0, H = 0;
  std::vector<AccSpec> accs;
  std::vector<int64_t> n_targets;  // per acc: targets of a sweep (0 for an estimate)
  std::vector<std::string> answers_cut;  // --answer-first-token
  std::vector<int> layers;  // --layers (ascending; empty: every layer)
  bool checkpoint = false;  // the estimates' forwards keep layer inputs only (memory_plan.h)
  std::string plan_note;    // what the memory plan chose (a progress line)
  MemoryReport memory;      // the plan's figures (results.json "memory"; measured ones added after the run)

  bool has(Method x) const {
    return std::any_of(accs.begin(), accs.end(), [x](const AccSpec& a) { return a.method == x; });
  }
  bool any_estimate() const { return has(Method::Attribution) || has(Method::AtpStar); }
  bool any_sweep() const { return has(Method::Activation) || has(Method::Verify); }
  bool neurons() const {
    return std::any_of(accs.begin(), accs.end(), [](const AccSpec& a) { return a.hook == Hook::MlpPost; });
  }
  // The [B,H,T,T] patterns are kept only where they are used: a hook_pattern node (its values
  // patched or attributed) or AtP*'s QK fix (q/k hooks).
  // What the sweeps' hooks read of a sweep-cache forward.
  SweepCacheKeep cache_keep() const {
    std::vector<Hook> hs;
    for (const auto& a : accs)
      if (a.sweep()) hs.push_back(a.hook);
    return sweep_cache_keep(hs);
  }
  bool needs_pattern() const {
    return std::any_of(accs.begin(), accs.end(), [](const AccSpec& a) {
      const Hook b = hook_base(a.hook);
      return hook_is_pattern(a.hook) || (a.method == Method::AtpStar && (b == Hook::Q || b == Hook::K));
    });
  }
  // Token-layer evaluations of a batch's estimates: a backward costs about two forwards,
  // AtP* runs one per layer.
  int64_t estimate_cost(int B) const {
    return 2 * int64_t(B) * T * L * ((has(Method::Attribution) ? 1 : 0) + (has(Method::AtpStar) ? L : 0));
  }
  void set_targets() {
    n_targets.clear();
    for (const auto& a : accs)
      n_targets.push_back(a.restricted() ? static_cast<int64_t>(a.only.size())
                          : a.sweep() ? static_cast<int64_t>(sweep_targets(a.hook, L, T, hook_heads(a.hook, m.cfg)).size())
                                      : 0);
  }

  bool in_layers(int l) const { return layers.empty() || std::binary_search(layers.begin(), layers.end(), l); }
  int rows(int bi) const {  // prompts of batch bi (every pair both ways, or once with --no-mix)
    return (opt.mix ? 2 : 1) * static_cast<int>(std::min<size_t>(pairs.size(), size_t(bi + 1) * per_batch) - size_t(bi) * per_batch);
  }
  PairBatch batch(int bi) const {
    std::vector<PromptPair> sub(pairs.begin() + size_t(bi) * per_batch,
                                pairs.begin() + std::min<size_t>(pairs.size(), size_t(bi + 1) * per_batch));
    return make_pair_batch(sub, m.tok, m.cfg.pad_token_id, m.cfg.max_position_embeddings, T, opt.add_bos, opt.mix);
  }
  void stop_point() const {
    if (opt.should_stop && opt.should_stop()) throw Error("interrupted (Ctrl-C); no results were written");
  }
  void log(const std::string& s) const {
    if (opt.log) opt.log(s);
  }
};

// This rank's share of one batch: the estimates (whole) and a target range per sweep acc
// (Verify: a range of its chosen list).
struct Share {
  bool estimates = true;
  std::vector<Range> act;  // per acc
};

// The clean and corrupted forwards of a batch, checked.
struct Forwards {
  PairBatch pb;
  PairForward pair;  // clean and corrupted (one 2B-row pass when no sweep runs)
  const ForwardState& clean() const { return pair.clean; }
  const ForwardState& corrupted() const { return pair.corrupted; }
};

// Runs fn; returns "" or the error it threw, with its exit code (3: out of memory, 130:
// interrupted, 2: anything else).
template <typename Fn>
std::string attempt(const Job& job, int& code, Fn&& fn) {
  try {
    fn();
    return "";
  } catch (const OutOfMemory& e) {
    code = 3;
    return e.what();
  } catch (const std::bad_alloc&) {
    code = 3;
    return "out of host memory; lower --mem-budget or --batch, or use a smaller model";
  } catch (const std::exception& e) {
    code = job.opt.should_stop && job.opt.should_stop() ? 130 : 2;
    return e.what();
  }
}

// attempt(fn), then every rank agrees on how it went (the error and its exit code: code is read
// after fn ran, which comm.agree(attempt(...), code) did not guarantee).
template <typename Fn>
void agree_attempt(Comm& comm, const Job& job, int& code, Fn&& fn) {
  const std::string err = attempt(job, code, std::forward<Fn>(fn));
  comm.agree(err, code);
}

// ---- experiment_batch.cpp: a batch's forwards and a rank's share of its work --------------
Share whole_share(const Job& job);
Forwards run_forwards(const Job& job, int bi, RankWork& rw);
BatchResult compute_share(const Job& job, int bi, const Forwards& f, const Share& share, RankWork& rw);
std::vector<int64_t> batch_units(const Job& job, const Forwards& f);
Share share_of(const Job& job, Range r);

// ---- experiment_rounds.cpp: every batch of one phase, in rounds over the ranks -------------
int run_batches(Job& job, Comm& comm, CheckpointDir* ckpt, const nlohmann::json& fp, std::map<int, BatchResult>& done,
                RankWork& rw, int& code);

// ---- experiment_aggregate.cpp: batches -> matrices, estimates against the exact sweep ------
size_t matrix_index(Hook hook, const PatchSpec& t, int T, int H);
void aggregate_batches(const Job& job, const std::map<int, BatchResult>& done, ExperimentResult& R);
void aggregate_results(const Job& job, const std::map<int, BatchResult>& done, ExperimentResult& R);
const MatrixResult* find_result(const ExperimentResult& R, Hook h, const std::string& method);
void compare_estimates(const Job& job, ExperimentResult& R);

// ---- experiment_stats.cpp -------------------------------------------------------------------
std::vector<size_t> top_abs(const std::vector<double>& v, size_t k);

// ---- experiment_verify_top.cpp: the --verify-top nodes --------------------------------------
std::vector<AccSpec> choose_verify(const Job& job, const ExperimentResult& R, const std::string& by);
void list_verified(const Job& job, ExperimentResult& R);

// ---- experiment_figures.cpp -----------------------------------------------------------------
void pattern_figures(const Job& job, ExperimentResult& R);

// ---- experiment_plan.cpp: batch size and checkpointing against the memory -------------------
void plan_memory(Job& job);

}  // namespace experiment_detail
}  // namespace phi3
