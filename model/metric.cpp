#include "model/metric.h"

#include "kernels/op_math.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"

namespace phi3 {

const char* metric_name(MetricKind k) {
  switch (k) {
    case MetricKind::LogitDiff: return "logit-diff";
    case MetricKind::ProbDiff: return "prob-diff";
    case MetricKind::LogProb: return "logprob";
    case MetricKind::KL: return "kl";
  }
  return "?";
}

const char* metric_definition(MetricKind k) {
  switch (k) {
    case MetricKind::LogitDiff: return "logit[answer] - logit[other]";
    case MetricKind::ProbDiff: return "softmax(logits)[answer] - softmax(logits)[other]";
    case MetricKind::LogProb: return "log_softmax(logits)[answer]";
    case MetricKind::KL: return "KL(p_clean || p_run) = sum_v p_clean,v (log p_clean,v - log p_run,v)";
  }
  return "?";
}

std::string per_prompt_key(MetricKind k) {
  switch (k) {
    case MetricKind::LogitDiff: return "per_prompt_logit_diff";
    case MetricKind::ProbDiff: return "per_prompt_prob_diff";
    case MetricKind::LogProb: return "per_prompt_logprob";
    case MetricKind::KL: return "per_prompt_kl";
  }
  return "per_prompt_raw";
}

const char* metric_choices() { return "logit-diff|prob-diff|logprob|kl"; }

MetricKind parse_metric(const std::string& name) {
  for (MetricKind k : {MetricKind::LogitDiff, MetricKind::ProbDiff, MetricKind::LogProb, MetricKind::KL})
    if (name == metric_name(k)) return k;
  // Without a suggestion the old text ("...: expected one of ..."), else "; did you mean X? (expected ...)".
  const std::string guess = closest_name(name, {"logit-diff", "prob-diff", "logprob", "kl"});
  if (guess.empty()) throw Error("unknown metric '" + name + "' (--metric): expected one of " + metric_choices());
  throw Error("unknown metric '" + name + "' (--metric); did you mean " + guess + "? (expected one of " +
              metric_choices() + ")");
}

MetricSpec logit_diff_spec(const std::vector<int32_t>& answer, const std::vector<int32_t>& other) {
  MetricSpec s;
  s.answer = answer;
  s.other = other;
  return s;
}

std::vector<float> last_log_probs(Backend& be, const Model& m, const ForwardState& s) {
  const int V = m.cfg.vocab_size;
  std::vector<float> lp = last_logits(be, m, s);
  for (int b = 0; b < s.B; ++b) {
    float* x = lp.data() + size_t(b) * V;
    const double lse = metric_row_lse(x, V);
    for (int v = 0; v < V; ++v) x[v] = metric_log_prob(x[v], lse);
  }
  return lp;
}

MetricSpec make_metric_spec(Backend& be, const Model& m, MetricKind kind, const std::vector<int32_t>& answer,
                            const std::vector<int32_t>& other, const ForwardState& clean) {
  PHI3_CHECK(static_cast<int>(answer.size()) == clean.B && static_cast<int>(other.size()) == clean.B,
             "metric: answer/other must have one token per batch row");
  MetricSpec s = logit_diff_spec(answer, other);
  s.kind = kind;
  if (kind == MetricKind::KL) s.ref_logprobs = last_log_probs(be, m, clean);
  return s;
}

DeviceMetric metric_to_device(Backend& be, const MetricSpec& spec, int V, int n_runs) {
  const int B = spec.B();
  std::vector<int32_t> ans(size_t(n_runs) * B), oth(size_t(n_runs) * B), row(size_t(n_runs) * B);
  for (int r = 0; r < n_runs; ++r)
    for (int b = 0; b < B; ++b) {
      ans[size_t(r) * B + b] = spec.answer[b];
      oth[size_t(r) * B + b] = spec.other[b];
      row[size_t(r) * B + b] = b;
    }
  DeviceMetric d;
  d.ans = to_device(be, ans);
  d.other = to_device(be, oth);
  d.params.kind = spec.kind;
  d.params.ans = d.ans.get();
  d.params.other = d.other.get();
  if (spec.kind == MetricKind::KL) {
    PHI3_CHECK(spec.ref_logprobs.size() == size_t(B) * V, "metric kl: reference log-probabilities must be [B, V]");
    d.ref = to_device(be, spec.ref_logprobs);
    d.ref_row = to_device(be, row);
    d.params.ref_logprobs = d.ref.get();
    d.params.ref_row = d.ref_row.get();
  }
  d.params.stride = V;
  d.params.B = n_runs * B;
  d.params.V = V;
  return d;
}

LogitDiff metric_values(Backend& be, const Model& m, const ForwardState& s, const MetricSpec& spec) {
  if (spec.kind == MetricKind::LogitDiff) return logit_diff(be, m, s, spec.answer, spec.other);
  const int V = m.cfg.vocab_size;
  PHI3_CHECK(spec.B() == s.B, "metric: answer/other must have one token per batch row");
  DeviceMetric dm = metric_to_device(be, spec, V);
  dm.params.stride = int64_t(s.T) * V;  // rows T-1 of each batch row
  DeviceArray<float> out(be, s.B);
  be.metric_forward(out.get(), s.logits.get() + size_t(s.T - 1) * V, dm.params);
  LogitDiff r;
  r.per_row = out.download();
  double sum = 0;
  for (float x : r.per_row) sum += x;
  r.mean = sum / s.B;
  return r;
}

void metric_dlogits(Backend& be, const Model& m, const ForwardState& s, const MetricSpec& spec, float scale,
                    float* dlogits) {
  const int B = s.B, V = m.cfg.vocab_size;
  PHI3_CHECK(spec.B() == B, "backward: one answer per row");
  DeviceMetric dm = metric_to_device(be, spec, V);
  if (spec.kind == MetricKind::LogitDiff) {
    be.logit_diff_backward(dlogits, V, dm.ans.get(), dm.other.get(), scale, B, V);
    return;
  }
  dm.params.stride = int64_t(s.T) * V;
  be.metric_backward(dlogits, V, s.logits.get() + size_t(s.T - 1) * V, dm.params, scale);
}

}  // namespace phi3
