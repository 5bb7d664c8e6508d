#include "patching/roofline.h"

#include "model/backward.h"
#include "patching/attribution.h"
#include "patching/circuit.h"
#include "runtime/error.h"

#include <algorithm>
#include <functional>

namespace phi3 {

std::vector<Phase> trace_phases(TraceBackend& tb, Trace& trace, const Model& m, const PairBatch& pb,
                                const std::vector<Hook>& hooks, const SweepOptions& sweep_opt,
                                const TracePhaseOptions& opt) {
  std::vector<Phase> out;
  // Runs one phase: its ops tallied from a clean slate, its peak from what is held at its start.
  auto phase = [&](const std::string& name, const std::function<void()>& work) {
    tb.synchronize();
    trace.ops.clear();
    tb.reset_peak();
    Phase p{name, {}, tb.used_bytes(), 0, ""};
    try {
      work();
    } catch (const OutOfMemory& e) {
      if (!opt.oom_ends_phase) throw;
      p.refused = e.what();
    }
    tb.synchronize();
    p.trace = trace;
    p.peak_bytes = tb.peak_bytes();
    out.push_back(std::move(p));
    trace.ops.clear();
  };
  phase("forward", [&] {
    ForwardOptions no_pattern;
    no_pattern.keep_pattern = false;
    ForwardState s = forward(tb, m, pb.corrupted, no_pattern);
    check_finite(tb, m, s, "corrupted");  // on by default (`forward`, `run`): one flag a tensor
  });
  phase("attribution", [&] {
    ForwardOptions fo;
    fo.checkpoint = opt.checkpoint;
    PairForward p = forward_pair(tb, m, pb.clean, pb.corrupted, fo);
    check_finite(tb, m, p.clean, "clean");  // as `run` does (ExperimentOptions::check_finite)
    check_finite(tb, m, p.corrupted, "corrupted");
    if (opt.checkpoint) {
      attribution_streamed(tb, m, p.corrupted, p.clean, pb.answer, pb.other, 1.0f, hooks, false, {}, "backward");
      return;
    }
    Gradients g = backward(tb, m, p.corrupted, pb.answer, pb.other, 1.0f);
    check_finite(tb, m, g, "backward");
    for (Hook h : hooks) attribution(tb, m, p.corrupted, p.clean, g, h);
  });
  ForwardOptions cache;  // what `run` holds for an exact sweep alone (or --verify-top's)
  cache.sweep_cache = true;
  cache.cache_keep = sweep_cache_keep(hooks);
  ForwardState clean, corrupted;  // made by the first sweep phase, held through every sweep
  for (Hook h : opt.sweeps ? hooks : std::vector<Hook>{}) {
    phase("sweep " + hook_name(h), [&] {
      if (clean.B == 0) {  // both or neither (an out-of-memory in the second leaves none held)
        ForwardState c = forward(tb, m, pb.clean, cache);
        ForwardState r = forward(tb, m, pb.corrupted, cache);
        clean = std::move(c);
        corrupted = std::move(r);
        trace.ops.clear();  // only the sweep is tallied
      }
      activation_sweep(tb, m, corrupted, clean, pb.answer, pb.other, h, sweep_opt);
    });
  }
  if (opt.verify_top > 0 && !hooks.empty()) {
    phase("verify-top " + std::to_string(opt.verify_top), [&] {
      if (clean.B == 0) {
        ForwardState c = forward(tb, m, pb.clean, cache);
        ForwardState r = forward(tb, m, pb.corrupted, cache);
        clean = std::move(c);
        corrupted = std::move(r);
      }
      const std::vector<int64_t> cost = sweep_target_costs(tb, m, corrupted, clean, hooks[0]);
      std::vector<int64_t> order(cost.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
      order.resize(std::min<size_t>(order.size(), size_t(opt.verify_top)));
      std::sort(order.begin(), order.end());
      trace.ops.clear();  // only the exact runs are tallied
      SweepOptions so = sweep_opt;
      so.only = &order;
      activation_sweep(tb, m, corrupted, clean, pb.answer, pb.other, hooks[0], so);
    });
  }
  clean = ForwardState();
  corrupted = ForwardState();
  if (opt.eap_ig && circuits_supported(m.cfg)) {
    phase("eap-ig scores", [&] {
      const ModelConfig& c = m.cfg;
      const CircuitGraph g(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads);
      const HeadOutputWeights ow(tb, m);
      ForwardState clean = forward(tb, m, pb.clean), corrupted = forward(tb, m, pb.corrupted);
      EdgeScoreOptions so;
      so.ig = true;
      so.ig_steps = opt.ig_steps;
      edge_scores(tb, m, ow, g, pb, clean, corrupted, 1.0f, so);
    });
  }
  return out;
}

}  // namespace phi3
