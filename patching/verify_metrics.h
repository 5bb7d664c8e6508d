// The --metric part of `phi3patch verify` (model/metric.h): against the metrics.json and
// metrics.safetensors that tools/make_reference.py writes beside reference.json (format:
// data/reference/README.md), for prob-diff, logprob and kl: the clean / corrupted values per
// prompt, d M / d activation on the corrupted run, activation patching, attribution and AtP*.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/forward.h"
#include "patching/verify.h"

namespace phi3 {

void verify_metrics(Backend& be, const Model& m, const std::string& ref_dir, const ForwardState& clean,
                    const ForwardState& corrupted, const std::vector<int32_t>& answer,
                    const std::vector<int32_t>& other, const VerifyOptions& opt, VerifyResult& res);

// Shared with verify.cpp: rows of [B,T,W] tensors (or [B,H,T,T] patterns, heads > 0) compared
// only where position t is a real token; a nested JSON array flattened (null: NaN).
TensorCheck compare_rows(const std::string& kind, const std::string& name, const std::vector<float>& ours,
                         const std::vector<float>& ref, int B, int T, int W, const std::vector<int32_t>& pad,
                         double tol, int heads = 0);
std::vector<double> flatten(const nlohmann::json& j);

}  // namespace phi3
