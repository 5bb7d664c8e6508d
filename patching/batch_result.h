// The raw results of one pair batch, before they are averaged into the experiment's
// matrices: what a rank sends to rank 0 and what a checkpoint file holds. Only per-patch
// scalars travel (logit differences per target and prompt, attribution per cell), plus the
// batch's summary (tokens, top-3, clean/corrupted logit differences).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "patching/experiment.h"

namespace phi3 {

// One (hook, method) of one batch, possibly a slice of its targets.
struct ResultPart {
  int acc = 0;                  // index into the job's (hook, method) list
  std::vector<float> values;    // attribution: [cells], sweep_targets order; activation:
                                // [targets * B] logit differences (NaN outside [first, last))
  int64_t first = 0, last = 0;  // activation: the targets computed
  SweepWork work;
  double seconds = 0;
};

struct BatchResult {
  int batch = -1;
  bool has_summary = false;
  BatchSummary summary;
  std::vector<ResultPart> parts;
};

nlohmann::json to_json(const BatchResult& r);
BatchResult batch_result_from_json(const nlohmann::json& j);  // throws Error on a malformed file

// Per-rank work (RankWork) as it travels to rank 0 and appears in results.json.
nlohmann::json to_json(const RankWork& w);
RankWork rank_work_from_json(const nlohmann::json& j);
// {"ranks": [...], "imbalance_token_layer_evals", "imbalance_seconds"} (max / mean - 1).
nlohmann::json ranks_summary(const std::vector<RankWork>& ranks);

// Merges the slices of one batch (parts of the same acc cover disjoint target ranges) into
// one part per acc, in acc order. Throws when a target is covered twice or not at all.
BatchResult merge_parts(std::vector<BatchResult> pieces, int n_accs, const std::vector<int64_t>& n_targets, int B);

}  // namespace phi3
