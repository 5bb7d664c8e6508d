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
  std::string name;  // "forward", "attribution", "sweep resid_pre", ...
  Trace trace;
};

// forward (no pattern), attribution (clean and corrupted in one 2B-row forward, backward,
// attribution of every hook),
// then the exact sweep of each hook (the clean/corrupted forwards it starts from untallied).
std::vector<Phase> trace_phases(TraceBackend& tb, Trace& trace, const Model& m, const PairBatch& pb,
                                const std::vector<Hook>& hooks, const SweepOptions& sweep_opt);

}  // namespace phi3
