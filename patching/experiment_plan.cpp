// run's memory plan before any work: whether the estimates' forwards are checkpointed, whether
// the exact sweep's forwards fit, and (without --batch) the batch halved until they do.
#include <algorithm>

#include "patching/experiment_job.h"
#include "patching/memory_plan.h"

namespace phi3 {
namespace experiment_detail {

namespace {
// Before any work: the estimates' peak memory (memory_plan.h) decides whether their forwards
// are checkpointed, and a batch whose forwards cannot be held for the exact sweep stops the
// run at once, with the sizes.
// Checks one batch size (pairs per batch) against the memory: the estimates' plan (checkpointed
// or not) and the sweep's two forwards; throws OutOfMemory with the sizes when it does not fit.
void plan_batch(Job& job, int per_batch) {
  const ExperimentOptions& opt = job.opt;
  const size_t free_now = job.be.free_memory();
  const size_t device_free = plannable_bytes(free_now);
  job.memory = MemoryReport{};
  job.memory.free_bytes = free_now;
  job.memory.plannable_bytes = device_free;
  const std::vector<PromptPair> sub(job.pairs.begin(), job.pairs.begin() + std::min<size_t>(job.pairs.size(), per_batch));
  const PairBatch pb = make_pair_batch(sub, job.m.tok, job.m.cfg.pad_token_id, job.m.cfg.max_position_embeddings, job.T,
                                       opt.add_bos, opt.mix);
  const std::vector<PromptPair> first(job.pairs.begin(), job.pairs.begin() + 1);
  const PairBatch one = make_pair_batch(first, job.m.tok, job.m.cfg.pad_token_id, job.m.cfg.max_position_embeddings,
                                        job.T, opt.add_bos, opt.mix);
  if (job.any_estimate()) {
    EstimatesWork w;
    for (const auto& a : job.accs) {
      if (a.method == Method::Attribution) w.attribution_hooks.push_back(a.hook);
      if (a.method == Method::AtpStar) w.atp_star_hooks.push_back(a.hook);
    }
    w.neurons = job.neurons();
    w.pattern = job.needs_pattern();
    // Estimates alone can be checkpointed (and --mem-budget bounds them); beside an exact sweep
    // the forwards keep every layer (the sweep reads them), so the full pass must fit.
    const bool alone = !job.any_sweep();
    if (!alone && opt.recompute == "on")
      throw Error("--recompute on applies to estimates alone: the exact sweep (--method activation) reads every "
                  "layer's activations");
    const EstimatesPlan p = plan_estimates(job.be, job.m, pb, one, w, alone ? opt.recompute : "off",
                                           alone && opt.mem_budget ? opt.mem_budget : device_free);
    job.checkpoint = p.checkpoint;
    job.memory.checkpointed = p.checkpoint;
    job.memory.planned_estimates_bytes = p.checkpoint ? p.checkpoint_bytes : p.full_bytes;
    job.plan_note = p.checkpoint ? p.note : std::string();
  }
  if (job.any_sweep() || opt.verify_top > 0) {
    const bool g16 = job.be.gemm_in_bf16();
    // As run_forwards: a sweep beside estimates reads full passes, the --verify-top pass (or a
    // sweep alone) a sweep cache.
    const bool cache = !(job.any_sweep() && job.any_estimate());
    // The sweeps' hooks: this job's, or (--verify-top) every hook, any of which may be verified.
    const SweepCacheKeep keep = job.any_sweep() ? job.cache_keep() : sweep_cache_keep(opt.hooks);
    auto bytes = [&](const PairBatch& b) {
      return 2 * (forward_arena_bytes(job.m, b.clean.B, b.clean.T, job.needs_pattern(), g16, job.neurons(), false,
                                      cache, keep) +
                  moe_pass_bytes(job.m, b.clean.B, b.clean.T));
    };
    job.memory.planned_sweep_forwards_bytes = bytes(pb);
    if (bytes(pb) > device_free)
      throw OutOfMemory("exact patching holds both runs' activations of a batch of " + std::to_string(pb.clean.B) +
                        " prompts of " + std::to_string(pb.clean.T) + " tokens: " + std::to_string(bytes(pb) >> 20) +
                        " MiB, more than the " + std::to_string(device_free >> 20) + " MiB available (one pair: " +
                        std::to_string(bytes(one) >> 20) + " MiB, --batch 1); nothing was computed");
  }
}
}  // namespace

// Before any work: the memory plan of the largest batch (plan_batch). Without --batch, a batch
// that does not fit is halved until one does (the run then has more batches; said so).
void plan_memory(Job& job) {
  // The sweep's lanes (own streams, cuBLAS handles and workspaces, allocated outside the pool)
  // exist before free memory is read and before any large pass.
  if (job.any_sweep() || job.opt.verify_top > 0) job.be.lanes(job.be.preferred_streams());
  if (!(job.opt.mem_budget && !job.any_sweep())) job.log(plan_memory_line(job.be.free_memory()));
  for (;;) {
    try {
      plan_batch(job, job.per_batch);
      break;
    } catch (const OutOfMemory&) {
      if (job.opt.batch_pairs > 0 || job.per_batch <= 1) throw;
      job.per_batch = (job.per_batch + 1) / 2;
      job.n_batches = (static_cast<int>(job.pairs.size()) + job.per_batch - 1) / job.per_batch;
      job.log("memory plan: " + std::to_string(job.per_batch) + " pairs per batch (all of them at once would not fit)");
    }
  }
  if (!job.plan_note.empty()) job.log(job.plan_note);
}

}  // namespace experiment_detail
}  // namespace phi3
