// Per-element math shared by the CPU ops and the CUDA kernels (DESIGN §7): the CPU tests
// cover these functions; only the parallel shell around them is GPU-only.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/hd.h"

namespace phi3 {

// ---- RMSNorm: y = x * rstd * w, rstd = (mean(x^2) + eps)^-1/2 -------------------------
PHI3_HD float rmsnorm_rstd(float sum_sq, int D, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(D) + eps);
}
// dx_i = rstd * (w_i dy_i - x_i * rstd^2 * mean_j(w_j dy_j x_j)); `dot` = sum_j w_j dy_j x_j.
PHI3_HD float rmsnorm_dx(float x, float w, float dy, float rstd, float dot, int D) {
  return rstd * (w * dy - x * rstd * rstd * dot / static_cast<float>(D));
}

// ---- LayerNorm (center): y = (x - mu) * rstd * w + b, rstd = (mean((x - mu)^2) + eps)^-1/2 --
// With xc = x - mu: dx_i = rstd * (w_i dy_i - sum_g / D - xc_i rstd^2 dot / D),
// sum_g = sum_j w_j dy_j, dot = sum_j w_j dy_j xc_j.
PHI3_HD float layernorm_dx(float xc, float w, float dy, float rstd, float sum_g, float dot, int D) {
  return rstd * (w * dy - sum_g / static_cast<float>(D) - xc * rstd * rstd * dot / static_cast<float>(D));
}

// ---- SiLU / SwiGLU: out = silu(g) * u ------------------------------------------------
PHI3_HD float sigmoidf_(float g) { return 1.0f / (1.0f + expf(-g)); }
PHI3_HD float silu(float g) { return g * sigmoidf_(g); }
// d silu(g)/dg = s (1 + g (1 - s))
PHI3_HD float silu_grad(float g) {
  float s = sigmoidf_(g);
  return s * (1.0f + g * (1.0f - s));
}

// ---- GeGLU (Gemma): out = gelu_tanh(g) * u, HF's gelu_pytorch_tanh ---------------------
//   gelu_tanh(g) = g/2 (1 + tanh(k (g + 0.044715 g^3))),  k = sqrt(2/pi)
PHI3_HD float gelu_tanh(float g) {
  const float k = 0.7978845608028654f;
  return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
}
// d gelu_tanh(g)/dg = (1 + t)/2 + g/2 (1 - t^2) k (1 + 3 * 0.044715 g^2),  t = tanh(k (g + 0.044715 g^3))
PHI3_HD float gelu_tanh_grad(float g) {
  const float k = 0.7978845608028654f;
  const float t = tanhf(k * (g + 0.044715f * g * g * g));
  return 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * g * g);
}
// The gated MLP's activation of the gate (MlpAct, kernels/ops.h: 0 SiLU, 1 tanh-GELU).
PHI3_HD float mlp_act(float g, int act) { return act ? gelu_tanh(g) : silu(g); }
PHI3_HD float mlp_act_grad(float g, int act) { return act ? gelu_tanh_grad(g) : silu_grad(g); }

// ---- Rotary (rotate_half): for i < rot_dim/2, with a = x[i], b = x[i + rot_dim/2] -----
//   a' = a cos - b sin,  b' = b cos + a sin,   cos/sin of pos * inv_freq[i], times scale.
// Backward is the rotation by -theta (sin negated).
PHI3_HD void rope_angle(int32_t pos, float inv_freq, float scale, float* c, float* s) {
  float ang = static_cast<float>(pos) * inv_freq;
  *c = cosf(ang) * scale;
  *s = sinf(ang) * scale;
}
PHI3_HD void rope_rotate(float a, float b, float c, float s, float* ao, float* bo) {
  *ao = a * c - b * s;
  *bo = b * c + a * s;
}
// Transpose of the (scaled) rotation: the gradient of rope_rotate.
PHI3_HD void rope_rotate_back(float da, float db, float c, float s, float* dai, float* dbi) {
  *dai = da * c + db * s;
  *dbi = db * c - da * s;
}

// ---- Attention masking (DESIGN §2): key j visible from query t of a row with `pad` left
// pads iff pad <= j <= t and (window <= 0 or t - j < window). Pad queries see nothing.
PHI3_HD bool attn_visible(int t, int j, int pad, int window) {
  return j >= pad && j <= t && t >= pad && (window <= 0 || t - j < window);
}
// First visible key of query t (keys run first..t when t >= pad).
PHI3_HD int attn_first_key(int t, int pad, int window) {
  int first = pad;
  if (window > 0 && t - window + 1 > first) first = t - window + 1;
  return first;
}

// ---- Softmax backward per row: ds_j = p_j (dp_j - sum_k p_k dp_k) ----------------------
PHI3_HD float softmax_grad(float p, float dp, float sum_p_dp) { return p * (dp - sum_p_dp); }
// Gemma 2's soft-capping (attention scores, final logits): c tanh(s / c) (c = 0: s unchanged), and
// its derivative written with the capped value: d capped / d s = 1 - (capped / c)^2.
PHI3_HD float soft_cap(float s, float c) { return c > 0.0f ? c * tanhf(s / c) : s; }
PHI3_HD float soft_cap_grad(float capped, float c) {
  const float u = capped / c;
  return 1.0f - u * u;
}

// ---- AtP* key fix for one attention row (QkFixParams, kernels/ops.h) --------------------
// One key's score moves from s_old to s_new; m = the row's largest score, z_others =
// sum over the row's other visible keys of exp(s_j - m) (summed directly when the moved key
// is the row's maximum: Z - exp(s_old - m) would cancel in a saturated row), G = d metric /
// d the key's probability, S = sum_j A_j G_j over the row. The row becomes e_j / Z' with
// Z' = z_others + e_new: returns sum_j (A'_j - A_j) G_j = (r - 1)(S - A G) + (A' - A) G with
// r - 1 = (e_old - e_new) / Z' (no cancellation). Double precision; exponents clamped to 700.
PHI3_HD double qk_key_row_effect(double s_old, double s_new, double m, double z_others, double G, double S) {
  const double e_old = exp(fmin(s_old - m, 700.0)), e_new = exp(fmin(s_new - m, 700.0));
  const double z_old = z_others + e_old, z_new = z_others + e_new;
  if (!(z_old > 0.0) || !(z_new > 0.0)) return 0.0;
  const double A = e_old / z_old;
  return (e_old - e_new) / z_new * (S - A * G) + (e_new / z_new - A) * G;
}

// ---- Metrics of the last-position logits (MetricParams, kernels/ops.h) ------------------
// With lse = log sum_v exp(x_v) of a row (computed with the row's max subtracted, in double),
// p_v = exp(x_v - lse):
//   logit-diff  x_a - x_o                     d/dx_v = [v=a] - [v=o]
//   prob-diff   p_a - p_o                     d/dx_v = [v=a] p_a - [v=o] p_o - p_v (p_a - p_o)
//   logprob     x_a - lse                     d/dx_v = [v=a] - p_v
//   kl          sum_v q_v (log q_v - x_v + lse), q = the reference (clean) distribution,
//               given as log-probabilities r_v = log q_v   d/dx_v = p_v - q_v
// (kl's exact derivative is p_v sum q - q_v; sum q = 1 up to rounding). q_v = 0 (r_v = -inf)
// contributes 0 (0 log 0 = 0). Kinds as MetricKind.
PHI3_HD double metric_exp_term(float x, double max) { return exp(static_cast<double>(x) - max); }
// A log-probability as stored (the reference rows): x - lse rounded to fp32.
PHI3_HD float metric_log_prob(float x, double lse) { return static_cast<float>(static_cast<double>(x) - lse); }
// kl's term of element v, log p_v rounded as metric_log_prob rounds the reference, so a row
// against its own log-probabilities gives exactly 0.
PHI3_HD double metric_kl_term(float ref_lp, float x, double lse) {
  if (ref_lp == -INFINITY) return 0.0;
  const double r = static_cast<double>(ref_lp);
  return exp(r) * (r - static_cast<double>(metric_log_prob(x, lse)));
}
// Sequential log-sum-exp of a row (the CPU op, and the host's reference log-probabilities):
// max subtracted, the sum in double.
PHI3_HD double metric_row_lse(const float* x, int V) {
  float mx = -INFINITY;
  for (int v = 0; v < V; ++v) mx = x[v] > mx ? x[v] : mx;
  double s = 0.0;
  for (int v = 0; v < V; ++v) s += metric_exp_term(x[v], mx);
  return static_cast<double>(mx) + log(s);
}
// The row's metric from its answer/other logits, lse and (kl) the sum of metric_kl_term.
PHI3_HD float metric_value(int kind, float xa, float xo, double lse, double kl_sum) {
  switch (kind) {
    case 0: return xa - xo;
    case 1: return static_cast<float>(exp(static_cast<double>(xa) - lse) - exp(static_cast<double>(xo) - lse));
    case 2: return static_cast<float>(static_cast<double>(xa) - lse);
    default: return static_cast<float>(kl_sum);
  }
}
// d metric / d x_v of element v of a row (unscaled); pa, po = p_ans, p_other (prob-diff).
PHI3_HD float metric_grad(int kind, int v, float x, double lse, int a, int o, double pa, double po, float ref_lp) {
  switch (kind) {
    case 0: return (v == a ? 1.0f : 0.0f) - (v == o ? 1.0f : 0.0f);
    case 1: {
      const double p = exp(static_cast<double>(x) - lse);
      return static_cast<float>((v == a ? pa : 0.0) - (v == o ? po : 0.0) - p * (pa - po));
    }
    case 2: return static_cast<float>((v == a ? 1.0 : 0.0) - exp(static_cast<double>(x) - lse));
    default: {
      const double q = ref_lp == -INFINITY ? 0.0 : exp(static_cast<double>(ref_lp));
      return static_cast<float>(exp(static_cast<double>(x) - lse) - q);
    }
  }
}

}  // namespace phi3
