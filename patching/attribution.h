// Attribution patching (AtP, DESIGN §5): attr[l,p] = Σ_b Σ_d (source − base)[b,l,p,d] ·
// ∂metric/∂act[b,l,p,d], the gradient taken on the base run — two forward passes and one
// backward pass for every hook at once. Per-head variants sum over d_head of hook_z.
#pragma once
#include <vector>

#include "model/backward.h"

namespace phi3 {

// Values in the layout of sweep_targets(hook, ...): [L,T], [L,T,heads] (per-head hooks; heads
// = KV heads for k and v) or [L,heads] (all-position hooks).
std::vector<float> attribution(Backend& be, const Model& m, const ForwardState& base, const ForwardState& source,
                               const Gradients& base_grad, Hook hook);

// AtP*'s QK fix (attn_qk_fix, kernels/ops.h) for q, k, q_all_pos or k_all_pos, in the same
// layout, summed over batch rows: the effect of each query / key node through the attention
// pattern with the softmax recomputed exactly. `base_grad` must hold the pattern gradients
// (backward with keep_dpattern) and `base` the pattern. Source queries and keys are rotated
// at the base run's positions (TL semantics: hook_q/k are patched before rotary).
std::vector<float> attribution_qk_fix(Backend& be, const Model& m, const ForwardState& base,
                                      const ForwardState& source, const Gradients& base_grad, Hook hook);

}  // namespace phi3
