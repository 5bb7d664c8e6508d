// Metrics of the last-position logits (CPU reference), DESIGN §3.
// The logit difference:
//   forward:  ld[b] = logits[b, ans[b]] - logits[b, other[b]]     logits [B, V], row stride
//   backward: dlogits[b, :V] = 0, then dlogits[b, ans[b]] += scale, dlogits[b, other[b]] -= scale
//             (scale = d metric / d ld[b], e.g. 1/B for the batch mean; ans == other gives 0).
//             Elements between V and the row stride are left untouched. Nothing is saved.
// Every metric (MetricParams, kernels/ops.h; per-element math in kernels/op_math.h):
//   metric_forward:  out[b] = metric of row b (max-subtracted log-sum-exp, sums in double)
//   metric_backward: dlogits[b, :V] = scale * d metric / d logits[b, :V] (overwritten)
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/metric_check.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

void logit_diff_forward(float* ld /*[B]*/, const float* logits /*[B,V]*/, int64_t stride,
                        const int32_t* ans /*[B]*/, const int32_t* other /*[B]*/, int B, Stream) {
  for (int b = 0; b < B; ++b) {
    const float* row = logits + b * stride;
    ld[b] = row[ans[b]] - row[other[b]];
  }
}

void logit_diff_backward(float* dlogits /*[B,V]*/, int64_t stride, const int32_t* ans,
                         const int32_t* other, float scale, int B, int V, Stream) {
  for (int b = 0; b < B; ++b) {
    float* row = dlogits + b * stride;
    std::memset(row, 0, sizeof(float) * V);
    row[ans[b]] += scale;
    row[other[b]] -= scale;
  }
}

namespace {

const float* ref_of(const MetricParams& p, int b) {
  return p.ref_logprobs + int64_t(p.ref_row ? p.ref_row[b] : b) * p.V;
}

}  // namespace

void metric_forward(float* out /*[B]*/, const float* logits /*[B,V]*/, const MetricParams& p, Stream) {
  check_metric_params(p, "metric_forward");
  const int k = static_cast<int>(p.kind);
  for (int b = 0; b < p.B; ++b) {
    const float* x = logits + b * p.stride;
    if (p.kind == MetricKind::LogitDiff) {
      out[b] = metric_value(k, x[p.ans[b]], x[p.other[b]], 0.0, 0.0);
      continue;
    }
    const double lse = metric_row_lse(x, p.V);
    double kl = 0;
    if (p.kind == MetricKind::KL) {
      const float* r = ref_of(p, b);
      for (int v = 0; v < p.V; ++v) kl += metric_kl_term(r[v], x[v], lse);
    }
    const float xa = p.ans ? x[p.ans[b]] : 0.0f, xo = p.other ? x[p.other[b]] : 0.0f;
    out[b] = metric_value(k, xa, xo, lse, kl);
  }
}

void metric_backward(float* dlogits /*[B,V]*/, int64_t dstride, const float* logits, const MetricParams& p,
                     float scale, Stream) {
  check_metric_params(p, "metric_backward");
  PHI3_CHECK(dstride >= p.V, "metric_backward: dlogits rows closer than V");
  const int k = static_cast<int>(p.kind);
  for (int b = 0; b < p.B; ++b) {
    const float* x = logits + b * p.stride;
    float* d = dlogits + b * dstride;
    const int a = p.ans ? p.ans[b] : -1, o = p.other ? p.other[b] : -1;
    const double lse = p.kind == MetricKind::LogitDiff ? 0.0 : metric_row_lse(x, p.V);
    const double pa = a >= 0 ? std::exp(double(x[a]) - lse) : 0.0, po = o >= 0 ? std::exp(double(x[o]) - lse) : 0.0;
    const float* r = p.kind == MetricKind::KL ? ref_of(p, b) : nullptr;
    for (int v = 0; v < p.V; ++v) d[v] = scale * metric_grad(k, v, x[v], lse, a, o, pa, po, r ? r[v] : 0.0f);
  }
}

}  // namespace phi3::cpu
