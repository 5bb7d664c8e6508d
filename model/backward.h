// Backward from the (normalized) logit-difference metric to every hook activation —
// activation gradients only, never weight gradients (DESIGN §5).
#pragma once
#include <functional>
#include <vector>

#include "model/forward.h"
#include "model/metric.h"

namespace phi3 {

class FiniteCheck;  // model/finite_check.h

struct LayerGrads {
  DeviceArray<float> resid_pre;   // [N,D]  d/d hook_resid_pre
  DeviceArray<float> resid_mid;   // [N,D]  d/d hook_resid_mid (= d/d hook_attn_out)
  DeviceArray<float> resid_post;  // [N,D]  d/d hook_resid_post (= d/d hook_mlp_out)
  DeviceArray<float> z;           // [N,H*HD]
  DeviceArray<float> q_rot;       // [N,H*HD]
  DeviceArray<float> k_rot;       // [N,KVH*HD]
  DeviceArray<float> qkv;         // [N,(H+2KVH)*HD]  d/d hook_q | hook_k | hook_v
  DeviceArray<float> act;         // [N,F]  d/d hook_mlp_post (BackwardOptions::keep_dmlp_post)
  DeviceArray<float> router;      // [N,E]  d/d hook_router (MoE models), the routing held fixed
};

struct Gradients {
  std::vector<LayerGrads> layers;
  int q_width = 0, kv_width = 0;  // where k and v start in a qkv gradient row
  std::vector<DeviceArray<float>> dpattern;  // [L] of [B,H,T,T] when kept (0 off the visible set)
  int dropped_layer = -1;                     // BackwardOptions::drop_layer
  DeviceArray<float> zeros;                   // [N, max(D, qkv width)]: the dropped layer's node gradients
  // Gradient for the attribution of a block/z hook at layer l (d hook_attn_out = d resid_mid,
  // d hook_mlp_out = d resid_post).
  const float* hook_grad(Hook h, int l) const;
  // d metric / d activation by TransformerLens name (as ForwardState::activation; no
  // pattern or logits gradients are kept).
  TensorView gradient(const Backend& be, const Model& m, int B, int T, const std::string& name) const;
};

// d metric / d activations where metric = mean_b M(b) * scale (scale = 1/(M_clean -
// M_corrupted) for the normalized metric); M the logit difference, or the metric of a
// MetricSpec (model/metric.h).
struct BackwardOptions {
  bool keep_dpattern = false;  // also keep d metric / d pattern of every layer (AtP* QK fix)
  // AtP* GradDrop (Kramár et al. 2024, section 3.2): the gradient of layer `drop_layer`'s
  // outputs (its attention and MLP writes to the residual stream) is set to 0, so no
  // gradient flows through that layer's blocks; the residual stream itself passes. The
  // layer's own nodes (attn_out, mlp_out, z, q, k, v) get a zero gradient. -1: none.
  int drop_layer = -1;
  bool keep_dmlp_post = false;  // keep d metric / d hook_mlp_post of every layer (neurons)
  // Called as the pass finishes each layer (last layer first) with that layer's activations (the
  // forward's, or recomputed when it was checkpointed) and the gradients so far (layer l's
  // complete; hook_grad(h, l) works). With keep_layers false the gradients of layer l+1 are
  // dropped once layer l is done and the recomputed activations with them: the pass then
  // holds about one layer's worth, whatever L (what attribution at long T needs).
  std::function<void(int l, const LayerActs& a, const Gradients& g)> on_layer;
  bool keep_layers = true;
};
Gradients backward(Backend& be, const Model& m, const ForwardState& s, const std::vector<int32_t>& answer,
                   const std::vector<int32_t>& other, float scale, const BackwardOptions& opt = {});
Gradients backward(Backend& be, const Model& m, const ForwardState& s, const MetricSpec& metric, float scale,
                   const BackwardOptions& opt = {});

// Throws naming the layer and hook whose gradient first holds a NaN/Inf, in the order the
// backward pass computes them (last layer first: hook_resid_post, hook_resid_mid,
// attn.hook_z, hook_resid_pre).
void check_finite(Backend& be, const Model& m, const Gradients& g, const char* run_name);
// The same for layer l only, queued into `fc` (kFiniteChecksPerLayer flags): fc.flush() before
// the layer's gradients are freed, fc.throw_first() to report.
constexpr size_t kFiniteChecksPerLayer = 4;
void check_finite_layer(FiniteCheck& fc, const Model& m, const Gradients& g, int l, const char* run_name);

}  // namespace phi3
