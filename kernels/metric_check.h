// The argument check of the metric ops (MetricParams, kernels/ops.h), shared by the CPU op and its
// CUDA twin so both refuse the same calls with the same message.
#pragma once
#include <string>

#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3 {

inline void check_metric_params(const MetricParams& p, const char* op) {
  PHI3_CHECK(p.B >= 0 && p.V > 0 && p.stride >= p.V,
             std::string(op) + ": bad shape B=" + std::to_string(p.B) + " V=" + std::to_string(p.V));
  PHI3_CHECK(p.kind == MetricKind::KL ? p.ref_logprobs != nullptr : p.ans != nullptr,
             std::string(op) + ": missing " + (p.kind == MetricKind::KL ? "reference log-probabilities" : "answer tokens"));
  PHI3_CHECK(p.kind == MetricKind::LogProb || p.kind == MetricKind::KL || p.other != nullptr,
             std::string(op) + ": missing other tokens");
}

}  // namespace phi3
