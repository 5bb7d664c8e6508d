// The long-prompt reference of `phi3patch verify` (data/reference/long-t2048, written by
// tools/make_long_reference.py: long_reference.json, long_reference.safetensors, pairs.json and
// model/): one pair of 2048-token pre-tokenized prompts on a random 2-layer Phi-3 with a
// 4096-token context, computed with transformers. Checked: the last position's logits and
// logit differences, d metric / d resid_pre at every position, AtP of four hooks from the full
// pass and (bit for bit the same) from the checkpointed pass with the attribution streamed
// through the backward, and exact patching of resid_pre at the reference's checked positions
// with the sweep of those positions alone.
#pragma once
#include <string>

#include "patching/verify.h"

namespace phi3 {

// The directory holds the long-prompt layout (long_reference.json).
bool is_long_reference(const std::string& ref_dir);

// Tolerances of the long reference (fp32 over 2048 positions: softmax sums and dot products of
// a few thousand terms): relative to the tensor's largest value for logits, gradients and AtP;
// absolute for the logit differences and the normalised exact patching (values up to 1.16 over a
// gap of 0.074 between the clean and corrupted logit differences).
struct LongReferenceTolerances {
  double logits = 2e-5, logit_diff = 1e-4, gradient = 1e-4, attribution = 1e-4, exact = 1e-3;
};

// opt: patching (AtP and exact checks), naive (the naive sweep), log; tolerances: tol, each
// widened to the matching VerifyOptions bound where that is looser (bf16 on CUDA).
VerifyResult verify_long_reference(Backend& be, const std::string& ref_dir, const VerifyOptions& opt = {},
                                   const LongReferenceTolerances& tol = {});

}  // namespace phi3
