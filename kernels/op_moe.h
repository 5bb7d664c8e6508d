// The MoE router's arithmetic, shared by the CPU and CUDA twins (kernels/cpu/moe.cpp,
// kernels/cuda/moe.cu) so both pick the same experts bit for bit: a row's softmax in fp32
// (max, exp(x - max), sum, divide, as torch.softmax(logits.float())), the top-k by repeated
// argmax (descending; ties to the lower expert id), the gates and their renormalisation.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/hd.h"

namespace phi3 {

// Upper bound on experts a row routes over on the device (per-thread arrays).
constexpr int kMoeMaxExperts = 512;
constexpr int kMoeMaxTopK = 64;

// p[e] = softmax(x)[e], e < E.
PHI3_HD void moe_softmax(float* p, const float* x, int E) {
  float mx = x[0];
  for (int e = 1; e < E; ++e) mx = x[e] > mx ? x[e] : mx;
  float sum = 0.0f;
  for (int e = 0; e < E; ++e) {
    p[e] = expf(x[e] - mx);
    sum += p[e];
  }
  for (int e = 0; e < E; ++e) p[e] = p[e] / sum;
}

// ids[j], gates[j] (j < k) from the row's probabilities p (E of them).
PHI3_HD void moe_topk(int32_t* ids, float* gates, const float* p, int E, int k, bool renorm) {
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken = taken || ids[i] == e;
      if (!taken && (best < 0 || p[e] > p[best])) best = e;
    }
    ids[j] = best;
    gates[j] = p[best];
  }
  if (renorm) {
    float s = 0.0f;
    for (int j = 0; j < k; ++j) s += gates[j];
    for (int j = 0; j < k; ++j) gates[j] = gates[j] / s;
  }
}

// dlogits[e] (e < E, overwritten) from dgates (k) with the selection ids fixed; p the row's
// softmax. renorm: g = softmax of the selected logits, so dl[i_j] = g_j (dg_j - sum g dg), 0
// elsewhere; else g_j = p[i_j]: dl[e] = p[e] ([e selected] dg - sum_j p[i_j] dg_j).
PHI3_HD void moe_route_grad(float* dl, const float* dg, const float* p, const int32_t* ids, int E, int k,
                                   bool renorm) {
  if (renorm) {
    float s = 0.0f;
    for (int j = 0; j < k; ++j) s += p[ids[j]];
    float dot = 0.0f;
    for (int j = 0; j < k; ++j) dot += (p[ids[j]] / s) * dg[j];
    for (int e = 0; e < E; ++e) dl[e] = 0.0f;
    for (int j = 0; j < k; ++j) dl[ids[j]] = (p[ids[j]] / s) * (dg[j] - dot);
    return;
  }
  float dot = 0.0f;
  for (int j = 0; j < k; ++j) dot += p[ids[j]] * dg[j];
  for (int e = 0; e < E; ++e) {
    float d = 0.0f;
    for (int j = 0; j < k; ++j) d += ids[j] == e ? dg[j] : 0.0f;
    dl[e] = p[e] * (d - dot);
  }
}

// The k slots of a row in ascending order (the combine's summation order: by expert id, as
// transformers adds the experts' outputs).
PHI3_HD void moe_sorted_slots(int32_t* s, const int32_t* slot, int k) {
  for (int j = 0; j < k; ++j) s[j] = slot[j];
  for (int j = 1; j < k; ++j)
    for (int i = j; i > 0 && s[i - 1] > s[i]; --i) {
      const int32_t t = s[i];
      s[i] = s[i - 1];
      s[i - 1] = t;
    }
}

}  // namespace phi3
