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

// PhiMoE's sparsemixer router as transformers runs it for inference (top 2 only), one row of E
// logits s: i1 = argmax s (the first on ties); experts e with (s[i1] - s[e]) / max(|s[e]|, s[i1])
// > 2 eps are masked out; g1 = softmax of the unmasked logits at i1. Then i1 itself masked,
// i2 = argmax of the rest, the same threshold from s[i2] (over the original logits), g2 = the
// softmax of the unmasked rest at i2. No renormalisation: g1 + g2 need not be 1.
// With `p` (E floats, optional): the two softmaxes' probabilities kept for the backward as
// u1[e] (p1 over the first unmasked set, 0 elsewhere) and u2[e] likewise in `p2`.
PHI3_HD void moe_sparsemixer_row(int32_t* ids, float* gates, const float* s, int E, float eps, float* p1,
                                 float* p2) {
  for (int step = 0; step < 2; ++step) {
    int best = -1;
    for (int e = 0; e < E; ++e)
      if ((step == 0 || e != ids[0]) && (best < 0 || s[e] > s[best])) best = e;
    const float m = s[best];
    float sum = 0.0f;
    for (int e = 0; e < E; ++e) {
      const float a = fabsf(s[e]);
      const bool masked = (step == 1 && e == ids[0]) || (m - s[e]) / (a > m ? a : m) > 2.0f * eps;
      if (!masked) sum += expf(s[e] - m);
    }
    float* p = step == 0 ? p1 : p2;
    if (p)
      for (int e = 0; e < E; ++e) {
        const float a = fabsf(s[e]);
        const bool masked = (step == 1 && e == ids[0]) || (m - s[e]) / (a > m ? a : m) > 2.0f * eps;
        p[e] = masked ? 0.0f : expf(s[e] - m) / sum;
      }
    ids[step] = best;
    gates[step] = 1.0f / sum;  // exp(s[best] - m) = 1
  }
}

// dl[e] (overwritten) for one row from dgates (2) with the choice and the masks fixed:
// sum over both steps of dg * g * ([e chosen] - p[e]) over that step's unmasked set.
PHI3_HD void moe_sparsemixer_grad(float* dl, const float* dg, const float* s, int E, float eps, float* p1, float* p2) {
  int32_t ids[2];
  float g[2];
  moe_sparsemixer_row(ids, g, s, E, eps, p1, p2);
  for (int e = 0; e < E; ++e) {
    float d = 0.0f;
    if (p1[e] > 0.0f || e == ids[0]) d += dg[0] * g[0] * ((e == ids[0] ? 1.0f : 0.0f) - p1[e]);
    if (p2[e] > 0.0f || e == ids[1]) d += dg[1] * g[1] * ((e == ids[1] ? 1.0f : 0.0f) - p2[e]);
    dl[e] = d;
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
