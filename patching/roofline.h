// The roofline of `phi3patch bench`'s phases (issue 15): each phase run once through a
// TraceBackend, which tallies the bytes, FLOPs and launches of every op call
// (kernels/cuda/op_costs.h). Over a real backend the phase computes as usual; over a
// TraceBackend with no inner backend it computes nothing (bench --predict).
#pragma once
#include <string>
#include <vector>

#include "model/batch.h"
#include "model/forward.h"
#include "patching/sweep.h"
#include "runtime/trace_backend.h"

namespace phi3 {

struct Phase {
  std::string name;  // "forward", "attribution", "sweep resid_pre", "eap-ig scores", ...
  Trace trace;
  size_t start_bytes = 0;  // device bytes held through the TraceBackend when the phase began
  size_t peak_bytes = 0;   // the most held at once during the phase (start_bytes included)
  std::string refused;    // with TracePhaseOptions::oom_ends_phase: why the phase did not fit
};

struct TracePhaseOptions {
  bool eap_ig = false;         // add the EAP-IG edge scores (ig_steps steps) and their forwards
  int ig_steps = 5;
  bool oom_ends_phase = false; // an OutOfMemory ends that phase (Phase::refused) instead of the run
  bool sweeps = true;          // the exact sweep of each hook (quadratic in T: off for long-T fits)
  // > 0: a phase "verify-top K" (`run --verify-top K`): the exact patching of K nodes of the
  // first hook, the K whose patched runs cost the most (the prediction's worst case).
  int verify_top = 0;
  bool checkpoint = false;     // the attribution phase with checkpointed forwards (memory_plan.h)
};

// forward (no pattern), attribution (clean and corrupted in one 2B-row forward, backward,
// attribution of every hook; checkpointed and streamed with opt.checkpoint), then the exact
// sweep of each hook (the clean/corrupted sweep-cache forwards it starts from untallied but held), then optionally EAP-IG's scores (the two forwards, the
// per-head output weights and the scores). No forward keeps a [B,H,T,T] pattern.
std::vector<Phase> trace_phases(TraceBackend& tb, Trace& trace, const Model& m, const PairBatch& pb,
                                const std::vector<Hook>& hooks, const SweepOptions& sweep_opt,
                                const TracePhaseOptions& opt = {});

}  // namespace phi3
