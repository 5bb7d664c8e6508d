// The memory planner of the estimates (AtP, AtP*; issue 25): before any work, the peak device
// memory of one batch's estimates is predicted by walking the engine's exact allocation
// sequence through a TraceBackend that computes nothing (placeholder weights, no data), for
// the full pass (every layer's activations and gradients kept) and the checkpointed one (each
// layer's input kept, its internals recomputed and its gradients consumed one layer at a time).
// The run then uses the full pass where it fits, the checkpointed one where only that fits,
// and otherwise stops at once with the sizes needed and what would make it fit.
#pragma once
#include <string>
#include <vector>

#include "model/batch.h"
#include "model/hooks.h"
#include "model/model.h"
#include "runtime/backend.h"

namespace phi3 {

// What a plan may use of the memory a device reports free (Backend::free_memory): that less a
// margin of kPlanMarginPercent of it plus kPlanMarginMiB, for what no plan walks: the CUDA
// context's and cuBLAS's own allocations made later (a lane's handle and workspace), and the
// stream-ordered pool's rounding and fragments. The plan itself counts every byte the engine
// allocates, the kernels' scratch included (runtime/trace_backend.h). A --mem-budget is used
// as given (no margin: the caller chose it).
constexpr size_t kPlanMarginPercent = 5;
constexpr size_t kPlanMarginMiB = 256;
size_t plannable_bytes(size_t free_bytes);
// "memory plan: X free, Y planned against (margin: 5% + 256 MiB)" for the progress log.
std::string plan_memory_line(size_t free_bytes);

struct EstimatesWork {
  std::vector<Hook> attribution_hooks;  // AtP
  std::vector<Hook> atp_star_hooks;     // AtP*
  bool neurons = false;                 // mlp_post among them (its fp32 copy kept)
  bool pattern = false;                 // pattern hooks or the QK fix: every layer's pattern kept
};

// One pair (B = 1 each way) of T-token prompts (token ids 1, 2, ...; answer tokens 2 and 3) for
// a model shape: what long-prompt fits are predicted for. No context check (the fit is about
// memory; callers report the shape's context length beside it).
PairBatch synthetic_pair(const ModelConfig& c, int T);

// Peak bytes (weights excluded) of the estimates of `pb` on a backend like `be` (its kind and
// weight dtype), with or without checkpointing; the forwards included.
size_t estimates_peak_bytes(const Backend& be, const Model& m, const PairBatch& pb, const EstimatesWork& w, bool checkpoint);

struct EstimatesPlan {
  bool checkpoint = false;
  size_t full_bytes = 0, checkpoint_bytes = 0, available = 0;
  std::string note;  // what was chosen and why (a progress line)
};

// Chooses for the batch: recompute "auto" (full where it fits `available` bytes, else
// checkpointed), "on" or "off"; throws Error naming the sizes, the one-pair figure and the
// options that would help when the chosen pass does not fit. one_pair: the same work for a
// batch of one pair (for the message).
EstimatesPlan plan_estimates(const Backend& be, const Model& m, const PairBatch& pb, const PairBatch& one_pair,
                             const EstimatesWork& w, const std::string& recompute, size_t available);

// Peak bytes (weights excluded) of EAP / EAP-IG edge scores of `pb` on a backend like `be`: the
// transposed output weights, both runs' forwards and the scores (every upstream difference of
// the batch at once: U x B*T x D). The circuit command chooses its batch of pairs from it.
size_t circuit_scores_peak_bytes(const Backend& be, const Model& m, const PairBatch& pb, bool ig, int ig_steps);

}  // namespace phi3
