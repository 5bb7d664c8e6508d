// The metric of a run (DESIGN §3): one value per batch row, read from the logits at the last
// position, averaged over the batch and normalised (M - M_corrupted) / (M_clean -
// M_corrupted) by the patching code. --metric chooses it:
//   logit-diff  logit[ans] - logit[other]            (the default)
//   prob-diff   softmax[ans] - softmax[other]
//   logprob     log_softmax[ans]
//   kl          KL(p_clean || p_run) over the whole vocabulary, p_clean the clean run's
//               distribution of the same batch row (0 on the clean run)
// The per-row math is kernels/op_math.h's (metric ops of kernels/ops.h).
#pragma once
#include <string>
#include <vector>

#include "model/forward.h"

namespace phi3 {

// "logit-diff", "prob-diff", "logprob", "kl".
const char* metric_name(MetricKind k);
// The kind of a --metric value; throws naming the value and the valid ones.
MetricKind parse_metric(const std::string& name);
// The formula of a metric, e.g. "log_softmax(logits)[answer]" (results.json, reports).
const char* metric_definition(MetricKind k);
// results.json's key of the raw per-prompt metric of exact patching: "per_prompt_logit_diff"
// (today's), "per_prompt_prob_diff", "per_prompt_logprob", "per_prompt_kl".
std::string per_prompt_key(MetricKind k);
// The valid --metric values, "logit-diff|prob-diff|logprob|kl".
const char* metric_choices();

// What the metric of a batch needs on the host: its kind, the answer/other token of every
// batch row and (kl) the reference log-probabilities of every row.
struct MetricSpec {
  MetricKind kind = MetricKind::LogitDiff;
  std::vector<int32_t> answer, other;  // [B]
  std::vector<float> ref_logprobs;     // kl: [B, V] the clean run's last-position log-softmax
  int B() const { return static_cast<int>(answer.size()); }
};

// The logit difference (no reference).
MetricSpec logit_diff_spec(const std::vector<int32_t>& answer, const std::vector<int32_t>& other);
// A spec of `kind` for a batch whose clean run is `clean` (kl: its last-position log-probs).
MetricSpec make_metric_spec(Backend& be, const Model& m, MetricKind kind, const std::vector<int32_t>& answer,
                            const std::vector<int32_t>& other, const ForwardState& clean);

// The last-position log-softmax [B, V] of a run, on the host (metric_row_lse, fp32 values).
std::vector<float> last_log_probs(Backend& be, const Model& m, const ForwardState& s);

// The spec on the device, for `n_runs` x B logit rows (row r*B + b is batch row b of run r).
struct DeviceMetric {
  DeviceArray<int32_t> ans, other, ref_row;
  DeviceArray<float> ref;
  MetricParams params;  // pointers set, stride = V (set another for strided logits)
};
DeviceMetric metric_to_device(Backend& be, const MetricSpec& spec, int V, int n_runs = 1);

// Mean and per-row metric of a run at its last position (the logit difference through the
// logit_diff op, bit for bit today's).
LogitDiff metric_values(Backend& be, const Model& m, const ForwardState& s, const MetricSpec& spec);

// dlogits [B, V] (dense) = scale * d metric(row b) / d last-position logits of row b.
void metric_dlogits(Backend& be, const Model& m, const ForwardState& s, const MetricSpec& spec, float scale,
                    float* dlogits);

}  // namespace phi3
