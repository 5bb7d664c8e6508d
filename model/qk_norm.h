// Per-head RMSNorm of q and k over head_dim before rotary (Qwen3's q_norm / k_norm), composed
// of the RMSNorm op and its backward (kernels/: CPU and CUDA twins, finite-difference tested)
// over the heads as rows. The qkv rows keep the pre-norm projections (TransformerLens'
// hook_q / hook_k, as TL applies its qk norm after those hooks); rotary reads the normalized
// copy. Models without q/k norm never call these (qk_norm_input returns the qkv rows).
#pragma once
#include "model/model.h"
#include "runtime/backend.h"

namespace phi3 {

// The rows rotary reads for layer `l`: `qkv` itself without q/k norm, else rows in `scratch`
// (grown as needed and kept by the caller across layers) holding q and k normalized per head
// and v copied.
const float* qk_norm_input(Backend& be, const Model& m, int l, const float* qkv, int N, DeviceArray<float>& scratch);

// dqkv's q and k columns hold the gradient with respect to the normalized q and k (as
// rotary_backward writes it); they are replaced by the gradient with respect to the pre-norm
// projections `qkv`. Nothing happens without q/k norm.
void qk_norm_backward(Backend& be, const Model& m, int l, float* dqkv, const float* qkv, int N);

}  // namespace phi3
