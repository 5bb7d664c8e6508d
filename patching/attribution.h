// Attribution patching (AtP, DESIGN §5): attr[l,p] = Σ_b Σ_d (source − base)[b,l,p,d] ·
// ∂metric/∂act[b,l,p,d], the gradient taken on the base run — two forward passes and one
// backward pass for every hook at once. Per-head variants sum over d_head of hook_z.
#pragma once
#include <string>
#include <vector>

#include "model/backward.h"

namespace phi3 {

// Values in the layout of sweep_targets(hook, ...): [L,T], [L,T,heads] (per-head hooks; heads
// = KV heads for k and v) or [L,heads] (all-position hooks).
std::vector<float> attribution(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                               const Gradients& base_grad, Hook hook);

// Per batch row: [B][cells], cells in the layout above (the sum over rows is attribution()).
std::vector<std::vector<float>> attribution_per_prompt(Backend& be, const Model& m, const ForwardState& base,
                                                       const ForwardState& source, const Gradients& base_grad,
                                                       Hook hook);

// AtP*'s QK fix (attn_qk_fix, kernels/ops.h) for q, k, q_all_pos or k_all_pos, in the same
// layout, summed over batch rows: the effect of each query / key node through the attention
// pattern with the softmax recomputed exactly. `base_grad` must hold the pattern gradients
// (backward with keep_dpattern) and `base` the pattern. Source queries and keys are rotated
// at the base run's positions (TL semantics: hook_q/k are patched before rotary).
std::vector<float> attribution_qk_fix(Backend& be, const Model& m, const ForwardState& base,
                                      const ForwardState& source, const Gradients& base_grad, Hook hook);
std::vector<std::vector<float>> qk_fix_per_prompt(Backend& be, const Model& m, const ForwardState& base,
                                                  const ForwardState& source, const Gradients& base_grad, Hook hook);

// AtP of every hook in `hooks` (no pattern hooks) from one backward pass that computes each
// layer's attribution as it reaches the layer and then drops that layer's gradients (and, for
// checkpointed forwards, its recomputed activations): memory of about one layer at any T.
// [hook][R][cells], R = B per row or 1 summed, cells in the layout of attribution() (bitwise
// its values). `bo`: GradDrop and neurons as for backward(); check_name non-empty: stop at the
// first non-finite gradient, naming the run.
std::vector<std::vector<std::vector<float>>> attribution_streamed(Backend& be, const Model& m, const ForwardState& base,
                                                                 const ForwardState& source,
                                                                 const std::vector<int32_t>& answer,
                                                                 const std::vector<int32_t>& other, float scale,
                                                                 const std::vector<Hook>& hooks, bool per_row,
                                                                 BackwardOptions bo, const std::string& check_name);
std::vector<std::vector<std::vector<float>>> attribution_streamed(Backend& be, const Model& m, const ForwardState& base,
                                                                 const ForwardState& source, const MetricSpec& metric,
                                                                 float scale, const std::vector<Hook>& hooks,
                                                                 bool per_row, BackwardOptions bo,
                                                                 const std::string& check_name);

// AtP* (Kramár et al. 2024): c(n) = sum_b 1/(L-1) sum_l |I_l(n, b)|, I_l the AtP estimate of
// node n on batch row b (the QK-fixed one for q and k nodes) with GradDrop at layer l
// (BackwardOptions::drop_layer): L backward passes. Unsigned, in the layout of attribution(),
// one vector per hook. base: the run patched into (its pattern kept); scale as backward().
std::vector<std::vector<float>> atp_star(Backend& be, const Model& m, const ForwardState& base,
                                         const ForwardState& source, const std::vector<int32_t>& answer,
                                         const std::vector<int32_t>& other, float scale,
                                         const std::vector<Hook>& hooks);
// The same for any metric (model/metric.h).
std::vector<std::vector<float>> atp_star(Backend& be, const Model& m, const ForwardState& base,
                                         const ForwardState& source, const MetricSpec& metric, float scale,
                                         const std::vector<Hook>& hooks);

}  // namespace phi3
