// Exact activation patching (DESIGN §6): the metric of the base run with one activation
// replaced by the source run's value, for every (layer, position[, head]) of a hook.
//
// Fast mode reuses the shared prefix: patching (l, p) leaves every layer < l and every
// position < p equal to the base run, so a patched run recomputes only positions >= p in
// layers >= l, reading keys/values of earlier positions from the base run's cache; hooks
// after attention are applied to the patched rows of layer l alone ("tail"); at the last
// layer only the final position goes past attention. All runs of a chunk are packed into
// one token matrix (variable-length rows) so each layer is a few large GEMMs. A patch
// whose source and base values are bitwise equal is skipped (provably a no-op), and so is
// a patch after attention in the last layer at a position other than T-1 (it cannot
// reach the logits). Naive mode runs one full forward per patch, for verification.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/forward.h"
#include "model/metric.h"

namespace phi3 {

struct SweepWork {
  bool fast = true;
  int64_t patched_runs = 0;            // runs actually computed
  int64_t skipped_noop = 0;            // bitwise-equal source/base values
  int64_t skipped_causal = 0;          // cannot reach the last position's logits
  int64_t token_layer_evals = 0;       // (token row, layer) pairs computed
  int64_t naive_token_layer_evals = 0; // what one full forward per patch computes
  int chunks = 0;
  int streams = 1;                     // chunks computed concurrently (CUDA streams)
  double seconds = 0;

  // Sums the work of another slice or batch of the same hook's sweep (streams: the most).
  SweepWork& operator+=(const SweepWork& o) {
    patched_runs += o.patched_runs;
    skipped_noop += o.skipped_noop;
    skipped_causal += o.skipped_causal;
    token_layer_evals += o.token_layer_evals;
    naive_token_layer_evals += o.naive_token_layer_evals;
    chunks += o.chunks;
    streams = streams > o.streams ? streams : o.streams;
    seconds += o.seconds;
    return *this;
  }
};

struct SweepResult {
  Hook hook = Hook::ResidPre;
  std::vector<PatchSpec> targets;  // in row-major order of the result matrix
  std::vector<float> ld;           // [targets, B] per-row metric (logit difference by default) of each patched run
  SweepWork work;
};

// Row-major targets of a hook: [layer, pos] for block hooks, [layer, pos, head] for Z,
// [layer, head] for ZAllPos.
std::vector<PatchSpec> sweep_targets(Hook hook, int n_layers, int T, int n_heads);

struct SweepOptions {
  bool naive = false;
  size_t mem_budget = 0;  // bytes of work buffers per chunk (0: 1/4 of free device memory)
  int streams = 0;        // chunks in flight at once, each on its own stream (0: the backend's preference)
  std::function<void(int64_t done, int64_t total)> progress;  // optional
  // Only targets [first, last) are computed (last < 0: to the end); the others get NaN and
  // count in no work field. Lets ranks of a distributed job share one sweep.
  int64_t first = 0, last = -1;
  // Only these targets (indices into sweep_targets' order), e.g. the top candidates of an
  // attribution prefilter; the others get NaN and count in no work field. nullptr: all.
  const std::vector<int64_t>* only = nullptr;
};

// Token-layer evaluations each target's patched run costs (0: skipped as a no-op or
// causally; naive: a full forward each), in sweep_targets order: what the work of a sweep
// is balanced by when it is split across ranks.
std::vector<int64_t> sweep_target_costs(Backend& be, const Model& m, const ForwardState& base,
                                        const ForwardState& source, Hook hook, bool naive = false);

SweepResult activation_sweep(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                             const std::vector<int32_t>& answer, const std::vector<int32_t>& other, Hook hook,
                             const SweepOptions& opt = {});
// The same for any metric (model/metric.h); the spec's rows are the batch rows of base.
SweepResult activation_sweep(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                             const MetricSpec& metric, Hook hook, const SweepOptions& opt = {});

}  // namespace phi3
