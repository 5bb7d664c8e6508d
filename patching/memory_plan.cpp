#include "patching/memory_plan.h"

#include <cstdio>

#include "model/backward.h"
#include "patching/attribution.h"
#include "patching/circuit.h"
#include "runtime/error.h"
#include "runtime/trace_backend.h"

namespace phi3 {

namespace {

// Bytes as GiB (2 decimals) from 1 GiB, else MiB (1 decimal).
std::string gib(size_t bytes) {
  char b[32];
  if (bytes >= (size_t(1) << 30))
    std::snprintf(b, sizeof b, "%.2f GiB", bytes / double(size_t(1) << 30));
  else
    std::snprintf(b, sizeof b, "%.1f MiB", bytes / double(size_t(1) << 20));
  return b;
}

// The peak bytes beyond the weights that work(backend, model) allocates, walked on a TraceBackend
// like `be` (kind, weight dtype) with placeholder weights of m's shape: nothing is computed.
template <typename Work>
size_t walk_peak(const Backend& be, const Model& m, Work&& work) {
  Trace trace;
  TraceBackend tb(nullptr, trace, be.kind(), be.weight_dtype(), 0, "memory plan");
  Model pm;
  pm.cfg = m.cfg;
  pm.w = ModelWeights::placeholder(tb, m.cfg);
  const size_t weights = tb.used_bytes();
  tb.reset_peak();
  work(static_cast<Backend&>(tb), static_cast<const Model&>(pm));
  tb.synchronize();
  return tb.peak_bytes() - weights;
}

}  // namespace

size_t plannable_bytes(size_t free_bytes) {
  const size_t margin = free_bytes * kPlanMarginPercent / 100 + (kPlanMarginMiB << 20);
  return free_bytes > margin ? free_bytes - margin : 0;
}

std::string plan_memory_line(size_t free_bytes) {
  return "memory plan: " + gib(free_bytes) + " free, planned against " + gib(plannable_bytes(free_bytes)) +
         " (margin: " + std::to_string(kPlanMarginPercent) + "% + " + std::to_string(kPlanMarginMiB) +
         " MiB for the CUDA context, cuBLAS workspaces and allocator fragments)";
}

PairBatch synthetic_pair(const ModelConfig& c, int T) {
  PairBatch pb;
  for (Batch* b : {&pb.clean, &pb.corrupted}) {
    b->B = 1;
    b->T = T;
    b->pad = {0};
    for (int t = 0; t < T; ++t) {
      b->tokens.push_back(1 + t % std::max(1, c.vocab_size - 1));
      b->pos.push_back(t);
    }
  }
  pb.answer = {std::min(2, c.vocab_size - 1)};
  pb.other = {std::min(3, c.vocab_size - 1)};
  return pb;
}

size_t estimates_peak_bytes(const Backend& be, const Model& m, const PairBatch& pb, const EstimatesWork& w, bool checkpoint) {
  return walk_peak(be, m, [&](Backend& tb, const Model& pm) {
  ForwardOptions fo;
  fo.keep_mlp_post = w.neurons;
  fo.keep_pattern = w.pattern && !checkpoint;
  fo.checkpoint = checkpoint;
  // As run_forwards does for estimates alone: clean and corrupted in one 2B-row pass.
  PairForward p = forward_pair(tb, pm, pb.clean, pb.corrupted, fo);
  if (!w.attribution_hooks.empty()) {
    if (checkpoint) {
      BackwardOptions bo;
      bo.keep_dmlp_post = w.neurons;
      attribution_streamed(tb, pm, p.corrupted, p.clean, pb.answer, pb.other, 1.0f, w.attribution_hooks, false, bo, "");
    } else {
      BackwardOptions bo;
      bo.keep_dmlp_post = w.neurons;
      const Gradients g = backward(tb, pm, p.corrupted, pb.answer, pb.other, 1.0f, bo);
      for (Hook h : w.attribution_hooks) attribution(tb, pm, p.corrupted, p.clean, g, h);
    }
  }
  if (!w.atp_star_hooks.empty()) atp_star(tb, pm, p.corrupted, p.clean, pb.answer, pb.other, 1.0f, w.atp_star_hooks);
  });
}

size_t circuit_scores_peak_bytes(const Backend& be, const Model& m, const PairBatch& pb, bool ig, int ig_steps) {
  return walk_peak(be, m, [&](Backend& tb, const Model& pm) {
    const ModelConfig& c = m.cfg;
    const CircuitGraph g(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads);
    const HeadOutputWeights ow(tb, pm);
    const ForwardState clean = forward(tb, pm, pb.clean), corrupted = forward(tb, pm, pb.corrupted);
    EdgeScoreOptions so;
    so.ig = ig;
    so.ig_steps = ig_steps;
    edge_scores(tb, pm, ow, g, pb, clean, corrupted, 1.0f, so);
  });
}

EstimatesPlan plan_estimates(const Backend& be, const Model& m, const PairBatch& pb, const PairBatch& one_pair,
                             const EstimatesWork& w, const std::string& recompute, size_t available) {
  if (recompute != "auto" && recompute != "on" && recompute != "off")
    throw Error("--recompute: expected auto, on or off, got '" + recompute + "'");
  EstimatesPlan p;
  p.available = available;
  const int B = pb.clean.B, T = pb.clean.T;
  const std::string shape = std::to_string(B) + " prompts of " + std::to_string(T) + " tokens";
  if (recompute != "on") p.full_bytes = estimates_peak_bytes(be, m, pb, w, false);
  const bool can_checkpoint = !w.pattern;
  if (recompute == "off" || (recompute == "auto" && p.full_bytes <= available) || !can_checkpoint) {
    if (recompute == "on" && !can_checkpoint)
      throw Error("--recompute on: the pattern hooks and AtP*'s QK fix need every layer's [B,H,T,T] pattern, which "
                  "a checkpointed pass does not keep");
    if (p.full_bytes > available)
      throw OutOfMemory("the estimates of a batch of " + shape + " need " + gib(p.full_bytes) + " of " +
                  (be.kind() == DeviceKind::CUDA ? "device" : "host") + " memory beyond the weights, more than the " +
                  gib(available) + " available" +
                  (can_checkpoint ? std::string(" (use --recompute auto or on: layers recomputed, ") +
                                        gib(estimates_peak_bytes(be, m, pb, w, true)) + ")"
                                  : std::string(" (pattern hooks and the AtP* QK fix keep every layer's [T,T] "
                                                "patterns: drop them, or shorten the prompts)")) +
                  "; one pair needs " + gib(estimates_peak_bytes(be, m, one_pair, w, false)) +
                  " (--batch 1); nothing was computed");
    p.note = "estimates: full pass, " + gib(p.full_bytes) + " predicted for " + shape;
    return p;
  }
  p.checkpoint_bytes = estimates_peak_bytes(be, m, pb, w, true);
  if (p.checkpoint_bytes > available)
    throw OutOfMemory("the estimates of a batch of " + shape + " need " + gib(p.checkpoint_bytes) +
                " even with every layer recomputed" +
                (p.full_bytes ? " (" + gib(p.full_bytes) + " without)" : std::string()) + ", more than the " +
                gib(available) + " available; one pair needs " + gib(estimates_peak_bytes(be, m, one_pair, w, true)) +
                " (--batch 1), or use shorter prompts or a device with more memory; nothing was computed");
  p.checkpoint = true;
  p.note = "estimates: layers recomputed in the backward (activation checkpointing), " + gib(p.checkpoint_bytes) +
           " predicted for " + shape +
           (p.full_bytes ? " instead of " + gib(p.full_bytes) + " (more than the " + gib(available) + " available)"
                         : std::string(" (--recompute on)"));
  return p;
}

}  // namespace phi3
