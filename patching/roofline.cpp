#include "patching/roofline.h"

#include "model/backward.h"
#include "patching/attribution.h"

namespace phi3 {

std::vector<Phase> trace_phases(TraceBackend& tb, Trace& trace, const Model& m, const PairBatch& pb,
                                const std::vector<Hook>& hooks, const SweepOptions& sweep_opt) {
  std::vector<Phase> out;
  auto take = [&](const std::string& name) {
    tb.synchronize();
    out.push_back({name, trace});
    trace.ops.clear();
  };
  trace.ops.clear();
  ForwardOptions no_pattern;
  no_pattern.keep_pattern = false;
  { ForwardState s = forward(tb, m, pb.corrupted, no_pattern); }
  take("forward");
  {
    PairForward p = forward_pair(tb, m, pb.clean, pb.corrupted);
    Gradients g = backward(tb, m, p.corrupted, pb.answer, pb.other, 1.0f);
    for (Hook h : hooks) attribution(tb, m, p.corrupted, p.clean, g, h);
  }
  take("attribution");
  ForwardState clean = forward(tb, m, pb.clean), corrupted = forward(tb, m, pb.corrupted);
  trace.ops.clear();
  for (Hook h : hooks) {
    activation_sweep(tb, m, corrupted, clean, pb.answer, pb.other, h, sweep_opt);
    take("sweep " + hook_name(h));
  }
  return out;
}

}  // namespace phi3
